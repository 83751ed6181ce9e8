//! The control shard's side of the peer-set oracle ([`crate::oracle`]):
//! following its changes.
//!
//! # Design
//! The embedder changes peer sets and addresses through [`crate::Oracle`]
//! on its own threads; each change bumps [`OracleState::version`]. The loop
//! shows [`OracleWatch`] the oracle on every iteration; when the version
//! moved (and once at start) the watch returns the tracked sets, for
//! discovery to follow, and queues a close ([`CloseReason::Unauthorized`])
//! for every connection whose peer left every tracked set. The handshake's
//! own check ([`super::acceptor`]) keeps such peers from connecting again.
//!
//! In open mode the authorized set does not admit peers, but it is followed
//! all the same: a change closes connections to peers outside it.

use std::collections::VecDeque;

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use super::{Connections, Output};
use crate::oracle::OracleState;

/// See the module docs.
pub(crate) struct OracleWatch {
    /// The version last acted on (`u64::MAX`: none yet).
    seen: u64,
    out: VecDeque<Output>,
}

impl OracleWatch {
    pub(crate) fn new() -> Self {
        Self {
            seen: u64::MAX,
            out: VecDeque::new(),
        }
    }

    /// Looks at `oracle`. If it changed since the last look, returns its
    /// tracked sets (index, keys) and queues the closes of connections in
    /// `conns` to peers outside its authorized set.
    pub(crate) fn handle_oracle(
        &mut self,
        oracle: &OracleState,
        conns: &dyn Connections,
    ) -> Option<Vec<(u64, Vec<PublicKey>)>> {
        let version = oracle.version();
        if version == self.seen {
            return None;
        }
        self.seen = version;
        let sets = oracle.sets();
        let authorized = oracle.authorized();
        conns.each(&mut |peer, id| {
            if !authorized.contains(peer) {
                self.out.push_back(Output::Close {
                    id,
                    reason: CloseReason::Unauthorized,
                });
            }
        });
        Some(sets)
    }

    /// The next thing to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use shoal_crypto::{Ed25519Signer, Signer};

    use super::*;
    use crate::oracle::Oracle;
    use crate::peers::ConnId;

    fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    fn conn(key: usize) -> ConnId {
        ConnId {
            shard: 0,
            key,
            generation: 1,
        }
    }

    fn closes(w: &mut OracleWatch) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = std::iter::from_fn(|| w.poll_output())
            .map(|o| match o {
                Output::Close {
                    id,
                    reason: CloseReason::Unauthorized,
                } => id,
                _ => panic!("only unauthorized closes"),
            })
            .collect();
        ids.sort_by_key(|id| id.key);
        ids
    }

    #[test]
    fn peers_that_leave_every_set_are_closed_once_per_change() {
        let state = Arc::new(OracleState::new(2));
        let oracle = Oracle {
            state: state.clone(),
        };
        oracle.register(1, vec![key(1), key(2)]);
        let conns = HashMap::from([(key(1), conn(1)), (key(2), conn(2)), (key(3), conn(3))]);
        let mut w = OracleWatch::new();
        // The first look acts: set 1 for discovery, the stranger closed.
        let sets = w.handle_oracle(&state, &conns).expect("first look");
        assert_eq!(sets, vec![(1, state.sets()[0].1.clone())]);
        assert_eq!(closes(&mut w), vec![conn(3)]);
        // No change, nothing to do.
        assert!(w.handle_oracle(&state, &conns).is_none());
        assert!(closes(&mut w).is_empty());
        // Two newer sets push set 1 (and key 1) out of the window.
        oracle.register(2, vec![key(2)]);
        oracle.register(3, vec![key(2), key(3)]);
        let sets = w.handle_oracle(&state, &conns).expect("changed");
        assert_eq!(sets.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(closes(&mut w), vec![conn(1)]);
    }
}
