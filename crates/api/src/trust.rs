//! Trust between clients and a daemon reached over HTTPS, as Incus has it: a client is trusted
//! by its certificate's fingerprint, and joins with a one-time token made on the server
//! (`berth remote token CLIENT`), which also tells the client the server's fingerprint and
//! addresses, so that the client pins the server from the start.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// What a join token carries (given to the client as base64url of this JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// The name the server gives the client.
    pub client_name: String,
    /// The server certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Where the server listens (`HOST:PORT`).
    pub addresses: Vec<String>,
    /// The one-time secret.
    pub secret: String,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
}

impl JoinToken {
    /// The token as a user copies it.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A token as a user pasted it.
    pub fn decode(text: &str) -> Result<JoinToken, Error> {
        use base64::Engine;
        let bad = |why: String| Error::invalid("token", format!("not a berth join token: {why}"));
        if text.len() > 16 << 10 {
            return Err(bad(format!("{} bytes is too long", text.len())));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| bad(e.to_string()))?;
        let t: JoinToken = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if t.fingerprint.len() != 64 || !t.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("its fingerprint is not a SHA-256 in hex".into()));
        }
        if t.addresses.is_empty() {
            return Err(bad("it names no address".into()));
        }
        Ok(t)
    }
}

/// `POST /1.0/certificates`: trust the certificate this connection shows, by a token's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustAdd {
    /// The token's secret.
    pub secret: String,
}

/// A trusted client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedClient {
    /// Its name (from the token it joined with).
    pub name: String,
    /// Its certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// When it joined (seconds since the epoch).
    pub added_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_junk_is_refused_by_field() {
        let t = JoinToken {
            client_name: "laptop".into(),
            fingerprint: "a".repeat(64),
            addresses: vec!["10.0.0.2:8443".into()],
            secret: "s".into(),
            expires_at: 1,
        };
        assert_eq!(JoinToken::decode(&t.encode()).unwrap(), t);
        for junk in ["", "!!!", "eyJ4IjoxfQ"] {
            let e = JoinToken::decode(junk).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("token"), "{junk}: {e}");
        }
        let mut bad = t.clone();
        bad.fingerprint = "zz".into();
        assert!(JoinToken::decode(&bad.encode()).is_err());
    }
}
