//! The membership machine fed arbitrary messages: the input is a sequence of
//! (time step, postcard `Message`) pairs handed to a member of a three-node view,
//! with its timers run as they come due and its output drained. Checks: no panic,
//! the epoch never goes back, the view always holds the node itself, and a
//! deadline is never in the past after a timeout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membership::{Epoch, Membership, MembershipConfig, Message, Millis, NodeInfo, View};

fn info(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        incarnation: 1,
        rpc: format!("n{id}:rpc"),
        smtp: format!("n{id}:smtp"),
        pop: format!("n{id}:pop"),
        admin: format!("n{id}:admin"),
    }
}

fuzz_target!(|data: &[u8]| {
    let me = info(2);
    let mut m = Membership::new(
        me.clone(),
        vec!["n1:rpc".into()],
        MembershipConfig::default(),
        Millis(0),
    );
    let view = View {
        epoch: Epoch {
            counter: 2,
            coordinator: 1,
            incarnation: 1,
        },
        members: [info(1), info(2), info(3)].into_iter().collect(),
    };
    m.handle_message(
        Millis(0),
        Message::CommitView {
            header: membership::Header {
                from: info(1),
                epoch: view.epoch,
                load: 0,
            },
            view,
        },
    );
    let mut now = Millis(0);
    let mut epoch = m.view().epoch;
    let mut rest = data;
    while let Some((&step, tail)) = rest.split_first() {
        now = now.plus_ms(u64::from(step) * 8);
        let Ok((msg, tail)) = postcard::take_from_bytes::<Message>(tail) else {
            break;
        };
        rest = tail;
        while m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
            assert!(
                m.poll_timeout().is_none_or(|t| t > now),
                "a timeout that stays due"
            );
        }
        m.handle_message(now, msg);
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
        let v = m.view();
        assert!(
            v.epoch >= epoch,
            "epoch went back: {:?} -> {:?}",
            epoch,
            v.epoch
        );
        assert!(v.contains(me.id), "a view without ourselves: {v:?}");
        epoch = v.epoch;
        let _ = m.view_lease_until();
    }
});
