//! Iterative `FIND_NODE` lookup toward a target id.
//!
//! # Design
//! A sans-IO state machine. Candidates are kept sorted by XOR distance **to
//! the target** (noise asked peers for nodes near *themselves*, so its
//! lookups never converged on far targets). Each candidate is `NotAsked`,
//! `InFlight` (with a deadline), `Responded`, `TimedOut` or `Failed`.
//!
//! - [`Lookup::poll_queries`] starts queries to the closest `NotAsked`
//!   candidates among the `k` closest that have not failed, keeping at most
//!   `alpha` in flight. Each query asks the peer for the `k` nodes it knows
//!   closest to the target.
//! - [`Lookup::on_response`] marks the responder and merges the nodes it
//!   returned (at most `k` per answer are considered; unsolicited answers are
//!   ignored).
//! - [`Lookup::on_failure`] (disconnect, dial failure, error reply) and
//!   per-query deadlines ([`Lookup::poll_timeout`] /
//!   [`Lookup::handle_timeout`]) take a node out of the window, so a silent
//!   node cannot stall the lookup; the next closest candidate replaces it.
//!   A timed-out node that answers late is still accepted.
//! - The lookup is done when the `k` closest non-failed candidates have all
//!   responded (so nothing closer is pending or unasked), or when there is
//!   nothing left to ask, or when the query budget is spent and nothing is
//!   in flight. [`Lookup::result`] is the `k` closest responders.
//!
//! Bounds: at most `max_candidates` (default `8k`) candidates are kept (the
//! farthest are dropped), at most `max_queries` (default `10k`) queries are
//! ever started, at most `alpha` are in flight.
//!
//! # Security
//! Responses are only accepted from nodes we queried. A responder can still
//! return arbitrary ids (fake, or all its Sybils); fake ids cost one query
//! timeout each, and the query budget bounds the total damage. There is no
//! disjoint-path lookup (S/Kademlia) and no check that returned addresses are
//! signed by their nodes: eclipse/Sybil resistance is **not** provided by
//! this module beyond what the authenticated handshake gives when a returned
//! node is actually contacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::id::{Distance, NodeId};

/// Default parallelism.
pub const ALPHA: usize = 3;
/// Default per-query timeout.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotAsked,
    InFlight { deadline: Instant },
    Responded,
    TimedOut,
    Failed,
}

impl State {
    fn excluded(self) -> bool {
        matches!(self, State::TimedOut | State::Failed)
    }
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: NodeId,
    addr: SocketAddr,
    state: State,
}

/// Counters of one lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Queries started.
    pub queried: usize,
    /// Responses accepted.
    pub responded: usize,
    /// Queries that failed via [`Lookup::on_failure`].
    pub failed: usize,
    /// Queries that hit their deadline.
    pub timed_out: usize,
    /// Responses ignored (unsolicited, duplicate, or after the end).
    pub ignored: usize,
}

/// An iterative lookup of the `k` nodes closest to a target.
#[derive(Debug)]
pub struct Lookup {
    target: NodeId,
    local: Option<NodeId>,
    k: usize,
    alpha: usize,
    query_timeout: Duration,
    max_candidates: usize,
    max_queries: usize,
    candidates: BTreeMap<Distance, Candidate>,
    in_flight: usize,
    done: bool,
    stats: LookupStats,
}

impl Lookup {
    /// A lookup of `target` starting from `seeds` (typically the local
    /// table's `closest(target, k)`), keeping `k` results and at most `alpha`
    /// queries in flight (both at least 1). Defaults: 5 s per-query timeout,
    /// `8k` candidates, `10k` queries.
    pub fn new(target: NodeId, seeds: Vec<(NodeId, SocketAddr)>, k: usize, alpha: usize) -> Self {
        let k = k.max(1);
        let mut lookup = Self {
            target,
            local: None,
            k,
            alpha: alpha.max(1),
            query_timeout: QUERY_TIMEOUT,
            max_candidates: 8 * k,
            max_queries: 10 * k,
            candidates: BTreeMap::new(),
            in_flight: 0,
            done: false,
            stats: LookupStats::default(),
        };
        lookup.add_candidates(seeds);
        lookup.update_done();
        lookup
    }

    /// Never queries nor returns `local` (our own id, if a peer mentions it).
    pub fn with_local_id(mut self, local: NodeId) -> Self {
        self.local = Some(local);
        if let Some(c) = self.candidates.remove(&local.distance(&self.target)) {
            if matches!(c.state, State::InFlight { .. }) {
                self.in_flight -= 1;
            }
        }
        self.update_done();
        self
    }

    /// Sets the per-query timeout (applies to queries started afterwards).
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Sets the query budget (at least `k`).
    pub fn with_max_queries(mut self, max: usize) -> Self {
        self.max_queries = max.max(self.k);
        self.update_done();
        self
    }

    /// The target id.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Queries currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Counters.
    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// Whether the lookup has finished; afterwards it starts no query and
    /// ignores every input.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn add_candidates(&mut self, nodes: impl IntoIterator<Item = (NodeId, SocketAddr)>) {
        for (id, addr) in nodes {
            if Some(id) == self.local {
                continue;
            }
            // The distance to a fixed target is a bijection on ids, so it is
            // a unique key; the first address heard for an id is kept.
            self.candidates
                .entry(id.distance(&self.target))
                .or_insert(Candidate {
                    id,
                    addr,
                    state: State::NotAsked,
                });
        }
        while self.candidates.len() > self.max_candidates {
            if let Some((_, c)) = self.candidates.pop_last() {
                if matches!(c.state, State::InFlight { .. }) {
                    self.in_flight -= 1;
                }
            }
        }
    }

    fn update_done(&mut self) {
        if self.done {
            return;
        }
        let budget_left = self.stats.queried < self.max_queries;
        let mut window = 0;
        let mut all_responded = true;
        let mut can_query = false;
        for c in self.candidates.values() {
            if c.state.excluded() {
                continue;
            }
            if window == self.k {
                break;
            }
            window += 1;
            match c.state {
                State::Responded => {}
                State::NotAsked => {
                    all_responded = false;
                    can_query = true;
                }
                _ => all_responded = false,
            }
        }
        self.done = all_responded || (self.in_flight == 0 && (!can_query || !budget_left));
    }

    /// Starts up to `alpha - in_flight` queries and returns the nodes to ask
    /// (`FIND_NODE(target)` to each). Empty when the lookup is done, when
    /// `alpha` queries are already in flight, or when everything worth
    /// asking is already asked.
    pub fn poll_queries(&mut self, now: Instant) -> Vec<(NodeId, SocketAddr)> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let deadline = now + self.query_timeout;
        let mut window = 0;
        for c in self.candidates.values_mut() {
            if self.in_flight >= self.alpha || self.stats.queried >= self.max_queries {
                break;
            }
            if c.state.excluded() {
                continue;
            }
            if window == self.k {
                break;
            }
            window += 1;
            if c.state == State::NotAsked {
                c.state = State::InFlight { deadline };
                self.in_flight += 1;
                self.stats.queried += 1;
                out.push((c.id, c.addr));
            }
        }
        self.update_done();
        out
    }

    /// Handles `from`'s answer: the nodes it knows closest to the target.
    /// Returns whether the answer was accepted (we asked `from`, it had not
    /// answered yet, it had not failed, the lookup is not done).
    pub fn on_response(
        &mut self,
        from: NodeId,
        nodes: Vec<(NodeId, SocketAddr)>,
        _now: Instant,
    ) -> bool {
        let key = from.distance(&self.target);
        let accepted = !self.done
            && match self.candidates.get_mut(&key) {
                Some(c) => match c.state {
                    State::InFlight { .. } => {
                        self.in_flight -= 1;
                        c.state = State::Responded;
                        true
                    }
                    State::TimedOut => {
                        c.state = State::Responded;
                        true
                    }
                    _ => false,
                },
                None => false,
            };
        if !accepted {
            self.stats.ignored += 1;
            return false;
        }
        self.stats.responded += 1;
        let k = self.k;
        self.add_candidates(nodes.into_iter().take(k));
        self.update_done();
        true
    }

    /// `from` will not answer (disconnected, dial failed, error reply).
    pub fn on_failure(&mut self, from: NodeId, _now: Instant) {
        if self.done {
            return;
        }
        if let Some(c) = self.candidates.get_mut(&from.distance(&self.target)) {
            match c.state {
                State::InFlight { .. } => {
                    self.in_flight -= 1;
                    c.state = State::Failed;
                    self.stats.failed += 1;
                }
                State::NotAsked | State::TimedOut => c.state = State::Failed,
                State::Responded | State::Failed => {}
            }
        }
        self.update_done();
    }

    /// The earliest deadline of a query in flight, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        self.candidates
            .values()
            .filter_map(|c| match c.state {
                State::InFlight { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Expires every query whose deadline is `<= now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        for c in self.candidates.values_mut() {
            if let State::InFlight { deadline } = c.state {
                if deadline <= now {
                    c.state = State::TimedOut;
                    self.in_flight -= 1;
                    self.stats.timed_out += 1;
                }
            }
        }
        self.update_done();
    }

    /// Nodes that were asked and did not answer (failed, or timed out and
    /// never answered late), closest first: input for table maintenance
    /// (e.g. count failures, then [`super::RoutingTable::remove`]).
    pub fn unresponsive(&self) -> Vec<NodeId> {
        self.candidates
            .values()
            .filter(|c| c.state.excluded())
            .map(|c| c.id)
            .collect()
    }

    /// The `k` closest nodes that answered, closest first. Meaningful once
    /// [`Lookup::is_done`]; before that, the best so far.
    pub fn result(&self) -> Vec<(NodeId, SocketAddr)> {
        self.candidates
            .values()
            .filter(|c| c.state == State::Responded)
            .take(self.k)
            .map(|c| (c.id, c.addr))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], i))
    }

    /// An id at distance `d` from the all-zero target.
    fn id(d: u16) -> NodeId {
        let mut b = [0u8; 32];
        b[30..].copy_from_slice(&d.to_be_bytes());
        NodeId(b)
    }

    fn n(d: u16) -> (NodeId, SocketAddr) {
        (id(d), addr(d))
    }

    const TARGET: NodeId = NodeId([0u8; 32]);

    #[test]
    fn no_seeds_is_done_immediately() {
        let now = Instant::now();
        let mut l = Lookup::new(TARGET, vec![], 16, 3);
        assert!(l.is_done());
        assert!(l.poll_queries(now).is_empty());
        assert!(l.result().is_empty());
    }

    #[test]
    fn queries_closest_first_never_more_than_alpha() {
        let now = Instant::now();
        let mut l = Lookup::new(TARGET, (100..110).map(n).collect(), 4, 3);
        let q = l.poll_queries(now);
        assert_eq!(q, vec![n(100), n(101), n(102)]);
        assert!(l.poll_queries(now).is_empty(), "alpha in flight");
        assert_eq!(l.in_flight(), 3);
        // Unsolicited answer is ignored.
        assert!(!l.on_response(id(105), vec![n(1)], now));
        assert!(l.on_response(id(100), vec![n(5), n(6)], now));
        // One slot free: the new closest (5) goes first.
        assert_eq!(l.poll_queries(now), vec![n(5)]);
        assert!(!l.on_response(id(100), vec![], now), "duplicate");
    }

    #[test]
    fn converges_and_returns_k_closest_responders() {
        let now = Instant::now();
        // Every node answers with nodes 1..=4 (the true closest).
        let mut l = Lookup::new(TARGET, (50..60).map(n).collect(), 4, 2);
        let mut asked = Vec::new();
        while !l.is_done() {
            let q = l.poll_queries(now);
            assert!(!q.is_empty());
            for (who, _) in q {
                asked.push(who);
                l.on_response(who, (1..=4).map(n).collect(), now);
            }
        }
        let r: Vec<NodeId> = l.result().into_iter().map(|(i, _)| i).collect();
        assert_eq!(r, vec![id(1), id(2), id(3), id(4)]);
        // Far seeds beyond what was needed were never asked.
        assert!(!asked.contains(&id(59)));
    }

    #[test]
    fn failure_is_replaced_by_next_closest() {
        let now = Instant::now();
        let mut l = Lookup::new(TARGET, (1..=5).map(n).collect(), 3, 3);
        assert_eq!(l.poll_queries(now), vec![n(1), n(2), n(3)]);
        l.on_failure(id(2), now);
        assert_eq!(l.poll_queries(now), vec![n(4)]);
        for d in [1, 3, 4] {
            l.on_response(id(d), vec![], now);
        }
        assert!(l.is_done());
        let r: Vec<NodeId> = l.result().into_iter().map(|(i, _)| i).collect();
        assert_eq!(r, vec![id(1), id(3), id(4)]);
        assert_eq!(l.stats().failed, 1);
    }

    #[test]
    fn silent_node_times_out_and_late_answer_is_accepted() {
        let t0 = Instant::now();
        let mut l = Lookup::new(TARGET, (1..=3).map(n).collect(), 2, 2)
            .with_query_timeout(Duration::from_secs(1));
        assert_eq!(l.poll_queries(t0), vec![n(1), n(2)]);
        l.on_response(id(2), vec![], t0);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        // Nothing happens before the deadline.
        l.handle_timeout(t0 + Duration::from_millis(999));
        assert_eq!(l.in_flight(), 1);
        assert!(l.poll_queries(t0).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        l.handle_timeout(t1);
        assert_eq!(l.stats().timed_out, 1);
        assert_eq!(l.poll_queries(t1), vec![n(3)]);
        // Node 1 answers late: accepted and back in the result.
        assert!(l.on_response(id(1), vec![], t1));
        assert!(l.is_done(), "1 and 2 responded: the 2 closest");
        let r: Vec<NodeId> = l.result().into_iter().map(|(i, _)| i).collect();
        assert_eq!(r, vec![id(1), id(2)]);
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn all_silent_finishes_with_empty_result() {
        let t0 = Instant::now();
        let mut l = Lookup::new(TARGET, (1..=10).map(n).collect(), 4, 3);
        let mut now = t0;
        let mut steps = 0;
        while !l.is_done() {
            l.poll_queries(now);
            now = l.poll_timeout().expect("in flight while not done");
            l.handle_timeout(now);
            steps += 1;
            assert!(steps < 100);
        }
        assert!(l.result().is_empty());
        assert_eq!(l.stats().queried, 10);
    }

    #[test]
    fn candidates_and_queries_are_bounded() {
        let now = Instant::now();
        let mut l = Lookup::new(TARGET, vec![n(60000)], 2, 1);
        // A hostile responder chain that always returns ever-closer fakes.
        let mut next = 59999u16;
        let mut rounds = 0;
        while !l.is_done() {
            let q = l.poll_queries(now);
            for (who, _) in q {
                let fakes: Vec<_> = (0..50)
                    .map(|_| {
                        next -= 1;
                        n(next)
                    })
                    .collect();
                l.on_response(who, fakes, now);
            }
            assert!(l.candidates.len() <= 16);
            rounds += 1;
            assert!(rounds < 1000);
        }
        assert_eq!(l.stats().queried, 20, "10k query budget");
    }

    #[test]
    fn local_id_is_never_queried() {
        let now = Instant::now();
        let mut l = Lookup::new(TARGET, vec![n(1), n(2)], 16, 3).with_local_id(id(1));
        assert_eq!(l.poll_queries(now), vec![n(2)]);
        l.on_response(id(2), vec![n(1), n(3)], now);
        assert_eq!(l.poll_queries(now), vec![n(3)]);
    }
}
