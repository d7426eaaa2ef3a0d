//! The CLI side of domains, aliases and quotas: `porcupine domain`, `porcupine alias`,
//! `porcupine user set` and the usage columns of `porcupine user list`.

use anyhow::Context;
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::{AdminClient, encode_segment};

/// Quota flags as the API takes them (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct QuotaArgs {
    /// `--quota-bytes`: a size (`10M`), `unlimited` or `default`.
    pub bytes: Option<String>,
    /// `--quota-messages`: a count, `unlimited` or `default`.
    pub messages: Option<String>,
}

impl QuotaArgs {
    fn into_json(self, mut body: Value) -> Value {
        if let Some(b) = self.bytes {
            body["quota_bytes"] = json!(b);
        }
        if let Some(m) = self.messages {
            body["quota_messages"] = json!(m);
        }
        body
    }
}

fn limit_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => "-".into(),
    }
}

fn max_text(v: &Value) -> String {
    v.as_u64().map_or("unlimited".into(), |n| n.to_string())
}

/// `porcupine user add` with optional quota flags.
pub async fn user_add(
    c: &AdminClient,
    address: &str,
    password: &str,
    quota: QuotaArgs,
) -> anyhow::Result<()> {
    let body = quota.into_json(json!({"address": address, "password": password}));
    let v = c.expect_ok(Method::POST, "/v1/users", Some(body)).await?;
    crate::outln!("added {}", v["address"].as_str().unwrap_or(address));
    Ok(())
}

/// `PUT /v1/{collection}/{name}/quota` with the quota flags given (at least one).
async fn put_quota(
    c: &AdminClient,
    collection: &str,
    name: &str,
    quota: QuotaArgs,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        quota.bytes.is_some() || quota.messages.is_some(),
        "nothing to set: pass --quota-bytes and/or --quota-messages"
    );
    c.expect_ok(
        Method::PUT,
        &format!("/v1/{collection}/{}/quota", encode_segment(name)),
        Some(quota.into_json(json!({}))),
    )
    .await
}

/// `porcupine user set ADDRESS --quota-bytes .. --quota-messages ..`.
pub async fn user_set(c: &AdminClient, address: &str, quota: QuotaArgs) -> anyhow::Result<()> {
    let v = put_quota(c, "users", address, quota).await?;
    crate::outln!(
        "{}: quota {} bytes, {} messages (own: {}, {})",
        v["address"].as_str().unwrap_or(address),
        max_text(&v["quota_bytes_max"]),
        max_text(&v["quota_messages_max"]),
        limit_text(&v["quota_bytes"]),
        limit_text(&v["quota_messages"]),
    );
    Ok(())
}

/// `porcupine user list`: every account with its usage and limits.
pub async fn user_list(c: &AdminClient) -> anyhow::Result<()> {
    let v = c
        .expect_ok(Method::GET, "/v1/users?usage=true", None)
        .await?;
    crate::outln!(
        "{:<40} {:>12} {:>12} {:>9} {:>9}",
        "address",
        "used_bytes",
        "quota_bytes",
        "messages",
        "quota_msg"
    );
    for a in v["accounts"].as_array().into_iter().flatten() {
        let used = |k: &str| {
            a[k].as_u64()
                .map_or_else(|| "?".to_string(), |n| n.to_string())
        };
        crate::outln!(
            "{:<40} {:>12} {:>12} {:>9} {:>9}",
            a["address"].as_str().unwrap_or_default(),
            used("used_bytes"),
            max_text(&a["quota_bytes_max"]),
            used("used_messages"),
            max_text(&a["quota_messages_max"]),
        );
    }
    Ok(())
}

/// `porcupine domain add`.
pub async fn domain_add(c: &AdminClient, domain: &str, quota: QuotaArgs) -> anyhow::Result<()> {
    let v = c
        .expect_ok(
            Method::POST,
            "/v1/domains",
            Some(quota.into_json(json!({ "domain": domain }))),
        )
        .await?;
    crate::outln!(
        "added domain {} (default quota {} bytes, {} messages)",
        v["domain"].as_str().unwrap_or(domain),
        limit_text(&v["quota_bytes"]),
        limit_text(&v["quota_messages"]),
    );
    Ok(())
}

/// `porcupine domain set`.
pub async fn domain_set(c: &AdminClient, domain: &str, quota: QuotaArgs) -> anyhow::Result<()> {
    let v = put_quota(c, "domains", domain, quota).await?;
    crate::outln!(
        "{}: default quota {} bytes, {} messages",
        v["domain"].as_str().unwrap_or(domain),
        limit_text(&v["quota_bytes"]),
        limit_text(&v["quota_messages"]),
    );
    Ok(())
}

/// `porcupine domain del [--force]`.
pub async fn domain_del(c: &AdminClient, domain: &str, force: bool) -> anyhow::Result<()> {
    let path = format!(
        "/v1/domains/{}{}",
        encode_segment(domain),
        if force { "?force=true" } else { "" }
    );
    let v = c.expect_ok(Method::DELETE, &path, None).await?;
    crate::outln!(
        "deleted domain {} ({} account(s), {} alias(es) removed with it)",
        v["deleted"].as_str().unwrap_or(domain),
        v["users_removed"],
        v["aliases_removed"],
    );
    Ok(())
}

/// `porcupine domain list`.
pub async fn domain_list(c: &AdminClient) -> anyhow::Result<()> {
    let v = c.expect_ok(Method::GET, "/v1/domains", None).await?;
    crate::outln!(
        "{:<40} {:>6} {:>8} {:>12} {:>10}",
        "domain",
        "users",
        "aliases",
        "quota_bytes",
        "quota_msg"
    );
    for d in v["details"].as_array().into_iter().flatten() {
        crate::outln!(
            "{:<40} {:>6} {:>8} {:>12} {:>10}",
            d["domain"].as_str().unwrap_or_default(),
            d["users"],
            d["aliases"],
            limit_text(&d["quota_bytes"]),
            limit_text(&d["quota_messages"]),
        );
    }
    Ok(())
}

/// `porcupine alias add SOURCE TARGET...`.
pub async fn alias_add(c: &AdminClient, source: &str, targets: &[String]) -> anyhow::Result<()> {
    let v = c
        .expect_ok(
            Method::POST,
            "/v1/aliases",
            Some(json!({"source": source, "targets": targets})),
        )
        .await?;
    let targets: Vec<String> = v["targets"]
        .as_array()
        .context("the answer has no targets")?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    crate::outln!(
        "added alias {} -> {}",
        v["source"].as_str().unwrap_or(source),
        targets.join(", ")
    );
    Ok(())
}

/// `porcupine alias del SOURCE`.
pub async fn alias_del(c: &AdminClient, source: &str) -> anyhow::Result<()> {
    let v = c
        .expect_ok(
            Method::DELETE,
            &format!("/v1/aliases/{}", encode_segment(source)),
            None,
        )
        .await?;
    crate::outln!("deleted alias {}", v["deleted"].as_str().unwrap_or(source));
    Ok(())
}

/// `porcupine alias list`.
pub async fn alias_list(c: &AdminClient) -> anyhow::Result<()> {
    let v = c.expect_ok(Method::GET, "/v1/aliases", None).await?;
    for a in v["aliases"].as_array().into_iter().flatten() {
        let targets: Vec<&str> = a["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        crate::outln!(
            "{} -> {}",
            a["source"].as_str().unwrap_or_default(),
            targets.join(", ")
        );
    }
    Ok(())
}

/// `--quota-bytes` / `--quota-messages`, for `user add|set` and `domain add|set`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QuotaFlags {
    /// Most bytes the mailbox may hold: a size (`10M`, `2G`, `512K`, `1000`),
    /// `unlimited`, or `default` (an account: its domain's default).
    #[arg(long)]
    pub quota_bytes: Option<String>,
    /// Most messages the mailbox may hold: a count, `unlimited` or `default`.
    #[arg(long)]
    pub quota_messages: Option<String>,
}

impl From<QuotaFlags> for QuotaArgs {
    fn from(f: QuotaFlags) -> Self {
        QuotaArgs {
            bytes: f.quota_bytes,
            messages: f.quota_messages,
        }
    }
}

/// `porcupine domain ...`.
#[derive(clap::Subcommand, Debug)]
pub enum DomainCommand {
    /// Make a domain local, with default quotas for its accounts.
    Add {
        /// The domain name.
        domain: String,
        /// Default quotas of the domain's accounts.
        #[command(flatten)]
        quota: QuotaFlags,
    },
    /// Remove a local domain (refused while it has accounts or aliases).
    Del {
        /// The domain name.
        domain: String,
        /// Remove the domain's accounts and aliases with it (their stored mail stays
        /// until deleted, as with `user del`).
        #[arg(long)]
        force: bool,
    },
    /// Change a domain's default quotas.
    Set {
        /// The domain name.
        domain: String,
        /// New default quotas.
        #[command(flatten)]
        quota: QuotaFlags,
    },
    /// List local domains with their accounts, aliases and default quotas.
    List,
}

/// `porcupine alias ...`.
#[derive(clap::Subcommand, Debug)]
pub enum AliasCommand {
    /// Deliver mail for SOURCE (`name@domain`, or `@domain` for the domain's
    /// catch-all) to local accounts or aliases.
    Add {
        /// `name@domain` or `@domain`.
        source: String,
        /// Local accounts or aliases.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove an alias or catch-all.
    Del {
        /// `name@domain` or `@domain`.
        source: String,
    },
    /// List aliases and catch-alls.
    List,
}

/// Run one `porcupine domain` command.
pub async fn domain(c: &AdminClient, cmd: DomainCommand) -> anyhow::Result<()> {
    match cmd {
        DomainCommand::Add { domain, quota } => domain_add(c, &domain, quota.into()).await,
        DomainCommand::Del { domain, force } => domain_del(c, &domain, force).await,
        DomainCommand::Set { domain, quota } => domain_set(c, &domain, quota.into()).await,
        DomainCommand::List => domain_list(c).await,
    }
}

/// Run one `porcupine alias` command.
pub async fn alias(c: &AdminClient, cmd: AliasCommand) -> anyhow::Result<()> {
    match cmd {
        AliasCommand::Add { source, targets } => alias_add(c, &source, &targets).await,
        AliasCommand::Del { source } => alias_del(c, &source).await,
        AliasCommand::List => alias_list(c).await,
    }
}
