//! Step-by-step tests of one state machine: explicit `now` values in, exact
//! messages, deadlines and events out.

use std::sync::Arc;

use membership::{
    Asked, Dest, Epoch, Event, Header, Membership, MembershipConfig, Message, Millis, NodeId,
    NodeInfo, View, ViewDelta,
};

fn info_inc(id: NodeId, incarnation: u64) -> NodeInfo {
    NodeInfo {
        id,
        incarnation,
        rpc: format!("n{id}:rpc"),
        smtp: format!("n{id}:smtp"),
        pop: format!("n{id}:pop"),
        admin: format!("n{id}:admin"),
    }
}

fn info(id: NodeId) -> NodeInfo {
    info_inc(id, 1)
}

fn epoch(counter: u64, coordinator: NodeId) -> Epoch {
    // Every process of these tests is incarnation 1 (see `info`) unless it says so.
    Epoch {
        counter,
        coordinator,
        incarnation: 1,
    }
}

fn header(from: NodeInfo, epoch: Epoch) -> Header {
    Header {
        from,
        epoch,
        load: 0,
    }
}

fn view(epoch: Epoch, ids: &[NodeId]) -> View {
    View {
        epoch,
        members: ids.iter().map(|id| info(*id)).collect(),
    }
}

fn config() -> MembershipConfig {
    MembershipConfig::default()
}

fn drain(m: &mut Membership) -> Vec<(Dest, Message)> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}

fn events(m: &mut Membership) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn to(id: NodeId) -> Dest {
    Dest::Node(info(id))
}

/// Node `me` that has installed `v` at t=0 (sent by another member), with
/// its output drained.
fn member_of(me: NodeId, v: &View) -> Membership {
    let mut m = Membership::new(info(me), Vec::new(), config(), Millis(0));
    m.handle_timeout(Millis(0));
    let sender = v
        .members
        .iter()
        .find(|n| n.id != me)
        .expect("another member")
        .clone();
    m.handle_message(
        Millis(0),
        Message::CommitView {
            header: header(sender, v.epoch),
            view: v.clone(),
        },
    );
    assert_eq!(m.view(), v);
    drain(&mut m);
    events(&mut m);
    m
}

#[test]
fn fresh_node_is_alone_and_probes_its_seeds_at_once() {
    let seeds = vec![
        "n2:rpc".to_string(),
        "n1:rpc".to_string(),
        "n2:rpc".to_string(),
    ];
    let mut m = Membership::new(info(1), seeds, config(), Millis(0));
    assert_eq!(m.view(), &view(epoch(1, 1), &[1]));
    assert_eq!(m.poll_timeout(), Some(Millis(0)));
    m.handle_timeout(Millis(0));
    // Our own address and the duplicate are dropped.
    assert_eq!(
        drain(&mut m),
        vec![(
            Dest::Addr("n2:rpc".into()),
            Message::Probe {
                header: header(info(1), epoch(1, 1))
            }
        )]
    );
    assert_eq!(m.poll_timeout(), Some(Millis(1_000)));
    assert!(events(&mut m).is_empty());
}

#[test]
fn two_fresh_nodes_join_in_three_rounds() {
    let mut m1 = Membership::new(info(1), vec!["n2:rpc".into()], config(), Millis(0));
    let mut m2 = Membership::new(info(2), Vec::new(), config(), Millis(0));
    m1.handle_timeout(Millis(0));
    m2.handle_timeout(Millis(0));
    assert!(
        drain(&mut m2).is_empty(),
        "no seeds, nobody known: nothing to probe"
    );
    let probe = drain(&mut m1).remove(0).1;

    // Node 2 answers with its view and now wants node 1; ranked second of
    // {1, 2}, it waits half a step plus a step (50 + 100 ms).
    m2.handle_message(Millis(5), probe);
    let ack = drain(&mut m2);
    assert_eq!(
        ack,
        vec![(
            to(1),
            Message::ProbeAck {
                header: header(info(2), epoch(1, 2)),
                members: vec![info(2)].into_iter().collect(),
            }
        )]
    );
    assert_eq!(m2.poll_timeout(), Some(Millis(155)));

    // Node 1 ranks first: it coordinates after half a step.
    m1.handle_message(Millis(10), ack[0].1.clone());
    assert!(drain(&mut m1).is_empty());
    assert_eq!(m1.poll_timeout(), Some(Millis(60)));
    m1.handle_timeout(Millis(60));
    let propose = Message::Propose {
        header: header(info(1), epoch(1, 1)),
        proposal: epoch(2, 1),
        asked: Asked::Ids(Arc::new(vec![1, 2])),
    };
    assert_eq!(drain(&mut m1), vec![(to(2), propose.clone())]);
    assert!(m1.is_coordinating());

    // Round 2: node 2 promises and, bound by it, starts nothing of its own.
    m2.handle_message(Millis(70), propose);
    let accept = Message::Accept {
        header: header(info(2), epoch(1, 2)),
        proposal: epoch(2, 1),
        others: Vec::new(),
    };
    assert_eq!(drain(&mut m2), vec![(to(1), accept.clone())]);
    assert_eq!(
        m2.poll_timeout(),
        Some(Millis(1_000)),
        "only the probe timer is left"
    );
    m2.handle_timeout(Millis(155));
    assert!(drain(&mut m2).is_empty());

    // Round 3: everyone answered, so node 1 commits at once.
    m1.handle_message(Millis(80), accept);
    let joined = view(epoch(2, 1), &[1, 2]);
    let commit = Message::CommitView {
        header: header(info(1), epoch(2, 1)),
        view: joined.clone(),
    };
    assert_eq!(drain(&mut m1), vec![(to(2), commit.clone())]);
    assert_eq!(events(&mut m1), vec![Event::ViewChanged(joined.clone())]);
    assert!(!m1.is_coordinating());

    m2.handle_message(Millis(90), commit);
    assert!(drain(&mut m2).is_empty());
    assert_eq!(events(&mut m2), vec![Event::ViewChanged(joined.clone())]);
    assert_eq!(m1.view(), m2.view());
    // Both start pinging their ring successor right away.
    assert_eq!(m1.poll_timeout(), Some(Millis(80)));
    assert_eq!(m2.poll_timeout(), Some(Millis(90)));
}

#[test]
fn proposals_are_promised_only_upwards() {
    let mut m = Membership::new(info(5), Vec::new(), config(), Millis(0));
    let propose = |from: NodeId, e: Epoch| Message::Propose {
        header: header(info(from), epoch(1, from)),
        proposal: e,
        asked: Asked::Ids(Arc::new(vec![from, 5])),
    };
    let accept = |e: Epoch| Message::Accept {
        header: header(info(5), epoch(1, 5)),
        proposal: e,
        others: Vec::new(),
    };

    m.handle_message(Millis(10), propose(2, epoch(3, 2)));
    assert_eq!(drain(&mut m), vec![(to(2), accept(epoch(3, 2)))]);
    // Same counter, lower coordinator id: below the promise.
    m.handle_message(Millis(20), propose(1, epoch(3, 1)));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(1),
            Message::Reject {
                header: header(info(5), epoch(1, 5)),
                proposal: epoch(3, 1),
                promised: epoch(3, 2),
            }
        )]
    );
    // A repeated proposal we promised is accepted again.
    m.handle_message(Millis(30), propose(2, epoch(3, 2)));
    assert_eq!(drain(&mut m), vec![(to(2), accept(epoch(3, 2)))]);
    // A proposal naming another coordinator than its sender is garbage.
    m.handle_message(Millis(35), propose(2, epoch(9, 7)));
    assert!(drain(&mut m).is_empty());
    // Higher wins.
    m.handle_message(Millis(40), propose(1, epoch(4, 1)));
    assert_eq!(drain(&mut m), vec![(to(1), accept(epoch(4, 1)))]);
    assert_eq!(m.promised(Millis(40)), epoch(4, 1));
}

#[test]
fn commits_below_the_promise_or_without_us_are_refused() {
    let mut m = Membership::new(info(5), Vec::new(), config(), Millis(0));
    m.handle_message(
        Millis(10),
        Message::Propose {
            header: header(info(1), epoch(1, 1)),
            proposal: epoch(4, 1),
            asked: Asked::Ids(Arc::new(vec![1, 5])),
        },
    );
    drain(&mut m);
    let commit = |v: View| Message::CommitView {
        header: header(info(v.epoch.coordinator), v.epoch),
        view: v,
    };
    m.handle_message(Millis(20), commit(view(epoch(3, 2), &[2, 5])));
    assert_eq!(m.view().epoch, epoch(1, 5), "below the promise");
    m.handle_message(Millis(30), commit(view(epoch(6, 3), &[3, 4])));
    assert_eq!(m.view().epoch, epoch(1, 5), "does not name us");
    let unsorted = View {
        epoch: epoch(7, 3),
        members: vec![info(5), info(3)].into_iter().collect(),
    };
    m.handle_message(Millis(35), commit(unsorted));
    assert_eq!(m.view().epoch, epoch(1, 5), "malformed member list");
    assert!(events(&mut m).is_empty());

    m.handle_message(Millis(40), commit(view(epoch(4, 1), &[1, 5])));
    assert_eq!(
        events(&mut m),
        vec![Event::ViewChanged(view(epoch(4, 1), &[1, 5]))]
    );
    // A stale commit of the same or a lower epoch changes nothing.
    m.handle_message(Millis(50), commit(view(epoch(4, 1), &[1, 5])));
    m.handle_message(Millis(60), commit(view(epoch(2, 1), &[1, 5])));
    assert!(events(&mut m).is_empty());
}

#[test]
fn an_expired_promise_no_longer_blocks_a_lower_commit() {
    let mut m = member_of(5, &view(epoch(4, 1), &[1, 5]));
    m.handle_message(
        Millis(100),
        Message::Propose {
            header: header(info(1), epoch(4, 1)),
            proposal: epoch(9, 1),
            asked: Asked::Ids(Arc::new(vec![1, 5])),
        },
    );
    drain(&mut m);
    let lower = view(epoch(6, 1), &[1, 5]);
    let commit = Message::CommitView {
        header: header(info(1), epoch(6, 1)),
        view: lower.clone(),
    };
    m.handle_message(Millis(200), commit.clone());
    assert!(events(&mut m).is_empty(), "promise of 9 still binds");
    // commit_wait_ms (2000) after accepting, the promise lapses.
    m.handle_timeout(Millis(2_100));
    m.handle_message(Millis(2_150), commit);
    assert_eq!(events(&mut m), vec![Event::ViewChanged(lower)]);
}

#[test]
fn silent_successor_is_excluded_by_its_pinger() {
    let three = view(epoch(2, 2), &[1, 2, 3]);
    let mut m = member_of(1, &three);
    let ping = Message::Ping {
        header: header(info(1), epoch(2, 2)),
    };
    // Ring 1 -> 2 -> 3 -> 1: node 1 pings node 2 every 500 ms.
    m.handle_timeout(Millis(0));
    assert_eq!(drain(&mut m), vec![(to(2), ping.clone())]);
    assert_eq!(m.poll_timeout(), Some(Millis(500)));
    // Node 3 pings us: we answer, that is all.
    m.handle_message(
        Millis(100),
        Message::Ping {
            header: header(info(3), epoch(2, 2)),
        },
    );
    assert_eq!(
        drain(&mut m),
        vec![(
            to(3),
            Message::PingAck {
                header: header(info(1), epoch(2, 2))
            }
        )]
    );
    for t in [500, 1_000, 1_500] {
        m.handle_timeout(Millis(t));
        assert_eq!(drain(&mut m), vec![(to(2), ping.clone())]);
    }
    // suspect_after_ms (2000) of silence: one last ping, answered within
    // ping_interval_ms / 2 or else...
    assert_eq!(m.poll_timeout(), Some(Millis(2_000)));
    m.handle_timeout(Millis(2_000));
    assert_eq!(drain(&mut m), vec![(to(2), ping)]);
    assert_eq!(m.poll_timeout(), Some(Millis(2_250)));
    // ...coordinate a view without node 2 (node 3 shares our view: it is
    // told who is left out, not the whole list).
    m.handle_timeout(Millis(2_250));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(3),
            Message::Propose {
                header: header(info(1), epoch(2, 2)),
                proposal: epoch(3, 1),
                asked: Asked::ViewWithout(vec![2]),
            }
        )]
    );
    m.handle_message(
        Millis(2_260),
        Message::Accept {
            header: header(info(3), epoch(2, 2)),
            proposal: epoch(3, 1),
            others: Vec::new(),
        },
    );
    // Node 3 accepted from our view: its commit is the change.
    let two = view(epoch(3, 1), &[1, 3]);
    assert_eq!(
        drain(&mut m),
        vec![(
            to(3),
            Message::Commit {
                header: header(info(1), epoch(3, 1)),
                delta: ViewDelta {
                    epoch: epoch(3, 1),
                    base: epoch(2, 2),
                    removed: vec![2],
                    added: Vec::new(),
                    len: 2,
                    digest: two.members.digest(),
                }
            }
        )]
    );
    assert_eq!(events(&mut m), vec![Event::ViewChanged(two)]);
}

#[test]
fn an_answer_to_the_last_chance_ping_saves_the_successor() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    for t in [0, 500, 1_000, 1_500, 2_000] {
        m.handle_timeout(Millis(t));
    }
    drain(&mut m);
    m.handle_message(
        Millis(2_240),
        Message::PingAck {
            header: header(info(2), epoch(2, 2)),
        },
    );
    m.handle_timeout(Millis(2_250));
    assert!(drain(&mut m).is_empty());
    assert!(!m.is_coordinating());
    assert_eq!(m.poll_timeout(), Some(Millis(2_500)));
}

#[test]
fn a_round_nobody_answers_resends_then_commits_alone() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.forget(Millis(0), 2);
    m.handle_timeout(Millis(0));
    let propose = Message::Propose {
        header: header(info(1), epoch(2, 2)),
        proposal: epoch(3, 1),
        asked: Asked::ViewWithout(vec![2]),
    };
    let sent: Vec<(Dest, Message)> = drain(&mut m)
        .into_iter()
        .filter(|(_, msg)| matches!(msg, Message::Propose { .. }))
        .collect();
    assert_eq!(sent, vec![(to(3), propose.clone())]);
    // Silent candidates are asked again every proposal_wait_ms / 3.
    assert_eq!(m.poll_timeout(), Some(Millis(166)));
    m.handle_timeout(Millis(166));
    assert_eq!(drain(&mut m), vec![(to(3), propose.clone())]);
    m.handle_timeout(Millis(332));
    assert_eq!(drain(&mut m), vec![(to(3), propose)]);
    // proposal_wait_ms (500) over: commit with whoever accepted (nobody).
    assert_eq!(m.poll_timeout(), Some(Millis(500)));
    m.handle_timeout(Millis(500));
    assert!(drain(&mut m).is_empty());
    assert_eq!(
        events(&mut m),
        vec![Event::ViewChanged(view(epoch(3, 1), &[1]))]
    );
}

#[test]
fn unreachable_is_confirmed_by_a_ping_before_suspicion() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    let ping = Message::Ping {
        header: header(info(1), epoch(2, 2)),
    };
    // The first report may be stale: ask again.
    m.handle_unreachable(Millis(100), &to(3));
    assert_eq!(drain(&mut m), vec![(to(3), ping.clone())]);
    assert_eq!(m.poll_timeout(), Some(Millis(500)), "no change scheduled");
    // Node 3 answers: doubt cleared, a later report only asks again.
    m.handle_message(
        Millis(110),
        Message::PingAck {
            header: header(info(3), epoch(2, 2)),
        },
    );
    m.handle_unreachable(Millis(200), &to(3));
    assert_eq!(drain(&mut m), vec![(to(3), ping)]);
    // Two reports in a row: suspect it and change the view at once.
    m.handle_unreachable(Millis(300), &to(3));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), Some(Millis(300)));
    m.handle_timeout(Millis(300));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(2),
            Message::Propose {
                header: header(info(1), epoch(2, 2)),
                proposal: epoch(3, 1),
                asked: Asked::ViewWithout(vec![3]),
            }
        )]
    );
    // Seeds that are down say nothing about anyone.
    m.handle_unreachable(Millis(310), &Dest::Addr("n9:rpc".into()));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn a_rejected_coordinator_backs_off_and_proposes_higher() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.forget(Millis(0), 3);
    m.handle_timeout(Millis(0));
    drain(&mut m);
    assert!(m.is_coordinating());
    m.handle_message(
        Millis(10),
        Message::Reject {
            header: header(info(2), epoch(2, 2)),
            proposal: epoch(3, 1),
            promised: epoch(7, 2),
        },
    );
    assert!(!m.is_coordinating());
    assert!(drain(&mut m).is_empty());
    // Back off proposal_wait_ms + rank delay (rank 0: 50 ms); the next ping
    // of the successor comes first.
    assert_eq!(m.poll_timeout(), Some(Millis(500)));
    m.handle_timeout(Millis(500));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(2),
            Message::Ping {
                header: header(info(1), epoch(2, 2))
            }
        )]
    );
    // Rejected at 10: 10 + 500 + 50.
    assert_eq!(m.poll_timeout(), Some(Millis(560)));
    m.handle_timeout(Millis(560));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(2),
            Message::Propose {
                header: header(info(1), epoch(2, 2)),
                proposal: epoch(8, 1),
                asked: Asked::ViewWithout(vec![3]),
            }
        )]
    );
}

#[test]
fn a_member_behind_gets_the_commit_again() {
    let three = view(epoch(2, 2), &[1, 2, 3]);
    let mut m = member_of(1, &three);
    let lagging_ping = |t: u64| {
        (
            Millis(t),
            Message::Ping {
                header: header(info(3), epoch(1, 3)),
            },
        )
    };
    let ack = Message::PingAck {
        header: header(info(1), epoch(2, 2)),
    };
    let commit = Message::CommitView {
        header: header(info(1), epoch(2, 2)),
        view: three.clone(),
    };
    let (t, msg) = lagging_ping(100);
    m.handle_message(t, msg);
    assert_eq!(
        drain(&mut m),
        vec![(to(3), ack.clone()), (to(3), commit.clone())]
    );
    // At most once per ping interval.
    let (t, msg) = lagging_ping(200);
    m.handle_message(t, msg);
    assert_eq!(drain(&mut m), vec![(to(3), ack.clone())]);
    let (t, msg) = lagging_ping(600);
    m.handle_message(t, msg);
    assert_eq!(drain(&mut m), vec![(to(3), ack), (to(3), commit)]);
}

#[test]
fn lasting_epoch_disagreement_forces_a_fresh_view() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    // Our ring successor keeps reporting a newer epoch: it should soon fix
    // us itself (re-sending its commit), so nothing is planned at first.
    let ahead = Message::Ping {
        header: header(info(2), epoch(5, 2)),
    };
    m.handle_message(Millis(100), ahead.clone());
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(Millis(500)), "only the next ping");
    for t in [500, 1_000, 1_500, 2_000] {
        m.handle_timeout(Millis(t));
        drain(&mut m);
        assert!(!m.is_coordinating());
    }
    // Still disagreeing commit_wait_ms (2000) later: re-agree from scratch,
    // with a counter above the newer epoch; rank 0 waits half a step.
    m.handle_message(Millis(2_100), ahead);
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(Millis(2_150)));
    m.handle_timeout(Millis(2_150));
    let proposals: Vec<(Dest, Message)> = drain(&mut m)
        .into_iter()
        .filter(|(_, msg)| matches!(msg, Message::Propose { .. }))
        .collect();
    let propose = Message::Propose {
        header: header(info(1), epoch(2, 2)),
        proposal: epoch(6, 1),
        asked: Asked::ViewWithout(Vec::new()),
    };
    assert_eq!(proposals, vec![(to(2), propose.clone()), (to(3), propose)]);
}

#[test]
fn restarted_member_is_taken_in_under_its_new_identity() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    let reborn = info_inc(2, 9);
    m.handle_message(
        Millis(100),
        Message::Ping {
            header: header(reborn.clone(), epoch(1, 2)),
        },
    );
    assert_eq!(
        drain(&mut m),
        vec![(
            Dest::Node(reborn.clone()),
            Message::PingAck {
                header: header(info(1), epoch(2, 2))
            }
        )]
    );
    // Late words from the old process are ignored entirely.
    m.handle_message(
        Millis(110),
        Message::Ping {
            header: header(info(2), epoch(2, 2)),
        },
    );
    assert!(drain(&mut m).is_empty());
    // Rank 0 among {1, 2, 3}: start after half a step.
    assert_eq!(m.poll_timeout(), Some(Millis(150)));
    m.handle_timeout(Millis(150));
    let proposals: Vec<Dest> = drain(&mut m)
        .into_iter()
        .filter(|(_, msg)| matches!(msg, Message::Propose { .. }))
        .map(|(dest, _)| dest)
        .collect();
    assert_eq!(proposals, vec![Dest::Node(reborn), to(3)]);
}

#[test]
fn probe_answers_let_a_merge_take_in_the_whole_other_side() {
    let mut m = member_of(1, &view(epoch(5, 2), &[1, 2]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    m.handle_message(
        Millis(100),
        Message::ProbeAck {
            header: header(info(3), epoch(7, 4)),
            members: vec![info(3), info(4)].into_iter().collect(),
        },
    );
    assert!(drain(&mut m).is_empty());
    m.handle_timeout(Millis(150));
    let sent = drain(&mut m);
    let expected: Vec<(Dest, Message)> = [2, 3, 4]
        .iter()
        .map(|id| {
            (
                to(*id),
                Message::Propose {
                    header: header(info(1), epoch(5, 2)),
                    proposal: epoch(8, 1),
                    // Our view mate is told who is left out (nobody), the
                    // other side gets the list.
                    asked: if *id == 2 {
                        Asked::ViewWithout(Vec::new())
                    } else {
                        Asked::Ids(Arc::new(vec![1, 2, 3, 4]))
                    },
                },
            )
        })
        .collect();
    assert_eq!(
        sent, expected,
        "counter goes above the other side's epoch too"
    );
    let ids: Vec<NodeId> = m.known_nodes().iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
}

#[test]
fn accepters_name_view_mates_the_coordinator_missed() {
    let mut m = member_of(1, &view(epoch(2, 1), &[1, 2]));
    m.forget(Millis(0), 9); // no-op for an unknown node
    m.handle_message(
        Millis(10),
        Message::Probe {
            header: header(info(3), epoch(4, 3)),
        },
    );
    drain(&mut m);
    m.handle_timeout(Millis(60));
    let propose = |asked: Asked| Message::Propose {
        header: header(info(1), epoch(2, 1)),
        proposal: epoch(5, 1),
        asked,
    };
    let ids = |ids: Vec<NodeId>| Asked::Ids(Arc::new(ids));
    let proposals: Vec<(Dest, Message)> = drain(&mut m)
        .into_iter()
        .filter(|(_, msg)| matches!(msg, Message::Propose { .. }))
        .collect();
    // A view mate knows the view: it is told only who is left out (nobody);
    // the newcomer gets the list.
    assert_eq!(
        proposals,
        vec![
            (to(2), propose(Asked::ViewWithout(Vec::new()))),
            (to(3), propose(ids(vec![1, 2, 3])))
        ]
    );
    // Node 3 accepts and names node 4 from its own view: ask it as well.
    m.handle_message(
        Millis(70),
        Message::Accept {
            header: header(info(3), epoch(4, 3)),
            proposal: epoch(5, 1),
            others: vec![info(4)],
        },
    );
    assert_eq!(drain(&mut m), vec![(to(4), propose(ids(vec![1, 2, 3, 4])))]);
    for id in [2, 4] {
        m.handle_message(
            Millis(80),
            Message::Accept {
                header: header(info(id), epoch(1, id)),
                proposal: epoch(5, 1),
                others: Vec::new(),
            },
        );
    }
    assert_eq!(m.view(), &view(epoch(5, 1), &[1, 2, 3, 4]));
}

#[test]
fn accept_names_only_view_mates_missing_from_the_proposal() {
    let mut m = member_of(2, &view(epoch(3, 2), &[2, 3, 4]));
    m.handle_message(
        Millis(10),
        Message::Propose {
            header: header(info(7), epoch(1, 7)),
            proposal: epoch(4, 7),
            asked: Asked::Ids(Arc::new(vec![2, 3, 7])),
        },
    );
    assert_eq!(
        drain(&mut m),
        vec![(
            to(7),
            Message::Accept {
                header: header(info(2), epoch(3, 2)),
                proposal: epoch(4, 7),
                others: vec![info(4)],
            }
        )]
    );
    // From a coordinator in our own view, only the exclusions are named:
    // the same answer from O(excluded) bytes.
    let mut m = member_of(2, &view(epoch(3, 2), &[2, 3, 4]));
    m.handle_message(
        Millis(10),
        Message::Propose {
            header: header(info(3), epoch(3, 2)),
            proposal: epoch(4, 3),
            asked: Asked::ViewWithout(vec![4]),
        },
    );
    assert_eq!(
        drain(&mut m),
        vec![(
            to(3),
            Message::Accept {
                header: header(info(2), epoch(3, 2)),
                proposal: epoch(4, 3),
                others: vec![info(4)],
            }
        )]
    );
    // From another view, exclusions say nothing about ours: every mate is
    // named and the coordinator skips those it asked.
    let mut m = member_of(2, &view(epoch(3, 2), &[2, 3, 4]));
    m.handle_message(
        Millis(10),
        Message::Propose {
            header: header(info(7), epoch(1, 7)),
            proposal: epoch(4, 7),
            asked: Asked::ViewWithout(Vec::new()),
        },
    );
    assert_eq!(
        drain(&mut m),
        vec![(
            to(7),
            Message::Accept {
                header: header(info(2), epoch(3, 2)),
                proposal: epoch(4, 7),
                others: vec![info(3), info(4)],
            }
        )]
    );
}

#[test]
fn a_commit_is_a_delta_and_a_mismatch_fetches_the_whole_view() {
    let base = view(epoch(3, 1), &[1, 2, 3]);
    let next = view(epoch(4, 1), &[1, 2, 4]);
    let delta = next.delta_from(&base);
    assert_eq!(
        delta,
        ViewDelta {
            epoch: epoch(4, 1),
            base: epoch(3, 1),
            removed: vec![3],
            added: vec![info(4)],
            len: 3,
            digest: next.members.digest(),
        }
    );
    let commit = |delta: ViewDelta| Message::Commit {
        header: header(info(1), epoch(4, 1)),
        delta,
    };
    // On the base: applied, digest checked, installed; nothing sent.
    let mut m = member_of(2, &base);
    m.handle_message(Millis(10), commit(delta.clone()));
    assert_eq!(events(&mut m), vec![Event::ViewChanged(next.clone())]);
    assert_eq!(m.view(), &next);
    // A digest that does not match (our base differs): ask for the view, once.
    let mut m = member_of(2, &base);
    let bad = ViewDelta {
        digest: delta.digest ^ 1,
        ..delta.clone()
    };
    m.handle_message(Millis(10), commit(bad.clone()));
    m.handle_message(Millis(11), commit(bad));
    let request = Message::ViewRequest {
        header: header(info(2), epoch(3, 1)),
        epoch: epoch(4, 1),
    };
    assert_eq!(drain(&mut m), vec![(to(1), request.clone())]);
    assert!(events(&mut m).is_empty());
    // The coordinator answers with the whole view, which installs.
    let mut coordinator = member_of(1, &next);
    coordinator.handle_message(Millis(12), request);
    let answer = Message::CommitView {
        header: header(info(1), epoch(4, 1)),
        view: next.clone(),
    };
    assert_eq!(drain(&mut coordinator), vec![(to(2), answer.clone())]);
    m.handle_message(Millis(13), answer);
    assert_eq!(events(&mut m), vec![Event::ViewChanged(next.clone())]);
    // Another base altogether (a fresh node): ask as well.
    let mut fresh = Membership::new(info(4), Vec::new(), config(), Millis(0));
    fresh.handle_message(Millis(10), commit(delta));
    assert_eq!(
        drain(&mut fresh),
        vec![(
            to(1),
            Message::ViewRequest {
                header: header(info(4), epoch(1, 4)),
                epoch: epoch(4, 1),
            }
        )]
    );
}

#[test]
fn forgotten_nodes_are_dropped_ignored_and_not_probed() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.forget(Millis(0), 3);
    m.handle_timeout(Millis(0));
    drain(&mut m);
    m.handle_message(
        Millis(20),
        Message::Accept {
            header: header(info(2), epoch(2, 2)),
            proposal: epoch(3, 1),
            others: vec![info(3)],
        },
    );
    assert_eq!(
        events(&mut m),
        vec![Event::ViewChanged(view(epoch(3, 1), &[1, 2]))]
    );
    drain(&mut m);
    assert!(m.known_nodes().iter().all(|n| n.id != 3));
    // The forgotten node's own words get no answer and trigger nothing.
    m.handle_message(
        Millis(30),
        Message::Probe {
            header: header(info(3), epoch(2, 2)),
        },
    );
    assert!(drain(&mut m).is_empty());
    // A full probe round sends nothing: nobody outside the view is known.
    for t in (1_000..=3_000).step_by(500) {
        m.handle_timeout(Millis(t));
        assert!(
            drain(&mut m)
                .iter()
                .all(|(_, msg)| matches!(msg, Message::Ping { .. }))
        );
    }
    // A new life of the same id is welcome again.
    m.handle_message(
        Millis(3_100),
        Message::Probe {
            header: header(info_inc(3, 2), epoch(1, 3)),
        },
    );
    assert_eq!(drain(&mut m).len(), 1);
    assert!(m.known_nodes().iter().any(|n| n.id == 3));
}

#[test]
fn load_rides_on_every_message() {
    let mut m = member_of(1, &view(epoch(2, 2), &[1, 2, 3]));
    m.set_local_load(7);
    assert_eq!(m.load_of(1), Some(7));
    assert_eq!(m.load_of(3), None, "known from the view only, never heard");
    m.handle_message(
        Millis(5),
        Message::Ping {
            header: Header {
                from: info(3),
                epoch: epoch(2, 2),
                load: 42,
            },
        },
    );
    assert_eq!(m.load_of(3), Some(42));
    assert_eq!(m.load_of(99), None);
    assert_eq!(m.last_heard(3), Some(Millis(5)));
    let sent = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.header().load, 7);
}

#[test]
fn spurious_and_repeated_timeouts_do_nothing() {
    let mut m = member_of(1, &view(epoch(2, 1), &[1, 2]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    let deadline = m.poll_timeout();
    m.handle_timeout(Millis(0));
    m.handle_timeout(Millis(10));
    m.handle_timeout(Millis(499));
    assert!(drain(&mut m).is_empty());
    assert!(events(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), deadline);
}

#[test]
fn a_node_that_was_not_run_does_not_blame_its_successor() {
    let mut m = member_of(1, &view(epoch(2, 1), &[1, 2]));
    m.handle_timeout(Millis(0));
    drain(&mut m);
    // The driver was stopped for 10 s (SIGSTOP, overload): only a ping now.
    m.handle_timeout(Millis(10_000));
    assert_eq!(
        drain(&mut m),
        vec![(
            to(2),
            Message::Ping {
                header: header(info(1), epoch(2, 1))
            }
        )]
    );
    assert!(!m.is_coordinating());
    assert_eq!(m.poll_timeout(), Some(Millis(10_500)));
    // Silence after that still counts.
    for t in [10_500, 11_000, 11_500] {
        m.handle_timeout(Millis(t));
    }
    m.handle_timeout(Millis(12_000));
    assert!(!m.is_coordinating(), "a last chance first");
    m.handle_timeout(Millis(12_250));
    // Nobody else to ask: the round commits at once, without node 2.
    assert_eq!(m.view().ids(), vec![1]);
}

#[test]
fn messages_round_trip_through_postcard() {
    let samples = vec![
        Message::Ping {
            header: header(info(1), epoch(2, 1)),
        },
        Message::PingAck {
            header: header(info(1), epoch(2, 1)),
        },
        Message::Probe {
            header: header(info(1), epoch(2, 1)),
        },
        Message::ProbeAck {
            header: header(info(1), epoch(2, 1)),
            members: vec![info(1), info_inc(2, u64::MAX)].into_iter().collect(),
        },
        Message::Propose {
            header: header(info(1), epoch(2, 1)),
            proposal: epoch(3, 1),
            asked: Asked::Ids(Arc::new(vec![1, 2, u64::MAX])),
        },
        Message::Accept {
            header: header(info(2), epoch(2, 1)),
            proposal: epoch(3, 1),
            others: vec![info(4)],
        },
        Message::Reject {
            header: header(info(2), epoch(2, 1)),
            proposal: epoch(3, 1),
            promised: epoch(9, 9),
        },
        Message::Propose {
            header: header(info(1), epoch(2, 1)),
            proposal: epoch(3, 1),
            asked: Asked::ViewWithout(vec![7]),
        },
        Message::CommitView {
            header: header(info(1), epoch(3, 1)),
            view: view(epoch(3, 1), &[1, 2, 3]),
        },
        Message::CommitView {
            header: header(info(1), epoch(3, 1)),
            view: view(epoch(3, 1), &(1..=300).collect::<Vec<_>>()),
        },
        Message::Commit {
            header: header(info(1), epoch(3, 1)),
            delta: view(epoch(3, 1), &[1, 3, 4]).delta_from(&view(epoch(2, 1), &[1, 2, 3])),
        },
        Message::ViewRequest {
            header: header(info(2), epoch(2, 1)),
            epoch: epoch(3, 1),
        },
    ];
    for msg in samples {
        let bytes = postcard::to_allocvec(&msg).unwrap();
        let back: Message = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, msg);
    }
    let config = MembershipConfig::default();
    let bytes = postcard::to_allocvec(&config).unwrap();
    assert_eq!(
        postcard::from_bytes::<MembershipConfig>(&bytes).unwrap(),
        config
    );
    // Truncated input is an error, not a panic.
    let bytes = postcard::to_allocvec(&Message::Probe {
        header: header(info(1), epoch(2, 1)),
    })
    .unwrap();
    assert!(postcard::from_bytes::<Message>(&bytes[..bytes.len() - 1]).is_err());
}

/// The view lease (for POP3 locks) runs from the send time of the last ping the
/// successor answered in our epoch: silence lets it run out, an answer renews it from
/// the ping's send time (not the answer's arrival), an answer from another epoch or
/// a second answer of the same ping renews nothing, and a lone node has no lease.
#[test]
fn the_view_lease_runs_from_the_last_answered_ping_in_our_epoch() {
    let e = epoch(2, 1);
    let v = view(e, &[1, 2]);
    let mut m = member_of(1, &v);
    let suspect_ms = config().suspect_after_ms;
    assert_eq!(
        m.view_lease_until(),
        Some(Millis(suspect_ms)),
        "from the install"
    );
    let ack = |epoch| Message::PingAck {
        header: header(info(2), epoch),
    };
    // A ping at 0 (due at once), answered at 400: the lease runs from 0.
    m.handle_timeout(Millis(0));
    assert!(
        drain(&mut m)
            .iter()
            .any(|(d, msg)| *d == to(2) && matches!(msg, Message::Ping { .. }))
    );
    m.handle_message(Millis(400), ack(e));
    assert_eq!(m.view_lease_until(), Some(Millis(suspect_ms)));
    // Pings at 500 and 1,000; the one answer (at 1,200) counts from 500, a second
    // answer from nothing.
    m.handle_timeout(Millis(500));
    m.handle_timeout(Millis(1_000));
    drain(&mut m);
    m.handle_message(Millis(1_200), ack(e));
    assert_eq!(m.view_lease_until(), Some(Millis(500 + suspect_ms)));
    m.handle_message(Millis(1_300), ack(e));
    assert_eq!(m.view_lease_until(), Some(Millis(500 + suspect_ms)));
    // An answer from a newer epoch (node 2 moved on without us) renews nothing.
    m.handle_timeout(Millis(1_500));
    drain(&mut m);
    m.handle_message(Millis(1_600), ack(epoch(3, 2)));
    assert_eq!(m.view_lease_until(), Some(Millis(500 + suspect_ms)));

    let alone = Membership::new(info(3), Vec::new(), config(), Millis(0));
    assert_eq!(alone.view_lease_until(), None, "a one-node view");
}
