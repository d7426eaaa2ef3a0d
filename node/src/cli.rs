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
pub(crate) fn encode_segment(s: &str) -> String {
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

    /// Send one request and return its JSON body; a non-2xx answer is an error
    /// carrying the API's message.
    pub async fn expect_ok(
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
    crate::outln!("deleted {}", v["deleted"].as_str().unwrap_or(address));
    if keep_mail {
        crate::outln!("mail kept");
    } else {
        let purge = &v["purge"];
        crate::outln!(
            "mail removed: {} messages on nodes {}",
            purge["messages_deleted"],
            purge["nodes"]
        );
        if let Some(failed) = purge["failed"].as_array().filter(|f| !f.is_empty()) {
            crate::outln!("nodes that did not answer (their copies stay): {failed:?}");
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
    crate::outln!(
        "verified {} segments, {} records, {} bytes",
        report["segments"],
        report["records"],
        report["bytes"]
    );
    let damaged = report["damaged"].as_array().cloned().unwrap_or_default();
    for d in &damaged {
        let what = match d["key"].as_object() {
            Some(k) => format!("message {}/{}/{}", k["bucket"], k["user"], k["id"]),
            None => "unused record".to_owned(),
        };
        crate::outln!(
            "damaged: segment {} offset {}: {what}: {}",
            d["segment"],
            d["offset"],
            d["reason"].as_str().unwrap_or("")
        );
    }
    let live = damaged.iter().filter(|d| d["key"].is_object()).count();
    crate::outln!(
        "{} damaged records, {live} of them live messages (records nothing uses go with compaction)",
        damaged.len()
    );
    if repair {
        let repaired = v["repaired"].as_array().map_or(0, Vec::len);
        let unrepaired = v["unrepaired"].as_array().cloned().unwrap_or_default();
        crate::outln!(
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
    crate::outln!(
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
    crate::outln!("password changed for {address}");
    Ok(())
}

/// A list of ids as the table shows it: `0, 1, 2`, or `none`.
fn id_list(v: &Value) -> String {
    let ids: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| x.to_string())
        .collect();
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

/// A byte count as the table shows it (`1.5 GiB`), `-` when unknown.
fn bytes_text(v: &Value) -> String {
    let Some(b) = v.as_u64() else {
        return "-".into();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// A number as the table shows it, `-` when absent.
fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `versions:` line: one entry per distinct (release, RPC version, data format)
/// among the nodes that answered, with the nodes running it, so a rolling upgrade's
/// mix (or a node left behind) shows; RPCs refused for their version are summed.
fn versions_text(nodes: &[&Value]) -> String {
    let mut by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut refused = 0;
    for n in nodes {
        let ver = &n["version"];
        if ver.is_null() {
            continue;
        }
        refused += ver["rpc_refused"].as_u64().unwrap_or(0);
        let key = format!(
            "{} (rpc {}, reads {}-{}; data format {})",
            num(&ver["release"]),
            num(&ver["rpc"]),
            num(&ver["rpc_min"]),
            num(&ver["rpc"]),
            num(&ver["data_format"])
        );
        by.entry(key).or_default().push(num(&n["id"]));
    }
    let mut text = String::from("versions: ");
    if by.is_empty() {
        text.push_str("unknown");
    } else if by.len() == 1 {
        let (k, _) = by.iter().next().expect("one entry");
        text.push_str(&format!("{k} on every node that answered"));
    } else {
        let parts: Vec<String> = by
            .iter()
            .map(|(k, ids)| format!("{k} on {}", ids.join(", ")))
            .collect();
        text.push_str(&format!("MIXED: {}", parts.join("; ")));
    }
    if refused > 0 {
        text.push_str(&format!("; {refused} RPCs refused for their version"));
    }
    text
}

/// The readable table of `porcupine status` for a `GET /v1/status` document.
pub fn status_text(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let nodes: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    let live = v["live"].as_array().map(|a| a.len()).unwrap_or(0);
    out.push(format!(
        "cluster:  view epoch {} (coordinator {}), {live} of {} known nodes live; asked node {}{}",
        num(&v["epoch"]),
        num(&v["epoch_coordinator"]),
        nodes.len(),
        num(&v["node"]),
        if v["cluster"]["all_answered"].as_bool() == Some(true) {
            String::new()
        } else {
            format!(" (answered: {})", id_list(&v["cluster"]["answered"]))
        }
    ));
    let r = &v["registry"];
    out.push(format!(
        "registry: leader: {}  voters: {}  learners: {}  term {}",
        if r["leader"].is_null() {
            "none".to_string()
        } else {
            num(&r["leader"])
        },
        id_list(&r["voters"]),
        id_list(&r["learners"]),
        num(&r["term"]),
    ));
    out.push(versions_text(&nodes));
    let f = &v["cluster"]["fragments"];
    let t = &v["cluster"]["traffic"];
    out.push(format!(
        "mail:     {} message copies, {} tombstones, {} in segments; smtp accepted {}, refused {}; pop3 retrieved {}",
        num(&f["messages"]),
        num(&f["tombstones"]),
        bytes_text(&f["segment_bytes"]),
        num(&t["smtp_messages_accepted"]),
        num(&t["smtp_messages_rejected"]),
        num(&t["pop_messages_retrieved"]),
    ));
    let rp = &v["cluster"]["repair"];
    out.push(format!(
        "repair:   under-replicated {} (pending {}), copies made {}, tombstones spread {}, collected {}, passes {} (summed over the nodes that answered)",
        num(&rp["under_replicated"]),
        num(&rp["pending"]),
        num(&rp["copies_made_total"]),
        num(&rp["tombstones_spread_total"]),
        num(&rp["tombstones_collected_total"]),
        num(&rp["passes_total"]),
    ));
    for d in v["cluster"]["drain"].as_array().into_iter().flatten() {
        out.push(format!(
            "drain:    node {}: {}; {} copies moved so far, {} copies still on it",
            num(&d["id"]),
            if d["holds_nothing_needed"].as_bool() == Some(true) {
                "holds nothing needed (stop it, then `porcupine node remove`)".to_string()
            } else {
                format!(
                    "re-replicating ({} messages short of R elsewhere)",
                    num(&d["pending"])
                )
            },
            num(&rp["drain_copies_total"]),
            num(&d["messages_held"]),
        ));
    }
    out.push(String::new());
    out.push(format!(
        "{:>4}  {:<9} {:>5} {:>7} {:>9} {:>6} {:>10} {:>10} {:<10} {:<21} {}",
        "id",
        "state",
        "load",
        "buckets",
        "messages",
        "users",
        "stored",
        "disk free",
        "maps",
        "smtp",
        "admin"
    ));
    for n in nodes {
        let state = if n["alive"].as_bool() != Some(true) {
            "DOWN"
        } else if n["draining"].as_bool() == Some(true) {
            "draining"
        } else if n["disk"]["nearly_full"].as_bool() == Some(true)
            || n["nearly_full"].as_bool() == Some(true)
        {
            "FULL"
        } else if n["answered"].as_bool() != Some(true) {
            "silent"
        } else {
            "up"
        };
        let maps = match n["maps_complete"].as_bool() {
            Some(true) => "complete",
            Some(false) => "rebuilding",
            None => "-",
        };
        out.push(format!(
            "{:>4}  {:<9} {:>5} {:>7} {:>9} {:>6} {:>10} {:>10} {:<10} {:<21} {}",
            num(&n["id"]),
            state,
            num(&n["load"]),
            num(&n["buckets"]),
            num(&n["fragments"]["messages"]),
            num(&n["fragments"]["users"]),
            bytes_text(&n["fragments"]["segment_bytes"]),
            bytes_text(&n["disk"]["free_bytes"]),
            maps,
            n["smtp"].as_str().unwrap_or("-"),
            n["admin"].as_str().unwrap_or("-"),
        ));
    }
    out
}

/// `porcupine status`: the whole cluster, from the node at `--admin`.
pub async fn status(c: &AdminClient, as_json: bool) -> anyhow::Result<()> {
    let v = c.expect_ok(Method::GET, "/v1/status", None).await?;
    if as_json {
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for line in status_text(&v) {
        crate::out::line(line);
    }
    Ok(())
}

/// `porcupine node drain` (or `--undo`): mark a node draining on every live node;
/// with `wait`, poll the status until it holds nothing needed.
pub async fn node_drain(
    c: &AdminClient,
    id: u64,
    undo: bool,
    wait: Option<u64>,
) -> anyhow::Result<()> {
    let method = if undo { Method::DELETE } else { Method::POST };
    let v = c
        .expect_ok(method, &format!("/v1/nodes/{id}/drain"), None)
        .await?;
    if undo {
        crate::outln!(
            "node {id} no longer draining; told nodes {}",
            id_list(&v["told"])
        );
        return Ok(());
    }
    crate::outln!(
        "node {id} draining: no new mail goes there and its messages are copied elsewhere; told nodes {}",
        id_list(&v["told"])
    );
    let Some(wait_secs) = wait else {
        crate::outln!("follow it with `porcupine status` (or --wait SECS)");
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let s = c.expect_ok(Method::GET, "/v1/status", None).await?;
        let d = s["cluster"]["drain"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["id"].as_u64() == Some(id))
            .cloned()
            .unwrap_or(Value::Null);
        if d["holds_nothing_needed"].as_bool() == Some(true) {
            crate::outln!(
                "node {id} holds nothing needed ({} copies moved); stop it, then run `porcupine node remove {id}`",
                num(&s["cluster"]["repair"]["drain_copies_total"])
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "node {id} still holds needed messages after {wait_secs} s ({} short of R elsewhere)",
                num(&d["pending"])
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `porcupine dashboard`: a one-time login URL for a browser.
pub async fn dashboard(c: &AdminClient) -> anyhow::Result<()> {
    let v = c
        .expect_ok(Method::POST, "/v1/dashboard/code", None)
        .await?;
    let code = v["code"].as_str().context("no login code in the answer")?;
    crate::outln!("{}/dashboard/login?code={code}", c.base);
    crate::outln!(
        "(open it within {} s; it works once and sets a read-only session cookie)",
        crate::dashboard::CODE_TTL.as_secs()
    );
    Ok(())
}

/// `porcupine node remove`.
pub async fn node_remove(c: &AdminClient, id: u64) -> anyhow::Result<()> {
    let v = c
        .expect_ok(Method::POST, &format!("/v1/nodes/{id}/remove"), None)
        .await?;
    crate::outln!(
        "node {id} removed; told nodes {}; registry voters: {}, learners: {}",
        id_list(&v["told"]),
        id_list(&v["registry"]["voters"]),
        id_list(&v["registry"]["learners"])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_reads_as_text_not_json() {
        let v = json!({
            "node": 1, "epoch": 7, "epoch_coordinator": 0, "live": [0, 1],
            "registry": {"leader": null, "voters": [0, 1], "learners": [], "term": 3},
            "nodes": [
                {"id": 0, "alive": true, "answered": true, "load": 2, "buckets": 32768,
                 "fragments": {"messages": 5, "users": 2}, "disk": {"free_bytes": 2147483648u64},
                 "maps_complete": true, "smtp": "127.0.0.1:2500", "admin": "http://127.0.0.1:2502"},
                {"id": 2, "alive": false, "buckets": 0},
            ],
            "cluster": {
                "all_answered": true, "answered": [0, 1],
                "fragments": {"messages": 9, "tombstones": 1, "segment_bytes": 2048},
                "traffic": {"smtp_messages_accepted": 4, "smtp_messages_rejected": 0, "pop_messages_retrieved": 1},
                "repair": {"under_replicated": 0, "pending": 0, "copies_made_total": 3,
                           "tombstones_spread_total": 0, "tombstones_collected_total": 0, "passes_total": 8,
                           "drain_copies_total": 2},
                "drain": [{"id": 2, "pending": 0, "messages_held": null, "holds_nothing_needed": true}],
            },
        });
        let text = status_text(&v).join("\n");
        assert!(
            text.contains("leader: none  voters: 0, 1  learners: none"),
            "{text}"
        );
        assert!(!text.contains("null") && !text.contains('['), "{text}");
        assert!(
            text.contains("2 of 2 known nodes live; asked node 1"),
            "{text}"
        );
        assert!(text.contains("copies made 3"), "{text}");
        assert!(text.contains("node 2: holds nothing needed"), "{text}");
        assert!(text.contains("2.0 GiB"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("   ")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].split_whitespace().take(2).eq(["0", "up"]), "{text}");
        assert!(
            rows[1].split_whitespace().take(2).eq(["2", "DOWN"]),
            "{text}"
        );
    }

    #[test]
    fn the_versions_line_shows_a_mix_and_refusals() {
        let ver = |rpc: u64, refused: u64| json!({"release": "0.1.0", "rpc": rpc, "rpc_min": 1, "rpc_refused": refused, "data_format": 1});
        let (a, b, c) = (
            json!({"id": 0, "version": ver(1, 0)}),
            json!({"id": 1, "version": ver(2, 3)}),
            json!({"id": 2, "version": ver(1, 0)}),
        );
        let mixed = versions_text(&[&a, &b, &c]);
        assert!(mixed.starts_with("versions: MIXED: "), "{mixed}");
        assert!(
            mixed.contains("(rpc 1, reads 1-1; data format 1) on 0, 2"),
            "{mixed}"
        );
        assert!(
            mixed.contains("(rpc 2, reads 1-2; data format 1) on 1"),
            "{mixed}"
        );
        assert!(
            mixed.ends_with("; 3 RPCs refused for their version"),
            "{mixed}"
        );
        let same = versions_text(&[&a, &c]);
        assert_eq!(
            same,
            "versions: 0.1.0 (rpc 1, reads 1-1; data format 1) on every node that answered"
        );
    }
}
