//! The operator CLI's side of the admin API: a small JSON-over-HTTP client and the
//! commands that print its answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::token::AdminToken;

/// A client for one node's admin API.
pub struct AdminClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<AdminToken>,
}

/// Environment variable naming the admin token file.
pub const TOKEN_FILE_ENV: &str = "PORCUPINE_TOKEN_FILE";
/// Environment variable holding the admin token itself.
pub const TOKEN_ENV: &str = "PORCUPINE_TOKEN";
/// Where the CLI looks for a token when told nothing: `up`'s default data dir, then
/// `serve`'s default data dir (both relative to the working directory).
const DEFAULT_TOKEN_FILES: &[&str] = &[
    "porcupine-data/admin.token",
    "porcupine-data/node-0/admin.token",
];

/// The admin token the CLI sends, found in this order: `--token-file`,
/// `$PORCUPINE_TOKEN_FILE`, `$PORCUPINE_TOKEN`, then the default files.
pub fn find_token(token_file: Option<&Path>) -> anyhow::Result<AdminToken> {
    let env_file = std::env::var_os(TOKEN_FILE_ENV).filter(|v| !v.is_empty());
    if let Some(path) = token_file
        .map(Path::to_path_buf)
        .or(env_file.map(PathBuf::from))
    {
        return read_token(&path);
    }
    if let Ok(text) = std::env::var(TOKEN_ENV) {
        return AdminToken::new(&text).with_context(|| format!("${TOKEN_ENV} is empty"));
    }
    for f in DEFAULT_TOKEN_FILES {
        if Path::new(f).exists() {
            return read_token(Path::new(f));
        }
    }
    bail!(
        "no admin token: pass --token-file PATH, set ${TOKEN_FILE_ENV} or ${TOKEN_ENV}, or run \
         from the directory holding porcupine-data/ (where `porcupine up` writes admin.token)"
    )
}

fn read_token(path: &Path) -> anyhow::Result<AdminToken> {
    crate::token::read_file(path)?
        .token
        .with_context(|| format!("the admin token file {} is empty", path.display()))
}

/// Percent-encode one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl AdminClient {
    /// A client for the admin API at `base` (e.g. `http://127.0.0.1:2502`).
    pub fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        AdminClient {
            base,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            token: None,
        }
    }

    /// The same client, sending `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: AdminToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Send one request; returns the status and the decoded JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.secret()));
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .with_context(|| format!("building a request to {url}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .with_context(|| format!("no answer from {url} within 30 s"))?
            .with_context(|| {
                format!(
                    "cannot reach the admin API at {} (is a node running there?)",
                    self.base
                )
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
        Ok((status, value))
    }

    async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request(method, path, body).await?;
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the admin API at {} refused the token (HTTP 401): use the token file of that \
                 node or cluster (--token-file, ${TOKEN_FILE_ENV} or ${TOKEN_ENV})",
                self.base
            );
        }
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("request failed");
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

/// `porcupine user add`.
pub async fn user_add(c: &AdminClient, address: &str, password: &str) -> anyhow::Result<()> {
    let v = c
        .expect_ok(
            Method::POST,
            "/v1/users",
            Some(json!({"address": address, "password": password})),
        )
        .await?;
    println!("added {}", v["address"].as_str().unwrap_or(address));
    Ok(())
}

/// `porcupine user del [--keep-mail]`: without `--keep-mail` the user's mail is
/// deleted on every node too (the space returns with compaction).
pub async fn user_del(c: &AdminClient, address: &str, keep_mail: bool) -> anyhow::Result<()> {
    let query = if keep_mail { "?keep_mail=1" } else { "" };
    let v = c
        .expect_ok(
            Method::DELETE,
            &format!("/v1/users/{}{query}", encode_segment(address)),
            None,
        )
        .await?;
    println!("deleted {}", v["deleted"].as_str().unwrap_or(address));
    if keep_mail {
        println!("mail kept");
    } else {
        let purge = &v["purge"];
        println!(
            "mail removed: {} messages on nodes {}",
            purge["messages_deleted"], purge["nodes"]
        );
        if let Some(failed) = purge["failed"].as_array().filter(|f| !f.is_empty()) {
            println!("nodes that did not answer (their copies stay): {failed:?}");
        }
    }
    Ok(())
}

/// `porcupine node verify [--repair]`: fsck of the node behind `--admin`. Fails
/// (exit 1) when damage is left unrepaired.
pub async fn node_verify(c: &AdminClient, repair: bool) -> anyhow::Result<()> {
    let query = if repair { "?repair=1" } else { "" };
    let v = c
        .expect_ok(Method::POST, &format!("/v1/storage/verify{query}"), None)
        .await?;
    let report = &v["report"];
    println!(
        "verified {} segments, {} records, {} bytes",
        report["segments"], report["records"], report["bytes"]
    );
    let damaged = report["damaged"].as_array().cloned().unwrap_or_default();
    for d in &damaged {
        let what = match d["key"].as_object() {
            Some(k) => format!("message {}/{}/{}", k["bucket"], k["user"], k["id"]),
            None => "unused record".to_owned(),
        };
        println!(
            "damaged: segment {} offset {}: {what}: {}",
            d["segment"],
            d["offset"],
            d["reason"].as_str().unwrap_or("")
        );
    }
    let live = damaged.iter().filter(|d| d["key"].is_object()).count();
    println!(
        "{} damaged records, {live} of them live messages (records nothing uses go with compaction)",
        damaged.len()
    );
    if repair {
        let repaired = v["repaired"].as_array().map_or(0, Vec::len);
        let unrepaired = v["unrepaired"].as_array().cloned().unwrap_or_default();
        println!(
            "repaired {repaired} from replicas, {} not repaired",
            unrepaired.len()
        );
        anyhow::ensure!(unrepaired.is_empty(), "not repaired: {unrepaired:?}");
    } else {
        anyhow::ensure!(
            live == 0,
            "damaged live messages (run with --repair to fix them from replicas)"
        );
    }
    Ok(())
}

/// `porcupine node compact`: one compaction pass on the node behind `--admin`.
pub async fn node_compact(c: &AdminClient, live_ratio_min: Option<f64>) -> anyhow::Result<()> {
    let query = live_ratio_min
        .map(|r| format!("?live_ratio_min={r}"))
        .unwrap_or_default();
    let v = c
        .expect_ok(Method::POST, &format!("/v1/storage/compact{query}"), None)
        .await?;
    println!(
        "compacted {} segments: read {} bytes, copied {} bytes, removed {} bytes in {} ms; {} segment bytes now",
        v["segments_removed"],
        v["read_bytes"],
        v["copied_bytes"],
        v["removed_bytes"],
        v["elapsed_ms"],
        v["segment_bytes"]
    );
    Ok(())
}

/// `porcupine user passwd`.
pub async fn user_passwd(c: &AdminClient, address: &str, password: &str) -> anyhow::Result<()> {
    c.expect_ok(
        Method::PUT,
        &format!("/v1/users/{}/password", encode_segment(address)),
        Some(json!({ "password": password })),
    )
    .await?;
    println!("password changed for {address}");
    Ok(())
}

/// `porcupine user list`.
pub async fn user_list(c: &AdminClient) -> anyhow::Result<()> {
    let v = c.expect_ok(Method::GET, "/v1/users", None).await?;
    for u in v["users"].as_array().into_iter().flatten() {
        println!("{}", u.as_str().unwrap_or_default());
    }
    Ok(())
}

/// `porcupine status`.
pub async fn status(c: &AdminClient, as_json: bool) -> anyhow::Result<()> {
    let v = c.expect_ok(Method::GET, "/v1/cluster", None).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "node {}  epoch {} (coordinator {})  mail maps {}  users managed {}",
        v["node"],
        v["epoch"],
        v["epoch_coordinator"],
        if v["maps_complete"].as_bool() == Some(true) {
            "complete"
        } else {
            "rebuilding"
        },
        v["users_managed"]
    );
    println!(
        "fragments here: {} messages of {} users, {} tombstones; registry leader {} voters {} learners {}",
        v["fragments"]["messages"],
        v["fragments"]["users"],
        v["fragments"]["tombstones"],
        v["registry"]["leader"],
        v["registry"]["voters"],
        v["registry"]["learners"],
    );
    println!(
        "repair: under-replicated {} (pending {}), copies made {}, tombstones spread {}, collected {}, passes {}",
        v["repair"]["under_replicated"],
        v["repair"]["pending"],
        v["repair"]["copies_made_total"],
        v["repair"]["tombstones_spread_total"],
        v["repair"]["tombstones_collected_total"],
        v["repair"]["passes_total"],
    );
    println!(
        "{:>6} {:>5} {:>21} {:>21} {:>21} {:>21} {:>6} {:>5} {:>7}",
        "id", "alive", "smtp", "pop", "admin", "rpc", "load", "disk", "buckets"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {:>5} {:>21} {:>21} {:>21} {:>21} {:>6} {:>5} {:>7}",
            n["id"].to_string(),
            if n["alive"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            },
            n["smtp"].as_str().unwrap_or("-"),
            n["pop"].as_str().unwrap_or("-"),
            n["admin"].as_str().unwrap_or("-"),
            n["rpc"].as_str().unwrap_or("-"),
            n["load"].to_string(),
            if n["nearly_full"].as_bool() == Some(true) {
                "FULL"
            } else {
                "ok"
            },
            n["buckets"].to_string(),
        );
    }
    Ok(())
}

/// `porcupine node remove`.
pub async fn node_remove(c: &AdminClient, id: u64) -> anyhow::Result<()> {
    let v = c
        .expect_ok(Method::POST, &format!("/v1/nodes/{id}/remove"), None)
        .await?;
    println!("node {id} removed; told nodes {}", v["told"]);
    Ok(())
}
