//! The server's own routes: server info, the token exchange and trusted clients, operations
//! (read, wait, cancel), the event stream and the metrics.

use super::*;
use berth_api::{Operation, TrustedClient};

#[utoipa::path(get, path = "/1.0/operations", tag = "operations",
    responses((status = 200, description = "Every operation kept", body = Response<Vec<Operation>>), documented::Refused))]
pub(super) async fn operations(State(host): State<Host>) -> HttpResponse {
    answer(Ok(host.ops.list()))
}

#[utoipa::path(get, path = "/1.0/operations/{id}", tag = "operations", params(("id" = String, Path, description = "The operation")),
    responses((status = 200, description = "The operation", body = Response<Operation>), (status = 404, description = "No such operation", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn operation(State(host): State<Host>, Path(id): Path<String>) -> HttpResponse {
    answer(host.ops.get(&id))
}

/// `?timeout=SECONDS` (a number, fractions allowed; none or negative: until it ends).
fn timeout_of(query: Option<&str>) -> Result<Option<std::time::Duration>, Error> {
    let mut timeout = None;
    for (_, v) in params(query, &["timeout"], "/wait")? {
        let secs: f64 = v.parse().map_err(|_| {
            Error::invalid(
                "timeout",
                format!("timeout {v:?} is not a number of seconds"),
            )
        })?;
        timeout = (secs.is_finite() && secs >= 0.0)
            .then(|| std::time::Duration::from_secs_f64(secs.min(86_400.0)));
    }
    Ok(timeout)
}

#[utoipa::path(get, path = "/1.0/operations/{id}/wait", tag = "operations",
    params(("id" = String, Path, description = "The operation"), ("timeout" = Option<f64>, Query, description = "Seconds; none or negative: until it ends")),
    responses((status = 200, description = "The operation once it has ended, or as it is after the timeout", body = Response<Operation>), (status = 404, description = "No such operation", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn wait(
    State(host): State<Host>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    match timeout_of(query.as_deref()) {
        Ok(t) => answer(host.ops.wait(&id, t).await),
        Err(e) => answer::<()>(Err(e)),
    }
}

#[utoipa::path(delete, path = "/1.0/operations/{id}", tag = "operations", params(("id" = String, Path, description = "The operation")),
    responses((status = 200, description = "Cancelling", body = Response<Operation>), (status = 404, description = "No such operation", body = Response<berth_api::Nothing>),
        (status = 409, description = "It has ended", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn cancel(State(host): State<Host>, Path(id): Path<String>) -> HttpResponse {
    match host.ops.cancel(&id) {
        Ok(pid) => {
            if let Some(pid) = pid {
                worker::terminate(pid);
            }
            answer(host.ops.get(&id))
        }
        Err(e) => answer::<()>(Err(e)),
    }
}

#[utoipa::path(get, path = "/1.0", tag = "server",
    responses((status = 200, description = "The server, and whether this client is trusted", body = Response<ServerInfo>)))]
pub(super) async fn server(peer: Option<Extension<Peer>>) -> HttpResponse {
    let peer = peer_of(peer);
    answer(Ok(ServerInfo {
        api_version: "1.0".into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        hostname: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        auth: if peer.trusted() {
            "trusted"
        } else {
            "untrusted"
        }
        .into(),
        fingerprint: match peer {
            Peer::Tls { server, .. } => Some(server),
            Peer::Unix => None,
        },
    }))
}

/// `POST /1.0/certificates`: join with a token, trusting this connection's certificate.
#[utoipa::path(post, path = "/1.0/certificates", tag = "trust", request_body = TrustAdd,
    responses((status = 200, description = "This client is trusted from now on", body = Response<TrustedClient>),
        (status = 400, description = "No client certificate, or a bad body", body = Response<berth_api::Nothing>),
        (status = 403, description = "No such token, or it has expired", body = Response<berth_api::Nothing>)))]
pub(super) async fn join(
    State(host): State<Host>,
    peer: Option<Extension<Peer>>,
    bytes: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let r = read(bytes).and_then(|b| body::parse::<TrustAdd>(&b, None));
    let add = match r {
        Ok(a) => a,
        Err(e) => return answer::<()>(Err(e)),
    };
    let Peer::Tls {
        fingerprint: Some(fp),
        ..
    } = peer_of(peer)
    else {
        return answer::<()>(Err(Error::invalid(
            "certificate",
            "joining needs HTTPS with a client certificate (the unix socket is trusted already)",
        )));
    };
    let dirs = host.dirs.clone();
    let r = tokio::task::spawn_blocking(move || crate::trust::join(&dirs, &add.secret, &fp))
        .await
        .unwrap_or_else(|e| Err(Error::internal(format!("joining failed: {e}"))));
    answer(r)
}

/// `GET /1.0/events?type=operation,lifecycle,logging`: the event stream as a websocket of JSON text
/// frames (every type when none is named).
#[utoipa::path(get, path = "/1.0/events", tag = "server",
    params(("type" = Option<String>, Query, description = "operation, lifecycle, logging (comma-separated); all when none")),
    description = "A websocket of DaemonEvent text frames.",
    responses(documented::Upgraded, documented::Refused))]
pub(super) async fn events(
    State(host): State<Host>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResponse {
    let mut wanted = Vec::new();
    match params(query.as_deref(), &["type"], "/1.0/events") {
        Ok(ps) => {
            for (_, v) in ps {
                for t in v.split(',').filter(|t| !t.is_empty()) {
                    if !berth_api::EVENT_TYPES.contains(&t) {
                        return answer_error(Error::invalid(
                            "type",
                            format!(
                                "{t:?} is not an event type ({})",
                                berth_api::EVENT_TYPES.join(", ")
                            ),
                        ));
                    }
                    wanted.push(t.to_string());
                }
            }
        }
        Err(e) => return answer_error(e),
    }
    let mut rx = host.ops.subscribe();
    let mut log = crate::logging::subscribe();
    upgrade(ws, move |mut socket| async move {
        use axum::extract::ws::Message;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                ev = log.recv() => ev,
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                },
            };
            match ev {
                Ok(ev) => {
                    if !wanted.is_empty() && !wanted.iter().any(|w| w == ev.type_name()) {
                        continue;
                    }
                    let Ok(text) = serde_json::to_string(&ev) else {
                        continue;
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // A listener that fell behind misses what it could not take, and goes on.
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!("an events listener missed {n} events");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// Every instance with its live usage, in Prometheus' text format.
#[utoipa::path(get, path = "/1.0/metrics", tag = "server",
    responses((status = 200, description = "Every instance in Prometheus' text format", content_type = "text/plain", body = String), documented::Refused))]
pub(super) async fn metrics(State(host): State<Host>) -> HttpResponse {
    let dirs = host.dirs.clone();
    let r = tokio::task::spawn_blocking(move || {
        let ex = Executor::open(&dirs)?;
        let all = ex.list()?;
        // Usage is read live, one instance at a time; one that went meanwhile is left out.
        Ok::<_, Error>(
            all.into_iter()
                .filter_map(|i| match ex.info(&i.name) {
                    Ok(live) => Some(live),
                    Err(e) if e.kind == berth_api::ErrorKind::NotFound => None,
                    Err(_) => Some(i),
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("reading the metrics failed: {e}"))));
    match r {
        Ok(all) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::render(&all),
        )
            .into_response(),
        Err(e) => answer_error(e),
    }
}

#[utoipa::path(get, path = "/1.0/certificates", tag = "trust",
    responses((status = 200, description = "The trusted clients", body = Response<Vec<TrustedClient>>), documented::Refused))]
pub(super) async fn trusted_clients(State(host): State<Host>) -> HttpResponse {
    answer(crate::trust::list(&host.dirs))
}

#[utoipa::path(delete, path = "/1.0/certificates/{who}", tag = "trust",
    params(("who" = String, Path, description = "A trusted client's name or fingerprint")),
    responses((status = 200, description = "No longer trusted", body = Response<TrustedClient>),
        (status = 404, description = "No such client", body = Response<berth_api::Nothing>), documented::Refused))]
pub(super) async fn not_trusted_any_more(
    State(host): State<Host>,
    Path(who): Path<String>,
) -> HttpResponse {
    let dirs = host.dirs.clone();
    answer(
        tokio::task::spawn_blocking(move || crate::trust::remove(&dirs, &who))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("removing failed: {e}")))),
    )
}
