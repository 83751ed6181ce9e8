//! The seen-cache: every message id taken lately, with the message itself
//! while it may be asked for.
//!
//! # Design
//! A map from id to [`Seen`] plus the ids in arrival order. An id leaves
//! when it is older than the configured age, when the cache holds
//! `capacity` ids, or when its payload would take the cache past
//! `max_bytes` (oldest first in each case). An id forgotten before its age
//! ran out could be replayed, so the cache remembers the highest sequence it
//! forgot that way ([`SeenCache::floor`]) and the core refuses anything at
//! or below it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{DataFrame, MessageId};

/// What became of a message.
#[derive(Clone, Debug)]
pub enum Seen {
    /// Accepted; `Some` while it may be sent to whoever asks (accepted for
    /// forwarding).
    Accepted(Option<Stored>),
    /// Rejected by the application's validator.
    Rejected,
}

/// A message kept to answer grafts and pulls.
#[derive(Clone, Debug)]
pub struct Stored {
    pub signature: Bytes,
    pub payload: Bytes,
    /// Hops at which we received it (what we forward with, plus one).
    pub hops: u8,
}

impl Stored {
    pub fn frame(&self, id: &MessageId) -> DataFrame {
        DataFrame {
            id: id.clone(),
            hops: self.hops.saturating_add(1),
            signature: self.signature.clone(),
            payload: self.payload.clone(),
        }
    }
}

#[derive(Debug)]
pub struct SeenCache {
    map: HashMap<MessageId, Seen>,
    order: VecDeque<(Instant, MessageId)>,
    capacity: usize,
    max_age: Duration,
    max_bytes: usize,
    bytes: usize,
    floor: Option<u64>,
}

fn size(s: &Seen) -> usize {
    match s {
        Seen::Accepted(Some(st)) => st.payload.len() + st.signature.len(),
        _ => 0,
    }
}

impl SeenCache {
    pub fn new(capacity: usize, max_age: Duration, max_bytes: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_age,
            max_bytes,
            bytes: 0,
            floor: None,
        }
    }

    pub fn get(&self, id: &MessageId) -> Option<&Seen> {
        self.map.get(id)
    }

    pub fn contains(&self, id: &MessageId) -> bool {
        self.map.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest sequence forgotten before its age ran out.
    pub fn floor(&self) -> Option<u64> {
        self.floor
    }

    fn pop_oldest(&mut self, early: bool) {
        if let Some((_, id)) = self.order.pop_front() {
            if let Some(s) = self.map.remove(&id) {
                self.bytes -= size(&s);
            }
            if early {
                self.floor = Some(self.floor.map_or(id.seq, |f| f.max(id.seq)));
            }
        }
    }

    /// Forgets every id older than the age.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.max_age {
                break;
            }
            self.pop_oldest(false);
        }
    }

    /// Records `id` (not yet present) as `seen`, making room first. A payload
    /// larger than the whole byte budget is not kept.
    pub fn insert(&mut self, now: Instant, id: MessageId, mut seen: Seen) {
        self.expire(now);
        if size(&seen) > self.max_bytes {
            seen = Seen::Accepted(None);
        }
        let need = size(&seen);
        while self.map.len() >= self.capacity || self.bytes + need > self.max_bytes {
            if self.order.is_empty() {
                break;
            }
            self.pop_oldest(true);
        }
        self.bytes += need;
        self.map.insert(id.clone(), seen);
        self.order.push_back((now, id));
    }
}

#[cfg(test)]
mod tests {
    use shoal_crypto::PublicKey;

    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId {
            origin: PublicKey::from_bytes_unchecked(vec![1]),
            seq,
        }
    }

    fn stored(n: usize) -> Seen {
        Seen::Accepted(Some(Stored {
            signature: Bytes::from_static(&[0; 4]),
            payload: Bytes::from(vec![0; n]),
            hops: 0,
        }))
    }

    #[test]
    fn bounded_by_count_age_and_bytes() {
        let t0 = Instant::now();
        let mut c = SeenCache::new(3, Duration::from_secs(10), 100);
        for s in 0..5 {
            c.insert(t0, id(s), Seen::Rejected);
            assert!(c.len() <= 3);
        }
        assert!(!c.contains(&id(1)) && c.contains(&id(4)));
        assert_eq!(c.floor(), Some(1), "forgot 0 and 1 early");
        c.expire(t0 + Duration::from_secs(10));
        assert_eq!(c.len(), 0);
        assert_eq!(c.floor(), Some(1), "age expiry does not raise the floor");
        let t1 = t0 + Duration::from_secs(11);
        c.insert(t1, id(10), stored(40));
        c.insert(t1, id(11), stored(40));
        assert_eq!(c.bytes(), 88);
        c.insert(t1, id(12), stored(40));
        assert!(c.bytes() <= 100);
        assert!(!c.contains(&id(10)));
        c.insert(t1, id(13), stored(1000));
        assert!(
            matches!(c.get(&id(13)), Some(Seen::Accepted(None))),
            "too big to keep"
        );
    }
}
