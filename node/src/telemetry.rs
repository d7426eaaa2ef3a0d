//! Prometheus metrics: the recorder (latency histograms with fixed buckets), a `# HELP`
//! text for every series, and the SMTP delivery wrapper that counts messages accepted
//! and rejected by reply code. The series themselves are recorded where the work is
//! done (`metrics::counter!` and friends); every name used must be described here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use smtp::{DeliverError, Envelope, RcptVerdict};

/// Histogram buckets of every `*_seconds` series, 0.5 ms to 30 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Messages accepted over SMTP since start (for the cluster status and dashboard).
pub static SMTP_MESSAGES_ACCEPTED: AtomicU64 = AtomicU64::new(0);
/// Messages refused at end of DATA since start.
pub static SMTP_MESSAGES_REJECTED: AtomicU64 = AtomicU64::new(0);
/// Messages sent to POP3 clients since start.
pub static POP_MESSAGES_RETRIEVED: AtomicU64 = AtomicU64::new(0);

/// Install the Prometheus recorder and describe every series; `None` (logged) when a
/// recorder is already installed in this process.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok()?;
    describe();
    Some(handle)
}

/// A `# HELP` text for every series the node records.
fn describe() {
    // SMTP.
    describe_histogram!(
        "porcupine_session_seconds",
        "Duration of client sessions, by protocol (smtp, pop, pop3s)"
    );
    describe_counter!(
        "porcupine_sessions_total",
        "Client sessions ended, by protocol"
    );
    describe_gauge!(
        "porcupine_sessions_open",
        "Client sessions open now, by protocol"
    );
    describe_counter!(
        "porcupine_smtp_recipients_total",
        "RCPT TO verdicts, by reply code (250 accepted, 550 unknown user or relay denied, 451 temporary)"
    );
    describe_counter!(
        "porcupine_smtp_messages_total",
        "Messages at end of DATA/BDAT, by reply code (250 stored, 451/452 temporary, 554 permanent)"
    );
    describe_counter!(
        "porcupine_smtp_message_bytes_total",
        "Bytes of messages stored (accepted with 250)"
    );
    describe_histogram!(
        "porcupine_smtp_transaction_seconds",
        "Time from end of DATA to the reply (placement plus durable copies), by reply code"
    );
    describe_counter!(
        "porcupine_messages_delivered_total",
        "Mailbox deliveries (one per local recipient of an accepted message)"
    );
    // POP3.
    describe_histogram!(
        "porcupine_pop_command_seconds",
        "Latency of the POP3 commands that reach the cluster (open: PASS/APOP, retr: RETR/TOP, quit: the UPDATE state)"
    );
    describe_counter!(
        "porcupine_pop_commands_total",
        "POP3 commands that reach the cluster, by command and outcome (ok, err)"
    );
    describe_counter!(
        "porcupine_pop_messages_retrieved_total",
        "Messages sent to POP3 clients"
    );
    describe_counter!(
        "porcupine_pop_bytes_total",
        "Message bytes sent to POP3 clients"
    );
    describe_counter!(
        "porcupine_pop_reads_total",
        "Message reads by POP3 sessions, by source (local or remote copy)"
    );
    describe_counter!(
        "porcupine_tls_handshake_failures_total",
        "TLS handshakes that failed, by listener"
    );
    // RPC.
    describe_histogram!(
        "porcupine_rpc_seconds",
        "Latency of calls to other nodes, by request kind"
    );
    describe_counter!(
        "porcupine_rpc_calls_total",
        "Calls to other nodes, by request kind, peer node and outcome (ok, error)"
    );
    describe_counter!(
        "porcupine_rpc_version_refused_total",
        "RPC requests refused for an unreadable protocol version header"
    );
    // Storage.
    describe_histogram!(
        "porcupine_storage_append_seconds",
        "Durable message appends as a Store request waits for them (write plus the group-committed fdatasync)"
    );
    describe_histogram!(
        "porcupine_storage_delete_seconds",
        "Durable tombstone writes"
    );
    describe_gauge!(
        "porcupine_messages_stored",
        "Live messages in this node's fragments"
    );
    describe_gauge!(
        "porcupine_tombstones_stored",
        "Tombstones in this node's fragments"
    );
    describe_gauge!(
        "porcupine_fragment_users",
        "Users with a fragment on this node"
    );
    describe_gauge!(
        "porcupine_segment_bytes",
        "Bytes in this node's message segment files"
    );
    describe_counter!(
        "porcupine_storage_batches_total",
        "Group commits of the store since start (one fdatasync each; batches per write request show how well writes share an fsync)"
    );
    describe_counter!(
        "porcupine_storage_write_requests_total",
        "Store append and delete requests served since start"
    );
    describe_counter!(
        "porcupine_storage_commit_microseconds_total",
        "Time the store's writer spent in group commits since start (appends, fdatasync, index update), microseconds"
    );
    describe_counter!(
        "porcupine_storage_commit_cpu_microseconds_total",
        "CPU the store's writer thread spent in group commits since start (sled's own threads not included), microseconds"
    );
    describe_gauge!(
        "porcupine_disk_free_bytes",
        "Free bytes on the data directory's file system"
    );
    describe_gauge!(
        "porcupine_disk_nearly_full",
        "1 when free space is under the reserve (no new mail placed here)"
    );
    // Repair.
    describe_gauge!(
        "porcupine_under_replicated_messages",
        "Messages short of R copies seen by the last repair pass"
    );
    describe_gauge!(
        "porcupine_repair_pending_messages",
        "Messages still short of R copies after the last repair pass"
    );
    describe_counter!(
        "porcupine_repair_copies_made_total",
        "Copies made by repair"
    );
    describe_counter!(
        "porcupine_repair_tombstones_spread_total",
        "Tombstones spread by repair to copies that missed a delete"
    );
    describe_counter!("porcupine_repair_passes_total", "Complete repair passes");
    describe_counter!(
        "porcupine_tombstones_collected_total",
        "Tombstones collected (every replica had them)"
    );
    describe_counter!(
        "porcupine_drain_copies_total",
        "Copies made because a holder is draining"
    );
    describe_gauge!(
        "porcupine_drain_pending_messages",
        "Messages short of R copies outside draining nodes after the last pass"
    );
    // Membership and load.
    describe_gauge!(
        "porcupine_load",
        "This node's load figure (requests in flight)"
    );
    describe_gauge!(
        "porcupine_node_load",
        "Each live node's load as this node's load table has it, by node"
    );
    describe_gauge!(
        "porcupine_node_nearly_full",
        "1 when a node reports its disk nearly full, by node"
    );
    describe_gauge!(
        "porcupine_node_draining",
        "1 when a node is being drained, by node"
    );
    describe_gauge!(
        "porcupine_users_managed",
        "Users whose mail maps this node manages"
    );
    describe_gauge!("porcupine_view_epoch", "Epoch counter of the current view");
    describe_gauge!("porcupine_view_members", "Live nodes in the current view");
    describe_counter!("porcupine_view_changes_total", "Views this node installed");
}

/// The label of one RPC request kind.
pub fn request_kind(req: &crate::rpc::Request) -> &'static str {
    use crate::rpc::Request as R;
    match req {
        R::Membership(_) => "membership",
        R::Place { .. } => "place",
        R::Store { .. } => "store",
        R::Open { .. } => "open",
        R::MailMap { .. } => "mail_map",
        R::Close { .. } => "close",
        R::List { .. } => "list",
        R::Read { .. } => "read",
        R::Delete { .. } => "delete",
        R::Purge { .. } => "purge",
        R::Report(_) => "report",
        R::Announce(_) => "announce",
        R::Ask(_) => "ask",
        R::Handoff(_) => "handoff",
        R::Forget { .. } => "forget",
        R::Drain { .. } => "drain",
        R::Status => "status",
        R::Registry(_) => "registry",
    }
}

/// Record one POP3 command that reached the cluster.
pub fn pop_command(command: &'static str, started: Instant, ok: bool) {
    metrics::histogram!("porcupine_pop_command_seconds", "command" => command)
        .record(started.elapsed().as_secs_f64());
    let outcome = if ok { "ok" } else { "err" };
    metrics::counter!("porcupine_pop_commands_total", "command" => command, "outcome" => outcome)
        .increment(1);
}

/// The reply code a delivery result gives the client.
fn deliver_code(r: &Result<(), DeliverError>) -> &'static str {
    match r {
        Ok(()) => "250",
        Err(DeliverError::Temporary(_)) => "451",
        Err(DeliverError::NoSpace(_)) => "452",
        Err(DeliverError::OverQuota(_)) => "552",
        Err(DeliverError::Permanent(_)) => "554",
    }
}

/// The reply code a recipient verdict gives the client.
fn rcpt_code(v: &RcptVerdict) -> &'static str {
    match v {
        RcptVerdict::Accept => "250",
        RcptVerdict::UnknownUser | RcptVerdict::RelayDenied => "550",
        RcptVerdict::TempFail(_) => "451",
        RcptVerdict::OverQuota(_) => "552",
        RcptVerdict::Unroutable(_) => "550",
    }
}

/// An [`smtp::Deliver`] that counts what the inner one decides, by reply code.
pub struct MeteredDeliver<D>(pub D);

impl<D: smtp::Deliver> smtp::Deliver for MeteredDeliver<D> {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        let v = self.0.check_recipient(address).await;
        metrics::counter!("porcupine_smtp_recipients_total", "reply" => rcpt_code(&v)).increment(1);
        v
    }

    async fn deliver(&self, envelope: &Envelope, message: Bytes) -> Result<(), DeliverError> {
        let started = Instant::now();
        let size = message.len() as u64;
        let r = self.0.deliver(envelope, message).await;
        let code = deliver_code(&r);
        metrics::histogram!("porcupine_smtp_transaction_seconds", "reply" => code)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("porcupine_smtp_messages_total", "reply" => code).increment(1);
        if r.is_ok() {
            metrics::counter!("porcupine_smtp_message_bytes_total").increment(size);
            SMTP_MESSAGES_ACCEPTED.fetch_add(1, Ordering::Relaxed);
        } else {
            SMTP_MESSAGES_REJECTED.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_follow_the_smtp_crate_mapping() {
        assert_eq!(deliver_code(&Ok(())), "250");
        assert_eq!(
            deliver_code(&Err(DeliverError::Temporary("x".into()))),
            "451"
        );
        assert_eq!(deliver_code(&Err(DeliverError::NoSpace("x".into()))), "452");
        assert_eq!(
            deliver_code(&Err(DeliverError::Permanent("x".into()))),
            "554"
        );
        assert_eq!(rcpt_code(&RcptVerdict::Accept), "250");
        assert_eq!(rcpt_code(&RcptVerdict::RelayDenied), "550");
        assert_eq!(rcpt_code(&RcptVerdict::TempFail("x".into())), "451");
    }
}
