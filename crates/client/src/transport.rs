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
    /// HTTPS (TLS 1.3): the server must show the certificate `fingerprint` names; the client
    /// shows its own, kept in `identity` (`client.crt`, `client.key`, made on first use).
    Https {
        /// `HOST:PORT`.
        address: String,
        /// The server certificate's SHA-256 fingerprint.
        fingerprint: String,
        /// The client's identity folder.
        identity: PathBuf,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "the berth daemon at unix://{}", p.display()),
            Endpoint::Https { address, .. } => write!(f, "the berth daemon at https://{address}"),
        }
    }
}

/// A connection to a daemon, whatever carries it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// How long reaching a daemon over the network may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client's own identity in `dir`, made on first use.
pub fn client_identity(dir: &std::path::Path) -> Result<berth_tls::Identity, Error> {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    berth_tls::load_or_make(dir, "client", &format!("berth-client@{host}"))
        .map_err(|e| Error::internal(format!("this client's TLS identity: {e}")))
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
pub async fn connect(endpoint: &Endpoint) -> Result<Box<dyn Io>, Error> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::internal(format!("{endpoint} cannot be reached: {e}"));
    match endpoint {
        Endpoint::Unix(sock) => Ok(Box::new(
            tokio::net::UnixStream::connect(sock)
                .await
                .map_err(|e| unreachable(&e))?,
        )),
        Endpoint::Https {
            address,
            fingerprint,
            identity,
        } => {
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
                    .await
                    .map_err(|_| {
                        unreachable(&format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))
                    })?
                    .map_err(|e| unreachable(&e))?;
            berth_tls::watch_link(&tcp).map_err(|e| unreachable(&e))?;
            let config = berth_tls::client_config(fingerprint, client_identity(identity)?)
                .map_err(|e| Error::internal(format!("TLS for {endpoint}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            // The name is not checked (the certificate is pinned by its fingerprint).
            let name = rustls::pki_types::ServerName::try_from("berth")
                .map_err(|e| Error::internal(format!("TLS for {endpoint}: {e}")))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| unreachable(&"no TLS handshake in time"))?
                .map_err(|e| {
                    let text = e.to_string();
                    if text.contains(berth_tls::WRONG_FINGERPRINT) {
                        Error::new(
                            berth_api::ErrorKind::Forbidden,
                            format!("refusing {endpoint}: {text}"),
                        )
                    } else {
                        unreachable(&format!("TLS: {text}"))
                    }
                })?;
            Ok(Box::new(tls))
        }
    }
}

/// `METHOD path` with `body` (JSON) to `endpoint`: the HTTP status and the answer's bytes.
pub async fn send(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), Error> {
    let json = body.is_some().then_some("application/json");
    let body = Full::new(Bytes::from(body.unwrap_or_default()));
    send_body(endpoint, method, path, json, body).await
}

/// `METHOD path` with `body` of `content_type` (streamed as it comes) to `endpoint`: the HTTP
/// status and the answer's bytes.
pub async fn send_body<B>(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: B,
) -> Result<(u16, Bytes), Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (res, conn) = open(endpoint, method, path, content_type, body).await?;
    let status = res.status().as_u16();
    let bytes = collect(endpoint, method, path, res).await?;
    let _ = conn.await;
    Ok((status, bytes))
}

/// `GET path` from `endpoint`: on HTTP 200 its body is written to `out` as it comes and the
/// answer is `None`; otherwise the status and the answer's bytes (the API's error).
pub async fn download(
    endpoint: &Endpoint,
    path: &str,
    out: &mut (dyn std::io::Write + Send),
) -> Result<Option<(u16, Bytes)>, Error> {
    let (mut res, conn) = open(endpoint, "GET", path, None, Full::new(Bytes::new())).await?;
    let status = res.status().as_u16();
    if status != 200 {
        let bytes = collect(endpoint, "GET", path, res).await?;
        let _ = conn.await;
        return Ok(Some((status, bytes)));
    }
    use http_body_util::BodyExt;
    while let Some(frame) = res.body_mut().frame().await {
        let frame = frame.map_err(|e| {
            Error::internal(format!(
                "{endpoint}'s answer to GET {path} was cut short: {e}"
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).map_err(|e| {
                Error::internal(format!("taking {endpoint}'s answer to GET {path}: {e}"))
            })?;
        }
    }
    let _ = conn.await;
    Ok(None)
}

/// Send a request on a connection of its own: the response (its body still to come) and the
/// connection's task.
async fn open<B>(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: B,
) -> Result<
    (
        hyper::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    Error,
>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
    if let Some(t) = content_type {
        req = req.header(hyper::header::CONTENT_TYPE, t);
    }
    let req = req
        .body(body)
        .map_err(|e| Error::internal(format!("making the request {method} {path}: {e}")))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok((res, conn))
}

/// A response's whole body, within [`MAX_ANSWER`].
async fn collect(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    res: hyper::Response<hyper::body::Incoming>,
) -> Result<Bytes, Error> {
    Ok(Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            Error::internal(format!(
                "reading {endpoint}'s answer to {method} {path}: {e}"
            ))
        })?
        .to_bytes())
}
