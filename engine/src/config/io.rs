//! The `io` section (with `io.uring`): the data shards, their driver, and
//! how they wait.
//!
//! # Design
//!
//! Every field here shapes threads, preallocated memory or which code
//! computes the record cipher, never what a peer may do: changing one
//! changes speed, not behaviour on the wire.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::preset::{Preset, Section};

/// Which I/O driver the data shards use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// io_uring where the kernel runs every operation the driver uses
    /// (probed at start), otherwise epoll: a warning names the probe step
    /// that failed, as does the `fallback` label of `shoal_backend`.
    #[default]
    Auto,
    /// io_uring only; starting fails if the probe fails.
    IoUring,
    /// epoll (mio) readiness I/O.
    Epoll,
}

impl Backend {
    /// The name used in config files and metrics: `auto`, `io_uring`, `epoll`.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Which implementation of ChaCha20-Poly1305 seals and opens frames (the
/// bytes on the wire are the same either way; see `shoal_crypto::cipher`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordCipher {
    /// `ring` for frame bodies below [`IoSettings::cipher_threshold`],
    /// OpenSSL's EVP from it, on CPUs with AVX-512 (where OpenSSL is faster
    /// in bulk); `ring` for everything elsewhere.
    #[default]
    Auto,
    /// `ring` for every frame (the reference; for A/B runs).
    Ring,
}

impl RecordCipher {
    /// The name used in config files: `auto` or `ring`.
    pub fn label(self) -> &'static str {
        match self {
            RecordCipher::Auto => "auto",
            RecordCipher::Ring => "ring",
        }
    }
}

/// `[io]`: data shards (threads), their I/O driver and how they sleep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct IoSettings {
    /// I/O driver: `auto`, `io_uring` or `epoll`. Default `auto`.
    pub backend: Backend,
    /// Number of data shards (threads). 0 = one per available core;
    /// otherwise 1 to 4 per available core (1024 at most). Default 0;
    /// `local` 1.
    pub shards: usize,
    /// Accept up to 1024 [`IoSettings::shards`] whatever the machine's cores
    /// (tests of many-shard layouts on small machines). Default false.
    pub force_shards: bool,
    /// Pin shard `i` to core `(core_offset + i) % cores`. Default false.
    pub pin_cores: bool,
    /// First core used when pinning (lets several nodes in one process, or
    /// several processes, take different cores). Default 0.
    pub core_offset: usize,
    /// Shards spin instead of sleeping in the kernel (dedicated cores only:
    /// it burns a full core per shard but removes wake-up latency).
    /// Default false.
    pub busy_poll: bool,
    /// How long an application thread blocked in a receive, request or ping
    /// ([`crate::Receiver::recv_blocking`], [`crate::Receiver::recv_timeout`],
    /// [`crate::Wait::blocking`] of [`crate::Sender::request`])
    /// keeps looking for its result, yielding its core between looks, before
    /// it parks. A parked receiver costs a futex wake on the shard and a
    /// context switch per wake-up (on a VM also an idle vCPU's wake-up): at
    /// one response or one 64 KiB message at a time that is most of the
    /// latency. Spinning costs that thread's CPU only while it would
    /// otherwise sleep, and it yields to runnable threads. 0 parks at once.
    /// Async receivers never spin (they must not block their executor), and
    /// with [`IoSettings::busy_poll`] nobody does: a waiter yielding to a
    /// shard that never yields loses its core for a whole scheduler slice.
    /// Default 100 µs (measured in `engine/src/wait.rs`).
    #[serde(with = "super::duration")]
    pub wait_spin: Duration,
    /// After a loop turn that did work (completions, readiness, commands), a
    /// shard keeps polling, yielding its core between polls, this long
    /// before it sleeps in the kernel. The response to a request it just
    /// sent, or the application's next command, then costs no wake-up
    /// (a futex or eventfd wake plus, on a VM, an idle vCPU's wake-up).
    /// Costs CPU only right after activity, and it yields to runnable
    /// threads; 0 sleeps at once. [`IoSettings::busy_poll`] is this forever
    /// without yielding. Default 0: it pays only with spare cores. On the
    /// 2-core bench machine 200 µs (`shoal bench --backend io-uring
    /// --rounds 3 --idle-spin-us 0|200`, two interleaved runs) gave 64 KiB
    /// throughput +7/+8 %, request p50 8→12 and 21→12 µs, but rpc x32
    /// −14/−16 % and fan-out −6/−9 %: four spinning shards and three
    /// receivers compete for two cores.
    #[serde(with = "super::duration")]
    pub idle_spin: Duration,
    /// Commands (sends, dials, closes) queued to one shard. Default 65536.
    pub shard_queue: usize,
    /// Size of one receive buffer, bytes: the io_uring pool's buffers and
    /// the epoll read size. Default 64 KiB.
    pub recv_buffer_size: usize,
    /// Record cipher implementation: `auto` or `ring`. Default `auto`.
    pub cipher: RecordCipher,
    /// Under `cipher = "auto"` on an AVX-512 CPU, frame bodies (tag
    /// included) of at least this many bytes are sealed and opened by
    /// OpenSSL, smaller ones by `ring`. 256 B ..= 16 MiB. Default 4 KiB,
    /// where a frame sealed and opened costs less through OpenSSL on a
    /// 2-core AVX-512 Xeon (`cargo bench --bench crypto`, benches/README.md:
    /// seal 0.66× ring at 1 KiB, 1.16× at 4 KiB, 1.67× at 64 KiB; open
    /// 0.52×, 0.97×, 1.45×).
    pub cipher_threshold: usize,
    /// io_uring settings.
    pub uring: UringSettings,
}

impl IoSettings {
    /// The record cipher policy these settings give every connection.
    pub fn cipher_policy(&self) -> shoal_crypto::CipherPolicy {
        match self.cipher {
            RecordCipher::Auto => shoal_crypto::CipherPolicy::auto(self.cipher_threshold),
            RecordCipher::Ring => shoal_crypto::CipherPolicy::ring(),
        }
    }
}

impl Section for IoSettings {
    fn preset(preset: Preset) -> Self {
        Self {
            backend: Backend::Auto,
            shards: match preset {
                Preset::Recommended | Preset::Aggressive => 0,
                Preset::Local => 1,
            },
            force_shards: false,
            pin_cores: false,
            core_offset: 0,
            busy_poll: false,
            wait_spin: Duration::from_micros(100),
            idle_spin: Duration::ZERO,
            shard_queue: 65536,
            recv_buffer_size: 64 * 1024,
            cipher: RecordCipher::Auto,
            cipher_threshold: shoal_crypto::cipher::policy::DEFAULT_EVP_THRESHOLD,
            uring: UringSettings::preset(preset),
        }
    }
}

/// `[io.uring]`: what only the io_uring driver uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct UringSettings {
    /// Shards with nothing in flight but receives (no send, no connect, no
    /// socket closing) sleep in an epoll set over their sockets (a
    /// doorbell) instead of in the ring, so the kernel wakes them the way
    /// it wakes a thread blocked on a socket: on the sender's core when the
    /// sender is about to sleep. Each wake-up then costs one extra syscall.
    /// Off: every sleep is in `io_uring_enter`, whose wake-ups place the
    /// shard on an idle core. Not used under [`IoSettings::busy_poll`] or on
    /// kernels without `DEFER_TASKRUN`. Default true; see
    /// `engine/src/driver/doorbell.rs` for the measurements.
    pub doorbell: bool,
    /// Submission queue entries per shard (power of two, 8 to 32768); the
    /// completion queue gets twice as many. A full submission queue is
    /// handed to the kernel early, and completions past a full completion
    /// queue wait in the kernel's overflow list (metric
    /// `uring_cq_overflows`) and end multishot receives, which the shard
    /// re-arms: correct either way, only slower. Default 4096.
    pub entries: u32,
    /// Receive buffers in each shard's provided-buffer ring (power of two).
    /// The ring hands buffers out in order, so a shard cycles through all of
    /// them and each receive lands in the least recently used one: the pool
    /// is the receive path's cache working set. A buffer goes back as soon
    /// as its completion is processed, so only the completions of one loop
    /// turn hold buffers (an exhausted ring retries after they return).
    /// 64 × 64 KiB = 4 MiB; 256 (16 MiB) was 15–25 % slower on fan-out to
    /// 16 peers (`shoal bench --scenario fanout --peers 16 --messages
    /// 3000`: 1213/1222 vs 1487/1381 MiB/s, 32 buffers 1434/1361) and no
    /// faster elsewhere. Default 64.
    pub recv_buffers: u16,
}

impl Section for UringSettings {
    fn preset(_: Preset) -> Self {
        Self {
            doorbell: true,
            entries: 4096,
            recv_buffers: 64,
        }
    }
}
