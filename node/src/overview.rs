//! The whole cluster's status from any node (`GET /v1/status`, `porcupine status`, the
//! dashboard): this node asks every live node for its own figures (the `Status` RPC,
//! answered with that node's `GET /v1/cluster` body), puts each in that node's row of
//! `nodes` and sums them under `cluster`. The rest of the document is the asked node's
//! own `GET /v1/cluster` body, unchanged.

use std::collections::BTreeSet;
use std::sync::Arc;

use membership::NodeId;
use serde_json::{Value, json};

use crate::rpc::{Request, Response};
use crate::service::Node;

/// How long a node's figures are waited for: a node that is down but not yet out of
/// the view must not hold up the status (the dashboard asks every second).
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// Figures summed over the answering nodes, by their key under `repair` (or `fragments`).
const REPAIR_SUMS: &[&str] = &[
    "under_replicated",
    "pending",
    "copies_made_total",
    "tombstones_spread_total",
    "tombstones_collected_total",
    "passes_total",
    "drain_pending",
    "drain_copies_total",
];
const FRAGMENT_SUMS: &[&str] = &["messages", "tombstones", "segment_bytes"];
const TRAFFIC_SUMS: &[&str] = &[
    "smtp_messages_accepted",
    "smtp_messages_rejected",
    "pop_messages_retrieved",
];

/// Ask every live node for its figures and combine them with this node's view.
pub async fn cluster_overview(node: &Arc<Node>) -> Value {
    let own = crate::admin::cluster_status(node);
    let view = node.cluster.view();
    let others = view.live.iter().copied().filter(|&id| id != node.id());
    let answers = futures::future::join_all(others.map(|id| async move {
        let r = tokio::time::timeout(STATUS_WAIT, node.call(id, Request::Status)).await;
        let v = match r {
            Ok(Ok(Response::Status(text))) => serde_json::from_str::<Value>(&text).ok(),
            _ => None,
        };
        (id, v)
    }))
    .await;
    let mut per_node: Vec<(NodeId, Value)> = vec![(node.id(), own.clone())];
    per_node.extend(answers.into_iter().filter_map(|(id, v)| v.map(|v| (id, v))));
    combine(&own, &per_node)
}

fn u64_at(v: &Value, a: &str, b: &str) -> u64 {
    v[a][b].as_u64().unwrap_or(0)
}

/// The cluster-wide document from this node's status and every answer (this node's
/// included), keyed by node id. Pure, so it is tested without a cluster.
pub fn combine(own: &Value, answers: &[(NodeId, Value)]) -> Value {
    let answered: BTreeSet<NodeId> = answers.iter().map(|(id, _)| *id).collect();
    let by_id = |id: u64| answers.iter().find(|(n, _)| *n == id).map(|(_, v)| v);
    let draining: BTreeSet<u64> = own["draining"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let nodes: Vec<Value> = own["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let id = n["id"].as_u64().unwrap_or(u64::MAX);
            let mut out = n.clone();
            out["draining"] = json!(draining.contains(&id));
            out["answered"] = json!(answered.contains(&id));
            if let Some(v) = by_id(id) {
                out["epoch"] = v["epoch"].clone();
                out["maps_complete"] = v["maps_complete"].clone();
                out["users_managed"] = v["users_managed"].clone();
                out["fragments"] = v["fragments"].clone();
                out["disk"] = v["disk"].clone();
                out["repair"] = v["repair"].clone();
                out["traffic"] = v["traffic"].clone();
                out["version"] = v["version"].clone();
                // Its own load figure is fresher than this node's table.
                out["load"] = v["load_here"].clone();
            }
            out
        })
        .collect();
    let mut repair = serde_json::Map::new();
    for k in REPAIR_SUMS {
        let sum: u64 = answers.iter().map(|(_, v)| u64_at(v, "repair", k)).sum();
        repair.insert((*k).to_string(), json!(sum));
    }
    let mut fragments = serde_json::Map::new();
    for k in FRAGMENT_SUMS {
        let sum: u64 = answers.iter().map(|(_, v)| u64_at(v, "fragments", k)).sum();
        fragments.insert((*k).to_string(), json!(sum));
    }
    let mut traffic = serde_json::Map::new();
    for k in TRAFFIC_SUMS {
        let sum: u64 = answers.iter().map(|(_, v)| u64_at(v, "traffic", k)).sum();
        traffic.insert((*k).to_string(), json!(sum));
    }
    let live: BTreeSet<u64> = own["live"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let all_answered = live.iter().all(|id| answered.contains(id));
    // A draining node holds nothing needed once every live node answered, every one's
    // last repair pass already counted it as draining, and none found a message short
    // of R copies outside the draining nodes.
    let drain: Vec<Value> = draining
        .iter()
        .map(|&d| {
            let seen_by_all = all_answered
                && live.iter().filter_map(|&id| by_id(id)).all(|v| {
                    v["last_pass_draining"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(d)))
                });
            let pending = repair
                .get("drain_pending")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let held = by_id(d).map(|v| u64_at(v, "fragments", "messages"));
            json!({
                "id": d,
                "pending": pending,
                "messages_held": held,
                "holds_nothing_needed": seen_by_all && pending == 0,
            })
        })
        .collect();
    // The asked node's own document stays as it was (its `fragments`, `repair`, ...
    // are its own, as `GET /v1/cluster` has them, which scripts already read); the
    // nodes' rows gain every node's own figures and `cluster` holds the sums.
    let mut out = own.clone();
    out["nodes"] = json!(nodes);
    out["cluster"] = json!({
        "asked": own["node"],
        "answered": answered,
        "all_answered": all_answered,
        "fragments": fragments,
        "repair": repair,
        "traffic": traffic,
        "drain": drain,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, messages: u64, copies: u64, pending: u64, seen: &[u64]) -> Value {
        json!({
            "node": id,
            "epoch": 4,
            "live": [0, 1, 2],
            "draining": [2],
            "nodes": [{"id": 0, "alive": true}, {"id": 1, "alive": true}, {"id": 2, "alive": true}],
            "fragments": {"messages": messages, "tombstones": 0, "segment_bytes": 10},
            "repair": {"copies_made_total": copies, "drain_pending": pending},
            "last_pass_draining": seen,
            "traffic": {"smtp_messages_accepted": 1},
            "registry": {"leader": 0},
        })
    }

    #[test]
    fn figures_are_summed_over_every_answer() {
        let own = status(0, 5, 0, 0, &[2]);
        let answers = vec![
            (0, own.clone()),
            (1, status(1, 7, 2, 0, &[2])),
            (2, status(2, 3, 1, 0, &[2])),
        ];
        let v = combine(&own, &answers);
        assert_eq!(v["cluster"]["repair"]["copies_made_total"], 3);
        assert_eq!(v["cluster"]["fragments"]["messages"], 15);
        assert_eq!(v["cluster"]["traffic"]["smtp_messages_accepted"], 3);
        assert_eq!(v["nodes"][1]["fragments"]["messages"], 7);
        assert_eq!(v["nodes"][2]["draining"], true);
        assert_eq!(
            v["fragments"]["messages"], 5,
            "the asked node's own figures stay"
        );
        assert_eq!(v["cluster"]["drain"][0]["holds_nothing_needed"], true);
        assert_eq!(v["cluster"]["drain"][0]["messages_held"], 3);
    }

    #[test]
    fn a_drain_is_not_done_while_a_node_is_silent_pending_or_has_not_seen_it() {
        let own = status(0, 5, 0, 0, &[2]);
        let silent = vec![(0, own.clone()), (1, status(1, 7, 0, 0, &[2]))];
        assert_eq!(
            combine(&own, &silent)["cluster"]["drain"][0]["holds_nothing_needed"],
            false
        );
        let pending = vec![
            (0, own.clone()),
            (1, status(1, 7, 0, 4, &[2])),
            (2, status(2, 3, 0, 0, &[2])),
        ];
        let v = combine(&own, &pending);
        assert_eq!(v["cluster"]["drain"][0]["holds_nothing_needed"], false);
        assert_eq!(v["cluster"]["drain"][0]["pending"], 4);
        let unseen = vec![
            (0, own.clone()),
            (1, status(1, 7, 0, 0, &[])),
            (2, status(2, 3, 0, 0, &[2])),
        ];
        assert_eq!(
            combine(&own, &unseen)["cluster"]["drain"][0]["holds_nothing_needed"],
            false
        );
    }
}
