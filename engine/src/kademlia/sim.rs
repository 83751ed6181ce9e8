//! In-memory network simulation: lookups driven synchronously through
//! [`Lookup`], answers from each responder's [`RoutingTable::closest`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Lookup, NodeId, Observe, RoutingTable, ALPHA, K};

struct Net {
    ids: Vec<NodeId>,
    addrs: Vec<SocketAddr>,
    tables: Vec<RoutingTable>,
    index: HashMap<NodeId, usize>,
    silent: Vec<bool>,
    /// Whether a querier removes the nodes its lookup found unresponsive.
    heal: bool,
    now: Instant,
}

#[derive(Default)]
struct Outcome {
    result: Vec<NodeId>,
    rounds: usize,
    queried: usize,
}

impl Net {
    fn new(n: usize, rng: &mut StdRng) -> Self {
        let ids: Vec<NodeId> = (0..n).map(|_| NodeId::random(rng)).collect();
        let addrs = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16)))
            .collect();
        let tables = ids.iter().map(|id| RoutingTable::new(*id)).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self {
            ids,
            addrs,
            tables,
            index,
            silent: vec![false; n],
            heal: false,
            now: Instant::now(),
        }
    }

    /// Node `at` saw node `who` alive; full buckets ping their oldest entry,
    /// which answers iff it is not silent.
    fn observe(&mut self, at: usize, who: usize) {
        let now = self.now;
        if let Observe::PingOldest { oldest, .. } =
            self.tables[at].observe(self.ids[who], self.addrs[who], now)
        {
            let alive = !self.silent[self.index[&oldest]];
            self.tables[at].ping_result(oldest, alive, now);
        }
    }

    /// Joins: each node connects to `seeds` random others (both ends see
    /// an authenticated connection), then `rounds` rounds of self-lookups.
    fn bootstrap(&mut self, seeds: usize, rounds: usize, rng: &mut StdRng) {
        let n = self.ids.len();
        for i in 0..n {
            for _ in 0..seeds {
                let j = rng.gen_range(0..n);
                if j != i {
                    self.observe(i, j);
                    self.observe(j, i);
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        for _ in 0..rounds {
            order.shuffle(rng);
            for &i in &order {
                let target = self.ids[i];
                self.lookup(i, target);
            }
        }
    }

    /// Drives one lookup from node `from` to completion.
    fn lookup(&mut self, from: usize, target: NodeId) -> Outcome {
        let seeds = self.tables[from].closest(&target, K);
        let mut l = Lookup::new(target, seeds, K, ALPHA).with_local_id(self.ids[from]);
        let mut out = Outcome::default();
        let mut guard = 0;
        while !l.is_done() {
            guard += 1;
            assert!(guard < 10_000, "lookup did not finish");
            let queries = l.poll_queries(self.now);
            if queries.is_empty() {
                // Only silent nodes in flight: let time pass.
                let deadline = l.poll_timeout().expect("not done, nothing in flight");
                self.now = self.now.max(deadline);
                l.handle_timeout(self.now);
                continue;
            }
            out.rounds += 1;
            for (who, _) in queries {
                let j = self.index[&who];
                if self.silent[j] {
                    continue;
                }
                // The responder sees an authenticated request from `from`.
                self.observe(j, from);
                let nodes = self.tables[j].closest(&target, K);
                l.on_response(who, nodes, self.now);
                self.observe(from, j);
            }
            self.now += Duration::from_millis(1);
        }
        if self.heal {
            for id in l.unresponsive() {
                self.tables[from].remove(&id);
            }
        }
        out.queried = l.stats().queried;
        out.result = l.result().into_iter().map(|(id, _)| id).collect();
        out
    }

    /// The true K closest live ids to `target`, `from` excluded.
    fn truth(&self, from: usize, target: &NodeId) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = (0..self.ids.len())
            .filter(|&i| i != from && !self.silent[i])
            .map(|i| self.ids[i])
            .collect();
        all.sort_by_key(|id| id.distance(target));
        all.truncate(K);
        all
    }
}

struct Figures {
    exact: usize,
    lookups: usize,
    mean_rounds: f64,
    mean_queried: f64,
    mean_overlap: f64,
}

fn run_lookups(net: &mut Net, lookups: usize, rng: &mut StdRng) -> Figures {
    let n = net.ids.len();
    let (mut exact, mut rounds, mut queried, mut overlap) = (0, 0, 0, 0);
    for _ in 0..lookups {
        let from = loop {
            let i = rng.gen_range(0..n);
            if !net.silent[i] {
                break i;
            }
        };
        let target = NodeId::random(rng);
        let o = net.lookup(from, target);
        let truth = net.truth(from, &target);
        assert!(o.result.len() <= K);
        if o.result == truth {
            exact += 1;
        }
        overlap += o.result.iter().filter(|id| truth.contains(id)).count();
        rounds += o.rounds;
        queried += o.queried;
    }
    Figures {
        exact,
        lookups,
        mean_rounds: rounds as f64 / lookups as f64,
        mean_queried: queried as f64 / lookups as f64,
        mean_overlap: overlap as f64 / lookups as f64,
    }
}

fn report(label: &str, f: &Figures) {
    println!(
        "kademlia sim {label}: {}/{} lookups exact ({:.1}%), mean {:.2}/16 of the true closest, \
         mean rounds {:.2}, mean queries {:.1}",
        f.exact,
        f.lookups,
        100.0 * f.exact as f64 / f.lookups as f64,
        f.mean_overlap,
        f.mean_rounds,
        f.mean_queried,
    );
}

fn accuracy(nodes: usize, seed: u64) -> Figures {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net::new(nodes, &mut rng);
    net.bootstrap(3, 3, &mut rng);
    run_lookups(&mut net, 100, &mut rng)
}

/// Three independent networks (seeds) per size; each must reach 95%.
fn check_accuracy(nodes: usize) {
    for seed in 0..3u64 {
        let f = accuracy(nodes, nodes as u64 * 1000 + seed);
        report(&format!("{nodes} nodes, seed {seed}"), &f);
        assert!(f.exact * 100 >= 95 * f.lookups, "{} exact", f.exact);
    }
}

#[test]
fn sim_100_nodes_lookups_find_true_closest() {
    check_accuracy(100);
}

#[test]
fn sim_500_nodes_lookups_find_true_closest() {
    check_accuracy(500);
}

fn silent_run(nodes: usize, heal: bool) -> Figures {
    let mut rng = StdRng::seed_from_u64(30 + nodes as u64);
    let mut net = Net::new(nodes, &mut rng);
    net.bootstrap(3, 3, &mut rng);
    // 30% of the nodes stop answering anything (queries and pings).
    let mut all: Vec<usize> = (0..nodes).collect();
    all.shuffle(&mut rng);
    for &i in &all[..nodes * 3 / 10] {
        net.silent[i] = true;
    }
    net.heal = heal;
    if heal {
        // One refresh period: every live node looks itself up once,
        // removing the nodes that did not answer (as the engine's refresh
        // timer would).
        for i in 0..nodes {
            if !net.silent[i] {
                let target = net.ids[i];
                net.lookup(i, target);
            }
        }
    }
    // `lookup` asserts that every lookup finishes.
    run_lookups(&mut net, 100, &mut rng)
}

#[test]
fn sim_30_percent_silent_lookups_finish() {
    for nodes in [100, 500] {
        for heal in [false, true] {
            let f = silent_run(nodes, heal);
            let label = if heal {
                "30% silent, after one self-lookup refresh round removing unresponsive nodes"
            } else {
                "30% silent, no table maintenance"
            };
            report(&format!("{nodes} nodes, {label}"), &f);
            assert_eq!(f.lookups, 100);
        }
    }
}
