//! The admin HTTP API (JSON under `/v1/`, Prometheus text at `/metrics`) behind the
//! operator CLI. Every request must carry `Authorization: Bearer <token>` (the token
//! from [`crate::token`]); `/metrics` too unless `metrics_public` is set.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use registry::RegistryError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::service::Node;
use crate::token::AdminToken;

/// Largest admin request body.
const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

pub(crate) type HttpResponse = hyper::Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: Value) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    json_response(status, json!({ "error": message.into() }))
}

pub(crate) fn registry_error(e: RegistryError) -> HttpResponse {
    let status = match &e {
        RegistryError::InvalidAddress { .. }
        | RegistryError::InvalidDomain { .. }
        | RegistryError::InvalidPassword(_)
        | RegistryError::BadTarget(_)
        | RegistryError::TargetCount { .. } => StatusCode::BAD_REQUEST,
        RegistryError::UserExists(_)
        | RegistryError::DomainExists(_)
        | RegistryError::DomainInUse { .. }
        | RegistryError::AliasExists(_)
        | RegistryError::AddressTaken(_) => StatusCode::CONFLICT,
        RegistryError::NoSuchUser(_)
        | RegistryError::NoSuchDomain(_)
        | RegistryError::NoSuchAlias(_) => StatusCode::NOT_FOUND,
        RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

pub(crate) async fn body_json<T: serde::de::DeserializeOwned>(
    req: hyper::Request<crate::listen::TimedBody>,
) -> Result<T, HttpResponse> {
    let bytes = Limited::new(req.into_body(), ADMIN_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            error(status, format!("reading body: {e}"))
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who may use the admin API.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// The bearer token every request must carry.
    pub token: AdminToken,
    /// Serve `GET /metrics` without the token (for scrapers that cannot send one).
    pub metrics_public: bool,
    /// Dashboard login codes and browser sessions (read-only access by cookie).
    pub dashboard: Arc<crate::dashboard::Sessions>,
}

impl AdminAuth {
    /// True when `req` may be served: it carries the token, or it is a public `/metrics`.
    fn allows<B>(&self, req: &hyper::Request<B>) -> bool {
        if self.metrics_public && req.uri().path().trim_matches('/') == "metrics" {
            return true;
        }
        if req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .is_some_and(|v| self.token.matches_header(v.as_bytes()))
        {
            return true;
        }
        crate::dashboard::cookie_may(req.method(), req.uri().path())
            && req
                .headers()
                .get_all(hyper::header::COOKIE)
                .iter()
                .any(|c| self.dashboard.cookie_allows(c.as_bytes()))
    }
}

/// `200` once this node serves: a view installed (not still joining) and its soft
/// state (user and mail maps) complete for it; `503` with the reason otherwise.
fn readiness(node: &Node) -> HttpResponse {
    let view = node.cluster.view();
    let complete = node.maps_ready();
    let quorate = node.quorate();
    let ready = complete && quorate;
    let reason = if !complete {
        Some("view or soft state not complete yet")
    } else if !quorate {
        Some("minority side of a partition (partition_policy = quorum)")
    } else {
        None
    };
    let body = json!({
        "ready": ready,
        "epoch": view.view.epoch.counter,
        "live": view.live,
        "reason": reason,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

/// `401` with a JSON error and `WWW-Authenticate: Bearer` (RFC 6750).
fn unauthorized() -> HttpResponse {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token: send Authorization: Bearer <token> (the token is in \
         the node's admin_token_file, by default <data>/admin.token)",
    );
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"porcupine-admin\""),
    );
    r
}

/// The value of `name` in a URL query string, if present.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Whether flag `name` is set in a URL query string (`name`, `name=1`, `name=true`).
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query_value(query, name).is_some_and(|v| matches!(v, "" | "1" | "true" | "yes"))
}

/// Handle one admin request: check the token, then route.
pub async fn handle(
    node: Arc<Node>,
    metrics: Option<PrometheusHandle>,
    auth: Arc<AdminAuth>,
    req: hyper::Request<crate::listen::TimedBody>,
) -> HttpResponse {
    if req.method() == Method::GET && req.uri().path() == "/dashboard/login" {
        return dashboard_login(&auth, req.uri().query());
    }
    // Probes answer without the token (kubelets and load balancers cannot send one);
    // they say only whether this node is alive and ready.
    if req.method() == Method::GET {
        match req.uri().path() {
            "/healthz" => return json_response(StatusCode::OK, json!({"ok": true})),
            "/readyz" => return readiness(&node),
            _ => {}
        }
    }
    if !auth.allows(&req) {
        if req.method() == Method::GET && req.uri().path() == "/" {
            return html(
                StatusCode::UNAUTHORIZED,
                "<!doctype html><title>Porcupine</title><p>Not logged in. Run \
                 <code>porcupine dashboard</code> and open the URL it prints.</p>\n"
                    .to_string(),
            );
        }
        return unauthorized();
    }
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "health"]) => {
            json_response(StatusCode::OK, json!({"ok": true, "node": node.id()}))
        }
        (&Method::GET, ["v1", "users"]) => crate::accounts_api::list_users(&node, &req).await,
        (&Method::POST, ["v1", "users"]) => crate::accounts_api::add_user(&node, req).await,
        (&Method::GET, ["v1", "users", address]) => {
            crate::accounts_api::get_user(&node, &percent_decode(address)).await
        }
        (&Method::PUT, ["v1", "users", address, "quota"]) => {
            crate::accounts_api::set_user_quota(&node, &percent_decode(address), req).await
        }
        (_, ["v1", "domains", ..]) | (_, ["v1", "aliases", ..]) => {
            crate::accounts_api::handle(&node, &method, &parts, req).await
        }
        (&Method::DELETE, ["v1", "users", address]) => {
            let keep_mail = query_flag(req.uri().query(), "keep_mail");
            match node.registry.del_user(&percent_decode(address)).await {
                Ok(address) if keep_mail => {
                    tracing::info!(%address, "account deleted (mail kept)");
                    json_response(
                        StatusCode::OK,
                        json!({ "deleted": address, "mail": "kept" }),
                    )
                }
                Ok(address) => {
                    tracing::info!(%address, "account deleted; removing its mail");
                    let purged = crate::lifecycle::purge_user_mail(&node, &address).await;
                    json_response(
                        StatusCode::OK,
                        json!({ "deleted": address, "mail": "removed", "purge": purged }),
                    )
                }
                Err(e) => registry_error(e),
            }
        }
        (&Method::POST, ["v1", "storage", "verify"]) => {
            let repair = query_flag(req.uri().query(), "repair");
            match crate::lifecycle::verify(&node, repair).await {
                Ok(outcome) => json_response(StatusCode::OK, json!(outcome)),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::POST, ["v1", "storage", "compact"]) => {
            let ratio = query_value(req.uri().query(), "live_ratio_min")
                .and_then(|v| v.parse::<f64>().ok());
            match crate::lifecycle::compact_now(&node, ratio).await {
                Ok(outcome) => json_response(StatusCode::OK, json!(outcome)),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::PUT, ["v1", "users", address, "password"]) => {
            let address = percent_decode(address);
            let body: NewPassword = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match node.registry.set_password(&address, &body.password).await {
                Ok(address) => {
                    tracing::info!(%address, "account password changed");
                    json_response(StatusCode::OK, json!({ "address": address }))
                }
                Err(e) => registry_error(e),
            }
        }
        (&Method::GET, ["v1", "mailboxes", address]) => {
            mailbox(&node, &percent_decode(address)).await
        }
        (&Method::POST, ["v1", "nodes", id, "remove"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, format!("bad node id {id:?}"));
            };
            remove_node(&node, id).await
        }
        (&Method::GET, ["v1", "cluster"]) => json_response(StatusCode::OK, cluster_status(&node)),
        (&Method::GET, ["v1", "status"]) => json_response(
            StatusCode::OK,
            crate::overview::cluster_overview(&node).await,
        ),
        (&Method::POST, ["v1", "nodes", id, "drain"])
        | (&Method::DELETE, ["v1", "nodes", id, "drain"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, format!("bad node id {id:?}"));
            };
            drain_node(&node, id, method == Method::POST).await
        }
        (&Method::POST, ["v1", "dashboard", "code"]) => {
            json_response(StatusCode::OK, json!({ "code": auth.dashboard.new_code() }))
        }
        (&Method::GET, [""]) => html(StatusCode::OK, crate::dashboard::PAGE_HTML.to_string()),
        (&Method::GET, ["metrics"]) => {
            record_gauges(&node);
            let text = metrics.map(|m| m.render()).unwrap_or_default();
            let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (_, ["v1", ..]) | (_, ["metrics"]) => {
            error(StatusCode::NOT_FOUND, format!("no route {method} {path}"))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {method} {path}; the API lives under /v1/"),
        ),
    }
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        hyper::header::HeaderName::from_static("content-security-policy"),
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    r
}

/// `GET /dashboard/login?code=CODE`: trade a one-time code for a session cookie.
fn dashboard_login(auth: &AdminAuth, query: Option<&str>) -> HttpResponse {
    let session = crate::dashboard::code_in_query(query).and_then(|c| auth.dashboard.redeem(c));
    let Some(session) = session else {
        return html(
            StatusCode::UNAUTHORIZED,
            "<!doctype html><title>Porcupine</title><p>This login link is unknown, used or \
             expired. Run <code>porcupine dashboard</code> for a new one.</p>\n"
                .to_string(),
        );
    };
    tracing::info!("dashboard login");
    let mut r = html(StatusCode::SEE_OTHER, String::new());
    let h = r.headers_mut();
    h.insert(
        hyper::header::LOCATION,
        hyper::header::HeaderValue::from_static("/"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&crate::dashboard::set_cookie(&session)) {
        h.insert(hyper::header::SET_COOKIE, v);
    }
    r
}

/// Send `request` to every node in `live` at once: the nodes that acknowledged it,
/// and one `{node, error}` for each that did not.
async fn tell_live(
    node: &Arc<Node>,
    live: &[u64],
    request: crate::rpc::Request,
) -> (Vec<u64>, Vec<Value>) {
    let calls = live.iter().map(|&n| {
        let request = request.clone();
        async move { (n, node.call(n, request).await) }
    });
    let mut told = Vec::new();
    let mut failed = Vec::new();
    for (n, r) in futures::future::join_all(calls).await {
        match r {
            Ok(crate::rpc::Response::Ack) => told.push(n),
            other => failed.push(json!({"node": n, "error": format!("{other:?}")})),
        }
    }
    (told, failed)
}

/// Mark node `id` draining (or not) on every live node.
async fn drain_node(node: &Arc<Node>, id: u64, draining: bool) -> HttpResponse {
    let view = node.cluster.view();
    if !view.live.contains(&id) && !node.cluster.known().iter().any(|k| k.id == id) {
        return error(StatusCode::NOT_FOUND, format!("no known node {id}"));
    }
    let (told, failed) = tell_live(
        node,
        &view.live,
        crate::rpc::Request::Drain { id, draining },
    )
    .await;
    tracing::info!(id, draining, ?told, "node drain requested");
    json_response(
        if failed.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        },
        json!({"node": id, "draining": draining, "told": told, "failed": failed}),
    )
}

/// Declare node `id` gone for good: every live node forgets it, and repair passes then
/// bring its messages back to R copies.
async fn remove_node(node: &Arc<Node>, id: u64) -> HttpResponse {
    let view = node.cluster.view();
    if view.live.contains(&id) {
        return error(
            StatusCode::CONFLICT,
            format!("node {id} is alive in the current view; stop it before removing it"),
        );
    }
    if !node.cluster.known().iter().any(|k| k.id == id) {
        return error(StatusCode::NOT_FOUND, format!("no known node {id}"));
    }
    let (told, failed) = tell_live(node, &view.live, crate::rpc::Request::Forget { id }).await;
    tracing::info!(id, ?told, "node remove requested");
    // The registry leader drops the node from raft; give it a moment, then report.
    let mut raft = node.registry.log().status();
    for _ in 0..20 {
        if !raft.voter_ids.contains(&id) && !raft.learner_ids.contains(&id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        raft = node.registry.log().status();
    }
    json_response(
        if failed.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        },
        json!({
            "removed": id,
            "told": told,
            "failed": failed,
            "registry": {"voters": raft.voter_ids, "learners": raft.learner_ids},
        }),
    )
}

/// Where one user's messages are: every live message with the nodes holding a copy.
async fn mailbox(node: &Arc<Node>, address: &str) -> HttpResponse {
    let user = match registry::canonical_address(address) {
        Ok(u) => u,
        Err(e) => return registry_error(e),
    };
    let bucket = membership::bucket_of(&user, node.cluster.buckets());
    let manager = node.cluster.view().map.manager(bucket);
    let req = crate::rpc::Request::MailMap {
        user: user.clone(),
        bucket,
    };
    let map = match node.call(manager, req).await {
        Ok(crate::rpc::Response::MailMap(m)) => m,
        other => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("mail map of {user} not available from manager {manager}: {other:?}"),
            );
        }
    };
    let h = crate::gather::gather(node, &user, bucket, &map).await;
    let messages: Vec<Value> = h
        .visible()
        .map(|(id, held)| {
            json!({"id": id.to_string(), "size": held.size_bytes, "holders": held.holders})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "user": user,
            "bucket": bucket,
            "manager": manager,
            "mail_map": map,
            "answered": h.listed,
            "messages": messages,
            "tombstones": h.tombstones.len(),
        }),
    )
}

fn record_gauges(node: &Node) {
    let stats = node.store.stats();
    metrics::gauge!("porcupine_messages_stored").set(stats.messages as f64);
    metrics::gauge!("porcupine_tombstones_stored").set(stats.tombstones as f64);
    metrics::gauge!("porcupine_fragment_users").set(stats.users as f64);
    metrics::gauge!("porcupine_segment_bytes").set(stats.segment_bytes as f64);
    metrics::counter!("porcupine_storage_batches_total").absolute(stats.batches);
    metrics::counter!("porcupine_storage_write_requests_total").absolute(stats.write_requests);
    metrics::counter!("porcupine_storage_commit_microseconds_total").absolute(stats.commit_micros);
    metrics::counter!("porcupine_storage_commit_cpu_microseconds_total")
        .absolute(stats.commit_cpu_micros);
    metrics::gauge!("porcupine_load").set(f64::from(softstate::queue_of(node.load())));
    metrics::gauge!("porcupine_disk_free_bytes").set(node.disk.free_bytes() as f64);
    metrics::gauge!("porcupine_disk_nearly_full").set(f64::from(u8::from(node.disk.nearly_full())));
    metrics::gauge!("porcupine_users_managed").set(node.manager.users_managed() as f64);
    let view = node.cluster.view();
    metrics::gauge!("porcupine_view_epoch").set(view.view.epoch.counter as f64);
    metrics::gauge!("porcupine_view_members").set(view.live.len() as f64);
    // Every live node's load as this node's load table has it (its own: now).
    for &id in &view.live {
        let load = if id == node.id() {
            node.load()
        } else {
            node.cluster.load_of(id)
        };
        let node_label = id.to_string();
        metrics::gauge!("porcupine_node_load", "node" => node_label.clone())
            .set(f64::from(softstate::queue_of(load)));
        metrics::gauge!("porcupine_node_nearly_full", "node" => node_label)
            .set(f64::from(u8::from(softstate::is_nearly_full(load))));
    }
    let r = &node.repair;
    let get =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    metrics::gauge!("porcupine_under_replicated_messages").set(get(&r.under_replicated));
    metrics::gauge!("porcupine_repair_pending_messages").set(get(&r.pending));
    let count = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("porcupine_repair_copies_made_total").absolute(count(&r.copies_made_total));
    metrics::counter!("porcupine_repair_tombstones_spread_total")
        .absolute(count(&r.tombstones_spread_total));
    metrics::counter!("porcupine_repair_passes_total").absolute(count(&r.passes_total));
    metrics::counter!("porcupine_tombstones_collected_total")
        .absolute(count(&r.tombstones_collected_total));
    metrics::counter!("porcupine_drain_copies_total").absolute(count(&r.drain_copies_total));
    metrics::gauge!("porcupine_drain_pending_messages").set(get(&r.drain_pending));
    let draining = node.drain.ids();
    for &id in &view.live {
        metrics::gauge!("porcupine_node_draining", "node" => id.to_string())
            .set(f64::from(u8::from(draining.contains(&id))));
    }
}

/// This node's view of the cluster, as `GET /v1/cluster` and `porcupine status --json` show it.
pub fn cluster_status(node: &Node) -> Value {
    let view = node.cluster.view();
    let mut known = node.cluster.known();
    for m in &view.view.members {
        if !known.iter().any(|k| k.id == m.id) {
            known.push(m.clone());
        }
    }
    known.sort_by_key(|k| k.id);
    let nodes: Vec<Value> = known
        .iter()
        .map(|k| {
            let alive = view.live.contains(&k.id);
            let load = if k.id == node.id() {
                node.load()
            } else {
                node.cluster.load_of(k.id)
            };
            json!({
                "id": k.id,
                "alive": alive,
                "smtp": k.smtp,
                "pop": k.pop,
                "admin": k.admin,
                "rpc": k.rpc,
                "load": softstate::queue_of(load),
                "nearly_full": softstate::is_nearly_full(load),
                "buckets": if alive { view.map.buckets_of(k.id) } else { 0 },
            })
        })
        .collect();
    let stats = node.store.stats();
    let raft = node.registry.log().status();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "node": node.id(),
        "epoch": view.view.epoch.counter,
        "epoch_coordinator": view.view.epoch.coordinator,
        "live": view.live,
        "maps_complete": node.maps_ready(),
        "version": {
            "release": env!("CARGO_PKG_VERSION"),
            "rpc": crate::rpc::RPC_VERSION,
            "rpc_min": crate::rpc::RPC_VERSION_MIN,
            "rpc_refused": get(&crate::rpc::VERSION_REFUSED),
            "data_format": crate::format::DATA_FORMAT,
        },
        "users_managed": node.manager.users_managed(),
        "fragments": {
            "messages": stats.messages,
            "users": stats.users,
            "tombstones": stats.tombstones,
            "segment_bytes": stats.segment_bytes,
        },
        "disk": {
            "free_bytes": node.disk.free_bytes(),
            "reserve_bytes": node.disk.reserve_bytes(),
            "nearly_full": node.disk.nearly_full(),
        },
        "repair": {
            "under_replicated": get(&node.repair.under_replicated),
            "pending": get(&node.repair.pending),
            "copies_made_total": get(&node.repair.copies_made_total),
            "tombstones_spread_total": get(&node.repair.tombstones_spread_total),
            "tombstones_collected_total": get(&node.repair.tombstones_collected_total),
            "passes_total": get(&node.repair.passes_total),
            "last_pass_ms": get(&node.repair.last_pass_ms),
            "drain_pending": get(&node.repair.drain_pending),
            "drain_copies_total": get(&node.repair.drain_copies_total),
        },
        "draining": node.drain.ids(),
        // Not under `repair`, whose figures are all counts (scripts sum them).
        "last_pass_draining": node
            .repair
            .last_pass_draining
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default(),
        "views": node.views.entries(),
        "load_here": softstate::queue_of(node.load()),
        "traffic": {
            "smtp_messages_accepted": get(&crate::telemetry::SMTP_MESSAGES_ACCEPTED),
            "smtp_messages_rejected": get(&crate::telemetry::SMTP_MESSAGES_REJECTED),
            "pop_messages_retrieved": get(&crate::telemetry::POP_MESSAGES_RETRIEVED),
        },
        "registry": {
            "leader": raft.leader_id,
            "voters": raft.voter_ids,
            "learners": raft.learner_ids,
            "last_applied": raft.last_applied_index,
            "term": raft.term,
        },
        "nodes": nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, auth: Option<&str>) -> hyper::Request<()> {
        let mut b = hyper::Request::builder().uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn every_path_wants_the_token_unless_metrics_are_public() {
        let token = AdminToken::new("s3cret").unwrap();
        let closed = AdminAuth {
            token: token.clone(),
            metrics_public: false,
            dashboard: Default::default(),
        };
        for path in ["/v1/users", "/metrics", "/", "/nowhere"] {
            assert!(!closed.allows(&req(path, None)), "{path}");
            assert!(!closed.allows(&req(path, Some("Bearer nope"))), "{path}");
            assert!(closed.allows(&req(path, Some("Bearer s3cret"))), "{path}");
        }
        let open = AdminAuth {
            token,
            metrics_public: true,
            dashboard: Default::default(),
        };
        assert!(open.allows(&req("/metrics", None)));
        assert!(!open.allows(&req("/v1/users", None)));
        assert!(!open.allows(&req("/v1/metrics", None)));
    }
}
