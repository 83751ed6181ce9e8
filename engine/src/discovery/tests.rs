use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_crypto::{Ed25519Signer, Identity, PublicKey, ED25519};
use shoal_wire::{BitVec, PeerRecord, Peers};

use super::*;

const NS: &[u8] = b"shoal-test";
const NOW: u64 = 1_700_000_000_000;

fn ident(seed: u64) -> Identity {
    Arc::new(Ed25519Signer::insecure_from_seed(seed))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A public (routable) address, distinct per `i`.
fn addr(i: u64) -> SocketAddr {
    let i = u32::try_from(i).unwrap();
    SocketAddr::from(([11, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9000))
}

fn node(seed: u64, config: DiscoveryConfig) -> Discovery {
    Discovery::new(config, ident(seed))
}

/// `n` identities and their keys sorted (position i = the i-th bit).
fn sorted_set(first_seed: u64, n: usize) -> Vec<Identity> {
    let mut ids: Vec<Identity> = (0..n as u64).map(|s| ident(first_seed + s)).collect();
    ids.sort_by(|a, b| a.public_key().cmp(b.public_key()));
    ids
}

fn keys(ids: &[Identity]) -> Vec<PublicKey> {
    ids.iter().map(|i| i.public_key().clone()).collect()
}

fn rec(id: &Identity, a: SocketAddr, ts: u64) -> PeerRecord {
    sign_record(&**id, NS, a, ts)
}

// ---------------------------------------------------------------- records

#[test]
fn discovery_record_fixture() {
    let id = ident(7);
    let a: SocketAddr = "1.2.3.4:30303".parse().unwrap();
    let r = rec(&id, a, NOW);
    assert_eq!(hex(&r.socket), "01020304765f");
    assert_eq!(
        hex(&signing_payload(&r.socket, r.timestamp)),
        "01020304765f0000018bcfe56800"
    );
    assert_eq!(record_namespace(NS), b"shoal-test/peer");
    assert_eq!(hex(&r.encode_to_vec()), RECORD_FIXTURE);
    let decoded = PeerRecord::decode(&*r.encode_to_vec()).unwrap();
    assert_eq!(
        verify_record(&ED25519, NS, &decoded).unwrap(),
        (id.public_key().clone(), a, NOW)
    );
    // The same record under another namespace does not verify.
    assert_eq!(
        verify_record(&ED25519, b"other", &decoded),
        Err(RecordRejected::BadSignature)
    );
}

/// Cross-checked independently with Python `cryptography` (Ed25519 over
/// `u32 BE len(ns) ‖ ns ‖ payload`, key = SHA-256 of the seed label and
/// seed) and a hand-written protobuf encoding.
const RECORD_FIXTURE: &str = "0a2093572038ba99a7ef49f8000f0f38eab965dac04e525dd68011e77005ee91933a120601020304765f1880d095ffbc312240e8272a3edfcafd4aea4ecbf16f9f78b3976f9183f69cb1f8a272716be6364acb4455752ea78d3698eb846497351a8828b6ecf2fc5b65f0193e39dd070647de01";

#[test]
fn discovery_socket_encoding_v4_v6() {
    let v6: SocketAddr = "[2001:4860::1]:443".parse().unwrap();
    let enc = encode_socket(v6);
    assert_eq!(hex(&enc), "2001486000000000000000000000000101bb");
    assert_eq!(decode_socket(&enc).unwrap(), v6);
    let v4: SocketAddr = "8.8.4.4:65535".parse().unwrap();
    assert_eq!(hex(&encode_socket(v4)), "08080404ffff");
    assert_eq!(decode_socket(&encode_socket(v4)).unwrap(), v4);
    for len in [0, 1, 5, 7, 17, 19, 32] {
        assert_eq!(
            decode_socket(&vec![1u8; len]),
            Err(RecordRejected::MalformedSocket { len })
        );
    }
    // Flow label and scope id are not encoded.
    let scoped = SocketAddr::V6(std::net::SocketAddrV6::new(
        "2001:4860::1".parse().unwrap(),
        443,
        7,
        9,
    ));
    assert_eq!(encode_socket(scoped), enc);
}

#[test]
fn discovery_record_tamper_refused() {
    let id = ident(1);
    let other = ident(2);
    let good = rec(&id, addr(1), NOW);
    assert!(verify_record(&ED25519, NS, &good).is_ok());

    let mut r = good.clone();
    r.socket = encode_socket(addr(2));
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::BadSignature)
    );

    let mut r = good.clone();
    r.timestamp += 1;
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::BadSignature)
    );

    let mut r = good.clone();
    r.public_key = other.public_key().to_bytes();
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::BadSignature)
    );

    let mut r = good.clone();
    r.public_key = Bytes::from_static(&[1, 2, 3]);
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::MalformedKey)
    );

    let mut r = good.clone();
    r.signature = r.signature.slice(..63);
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::BadSignature)
    );

    let mut r = good.clone();
    let mut sig = r.signature.to_vec();
    sig[10] ^= 1;
    r.signature = sig.into();
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::BadSignature)
    );

    let mut r = good.clone();
    r.socket = r.socket.slice(..5);
    assert_eq!(
        verify_record(&ED25519, NS, &r),
        Err(RecordRejected::MalformedSocket { len: 5 })
    );

    let zero = rec(&id, "8.8.8.8:0".parse().unwrap(), NOW);
    assert_eq!(
        verify_record(&ED25519, NS, &zero),
        Err(RecordRejected::ZeroPort)
    );

    // The same tampering through the book is refused as well, and nothing
    // is stored.
    let mut d = node(100, DiscoveryConfig::new(NS));
    d.register(0, vec![id.public_key().clone(), other.public_key().clone()]);
    let mut r = good.clone();
    r.timestamp += 1;
    assert_eq!(d.insert(&r, NOW), Err(RecordRejected::BadSignature));
    let mut r = good.clone();
    r.public_key = other.public_key().to_bytes();
    assert_eq!(d.insert(&r, NOW), Err(RecordRejected::BadSignature));
    assert_eq!(d.known(), 0);
    assert_eq!(d.insert(&good, NOW), Ok(Inserted::New));
    assert!(RecordRejected::BadSignature.is_misbehavior());
    assert!(!RecordRejected::Untracked.is_misbehavior());
}

// ---------------------------------------------------------------- book

#[test]
fn discovery_stale_never_overwrites_newer() {
    let id = ident(1);
    let mut d = node(100, DiscoveryConfig::new(NS));
    d.register(0, vec![id.public_key().clone()]);
    let k = id.public_key().clone();

    assert_eq!(d.insert(&rec(&id, addr(1), 2000), NOW), Ok(Inserted::New));
    // Older: ignored.
    assert_eq!(d.insert(&rec(&id, addr(2), 1000), NOW), Ok(Inserted::Stale));
    assert_eq!(d.address(&k), Some(addr(1)));
    assert_eq!(d.record(&k).unwrap().timestamp, 2000);
    // Equal timestamp, other address: ignored too.
    assert_eq!(d.insert(&rec(&id, addr(3), 2000), NOW), Ok(Inserted::Stale));
    assert_eq!(d.address(&k), Some(addr(1)));
    // Stale is reported without a signature check (documented).
    let mut forged = rec(&id, addr(4), 1500);
    forged.signature = Bytes::from_static(&[0; 64]);
    assert_eq!(d.insert(&forged, NOW), Ok(Inserted::Stale));
    // Newer: replaces.
    assert_eq!(
        d.insert(&rec(&id, addr(5), 3000), NOW),
        Ok(Inserted::Updated {
            address_changed: true
        })
    );
    assert_eq!(
        d.insert(&rec(&id, addr(5), 3001), NOW),
        Ok(Inserted::Updated {
            address_changed: false
        })
    );
    assert_eq!(d.address(&k), Some(addr(5)));
    assert_eq!(d.insert(&rec(&id, addr(1), 2000), NOW), Ok(Inserted::Stale));
    assert_eq!(d.address(&k), Some(addr(5)));
    assert_eq!(d.known(), 1);
}

#[test]
fn discovery_future_timestamp_refused() {
    let id = ident(1);
    let mut cfg = DiscoveryConfig::new(NS);
    cfg.synchrony_bound = Duration::from_secs(5);
    let mut d = node(100, cfg);
    d.register(0, vec![id.public_key().clone()]);
    assert_eq!(
        d.insert(&rec(&id, addr(1), NOW + 5_001), NOW),
        Err(RecordRejected::FutureTimestamp {
            timestamp: NOW + 5_001,
            now_ms: NOW
        })
    );
    assert_eq!(d.known(), 0);
    assert_eq!(
        d.insert(&rec(&id, addr(1), NOW + 5_000), NOW),
        Ok(Inserted::New)
    );
    // Near the end of time, no overflow.
    assert_eq!(
        d.insert(&rec(&id, addr(1), u64::MAX), u64::MAX - 1),
        Ok(Inserted::Updated {
            address_changed: false
        })
    );
}

#[test]
fn discovery_untracked_self_and_own() {
    let id = ident(1);
    let stranger = ident(2);
    let me = ident(100);
    let mut d = Discovery::new(DiscoveryConfig::new(NS), me.clone());
    d.register(0, vec![id.public_key().clone(), me.public_key().clone()]);
    assert_eq!(
        d.insert(&rec(&stranger, addr(2), NOW), NOW),
        Err(RecordRejected::Untracked)
    );
    assert_eq!(
        d.insert(&rec(&me, addr(3), NOW), NOW),
        Err(RecordRejected::SelfRecord)
    );
    assert_eq!(
        d.set_own(rec(&id, addr(1), NOW)),
        Err(RecordRejected::NotOwnKey)
    );
    let mut bad = rec(&me, addr(3), NOW);
    bad.timestamp += 1;
    assert_eq!(d.set_own(bad), Err(RecordRejected::BadSignature));
    assert!(d.own_record().is_none());
    let own = d.refresh_own(addr(3), NOW);
    assert_eq!(d.own_record(), Some(&own));
    assert_eq!(d.address(me.public_key()), Some(addr(3)));
    // Own record is not dialable and not counted as known.
    d.insert(&rec(&id, addr(1), NOW), NOW).unwrap();
    assert_eq!(d.dialable(), vec![(id.public_key().clone(), addr(1))]);
    assert_eq!(d.known(), 1);
}

#[test]
fn discovery_address_policy_table() {
    let refused = [
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "169.254.1.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.255",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::1.2.3.4",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:192.168.0.1",
        "64:ff9b::10.0.0.1",
        "100::1",
        "2001:db8::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
    ];
    let allowed = [
        "1.1.1.1",
        "8.8.8.8",
        "11.0.0.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2001:4860:4860::8888",
        "2606:4700::1111",
        "2002:c000:0204::1",
    ];
    for ip in refused {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(!is_publicly_routable(ip), "{ip} should be refused");
    }
    for ip in allowed {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(is_publicly_routable(ip), "{ip} should be allowed");
    }
}

#[test]
fn discovery_private_refused_or_allowed_by_policy() {
    let id = ident(1);
    let cases: [SocketAddr; 4] = [
        "127.0.0.1:9000".parse().unwrap(),
        "192.168.1.10:9000".parse().unwrap(),
        "[fe80::1]:9000".parse().unwrap(),
        "[::ffff:10.0.0.1]:9000".parse().unwrap(),
    ];
    for (i, a) in cases.into_iter().enumerate() {
        let ts = NOW + i as u64;
        let mut strict = node(100, DiscoveryConfig::new(NS));
        strict.register(0, vec![id.public_key().clone()]);
        assert_eq!(
            strict.insert(&rec(&id, a, ts), NOW),
            Err(RecordRejected::Private(a.ip()))
        );
        assert_eq!(strict.known(), 0);

        let mut cfg = DiscoveryConfig::new(NS);
        cfg.allow_private_ips = true;
        let mut lax = node(100, cfg);
        lax.register(0, vec![id.public_key().clone()]);
        assert_eq!(lax.insert(&rec(&id, a, ts), NOW), Ok(Inserted::New));
        assert_eq!(lax.dialable(), vec![(id.public_key().clone(), a)]);
    }
}

// ---------------------------------------------------------------- sets

#[test]
fn discovery_register_window_and_prune() {
    let ids = sorted_set(1, 4);
    let mut cfg = DiscoveryConfig::new(NS);
    cfg.tracked_peer_sets = 2;
    let mut d = node(100, cfg);
    // Unsorted, duplicated input is sorted and deduplicated.
    let mut set1 = vec![ids[1].public_key().clone(), ids[0].public_key().clone()];
    set1.push(ids[0].public_key().clone());
    assert_eq!(d.register(1, set1), Registered::Added);
    assert_eq!(d.peer_set(1).unwrap(), &keys(&ids[..2])[..]);
    assert_eq!(d.register(2, keys(&ids[1..3])), Registered::Added);
    for (i, id) in ids.iter().enumerate().take(3) {
        d.insert(&rec(id, addr(i as u64), NOW), NOW).unwrap();
    }
    assert_eq!(d.known(), 3);
    // Set 3 evicts set 1: ids[0] leaves every tracked set, its record goes.
    assert_eq!(d.register(3, keys(&ids[2..4])), Registered::Added);
    assert_eq!(d.tracked_indexes(), vec![2, 3]);
    assert!(!d.is_tracked(ids[0].public_key()));
    assert_eq!(d.known(), 2);
    assert!(d.record(ids[0].public_key()).is_none());
    assert_eq!(d.tracked_keys(), keys(&ids[1..4]));
    // Lower than every tracked index with a full window: nothing changes.
    assert_eq!(d.register(0, keys(&ids)), Registered::Outdated);
    assert_eq!(d.tracked_indexes(), vec![2, 3]);
    // Replacing set 2 drops ids[1].
    assert_eq!(d.register(2, keys(&ids[2..3])), Registered::Replaced);
    assert_eq!(d.known(), 1);
    assert_eq!(d.dialable(), vec![(ids[2].public_key().clone(), addr(2))]);
    assert!(d.bit_vec(1).is_none());
}

/// `n` keys, the observer knows the positions in `known`: returns the bits.
fn bits_for(n: usize, known: &[usize]) -> (Discovery, Vec<Identity>, Vec<u8>) {
    let ids = sorted_set(1000, n);
    let mut d = node(1, DiscoveryConfig::new(NS));
    d.register(5, keys(&ids));
    for &i in known {
        d.insert(&rec(&ids[i], addr(i as u64), NOW), NOW).unwrap();
    }
    let bv = d.bit_vec(5).unwrap();
    assert_eq!(bv.index, 5);
    assert_eq!(bv.bits.len(), n.div_ceil(8));
    let bits = bv.bits.to_vec();
    (d, ids, bits)
}

#[test]
fn discovery_bit_vec_fixtures() {
    let all = |n: usize| (0..n).collect::<Vec<_>>();
    let cases: Vec<(usize, Vec<usize>, Vec<u8>)> = vec![
        (1, vec![], vec![0x00]),
        (1, vec![0], vec![0x80]),
        (7, vec![0, 2, 6], vec![0xa2]),
        (7, all(7), vec![0xfe]),
        (8, vec![0, 7], vec![0x81]),
        (8, all(8), vec![0xff]),
        (8, vec![], vec![0x00]),
        (9, vec![8], vec![0x00, 0x80]),
        (9, all(9), vec![0xff, 0x80]),
        (16, vec![0, 8, 15], vec![0x80, 0x81]),
        (16, all(16), vec![0xff, 0xff]),
        (64, (0..64).step_by(2).collect(), vec![0xaa; 8]),
        (64, all(64), vec![0xff; 8]),
        (64, vec![63], vec![0, 0, 0, 0, 0, 0, 0, 0x01]),
        (
            64,
            vec![0, 9, 18, 27, 36, 45, 54, 63],
            vec![0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01],
        ),
    ];
    for (n, known, expected) in cases {
        let (_, _, bits) = bits_for(n, &known);
        assert_eq!(bits, expected, "n = {n}, known = {known:?}");
        assert!(check_bits(n, &bits).is_ok());
        for i in 0..n {
            assert_eq!(get_bit(&bits, i), known.contains(&i));
        }
    }
    assert_eq!(bit_vec_len(0), 0);
    assert_eq!(encode_bits(0, |_| true), Vec::<u8>::new());
    assert!(check_bits(0, &[]).is_ok());
}

#[test]
fn discovery_bit_vec_own_bit() {
    let ids = sorted_set(1, 8);
    let mut d = Discovery::new(DiscoveryConfig::new(NS), ids[3].clone());
    d.register(0, keys(&ids));
    assert_eq!(d.bit_vec(0).unwrap().bits.as_ref(), &[0x00]);
    d.refresh_own(addr(3), NOW);
    assert_eq!(d.bit_vec(0).unwrap().bits.as_ref(), &[0x10]);
}

#[test]
fn discovery_bit_vec_rejections() {
    let mut rng = StdRng::seed_from_u64(1);
    let cases: Vec<(usize, Vec<u8>, BitVecRejected)> = vec![
        (
            1,
            vec![],
            BitVecRejected::WrongLength {
                expected: 1,
                got: 0,
            },
        ),
        (1, vec![0x40], BitVecRejected::NonzeroPadding),
        (1, vec![0x01], BitVecRejected::NonzeroPadding),
        (7, vec![0x01], BitVecRejected::NonzeroPadding),
        (
            7,
            vec![0, 0],
            BitVecRejected::WrongLength {
                expected: 1,
                got: 2,
            },
        ),
        (
            8,
            vec![0xff, 0x00],
            BitVecRejected::WrongLength {
                expected: 1,
                got: 2,
            },
        ),
        (
            8,
            vec![],
            BitVecRejected::WrongLength {
                expected: 1,
                got: 0,
            },
        ),
        (
            9,
            vec![0xff],
            BitVecRejected::WrongLength {
                expected: 2,
                got: 1,
            },
        ),
        (9, vec![0x00, 0x40], BitVecRejected::NonzeroPadding),
        (9, vec![0x00, 0x01], BitVecRejected::NonzeroPadding),
        (
            16,
            vec![0; 3],
            BitVecRejected::WrongLength {
                expected: 2,
                got: 3,
            },
        ),
        (
            16,
            vec![0; 1],
            BitVecRejected::WrongLength {
                expected: 2,
                got: 1,
            },
        ),
        (
            64,
            vec![0; 9],
            BitVecRejected::WrongLength {
                expected: 8,
                got: 9,
            },
        ),
        (
            64,
            vec![0; 7],
            BitVecRejected::WrongLength {
                expected: 8,
                got: 7,
            },
        ),
    ];
    for (n, bits, expected) in cases {
        let (d, _, _) = bits_for(n, &[]);
        let bv = BitVec {
            index: 5,
            bits: bits.clone().into(),
        };
        assert_eq!(
            d.handle_bit_vec(&bv, &mut rng),
            Err(expected),
            "n = {n}, bits = {bits:?}"
        );
    }
    let (d, _, bits) = bits_for(8, &[1]);
    let bv = BitVec {
        index: 6,
        bits: bits.into(),
    };
    assert_eq!(
        d.handle_bit_vec(&bv, &mut rng),
        Err(BitVecRejected::UntrackedIndex(6))
    );
}

#[test]
fn discovery_answer_only_lacking_and_bounded() {
    let n = 40;
    let ids = sorted_set(500, n);
    let set = keys(&ids);
    let answerer_knows: BTreeSet<usize> = (0..30).collect();
    let pinger_knows: BTreeSet<usize> = (20..35).collect();

    let build = |seed: u64, knows: &BTreeSet<usize>, max: usize| {
        let mut cfg = DiscoveryConfig::new(NS);
        cfg.peer_gossip_max = max;
        let mut d = node(seed, cfg);
        d.register(9, set.clone());
        for &i in knows {
            d.insert(&rec(&ids[i], addr(i as u64), NOW), NOW).unwrap();
        }
        d
    };
    let pinger = build(1, &pinger_knows, 8);
    let ping = pinger.bit_vec(9).unwrap();
    let lacking: BTreeSet<PublicKey> = answerer_knows
        .difference(&pinger_knows)
        .map(|&i| set[i].clone())
        .collect();
    assert_eq!(lacking.len(), 20);

    let answerer = build(2, &answerer_knows, 8);
    let answer = |seed: u64| {
        let mut rng = StdRng::seed_from_u64(seed);
        answerer.handle_bit_vec(&ping, &mut rng).unwrap()
    };
    let a = answer(42);
    assert_eq!(a.peers.len(), 8);
    let got: BTreeSet<PublicKey> = a
        .peers
        .iter()
        .map(|r| PublicKey::from_bytes_unchecked(r.public_key.clone()))
        .collect();
    assert_eq!(got.len(), 8, "no duplicates");
    assert!(got.is_subset(&lacking));
    // Deterministic for a seed, different picks for other seeds.
    assert_eq!(answer(42), a);
    let union: BTreeSet<PublicKey> = (0..20)
        .flat_map(|s| answer(s).peers)
        .map(|r| PublicKey::from_bytes_unchecked(r.public_key))
        .collect();
    assert_eq!(union, lacking, "random picks cover everything lacking");

    // With a large bound, exactly what is lacking.
    let generous = build(2, &answerer_knows, 100);
    let all = generous
        .handle_bit_vec(&ping, &mut StdRng::seed_from_u64(0))
        .unwrap();
    let got: BTreeSet<PublicKey> = all
        .peers
        .iter()
        .map(|r| PublicKey::from_bytes_unchecked(r.public_key.clone()))
        .collect();
    assert_eq!(got, lacking);

    // The pinger takes the answer: it gains exactly those records.
    let mut pinger = pinger;
    let out = pinger.handle_peers(&a, NOW).unwrap();
    assert_eq!(out.accepted.len(), 8);
    assert_eq!((out.stale, out.rejected.len()), (0, 0));
    assert_eq!(pinger.known(), 15 + 8);

    // Nothing lacking: empty answer.
    let full = build(3, &(0..n).collect(), 8);
    let ping_full = full.bit_vec(9).unwrap();
    assert!(answerer
        .handle_bit_vec(&ping_full, &mut StdRng::seed_from_u64(0))
        .unwrap()
        .peers
        .is_empty());
}

#[test]
fn discovery_handle_peers_bounded_and_mixed() {
    let ids = sorted_set(1, 40);
    let mut d = node(100, DiscoveryConfig::new(NS));
    d.register(0, keys(&ids[..35]));
    let too_many = Peers {
        peers: ids
            .iter()
            .take(33)
            .enumerate()
            .map(|(i, id)| rec(id, addr(i as u64), NOW))
            .collect(),
    };
    assert_eq!(
        d.handle_peers(&too_many, NOW),
        Err(PeersRejected::TooMany { got: 33, max: 32 })
    );
    assert_eq!(d.known(), 0);

    d.insert(&rec(&ids[0], addr(0), NOW + 10), NOW).unwrap();
    let mut tampered = rec(&ids[2], addr(2), NOW);
    tampered.timestamp += 1;
    let batch = Peers {
        peers: vec![
            rec(&ids[0], addr(0), NOW), // stale
            rec(&ids[1], addr(1), NOW), // new
            tampered,
            rec(&ids[36], addr(36), NOW), // untracked
            rec(&ids[3], "10.0.0.1:1".parse().unwrap(), NOW), // private
            rec(&ids[4], addr(4), NOW + 60_000), // future
            rec(&ids[5], addr(5), NOW),   // new
        ],
    };
    let out = d.handle_peers(&batch, NOW).unwrap();
    assert_eq!(
        out,
        PeersOutcome {
            accepted: vec![
                (ids[1].public_key().clone(), addr(1)),
                (ids[5].public_key().clone(), addr(5)),
            ],
            stale: 1,
            rejected: vec![
                RecordRejected::BadSignature,
                RecordRejected::Untracked,
                RecordRejected::Private("10.0.0.1".parse().unwrap()),
                RecordRejected::FutureTimestamp {
                    timestamp: NOW + 60_000,
                    now_ms: NOW
                },
            ],
            moved: vec![],
        }
    );
    assert_eq!(d.known(), 3);
}

#[test]
fn discovery_random_ping_picks_tracked_indexes() {
    let ids = sorted_set(1, 9);
    let mut d = node(100, DiscoveryConfig::new(NS));
    let mut rng = StdRng::seed_from_u64(3);
    assert!(d.random_ping(&mut rng).is_none());
    d.register(10, keys(&ids[..3]));
    d.register(11, keys(&ids[3..9]));
    d.register(12, keys(&ids));
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let bv = d.random_ping(&mut rng).unwrap();
        let n = d.peer_set(bv.index).unwrap().len();
        assert_eq!(bv.bits.len(), n.div_ceil(8));
        seen.insert(bv.index);
    }
    assert_eq!(seen, BTreeSet::from([10, 11, 12]));
}

// ---------------------------------------------------------------- simulation

struct Sim {
    nodes: Vec<Discovery>,
    rng: StdRng,
}

impl Sim {
    fn new(n: usize, gossip_max: usize) -> Self {
        let ids: Vec<Identity> = (0..n as u64).map(|s| ident(10_000 + s)).collect();
        let set = keys(&ids);
        let mut nodes: Vec<Discovery> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut cfg = DiscoveryConfig::new(NS);
                cfg.peer_gossip_max = gossip_max;
                let mut d = Discovery::new(cfg, id.clone());
                d.register(0, set.clone());
                d.refresh_own(addr(i as u64), NOW);
                d
            })
            .collect();
        // Everyone is bootstrapped with node 0's record; node 0 with node 1's.
        let boot0 = nodes[0].own_record().unwrap().clone();
        let boot1 = nodes[1].own_record().unwrap().clone();
        for (i, d) in nodes.iter_mut().enumerate() {
            let boot = if i == 0 { &boot1 } else { &boot0 };
            assert_eq!(d.insert(boot, NOW), Ok(Inserted::New));
        }
        Self {
            nodes,
            rng: StdRng::seed_from_u64(2024),
        }
    }

    fn index_of(&self, key: &PublicKey) -> usize {
        self.nodes
            .iter()
            .position(|d| d.public_key() == key)
            .unwrap()
    }

    /// `from` pings `to` with a random bit vector; `from` takes the answer.
    fn ping(&mut self, from: usize, to: usize, now: u64) {
        let bv = self.nodes[from].random_ping(&mut self.rng).unwrap();
        let answer = self.nodes[to].handle_bit_vec(&bv, &mut self.rng).unwrap();
        if !answer.peers.is_empty() {
            let out = self.nodes[from].handle_peers(&answer, now).unwrap();
            assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        }
    }

    fn converged(&self) -> bool {
        let n = self.nodes.len();
        self.nodes.iter().all(|d| d.known() == n - 1)
    }
}

/// Engine-like: each round every node "connects" to every dialable peer it
/// is not connected to yet (both sides send their own record), then pings
/// every connected peer once.
#[test]
fn discovery_simulation_50_nodes_converge() {
    let n = 50;
    let mut sim = Sim::new(n, 32);
    let mut connected: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut rounds = 0;
    while !sim.converged() {
        rounds += 1;
        assert!(rounds <= 5, "no convergence after 5 rounds");
        let now = NOW + rounds * 1000;
        for i in 0..n {
            for (key, _) in sim.nodes[i].dialable() {
                let j = sim.index_of(&key);
                if connected.insert((i.min(j), i.max(j))) {
                    let ri = Peers {
                        peers: vec![sim.nodes[i].own_record().unwrap().clone()],
                    };
                    let rj = Peers {
                        peers: vec![sim.nodes[j].own_record().unwrap().clone()],
                    };
                    sim.nodes[j].handle_peers(&ri, now).unwrap();
                    sim.nodes[i].handle_peers(&rj, now).unwrap();
                }
            }
        }
        let pairs: Vec<(usize, usize)> = connected.iter().copied().collect();
        for (a, b) in pairs {
            sim.ping(a, b, now);
            sim.ping(b, a, now);
        }
    }
    println!("discovery simulation (engine-like, {n} nodes, gossip max 32): converged in {rounds} rounds");
    for d in &sim.nodes {
        assert_eq!(d.dialable().len(), n - 1);
        assert_eq!(
            d.bit_vec(0).unwrap().bits.as_ref(),
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0]
        );
    }
}

/// Sparse, harsher: each round every node dials ONE random peer it knows,
/// sends it only its own record (the dialee sends nothing back), pings it
/// once; the gossip bound is 4.
#[test]
fn discovery_simulation_50_nodes_sparse() {
    let n = 50;
    let mut sim = Sim::new(n, 4);
    let mut rounds = 0u64;
    while !sim.converged() {
        rounds += 1;
        assert!(rounds <= 30, "no convergence after 30 rounds");
        for i in 0..n {
            let peers = sim.nodes[i].dialable();
            let pick = sim.rng.gen_range(0..peers.len());
            let j = sim.index_of(&peers[pick].0);
            let now = NOW + rounds * 1000;
            let own = Peers {
                peers: vec![sim.nodes[i].own_record().unwrap().clone()],
            };
            sim.nodes[j].handle_peers(&own, now).unwrap();
            sim.ping(i, j, now);
        }
    }
    println!("discovery simulation (sparse, {n} nodes, gossip max 4, one dial + ping per node per round): converged in {rounds} rounds");
}
