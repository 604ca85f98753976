//! The linearizability search for one instance: Wing & Gong's algorithm
//! with Lowe's memoization (WGL).
//!
//! The invocations and answers of the instance's operations are laid out
//! in real-time order in a doubly linked list (unknown operations, which
//! have only an invocation, in a second one). The search linearizes, one
//! at a time, an operation whose invocation comes before the first answer
//! still in the list (so no operation is placed after one that finished
//! before it started), if the model accepts its answer in the current
//! state; it unlinks the operation and starts over from the front. When
//! the front of the list is an answer — an operation that must be placed
//! now but cannot — it backtracks. Each (set of linearized operations,
//! model state) it has entered is remembered and never entered twice,
//! which keeps the search polynomial on the histories real clients make.
//!
//! Unknown operations have no answer in the list (their interval never
//! ends) and need not be linearized at all; the search succeeds once every
//! operation with an answer is placed. In each configuration the search
//! offers the operations with an answer first and the unknown ones
//! (invoked before the first answer still in the list) only after those:
//! an unknown write that never took effect would otherwise be tried, and
//! fail, at every step after its invocation, and the scan for candidates
//! would step over every unknown operation still pending. The order
//! changes nothing but speed — every candidate is still tried in every
//! configuration.
//!
//! An unknown operation may carry a deadline (its server process died
//! then): it is offered only while nothing invoked after that instant has
//! been placed. Without one, every unknown write still pending is tried
//! again in every dead end, which grows exponentially with their number.
//!
//! The set of linearized operations is remembered by a 128-bit Zobrist
//! hash (XOR of two random words per operation, updated in O(1) per step)
//! rather than by the bit set itself: a bit set per visited configuration
//! would cost `ops / 8` bytes each. Two different sets sharing a hash
//! (chance about visited² / 2¹²⁸) could only prune a branch, which would
//! show up as a rejection and be checked by hand.

use std::collections::HashSet;

use crate::model::{InstanceState, Resolved};
use crate::Machine;

/// Head sentinel of the list of operations with an answer.
const HEAD: usize = 0;
/// Head sentinel of the list of unknown operations (invocations only).
const UNKNOWN_HEAD: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Head,
    Call(usize),
    Answer(usize),
    Tail,
}

/// What the search concluded.
#[derive(Debug)]
pub(crate) enum Search {
    /// A linearization exists.
    Linearizable { steps: u64 },
    /// None exists; the longest prefix the search could place (the place
    /// to start reading the history) had `deepest` operations.
    Violation { deepest: usize, steps: u64 },
    /// The step budget ran out first.
    GaveUp { deepest: usize, steps: u64 },
    /// `stop_at_depth` was reached with this prefix.
    Reached { prefix: Vec<usize> },
}

/// One word of a Zobrist key, from the operation's index (splitmix64).
fn zobrist(index: usize, salt: u64) -> u64 {
    let mut z = (index as u64)
        .wrapping_add(salt)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When an operation may take effect.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interval {
    pub invoke: u64,
    /// When its answer arrived; `None` for an unknown operation.
    pub answer: Option<u64>,
    /// For an unknown operation: it took effect by then, or never.
    pub effect_by: Option<u64>,
}

/// Both lists in one arena of nodes.
struct Lists {
    nodes: Vec<Node>,
    /// The instant of each node (`u64::MAX` for the tails).
    time: Vec<u64>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_node: Vec<usize>,
    answer_node: Vec<Option<usize>>,
}

impl Lists {
    fn new(intervals: &[Interval]) -> Lists {
        // Events in real-time order; at equal instants invocations come
        // first, which makes the operations concurrent (the lenient side).
        let mut answered: Vec<(u64, u8, usize)> = Vec::new();
        let mut unknown: Vec<(u64, u8, usize)> = Vec::new();
        for (i, interval) in intervals.iter().enumerate() {
            match interval.answer {
                Some(answer) => {
                    answered.push((interval.invoke, 0, i));
                    answered.push((answer, 1, i));
                }
                None => unknown.push((interval.invoke, 0, i)),
            }
        }
        answered.sort_unstable();
        unknown.sort_unstable();
        let len = answered.len() + unknown.len() + 4;
        let mut lists = Lists {
            nodes: vec![Node::Head, Node::Head],
            time: vec![0, 0],
            next: vec![0; len],
            prev: vec![0; len],
            call_node: vec![0; intervals.len()],
            answer_node: vec![None; intervals.len()],
        };
        for (head, events) in [(HEAD, answered), (UNKNOWN_HEAD, unknown)] {
            let mut last = head;
            for (time, kind, op) in events {
                let node = lists.nodes.len();
                if kind == 0 {
                    lists.nodes.push(Node::Call(op));
                    lists.call_node[op] = node;
                } else {
                    lists.nodes.push(Node::Answer(op));
                    lists.answer_node[op] = Some(node);
                }
                lists.time.push(time);
                lists.next[last] = node;
                lists.prev[node] = last;
                last = node;
            }
            let tail = lists.nodes.len();
            lists.nodes.push(Node::Tail);
            lists.time.push(u64::MAX);
            lists.next[last] = tail;
            lists.prev[tail] = last;
        }
        debug_assert_eq!(lists.nodes.len(), len);
        lists
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undo `unlink(node)`; undos must come in reverse order.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(answer) = self.answer_node[op] {
            self.unlink(answer);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(answer) = self.answer_node[op] {
            self.relink(answer);
        }
        self.relink(self.call_node[op]);
    }
}

/// One placed operation, with what is needed to take it back.
struct Placed {
    op: usize,
    before: InstanceState,
    /// The window the operation was chosen in (for unknown ones).
    window_end: u64,
    /// The latest invocation among the operations placed before it.
    latest_invoke: u64,
}

/// Search a linearization of `ops` (with their real-time intervals) from
/// `start`, taking at most `steps_max` steps. With `stop_at_depth`, stop
/// at the first prefix of that many operations: the search is
/// deterministic, so a second run finds the deepest prefix of a failed
/// one again (keeping a copy of every new deepest prefix during the search
/// would cost time quadratic in the history's length).
pub(crate) fn search(
    machine: &Machine,
    ops: &[Resolved],
    intervals: &[Interval],
    start: InstanceState,
    steps_max: u64,
    stop_at_depth: Option<usize>,
) -> Search {
    debug_assert_eq!(ops.len(), intervals.len());
    let mut lists = Lists::new(intervals);
    let keys: Vec<(u64, u64)> = (0..ops.len())
        .map(|i| (zobrist(i, 0x5eed), zobrist(i, 0xfeed_f00d)))
        .collect();
    let mut required_left = ops.iter().filter(|op| op.required()).count();
    let mut state = start;
    let mut hash = (0u64, 0u64);
    let mut seen: HashSet<(u64, u64, InstanceState)> = HashSet::new();
    let mut stack: Vec<Placed> = Vec::new();
    let mut deepest = 0usize;
    let mut steps = 0u64;
    let mut node = lists.next[HEAD];
    // Scanning the unknown operations invoked up to `window_end` (the
    // first answer still in the list), after the answered ones.
    let mut unknown_pass = false;
    let mut window_end = 0u64;
    // An unknown operation bounded by `effect_by` cannot follow anything
    // invoked after that instant.
    let mut latest_invoke = 0u64;
    loop {
        if required_left == 0 {
            return Search::Linearizable { steps };
        }
        steps += 1;
        if steps > steps_max {
            return Search::GaveUp { deepest, steps };
        }
        let candidate = match lists.nodes[node] {
            Node::Call(op) if !unknown_pass => Some(op),
            Node::Call(op) if lists.time[node] <= window_end => intervals[op]
                .effect_by
                .is_none_or(|by| by >= latest_invoke)
                .then_some(op),
            _ => None,
        };
        if let Some(op) = candidate {
            let entered = ops[op].step(machine, state).and_then(|next| {
                let key = (hash.0 ^ keys[op].0, hash.1 ^ keys[op].1);
                seen.insert((key.0, key.1, next)).then_some((next, key))
            });
            match entered {
                Some((next, key)) => {
                    stack.push(Placed {
                        op,
                        before: state,
                        window_end,
                        latest_invoke,
                    });
                    latest_invoke = latest_invoke.max(intervals[op].invoke);
                    state = next;
                    hash = key;
                    lists.lift(op);
                    if ops[op].required() {
                        required_left -= 1;
                    }
                    deepest = deepest.max(stack.len());
                    if stop_at_depth == Some(stack.len()) {
                        let prefix = stack.iter().map(|p| p.op).collect();
                        return Search::Reached { prefix };
                    }
                    node = lists.next[HEAD];
                    unknown_pass = false;
                }
                None => node = lists.next[node],
            }
        } else if unknown_pass
            && matches!(lists.nodes[node], Node::Call(_))
            && lists.time[node] <= window_end
        {
            // An unknown operation past its deadline here: skip it.
            node = lists.next[node];
        } else if !unknown_pass {
            // The first answer: the window is complete; offer the unknown
            // operations invoked before it.
            window_end = lists.time[node];
            unknown_pass = true;
            node = lists.next[UNKNOWN_HEAD];
        } else {
            let Some(placed) = stack.pop() else {
                return Search::Violation { deepest, steps };
            };
            let op = placed.op;
            state = placed.before;
            hash = (hash.0 ^ keys[op].0, hash.1 ^ keys[op].1);
            lists.unlift(op);
            if ops[op].required() {
                required_left += 1;
            }
            // Go on with the candidates after it, in its own pass.
            unknown_pass = !ops[op].required();
            window_end = placed.window_end;
            latest_invoke = placed.latest_invoke;
            node = lists.next[lists.call_node[op]];
        }
    }
}
