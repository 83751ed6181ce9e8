//! Fuzz target bodies for the handshake, shared by libFuzzer and the corpus
//! replay test.
//!
//! # Design
//!
//! [`handshake_dialer`] and [`handshake_dialee`] build one side of a
//! handshake with a fixed identity, a fixed x25519 ephemeral and a fixed
//! start time, then feed it a script carved from the fuzz input: raw frame
//! bodies, honest frames of a captured exchange (optionally mutated), and
//! timeouts, each at a time the input picks (around the deadline and the
//! timestamp window bounds, or at the extremes of `u64`).
//!
//! Because everything is deterministic, the honest exchange is fixed (see
//! [`Fixture`]) and the targets check an **oracle** beyond "no panic":
//!
//! - a peer Hello is accepted (signature verified, `authorize` called, keys
//!   derived) only if it is byte for byte the honest peer's Hello: an input
//!   without a valid signature never gets past the Hello checks;
//! - the handshake completes only if the confirmation fed is byte for byte
//!   the one an honest peer sends for this exact transcript, and the
//!   resulting session interoperates with the honest peer's session;
//! - errors are sticky: after the first error every call returns it, no
//!   frame is produced and nothing completes;
//! - a call at or after the deadline fails with `Timeout` (unless complete,
//!   for `handle_timeout`);
//! - output is bounded: at most two frames per side over its whole life,
//!   each with a correct length prefix, a Hello at most [`MAX_HELLO_LEN`]
//!   bytes that decodes to this side's canonical signed Hello, a
//!   confirmation of exactly [`CONFIRM_BODY_LEN`] bytes;
//! - `authorize` is called at most once, only with the honest peer's key.
//!
//! `fuzz/fuzz_targets/handshake_*.rs` call these under libFuzzer;
//! `crypto/tests/corpus_replay.rs` replays the committed corpus.
//!
//! # Input script
//!
//! Byte 0: bit 0 set = `authorize` refuses. Then steps until the input
//! runs out (at most [`MAX_STEPS`]), each a control byte `c` and a time
//! byte (see `Script::time`):
//!
//! | `c & 7` | step |
//! |---------|------|
//! | 0, 1    | raw frame body: length = next byte, plus `256 * (next byte & 7)` if `c & 8`; bytes follow |
//! | 2       | honest frame number `(c >> 3) & 3` (see the target functions) |
//! | 3       | the same, then `c >> 5` edits of 3 bytes: kind, position, value (overwrite, xor, truncate, insert) |
//! | 4       | `handle_timeout` |
//! | 5..7    | raw frame body of `c >> 3` bytes |
//!
//! # Security
//!
//! Test harness, not API: it panics (by design) when an invariant is
//! violated, and it uses the fixed-ephemeral constructors that destroy
//! forward secrecy. `#[doc(hidden)]`, no stability promise.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message;
use shoal_wire::message::Hello;

use crate::cipher::TAG_LEN;
use crate::handshake::{Handshake, HandshakeConfig, HandshakeError, Role, MAX_HELLO_LEN};
use crate::identity::{Ed25519Signer, Identity, PublicKey};

/// Start time of every fuzzed handshake (ms since the Unix epoch).
pub const T0: u64 = 1_700_000_000_000;
/// When the honest dialee of the [`Fixture`] answers (ms after [`T0`]).
pub const HONEST_DELAY_MS: u64 = 3;
/// Steps executed per input at most.
pub const MAX_STEPS: usize = 64;
/// A confirmation frame body: kind ‖ varint ‖ KeyConfirmation(32-byte mac) ‖ tag.
pub const CONFIRM_BODY_LEN: usize = 1 + 1 + 34 + TAG_LEN;

const NS: &[u8] = b"shoal-fuzz";
const DIALER_SEED: u64 = 1;
const DIALEE_SEED: u64 = 2;
const DIALER_EPH: [u8; 32] = [0x11; 32];
const DIALEE_EPH: [u8; 32] = [0x22; 32];
/// Handshake timeout, max age and synchrony bound of the fuzzed config.
const TIMEOUT_MS: u64 = 5_000;
const MAX_AGE_MS: u64 = 10_000;
const SYNCHRONY_MS: u64 = 5_000;

/// The honest exchange between the dialer (seed 1, ephemeral `0x11..`, at
/// [`T0`]) and the dialee (seed 2, ephemeral `0x22..`, answering at
/// `T0 + HONEST_DELAY_MS`). Frame bodies, length prefixes stripped.
pub struct Fixture {
    /// The shared handshake configuration.
    pub config: Arc<HandshakeConfig>,
    /// The dialer's identity.
    pub dialer_id: Identity,
    /// The dialee's identity.
    pub dialee_id: Identity,
    /// The dialer's first message.
    pub dialer_hello: Vec<u8>,
    /// The dialee's Hello.
    pub dialee_hello: Vec<u8>,
    /// The dialee's sealed confirmation.
    pub dialee_confirm: Vec<u8>,
    /// The dialer's sealed confirmation.
    pub dialer_confirm: Vec<u8>,
}

impl Fixture {
    /// The dialer's key.
    pub fn dialer_key(&self) -> &PublicKey {
        self.dialer_id.public_key()
    }

    /// The dialee's key.
    pub fn dialee_key(&self) -> &PublicKey {
        self.dialee_id.public_key()
    }

    /// A fresh honest dialer; its queued Hello is [`Fixture::dialer_hello`].
    pub fn honest_dialer(&self) -> Handshake {
        Handshake::dialer_with_ephemeral_for_test(
            self.dialer_id.clone(),
            self.dialee_key().clone(),
            self.config.clone(),
            T0,
            DIALER_EPH,
        )
    }

    /// A fresh honest dialee.
    pub fn honest_dialee(&self) -> Handshake {
        Handshake::dialee_with_ephemeral_for_test(
            self.dialee_id.clone(),
            self.config.clone(),
            T0,
            DIALEE_EPH,
        )
    }
}

/// The fixture, computed once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = Arc::new(HandshakeConfig {
            namespace: NS.to_vec(),
            max_age: Duration::from_millis(MAX_AGE_MS),
            synchrony_bound: Duration::from_millis(SYNCHRONY_MS),
            timeout: Duration::from_millis(TIMEOUT_MS),
            cipher: crate::CipherPolicy::default(),
        });
        let dialer_id: Identity = Arc::new(Ed25519Signer::insecure_from_seed(DIALER_SEED));
        let dialee_id: Identity = Arc::new(Ed25519Signer::insecure_from_seed(DIALEE_SEED));
        let mut f = Fixture {
            config,
            dialer_id,
            dialee_id,
            dialer_hello: Vec::new(),
            dialee_hello: Vec::new(),
            dialee_confirm: Vec::new(),
            dialer_confirm: Vec::new(),
        };
        let now = T0 + HONEST_DELAY_MS;
        let mut dialer = f.honest_dialer();
        let mut dialee = f.honest_dialee();
        f.dialer_hello = strip(&dialer.poll_transmit().expect("dialer hello"));
        dialee
            .handle_frame(&mut f.dialer_hello.clone(), now, &mut |_| true)
            .expect("honest dialee accepts the honest hello");
        f.dialee_hello = strip(&dialee.poll_transmit().expect("dialee hello"));
        f.dialee_confirm = strip(&dialee.poll_transmit().expect("dialee confirmation"));
        dialer
            .handle_frame(&mut f.dialee_hello.clone(), now, &mut |_| true)
            .expect("honest dialer accepts the honest answer");
        f.dialer_confirm = strip(&dialer.poll_transmit().expect("dialer confirmation"));
        dialer
            .handle_frame(&mut f.dialee_confirm.clone(), now, &mut |_| true)
            .expect("dialer completes");
        dialee
            .handle_frame(&mut f.dialer_confirm.clone(), now, &mut |_| true)
            .expect("dialee completes");
        assert!(dialer.is_complete() && dialee.is_complete());
        f
    })
}

/// The body of a frame produced by `poll_transmit`, after checking its
/// length prefix.
fn strip(frame: &[u8]) -> Vec<u8> {
    let (len, body) = frame.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    assert_eq!(len, body.len(), "frame length prefix");
    body.to_vec()
}

/// The fuzz input as a script.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// The time of a step, from one byte `t`:
    /// - `t < 0x80`: coarse, `T0 + (t - 64) * 200 ms` (−12.8 s … +12.6 s);
    /// - otherwise `(t >> 5) & 3` picks an anchor and `(t & 0x1f) - 16` ms
    ///   is added: the deadline, the future bound of a Hello dated at
    ///   `T0 + HONEST_DELAY_MS`, the stale bound of a Hello dated at `T0`,
    ///   or (anchor 3) `0` / `u64::MAX` by the low bit.
    fn time(&mut self) -> u64 {
        let t = self.byte().unwrap_or(64);
        if t < 0x80 {
            let ms = (i64::from(t) - 64) * 200;
            return T0.saturating_add_signed(ms);
        }
        let off = i64::from(t & 0x1f) - 16;
        let anchor = match (t >> 5) & 3 {
            0 => T0 + TIMEOUT_MS,
            1 => T0 + HONEST_DELAY_MS - SYNCHRONY_MS,
            2 => T0 + MAX_AGE_MS,
            _ => return if t & 1 == 0 { 0 } else { u64::MAX },
        };
        anchor.saturating_add_signed(off)
    }
}

/// Applies the edit list of a step-3 honest frame.
fn mutate(script: &mut Script<'_>, count: u8, body: &mut Vec<u8>) {
    for _ in 0..count {
        let (Some(kind), Some(pos), Some(val)) = (script.byte(), script.byte(), script.byte())
        else {
            return;
        };
        let pos = usize::from(pos);
        match kind % 4 {
            0 if !body.is_empty() => {
                let i = pos % body.len();
                body[i] = val;
            }
            1 if !body.is_empty() => {
                let i = pos % body.len();
                body[i] ^= val | 1;
            }
            2 => body.truncate(pos % (body.len() + 1)),
            3 => body.insert(pos % (body.len() + 1), val),
            _ => {}
        }
    }
}

/// One side under test, with everything the invariants need.
struct Harness {
    role: Role,
    hs: Handshake,
    /// What `authorize` answers.
    allow: bool,
    authorize_calls: usize,
    /// The first error seen (must stay the only one).
    error: Option<HandshakeError>,
    /// Every frame body this side produced, in order.
    sent: Vec<Vec<u8>>,
    /// The honest peer Hello this side must be fed to get past the Hello.
    peer_hello: Vec<u8>,
    /// The honest peer, once this side produced its answer (dialee target)
    /// or lazily at the end (dialer target): it checks our frames and
    /// provides the confirmation we must require.
    honest_peer: Option<Handshake>,
    /// The only confirmation body that may complete this side.
    expected_confirm: Option<Vec<u8>>,
    /// Whether this side accepted a Hello.
    accepted_hello: bool,
}

impl Harness {
    fn new(role: Role, allow: bool) -> Self {
        let f = fixture();
        let (hs, peer_hello, expected_confirm) = match role {
            Role::Dialer => (
                f.honest_dialer(),
                f.dialee_hello.clone(),
                Some(f.dialee_confirm.clone()),
            ),
            Role::Dialee => (f.honest_dialee(), f.dialer_hello.clone(), None),
        };
        assert_eq!(hs.deadline_ms(), T0 + TIMEOUT_MS);
        assert_eq!(hs.role(), role);
        let mut h = Self {
            role,
            hs,
            allow,
            authorize_calls: 0,
            error: None,
            sent: Vec::new(),
            peer_hello,
            honest_peer: None,
            expected_confirm,
            accepted_hello: false,
        };
        h.drain(T0);
        h
    }

    fn own_key(&self) -> &'static PublicKey {
        match self.role {
            Role::Dialer => fixture().dialer_key(),
            Role::Dialee => fixture().dialee_key(),
        }
    }

    fn peer_key(&self) -> &'static PublicKey {
        match self.role {
            Role::Dialer => fixture().dialee_key(),
            Role::Dialee => fixture().dialer_key(),
        }
    }

    /// Takes every queued frame and checks it (count, size, content).
    fn drain(&mut self, now: u64) {
        let f = fixture();
        while let Some(frame) = self.hs.poll_transmit() {
            assert!(self.error.is_none(), "frame produced after an error");
            let body = strip(&frame);
            let index = self.sent.len();
            match (self.role, index) {
                // Our Hello: the dialer's at construction, the dialee's
                // right after it accepted the dialer's.
                (Role::Dialer, 0) => assert_eq!(body, f.dialer_hello),
                (Role::Dialee, 0) => {
                    assert!(self.accepted_hello, "dialee answered before a hello");
                    self.check_own_hello(&body, now);
                    // An honest dialer must accept it and tells which
                    // confirmation we have to require.
                    let mut dialer = f.honest_dialer();
                    assert_eq!(
                        dialer.poll_transmit().map(|fr| strip(&fr)),
                        Some(f.dialer_hello.clone())
                    );
                    dialer
                        .handle_frame(&mut body.clone(), now, &mut |k| k == f.dialee_key())
                        .expect("an honest dialer accepts the dialee's answer");
                    let confirm = strip(&dialer.poll_transmit().expect("confirmation"));
                    self.expected_confirm = Some(confirm);
                    self.honest_peer = Some(dialer);
                }
                (Role::Dialer, 1) => {
                    assert!(self.accepted_hello, "confirmation before a hello");
                    // The transcript is fixed, so is our confirmation.
                    assert_eq!(body, f.dialer_confirm);
                }
                (Role::Dialee, 1) => assert_eq!(body.len(), CONFIRM_BODY_LEN),
                _ => panic!("{:?} produced a third frame", self.role),
            }
            self.sent.push(body);
        }
    }

    /// Our Hello decodes canonically, is addressed to the peer, signed by
    /// us, dated `now`, and within the size bound.
    fn check_own_hello(&self, body: &[u8], now: u64) {
        assert!(body.len() <= MAX_HELLO_LEN);
        let hello = Hello::decode(body).expect("own hello decodes");
        assert_eq!(hello.encode_to_vec(), body, "own hello is canonical");
        assert_eq!(hello.signer_public_key, self.own_key().as_bytes());
        assert_eq!(hello.recipient_public_key, self.peer_key().as_bytes());
        assert_eq!(hello.timestamp, now);
    }

    fn frame(&mut self, body: &[u8], now: u64) {
        let in_hello_phase = !self.accepted_hello;
        let was_complete = self.hs.is_complete();
        let peer_before = self.hs.peer().cloned();
        let sent_before = self.sent.len();
        let mut buf = body.to_vec();
        let mut calls = 0usize;
        let mut called_with = None;
        let allow = self.allow;
        let result = self.hs.handle_frame(&mut buf, now, &mut |k| {
            calls += 1;
            called_with = Some(k.clone());
            allow
        });
        assert!(calls <= 1, "authorize called {calls} times in one call");
        self.authorize_calls += calls;
        assert!(self.authorize_calls <= 1, "authorize called twice");
        if calls == 1 {
            // Only after the signature verified: only the honest Hello.
            assert_eq!(body, self.peer_hello, "authorize reached by a forged hello");
            assert_eq!(called_with.as_ref(), Some(self.peer_key()));
        }
        if peer_before.is_none() {
            if let Some(p) = self.hs.peer() {
                assert_eq!(body, self.peer_hello, "peer set by a forged hello");
                assert_eq!(p, self.peer_key());
            }
        }

        if let Some(e) = &self.error {
            assert_eq!(result.as_ref(), Err(e), "errors are sticky");
            assert_eq!(calls, 0);
        } else if now >= self.hs.deadline_ms() {
            assert_eq!(result, Err(HandshakeError::Timeout));
            assert_eq!(calls, 0);
        }
        match result {
            Ok(()) => {
                assert!(self.hs.error().is_none());
                if in_hello_phase {
                    assert_eq!(body, self.peer_hello, "a forged hello was accepted");
                    assert_eq!(calls, 1);
                    assert!(self.allow);
                    self.accepted_hello = true;
                    assert!(self.hs.transcript_hash().is_some());
                    assert!(!self.hs.is_complete());
                } else {
                    assert!(!was_complete, "a frame after completion was accepted");
                    let expected = self.expected_confirm.as_ref().expect("answer was sent");
                    assert_eq!(body, &expected[..], "a forged confirmation completed");
                    assert!(self.hs.is_complete());
                }
            }
            Err(e) => {
                if let Some(first) = &self.error {
                    assert_eq!(&e, first);
                }
                assert_eq!(self.hs.error(), Some(&e));
                assert!(!self.hs.is_complete());
                assert!(self.hs.poll_transmit().is_none());
                if self.error.is_none() && e == HandshakeError::Unauthorized {
                    assert_eq!(calls, 1);
                    assert!(!self.allow);
                }
                self.error = Some(e);
            }
        }
        self.drain(now);
        let new_frames = self.sent.len() - sent_before;
        match (self.role, in_hello_phase && self.accepted_hello) {
            (Role::Dialer, true) => assert_eq!(new_frames, 1),
            (Role::Dialee, true) => assert_eq!(new_frames, 2),
            _ => assert_eq!(new_frames, 0),
        }
        self.check_sticky();
    }

    fn timeout(&mut self, now: u64) {
        let complete = self.hs.is_complete();
        let result = self.hs.handle_timeout(now);
        match &self.error {
            Some(e) => assert_eq!(result.as_ref(), Err(e), "errors are sticky"),
            None if !complete && now >= self.hs.deadline_ms() => {
                assert_eq!(result, Err(HandshakeError::Timeout));
                self.error = Some(HandshakeError::Timeout);
            }
            None => assert_eq!(result, Ok(())),
        }
        assert_eq!(self.hs.is_complete(), complete && self.error.is_none());
        self.check_sticky();
    }

    fn check_sticky(&mut self) {
        if let Some(e) = &self.error {
            assert_eq!(self.hs.error(), Some(e));
            assert!(!self.hs.is_complete());
            assert!(self.hs.poll_transmit().is_none());
            // Any time, any call: the same error.
            assert_eq!(self.hs.handle_timeout(T0).as_ref(), Err(e));
        } else {
            assert!(self.hs.error().is_none());
        }
    }

    /// End of input: a complete handshake yields a session that talks to the
    /// honest peer's session. Returns whether it was complete.
    fn finish(self) -> bool {
        let f = fixture();
        if !self.hs.is_complete() {
            assert!(self.hs.into_session().is_err());
            return false;
        }
        assert!(self.error.is_none());
        assert_eq!(self.sent.len(), 2);
        let peer_key = self.peer_key();
        let mut ours = self.hs.into_session().expect("complete handshake");
        assert_eq!(&ours.peer, peer_key);
        assert_eq!(ours.role, self.role);
        let mut peer = match self.honest_peer {
            Some(p) => p,
            None => {
                let mut dialee = f.honest_dialee();
                dialee
                    .handle_frame(
                        &mut f.dialer_hello.clone(),
                        T0 + HONEST_DELAY_MS,
                        &mut |_| true,
                    )
                    .expect("honest dialee");
                while dialee.poll_transmit().is_some() {}
                dialee
            }
        };
        // Our confirmation completes the honest peer.
        let mut confirm = self.sent[1].clone();
        peer.handle_frame(&mut confirm, T0 + HONEST_DELAY_MS, &mut |_| true)
            .expect("the honest peer accepts our confirmation");
        while peer.poll_transmit().is_some() {}
        let mut theirs = peer.into_session().expect("honest peer complete");
        send(&mut ours, &mut theirs);
        send(&mut theirs, &mut ours);
        true
    }
}

/// One record from `from` to `to`: it must open to what was sealed.
fn send(from: &mut crate::Session, to: &mut crate::Session) {
    let plain = b"fuzz session check".to_vec();
    let mut buf = plain.clone();
    buf.resize(plain.len() + TAG_LEN, 0);
    from.sealer.seal_in_place(&mut buf).expect("seal");
    let n = to
        .opener
        .open_in_place(&mut buf)
        .expect("sessions interoperate");
    assert_eq!(&buf[..n], &plain[..]);
}

/// Runs the script; returns whether the handshake completed.
fn run(role: Role, data: &[u8], honest: [&[u8]; 4]) -> bool {
    let mut script = Script { data };
    let Some(flags) = script.byte() else {
        return false;
    };
    let mut h = Harness::new(role, flags & 1 == 0);
    for _ in 0..MAX_STEPS {
        let Some(c) = script.byte() else { break };
        match c & 7 {
            0 | 1 => {
                let mut len = usize::from(script.byte().unwrap_or(0));
                if c & 8 != 0 {
                    len += 256 * usize::from(script.byte().unwrap_or(0) & 7);
                }
                let body = script.take(len);
                let now = script.time();
                h.frame(body, now);
            }
            2 | 3 => {
                let which = usize::from((c >> 3) & 3);
                // The dialee's frame 1 is the confirmation it must require
                // (known once it answered), else the fixture's.
                let mut body = match (role, which) {
                    (Role::Dialee, 1) => h
                        .expected_confirm
                        .clone()
                        .unwrap_or_else(|| honest[1].to_vec()),
                    _ => honest[which].to_vec(),
                };
                if c & 7 == 3 {
                    mutate(&mut script, c >> 5, &mut body);
                }
                let now = script.time();
                h.frame(&body, now);
            }
            4 => {
                let now = script.time();
                h.timeout(now);
            }
            _ => {
                let body = script.take(usize::from(c >> 3));
                let now = script.time();
                h.frame(body, now);
            }
        }
    }
    h.finish()
}

/// The dialer (seed 1, dialing seed 2) fed the input script. Honest frames:
/// 0 the dialee's Hello, 1 the dialee's confirmation, 2 the dialer's own
/// Hello (reflected), 3 the dialer's own confirmation (reflected).
pub fn handshake_dialer(data: &[u8]) {
    run_dialer(data);
}

/// The dialee (seed 2) fed the input script. Honest frames: see
/// [`run_dialee`].
pub fn handshake_dialee(data: &[u8]) {
    run_dialee(data);
}

/// [`handshake_dialer`], returning whether the handshake completed.
pub fn run_dialer(data: &[u8]) -> bool {
    let f = fixture();
    run(
        Role::Dialer,
        data,
        [
            &f.dialee_hello,
            &f.dialee_confirm,
            &f.dialer_hello,
            &f.dialer_confirm,
        ],
    )
}

/// [`handshake_dialee`], returning whether the handshake completed. Honest
/// frames: 0 the dialer's Hello, 1 the dialer's
/// confirmation for the answer this dialee actually sent (the fixture's
/// before it answered), 2 the fixture dialee's Hello (reflected), 3 the
/// fixture dialee's confirmation (reflected).
pub fn run_dialee(data: &[u8]) -> bool {
    let f = fixture();
    run(
        Role::Dialee,
        data,
        [
            &f.dialer_hello,
            &f.dialer_confirm,
            &f.dialee_hello,
            &f.dialee_confirm,
        ],
    )
}

/// Hand-made seed inputs for both targets: `(target, name, bytes)`. The
/// complete exchanges among them reach every phase; the rest are edge cases.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let f = fixture();
    // Time byte for T0 + 3 ms: fine anchor 1 is T0 + 3 - 5000; use coarse
    // 64 = T0 exactly instead (both honest frames are fresh at T0).
    let at_t0 = 64u8;
    let raw = |body: &[u8], t: u8| -> Vec<u8> {
        let mut v = vec![0x08, (body.len() % 256) as u8, (body.len() / 256) as u8];
        v.extend_from_slice(body);
        v.push(t);
        v
    };
    let mut out = Vec::new();
    for (target, hello, confirm) in [
        ("handshake_dialer", &f.dialee_hello, &f.dialee_confirm),
        ("handshake_dialee", &f.dialer_hello, &f.dialer_confirm),
    ] {
        // Full exchange, honest frames by reference.
        out.push((
            target,
            "honest_refs",
            vec![0, 2, at_t0, 2 | (1 << 3), at_t0],
        ));
        // Full exchange with the raw bytes (dialer only: the dialee's
        // expected confirmation depends on its answer time, T0 here, which
        // differs from the fixture's T0 + 3).
        let mut v = vec![0];
        v.extend(raw(hello, at_t0));
        if target == "handshake_dialer" {
            v.extend(raw(confirm, at_t0));
        } else {
            v.extend([2 | (1 << 3), at_t0]);
        }
        out.push((target, "honest_raw", v));
        // Refused by authorize.
        out.push((target, "unauthorized", vec![1, 2, at_t0]));
        // Honest hello with one flipped signature byte, then the timeout.
        out.push((
            target,
            "bad_signature",
            vec![0, 3 | (1 << 5), 1, 200, 0x40, at_t0, 4, 0x8f],
        ));
        // Honest hello at the deadline, at the future bound, at the stale
        // bound (after the deadline), at time 0.
        out.push((target, "at_deadline", vec![0, 2, 0x90]));
        out.push((target, "future_bound", vec![0, 2, 0xa0, 2, 0xaf]));
        out.push((target, "stale_bound", vec![0, 2, 0xd0]));
        out.push((target, "time_zero", vec![0, 2, 0xe0]));
        // Reflection of our own frames.
        out.push((
            target,
            "reflected",
            vec![0, 2 | (2 << 3), at_t0, 2 | (3 << 3), at_t0],
        ));
        // After completion, another frame; then timeouts.
        out.push((
            target,
            "after_complete",
            vec![
                0,
                2,
                at_t0,
                2 | (1 << 3),
                at_t0,
                5 | (3 << 3),
                1,
                2,
                3,
                at_t0,
                4,
                0xe1,
            ],
        ));
        // Oversized hello.
        let mut big = vec![0, 0x08, 0x01, 0x04];
        big.extend(vec![0x0a; 0x401]);
        big.push(at_t0);
        out.push((target, "oversized", big));
    }
    out
}
