//! `berth daemon --listen ADDR:PORT`: the same router over HTTPS (TLS 1.3, [`berth_tls`]).
//! Every connection's client certificate fingerprint is looked up in the trust store on each
//! request (so `berth trust remove` takes effect at once); an untrusted client reaches only
//! `GET /1.0` and the token exchange (`POST /1.0/certificates`), and gets a 403 for the rest.

use crate::routes::answer_error;
use axum::Router;
use berth_api::{Error, ErrorKind};
use berth_host::dirs::Dirs;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tower::ServiceExt;

/// Who is asking: a request's peer, as the handlers see it (an extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// On the unix socket (its mode is the access control): trusted.
    Unix,
    /// Over HTTPS, with its certificate's fingerprint if it showed one.
    Tls {
        /// The client certificate's fingerprint.
        fingerprint: Option<String>,
        /// Whether it is trusted.
        trusted: bool,
        /// The server's own fingerprint.
        server: String,
    },
}

impl Peer {
    /// Whether it may reach everything.
    pub fn trusted(&self) -> bool {
        match self {
            Peer::Unix => true,
            Peer::Tls { trusted, .. } => *trusted,
        }
    }
}

/// What an untrusted client may ask.
fn open_to_untrusted(method: &hyper::Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    (method == hyper::Method::GET && path == "/1.0")
        || (method == hyper::Method::POST && path == "/1.0/certificates")
}

/// Serve `app` on `listener` over TLS until the runtime ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    dirs: Dirs,
    config: rustls::ServerConfig,
    server_fingerprint: String,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting an HTTPS connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = berth_tls::watch_link(&tcp) {
            tracing::warn!("watching the link of {addr}: {e}");
        }
        let (acceptor, app, dirs, server) = (
            acceptor.clone(),
            app.clone(),
            dirs.clone(),
            server_fingerprint.clone(),
        );
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("TLS handshake with {addr} failed: {e}");
                    return;
                }
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| berth_tls::fingerprint(c));
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (app, dirs, fingerprint, server) = (
                        app.clone(),
                        dirs.clone(),
                        fingerprint.clone(),
                        server.clone(),
                    );
                    async move {
                        let trusted = match &fingerprint {
                            Some(f) => {
                                let (d, f) = (dirs.clone(), f.clone());
                                tokio::task::spawn_blocking(move || {
                                    crate::trust::is_trusted(&d, &f)
                                })
                                .await
                                .unwrap_or(false)
                            }
                            None => false,
                        };
                        if !trusted && !open_to_untrusted(req.method(), req.uri().path()) {
                            return Ok::<_, std::convert::Infallible>(answer_error(Error::new(
                                ErrorKind::Forbidden,
                                "this client is not trusted by the server: join it with a token \
                             from `berth remote token` (berth remote add NAME TOKEN)",
                            )));
                        }
                        req.extensions_mut().insert(Peer::Tls {
                            fingerprint,
                            trusted,
                            server,
                        });
                        let res = app
                            .oneshot(req.map(axum::body::Body::new))
                            .await
                            .unwrap_or_else(|e| match e {});
                        Ok(res)
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("HTTPS connection from {addr}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_client_reaches_only_the_server_and_the_token_exchange() {
        use hyper::Method;
        assert!(open_to_untrusted(&Method::GET, "/1.0"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/"));
        assert!(open_to_untrusted(&Method::POST, "/1.0/certificates"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/certificates"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/instances"));
        assert!(!open_to_untrusted(&Method::POST, "/1.0/instances"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/../1.0/instances"));
    }
}
