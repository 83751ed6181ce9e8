//! The shoal/1 handshake: a sans-IO state machine for both roles.
//!
//! # Design
//!
//! Modelled on `rustls` / `quinn-proto`: the engine owns the socket and the
//! clock. It feeds each received frame body to [`Handshake::handle_frame`],
//! writes whatever [`Handshake::poll_transmit`] returns, arms a timer at
//! [`Handshake::deadline_ms`] and calls [`Handshake::handle_timeout`], and
//! once [`Handshake::is_complete`] turns the handshake into a [`Session`]
//! with [`Handshake::into_session`]. Time is always a parameter: `now_ms` is
//! wall-clock milliseconds since the Unix epoch.
//!
//! ```text
//! dialer                                             dialee
//!   Hello_d (plain frame)                ─────────►   check, verify, authorize
//!                                        ◄─────────   Hello_e (plain frame)
//!                                        ◄─────────   Confirm_e (sealed, seq 0)
//!   check, verify, authorize
//!   Confirm_d (sealed, seq 0)            ─────────►
//!   verify Confirm_e: complete                        verify Confirm_d: complete
//! ```
//!
//! **Hello.** `shoal_wire::message::Hello`, sent as a plain frame (`u32` BE
//! length ‖ protobuf). Its signature, under [`HandshakeConfig::namespace`]
//! (see [`crate::identity`] for how the namespace is bound), covers
//!
//! ```text
//! role label ‖ u32 BE len(recipient) ‖ recipient ‖ ephemeral (32) ‖ timestamp (u64 BE) [‖ dialer ephemeral (32)]
//! ```
//!
//! with role label `"shoal/1 hello dialer"` or `"shoal/1 hello dialee"`; the
//! dialee's signature also covers the dialer's ephemeral key (the bracketed
//! part), binding its answer to this particular dialer Hello. The role label
//! keeps one side's signed Hello from ever being accepted as the other
//! side's. A Hello must be the canonical protobuf encoding of its fields
//! (re-encoding gives the same bytes) and at most [`MAX_HELLO_LEN`] bytes.
//!
//! **Checks**, in this order, each with its own error: size and protobuf
//! ([`HandshakeError::MalformedMessage`]); signer key, recipient key
//! (through the local identity's [`crate::Scheme`]) and a 32-byte ephemeral
//! key ([`HandshakeError::MalformedKey`]); recipient is us
//! ([`HandshakeError::WrongRecipient`]); signer is not us
//! ([`HandshakeError::SelfConnection`]); for the dialer, signer is the key it
//! dialed ([`HandshakeError::UnexpectedPeer`]); timestamp not older than
//! `max_age` ([`HandshakeError::StaleTimestamp`]) nor further than
//! `synchrony_bound` ahead ([`HandshakeError::FutureTimestamp`]); the
//! signature ([`HandshakeError::BadSignature`]); then the engine's
//! `authorize` callback ([`HandshakeError::Unauthorized`]). Only then does a
//! side spend an x25519 key generation (dialee) and agreement.
//!
//! **Keys.** `shared = X25519(own ephemeral, peer ephemeral)`; an all-zero
//! result is [`HandshakeError::NonContributory`]. With
//!
//! ```text
//! transcript = SHA-256("shoal/1 transcript" ‖ lp(namespace) ‖ lp(dialer Hello) ‖ lp(dialee Hello))
//! ```
//!
//! (`lp(x)` = `u32` BE length ‖ x, the Hellos as the exact frame-body bytes),
//! HKDF-SHA256 with salt = transcript and IKM = shared expands three 32-byte
//! keys with `info` labels `"shoal/1 key dialer->dialee"`,
//! `"shoal/1 key dialee->dialer"` and `"shoal/1 key confirmation"`.
//!
//! **Confirmation.** Each side's first sealed frame (sequence 0 of its
//! direction) has as plaintext exactly one record
//! `0x01 (RecordKind::KeyConfirmation) ‖ varint length ‖ KeyConfirmation`
//! with `mac = HMAC-SHA256(confirmation key, label ‖ transcript)`, label
//! `"shoal/1 confirmation dialer"` or `"shoal/1 confirmation dialee"`. The
//! dialee sends its confirmation right after its Hello; the dialer sends its
//! own after verifying the dialee's Hello. A side is complete when the
//! peer's confirmation opens and verifies; anything else is
//! [`HandshakeError::BadConfirmation`] (or `MalformedMessage` /
//! `UnexpectedMessage` for an authentic but malformed record).
//!
//! Each side does exactly one signature, one verification, one x25519 key
//! generation and one x25519 agreement, and sends exactly two frames.
//!
//! # Security
//!
//! Provided: mutual authentication (each side signs the other's identity
//! and, for the dialee, the dialer's fresh ephemeral key), forward secrecy,
//! key confirmation (a captured dialer Hello replayed to the dialee makes it
//! answer, but the replayer cannot derive the keys, so the dialee never
//! completes and a live connection is never displaced), transcript binding
//! (any change to either Hello changes every key), distinct keys per
//! direction, a bounded lifetime ([`HandshakeConfig::timeout`]), and sticky
//! errors (after the first error every call returns it and no further frame
//! is produced). The ephemeral secret and every derived key this module
//! holds are zeroized when dropped.
//!
//! Not provided: hiding identities, rejecting a replayed dialer Hello before
//! spending the dialee's verification, key generation and signature (replay
//! is only harmless, not cheap), or any check on the peer's clock beyond the
//! timestamp window.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use ring::{digest, hkdf, hmac};
use shoal_wire::message::{Hello, KeyConfirmation, RecordKind};
use x25519_dalek::{EphemeralSecret, PublicKey as X25519PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::cipher::{CipherError, CipherPolicy, RecordOpener, RecordSealer, TAG_LEN};
use crate::counters::{count, Op};
use crate::identity::{Identity, IdentityError, PublicKey};

/// Length of an x25519 ephemeral public key.
pub const EPHEMERAL_KEY_LEN: usize = 32;
/// Largest Hello body accepted (far above any real one; refuses junk early).
pub const MAX_HELLO_LEN: usize = 1024;

const FRAME_HEADER_LEN: usize = 4;
const HELLO_LABEL_DIALER: &[u8] = b"shoal/1 hello dialer";
const HELLO_LABEL_DIALEE: &[u8] = b"shoal/1 hello dialee";
const TRANSCRIPT_LABEL: &[u8] = b"shoal/1 transcript";
const INFO_DIALER_TO_DIALEE: &[u8] = b"shoal/1 key dialer->dialee";
const INFO_DIALEE_TO_DIALER: &[u8] = b"shoal/1 key dialee->dialer";
const INFO_CONFIRMATION: &[u8] = b"shoal/1 key confirmation";
const CONFIRM_LABEL_DIALER: &[u8] = b"shoal/1 confirmation dialer";
const CONFIRM_LABEL_DIALEE: &[u8] = b"shoal/1 confirmation dialee";

/// Handshake parameters, shared by every handshake of a node.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// Signature namespace (domain separation): nodes of different networks
    /// or applications must use different namespaces.
    pub namespace: Vec<u8>,
    /// A Hello whose timestamp is older than this is refused.
    pub max_age: Duration,
    /// A Hello whose timestamp is further ahead than this is refused.
    pub synchrony_bound: Duration,
    /// The whole handshake must complete within this.
    pub timeout: Duration,
    /// Which implementation seals and opens each frame of the session (never
    /// visible on the wire).
    pub cipher: CipherPolicy,
}

impl HandshakeConfig {
    /// `namespace` with defaults: `max_age` 10 s, `synchrony_bound` 5 s,
    /// `timeout` 5 s, the default [`CipherPolicy`].
    pub fn new(namespace: impl Into<Vec<u8>>) -> Self {
        Self {
            namespace: namespace.into(),
            max_age: Duration::from_secs(10),
            synchrony_bound: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            cipher: CipherPolicy::default(),
        }
    }
}

/// Why a handshake failed. Every error is final.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// A frame is not a well-formed (canonical, bounded) message.
    #[error("malformed handshake message")]
    MalformedMessage,
    /// A public key in a Hello is malformed.
    #[error("malformed key in hello")]
    MalformedKey,
    /// The x25519 agreement gave the all-zero secret (low-order peer key).
    #[error("non-contributory key exchange")]
    NonContributory,
    /// The Hello is addressed to another identity.
    #[error("hello addressed to another identity")]
    WrongRecipient,
    /// The dialee is not the identity the dialer dialed.
    #[error("answer signed by an unexpected peer")]
    UnexpectedPeer,
    /// The Hello's signature does not verify.
    #[error("bad hello signature")]
    BadSignature,
    /// The Hello's timestamp is older than `max_age`.
    #[error("hello timestamp too old")]
    StaleTimestamp,
    /// The Hello's timestamp is beyond the synchrony bound.
    #[error("hello timestamp too far in the future")]
    FutureTimestamp,
    /// The engine's authorization check refused the peer.
    #[error("peer not authorized")]
    Unauthorized,
    /// The peer is this node itself.
    #[error("connection to self")]
    SelfConnection,
    /// The peer's key confirmation did not open or did not verify.
    #[error("bad key confirmation")]
    BadConfirmation,
    /// The handshake did not complete before its deadline.
    #[error("handshake timed out")]
    Timeout,
    /// A message arrived (or a call was made) in a phase that does not
    /// expect it.
    #[error("unexpected handshake message")]
    UnexpectedMessage,
    /// The record cipher failed.
    #[error("cipher: {0}")]
    Cipher(#[from] CipherError),
}

/// Which end of the connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection, knowing the peer's key in advance.
    Dialer,
    /// Accepted the connection.
    Dialee,
}

/// The result of a completed handshake.
#[derive(Debug)]
pub struct Session {
    /// The authenticated, authorized peer.
    pub peer: PublicKey,
    /// This side's role.
    pub role: Role,
    /// Seals this side's frames (sequence 0 already used by the confirmation).
    pub sealer: RecordSealer,
    /// Opens the peer's frames (sequence 0 already used by the confirmation).
    pub opener: RecordOpener,
}

/// An x25519 ephemeral secret: from the OS, or fixed bytes for test vectors.
enum Ephemeral {
    Os(EphemeralSecret),
    Fixed(StaticSecret),
}

impl Ephemeral {
    /// One key generation (counted): the secret and its public key.
    fn generate(fixed: Option<Zeroizing<[u8; 32]>>) -> (Self, [u8; 32]) {
        count(Op::KeyGen);
        let secret = match fixed {
            Some(bytes) => Self::Fixed(StaticSecret::from(*bytes)),
            None => Self::Os(EphemeralSecret::random_from_rng(rand_core::OsRng)),
        };
        let public = match &secret {
            Self::Os(s) => X25519PublicKey::from(s),
            Self::Fixed(s) => X25519PublicKey::from(s),
        };
        (secret, public.to_bytes())
    }

    /// One agreement (counted); consumes the secret. `None` if the result is
    /// all zero (non-contributory).
    fn agree(self, peer: [u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        count(Op::Agree);
        let peer = X25519PublicKey::from(peer);
        let shared = match self {
            Self::Os(s) => s.diffie_hellman(&peer),
            Self::Fixed(s) => s.diffie_hellman(&peer),
        };
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }
}

/// The three keys derived from one handshake.
struct DerivedKeys {
    dialer_to_dialee: Zeroizing<[u8; 32]>,
    dialee_to_dialer: Zeroizing<[u8; 32]>,
    confirmation: Zeroizing<[u8; 32]>,
}

fn derive_keys(shared: &[u8; 32], transcript: &[u8; 32]) -> Result<DerivedKeys, HandshakeError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, transcript).extract(shared);
    let expand = |info: &[u8]| -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            // Unreachable: 32 bytes is the HKDF-SHA256 output length.
            .map_err(|_| HandshakeError::Cipher(CipherError::Poisoned))?;
        Ok(out)
    };
    Ok(DerivedKeys {
        dialer_to_dialee: expand(INFO_DIALER_TO_DIALEE)?,
        dialee_to_dialer: expand(INFO_DIALEE_TO_DIALER)?,
        confirmation: expand(INFO_CONFIRMATION)?,
    })
}

fn put_lp(ctx: &mut digest::Context, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    ctx.update(&len.to_be_bytes());
    ctx.update(bytes);
}

fn transcript_hash(namespace: &[u8], dialer_hello: &[u8], dialee_hello: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    put_lp(&mut ctx, namespace);
    put_lp(&mut ctx, dialer_hello);
    put_lp(&mut ctx, dialee_hello);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn confirmation_mac(key: &[u8; 32], sender: Role, transcript: &[u8; 32]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    ctx.update(match sender {
        Role::Dialer => CONFIRM_LABEL_DIALER,
        Role::Dialee => CONFIRM_LABEL_DIALEE,
    });
    ctx.update(transcript);
    ctx.sign()
}

fn verify_confirmation_mac(
    key: &[u8; 32],
    sender: Role,
    transcript: &[u8; 32],
    mac: &[u8],
) -> bool {
    let mut data = Vec::with_capacity(CONFIRM_LABEL_DIALER.len() + 32);
    data.extend_from_slice(match sender {
        Role::Dialer => CONFIRM_LABEL_DIALER,
        Role::Dialee => CONFIRM_LABEL_DIALEE,
    });
    data.extend_from_slice(transcript);
    // Constant-time comparison.
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &data, mac).is_ok()
}

/// The bytes a Hello's signature covers (before namespacing).
fn hello_signed_message(
    signer_role: Role,
    recipient: &[u8],
    ephemeral: &[u8; 32],
    timestamp: u64,
    dialer_ephemeral: Option<&[u8; 32]>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_LABEL_DIALER.len() + 4 + recipient.len() + 32 + 8 + 32);
    m.extend_from_slice(match signer_role {
        Role::Dialer => HELLO_LABEL_DIALER,
        Role::Dialee => HELLO_LABEL_DIALEE,
    });
    m.extend_from_slice(
        &u32::try_from(recipient.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(recipient);
    m.extend_from_slice(ephemeral);
    m.extend_from_slice(&timestamp.to_be_bytes());
    if let Some(e) = dialer_ephemeral {
        m.extend_from_slice(e);
    }
    m
}

/// `u32` BE length ‖ body.
fn plain_frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    f.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A sealed frame whose plaintext is one KeyConfirmation record.
fn confirmation_frame(sealer: &mut RecordSealer, mac: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let msg = KeyConfirmation {
        mac: Bytes::copy_from_slice(mac),
    };
    let inner = msg.encoded_len();
    let plain_len = 1 + prost::length_delimiter_len(inner) + inner;
    let body_len = plain_len + TAG_LEN;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
    frame.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    frame.push(RecordKind::KeyConfirmation as u8);
    msg.encode_length_delimited(&mut frame)
        .map_err(|_| HandshakeError::MalformedMessage)?;
    frame.resize(FRAME_HEADER_LEN + body_len, 0);
    let body = frame
        .get_mut(FRAME_HEADER_LEN..)
        .ok_or(HandshakeError::MalformedMessage)?;
    sealer.seal_in_place(body)?;
    Ok(frame)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

enum State {
    /// Dialer: our Hello is queued; waiting for the dialee's.
    DialerAwaitHello {
        expected: PublicKey,
        ephemeral: Ephemeral,
        ephemeral_public: [u8; 32],
        own_hello: Vec<u8>,
    },
    /// Dialee: waiting for the dialer's Hello.
    DialeeAwaitHello {
        fixed_ephemeral: Option<Zeroizing<[u8; 32]>>,
    },
    /// Keys derived and our confirmation queued; waiting for the peer's.
    AwaitConfirmation {
        sealer: RecordSealer,
        opener: RecordOpener,
        confirmation_key: Zeroizing<[u8; 32]>,
        transcript: [u8; 32],
    },
    /// Both confirmations done.
    Complete {
        sealer: RecordSealer,
        opener: RecordOpener,
    },
    /// Failed (see `Handshake::error`).
    Failed,
}

/// One handshake, dialer or dialee side.
pub struct Handshake {
    identity: Identity,
    config: Arc<HandshakeConfig>,
    role: Role,
    deadline_ms: u64,
    state: State,
    error: Option<HandshakeError>,
    transmit: VecDeque<Vec<u8>>,
    peer: Option<PublicKey>,
    transcript: Option<[u8; 32]>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.state {
            State::DialerAwaitHello { .. } | State::DialeeAwaitHello { .. } => "hello",
            State::AwaitConfirmation { .. } => "confirmation",
            State::Complete { .. } => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("phase", &phase)
            .field("peer", &self.peer)
            .field("error", &self.error)
            .field("deadline_ms", &self.deadline_ms)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts dialing `peer`; the Hello is queued at once (take it with
    /// [`Handshake::poll_transmit`]).
    pub fn dialer(
        identity: Identity,
        peer: PublicKey,
        config: Arc<HandshakeConfig>,
        now_ms: u64,
    ) -> Self {
        Self::dialer_inner(identity, peer, config, now_ms, None)
    }

    /// Accepts a connection; waits for the dialer's Hello.
    pub fn dialee(identity: Identity, config: Arc<HandshakeConfig>, now_ms: u64) -> Self {
        Self::dialee_inner(identity, config, now_ms, None)
    }

    /// [`Handshake::dialer`] with a fixed x25519 ephemeral secret. **Test
    /// vectors only**: a fixed ephemeral destroys forward secrecy.
    #[doc(hidden)]
    pub fn dialer_with_ephemeral_for_test(
        identity: Identity,
        peer: PublicKey,
        config: Arc<HandshakeConfig>,
        now_ms: u64,
        ephemeral_secret: [u8; 32],
    ) -> Self {
        Self::dialer_inner(
            identity,
            peer,
            config,
            now_ms,
            Some(Zeroizing::new(ephemeral_secret)),
        )
    }

    /// [`Handshake::dialee`] with a fixed x25519 ephemeral secret. **Test
    /// vectors only**: a fixed ephemeral destroys forward secrecy.
    #[doc(hidden)]
    pub fn dialee_with_ephemeral_for_test(
        identity: Identity,
        config: Arc<HandshakeConfig>,
        now_ms: u64,
        ephemeral_secret: [u8; 32],
    ) -> Self {
        Self::dialee_inner(
            identity,
            config,
            now_ms,
            Some(Zeroizing::new(ephemeral_secret)),
        )
    }

    fn new(identity: Identity, config: Arc<HandshakeConfig>, role: Role, now_ms: u64) -> Self {
        let deadline_ms = now_ms.saturating_add(duration_ms(config.timeout));
        Self {
            identity,
            config,
            role,
            deadline_ms,
            state: State::Failed,
            error: None,
            transmit: VecDeque::with_capacity(2),
            peer: None,
            transcript: None,
        }
    }

    fn dialer_inner(
        identity: Identity,
        peer: PublicKey,
        config: Arc<HandshakeConfig>,
        now_ms: u64,
        fixed: Option<Zeroizing<[u8; 32]>>,
    ) -> Self {
        let mut hs = Self::new(identity, config, Role::Dialer, now_ms);
        if hs
            .identity
            .scheme()
            .parse_public_key(peer.as_bytes())
            .is_err()
        {
            hs.error = Some(HandshakeError::MalformedKey);
            return hs;
        }
        if &peer == hs.identity.public_key() {
            hs.error = Some(HandshakeError::SelfConnection);
            return hs;
        }
        let (ephemeral, ephemeral_public) = Ephemeral::generate(fixed);
        let own_hello = hs.build_hello(peer.as_bytes(), &ephemeral_public, now_ms, None);
        hs.transmit.push_back(plain_frame(&own_hello));
        hs.state = State::DialerAwaitHello {
            expected: peer,
            ephemeral,
            ephemeral_public,
            own_hello,
        };
        hs
    }

    fn dialee_inner(
        identity: Identity,
        config: Arc<HandshakeConfig>,
        now_ms: u64,
        fixed_ephemeral: Option<Zeroizing<[u8; 32]>>,
    ) -> Self {
        let mut hs = Self::new(identity, config, Role::Dialee, now_ms);
        hs.state = State::DialeeAwaitHello { fixed_ephemeral };
        hs
    }

    /// Signs and encodes our Hello (one signature).
    fn build_hello(
        &self,
        recipient: &[u8],
        ephemeral_public: &[u8; 32],
        now_ms: u64,
        dialer_ephemeral: Option<&[u8; 32]>,
    ) -> Vec<u8> {
        let message = hello_signed_message(
            self.role,
            recipient,
            ephemeral_public,
            now_ms,
            dialer_ephemeral,
        );
        let signature = self.identity.sign(&self.config.namespace, &message);
        Hello {
            recipient_public_key: Bytes::copy_from_slice(recipient),
            ephemeral_public_key: Bytes::copy_from_slice(ephemeral_public),
            timestamp: now_ms,
            signer_public_key: self.identity.public_key().to_bytes(),
            signature,
        }
        .encode_to_vec()
    }

    /// One received frame **body** (length prefix already stripped): a plain
    /// Hello in the hello phase, a sealed frame whose plaintext is exactly
    /// one KeyConfirmation record in the confirmation phase. The body is
    /// decrypted in place in the confirmation phase.
    ///
    /// `authorize` is the engine's peer-set check, called at most once, with
    /// the authenticated peer key, after its signature verified.
    pub fn handle_frame(
        &mut self,
        body: &mut [u8],
        now_ms: u64,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
    ) -> Result<(), HandshakeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = if now_ms >= self.deadline_ms {
            Err(HandshakeError::Timeout)
        } else {
            self.handle_frame_inner(body, now_ms, authorize)
        };
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    fn fail(&mut self, error: HandshakeError) {
        self.error = Some(error);
        self.transmit.clear();
        // Drops (and so zeroizes) the ephemeral secret and derived keys.
        self.state = State::Failed;
    }

    fn handle_frame_inner(
        &mut self,
        body: &mut [u8],
        now_ms: u64,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
    ) -> Result<(), HandshakeError> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::DialerAwaitHello {
                expected,
                ephemeral,
                ephemeral_public,
                own_hello,
            } => {
                let (peer, peer_ephemeral) = self.check_hello(
                    body,
                    now_ms,
                    Some(&expected),
                    Some(&ephemeral_public),
                    authorize,
                )?;
                let shared = ephemeral
                    .agree(peer_ephemeral)
                    .ok_or(HandshakeError::NonContributory)?;
                let transcript = transcript_hash(&self.config.namespace, &own_hello, body);
                let keys = derive_keys(&shared, &transcript)?;
                let cipher = self.config.cipher;
                let mut sealer = RecordSealer::with_policy(&keys.dialer_to_dialee, true, cipher);
                let opener = RecordOpener::with_policy(&keys.dialee_to_dialer, false, cipher);
                let mac = confirmation_mac(&keys.confirmation, Role::Dialer, &transcript);
                let frame = confirmation_frame(&mut sealer, mac.as_ref())?;
                self.transmit.push_back(frame);
                self.peer = Some(peer);
                self.transcript = Some(transcript);
                self.state = State::AwaitConfirmation {
                    sealer,
                    opener,
                    confirmation_key: keys.confirmation,
                    transcript,
                };
                Ok(())
            }
            State::DialeeAwaitHello { fixed_ephemeral } => {
                let (peer, peer_ephemeral) =
                    self.check_hello(body, now_ms, None, None, authorize)?;
                let (ephemeral, ephemeral_public) = Ephemeral::generate(fixed_ephemeral);
                let shared = ephemeral
                    .agree(peer_ephemeral)
                    .ok_or(HandshakeError::NonContributory)?;
                let own_hello = self.build_hello(
                    peer.as_bytes(),
                    &ephemeral_public,
                    now_ms,
                    Some(&peer_ephemeral),
                );
                let transcript = transcript_hash(&self.config.namespace, body, &own_hello);
                let keys = derive_keys(&shared, &transcript)?;
                let cipher = self.config.cipher;
                let mut sealer = RecordSealer::with_policy(&keys.dialee_to_dialer, false, cipher);
                let opener = RecordOpener::with_policy(&keys.dialer_to_dialee, true, cipher);
                let mac = confirmation_mac(&keys.confirmation, Role::Dialee, &transcript);
                let confirmation = confirmation_frame(&mut sealer, mac.as_ref())?;
                self.transmit.push_back(plain_frame(&own_hello));
                self.transmit.push_back(confirmation);
                self.peer = Some(peer);
                self.transcript = Some(transcript);
                self.state = State::AwaitConfirmation {
                    sealer,
                    opener,
                    confirmation_key: keys.confirmation,
                    transcript,
                };
                Ok(())
            }
            State::AwaitConfirmation {
                sealer,
                mut opener,
                confirmation_key,
                transcript,
            } => {
                let n = opener
                    .open_in_place(body)
                    .map_err(|_| HandshakeError::BadConfirmation)?;
                let plain = body.get(..n).ok_or(HandshakeError::BadConfirmation)?;
                let (&kind, mut rest) = plain
                    .split_first()
                    .ok_or(HandshakeError::MalformedMessage)?;
                if kind != RecordKind::KeyConfirmation as u8 {
                    return Err(HandshakeError::UnexpectedMessage);
                }
                let confirmation = KeyConfirmation::decode_length_delimited(&mut rest)
                    .map_err(|_| HandshakeError::MalformedMessage)?;
                if !rest.is_empty() {
                    // Exactly one record: nothing may ride along.
                    return Err(HandshakeError::MalformedMessage);
                }
                let peer_role = match self.role {
                    Role::Dialer => Role::Dialee,
                    Role::Dialee => Role::Dialer,
                };
                if !verify_confirmation_mac(
                    &confirmation_key,
                    peer_role,
                    &transcript,
                    &confirmation.mac,
                ) {
                    return Err(HandshakeError::BadConfirmation);
                }
                self.state = State::Complete { sealer, opener };
                Ok(())
            }
            State::Complete { .. } | State::Failed => Err(HandshakeError::UnexpectedMessage),
        }
    }

    /// Validates a peer Hello; returns the authenticated, authorized peer
    /// and its ephemeral key. Check order is documented in the module docs.
    fn check_hello(
        &mut self,
        body: &[u8],
        now_ms: u64,
        expected: Option<&PublicKey>,
        dialer_ephemeral: Option<&[u8; 32]>,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
    ) -> Result<(PublicKey, [u8; 32]), HandshakeError> {
        if body.len() > MAX_HELLO_LEN {
            return Err(HandshakeError::MalformedMessage);
        }
        let hello = Hello::decode(body).map_err(|_| HandshakeError::MalformedMessage)?;
        // Canonical encoding only: no unknown, duplicate or reordered fields.
        if hello.encoded_len() != body.len() || hello.encode_to_vec() != body {
            return Err(HandshakeError::MalformedMessage);
        }
        let scheme = self.identity.scheme();
        let malformed = |_: IdentityError| HandshakeError::MalformedKey;
        let signer = scheme
            .parse_public_key(&hello.signer_public_key)
            .map_err(malformed)?;
        let recipient = scheme
            .parse_public_key(&hello.recipient_public_key)
            .map_err(malformed)?;
        let peer_ephemeral: [u8; EPHEMERAL_KEY_LEN] = hello
            .ephemeral_public_key
            .as_ref()
            .try_into()
            .map_err(|_| HandshakeError::MalformedKey)?;
        let own = self.identity.public_key();
        if &recipient != own {
            return Err(HandshakeError::WrongRecipient);
        }
        if &signer == own {
            return Err(HandshakeError::SelfConnection);
        }
        if expected.is_some_and(|e| e != &signer) {
            return Err(HandshakeError::UnexpectedPeer);
        }
        if now_ms.saturating_sub(hello.timestamp) > duration_ms(self.config.max_age) {
            return Err(HandshakeError::StaleTimestamp);
        }
        if hello.timestamp.saturating_sub(now_ms) > duration_ms(self.config.synchrony_bound) {
            return Err(HandshakeError::FutureTimestamp);
        }
        let peer_role = match self.role {
            Role::Dialer => Role::Dialee,
            Role::Dialee => Role::Dialer,
        };
        let message = hello_signed_message(
            peer_role,
            &hello.recipient_public_key,
            &peer_ephemeral,
            hello.timestamp,
            dialer_ephemeral,
        );
        scheme
            .verify(&signer, &self.config.namespace, &message, &hello.signature)
            .map_err(|_| HandshakeError::BadSignature)?;
        self.peer = Some(signer.clone());
        if !authorize(&signer) {
            return Err(HandshakeError::Unauthorized);
        }
        Ok((signer, peer_ephemeral))
    }

    /// Next complete frame to write (4-byte length prefix included), if any.
    /// Always `None` once the handshake failed.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.error.is_some() {
            return None;
        }
        self.transmit.pop_front()
    }

    /// `Err(Timeout)` once `now_ms >= deadline_ms()` (the error is sticky);
    /// returns any earlier error; `Ok` otherwise. A complete handshake does
    /// not time out.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), HandshakeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.is_complete() && now_ms >= self.deadline_ms {
            self.fail(HandshakeError::Timeout);
            return Err(HandshakeError::Timeout);
        }
        Ok(())
    }

    /// When the handshake times out: start + `config.timeout`, in ms since
    /// the Unix epoch.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The authenticated peer, once its Hello's signature verified (also
    /// if it was then refused by `authorize`, for logging).
    pub fn peer(&self) -> Option<&PublicKey> {
        self.peer.as_ref()
    }

    /// The first error, if the handshake failed.
    pub fn error(&self) -> Option<&HandshakeError> {
        self.error.as_ref()
    }

    /// The transcript hash (both Hellos, namespace), once both Hellos are
    /// known. Identical on both sides of an honest handshake; usable for
    /// channel binding.
    pub fn transcript_hash(&self) -> Option<[u8; 32]> {
        self.transcript
    }

    /// True once our confirmation is queued AND the peer's verified.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && matches!(self.state, State::Complete { .. })
    }

    /// Consumes a complete handshake. The sealer and opener have already
    /// used sequence 0 for the confirmations.
    ///
    /// `Err(UnexpectedMessage)` if it is not complete **or if a frame is still
    /// waiting in [`Handshake::poll_transmit`]** (drain it first: dropping our
    /// confirmation would leave the peer hanging); the first error if it
    /// failed.
    pub fn into_session(self) -> Result<Session, HandshakeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.transmit.is_empty() {
            return Err(HandshakeError::UnexpectedMessage);
        }
        match (self.state, self.peer) {
            (State::Complete { sealer, opener }, Some(peer)) => Ok(Session {
                peer,
                role: self.role,
                sealer,
                opener,
            }),
            _ => Err(HandshakeError::UnexpectedMessage),
        }
    }
}

#[cfg(test)]
mod tests;
