//! One HTTP/1.1 request on a fresh connection to the daemon. The CLI makes a handful of
//! requests per command, so connections are not pooled.

use berth_api::Error;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;

/// At most this much of an answer is read (a list of many instances fits many times over).
const MAX_ANSWER: usize = 64 << 20;

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "the berth daemon at unix://{}", p.display()),
        }
    }
}

impl Endpoint {
    /// `unix:///path/to/berth.sock` (or the path alone).
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if path.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(Error::invalid(
                "address",
                format!("{s:?} is not a daemon address berth knows (unix:///PATH/berth.sock)"),
            ))
        }
    }
}

/// A connection to the daemon.
pub async fn connect(endpoint: &Endpoint) -> Result<tokio::net::UnixStream, Error> {
    let Endpoint::Unix(sock) = endpoint;
    tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| Error::internal(format!("{endpoint} cannot be reached: {e}")))
}

/// `METHOD path` with `body` to `endpoint`: the HTTP status and the answer's bytes.
pub async fn send(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), Error> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::internal(format!("{endpoint} cannot be reached: {e}"));
    let stream = connect(endpoint).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "berth");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Error::internal(format!("making the request {method} {path}: {e}")))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = res.status().as_u16();
    let bytes = Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            Error::internal(format!(
                "reading {endpoint}'s answer to {method} {path}: {e}"
            ))
        })?
        .to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok((status, bytes))
}
