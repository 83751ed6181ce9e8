//! The address book: the newest verified record per tracked key.
//!
//! # Design
//!
//! One entry per key, holding the record exactly as received (so it can be
//! gossiped on unchanged: others verify the original signature) and its
//! decoded address. A record is taken only if it passes, in this order
//! (cheap checks first, the signature last):
//!
//! 1. the key parses under the local scheme ([`RecordRejected::MalformedKey`]);
//! 2. the key is in a tracked set ([`RecordRejected::Untracked`]);
//! 3. the key is not this node's ([`RecordRejected::SelfRecord`]);
//! 4. the socket is 6 or 18 bytes with a nonzero port
//!    ([`RecordRejected::MalformedSocket`], [`RecordRejected::ZeroPort`]);
//! 5. the timestamp is at most `now_ms + synchrony_bound`
//!    ([`RecordRejected::FutureTimestamp`]);
//! 6. the address is publicly routable, unless private addresses are allowed
//!    ([`RecordRejected::Private`]);
//! 7. the timestamp is strictly newer than the one held for the key,
//!    otherwise [`Inserted::Stale`] and nothing changes;
//! 8. the signature verifies ([`RecordRejected::BadSignature`]).
//!
//! A stale record is reported as [`Inserted::Stale`] **without** its
//! signature being checked: ignoring it costs no verification, which keeps
//! replays of old records cheap. An older or equal timestamp never replaces
//! a newer one, even with a different address (the signer's clock orders its
//! records; two records with one timestamp are an equivocation by the
//! signer, and the first one seen stays).
//!
//! The node's own record is held apart, set by the caller, and never taken
//! from the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use shoal_crypto::{PublicKey, Scheme};
use shoal_wire::PeerRecord;

use super::record::{
    check_signature, decode_addr, decode_record, is_publicly_routable, RecordRejected,
};

/// What [`insert`](super::Discovery::insert) did with a record that passed
/// every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// First record known for this key.
    New,
    /// Replaced an older record for this key.
    Updated {
        /// The address differs from the one held before.
        address_changed: bool,
    },
    /// Not newer than the record held: ignored (signature not checked).
    Stale,
}

/// A verified record and its decoded address.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: PeerRecord,
    pub(crate) addr: SocketAddr,
}

pub(crate) struct AddressBook {
    scheme: &'static dyn Scheme,
    record_namespace: Vec<u8>,
    own_key: PublicKey,
    synchrony_bound_ms: u64,
    allow_private_ips: bool,
    own: Option<Entry>,
    entries: BTreeMap<PublicKey, Entry>,
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBook")
            .field("scheme", &self.scheme.name())
            .field("own", &self.own.as_ref().map(|e| e.addr))
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl AddressBook {
    pub(crate) fn new(
        scheme: &'static dyn Scheme,
        record_namespace: Vec<u8>,
        own_key: PublicKey,
        synchrony_bound_ms: u64,
        allow_private_ips: bool,
    ) -> Self {
        Self {
            scheme,
            record_namespace,
            own_key,
            synchrony_bound_ms,
            allow_private_ips,
            own: None,
            entries: BTreeMap::new(),
        }
    }

    pub(crate) fn insert(
        &mut self,
        record: &PeerRecord,
        now_ms: u64,
        is_tracked: impl Fn(&PublicKey) -> bool,
    ) -> Result<(Inserted, PublicKey, SocketAddr), RecordRejected> {
        let key = self
            .scheme
            .parse_public_key(&record.public_key)
            .map_err(|_| RecordRejected::MalformedKey)?;
        if !is_tracked(&key) {
            return Err(RecordRejected::Untracked);
        }
        if key == self.own_key {
            return Err(RecordRejected::SelfRecord);
        }
        let addr = decode_addr(record)?;
        if record.timestamp > now_ms.saturating_add(self.synchrony_bound_ms) {
            return Err(RecordRejected::FutureTimestamp {
                timestamp: record.timestamp,
                now_ms,
            });
        }
        if !self.allow_private_ips && !is_publicly_routable(addr.ip()) {
            return Err(RecordRejected::Private(addr.ip()));
        }
        let previous = self.entries.get(&key).map(|e| (e.record.timestamp, e.addr));
        if let Some((held, _)) = previous {
            if record.timestamp <= held {
                return Ok((Inserted::Stale, key, addr));
            }
        }
        check_signature(self.scheme, &self.record_namespace, &key, record)?;
        self.entries.insert(
            key.clone(),
            Entry {
                record: record.clone(),
                addr,
            },
        );
        let inserted = match previous {
            None => Inserted::New,
            Some((_, old)) => Inserted::Updated {
                address_changed: old != addr,
            },
        };
        Ok((inserted, key, addr))
    }

    /// Sets the own record after checking key and signature (no policy, no
    /// clock: the caller is authoritative for its own address).
    pub(crate) fn set_own(&mut self, record: PeerRecord) -> Result<(), RecordRejected> {
        let (key, addr) = decode_record(self.scheme, &record)?;
        if key != self.own_key {
            return Err(RecordRejected::NotOwnKey);
        }
        check_signature(self.scheme, &self.record_namespace, &key, &record)?;
        self.own = Some(Entry { record, addr });
        Ok(())
    }

    pub(crate) fn own(&self) -> Option<&Entry> {
        self.own.as_ref()
    }

    /// The entry for `key`, the own one included.
    pub(crate) fn get(&self, key: &PublicKey) -> Option<&Entry> {
        if *key == self.own_key {
            self.own.as_ref()
        } else {
            self.entries.get(key)
        }
    }

    /// True if a verified record is known for `key` (own included).
    pub(crate) fn knows(&self, key: &PublicKey) -> bool {
        self.get(key).is_some()
    }

    /// Others' entries, sorted by key.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&PublicKey, &Entry)> {
        self.entries.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops entries whose key fails `keep`; returns how many were dropped.
    pub(crate) fn retain(&mut self, keep: impl Fn(&PublicKey) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, _| keep(k));
        before - self.entries.len()
    }
}
