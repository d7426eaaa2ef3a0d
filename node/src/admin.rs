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

type HttpResponse = hyper::Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: Value) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    json_response(status, json!({ "error": message.into() }))
}

fn registry_error(e: RegistryError) -> HttpResponse {
    let status = match &e {
        RegistryError::InvalidAddress(_) | RegistryError::InvalidPassword(_) => {
            StatusCode::BAD_REQUEST
        }
        RegistryError::UserExists(_) => StatusCode::CONFLICT,
        RegistryError::NoSuchUser(_) => StatusCode::NOT_FOUND,
        RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

#[derive(Deserialize)]
struct NewUser {
    address: String,
    password: String,
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn body_json<T: serde::de::DeserializeOwned>(
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

fn percent_decode(s: &str) -> String {
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
}

impl AdminAuth {
    /// True when `req` may be served: it carries the token, or it is a public `/metrics`.
    fn allows<B>(&self, req: &hyper::Request<B>) -> bool {
        if self.metrics_public && req.uri().path().trim_matches('/') == "metrics" {
            return true;
        }
        req.headers()
            .get(hyper::header::AUTHORIZATION)
            .is_some_and(|v| self.token.matches_header(v.as_bytes()))
    }
}

/// `200` once this node serves: a view installed (not still joining) and its soft
/// state (user and mail maps) complete for it; `503` with the reason otherwise.
fn readiness(node: &Node) -> HttpResponse {
    let view = node.cluster.view();
    let ready = node.maps_ready();
    let body = json!({
        "ready": ready,
        "epoch": view.view.epoch.counter,
        "live": view.live,
        "reason": if ready { None } else { Some("view or soft state not complete yet") },
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
        return unauthorized();
    }
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "health"]) => {
            json_response(StatusCode::OK, json!({"ok": true, "node": node.id()}))
        }
        (&Method::GET, ["v1", "users"]) => match node.registry.state().users() {
            Ok(users) => json_response(StatusCode::OK, json!({ "users": users })),
            Err(e) => registry_error(e),
        },
        (&Method::POST, ["v1", "users"]) => {
            let body: NewUser = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match node.registry.add_user(&body.address, &body.password).await {
                Ok(address) => json_response(StatusCode::CREATED, json!({ "address": address })),
                Err(e) => registry_error(e),
            }
        }
        (&Method::DELETE, ["v1", "users", address]) => {
            let keep_mail = query_flag(req.uri().query(), "keep_mail");
            match node.registry.del_user(&percent_decode(address)).await {
                Ok(address) if keep_mail => json_response(
                    StatusCode::OK,
                    json!({ "deleted": address, "mail": "kept" }),
                ),
                Ok(address) => {
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
                Ok(address) => json_response(StatusCode::OK, json!({ "address": address })),
                Err(e) => registry_error(e),
            }
        }
        (&Method::GET, ["v1", "mailboxes", address]) => {
            mailbox(&node, &percent_decode(address)).await
        }
        (&Method::GET, ["v1", "domains"]) => match node.registry.state().domains() {
            Ok(domains) => json_response(StatusCode::OK, json!({ "domains": domains })),
            Err(e) => registry_error(e),
        },
        (&Method::POST, ["v1", "nodes", id, "remove"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, format!("bad node id {id:?}"));
            };
            remove_node(&node, id).await
        }
        (&Method::GET, ["v1", "cluster"]) => json_response(StatusCode::OK, cluster_status(&node)),
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
    let calls = view
        .live
        .iter()
        .map(|&n| async move { (n, node.call(n, crate::rpc::Request::Forget { id }).await) });
    let mut told = Vec::new();
    let mut failed = Vec::new();
    for (n, r) in futures::future::join_all(calls).await {
        match r {
            Ok(crate::rpc::Response::Ack) => told.push(n),
            other => failed.push(json!({"node": n, "error": format!("{other:?}")})),
        }
    }
    json_response(
        if failed.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        },
        json!({"removed": id, "told": told, "failed": failed}),
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
    metrics::gauge!("porcupine_repair_copies_made_total").set(get(&r.copies_made_total));
    metrics::gauge!("porcupine_repair_tombstones_spread_total")
        .set(get(&r.tombstones_spread_total));
    metrics::gauge!("porcupine_repair_passes_total").set(get(&r.passes_total));
    metrics::gauge!("porcupine_tombstones_collected_total").set(get(&r.tombstones_collected_total));
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
        };
        for path in ["/v1/users", "/metrics", "/", "/nowhere"] {
            assert!(!closed.allows(&req(path, None)), "{path}");
            assert!(!closed.allows(&req(path, Some("Bearer nope"))), "{path}");
            assert!(closed.allows(&req(path, Some("Bearer s3cret"))), "{path}");
        }
        let open = AdminAuth {
            token,
            metrics_public: true,
        };
        assert!(open.allows(&req("/metrics", None)));
        assert!(!open.allows(&req("/v1/users", None)));
        assert!(!open.allows(&req("/v1/metrics", None)));
    }
}
