//! A linearizability checker for read/write registers (Wing & Gong's search with Lowe's
//! memoisation, as Knossos and Porcupine do it), partitioned by key.
//!
//! An operation has an invocation time and, if the client saw it finish, a completion time
//! (monotonic nanoseconds since the run started). A write whose outcome is unknown (an error,
//! a time-out, a client killed mid-call) has no completion: it may take effect at any point
//! after its invocation, or never — for a register both are covered by letting it stay open
//! until the end of the history. Failed reads carry no information and are dropped.
//!
//! Every write puts a value no other write uses, so a read names the write it observed; that
//! keeps the search narrow. The search memoises (set of linearised ops, register value) pairs,
//! which bounds it by the number of distinct such pairs; a per-key step budget turns a
//! pathological history into `Unknown` instead of an endless run.

use std::collections::{BTreeMap, HashSet};

/// The value of a register nobody wrote yet (a hole reads as zeros).
pub const INITIAL: u64 = 0;
/// What a read reports when the bytes it got are no write's bytes (torn, mixed, corrupt).
pub const GARBAGE: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote `value` (unique across the history).
    Write(u64),
    /// Read and observed `value`.
    Read(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The register: e.g. `(file, slot)` rendered as a string.
    pub key: String,
    pub client: u32,
    pub kind: OpKind,
    pub invoke_ns: u64,
    /// `None`: outcome unknown (writes only; unknown reads are not recorded).
    pub complete_ns: Option<u64>,
    /// Where a read's bytes came from (replica, chain and chunk versions), if recorded; shown
    /// in violation reports.
    pub source: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No order of this key's operations explains what was observed.
    Violation(Violation),
    /// The search exceeded its step budget.
    Unknown {
        key: String,
        steps: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// A short explanation with the operations involved.
    pub detail: String,
}

/// The result of checking a whole history.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    pub violations: Vec<Violation>,
    pub unknown: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.unknown.is_empty()
    }
}

/// Search steps allowed per key before giving up with `Unknown`.
pub const STEP_BUDGET: u64 = 5_000_000;

/// Checks every key's history separately (a register history is linearizable iff each key's
/// is: linearizability is local).
pub fn check(history: &[Op]) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report {
        keys: by_key.len(),
        ops: history.len(),
        ..Default::default()
    };
    for (key, ops) in by_key {
        match check_key(key, &ops, STEP_BUDGET) {
            Outcome::Linearizable => {}
            Outcome::Violation(v) => report.violations.push(v),
            Outcome::Unknown { key, steps } => report
                .unknown
                .push(format!("{key} (gave up after {steps} steps)")),
        }
    }
    report
}

#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    /// The matching return event of a call.
    ret: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

fn step(state: u64, kind: OpKind) -> Option<u64> {
    match kind {
        OpKind::Write(v) => Some(v),
        OpKind::Read(v) if v == state => Some(state),
        OpKind::Read(_) => None,
    }
}

/// Checks one key's operations.
pub fn check_key(key: &str, ops: &[&Op], budget: u64) -> Outcome {
    // Cheap pre-checks with precise messages: a read of a value nobody wrote, and a read that
    // finished before the write of its value began.
    let mut writes: BTreeMap<u64, &Op> = BTreeMap::new();
    for op in ops {
        if let OpKind::Write(v) = op.kind {
            writes.insert(v, op);
        }
    }
    for op in ops {
        if let OpKind::Read(v) = op.kind {
            if v == INITIAL {
                continue;
            }
            match writes.get(&v) {
                None => {
                    return Outcome::Violation(Violation {
                        key: key.to_string(),
                        detail: format!(
                            "read by client {} at [{}, {}] returned {} which no write produced",
                            op.client,
                            fmt_t(op.invoke_ns),
                            fmt_t_opt(op.complete_ns),
                            fmt_v(v)
                        ),
                    });
                }
                Some(w) => {
                    if op.complete_ns.is_some_and(|c| c < w.invoke_ns) {
                        return Outcome::Violation(Violation {
                            key: key.to_string(),
                            detail: format!(
                                "read by client {} finished at {} with {} before its write began at {}",
                                op.client,
                                fmt_t_opt(op.complete_ns),
                                fmt_v(v),
                                fmt_t(w.invoke_ns)
                            ),
                        });
                    }
                }
            }
        }
    }

    // A write with an unknown outcome whose value no read returned may be taken as never
    // applied: a history is linearizable with it iff it is without it (had it taken effect,
    // no read was linearised before the next write, or no read at all came after it). Each
    // such write stays open to the end of the history and multiplies the search; a run
    // whose target is full refuses hundreds of writes (`NoSpace`, counted as unknown), which
    // made the search give up before this.
    let observed: HashSet<u64> = ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Read(v) => Some(v),
            OpKind::Write(_) => None,
        })
        .collect();
    let kept: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|op| {
            !matches!(op.kind, OpKind::Write(v) if op.complete_ns.is_none() && !observed.contains(&v))
        })
        .collect();
    let ops = &kept[..];

    // Events sorted by time; at equal times calls come first (treating the ops as
    // overlapping never invents a violation).
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.invoke_ns, true, i));
        times.push((op.complete_ns.unwrap_or(u64::MAX), false, i));
    }
    times.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let n = times.len();
    let mut events: Vec<Event> = times
        .iter()
        .enumerate()
        .map(|(k, &(_, is_call, op))| Event {
            op,
            is_call,
            ret: NIL,
            prev: if k == 0 { NIL } else { k - 1 },
            next: if k + 1 == n { NIL } else { k + 1 },
        })
        .collect();
    let mut ret_of = vec![NIL; ops.len()];
    for (k, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = k;
        }
    }
    for e in events.iter_mut() {
        if e.is_call {
            e.ret = ret_of[e.op];
        }
    }
    let mut head = if n == 0 { NIL } else { 0 };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = INITIAL;
    let mut cache: HashSet<(Vec<u64>, u64)> = HashSet::new();
    // (call event, state before it)
    let mut stack: Vec<(usize, u64)> = Vec::new();
    let mut steps = 0u64;
    let mut deepest: Option<usize> = None;
    let mut entry = head;

    // Unlinks a call and its return from the list; relinks them in reverse.
    fn lift(events: &mut [Event], head: &mut usize, e: usize) {
        for k in [e, events[e].ret] {
            let (p, nx) = (events[k].prev, events[k].next);
            if p == NIL {
                *head = nx;
            } else {
                events[p].next = nx;
            }
            if nx != NIL {
                events[nx].prev = p;
            }
        }
    }
    fn unlift(events: &mut [Event], head: &mut usize, e: usize) {
        for k in [events[e].ret, e] {
            let (p, nx) = (events[k].prev, events[k].next);
            if p == NIL {
                *head = k;
            } else {
                events[p].next = k;
            }
            if nx != NIL {
                events[nx].prev = k;
            }
        }
    }

    while head != NIL {
        steps += 1;
        if steps > budget {
            return Outcome::Unknown {
                key: key.to_string(),
                steps,
            };
        }
        if entry == NIL {
            // Cannot happen: the list always ends with a return event.
            break;
        }
        let ev = events[entry];
        if ev.is_call {
            if let Some(next_state) = step(state, ops[ev.op].kind) {
                let mut lin = linearized.clone();
                lin[ev.op / 64] |= 1 << (ev.op % 64);
                if cache.insert((lin.clone(), next_state)) {
                    stack.push((entry, state));
                    linearized = lin;
                    state = next_state;
                    lift(&mut events, &mut head, entry);
                    entry = head;
                    continue;
                }
            }
            entry = ev.next;
        } else {
            // A return whose op is not linearised yet: backtrack.
            if deepest.is_none_or(|d| stack.len() >= d) {
                deepest = Some(stack.len());
            }
            let Some((e, s)) = stack.pop() else {
                let detail = match stale_read(ops) {
                    Some(w) => format!("no linearization; witness: {w}"),
                    None => explain(ops, ev.op),
                };
                return Outcome::Violation(Violation {
                    key: key.to_string(),
                    detail,
                });
            };
            state = s;
            let op = events[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, &mut head, e);
            entry = events[e].next;
        }
    }
    Outcome::Linearizable
}

fn fmt_t(ns: u64) -> String {
    format!("{:.6}s", ns as f64 / 1e9)
}

fn fmt_t_opt(ns: Option<u64>) -> String {
    ns.map(fmt_t).unwrap_or_else(|| "?".into())
}

fn fmt_v(v: u64) -> String {
    match v {
        INITIAL => "<initial zeros>".into(),
        GARBAGE => "<bytes of no write>".into(),
        v => format!("{v:#x}"),
    }
}

fn fmt_source(op: &Op) -> String {
    op.source
        .as_ref()
        .map(|s| format!(" (served by {s})"))
        .unwrap_or_default()
}

/// A read that returned a value older than a write acknowledged before the read began: the
/// value's write finished before that later write started (or it is the initial value), so
/// no order can place the read. The simplest kind of violation, named precisely.
fn stale_read(ops: &[&Op]) -> Option<String> {
    let mut writes: BTreeMap<u64, &Op> = BTreeMap::new();
    for op in ops {
        if let OpKind::Write(v) = op.kind {
            writes.insert(v, op);
        }
    }
    let mut acked: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.kind, OpKind::Write(_)) && o.complete_ns.is_some())
        .collect();
    acked.sort_by_key(|o| o.complete_ns);
    for r in ops {
        let OpKind::Read(v) = r.kind else { continue };
        // Writes acknowledged before the read began.
        let n = acked.partition_point(|w| w.complete_ns.is_some_and(|c| c < r.invoke_ns));
        let Some(newer) = acked[..n].iter().max_by_key(|w| w.invoke_ns) else {
            continue;
        };
        let older = match v {
            INITIAL => true,
            v => writes
                .get(&v)
                .and_then(|w| w.complete_ns)
                .is_some_and(|c| c < newer.invoke_ns),
        };
        let OpKind::Write(nv) = newer.kind else {
            continue;
        };
        if older && nv != v {
            return Some(format!(
                "read by client {} at [{}, {}] returned {}{}, but write {} by client {} was acknowledged at {} (it began at {}, after the returned value's write had finished)",
                r.client,
                fmt_t(r.invoke_ns),
                fmt_t_opt(r.complete_ns),
                fmt_v(v),
                fmt_source(r),
                fmt_v(nv),
                newer.client,
                fmt_t_opt(newer.complete_ns),
                fmt_t(newer.invoke_ns)
            ));
        }
    }
    None
}

/// Describes the operation that could not be placed and the writes around it.
fn explain(ops: &[&Op], stuck: usize) -> String {
    let s = ops[stuck];
    let mut out = format!(
        "no linearization: {} by client {} at [{}, {}] cannot be placed; ",
        match s.kind {
            OpKind::Write(v) => format!("write {}", fmt_v(v)),
            OpKind::Read(v) => format!("read returning {}{}", fmt_v(v), fmt_source(s)),
        },
        s.client,
        fmt_t(s.invoke_ns),
        fmt_t_opt(s.complete_ns)
    );
    // Writes acknowledged before the stuck op began: the latest of them is what a read must
    // at least see.
    let before: Vec<&&Op> = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Write(_)))
        .filter(|o| o.complete_ns.is_some_and(|c| c < s.invoke_ns))
        .collect();
    if let Some(last) = before.iter().max_by_key(|o| o.complete_ns) {
        let OpKind::Write(v) = last.kind else {
            unreachable!("filtered to writes")
        };
        out.push_str(&format!(
            "the last write acknowledged before it began was {} by client {} at [{}, {}]; ",
            fmt_v(v),
            last.client,
            fmt_t(last.invoke_ns),
            fmt_t_opt(last.complete_ns)
        ));
    }
    out.push_str(&format!("{} ops on this key", ops.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: u32, v: u64, a: u64, b: Option<u64>) -> Op {
        Op {
            key: "k".into(),
            client,
            kind: OpKind::Write(v),
            invoke_ns: a,
            complete_ns: b,
            source: None,
        }
    }

    fn r(client: u32, v: u64, a: u64, b: u64) -> Op {
        Op {
            key: "k".into(),
            client,
            kind: OpKind::Read(v),
            invoke_ns: a,
            complete_ns: Some(b),
            source: None,
        }
    }

    fn outcome(h: &[Op]) -> Outcome {
        let refs: Vec<&Op> = h.iter().collect();
        check_key("k", &refs, STEP_BUDGET)
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(outcome(&[]), Outcome::Linearizable);
        let h = [
            r(1, INITIAL, 0, 1),
            w(1, 5, 2, Some(3)),
            r(2, 5, 4, 5),
            w(2, 6, 6, Some(7)),
            r(1, 6, 8, 9),
        ];
        assert_eq!(outcome(&h), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_after_ack_is_a_violation() {
        // write 5 acked at 3, then a read starting at 4 still sees the initial value.
        let h = [w(1, 5, 0, Some(3)), r(2, INITIAL, 4, 5)];
        match outcome(&h) {
            Outcome::Violation(v) => assert!(
                v.detail.contains("returned <initial zeros>, but write 0x5"),
                "{}",
                v.detail
            ),
            o => panic!("expected a violation, got {o:?}"),
        }
    }

    #[test]
    fn stale_read_report_names_the_replica_that_served_it() {
        let mut stale = r(2, INITIAL, 4, 5);
        stale.source = Some("target 2001 chunk v3".into());
        let h = [w(1, 5, 0, Some(3)), stale];
        match outcome(&h) {
            Outcome::Violation(v) => assert!(
                v.detail
                    .contains("returned <initial zeros> (served by target 2001 chunk v3)"),
                "{}",
                v.detail
            ),
            o => panic!("expected a violation, got {o:?}"),
        }
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [w(1, 5, 0, Some(10)), r(2, INITIAL, 1, 2), r(3, 5, 3, 4)];
        assert_eq!(outcome(&h), Outcome::Linearizable);
        // But once a read saw the new value, a later read may not go back.
        let h = [w(1, 5, 0, Some(10)), r(2, 5, 1, 2), r(3, INITIAL, 3, 4)];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn lost_acked_write_is_a_violation() {
        // 5 then 6 acked in order; the final read sees 5 again.
        let h = [w(1, 5, 0, Some(1)), w(1, 6, 2, Some(3)), r(2, 5, 10, 11)];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        // A write that timed out may show up much later...
        let h = [w(1, 5, 0, None), r(2, INITIAL, 1, 2), r(2, 5, 100, 101)];
        assert_eq!(outcome(&h), Outcome::Linearizable);
        // ...or never.
        let h = [w(1, 5, 0, None), r(2, INITIAL, 100, 101)];
        assert_eq!(outcome(&h), Outcome::Linearizable);
        // But not before it was invoked.
        let h = [r(2, 5, 0, 1), w(1, 5, 2, None)];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn garbage_and_unwritten_values_are_violations() {
        let h = [w(1, 5, 0, Some(1)), r(2, GARBAGE, 2, 3)];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
        let h = [r(2, 77, 2, 3)];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn reordering_of_overlapping_writes_is_found() {
        // Two overlapping writes; readers after both must agree on one final value.
        let h = [
            w(1, 5, 0, Some(10)),
            w(2, 6, 1, Some(9)),
            r(3, 5, 11, 12),
            r(4, 5, 13, 14),
        ];
        assert_eq!(outcome(&h), Outcome::Linearizable);
        let h = [
            w(1, 5, 0, Some(10)),
            w(2, 6, 1, Some(9)),
            r(3, 5, 11, 12),
            r(4, 6, 13, 14),
        ];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn needs_backtracking() {
        // Linearizable only as w6 < r6 < w5 < r5 although w5 starts first: the search must
        // try w5 first, fail, and back off.
        let h = [
            w(1, 5, 0, Some(20)),
            w(2, 6, 1, Some(3)),
            r(3, 6, 2, 4),
            r(4, 5, 21, 22),
        ];
        assert_eq!(outcome(&h), Outcome::Linearizable);
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut a = w(1, 5, 0, Some(1));
        a.key = "a".into();
        let mut b = r(2, INITIAL, 2, 3);
        b.key = "b".into();
        let rep = check(&[a.clone(), b.clone()]);
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.keys, 2);
        b.key = "a".into();
        let rep = check(&[a, b]);
        assert_eq!(rep.violations.len(), 1);
    }

    #[test]
    fn unobserved_unknown_writes_do_not_blow_up_the_search() {
        // 300 overlapping writes that failed (outcome unknown) and were never read, around
        // acknowledged ones: decided at once, and a stale read among them is still found.
        let mut h = vec![w(1, 1, 0, Some(10))];
        for k in 0..300u64 {
            h.push(w(2 + (k % 4) as u32, 1000 + k, 20 + k, None));
        }
        h.push(w(1, 2, 400, Some(410)));
        h.push(r(9, 2, 420, 430));
        assert_eq!(outcome(&h), Outcome::Linearizable);
        h.push(r(9, 1, 440, 450));
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
        // An unknown write that a read did observe still counts, and only after its invocation.
        let h = [
            w(1, 5, 0, Some(1)),
            w(2, 6, 10, None),
            r(3, 6, 20, 21),
            r(3, 5, 30, 31),
        ];
        assert!(matches!(outcome(&h), Outcome::Violation(_)));
    }

    #[test]
    fn many_concurrent_ops_stay_tractable() {
        // 8 clients, 400 ops, heavy overlap, all consistent with a real order: every op is
        // applied at the midpoint of its interval.
        let mut h = Vec::new();
        let mut applied: Vec<(u64, OpKind)> = Vec::new();
        let mut next_v = 1u64;
        for i in 0..400u64 {
            let client = (i % 8) as u32;
            let a = i * 10;
            let b = a + 35 + (i * 7919 % 50);
            let mid = (a + b) / 2;
            if i % 3 == 0 {
                applied.push((mid, OpKind::Write(next_v)));
                h.push(w(client, next_v, a, Some(b)));
                next_v += 1;
            } else {
                applied.push((mid, OpKind::Read(0)));
                h.push(r(client, 0, a, b));
            }
        }
        // Fill in what each read saw under the midpoint order.
        let mut order: Vec<usize> = (0..h.len()).collect();
        order.sort_by_key(|&k| applied[k].0);
        let mut cur = INITIAL;
        for k in order {
            match h[k].kind {
                OpKind::Write(v) => cur = v,
                OpKind::Read(_) => h[k].kind = OpKind::Read(cur),
            }
        }
        assert_eq!(outcome(&h), Outcome::Linearizable);
    }
}
