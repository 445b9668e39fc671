//! berth's TLS: every daemon and every client has its own self-signed certificate (made on
//! first use, key 0600), and trust is a pinned SHA-256 fingerprint of the other side's
//! certificate, as Incus trusts: the client pins the server's (from a join token), the server
//! keeps the fingerprints of the clients it trusts. Connections are TLS 1.3 only.
//!
//! The server accepts any client certificate at the TLS layer ([`server_config`]) and hands the
//! fingerprint up, so that an untrusted client can still reach what it may (server info, the
//! token exchange) and get a clear 403 for the rest; the client refuses a server whose
//! certificate is not the pinned one ([`client_config`]).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of TLS identities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    File(#[from] berth_files::FileError),
    /// A certificate or key is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Making a certificate failed.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate and its key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Its fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

/// A certificate's fingerprint: the SHA-256 of its DER, in lowercase hex (also what the daemon
/// keeps of a token's secret).
pub fn fingerprint(cert: &[u8]) -> String {
    hex(&sha2::Sha256::digest(cert))
}

/// Bytes in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Both verifiers below: TLS 1.2 is never offered (the configs are TLS 1.3 only).
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Both verifiers below: a TLS 1.3 handshake signature, checked with `p`'s algorithms.
fn tls13_signature(
    p: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms)
}

/// The identity in `dir` (`NAME.crt`, `NAME.key`), made on first use for `common_name`.
pub fn load_or_make(dir: &Path, name: &str, common_name: &str) -> Result<Identity, TlsError> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if !crt.exists() || !key.exists() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut params = rcgen::CertificateParams::new(vec![common_name.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&pair)?;
        // The key first: a certificate without its key is made again, never used.
        berth_files::output::write_atomic(
            &key,
            pair.serialize_pem().as_bytes(),
            0o600,
            "a TLS key",
        )?;
        berth_files::output::write_atomic(&crt, cert.pem().as_bytes(), 0o644, "a TLS certificate")?;
    }
    load(&crt, &key)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    berth_files::input::read_capped(path, 64 << 10, "a TLS file").map_err(TlsError::from)
}

/// The identity in the PEM files `crt` and `key`.
pub fn load(crt: &Path, key: &Path) -> Result<Identity, TlsError> {
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = read(crt)?;
    let cert = rustls_pemfile::certs(&mut text.as_slice())
        .next()
        .ok_or_else(|| invalid(crt, "no certificate in it".into()))?
        .map_err(|e| invalid(crt, e.to_string()))?;
    let text = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|e| invalid(key, e.to_string()))?
        .ok_or_else(|| invalid(key, "no private key in it".into()))?;
    Ok(Identity { cert, key: key_der })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate (trust is decided on its fingerprint above TLS), and clients
/// without one.
#[derive(Debug)]
struct AnyClient(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyClient {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.0, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's TLS 1.3 config: its identity; any client certificate accepted (see the crate's
/// note).
pub fn server_config(id: Identity) -> Result<rustls::ServerConfig, TlsError> {
    let p = provider();
    let mut c = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClient(p)))
        .with_single_cert(vec![id.cert], id.key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Accepts only the server certificate whose fingerprint is pinned.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The text of the error a client gets when the server's certificate is not the pinned one.
pub const WRONG_FINGERPRINT: &str = "the server's certificate is not the one trusted for it";

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "{WRONG_FINGERPRINT}: it presented {got}, the remote is pinned to {} (if the \
                 server was remade, remove the remote and add it again with a new token)",
                self.fingerprint
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client's TLS 1.3 config: the server must present the certificate `server_fingerprint`
/// names; the client shows `id`.
pub fn client_config(
    server_fingerprint: &str,
    id: Identity,
) -> Result<rustls::ClientConfig, TlsError> {
    let p = provider();
    let mut c = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: server_fingerprint.to_ascii_lowercase(),
            provider: p,
        }))
        .with_client_auth_cert(vec![id.cert], id.key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// How long a connection between hosts may go without its peer acknowledging what was sent, or
/// answering keepalive probes while idle, before it is given up: a cut link (`ip link set
/// down`, a peer that lost power) fails a transfer after this long instead of hanging it.
pub const LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Make a TCP connection to or from another host fail when its link dies (see
/// [`LINK_TIMEOUT`]): keepalive probes while it is idle, `TCP_USER_TIMEOUT` while data waits
/// to be acknowledged. TLS runs over it unchanged.
pub fn watch_link(tcp: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    let s = socket2::SockRef::from(tcp);
    let probe = LINK_TIMEOUT / 6;
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(probe * 3)
            .with_interval(probe)
            .with_retries(3),
    )?;
    s.set_tcp_user_timeout(Some(LINK_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = load_or_make(d.path(), "server", "berth").unwrap();
        let b = load_or_make(d.path(), "server", "berth").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let mode = std::fs::metadata(d.path().join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(d.path().join("server.crt"), "junk").unwrap();
        let e = load_or_make(d.path(), "server", "berth")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.crt"), "{e}");
    }

    #[test]
    fn configs_are_made() {
        let d = tempfile::tempdir().unwrap();
        let s = load_or_make(d.path(), "server", "berth").unwrap();
        let fp = s.fingerprint();
        server_config(s).unwrap();
        let c = load_or_make(d.path(), "client", "berth-client").unwrap();
        client_config(&fp, c).unwrap();
    }
}
