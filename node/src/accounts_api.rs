//! The admin API's account routes beyond plain users: domains, aliases and catch-alls,
//! quotas and mailbox usage (issue 14). `admin` routes here; JSON in and out.
//!
//! | route | body / query | answer |
//! | --- | --- | --- |
//! | `GET /v1/users[?usage=true]` | | `users` (addresses), `accounts` (limits, usage) |
//! | `POST /v1/users` | `address`, `password`, `quota_bytes`, `quota_messages` | `201` |
//! | `GET /v1/users/ADDR` | | one account with its usage |
//! | `PUT /v1/users/ADDR/quota` | `quota_bytes`, `quota_messages` | |
//! | `GET /v1/domains` | | `domains` (names), `details` |
//! | `POST /v1/domains` | `domain`, `quota_bytes`, `quota_messages` | `201` |
//! | `PUT /v1/domains/D/quota` | `quota_bytes`, `quota_messages` | |
//! | `DELETE /v1/domains/D[?force=true]` | | `409` while in use without force |
//! | `GET /v1/aliases` | | `aliases`: `source`, `targets` |
//! | `POST /v1/aliases` | `source` (`a@d` or `@d`), `targets` | `201` |
//! | `DELETE /v1/aliases/SOURCE` | | |
//!
//! A quota value is a number of bytes or messages, a size text (`10M`, `2G`, `512K`:
//! powers of 1024), `"unlimited"`, or `"default"` (an account: its domain's); absent or
//! `null` leaves it as it is.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use registry::{Limit, Quota};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::{HttpResponse, body_json, error, json_response, percent_decode, registry_error};
use crate::service::Node;

/// Most accounts whose usage one `GET /v1/users?usage=true` reads at once.
const USAGE_CONCURRENCY_MAX: usize = 16;

/// A quota value as the API takes it.
pub fn parse_limit(v: &Value) -> Result<Option<Limit>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(|n| Some(Limit::Max(n)))
            .ok_or_else(|| format!("quota {n} is not a whole number")),
        Value::String(s) => parse_limit_text(s).map(Some),
        other => Err(format!("quota {other} is not a number or a size text")),
    }
}

/// `10M`, `2G`, `512K`, `1000`, `unlimited`, `default`.
pub fn parse_limit_text(s: &str) -> Result<Limit, String> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "unlimited" | "none" => return Ok(Limit::Unlimited),
        "default" => return Ok(Limit::Default),
        _ => {}
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some((i, 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| {
        format!("quota {s:?}: expected a number, a size (10M, 2G), unlimited or default")
    })?;
    n.checked_mul(1u64 << shift)
        .map(Limit::Max)
        .ok_or_else(|| format!("quota {s:?} is too large"))
}

fn limit_json(l: Limit) -> Value {
    match l {
        Limit::Default => json!("default"),
        Limit::Unlimited => json!("unlimited"),
        Limit::Max(n) => json!(n),
    }
}

#[derive(Deserialize)]
struct QuotaBody {
    #[serde(default)]
    quota_bytes: Value,
    #[serde(default)]
    quota_messages: Value,
}

impl QuotaBody {
    fn limits(&self) -> Result<(Option<Limit>, Option<Limit>), String> {
        Ok((
            parse_limit(&self.quota_bytes)?,
            parse_limit(&self.quota_messages)?,
        ))
    }
}

#[derive(Deserialize)]
struct NewUser {
    address: String,
    password: String,
    #[serde(flatten)]
    quota: QuotaBody,
}

fn query_flag(req_query: Option<&str>, name: &str) -> bool {
    req_query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == name || kv == format!("{name}=true") || kv == format!("{name}=1"))
    })
}

/// One account as the API shows it; usage read from the cluster when `with_usage`.
async fn account_json(node: &Arc<Node>, address: &str, with_usage: bool) -> Value {
    let state = node.registry.state();
    let own = state.user_quota(address).unwrap_or_default();
    let effective = state.effective_quota(address).unwrap_or_default();
    let mut v = json!({
        "address": address,
        "quota_bytes": limit_json(own.bytes),
        "quota_messages": limit_json(own.messages),
        "quota_bytes_max": effective.bytes_max,
        "quota_messages_max": effective.messages_max,
    });
    if with_usage {
        let usage = crate::quota::usage(node, address).await;
        v["used_bytes"] = json!(usage.map(|u| u.bytes));
        v["used_messages"] = json!(usage.map(|u| u.messages));
        v["usage_known"] = json!(usage.is_some());
    }
    v
}

/// `GET /v1/users[?usage=true]`.
pub async fn list_users<B>(node: &Arc<Node>, req: &hyper::Request<B>) -> HttpResponse {
    let users = match node.registry.state().users() {
        Ok(u) => u,
        Err(e) => return registry_error(e),
    };
    let with_usage = query_flag(req.uri().query(), "usage");
    let mut accounts = Vec::with_capacity(users.len());
    for chunk in users.chunks(USAGE_CONCURRENCY_MAX) {
        accounts.extend(
            futures::future::join_all(chunk.iter().map(|u| account_json(node, u, with_usage)))
                .await,
        );
    }
    json_response(
        StatusCode::OK,
        json!({ "users": users, "accounts": accounts }),
    )
}

/// `GET /v1/users/ADDR`.
pub async fn get_user(node: &Arc<Node>, address: &str) -> HttpResponse {
    let address = match node.registry.existing_address(address) {
        Ok(a) => a,
        Err(e) => return registry_error(e),
    };
    match node.registry.state().user(&address) {
        Ok(Some(_)) => json_response(StatusCode::OK, account_json(node, &address, true).await),
        Ok(None) => registry_error(registry::RegistryError::NoSuchUser(address)),
        Err(e) => registry_error(e),
    }
}

/// `POST /v1/users`.
pub async fn add_user(
    node: &Arc<Node>,
    req: hyper::Request<crate::listen::TimedBody>,
) -> HttpResponse {
    let body: NewUser = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (bytes, messages) = match body.quota.limits() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let quota = Quota {
        bytes: bytes.unwrap_or_default(),
        messages: messages.unwrap_or_default(),
    };
    match node
        .registry
        .add_account(&body.address, &body.password, quota)
        .await
    {
        Ok(address) => {
            tracing::info!(%address, "account added");
            json_response(StatusCode::CREATED, json!({ "address": address }))
        }
        Err(e) => registry_error(e),
    }
}

/// `PUT /v1/users/ADDR/quota`.
pub async fn set_user_quota(
    node: &Arc<Node>,
    address: &str,
    req: hyper::Request<crate::listen::TimedBody>,
) -> HttpResponse {
    let body: QuotaBody = match body_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (bytes, messages) = match body.limits() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let address = match node.registry.existing_address(address) {
        Ok(a) => a,
        Err(e) => return registry_error(e),
    };
    match node
        .registry
        .set_user_quota(&address, bytes, messages)
        .await
    {
        Ok(address) => json_response(StatusCode::OK, account_json(node, &address, false).await),
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize)]
struct NewDomain {
    domain: String,
    #[serde(flatten)]
    quota: QuotaBody,
}

#[derive(Deserialize)]
struct NewAlias {
    source: String,
    targets: Vec<String>,
}

fn domain_json(node: &Node, domain: &str) -> Value {
    let state = node.registry.state();
    let quota = state
        .domain(domain)
        .ok()
        .flatten()
        .unwrap_or_default()
        .quota;
    json!({
        "domain": domain,
        "quota_bytes": limit_json(quota.bytes),
        "quota_messages": limit_json(quota.messages),
        "users": state.users_of(domain).map(|u| u.len()).unwrap_or(0),
        "aliases": state.aliases_of(domain).map(|a| a.len()).unwrap_or(0),
    })
}

/// `/v1/domains...` and `/v1/aliases...`.
pub async fn handle(
    node: &Arc<Node>,
    method: &Method,
    parts: &[&str],
    req: hyper::Request<crate::listen::TimedBody>,
) -> HttpResponse {
    match (method, parts) {
        (&Method::GET, ["v1", "domains"]) => match node.registry.state().domains() {
            Ok(domains) => {
                let details: Vec<Value> = domains.iter().map(|d| domain_json(node, d)).collect();
                json_response(
                    StatusCode::OK,
                    json!({ "domains": domains, "details": details }),
                )
            }
            Err(e) => registry_error(e),
        },
        (&Method::POST, ["v1", "domains"]) => {
            let body: NewDomain = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (bytes, messages) = match body.quota.limits() {
                Ok(l) => l,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let quota = Quota {
                bytes: bytes.unwrap_or_default(),
                messages: messages.unwrap_or_default(),
            };
            match node.registry.add_domain(&body.domain, quota).await {
                Ok(d) => {
                    tracing::info!(domain = %d, "domain added");
                    json_response(StatusCode::CREATED, domain_json(node, &d))
                }
                Err(e) => registry_error(e),
            }
        }
        (&Method::PUT, ["v1", "domains", domain, "quota"]) => {
            let domain = percent_decode(domain);
            let body: QuotaBody = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (bytes, messages) = match body.limits() {
                Ok(l) => l,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match node
                .registry
                .set_domain_quota(&domain, bytes, messages)
                .await
            {
                Ok(d) => json_response(StatusCode::OK, domain_json(node, &d)),
                Err(e) => registry_error(e),
            }
        }
        (&Method::DELETE, ["v1", "domains", domain]) => {
            let force = query_flag(req.uri().query(), "force");
            match node
                .registry
                .del_domain(&percent_decode(domain), force)
                .await
            {
                Ok((d, users, aliases)) => {
                    tracing::info!(domain = %d, users, aliases, "domain deleted");
                    json_response(
                        StatusCode::OK,
                        json!({"deleted": d, "users_removed": users, "aliases_removed": aliases}),
                    )
                }
                Err(e) => registry_error(e),
            }
        }
        (&Method::GET, ["v1", "aliases"]) => match node.registry.state().aliases() {
            Ok(aliases) => {
                let list: Vec<Value> = aliases
                    .into_iter()
                    .map(|(source, a)| json!({"source": source, "targets": a.targets}))
                    .collect();
                json_response(StatusCode::OK, json!({ "aliases": list }))
            }
            Err(e) => registry_error(e),
        },
        (&Method::POST, ["v1", "aliases"]) => {
            let body: NewAlias = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match node.registry.add_alias(&body.source, &body.targets).await {
                Ok((source, targets)) => {
                    tracing::info!(%source, ?targets, "alias added");
                    json_response(
                        StatusCode::CREATED,
                        json!({"source": source, "targets": targets}),
                    )
                }
                Err(e) => registry_error(e),
            }
        }
        (&Method::DELETE, ["v1", "aliases", source]) => {
            match node.registry.del_alias(&percent_decode(source)).await {
                Ok(source) => {
                    tracing::info!(%source, "alias deleted");
                    json_response(StatusCode::OK, json!({ "deleted": source }))
                }
                Err(e) => registry_error(e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {method} /{}", parts.join("/")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit_text("1000"), Ok(Limit::Max(1000)));
        assert_eq!(parse_limit_text("10M"), Ok(Limit::Max(10 << 20)));
        assert_eq!(parse_limit_text("2g"), Ok(Limit::Max(2 << 30)));
        assert_eq!(parse_limit_text("512KB"), Ok(Limit::Max(512 << 10)));
        assert_eq!(parse_limit_text("unlimited"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit_text("default"), Ok(Limit::Default));
        assert_eq!(parse_limit_text("1000b"), Ok(Limit::Max(1000)));
        assert!(parse_limit_text("ten").is_err());
        assert!(parse_limit_text("k").is_err());
        assert!(parse_limit_text("-1").is_err());
        assert!(parse_limit_text("99999999999T").is_err());
        assert_eq!(parse_limit(&json!(5)), Ok(Some(Limit::Max(5))));
        assert_eq!(parse_limit(&Value::Null), Ok(None));
        assert!(parse_limit(&json!(1.5)).is_err());
    }
}
