//! One test per row of the public-state table (DESIGN.md §3), plus the cluster commands.

use super::*;
use LocalState as L;
use PublicState as P;

fn t(i: u64) -> TargetId {
    TargetId(i)
}

fn run(members: &[(u64, P, L)]) -> Vec<(u64, P)> {
    let m: Vec<ChainMember> = members.iter().map(|(i, p, l)| (t(*i), *p, *l)).collect();
    next_chain(&m).into_iter().map(|(t, p)| (t.0, p)).collect()
}

#[test]
fn serving_and_uptodate_stays_serving() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Serving, L::UpToDate)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Serving)]);
}

#[test]
fn offline_target_moves_to_end_of_chain() {
    let r = run(&[
        (1, P::Serving, L::Offline),
        (2, P::Serving, L::UpToDate),
        (3, P::Serving, L::UpToDate),
    ]);
    assert_eq!(r, vec![(2, P::Serving), (3, P::Serving), (1, P::Offline)]);
}

#[test]
fn newly_offline_goes_behind_already_offline() {
    let r = run(&[
        (1, P::Serving, L::Offline),
        (2, P::Serving, L::UpToDate),
        (3, P::Offline, L::Offline),
    ]);
    assert_eq!(r, vec![(2, P::Serving), (3, P::Offline), (1, P::Offline)]);
}

#[test]
fn serving_goes_offline_with_others_serving_becomes_offline() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Serving, L::Offline)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Offline)]);
}

#[test]
fn only_serving_goes_offline_becomes_lastsrv() {
    let r = run(&[(1, P::Serving, L::Offline), (2, P::Offline, L::Offline)]);
    assert_eq!(r, vec![(2, P::Offline), (1, P::LastSrv)]);
}

#[test]
fn all_serving_fail_together_exactly_one_lastsrv() {
    let r = run(&[(1, P::Serving, L::Offline), (2, P::Serving, L::Offline)]);
    assert_eq!(r, vec![(1, P::LastSrv), (2, P::Offline)]);
}

#[test]
fn lastsrv_stays_lastsrv_while_down() {
    let r = run(&[(2, P::Offline, L::Offline), (1, P::LastSrv, L::Offline)]);
    assert_eq!(r, vec![(2, P::Offline), (1, P::LastSrv)]);
}

#[test]
fn lastsrv_back_serves_and_others_sync_from_it() {
    // Another target came back first: it waits, no serving predecessor.
    let r = run(&[(2, P::Offline, L::Online), (1, P::LastSrv, L::Offline)]);
    assert_eq!(r, vec![(2, P::Waiting), (1, P::LastSrv)]);
    // The last serving target returns: serving again, the waiting one starts syncing.
    let r = run(&[(2, P::Waiting, L::Online), (1, P::LastSrv, L::Online)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing)]);
}

#[test]
fn online_with_serving_predecessor_becomes_syncing() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Offline, L::Online)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing)]);
}

#[test]
fn online_without_serving_predecessor_waits() {
    let r = run(&[(1, P::Offline, L::Offline), (2, P::Offline, L::Online)]);
    assert_eq!(r, vec![(2, P::Waiting), (1, P::Offline)]);
}

#[test]
fn at_most_one_syncing_per_chain() {
    let r = run(&[
        (1, P::Serving, L::UpToDate),
        (2, P::Offline, L::Online),
        (3, P::Offline, L::Online),
    ]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing), (3, P::Waiting)]);
    let r = run(&[
        (1, P::Serving, L::UpToDate),
        (2, P::Syncing, L::Online),
        (3, P::Waiting, L::Online),
    ]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing), (3, P::Waiting)]);
}

#[test]
fn sync_done_uptodate_becomes_serving_and_next_waiting_syncs() {
    let r = run(&[
        (1, P::Serving, L::UpToDate),
        (2, P::Syncing, L::UpToDate),
        (3, P::Waiting, L::Online),
    ]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Serving), (3, P::Syncing)]);
}

#[test]
fn syncing_goes_offline() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Syncing, L::Offline)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Offline)]);
}

#[test]
fn uptodate_report_from_offline_target_still_resyncs() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Offline, L::UpToDate)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing)]);
}

#[test]
fn serving_reporting_online_resyncs_unless_alone() {
    let r = run(&[(1, P::Serving, L::UpToDate), (2, P::Serving, L::Online)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Syncing)]);
    let r = run(&[(1, P::Serving, L::Online), (2, P::Serving, L::Online)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Serving)]);
    let r = run(&[(1, P::Serving, L::Online), (2, P::Offline, L::Offline)]);
    assert_eq!(r, vec![(1, P::Serving), (2, P::Offline)]);
}

fn report(id: u64, l: L) -> TargetReport {
    TargetReport {
        id: t(id),
        local_state: l,
        used_bytes: 10,
        capacity_bytes: 100,
    }
}

fn three_nodes() -> ClusterState {
    let mut c = ClusterState::default();
    for n in 1..=3u32 {
        let targets: Vec<_> = (0..2)
            .map(|k| report(n as u64 * 10 + k, L::UpToDate))
            .collect();
        c.register(NodeId(n), &format!("127.0.0.1:{n}"), &targets);
    }
    c
}

#[test]
fn bootstrap_builds_chains_on_distinct_nodes() {
    let mut c = three_nodes();
    let v0 = c.routing.version;
    let table = c.bootstrap_chains(3).unwrap();
    assert_eq!(table.chains.len(), 2);
    assert!(c.routing.version > v0);
    for ch in c.routing.chains.values() {
        let mut nodes: Vec<_> = ch
            .targets
            .iter()
            .map(|t| c.routing.targets[t].node)
            .collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "chain {:?} spans distinct nodes", ch);
        for t in &ch.targets {
            assert_eq!(c.routing.targets[t].public_state, P::Serving);
            assert_eq!(c.routing.targets[t].chain, ch.id);
        }
    }
    assert_eq!(c.bootstrap_chains(3).unwrap_err().code, ErrorCode::Exists);
}

#[test]
fn bootstrap_refuses_too_few_nodes_and_changes_nothing() {
    let mut c = three_nodes();
    let before = c.routing.clone();
    assert_eq!(
        c.bootstrap_chains(4).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.bootstrap_chains(0).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(c.routing, before);
}

#[test]
fn node_down_bumps_chain_and_routing_versions_once() {
    let mut c = three_nodes();
    c.bootstrap_chains(3).unwrap();
    let rv = c.routing.version;
    let cv: Vec<_> = c.routing.chains.values().map(|ch| ch.version).collect();
    c.node_down(NodeId(1));
    assert_eq!(c.routing.version.0, rv.0 + 1);
    for (ch, v) in c.routing.chains.values().zip(cv) {
        assert_eq!(ch.version, v.next());
        let last = ch.targets.last().unwrap();
        assert_eq!(c.routing.targets[last].node, NodeId(1));
        assert_eq!(c.routing.targets[last].public_state, P::Offline);
    }
    assert!(!c.routing.nodes[&NodeId(1)].alive);
    // Nothing changes: no bump.
    let rv = c.routing.version;
    c.node_down(NodeId(1));
    assert_eq!(c.routing.version, rv);
    // The node comes back: its targets sync.
    let targets: Vec<_> = (0..2).map(|k| report(10 + k, L::Online)).collect();
    c.report(NodeId(1), &targets, false);
    for ch in c.routing.chains.values() {
        let last = ch.targets.last().unwrap();
        assert_eq!(c.routing.targets[last].public_state, P::Syncing);
    }
}

fn in_chain(public: P) -> TargetInfo {
    TargetInfo {
        id: t(1),
        node: NodeId(1),
        chain: ChainId(1),
        public_state: public,
        local_state: L::Online,
        used_bytes: 0,
        capacity_bytes: 0,
    }
}

#[test]
fn admission_believes_up_to_date_only_where_it_cannot_be_stale() {
    let v = RoutingVersion;
    // Serving and last serving: as reported.
    for p in [P::Serving, P::LastSrv] {
        let i = in_chain(p);
        assert_eq!(admitted_local(&i, L::UpToDate, v(1), None), L::UpToDate);
        assert_eq!(admitted_local(&i, L::Online, v(1), None), L::Online);
        assert_eq!(admitted_local(&i, L::Offline, v(1), None), L::Offline);
    }
    // Syncing: only from a node holding the table that made it syncing, or a newer one.
    let i = in_chain(P::Syncing);
    assert_eq!(admitted_local(&i, L::UpToDate, v(4), Some(v(5))), L::Online);
    assert_eq!(
        admitted_local(&i, L::UpToDate, v(5), Some(v(5))),
        L::UpToDate
    );
    assert_eq!(
        admitted_local(&i, L::UpToDate, v(9), Some(v(5))),
        L::UpToDate
    );
    assert_eq!(admitted_local(&i, L::UpToDate, v(9), None), L::Online);
    assert_eq!(admitted_local(&i, L::Offline, v(1), Some(v(5))), L::Offline);
    // Waiting and offline in a chain: the claim never counts.
    for p in [P::Waiting, P::Offline] {
        let i = in_chain(p);
        assert_eq!(admitted_local(&i, L::UpToDate, v(9), Some(v(1))), L::Online);
        assert_eq!(admitted_local(&i, L::Offline, v(9), None), L::Offline);
    }
    // Not in a chain yet (bootstrap reads the claim): as reported.
    let mut i = in_chain(P::Waiting);
    i.chain = NO_CHAIN;
    assert_eq!(admitted_local(&i, L::UpToDate, v(0), None), L::UpToDate);
}

#[test]
fn entering_syncing_forgets_an_earlier_up_to_date() {
    let mut c = three_nodes();
    c.bootstrap_chains(3).unwrap();
    c.node_down(NodeId(1));
    // Node 1 reports "up to date" (admitted as is: this is the raw state machine): its
    // targets go offline -> waiting -> syncing in one step, and the claim is not kept.
    let targets: Vec<_> = (0..2).map(|k| report(10 + k, L::UpToDate)).collect();
    c.report(NodeId(1), &targets, false);
    for k in 0..2 {
        let ti = &c.routing.targets[&t(10 + k)];
        assert_eq!((ti.public_state, ti.local_state), (P::Syncing, L::Online));
    }
    // Another node's report re-runs the chains: still syncing (the kept claim would have
    // promoted them without any sync).
    let others: Vec<_> = (0..2).map(|k| report(20 + k, L::UpToDate)).collect();
    c.report(NodeId(2), &others, true);
    for k in 0..2 {
        assert_eq!(c.routing.targets[&t(10 + k)].public_state, P::Syncing);
    }
}
