//! The range of every numeric [`Config`] field, checked by
//! [`Config::validate`] before anything is allocated or spawned.
//!
//! # Design
//!
//! Each bound exists for one of two reasons: a value outside it is
//! meaningless (a zero-length queue, a ping slower than the idle timeout),
//! or it would let the config preallocate or hold more memory than a node
//! should ever need. The preallocated ceiling per shard is
//! `io.shard_queue × 136 B + io.uring.recv_buffers × io.recv_buffer_size +
//! io.uring.entries × 96 B` (at most 34 MiB + 256 MiB + 3 MiB), plus
//! `discovery.control_queue × 136 B` (at most 9 MiB) once per node;
//! `docs/operating.md` gives the per-peer bound these limits imply. The
//! error names the field by its dotted path, the value and the range, so
//! `shoal node` can print it and exit 2.

use std::fmt::Debug;
use std::time::Duration;

use super::Config;
use crate::Error;

/// Most shards a node may run, whatever the machine.
pub const MAX_SHARDS: usize = 1024;
/// Shards per available core a node may run unless
/// [`super::IoSettings::force_shards`] is set.
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
pub(crate) fn within<T: PartialOrd + Debug>(
    field: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), Error> {
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
    /// error names the offending field by its dotted path, its value and
    /// what it must be.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_threads()?;
        self.validate_frames()?;
        self.validate_times()?;
        self.validate_limits()?;
        self.validate_buffers()?;
        self.validate_streams()
    }

    fn validate_streams(&self) -> Result<(), Error> {
        self.streams.wire().validate().map_err(|e| {
            let field = match e.field {
                "stream_window" => "streams.window",
                "connection_window" => "streams.connection_window",
                "max_streams" => "streams.max_streams",
                "max_record_payload" => "streams.record_payload",
                _ => "streams.send_buffer",
            };
            Error::InvalidConfig {
                field,
                reason: format!(
                    "= {} is out of range: must be within {} ..= {}",
                    e.value, e.lo, e.hi
                ),
            }
        })
    }

    fn validate_threads(&self) -> Result<(), Error> {
        let io = &self.io;
        let cap = if io.force_shards {
            MAX_SHARDS
        } else {
            MAX_SHARDS.min(SHARDS_PER_CORE * cores())
        };
        if io.shards > cap {
            let why = if io.force_shards || cap == MAX_SHARDS {
                format!("must be 0 (one per core) or 1 ..= {MAX_SHARDS}")
            } else {
                format!(
                    "must be 0 (one per core) or 1 ..= {cap} ({SHARDS_PER_CORE} per core on this \
                     machine's {} cores; set io.force_shards = true for up to {MAX_SHARDS})",
                    cores()
                )
            };
            return fail(
                "io.shards",
                format!("= {} is out of range: {why}", io.shards),
            );
        }
        within("io.core_offset", io.core_offset, 0, MAX_SHARDS)?;
        within("io.wait_spin", io.wait_spin, Duration::ZERO, ms(10))?;
        within("io.idle_spin", io.idle_spin, Duration::ZERO, ms(10))
    }

    fn validate_frames(&self) -> Result<(), Error> {
        let l = &self.limits;
        within_bytes(
            "limits.max_frame_body",
            l.max_frame_body,
            super::MIN_FRAME_BODY,
            16 * MIB,
        )?;
        within_bytes("limits.max_message_size", l.max_message_size, 1, GIB)?;
        within_bytes(
            "limits.max_write_batch",
            l.max_write_batch,
            l.max_frame_body + 4,
            64 * MIB,
        )?;
        within_bytes(
            "limits.max_in_progress_bytes",
            l.max_in_progress_bytes,
            KIB,
            4 * GIB,
        )?;
        within(
            "limits.max_in_progress_messages",
            l.max_in_progress_messages,
            1,
            4096,
        )
    }

    fn validate_times(&self) -> Result<(), Error> {
        let t = &self.timeouts;
        within(
            "timeouts.handshake_max_age",
            t.handshake_max_age,
            secs(1),
            secs(3600),
        )?;
        within(
            "timeouts.synchrony_bound",
            t.synchrony_bound,
            Duration::ZERO,
            secs(3600),
        )?;
        within(
            "timeouts.handshake_timeout",
            t.handshake_timeout,
            ms(100),
            secs(300),
        )?;
        within(
            "timeouts.ping_interval",
            t.ping_interval,
            ms(100),
            secs(3600),
        )?;
        within(
            "timeouts.idle_timeout",
            t.idle_timeout,
            ms(200),
            secs(86_400),
        )?;
        if t.idle_timeout <= t.ping_interval {
            return fail(
                "timeouts.idle_timeout",
                format!(
                    "= {:?} must be longer than timeouts.ping_interval ({:?})",
                    t.idle_timeout, t.ping_interval
                ),
            );
        }
        within(
            "timeouts.write_timeout",
            t.write_timeout,
            ms(100),
            secs(600),
        )?;
        let d = &self.discovery;
        within(
            "discovery.gossip_interval",
            d.gossip_interval,
            ms(10),
            secs(3600),
        )?;
        within(
            "discovery.dial_frequency",
            d.dial_frequency,
            ms(10),
            secs(3600),
        )?;
        within(
            "discovery.dial_backoff_min",
            d.dial_backoff_min,
            ms(1),
            secs(3600),
        )?;
        within(
            "discovery.dial_backoff_max",
            d.dial_backoff_max,
            d.dial_backoff_min,
            secs(86_400),
        )?;
        within(
            "admission.misbehavior_cooldown",
            self.admission.misbehavior_cooldown,
            Duration::ZERO,
            secs(86_400),
        )
    }

    fn validate_limits(&self) -> Result<(), Error> {
        let d = &self.discovery;
        within("discovery.tracked_peer_sets", d.tracked_peer_sets, 1, 1024)?;
        within("discovery.peer_gossip_max", d.peer_gossip_max, 1, 4096)?;
        within(
            "discovery.dial_quick_attempts",
            d.dial_quick_attempts,
            1,
            1_000_000,
        )?;
        let (l, a) = (&self.limits, &self.admission);
        within("limits.max_inbound", l.max_inbound, 0, 1 << 20)?;
        within(
            "admission.max_inbound_per_ip",
            a.max_inbound_per_ip,
            0,
            1 << 20,
        )?;
        within("limits.max_outbound", l.max_outbound, 0, 1 << 20)?;
        within(
            "admission.accept_rate_per_ip",
            a.accept_rate_per_ip,
            0,
            1_000_000,
        )?;
        // A rate needs a burst of at least one; with no rate it is unused.
        let burst_min = u32::from(a.accept_rate_per_ip > 0);
        within(
            "admission.accept_burst_per_ip",
            a.accept_burst_per_ip,
            burst_min,
            1_000_000,
        )?;
        within(
            "limits.peer_send_backlog",
            l.peer_send_backlog,
            1,
            1_000_000,
        )?;
        within_bytes("limits.peer_send_bytes", l.peer_send_bytes, 64 * KIB, GIB)?;
        within(
            "limits.max_pending_requests",
            l.max_pending_requests,
            1,
            1 << 20,
        )?;
        // Preallocated: a slot is ~136 bytes.
        within("io.shard_queue", self.io.shard_queue, 1, 1 << 18)?;
        within("discovery.control_queue", d.control_queue, 1, 1 << 16)
    }

    fn validate_buffers(&self) -> Result<(), Error> {
        let (io, uring) = (&self.io, &self.io.uring);
        if !uring.entries.is_power_of_two() || !(8..=32768).contains(&uring.entries) {
            return fail(
                "io.uring.entries",
                format!(
                    "= {} must be a power of two within 8 ..= 32768",
                    uring.entries
                ),
            );
        }
        if !uring.recv_buffers.is_power_of_two() || uring.recv_buffers > 32768 {
            return fail(
                "io.uring.recv_buffers",
                format!(
                    "= {} must be a power of two within 1 ..= 32768",
                    uring.recv_buffers
                ),
            );
        }
        within_bytes(
            "io.recv_buffer_size",
            io.recv_buffer_size,
            4 * KIB,
            16 * MIB,
        )?;
        let range = shoal_crypto::cipher::policy::EVP_THRESHOLD_RANGE;
        within_bytes(
            "io.cipher_threshold",
            io.cipher_threshold,
            *range.start(),
            *range.end(),
        )?;
        let pool = usize::from(uring.recv_buffers) * io.recv_buffer_size;
        if pool > 256 * MIB {
            return fail(
                "io.uring.recv_buffers",
                format!(
                    "× io.recv_buffer_size = {} is out of range: a shard's receive pool must be \
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
            ("io.shards", |c| c.io.shards = MAX_SHARDS + 1),
            ("io.core_offset", |c| c.io.core_offset = MAX_SHARDS + 1),
            ("io.wait_spin", |c| c.io.wait_spin = ms(11)),
            ("io.idle_spin", |c| c.io.idle_spin = ms(11)),
            ("limits.max_frame_body", |c| {
                c.limits.max_frame_body = 16 * MIB + 1
            }),
            ("limits.max_message_size", |c| c.limits.max_message_size = 0),
            ("limits.max_message_size", |c| {
                c.limits.max_message_size = GIB + 1
            }),
            ("limits.max_write_batch", |c| {
                c.limits.max_write_batch = 64 * MIB + 1
            }),
            ("limits.max_in_progress_bytes", |c| {
                c.limits.max_in_progress_bytes = 1
            }),
            ("limits.max_in_progress_messages", |c| {
                c.limits.max_in_progress_messages = 0
            }),
            ("timeouts.handshake_max_age", |c| {
                c.timeouts.handshake_max_age = secs(3601)
            }),
            ("timeouts.synchrony_bound", |c| {
                c.timeouts.synchrony_bound = secs(3601)
            }),
            ("timeouts.handshake_timeout", |c| {
                c.timeouts.handshake_timeout = ms(99)
            }),
            ("timeouts.ping_interval", |c| {
                c.timeouts.ping_interval = ms(99)
            }),
            ("timeouts.idle_timeout", |c| {
                c.timeouts.idle_timeout = secs(86_401)
            }),
            ("timeouts.idle_timeout", |c| {
                c.timeouts.idle_timeout = c.timeouts.ping_interval
            }),
            ("timeouts.write_timeout", |c| {
                c.timeouts.write_timeout = ms(99)
            }),
            ("timeouts.write_timeout", |c| {
                c.timeouts.write_timeout = secs(601)
            }),
            ("discovery.gossip_interval", |c| {
                c.discovery.gossip_interval = ms(9)
            }),
            ("discovery.dial_frequency", |c| {
                c.discovery.dial_frequency = ms(9)
            }),
            ("discovery.dial_backoff_min", |c| {
                c.discovery.dial_backoff_min = Duration::ZERO
            }),
            ("discovery.dial_backoff_max", |c| {
                c.discovery.dial_backoff_max = ms(1)
            }),
            ("admission.misbehavior_cooldown", |c| {
                c.admission.misbehavior_cooldown = secs(86_401)
            }),
            ("discovery.tracked_peer_sets", |c| {
                c.discovery.tracked_peer_sets = 0
            }),
            ("discovery.peer_gossip_max", |c| {
                c.discovery.peer_gossip_max = 4097
            }),
            ("discovery.dial_quick_attempts", |c| {
                c.discovery.dial_quick_attempts = 0
            }),
            ("limits.max_inbound", |c| {
                c.limits.max_inbound = (1 << 20) + 1
            }),
            ("admission.max_inbound_per_ip", |c| {
                c.admission.max_inbound_per_ip = (1 << 20) + 1
            }),
            ("limits.max_outbound", |c| {
                c.limits.max_outbound = (1 << 20) + 1
            }),
            ("admission.accept_rate_per_ip", |c| {
                c.admission.accept_rate_per_ip = 1_000_001
            }),
            ("admission.accept_burst_per_ip", |c| {
                c.admission.accept_burst_per_ip = 0
            }),
            ("limits.peer_send_backlog", |c| {
                c.limits.peer_send_backlog = 0
            }),
            ("limits.peer_send_bytes", |c| {
                c.limits.peer_send_bytes = 64 * KIB - 1
            }),
            ("limits.peer_send_bytes", |c| {
                c.limits.peer_send_bytes = GIB + 1
            }),
            ("limits.max_pending_requests", |c| {
                c.limits.max_pending_requests = 0
            }),
            ("io.shard_queue", |c| c.io.shard_queue = 1_000_000_000_000),
            ("io.shard_queue", |c| c.io.shard_queue = 0),
            ("discovery.control_queue", |c| {
                c.discovery.control_queue = 1_000_000_000_000
            }),
            ("io.uring.entries", |c| c.io.uring.entries = 3),
            ("io.uring.recv_buffers", |c| c.io.uring.recv_buffers = 3),
            ("io.recv_buffer_size", |c| c.io.recv_buffer_size = 4095),
            ("io.cipher_threshold", |c| c.io.cipher_threshold = 255),
            ("io.cipher_threshold", |c| {
                c.io.cipher_threshold = 16 * MIB + 1
            }),
            ("io.uring.recv_buffers", |c| {
                c.io.uring.recv_buffers = 8192;
                c.io.recv_buffer_size = MIB;
            }),
        ];
        let table = super::super::docs::field_table();
        for (field, set) in cases {
            let mut c = Config::recommended(None);
            set(&mut c);
            assert_eq!(field_of(&c), Some(*field), "{field}");
            let row = table.iter().find(|r| r.fields.iter().any(|f| f == field));
            assert!(
                row.is_some_and(|r| !r.range.is_empty()),
                "{field} has no range in docs/operating.md's field table"
            );
        }
    }

    #[test]
    fn shards_beyond_four_per_core_need_forcing() {
        let mut c = Config::recommended(None);
        c.io.shards = SHARDS_PER_CORE * cores() + 1;
        if c.io.shards <= MAX_SHARDS {
            assert_eq!(field_of(&c), Some("io.shards"));
            c.io.force_shards = true;
            c.validate().unwrap();
        }
        c.io.shards = 100_000;
        assert_eq!(field_of(&c), Some("io.shards"), "never past {MAX_SHARDS}");
    }

    #[test]
    fn the_message_names_value_and_range() {
        let mut c = Config::recommended(None);
        c.io.shard_queue = 1_000_000_000_000;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("io.shard_queue"), "{msg}");
        assert!(msg.contains("1000000000000"), "{msg}");
        assert!(msg.contains("1 ..= 262144"), "{msg}");
    }
}
