//! The soft-state driver: installs every new view in the [`softstate::SoftState`]
//! machine, answers its scans from the store, sends what it asks to send as RPCs
//! (reporting each answer back), and arms its one timer. Real time is the cluster's
//! monotonic clock ([`crate::cluster::Cluster::now`]).

use std::sync::Arc;
use std::time::Duration;

use softstate::fragments::FragmentIndex;
use softstate::{Note, Scan, Transmit, ViewInfo};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::fragments::StoreFragments;
use crate::rpc::{Request, Response};
use crate::service::Node;

/// Run the driver until `shutdown`.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut views = node.cluster.subscribe();
    let mut sends: JoinSet<()> = JoinSet::new();
    let mut installed: Option<Arc<crate::cluster::ViewState>> = None;
    loop {
        let view = views.borrow_and_update().clone();
        if installed.as_ref().is_none_or(|v| !Arc::ptr_eq(v, &view)) {
            node.unforget_live(&view);
            let info = Arc::new(ViewInfo::from_view(&view.view, view.map.clone()));
            let now = node.cluster.now();
            node.manager.with(|s| s.install_view(now, info));
            installed = Some(view);
        }
        drain(&node, &mut sends);
        let deadline = node
            .manager
            .with(|s| s.poll_timeout())
            .map(|at| node.cluster.instant_of(at))
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.changed() => return,
            r = views.changed() => if r.is_err() { return },
            _ = node.soft_kick.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = node.cluster.now();
                node.manager.with(|s| s.handle_timeout(now));
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
        }
    }
}

/// Perform the machine's outputs: scans first (they produce reports), then sends.
fn drain(node: &Arc<Node>, sends: &mut JoinSet<()>) {
    while let Some(scan) = node.manager.with(|s| s.poll_scan()) {
        let now = node.cluster.now();
        match local_users(node, &scan) {
            Ok(users) => node.manager.with(|s| s.handle_scan(now, scan.id, users)),
            Err(e) => {
                tracing::error!(error = %e, "scanning fragments for reconstruction");
                node.manager.with(|s| s.handle_scan_failed(now, scan.id));
            }
        }
    }
    while let Some(Transmit { to, token, note }) = node.manager.with(|s| s.poll_transmit()) {
        let req = match note {
            Note::Report(r) => Request::Report(r),
            Note::Announce(a) => Request::Announce(a),
            Note::Ask(a) => Request::Ask(a),
            Note::Handoff(h) => Request::Handoff(h),
        };
        let node = node.clone();
        sends.spawn(async move {
            let taken = matches!(node.call(to, req).await, Ok(Response::Ack));
            let now = node.cluster.now();
            node.manager.with(|s| {
                if taken {
                    s.handle_delivered(token)
                } else {
                    s.handle_refused(now, token)
                }
            });
            node.soft_kick.notify_one();
        });
    }
}

/// Users with fragments (live mail or tombstones) here, in the scanned buckets.
fn local_users(node: &Node, scan: &Scan) -> Result<Vec<(u16, String)>, storage::StorageError> {
    StoreFragments(&node.store).users(&|b| scan.wants(b))
}
