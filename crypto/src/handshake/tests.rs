//! Deterministic handshake tests: no sockets, both sides driven by hand.

use super::*;
use crate::counters;
use crate::identity::{Ed25519Signer, Signer};

const NOW: u64 = 1_700_000_000_000;
const NS: &[u8] = b"shoal-test";
const DIALER_EPH: [u8; 32] = [0x11; 32];
const DIALEE_EPH: [u8; 32] = [0x22; 32];

fn config() -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig {
        namespace: NS.to_vec(),
        max_age: Duration::from_secs(10),
        synchrony_bound: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        cipher: CipherPolicy::default(),
    })
}

fn signer(seed: u64) -> Arc<Ed25519Signer> {
    Arc::new(Ed25519Signer::insecure_from_seed(seed))
}

fn id(seed: u64) -> Identity {
    signer(seed)
}

fn key(seed: u64) -> PublicKey {
    signer(seed).public_key().clone()
}

fn allow(_: &PublicKey) -> bool {
    true
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Strips and checks the 4-byte length prefix.
fn body(frame: &[u8]) -> Vec<u8> {
    let (len, rest) = frame.split_at(4);
    assert_eq!(
        u32::from_be_bytes(len.try_into().unwrap()) as usize,
        rest.len(),
        "bad frame length prefix"
    );
    rest.to_vec()
}

/// Dialer seed 1 dialing dialee seed 2, fixed ephemerals.
fn fixed_pair() -> (Handshake, Handshake) {
    let dialer =
        Handshake::dialer_with_ephemeral_for_test(id(1), key(2), config(), NOW, DIALER_EPH);
    let dialee = Handshake::dialee_with_ephemeral_for_test(id(2), config(), NOW + 3, DIALEE_EPH);
    (dialer, dialee)
}

/// The frames of one honest exchange (bodies, prefixes stripped).
struct Exchange {
    dialer_hello: Vec<u8>,
    dialee_hello: Vec<u8>,
    dialee_confirm: Vec<u8>,
    dialer_confirm: Vec<u8>,
}

/// Drives a full handshake step by step, asserting each step and that
/// exactly two frames go each way.
fn drive(dialer: &mut Handshake, dialee: &mut Handshake) -> Exchange {
    let dialer_hello = body(&dialer.poll_transmit().expect("dialer hello queued"));
    assert!(dialer.poll_transmit().is_none());
    assert!(dialee.poll_transmit().is_none());

    let mut calls = 0;
    dialee
        .handle_frame(&mut dialer_hello.clone(), NOW + 5, &mut |k| {
            calls += 1;
            k == &key(1)
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(dialee.peer(), Some(&key(1)));
    assert!(!dialee.is_complete());
    let dialee_hello = body(&dialee.poll_transmit().expect("dialee hello"));
    let dialee_confirm = body(&dialee.poll_transmit().expect("dialee confirmation"));
    assert!(dialee.poll_transmit().is_none());

    let mut calls = 0;
    dialer
        .handle_frame(&mut dialee_hello.clone(), NOW + 10, &mut |k| {
            calls += 1;
            k == &key(2)
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(dialer.peer(), Some(&key(2)));
    assert!(!dialer.is_complete());
    let dialer_confirm = body(&dialer.poll_transmit().expect("dialer confirmation"));
    assert!(dialer.poll_transmit().is_none());

    dialer
        .handle_frame(&mut dialee_confirm.clone(), NOW + 11, &mut |_| {
            panic!("authorize called twice")
        })
        .unwrap();
    assert!(dialer.is_complete());
    dialee
        .handle_frame(&mut dialer_confirm.clone(), NOW + 12, &mut |_| {
            panic!("authorize called twice")
        })
        .unwrap();
    assert!(dialee.is_complete());
    assert!(dialer.poll_transmit().is_none());
    assert!(dialee.poll_transmit().is_none());
    assert_eq!(dialer.transcript_hash(), dialee.transcript_hash());
    Exchange {
        dialer_hello,
        dialee_hello,
        dialee_confirm,
        dialer_confirm,
    }
}

fn send(from: &mut Session, to: &mut Session, size: usize) {
    let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut buf = plain.clone();
    buf.resize(size + TAG_LEN, 0);
    from.sealer.seal_in_place(&mut buf).unwrap();
    let n = to.opener.open_in_place(&mut buf).unwrap();
    assert_eq!(&buf[..n], &plain[..]);
}

fn exchange_records(a: &mut Session, b: &mut Session) {
    for size in [0usize, 1, 100, 4096, 65536] {
        send(a, b, size);
        send(b, a, size);
    }
}

#[test]
fn full_handshake_then_records_both_ways() {
    let mut dialer = Handshake::dialer(id(1), key(2), config(), NOW);
    let mut dialee = Handshake::dialee(id(2), config(), NOW + 1);
    assert_eq!(dialer.role(), Role::Dialer);
    assert_eq!(dialee.role(), Role::Dialee);
    assert_eq!(dialer.deadline_ms(), NOW + 5000);
    drive(&mut dialer, &mut dialee);
    let mut a = dialer.into_session().unwrap();
    let mut b = dialee.into_session().unwrap();
    assert_eq!(a.peer, key(2));
    assert_eq!(b.peer, key(1));
    assert_eq!(a.role, Role::Dialer);
    assert_eq!(b.role, Role::Dialee);
    assert_eq!(a.sealer.sequence(), (0, 1));
    assert_eq!(a.opener.sequence(), (0, 1));
    assert_eq!(b.sealer.sequence(), (0, 1));
    exchange_records(&mut a, &mut b);

    // A session's own sealer output does not open with its own opener
    // (distinct keys per direction).
    let mut buf = vec![0u8; 10 + TAG_LEN];
    a.sealer.seal_in_place(&mut buf).unwrap();
    assert!(a.opener.open_in_place(&mut buf).is_err());
}

#[test]
fn fresh_handshakes_differ() {
    let (mut d1, mut e1) = (
        Handshake::dialer(id(1), key(2), config(), NOW),
        Handshake::dialee(id(2), config(), NOW),
    );
    let (mut d2, mut e2) = (
        Handshake::dialer(id(1), key(2), config(), NOW),
        Handshake::dialee(id(2), config(), NOW),
    );
    drive(&mut d1, &mut e1);
    drive(&mut d2, &mut e2);
    assert_ne!(d1.transcript_hash(), d2.transcript_hash());
}

#[test]
fn exactly_one_of_each_expensive_operation_per_side() {
    let mut dialer_ops = [0u64; 4];
    let mut dialee_ops = [0u64; 4];
    let on = |side: &mut [u64; 4], f: &mut dyn FnMut()| {
        let before = counters::snapshot();
        f();
        let after = counters::snapshot();
        for i in 0..4 {
            side[i] += after[i] - before[i];
        }
    };
    let mut dialer = None;
    let mut dialee = None;
    on(&mut dialer_ops, &mut || {
        dialer = Some(Handshake::dialer(id(1), key(2), config(), NOW))
    });
    on(&mut dialee_ops, &mut || {
        dialee = Some(Handshake::dialee(id(2), config(), NOW))
    });
    let (mut dialer, mut dialee) = (dialer.unwrap(), dialee.unwrap());
    // Identity construction is not part of the handshake: build keys first.
    let (k1, k2) = (key(1), key(2));
    let mut frames_d_to_e = 0;
    let mut frames_e_to_d = 0;

    let mut f = dialer.poll_transmit().unwrap();
    frames_d_to_e += 1;
    on(&mut dialee_ops, &mut || {
        dialee
            .handle_frame(&mut f[4..], NOW, &mut |k| k == &k1)
            .unwrap()
    });
    let mut from_dialee = Vec::new();
    while let Some(f) = dialee.poll_transmit() {
        frames_e_to_d += 1;
        from_dialee.push(f);
    }
    let mut to_dialee = Vec::new();
    for mut f in from_dialee {
        on(&mut dialer_ops, &mut || {
            dialer
                .handle_frame(&mut f[4..], NOW, &mut |k| k == &k2)
                .unwrap()
        });
        while let Some(f) = dialer.poll_transmit() {
            frames_d_to_e += 1;
            to_dialee.push(f);
        }
    }
    for mut f in to_dialee {
        on(&mut dialee_ops, &mut || {
            dialee
                .handle_frame(&mut f[4..], NOW, &mut |_| unreachable!())
                .unwrap()
        });
    }
    assert!(dialer.is_complete() && dialee.is_complete());
    // [sign, verify, x25519 keygen, x25519 agreement]
    assert_eq!(dialer_ops, [1, 1, 1, 1]);
    assert_eq!(dialee_ops, [1, 1, 1, 1]);
    assert_eq!((frames_d_to_e, frames_e_to_d), (2, 2));
}

/// Pinned test vectors: identities from seeds 1 and 2, ephemeral secrets
/// 0x11.. and 0x22.., fixed timestamps. Any change to the Hello encoding,
/// the signed bytes, the transcript or the key schedule breaks this test.
#[test]
fn fixed_vectors() {
    let (mut dialer, mut dialee) = fixed_pair();
    let ex = drive(&mut dialer, &mut dialee);
    let th = dialer.transcript_hash().unwrap();
    let shared = StaticSecret::from(DIALER_EPH)
        .diffie_hellman(&X25519PublicKey::from(&StaticSecret::from(DIALEE_EPH)));
    let keys = derive_keys(shared.as_bytes(), &th).unwrap();

    let got = [
        ("dialer key", hex(key(1).as_bytes())),
        ("dialee key", hex(key(2).as_bytes())),
        ("dialer hello", hex(&ex.dialer_hello)),
        ("dialee hello", hex(&ex.dialee_hello)),
        ("shared", hex(shared.as_bytes())),
        ("transcript", hex(&th)),
        ("dialer->dialee", hex(&*keys.dialer_to_dialee)),
        ("dialee->dialer", hex(&*keys.dialee_to_dialer)),
        ("confirmation", hex(&*keys.confirmation)),
        (
            "dialer mac",
            hex(confirmation_mac(&keys.confirmation, Role::Dialer, &th).as_ref()),
        ),
        ("dialer confirm frame", hex(&ex.dialer_confirm)),
    ];
    let expected = [
        ("dialer key", PIN_DIALER_KEY),
        ("dialee key", PIN_DIALEE_KEY),
        ("dialer hello", PIN_DIALER_HELLO),
        ("dialee hello", PIN_DIALEE_HELLO),
        ("shared", PIN_SHARED),
        ("transcript", PIN_TRANSCRIPT),
        ("dialer->dialee", PIN_D2E),
        ("dialee->dialer", PIN_E2D),
        ("confirmation", PIN_CONFIRMATION),
        ("dialer mac", PIN_DIALER_MAC),
        ("dialer confirm frame", PIN_DIALER_CONFIRM_FRAME),
    ];
    for (name, got) in &got {
        println!("{name}: {got}");
    }
    for ((name, got), (_, want)) in got.iter().zip(expected.iter()) {
        assert_eq!(got, want, "{name}");
    }

    // The pinned keys are the ones the sessions really use.
    let mut a = dialer.into_session().unwrap();
    let mut b = dialee.into_session().unwrap();
    let mut forged = RecordSealer::new(&keys.dialer_to_dialee, true).with_counter_for_test(0, 1);
    let mut buf = b"pinned\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    forged.seal_in_place(&mut buf).unwrap();
    assert_eq!(b.opener.open_in_place(&mut buf), Ok(6));
    let mut forged = RecordSealer::new(&keys.dialee_to_dialer, false).with_counter_for_test(0, 1);
    let mut buf = b"pinned\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    forged.seal_in_place(&mut buf).unwrap();
    assert_eq!(a.opener.open_in_place(&mut buf), Ok(6));
}

/// The pinned confirmation frames come out the same whichever backend seals
/// them: OpenSSL for every record, ring for every record.
#[test]
fn fixed_vectors_under_every_cipher_backend() {
    for cipher in [CipherPolicy::evp_for_test(0), CipherPolicy::ring()] {
        let config = Arc::new(HandshakeConfig {
            cipher,
            ..(*config()).clone()
        });
        let mut dialer = Handshake::dialer_with_ephemeral_for_test(
            id(1),
            key(2),
            config.clone(),
            NOW,
            DIALER_EPH,
        );
        let mut dialee =
            Handshake::dialee_with_ephemeral_for_test(id(2), config, NOW + 3, DIALEE_EPH);
        let ex = drive(&mut dialer, &mut dialee);
        assert_eq!(
            hex(&ex.dialer_confirm),
            PIN_DIALER_CONFIRM_FRAME,
            "{cipher:?}"
        );
        let a = dialer.into_session().unwrap();
        assert_eq!(a.sealer.evp_threshold(), cipher.evp_threshold());
        assert_eq!(a.opener.evp_threshold(), cipher.evp_threshold());
    }
}

// Cross-checked independently (Python hashlib/hmac and pyca/cryptography:
// X25519, Ed25519 signature verification of both Hellos, HKDF, HMAC and
// ChaCha20-Poly1305 of the confirmation frame).
const PIN_DIALER_KEY: &str = "e2a0c36f67208f43283f3c04d5441d5c4118b2910900d3798c639ca06a6ff4d9";
const PIN_DIALEE_KEY: &str = "3c05324061a689e743503eef6e8be34251566f937a845beeb7c57ca2b921beff";
const PIN_DIALER_HELLO: &str = concat!(
    "0a203c05324061a689e743503eef6e8be34251566f937a845beeb7c57ca2b921beff12207b4e909b",
    "be7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f131880d095ffbc312220e2a0c3",
    "6f67208f43283f3c04d5441d5c4118b2910900d3798c639ca06a6ff4d92a40132c95765786406f7b",
    "5caca8f2cf1ad2822b1165d6d637fbf031b3f482d2c0a560de75256c5d754d3637515a865edea340",
    "081fc431b7111203b224a731b6620c"
);
const PIN_DIALEE_HELLO: &str = concat!(
    "0a20e2a0c36f67208f43283f3c04d5441d5c4118b2910900d3798c639ca06a6ff4d912200faa684e",
    "d28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f201885d095ffbc3122203c0532",
    "4061a689e743503eef6e8be34251566f937a845beeb7c57ca2b921beff2a40979e9f339051886d75",
    "d6d4f9b525b48c08d795cb68eab7ad57c21a008914e9f6da277eceacad3091a98860d8ad30db3bde",
    "77527afee2d28049067907db7b120c"
);
const PIN_SHARED: &str = "9e004098efc091d4ec2663b4e9f5cfd4d7064571690b4bea97ab146ab9f35056";
const PIN_TRANSCRIPT: &str = "346d4351a6d37a264687f0c2edf7ca126dbdbdee87838cdcbb8647d45adb9422";
const PIN_D2E: &str = "1c311b2b2e1212bade902f002bfe7151a3487011a888db4906bec6ac5358f6c0";
const PIN_E2D: &str = "824e14162ef6632873b7b2ff0961bda70dd1b00664d481a8ddbd5cb649e80e8d";
const PIN_CONFIRMATION: &str = "ac65bd49c593c5f0c8d3984dfbc2ba88c126650ef53a3e6233a27cae16f236aa";
const PIN_DIALER_MAC: &str = "278592e78c8eb74025c1b1be1d1360800d16595ab7e39791209cb8d733655fba";
const PIN_DIALER_CONFIRM_FRAME: &str = concat!(
    "3569632dfa7bfdb286ff1aa15c684c4b37a83de60925269154446249752f4aa2aec6b43c8d26b31a",
    "fa46fe57e6fdd445f8811405"
);

// ---------------------------------------------------------------------------
// Rejections. Each crafts one bad Hello (validly signed unless the point is
// the signature) and asserts its distinct error.

struct HelloParts {
    signer: Arc<Ed25519Signer>,
    signer_key: Vec<u8>,
    role: Role,
    recipient: Vec<u8>,
    ephemeral: Vec<u8>,
    timestamp: u64,
    dialer_ephemeral: Option<[u8; 32]>,
    namespace: Vec<u8>,
}

impl HelloParts {
    /// A valid dialer Hello from seed 1 to seed 2.
    fn dialer() -> Self {
        let signer = signer(1);
        Self {
            signer_key: signer.public_key().as_bytes().to_vec(),
            signer,
            role: Role::Dialer,
            recipient: key(2).as_bytes().to_vec(),
            ephemeral: X25519PublicKey::from(&StaticSecret::from(DIALER_EPH))
                .as_bytes()
                .to_vec(),
            timestamp: NOW,
            dialer_ephemeral: None,
            namespace: NS.to_vec(),
        }
    }

    /// A valid dialee Hello from seed 2 answering seed 1's fixed ephemeral.
    fn dialee() -> Self {
        let signer = signer(2);
        let dialer_eph = X25519PublicKey::from(&StaticSecret::from(DIALER_EPH)).to_bytes();
        Self {
            signer_key: signer.public_key().as_bytes().to_vec(),
            signer,
            role: Role::Dialee,
            recipient: key(1).as_bytes().to_vec(),
            ephemeral: X25519PublicKey::from(&StaticSecret::from(DIALEE_EPH))
                .as_bytes()
                .to_vec(),
            timestamp: NOW,
            dialer_ephemeral: Some(dialer_eph),
            namespace: NS.to_vec(),
        }
    }

    fn signed_by(mut self, seed: u64) -> Self {
        self.signer = signer(seed);
        self.signer_key = self.signer.public_key().as_bytes().to_vec();
        self
    }

    fn encode(&self) -> Vec<u8> {
        let eph: [u8; 32] = self.ephemeral.clone().try_into().unwrap_or([0; 32]);
        let message = hello_signed_message(
            self.role,
            &self.recipient,
            &eph,
            self.timestamp,
            self.dialer_ephemeral.as_ref(),
        );
        Hello {
            recipient_public_key: self.recipient.clone().into(),
            ephemeral_public_key: self.ephemeral.clone().into(),
            timestamp: self.timestamp,
            signer_public_key: self.signer_key.clone().into(),
            signature: self.signer.sign(&self.namespace, &message),
        }
        .encode_to_vec()
    }
}

/// Feeds `hello` to a fresh dialee (seed 2) at NOW.
fn dialee_rejects(mut hello: Vec<u8>) -> Result<(), HandshakeError> {
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    let result = dialee.handle_frame(&mut hello, NOW, &mut allow);
    if result.is_err() {
        assert!(
            dialee.poll_transmit().is_none(),
            "a failed dialee must not answer"
        );
    }
    result
}

/// Feeds `hello` to the fixed dialer (seed 1 dialing seed 2) at NOW.
fn dialer_rejects(mut hello: Vec<u8>) -> Result<(), HandshakeError> {
    let (mut dialer, _) = fixed_pair();
    assert!(dialer.poll_transmit().is_some());
    let result = dialer.handle_frame(&mut hello, NOW, &mut allow);
    if result.is_err() {
        assert!(dialer.poll_transmit().is_none());
    }
    result
}

#[test]
fn crafted_hellos_are_valid_baseline() {
    // The helpers produce acceptable Hellos, so each rejection below is due
    // to exactly the one change it makes.
    assert_eq!(dialee_rejects(HelloParts::dialer().encode()), Ok(()));
    assert_eq!(dialer_rejects(HelloParts::dialee().encode()), Ok(()));
}

#[test]
fn rejects_malformed_messages() {
    use HandshakeError::MalformedMessage;
    assert_eq!(dialee_rejects(vec![0xff; 10]), Err(MalformedMessage));
    assert_eq!(dialee_rejects(vec![0x0a, 0x50]), Err(MalformedMessage)); // truncated
    assert_eq!(
        dialee_rejects(vec![0; MAX_HELLO_LEN + 1]),
        Err(MalformedMessage)
    );
    // An unknown field appended (field 15, varint 1): not canonical.
    let mut extra = HelloParts::dialer().encode();
    extra.extend_from_slice(&[0x78, 0x01]);
    assert_eq!(dialee_rejects(extra), Err(MalformedMessage));
    // Fields reordered: not canonical.
    let good = HelloParts::dialer().encode();
    let hello = Hello::decode(&good[..]).unwrap();
    let mut reordered = Vec::new();
    prost::encoding::uint64::encode(3, &hello.timestamp, &mut reordered);
    let without_ts = Hello {
        timestamp: 0,
        ..hello
    };
    reordered.extend_from_slice(&without_ts.encode_to_vec());
    assert_eq!(Hello::decode(&reordered[..]).unwrap().timestamp, NOW);
    assert_eq!(dialee_rejects(reordered), Err(MalformedMessage));
    // Empty body: decodes as all-default fields, which are malformed keys.
    assert_eq!(dialee_rejects(vec![]), Err(HandshakeError::MalformedKey));
}

#[test]
fn rejects_malformed_keys() {
    use HandshakeError::MalformedKey;
    let mut h = HelloParts::dialer();
    h.signer_key.pop();
    assert_eq!(dialee_rejects(h.encode()), Err(MalformedKey));
    let mut h = HelloParts::dialer();
    h.signer_key = vec![0; 32]; // small order point
    assert_eq!(dialee_rejects(h.encode()), Err(MalformedKey));
    let mut h = HelloParts::dialer();
    h.recipient = vec![0; 32];
    assert_eq!(dialee_rejects(h.encode()), Err(MalformedKey));
    let mut h = HelloParts::dialer();
    h.ephemeral.pop();
    assert_eq!(dialee_rejects(h.encode()), Err(MalformedKey));
    let mut h = HelloParts::dialer();
    h.ephemeral.push(0);
    assert_eq!(dialee_rejects(h.encode()), Err(MalformedKey));
}

#[test]
fn rejects_non_contributory_ephemeral() {
    // The all-zero u-coordinate (and other low-order points) give an
    // all-zero shared secret.
    let mut h = HelloParts::dialer();
    h.ephemeral = vec![0; 32];
    assert_eq!(
        dialee_rejects(h.encode()),
        Err(HandshakeError::NonContributory)
    );
    let mut h = HelloParts::dialee();
    h.ephemeral = {
        let mut one = vec![0; 32];
        one[0] = 1;
        one
    };
    assert_eq!(
        dialer_rejects(h.encode()),
        Err(HandshakeError::NonContributory)
    );
}

#[test]
fn rejects_wrong_recipient() {
    let mut h = HelloParts::dialer();
    h.recipient = key(3).as_bytes().to_vec();
    assert_eq!(
        dialee_rejects(h.encode()),
        Err(HandshakeError::WrongRecipient)
    );
    let mut h = HelloParts::dialee();
    h.recipient = key(3).as_bytes().to_vec();
    assert_eq!(
        dialer_rejects(h.encode()),
        Err(HandshakeError::WrongRecipient)
    );
}

#[test]
fn rejects_unexpected_peer() {
    // Seed 3 answers instead of seed 2: validly signed, addressed to the
    // dialer, covering its ephemeral, but not the key it dialed.
    let h = HelloParts::dialee().signed_by(3);
    assert_eq!(
        dialer_rejects(h.encode()),
        Err(HandshakeError::UnexpectedPeer)
    );
}

#[test]
fn rejects_bad_signatures() {
    use HandshakeError::BadSignature;
    // Flipped signature bit.
    let good = HelloParts::dialer().encode();
    let mut hello = Hello::decode(&good[..]).unwrap();
    let mut sig = hello.signature.to_vec();
    sig[10] ^= 1;
    hello.signature = sig.into();
    assert_eq!(dialee_rejects(hello.encode_to_vec()), Err(BadSignature));
    // Truncated signature.
    let mut hello = Hello::decode(&good[..]).unwrap();
    hello.signature = hello.signature.slice(..63);
    assert_eq!(dialee_rejects(hello.encode_to_vec()), Err(BadSignature));
    // Changed timestamp after signing.
    let mut hello = Hello::decode(&good[..]).unwrap();
    hello.timestamp += 1;
    assert_eq!(dialee_rejects(hello.encode_to_vec()), Err(BadSignature));
    // Signed under another namespace.
    let mut h = HelloParts::dialer();
    h.namespace = b"other-network".to_vec();
    assert_eq!(dialee_rejects(h.encode()), Err(BadSignature));
    // Signed with the wrong role label (a dialee Hello presented as a
    // dialer's).
    let mut h = HelloParts::dialer();
    h.role = Role::Dialee;
    assert_eq!(dialee_rejects(h.encode()), Err(BadSignature));
    // Dialee answer that does not cover the dialer's ephemeral key.
    let mut h = HelloParts::dialee();
    h.dialer_ephemeral = None;
    assert_eq!(dialer_rejects(h.encode()), Err(BadSignature));
    let mut h = HelloParts::dialee();
    h.dialer_ephemeral = Some([9; 32]);
    assert_eq!(dialer_rejects(h.encode()), Err(BadSignature));
}

#[test]
fn rejects_stale_and_future_timestamps() {
    let at = |ts: u64| {
        let mut h = HelloParts::dialer();
        h.timestamp = ts;
        dialee_rejects(h.encode())
    };
    assert_eq!(at(NOW - 10_000), Ok(()));
    assert_eq!(at(NOW - 10_001), Err(HandshakeError::StaleTimestamp));
    assert_eq!(at(0), Err(HandshakeError::StaleTimestamp));
    assert_eq!(at(NOW + 5_000), Ok(()));
    assert_eq!(at(NOW + 5_001), Err(HandshakeError::FutureTimestamp));
    assert_eq!(at(u64::MAX), Err(HandshakeError::FutureTimestamp));
    // The dialer checks the answer's timestamp too.
    let mut h = HelloParts::dialee();
    h.timestamp = NOW - 10_001;
    assert_eq!(
        dialer_rejects(h.encode()),
        Err(HandshakeError::StaleTimestamp)
    );
    let mut h = HelloParts::dialee();
    h.timestamp = NOW + 5_001;
    assert_eq!(
        dialer_rejects(h.encode()),
        Err(HandshakeError::FutureTimestamp)
    );
}

#[test]
fn rejects_unauthorized_peers() {
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    let mut seen = Vec::new();
    let r = dialee.handle_frame(&mut HelloParts::dialer().encode(), NOW, &mut |k| {
        seen.push(k.clone());
        false
    });
    assert_eq!(r, Err(HandshakeError::Unauthorized));
    assert_eq!(seen, vec![key(1)]);
    assert!(dialee.poll_transmit().is_none());

    let (mut dialer, _) = fixed_pair();
    dialer.poll_transmit().unwrap();
    let r = dialer.handle_frame(&mut HelloParts::dialee().encode(), NOW, &mut |_| false);
    assert_eq!(r, Err(HandshakeError::Unauthorized));
    assert!(dialer.poll_transmit().is_none());
}

#[test]
fn authorize_not_called_before_signature_verifies() {
    let mut h = HelloParts::dialer();
    h.namespace = b"x".to_vec();
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    let r = dialee.handle_frame(&mut h.encode(), NOW, &mut |_| panic!("called"));
    assert_eq!(r, Err(HandshakeError::BadSignature));
    assert_eq!(dialee.peer(), None);
}

#[test]
fn rejects_self_connection() {
    // Dialee side: a Hello signed by our own key, addressed to us.
    let h = HelloParts::dialer().signed_by(2);
    assert_eq!(
        dialee_rejects(h.encode()),
        Err(HandshakeError::SelfConnection)
    );
    // Dialer side: dialing our own key fails at once and sends nothing.
    let mut dialer = Handshake::dialer(id(1), key(1), config(), NOW);
    assert!(dialer.poll_transmit().is_none());
    assert_eq!(
        dialer.handle_timeout(NOW),
        Err(HandshakeError::SelfConnection)
    );
    assert_eq!(
        dialer.into_session().unwrap_err(),
        HandshakeError::SelfConnection
    );
    // Dialing a malformed key fails at once too.
    let mut dialer = Handshake::dialer(
        id(1),
        PublicKey::from_bytes_unchecked(vec![1; 5]),
        config(),
        NOW,
    );
    assert!(dialer.poll_transmit().is_none());
    assert_eq!(dialer.error(), Some(&HandshakeError::MalformedKey));
}

#[test]
fn timeout_is_sticky() {
    let (mut dialer, mut dialee) = fixed_pair();
    let deadline = dialer.deadline_ms();
    assert_eq!(deadline, NOW + 5_000);
    assert_eq!(dialer.handle_timeout(deadline - 1), Ok(()));
    assert!(dialer.poll_transmit().is_some());
    assert_eq!(
        dialer.handle_timeout(deadline),
        Err(HandshakeError::Timeout)
    );
    assert_eq!(dialer.handle_timeout(NOW), Err(HandshakeError::Timeout));
    let mut hello = HelloParts::dialee().encode();
    assert_eq!(
        dialer.handle_frame(&mut hello, NOW, &mut allow),
        Err(HandshakeError::Timeout)
    );
    assert!(dialer.poll_transmit().is_none());
    assert_eq!(dialer.into_session().unwrap_err(), HandshakeError::Timeout);

    // A frame arriving at or after the deadline is a timeout too.
    let mut hello = HelloParts::dialer().encode();
    let r = dialee.handle_frame(&mut hello, dialee.deadline_ms(), &mut allow);
    assert_eq!(r, Err(HandshakeError::Timeout));

    // A dialee waiting for the confirmation times out as well.
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    dialee
        .handle_frame(&mut HelloParts::dialer().encode(), NOW, &mut allow)
        .unwrap();
    assert_eq!(dialee.handle_timeout(NOW + 4_999), Ok(()));
    assert_eq!(
        dialee.handle_timeout(NOW + 5_000),
        Err(HandshakeError::Timeout)
    );
    assert!(dialee.poll_transmit().is_none());

    // A complete handshake does not time out.
    let (mut dialer, mut dialee) = fixed_pair();
    drive(&mut dialer, &mut dialee);
    assert_eq!(dialer.handle_timeout(u64::MAX), Ok(()));
    assert!(dialer.into_session().is_ok());
}

#[test]
fn errors_are_sticky() {
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    let mut bad = HelloParts::dialer();
    bad.namespace = b"x".to_vec();
    assert_eq!(
        dialee.handle_frame(&mut bad.encode(), NOW, &mut allow),
        Err(HandshakeError::BadSignature)
    );
    // A valid Hello afterwards still fails with the first error.
    assert_eq!(
        dialee.handle_frame(&mut HelloParts::dialer().encode(), NOW, &mut |_| panic!()),
        Err(HandshakeError::BadSignature)
    );
    assert_eq!(
        dialee.handle_timeout(NOW),
        Err(HandshakeError::BadSignature)
    );
    assert_eq!(dialee.error(), Some(&HandshakeError::BadSignature));
    assert!(dialee.poll_transmit().is_none());
    assert!(!dialee.is_complete());
    assert_eq!(
        dialee.into_session().unwrap_err(),
        HandshakeError::BadSignature
    );
}

// ---------------------------------------------------------------------------
// Confirmation phase.

/// Runs the fixed pair up to the point where the dialer awaits the dialee's
/// confirmation; returns the dialer and the frames.
fn dialer_awaiting_confirmation() -> (Handshake, Handshake, Vec<u8>) {
    let (mut dialer, mut dialee) = fixed_pair();
    let mut h = body(&dialer.poll_transmit().unwrap());
    dialee.handle_frame(&mut h, NOW, &mut allow).unwrap();
    let mut eh = body(&dialee.poll_transmit().unwrap());
    let ec = body(&dialee.poll_transmit().unwrap());
    dialer.handle_frame(&mut eh, NOW, &mut allow).unwrap();
    (dialer, dialee, ec)
}

/// The keys of the fixed pair's handshake.
fn fixed_keys(th: &[u8; 32]) -> DerivedKeys {
    let shared = StaticSecret::from(DIALER_EPH)
        .diffie_hellman(&X25519PublicKey::from(&StaticSecret::from(DIALEE_EPH)));
    derive_keys(shared.as_bytes(), th).unwrap()
}

/// A sealed dialee->dialer frame body (sequence 0) with `plain` inside.
fn sealed_from_dialee(th: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let keys = fixed_keys(th);
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + TAG_LEN, 0);
    RecordSealer::new(&keys.dialee_to_dialer, false)
        .seal_in_place(&mut buf)
        .unwrap();
    buf
}

fn confirmation_record(mac: &[u8]) -> Vec<u8> {
    let mut rec = vec![RecordKind::KeyConfirmation as u8];
    KeyConfirmation {
        mac: Bytes::copy_from_slice(mac),
    }
    .encode_length_delimited(&mut rec)
    .unwrap();
    rec
}

#[test]
fn confirmation_frame_layout() {
    let (dialer, _, mut ec) = dialer_awaiting_confirmation();
    let th = dialer.transcript_hash().unwrap();
    let keys = fixed_keys(&th);
    let n = RecordOpener::new(&keys.dialee_to_dialer, false)
        .open_in_place(&mut ec)
        .unwrap();
    let mac = confirmation_mac(&keys.confirmation, Role::Dialee, &th);
    // kind 1, varint length 34, field 1 (0x0a), length 32, mac.
    let mut expected = vec![0x01, 34, 0x0a, 32];
    expected.extend_from_slice(mac.as_ref());
    assert_eq!(&ec[..n], &expected[..]);
}

#[test]
fn rejects_tampered_confirmation() {
    for pos in [0usize, 5, 36, 51] {
        let (mut dialer, _, mut ec) = dialer_awaiting_confirmation();
        ec[pos] ^= 0x40;
        assert_eq!(
            dialer.handle_frame(&mut ec, NOW, &mut allow),
            Err(HandshakeError::BadConfirmation),
            "pos {pos}"
        );
        assert!(!dialer.is_complete());
        assert!(dialer.poll_transmit().is_none());
    }
    // Truncated / extended.
    let (mut dialer, _, ec) = dialer_awaiting_confirmation();
    let mut short = ec[..ec.len() - 1].to_vec();
    assert_eq!(
        dialer.handle_frame(&mut short, NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    let (mut dialer, _, mut ec) = dialer_awaiting_confirmation();
    ec.push(0);
    assert_eq!(
        dialer.handle_frame(&mut ec, NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    // Too short to hold a tag.
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    assert_eq!(
        dialer.handle_frame(&mut [0u8; 3], NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    // The dialee's Hello replayed where the confirmation belongs.
    let (mut dialer, mut dialee) = fixed_pair();
    let mut h = body(&dialer.poll_transmit().unwrap());
    dialee.handle_frame(&mut h, NOW, &mut allow).unwrap();
    let eh = body(&dialee.poll_transmit().unwrap());
    dialer
        .handle_frame(&mut eh.clone(), NOW, &mut allow)
        .unwrap();
    assert_eq!(
        dialer.handle_frame(&mut eh.clone(), NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
}

#[test]
fn rejects_authentic_but_wrong_confirmation_records() {
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let th = dialer.transcript_hash().unwrap();
    let keys = fixed_keys(&th);

    // Correctly sealed, but the MAC is the dialer's (reflection) or garbage.
    let reflected = confirmation_mac(&keys.confirmation, Role::Dialer, &th);
    let mut f = sealed_from_dialee(&th, &confirmation_record(reflected.as_ref()));
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let mut f = sealed_from_dialee(&th, &confirmation_record(&[0u8; 32]));
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let good = confirmation_mac(&keys.confirmation, Role::Dialee, &th);
    let mut f = sealed_from_dialee(&th, &confirmation_record(&good.as_ref()[..31]));
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );

    // Another record kind.
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let mut rec = confirmation_record(good.as_ref());
    rec[0] = RecordKind::Data as u8;
    let mut f = sealed_from_dialee(&th, &rec);
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::UnexpectedMessage)
    );

    // A second record riding along, an empty plaintext, a truncated record.
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let mut rec = confirmation_record(good.as_ref());
    rec.extend_from_slice(&confirmation_record(good.as_ref()));
    let mut f = sealed_from_dialee(&th, &rec);
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::MalformedMessage)
    );
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let mut f = sealed_from_dialee(&th, &[]);
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::MalformedMessage)
    );
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let rec = confirmation_record(good.as_ref());
    let mut f = sealed_from_dialee(&th, &rec[..rec.len() - 1]);
    assert_eq!(
        dialer.handle_frame(&mut f, NOW, &mut allow),
        Err(HandshakeError::MalformedMessage)
    );

    // And the genuine record, built independently, is accepted.
    let (mut dialer, _, _) = dialer_awaiting_confirmation();
    let mut f = sealed_from_dialee(&th, &confirmation_record(good.as_ref()));
    dialer.handle_frame(&mut f, NOW, &mut allow).unwrap();
    assert!(dialer.is_complete());
}

#[test]
fn replayed_dialer_hello_never_completes() {
    // An honest handshake, recorded by an attacker.
    let (mut dialer, mut dialee) = fixed_pair();
    let ex = drive(&mut dialer, &mut dialee);

    // The attacker replays the dialer's Hello (within the timestamp window)
    // to a fresh dialee with the same identity. The dialee answers...
    let mut victim = Handshake::dialee(id(2), config(), NOW + 100);
    victim
        .handle_frame(&mut ex.dialer_hello.clone(), NOW + 100, &mut allow)
        .unwrap();
    assert!(victim.poll_transmit().is_some());
    assert!(victim.poll_transmit().is_some());
    assert!(!victim.is_complete());
    // ...but the recorded dialer confirmation belongs to other keys...
    assert_eq!(
        victim.handle_frame(&mut ex.dialer_confirm.clone(), NOW + 101, &mut allow),
        Err(HandshakeError::BadConfirmation)
    );
    assert!(!victim.is_complete());
    assert!(victim.into_session().is_err());

    // ...as does any other frame the attacker can produce; left alone, the
    // victim times out.
    for attempt in [
        ex.dialer_hello.clone(),
        ex.dialee_confirm.clone(),
        vec![0u8; 52],
    ] {
        let mut victim = Handshake::dialee(id(2), config(), NOW + 100);
        victim
            .handle_frame(&mut ex.dialer_hello.clone(), NOW + 100, &mut allow)
            .unwrap();
        assert_eq!(
            victim.handle_frame(&mut attempt.clone(), NOW + 101, &mut allow),
            Err(HandshakeError::BadConfirmation)
        );
    }
    let mut victim = Handshake::dialee(id(2), config(), NOW + 100);
    victim
        .handle_frame(&mut ex.dialer_hello.clone(), NOW + 100, &mut allow)
        .unwrap();
    assert_eq!(
        victim.handle_timeout(victim.deadline_ms()),
        Err(HandshakeError::Timeout)
    );
    assert!(victim.into_session().is_err());
}

#[test]
fn into_session_requires_completion_and_drained_transmit() {
    let (dialer, _) = fixed_pair();
    assert_eq!(
        dialer.into_session().unwrap_err(),
        HandshakeError::UnexpectedMessage
    );
    // Complete, but the dialer's confirmation was never taken.
    let (mut dialer, mut dialee) = fixed_pair();
    let mut h = body(&dialer.poll_transmit().unwrap());
    dialee.handle_frame(&mut h, NOW, &mut allow).unwrap();
    let mut eh = body(&dialee.poll_transmit().unwrap());
    let mut ec = body(&dialee.poll_transmit().unwrap());
    dialer.handle_frame(&mut eh, NOW, &mut allow).unwrap();
    dialer.handle_frame(&mut ec, NOW, &mut allow).unwrap();
    assert!(dialer.is_complete());
    assert_eq!(
        dialer.into_session().unwrap_err(),
        HandshakeError::UnexpectedMessage
    );
    // A frame after completion is unexpected.
    let (mut dialer, mut dialee) = fixed_pair();
    let ex = drive(&mut dialer, &mut dialee);
    assert_eq!(
        dialer.handle_frame(&mut ex.dialee_confirm.clone(), NOW, &mut allow),
        Err(HandshakeError::UnexpectedMessage)
    );
}

#[test]
fn confirmation_before_hello_is_malformed() {
    let (_, _, mut ec) = dialer_awaiting_confirmation();
    let mut dialee = Handshake::dialee(id(2), config(), NOW);
    let r = dialee.handle_frame(&mut ec, NOW, &mut allow);
    assert!(r.is_err());
    assert!(dialee.poll_transmit().is_none());
}
