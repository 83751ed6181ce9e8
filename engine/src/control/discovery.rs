//! The control shard's driver of authorized-mode discovery: when the
//! gossip of [`crate::discovery`] is sent, to whom, and what a record from
//! a peer leads to.
//!
//! # Design
//! [`Gossip`] owns the node's [`Discovery`] state and drives it as its
//! module docs ask:
//! - right after every handshake, our signed record, then (authorized mode)
//!   a bit vector ([`Gossip::handle_connected`]);
//! - a bit vector from a peer is answered with the records it lacks, at
//!   most once per peer per quarter `gossip_interval` (an answer costs up to
//!   `peer_gossip_max` records; faster ones are refused, `bit_vec_rate`);
//! - a batch of records from a peer: each refused record is counted, and
//!   the first forged one (misbehaviour) closes the connection; a record
//!   that moved a peer is passed on once to every other connection (their
//!   bit vectors would never ask for it); a peer with a new address is
//!   handed to the dialer ([`Output::Learned`]);
//! - every `gossip_interval` ([`Gossip::handle_timeout`]): our record is
//!   re-signed when older than [`OWN_RECORD_REFRESH_MS`] (so a restart on a
//!   new port wins everywhere: newer timestamp), and a bit vector goes out
//!   on every connection.
//!
//! In open mode records are open mode's ([`super::open`]): [`Gossip`] still
//! sends our record after each handshake and keeps it fresh, but sends no
//! bit vectors.
//!
//! The peer sets come from the oracle ([`Gossip::handle_sets`]); the dialer
//! reads [`Gossip::dialable`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_crypto::PublicKey;
use shoal_wire::{BitVec, CloseReason, Peers, Record};

use super::{Connections, Output};
use crate::clock::Clock;
use crate::config::Config;
use crate::connection::ControlOut;
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::peers::ConnId;

/// Our own record is re-signed after this long (ms).
pub(crate) const OWN_RECORD_REFRESH_MS: u64 = 60_000;

/// See the module docs.
pub(crate) struct Gossip {
    discovery: Discovery,
    clock: Clock,
    /// Where we tell peers to dial us (none: we send no record).
    advertise: Option<SocketAddr>,
    interval: Duration,
    /// Authorized mode: bit vectors are sent (open mode: not).
    pings: bool,
    next_gossip: Instant,
    /// When each connected peer's last bit vector was answered.
    last_answer: HashMap<PublicKey, Instant>,
    out: VecDeque<Output>,
}

impl Gossip {
    /// Drives `discovery`, advertising `advertise` (signed now); the first
    /// gossip round is due one `interval` after `now`. `clock` dates
    /// records (Unix milliseconds).
    pub(crate) fn new(
        mut discovery: Discovery,
        advertise: Option<SocketAddr>,
        interval: Duration,
        pings: bool,
        clock: Clock,
        now: Instant,
    ) -> Self {
        if let Some(addr) = advertise {
            discovery.refresh_own(addr, clock.unix_ms(now));
        }
        Self {
            discovery,
            clock,
            advertise,
            interval,
            pings,
            next_gossip: now + interval,
            last_answer: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The node's discovery (settings from `cfg`), advertising
    /// `cfg.advertise` or else the address it listens on (`local_addr`,
    /// unless unspecified).
    pub(crate) fn from_config(
        cfg: &Config,
        local_addr: Option<SocketAddr>,
        pings: bool,
        clock: Clock,
        now: Instant,
    ) -> Self {
        let discovery = Discovery::new(
            DiscoveryConfig {
                namespace: cfg.identity.namespace.clone(),
                tracked_peer_sets: cfg.discovery.tracked_peer_sets,
                peer_gossip_max: cfg.discovery.peer_gossip_max,
                synchrony_bound: cfg.timeouts.synchrony_bound,
                allow_private_ips: cfg.discovery.allow_private_ips,
            },
            cfg.identity.signer.clone(),
        );
        let advertise = cfg
            .listen
            .advertise
            .or(local_addr)
            .filter(|a| !a.ip().is_unspecified());
        Self::new(
            discovery,
            advertise,
            cfg.discovery.gossip_interval,
            pings,
            clock,
            now,
        )
    }

    /// The oracle's tracked peer sets (index, keys), after any change.
    pub(crate) fn handle_sets(&mut self, sets: Vec<(u64, Vec<PublicKey>)>) {
        for (index, keys) in sets {
            self.discovery.register(index, keys);
        }
    }

    /// A handshake completed on `id`.
    pub(crate) fn handle_connected<R: Rng>(&mut self, peer: &PublicKey, id: ConnId, rng: &mut R) {
        tracing::trace!(%peer, "sending our record and a bit vector");
        if let Some(own) = self.discovery.own_record().cloned() {
            let record = ControlOut::Peers(Peers { peers: vec![own] });
            self.out.push_back(Output::Send { id, record });
        }
        if self.pings {
            self.ping(id, rng);
        }
    }

    /// A discovery record from `peer` on `id` (authorized mode).
    pub(crate) fn handle_record<R: Rng>(
        &mut self,
        peer: PublicKey,
        id: ConnId,
        record: Record,
        conns: &dyn Connections,
        now: Instant,
        rng: &mut R,
    ) {
        match record {
            Record::BitVec(bv) => self.handle_bit_vec(peer, id, &bv, now, rng),
            Record::Peers(peers) => self.handle_peers(peer, id, &peers, conns, now),
            // Kademlia records belong to open mode.
            _ => self.refuse("unexpected_control_record"),
        }
    }

    fn handle_bit_vec<R: Rng>(
        &mut self,
        peer: PublicKey,
        id: ConnId,
        bv: &BitVec,
        now: Instant,
        rng: &mut R,
    ) {
        let min_gap = self.interval / 4;
        if self
            .last_answer
            .get(&peer)
            .is_some_and(|t| now.duration_since(*t) < min_gap)
        {
            return self.refuse("bit_vec_rate");
        }
        self.last_answer.insert(peer.clone(), now);
        match self.discovery.handle_bit_vec(bv, rng) {
            Ok(answer) if !answer.peers.is_empty() => {
                let record = ControlOut::Peers(answer);
                self.out.push_back(Output::Send { id, record });
            }
            Ok(_) => {}
            Err(e) => {
                self.refuse("bad_bit_vec");
                tracing::debug!(%peer, error = %e, "bit vector refused");
            }
        }
    }

    fn handle_peers(
        &mut self,
        peer: PublicKey,
        id: ConnId,
        peers: &Peers,
        conns: &dyn Connections,
        now: Instant,
    ) {
        let now_ms = self.clock.unix_ms(now);
        let close = Output::Close {
            id,
            reason: CloseReason::ProtocolViolation,
        };
        let outcome = match self.discovery.handle_peers(peers, now_ms) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.refuse("bad_peers");
                tracing::debug!(%peer, error = %e, "peers batch refused; disconnecting");
                return self.out.push_back(close);
            }
        };
        for r in &outcome.rejected {
            self.refuse("bad_peer_record");
            if r.is_misbehavior() {
                tracing::debug!(%peer, error = %r, "peer sent a forged record; disconnecting");
                self.out.push_back(close);
                break;
            }
        }
        if !outcome.moved.is_empty() {
            let moved = Peers {
                peers: outcome.moved,
            };
            conns.each(&mut |k, other| {
                if *k != peer {
                    let record = ControlOut::Peers(moved.clone());
                    self.out.push_back(Output::Send { id: other, record });
                }
            });
        }
        for (k, _) in outcome.accepted {
            self.out.push_back(Output::Learned(k));
        }
    }

    /// When [`Gossip::handle_timeout`] is due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_gossip
    }

    /// The gossip round, if due at `now`.
    pub(crate) fn handle_timeout<R: Rng>(
        &mut self,
        now: Instant,
        conns: &dyn Connections,
        rng: &mut R,
    ) {
        if now < self.next_gossip {
            return;
        }
        let now_ms = self.clock.unix_ms(now);
        self.next_gossip = now + self.interval;
        if let Some(addr) = self.advertise {
            if self
                .discovery
                .own_record()
                .is_none_or(|r| now_ms.saturating_sub(r.timestamp) > OWN_RECORD_REFRESH_MS)
            {
                self.discovery.refresh_own(addr, now_ms);
            }
        }
        self.last_answer.retain(|k, _| conns.get(k).is_some());
        if self.pings {
            conns.each(&mut |_, id| self.ping(id, rng));
        }
    }

    /// Known addresses of tracked peers (ours excluded).
    pub(crate) fn dialable(&self) -> Vec<(PublicKey, SocketAddr)> {
        self.discovery.dialable()
    }

    /// The next thing to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn ping<R: Rng>(&mut self, id: ConnId, rng: &mut R) {
        if let Some(bv) = self.discovery.random_ping(rng) {
            let record = ControlOut::BitVec(bv);
            self.out.push_back(Output::Send { id, record });
        }
    }

    fn refuse(&mut self, reason: &'static str) {
        self.out.push_back(Output::Refuse(reason));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use shoal_crypto::{Ed25519Signer, Identity};
    use shoal_wire::PeerRecord;

    use super::*;
    use crate::discovery::sign_record;

    const NS: &[u8] = b"shoal-gossip-test";
    const NOW_MS: u64 = 1_700_000_000_000;
    const INTERVAL: Duration = Duration::from_secs(4);

    fn ident(seed: u64) -> Identity {
        Arc::new(Ed25519Signer::insecure_from_seed(seed))
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([11, 0, 0, i], 9000))
    }

    fn conn(key: usize) -> ConnId {
        ConnId {
            shard: 0,
            key,
            generation: 1,
        }
    }

    fn record(seed: u64, a: SocketAddr, ts: u64) -> PeerRecord {
        sign_record(&*ident(seed), NS, a, ts)
    }

    /// Node 1, tracking a set of nodes 1..=4, advertising addr(1).
    fn gossip(now: Instant, pings: bool) -> Gossip {
        let mut d = Discovery::new(
            DiscoveryConfig {
                allow_private_ips: false,
                ..DiscoveryConfig::new(NS)
            },
            ident(1),
        );
        d.register(7, (1..=4).map(|s| ident(s).public_key().clone()).collect());
        Gossip::new(
            d,
            Some(addr(1)),
            INTERVAL,
            pings,
            Clock::new(now, NOW_MS),
            now,
        )
    }

    fn drain(g: &mut Gossip) -> Vec<Output> {
        std::iter::from_fn(|| g.poll_output()).collect()
    }

    fn sends(out: &[Output]) -> Vec<(ConnId, &'static str)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { id, record } => Some((
                    *id,
                    match record {
                        ControlOut::Peers(_) => "peers",
                        ControlOut::BitVec(_) => "bit_vec",
                        _ => "other",
                    },
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_handshake_gets_our_record_then_a_bit_vector() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = gossip(now, true);
        g.handle_connected(ident(3).public_key(), conn(3), &mut rng);
        assert_eq!(
            sends(&drain(&mut g)),
            vec![(conn(3), "peers"), (conn(3), "bit_vec")]
        );
        // Open mode: the record only.
        let mut g = gossip(now, false);
        g.handle_connected(ident(3).public_key(), conn(3), &mut rng);
        assert_eq!(sends(&drain(&mut g)), vec![(conn(3), "peers")]);
    }

    #[test]
    fn bit_vectors_are_answered_at_most_once_per_quarter_interval() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = gossip(now, true);
        let peer = ident(2).public_key().clone();
        let conns = HashMap::from([(peer.clone(), conn(2))]);
        let asks = BitVec {
            index: 7,
            bits: vec![0u8].into(),
        };
        let ask = |g: &mut Gossip, at: Instant, rng: &mut StdRng| {
            let r = Record::BitVec(asks.clone());
            g.handle_record(peer.clone(), conn(2), r, &conns, at, rng);
            drain(g)
        };
        // It lacks everything: our own record is the answer.
        assert_eq!(sends(&ask(&mut g, now, &mut rng)), vec![(conn(2), "peers")]);
        let early = ask(
            &mut g,
            now + INTERVAL / 4 - Duration::from_millis(1),
            &mut rng,
        );
        assert!(matches!(early[..], [Output::Refuse("bit_vec_rate")]));
        let later = ask(&mut g, now + INTERVAL / 4, &mut rng);
        assert_eq!(sends(&later), vec![(conn(2), "peers")]);
        // A malformed one (untracked set) is counted.
        let bad = Record::BitVec(BitVec {
            index: 99,
            bits: vec![0u8].into(),
        });
        g.handle_record(peer, conn(2), bad, &conns, now + INTERVAL, &mut rng);
        assert!(matches!(drain(&mut g)[..], [Output::Refuse("bad_bit_vec")]));
    }

    #[test]
    fn a_forged_record_closes_and_a_moved_peer_is_passed_on() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = gossip(now, true);
        let (two, three) = (ident(2).public_key().clone(), ident(3).public_key().clone());
        let conns = HashMap::from([(two.clone(), conn(2)), (three.clone(), conn(3))]);
        // Node 3's record from node 2: learned.
        let first = Peers {
            peers: vec![record(3, addr(3), NOW_MS)],
        };
        let r = Record::Peers(first);
        g.handle_record(two.clone(), conn(2), r, &conns, now, &mut rng);
        let out = drain(&mut g);
        assert!(matches!(&out[..], [Output::Learned(k)] if *k == three));
        // Node 3 moved: learned, and passed on to every other connection.
        let moved = Peers {
            peers: vec![record(3, addr(33), NOW_MS + 1)],
        };
        let r = Record::Peers(moved);
        g.handle_record(two.clone(), conn(2), r, &conns, now, &mut rng);
        let out = drain(&mut g);
        assert_eq!(sends(&out), vec![(conn(3), "peers")]);
        assert!(matches!(out.last(), Some(Output::Learned(k)) if *k == three));
        assert_eq!(
            g.dialable()
                .into_iter()
                .find(|(k, _)| *k == three)
                .map(|(_, a)| a),
            Some(addr(33))
        );
        // A record whose signature does not verify: counted, and the
        // connection it came on closed.
        let mut forged = record(4, addr(4), NOW_MS);
        forged.signature = vec![0u8; 64].into();
        let r = Record::Peers(Peers {
            peers: vec![forged],
        });
        g.handle_record(two, conn(2), r, &conns, now, &mut rng);
        assert!(matches!(
            drain(&mut g)[..],
            [
                Output::Refuse("bad_peer_record"),
                Output::Close {
                    id,
                    reason: CloseReason::ProtocolViolation
                }
            ] if id == conn(2)
        ));
    }

    #[test]
    fn every_interval_a_bit_vector_goes_to_every_connection() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = gossip(now, true);
        let conns: HashMap<PublicKey, ConnId> = (2..=4)
            .map(|s| (ident(s).public_key().clone(), conn(s as usize)))
            .collect();
        g.handle_timeout(now, &conns, &mut rng);
        assert!(drain(&mut g).is_empty(), "not due yet");
        assert_eq!(g.poll_timeout(), now + INTERVAL);
        g.handle_timeout(now + INTERVAL, &conns, &mut rng);
        let mut got = sends(&drain(&mut g));
        got.sort_by_key(|(id, _)| id.key);
        assert_eq!(
            got,
            vec![
                (conn(2), "bit_vec"),
                (conn(3), "bit_vec"),
                (conn(4), "bit_vec")
            ]
        );
        assert_eq!(g.poll_timeout(), now + 2 * INTERVAL);
        // Our record is re-signed once it is older than the refresh age.
        let own = |g: &Gossip| g.discovery.own_record().map(|r| r.timestamp);
        assert_eq!(own(&g), Some(NOW_MS));
        let later = now + Duration::from_millis(OWN_RECORD_REFRESH_MS + 1);
        g.handle_timeout(later, &conns, &mut rng);
        assert_eq!(own(&g), Some(NOW_MS + OWN_RECORD_REFRESH_MS + 1));
    }
}
