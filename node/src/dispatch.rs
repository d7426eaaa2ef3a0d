//! RPC dispatch: what a node does with each request from another node (or itself).
//! Soft-state requests go to the machine; anything that may give it output wakes the
//! soft-state driver.

use std::sync::Arc;

use membership::NodeId;
use softstate::Refused;
use storage::NewMessage;

use crate::rpc::{Failure, Request, Response, RpcHandler, StorageOp, Unready};
use crate::service::Node;

impl Node {
    pub(crate) async fn dispatch(&self, req: Request) -> Response {
        match req {
            Request::Membership(msg) => {
                self.cluster.deliver_membership(msg);
                Response::Ack
            }
            Request::Place {
                user,
                bucket: _,
                replicas,
            } => self.place(&user, replicas as usize),
            Request::Store { keys, data, epoch } => {
                let users: Vec<(u16, String)> =
                    keys.iter().map(|k| (k.bucket, k.user.clone())).collect();
                let batch = keys
                    .into_iter()
                    .map(|key| NewMessage {
                        key,
                        data: data.clone(),
                    })
                    .collect();
                let delay = self.store_delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let started = std::time::Instant::now();
                let appended = self.store.append(batch).await;
                metrics::histogram!("porcupine_storage_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                match appended {
                    Ok(()) => {
                        // Placed under another view: our report for the current one may
                        // have gone out before this store; the machine tells the manager.
                        let now = self.cluster.now();
                        self.manager.with(|s| s.stored(now, epoch, users));
                        self.soft_kick.notify_one();
                        Response::Ack
                    }
                    Err(e) if e.is_disk_full() => {
                        tracing::warn!(error = %e, "storing messages: data disk full");
                        Response::Error(Failure::from_storage(StorageOp::Store, &e))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing messages");
                        Response::Error(Failure::storage(StorageOp::Store, e))
                    }
                }
            }
            Request::Open {
                user,
                bucket: _,
                session,
            } => {
                if !self.soft_current() {
                    return Response::NotReady(Unready::Behind);
                }
                if !self.quorate() {
                    return Response::NotReady(Unready::Minority);
                }
                let now = self.cluster.now();
                let lease = self.cluster.view_lease_until();
                match self.manager.with(|s| s.open(now, lease, &user, session)) {
                    Ok(map) => Response::MailMap(map),
                    Err(Refused::InUse) => Response::InUse,
                    Err(e) => Response::NotReady(e.into()),
                }
            }
            Request::MailMap { user, bucket: _ } => {
                if !self.soft_current() {
                    return Response::NotReady(Unready::Behind);
                }
                match self.manager.with(|s| s.mail_map(&user)) {
                    Ok(map) => Response::MailMap(map),
                    Err(e) => Response::NotReady(e.into()),
                }
            }
            Request::Close { user, session } => {
                self.manager.with(|s| s.close(&user, session));
                Response::Ack
            }
            Request::List { bucket, user } => match self.list_fragment(bucket, &user) {
                Ok((messages, tombstones)) => Response::Listing {
                    messages,
                    tombstones,
                },
                Err(e) => Response::Error(Failure::storage(StorageOp::List, e)),
            },
            Request::Forget { id } => {
                if let Some(addr) = self.cluster.forget(id) {
                    let saved = match self.store.kv("forgotten") {
                        Ok(t) => match t.insert(addr.as_bytes(), &id.to_be_bytes()) {
                            Ok(()) => t.flush().await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = saved {
                        tracing::error!(error = %e, "recording a removed node");
                    }
                }
                // The registry leader (whichever node that is) frees the voter seat.
                match self.registry.log().remove_member(id).await {
                    Ok(true) => tracing::info!(id, "removed node taken out of the registry"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(id, error = %e, "taking a removed node out of the registry")
                    }
                }
                if let Err(e) = self.drain.set(&self.store, id, false).await {
                    tracing::warn!(id, error = %e, "clearing the drain mark of a removed node");
                }
                tracing::info!(id, "node removed for good");
                self.repair_kick.notify_one();
                Response::Ack
            }
            Request::Drain { id, draining } => {
                match self.drain.set(&self.store, id, draining).await {
                    Ok(_) => {
                        self.repair_kick.notify_one();
                        Response::Ack
                    }
                    Err(e) => Response::Error(Failure::storage(StorageOp::Store, e)),
                }
            }
            Request::Status => Response::Status(crate::admin::cluster_status(self).to_string()),
            Request::Read { key } => match self.store.read(&key).await {
                Ok(data) => Response::Message(data),
                Err(e) => Response::Error(Failure::storage(StorageOp::Read, e)),
            },
            Request::Purge { keys } => match self.store.purge_tombstones(&keys) {
                Ok(_) => Response::Ack,
                Err(e) => Response::Error(Failure::storage(StorageOp::Purge, e)),
            },
            Request::Delete { keys } => {
                let started = std::time::Instant::now();
                let deleted = self.store.delete(keys).await;
                metrics::histogram!("porcupine_storage_delete_seconds")
                    .record(started.elapsed().as_secs_f64());
                match deleted {
                    Ok(()) => Response::Ack,
                    Err(e) => Response::Error(Failure::from_storage(StorageOp::Delete, &e)),
                }
            }
            Request::Report(report) => {
                let r = self.manager.with(|s| s.handle_report(report));
                // A full report may make us owe one back (we missed a view).
                self.soft_kick.notify_one();
                taken(r)
            }
            Request::Announce(note) => taken(self.manager.with(|s| s.handle_announce(note))),
            Request::Handoff(note) => {
                let now = self.cluster.now();
                let r = self.manager.with(|s| s.handle_handoff(now, note));
                // It may leave the bucket waiting: the ask timer moved.
                self.soft_kick.notify_one();
                taken(r)
            }
            Request::Ask(ask) => {
                let r = self.manager.with(|s| s.handle_ask(ask));
                self.soft_kick.notify_one();
                taken(r)
            }
            Request::Registry(bytes) => {
                Response::Registry(self.registry.log().handle_rpc(&bytes).await)
            }
        }
    }

    /// As user manager: choose the nodes that will store a new message of `user`.
    fn place(&self, user: &str, replicas: usize) -> Response {
        if !self.soft_current() {
            return Response::NotReady(Unready::Behind);
        }
        if !self.quorate() {
            return Response::NotReady(Unready::Minority);
        }
        let me = self.id();
        let own = self.load();
        let load = |id: NodeId| {
            if id == me {
                own
            } else {
                self.cluster.load_of(id)
            }
        };
        let spread = self.config.spread;
        let mut full = self.cluster.nearly_full_nodes(me, self.disk.nearly_full());
        full.extend(self.drain.ids());
        match self.manager.with(|s| {
            s.set_unplaceable(full);
            s.place(user, replicas, spread, &load)
        }) {
            Ok(p) => Response::Targets {
                targets: p.targets,
                epoch: p.epoch,
            },
            Err(e) => Response::NotReady(e.into()),
        }
    }
}

fn taken(r: Result<(), Refused>) -> Response {
    match r {
        Ok(()) => Response::Ack,
        Err(e) => Response::NotReady(e.into()),
    }
}

impl Node {
    /// Whether this node may grant mailbox locks and place mail under its
    /// `partition_policy`: always when `available`; with `quorum` only while its view
    /// holds a majority of the cluster.
    pub(crate) fn quorate(&self) -> bool {
        self.config.partition_policy == crate::config::PartitionPolicy::Available
            || self.cluster.in_majority()
    }
}

/// Serves RPCs arriving over HTTP.
pub struct NodeRpc(pub Arc<Node>);

impl RpcHandler for NodeRpc {
    async fn handle(&self, req: Request) -> Response {
        self.0.serve(req).await
    }

    fn load(&self) -> u32 {
        self.0.load()
    }
}
