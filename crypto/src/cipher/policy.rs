//! Which implementation seals and opens a frame: `ring` for every frame, or
//! OpenSSL's EVP ChaCha20-Poly1305 for large frames where the CPU makes it
//! faster.
//!
//! # Design
//!
//! Both implementations compute the same function (ChaCha20-Poly1305,
//! RFC 8439, with the record cipher's nonce and no associated data), so the
//! choice is made per frame, on each side independently, and is invisible
//! on the wire: a peer sealing with one opens what a peer sealing with the
//! other sent. `ring` is the reference and is faster for small frames; its
//! per-record setup is cheaper. OpenSSL's AVX-512 code is faster in bulk
//! (on an AVX-512 Xeon, one record: 1.41–1.48× ring at 16 KiB, 1.61–1.63× at
//! 64 KiB, but 0.27× at 64 B and 0.71× at 1 KiB; issue 24's table).
//!
//! A [`CipherPolicy`] is [`CipherBackend::Ring`] (ring for everything) or
//! [`CipherBackend::Auto`] with a threshold: frame bodies (tag included) of
//! at least the threshold go to OpenSSL, smaller ones to ring, and only on
//! CPUs with AVX-512F and AVX-512VL ([`fast_evp_cpu`]); everywhere else
//! `Auto` is ring for everything. AVX2-only parts stay on ring: OpenSSL's
//! advantage has been measured on AVX-512 only.
//!
//! [`DEFAULT_EVP_THRESHOLD`] is where a record sealed and opened costs less
//! through OpenSSL on a 2-core AVX-512 Xeon (`cargo bench --bench crypto`,
//! table in `benches/README.md`; OpenSSL against ring through the record
//! types, seal: 0.26× at 64 B, 0.66× at 1 KiB, 1.16× at 4 KiB, 1.36× at
//! 8 KiB, 1.67× at 64 KiB; open: 0.20×, 0.52×, 0.97×, 1.20×, 1.45×); the
//! node config (`io.cipher_threshold`) can move it, within
//! [`EVP_THRESHOLD_RANGE`].
//!
//! Not provided: a choice of algorithm (the wire format fixes it), or a
//! third implementation.

use std::ops::RangeInclusive;

/// Frame bodies (tag included) of at least this many bytes go to OpenSSL
/// under [`CipherBackend::Auto`] on a CPU where it is faster.
pub const DEFAULT_EVP_THRESHOLD: usize = 4 * 1024;

/// The thresholds a node config may set: below 256 B OpenSSL's per-record
/// setup dominates everywhere, and no frame body exceeds 16 MiB (the
/// engine's `limits.max_frame_body` ceiling).
pub const EVP_THRESHOLD_RANGE: RangeInclusive<usize> = 256..=16 * 1024 * 1024;

/// Which implementations a [`CipherPolicy`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CipherBackend {
    /// `ring` below the threshold, OpenSSL from it, where the CPU has the
    /// instructions that make OpenSSL faster; `ring` everywhere else.
    #[default]
    Auto,
    /// `ring` for every frame (the reference; for A/B runs).
    Ring,
}

impl CipherBackend {
    /// The name used in config files and bench output: `auto` or `ring`.
    pub fn label(self) -> &'static str {
        match self {
            CipherBackend::Auto => "auto",
            CipherBackend::Ring => "ring",
        }
    }
}

/// How every [`RecordSealer`](super::RecordSealer) and
/// [`RecordOpener`](super::RecordOpener) of a node picks the implementation
/// of each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherPolicy {
    backend: CipherBackend,
    threshold: usize,
    /// False only for the tests that exercise OpenSSL on any CPU.
    require_cpu: bool,
}

impl Default for CipherPolicy {
    /// [`CipherPolicy::auto`] at [`DEFAULT_EVP_THRESHOLD`].
    fn default() -> Self {
        Self::auto(DEFAULT_EVP_THRESHOLD)
    }
}

impl CipherPolicy {
    /// `ring` for every frame.
    pub const fn ring() -> Self {
        Self {
            backend: CipherBackend::Ring,
            threshold: usize::MAX,
            require_cpu: true,
        }
    }

    /// OpenSSL for frame bodies of at least `threshold` bytes (tag
    /// included) where the CPU makes it faster, `ring` otherwise. Any
    /// `threshold` works; a node config bounds it to
    /// [`EVP_THRESHOLD_RANGE`].
    pub const fn auto(threshold: usize) -> Self {
        Self {
            backend: CipherBackend::Auto,
            threshold,
            require_cpu: true,
        }
    }

    /// `backend` at `threshold` (ignored for [`CipherBackend::Ring`]).
    pub const fn new(backend: CipherBackend, threshold: usize) -> Self {
        match backend {
            CipherBackend::Auto => Self::auto(threshold),
            CipherBackend::Ring => Self::ring(),
        }
    }

    /// OpenSSL from `threshold` on whatever the CPU. Tests only: it is how
    /// the OpenSSL path is tested on machines where `auto` would not use it.
    #[doc(hidden)]
    pub const fn evp_for_test(threshold: usize) -> Self {
        Self {
            backend: CipherBackend::Auto,
            threshold,
            require_cpu: false,
        }
    }

    /// The configured backend.
    pub fn backend(&self) -> CipherBackend {
        self.backend
    }

    /// The configured threshold (meaningful under [`CipherBackend::Auto`]).
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// On this machine: `Some(t)` if frame bodies of at least `t` bytes go
    /// to OpenSSL, `None` if `ring` seals and opens everything.
    pub fn evp_threshold(&self) -> Option<usize> {
        let cpu = !self.require_cpu || fast_evp_cpu();
        (self.backend == CipherBackend::Auto && cpu).then_some(self.threshold)
    }

    /// What runs on this machine, for logs and bench output: `ring`, or
    /// `ring < 4096 B <= openssl`.
    pub fn label(&self) -> String {
        match self.evp_threshold() {
            Some(t) => format!("ring < {t} B <= openssl"),
            None => "ring".to_string(),
        }
    }
}

/// Whether this CPU has what makes OpenSSL's ChaCha20-Poly1305 faster than
/// `ring`'s for large records: AVX-512F and AVX-512VL (x86-64 only; checked
/// at run time, cached by `std`).
pub fn fast_evp_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_never_uses_openssl() {
        assert_eq!(CipherPolicy::ring().evp_threshold(), None);
        assert_eq!(CipherPolicy::ring().label(), "ring");
        assert_eq!(
            CipherPolicy::new(CipherBackend::Ring, 0),
            CipherPolicy::ring()
        );
    }

    #[test]
    fn auto_follows_the_cpu() {
        let p = CipherPolicy::auto(4096);
        assert_eq!(p.evp_threshold(), fast_evp_cpu().then_some(4096));
        assert_eq!(CipherPolicy::evp_for_test(4096).evp_threshold(), Some(4096));
        assert_eq!(
            CipherPolicy::evp_for_test(4096).label(),
            "ring < 4096 B <= openssl"
        );
        assert!(EVP_THRESHOLD_RANGE.contains(&DEFAULT_EVP_THRESHOLD));
    }
}
