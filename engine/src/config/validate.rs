//! The range of every numeric [`Config`] field, checked by
//! [`Config::validate`] before anything is allocated or spawned.
//!
//! # Design
//!
//! Each bound exists for one of two reasons: a value outside it is
//! meaningless (a zero-length queue, a ping slower than the idle timeout),
//! or it would let the config preallocate or hold more memory than a node
//! should ever need. The preallocated ceiling per shard is
//! `shard_queue × 136 B + recv_buffers × recv_buffer_size + uring_entries ×
//! 96 B` (at most 34 MiB + 256 MiB + 3 MiB), plus `control_queue × 136 B`
//! (at most 9 MiB) once per node; `docs/operating.md` gives the per-peer
//! bound these limits imply. The error names the field, the value and the
//! range, so `shoal node` can print it and exit 2.

use std::fmt::Debug;
use std::time::Duration;

use super::Config;
use crate::Error;

/// Most shards a node may run, whatever the machine.
pub const MAX_SHARDS: usize = 1024;
/// Shards per available core a node may run unless
/// [`Config::force_shards`] is set.
pub const SHARDS_PER_CORE: usize = 4;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const GIB: usize = 1024 * MIB;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn fail(field: &'static str, reason: String) -> Result<(), Error> {
    Err(Error::InvalidConfig { field, reason })
}

/// `value` within `lo ..= hi`, or an error naming both.
fn within<T: PartialOrd + Debug>(field: &'static str, value: T, lo: T, hi: T) -> Result<(), Error> {
    if value < lo || value > hi {
        return fail(
            field,
            format!("= {value:?} is out of range: must be within {lo:?} ..= {hi:?}"),
        );
    }
    Ok(())
}

/// Byte sizes print better in KiB / MiB than as a raw count.
fn within_bytes(field: &'static str, value: usize, lo: usize, hi: usize) -> Result<(), Error> {
    if value < lo || value > hi {
        return fail(
            field,
            format!(
                "= {value} is out of range: must be within {} ..= {} bytes",
                human(lo),
                human(hi)
            ),
        );
    }
    Ok(())
}

fn human(n: usize) -> String {
    match n {
        n if n >= GIB && n % GIB == 0 => format!("{} GiB", n / GIB),
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => n.to_string(),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Checks every field's range and the invariants between fields. The
    /// error names the offending field, its value and what it must be.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_threads()?;
        self.validate_frames()?;
        self.validate_times()?;
        self.validate_limits()?;
        self.validate_buffers()
    }

    fn validate_threads(&self) -> Result<(), Error> {
        let cap = if self.force_shards {
            MAX_SHARDS
        } else {
            MAX_SHARDS.min(SHARDS_PER_CORE * cores())
        };
        if self.shards > cap {
            let why = if self.force_shards || cap == MAX_SHARDS {
                format!("must be 0 (one per core) or 1 ..= {MAX_SHARDS}")
            } else {
                format!(
                    "must be 0 (one per core) or 1 ..= {cap} ({SHARDS_PER_CORE} per core on this \
                     machine's {} cores; set force_shards = true for up to {MAX_SHARDS})",
                    cores()
                )
            };
            return fail(
                "shards",
                format!("= {} is out of range: {why}", self.shards),
            );
        }
        within("core_offset", self.core_offset, 0, MAX_SHARDS)?;
        within("wait_spin", self.wait_spin, Duration::ZERO, ms(10))?;
        within("idle_spin", self.idle_spin, Duration::ZERO, ms(10))
    }

    fn validate_frames(&self) -> Result<(), Error> {
        within_bytes(
            "max_frame_body",
            self.max_frame_body,
            super::MIN_FRAME_BODY,
            16 * MIB,
        )?;
        within_bytes("max_message_size", self.max_message_size, 1, GIB)?;
        within_bytes(
            "max_write_batch",
            self.max_write_batch,
            self.max_frame_body + 4,
            64 * MIB,
        )?;
        within_bytes(
            "max_in_progress_bytes",
            self.max_in_progress_bytes,
            KIB,
            4 * GIB,
        )?;
        within(
            "max_in_progress_messages",
            self.max_in_progress_messages,
            1,
            4096,
        )
    }

    fn validate_times(&self) -> Result<(), Error> {
        within(
            "handshake_max_age",
            self.handshake_max_age,
            secs(1),
            secs(3600),
        )?;
        within(
            "synchrony_bound",
            self.synchrony_bound,
            Duration::ZERO,
            secs(3600),
        )?;
        within(
            "handshake_timeout",
            self.handshake_timeout,
            ms(100),
            secs(300),
        )?;
        within("ping_interval", self.ping_interval, ms(100), secs(3600))?;
        within("idle_timeout", self.idle_timeout, ms(200), secs(86_400))?;
        if self.idle_timeout <= self.ping_interval {
            return fail(
                "idle_timeout",
                format!(
                    "= {:?} must be longer than ping_interval ({:?})",
                    self.idle_timeout, self.ping_interval
                ),
            );
        }
        within("write_timeout", self.write_timeout, ms(100), secs(600))?;
        within("gossip_interval", self.gossip_interval, ms(10), secs(3600))?;
        within("dial_frequency", self.dial_frequency, ms(10), secs(3600))?;
        within("dial_backoff_min", self.dial_backoff_min, ms(1), secs(3600))?;
        within(
            "dial_backoff_max",
            self.dial_backoff_max,
            self.dial_backoff_min,
            secs(86_400),
        )?;
        within(
            "misbehavior_cooldown",
            self.misbehavior_cooldown,
            Duration::ZERO,
            secs(86_400),
        )
    }

    fn validate_limits(&self) -> Result<(), Error> {
        within("tracked_peer_sets", self.tracked_peer_sets, 1, 1024)?;
        within("peer_gossip_max", self.peer_gossip_max, 1, 4096)?;
        within(
            "dial_quick_attempts",
            self.dial_quick_attempts,
            1,
            1_000_000,
        )?;
        within("max_inbound", self.max_inbound, 0, 1 << 20)?;
        within("max_inbound_per_ip", self.max_inbound_per_ip, 0, 1 << 20)?;
        within("max_outbound", self.max_outbound, 0, 1 << 20)?;
        within("accept_rate_per_ip", self.accept_rate_per_ip, 0, 1_000_000)?;
        if self.accept_rate_per_ip > 0 {
            within(
                "accept_burst_per_ip",
                self.accept_burst_per_ip,
                1,
                1_000_000,
            )?;
        } else {
            within(
                "accept_burst_per_ip",
                self.accept_burst_per_ip,
                0,
                1_000_000,
            )?;
        }
        within("peer_send_backlog", self.peer_send_backlog, 1, 1_000_000)?;
        within_bytes("peer_send_bytes", self.peer_send_bytes, 64 * KIB, GIB)?;
        within(
            "max_pending_requests",
            self.max_pending_requests,
            1,
            1 << 20,
        )?;
        // Preallocated: a slot is ~136 bytes.
        within("shard_queue", self.shard_queue, 1, 1 << 18)?;
        within("control_queue", self.control_queue, 1, 1 << 16)
    }

    fn validate_buffers(&self) -> Result<(), Error> {
        if !self.uring_entries.is_power_of_two() || !(8..=32768).contains(&self.uring_entries) {
            return fail(
                "uring_entries",
                format!(
                    "= {} must be a power of two within 8 ..= 32768",
                    self.uring_entries
                ),
            );
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return fail(
                "recv_buffers",
                format!(
                    "= {} must be a power of two within 1 ..= 32768",
                    self.recv_buffers
                ),
            );
        }
        within_bytes("recv_buffer_size", self.recv_buffer_size, 4 * KIB, 16 * MIB)?;
        let pool = usize::from(self.recv_buffers) * self.recv_buffer_size;
        if pool > 256 * MIB {
            return fail(
                "recv_buffers",
                format!(
                    "× recv_buffer_size = {} is out of range: a shard's receive pool must be \
                     at most 256 MiB",
                    human(pool)
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: &Config) -> Option<&'static str> {
        match c.validate() {
            Err(Error::InvalidConfig { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn the_presets_are_within_range() {
        for c in [
            Config::recommended(None),
            Config::aggressive(None),
            Config::local(None),
        ] {
            c.validate().unwrap();
        }
    }

    /// Each bound refuses the first value past it and names its field (the
    /// engine-wide list lives in `docs/operating.md`).
    #[test]
    fn every_bound_names_its_field() {
        type Set = fn(&mut Config);
        let cases: &[(&str, Set)] = &[
            ("shards", |c| c.shards = MAX_SHARDS + 1),
            ("core_offset", |c| c.core_offset = MAX_SHARDS + 1),
            ("wait_spin", |c| c.wait_spin = ms(11)),
            ("idle_spin", |c| c.idle_spin = ms(11)),
            ("max_frame_body", |c| c.max_frame_body = 16 * MIB + 1),
            ("max_message_size", |c| c.max_message_size = 0),
            ("max_message_size", |c| c.max_message_size = GIB + 1),
            ("max_write_batch", |c| c.max_write_batch = 64 * MIB + 1),
            ("max_in_progress_bytes", |c| c.max_in_progress_bytes = 1),
            ("max_in_progress_messages", |c| {
                c.max_in_progress_messages = 0
            }),
            ("handshake_max_age", |c| c.handshake_max_age = secs(3601)),
            ("synchrony_bound", |c| c.synchrony_bound = secs(3601)),
            ("handshake_timeout", |c| c.handshake_timeout = ms(99)),
            ("ping_interval", |c| c.ping_interval = ms(99)),
            ("idle_timeout", |c| c.idle_timeout = secs(86_401)),
            ("idle_timeout", |c| c.idle_timeout = c.ping_interval),
            ("write_timeout", |c| c.write_timeout = ms(99)),
            ("write_timeout", |c| c.write_timeout = secs(601)),
            ("gossip_interval", |c| c.gossip_interval = ms(9)),
            ("dial_frequency", |c| c.dial_frequency = ms(9)),
            ("dial_backoff_min", |c| c.dial_backoff_min = Duration::ZERO),
            ("dial_backoff_max", |c| c.dial_backoff_max = ms(1)),
            ("misbehavior_cooldown", |c| {
                c.misbehavior_cooldown = secs(86_401)
            }),
            ("tracked_peer_sets", |c| c.tracked_peer_sets = 0),
            ("peer_gossip_max", |c| c.peer_gossip_max = 4097),
            ("dial_quick_attempts", |c| c.dial_quick_attempts = 0),
            ("max_inbound", |c| c.max_inbound = (1 << 20) + 1),
            ("max_inbound_per_ip", |c| {
                c.max_inbound_per_ip = (1 << 20) + 1
            }),
            ("max_outbound", |c| c.max_outbound = (1 << 20) + 1),
            ("accept_rate_per_ip", |c| c.accept_rate_per_ip = 1_000_001),
            ("accept_burst_per_ip", |c| c.accept_burst_per_ip = 0),
            ("peer_send_backlog", |c| c.peer_send_backlog = 0),
            ("peer_send_bytes", |c| c.peer_send_bytes = 64 * KIB - 1),
            ("peer_send_bytes", |c| c.peer_send_bytes = GIB + 1),
            ("max_pending_requests", |c| c.max_pending_requests = 0),
            ("shard_queue", |c| c.shard_queue = 1_000_000_000_000),
            ("shard_queue", |c| c.shard_queue = 0),
            ("control_queue", |c| c.control_queue = 1_000_000_000_000),
            ("uring_entries", |c| c.uring_entries = 3),
            ("recv_buffers", |c| c.recv_buffers = 3),
            ("recv_buffer_size", |c| c.recv_buffer_size = 4095),
            ("recv_buffers", |c| {
                c.recv_buffers = 8192;
                c.recv_buffer_size = MIB;
            }),
        ];
        let doc = include_str!("../../../docs/operating.md");
        let ranges = doc
            .split("### Ranges")
            .nth(1)
            .and_then(|d| d.split("\n## ").next())
            .expect("docs/operating.md has a Ranges section");
        for (field, set) in cases {
            let mut c = Config::recommended(None);
            set(&mut c);
            assert_eq!(field_of(&c), Some(*field), "{field}");
            assert!(
                ranges.contains(&format!("`{field}`")),
                "{field} is missing from docs/operating.md's Ranges table"
            );
        }
    }

    #[test]
    fn shards_beyond_four_per_core_need_forcing() {
        let mut c = Config::recommended(None);
        c.shards = SHARDS_PER_CORE * cores() + 1;
        if c.shards <= MAX_SHARDS {
            assert_eq!(field_of(&c), Some("shards"));
            c.force_shards = true;
            c.validate().unwrap();
        }
        c.shards = 100_000;
        assert_eq!(field_of(&c), Some("shards"), "never past {MAX_SHARDS}");
    }

    #[test]
    fn the_message_names_value_and_range() {
        let mut c = Config::recommended(None);
        c.shard_queue = 1_000_000_000_000;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("shard_queue"), "{msg}");
        assert!(msg.contains("1000000000000"), "{msg}");
        assert!(msg.contains("1 ..= 262144"), "{msg}");
    }
}
