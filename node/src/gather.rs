//! Reading one user's mailbox from its fragments: list the fragment on every node of
//! the user's mail map, in parallel, and merge (the merge rules are `softstate`'s).
//! Retrieval, repair and the admin mailbox view all read through here.

use std::sync::Arc;

use membership::NodeId;
use softstate::listing::FragmentListing;
use storage::MessageId;

use crate::rpc::{Request, Response};
use crate::service::Node;

/// What the fragment nodes of one user hold (the merge is `softstate`'s).
pub type Holdings = softstate::listing::Holdings<MessageId>;

/// List one user's fragment on every node of `map` and merge the answers.
pub async fn gather(node: &Arc<Node>, user: &str, bucket: u16, map: &[NodeId]) -> Holdings {
    let listings = futures::future::join_all(map.iter().map(|&holder| {
        let req = Request::List {
            bucket,
            user: user.to_string(),
        };
        async move { (holder, node.call(holder, req).await) }
    }))
    .await;
    Holdings::merge(listings.into_iter().map(|(holder, r)| match r {
        Ok(Response::Listing {
            messages,
            tombstones,
        }) => (
            holder,
            Some(FragmentListing {
                messages,
                tombstones,
            }),
        ),
        other => {
            tracing::warn!(holder, %user, ?other, "listing a fragment failed");
            (holder, None)
        }
    }))
}
