//! The TOML file read by `shoal node --config` and `shoal bench --config`.
//!
//! One flat table: a `preset`, then optional overrides named exactly like
//! the fields of [`shoal::engine::Config`], then the node's own settings
//! (`identity`, `peers`, `echo_channel`, `metrics`, an optional `[probe]`
//! table) and an optional `[bench]` table that only `shoal bench` reads.
//! Unknown fields are errors.
//!
//! Durations are strings: an integer followed by `ms`, `s`, `m` or `h`
//! (`"500ms"`, `"10s"`, `"2m"`). Bare integers are rejected so that a unit is
//! never guessed.
//!
//! See `docs/operating.md` for a complete, commented example.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use shoal::crypto::{Scheme, ED25519};
use shoal::engine::{Backend, Config, Ed25519Signer, PublicKey};

/// A config problem, naming the field it is about.
#[derive(Debug)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Which [`Config`] constructor the overrides apply to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// `Config::recommended`: validators on the public internet.
    #[default]
    Recommended,
    /// `Config::aggressive`: faster dialing and pinging.
    Aggressive,
    /// `Config::local`: loopback clusters, tests, benchmarks.
    Local,
}

/// A duration written as `"<integer><unit>"`, unit one of ms, s, m, h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "the unit must be us, ms, s, m or h (e.g. \"500ms\", \"10s\")";
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"10s\", \"2m\""))?;
    let d = match unit.trim() {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("invalid duration {s:?}: {UNITS}")),
    };
    Ok(d)
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"10s\" or \"2m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// One `[[peers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Ed25519 public key, 64 hex characters.
    pub key: String,
    /// Where to dial it (optional: it may dial us instead).
    pub address: Option<SocketAddr>,
}

/// The optional `[bench]` table (read by `shoal bench --config` only;
/// command-line flags override it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    pub scenario: Option<String>,
    pub size: Option<usize>,
    pub messages: Option<usize>,
    pub rounds: Option<usize>,
    pub inflight: Option<usize>,
    pub peers: Option<usize>,
}

/// The optional `[probe]` table of `shoal node`: a delivery probe for test
/// clusters. The node registers `channel` and, every `interval`, sends each
/// connected `[[peers]]` key its next sequence number (per peer, from 1) and
/// the send time; it counts what it sends and receives per peer in the
/// `shoal_probe_*` metrics. Not meant for production nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// Channel id the probe registers (must differ from `echo_channel`).
    pub channel: u32,
    /// Period between two probes to a peer (default 1s).
    pub interval: Option<HumanDuration>,
    /// Probes per peer, then stop sending (default: no limit).
    pub count: Option<u64>,
}

impl ProbeSection {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    pub fn interval(&self) -> Duration {
        self.interval.map_or(Self::DEFAULT_INTERVAL, |d| d.0)
    }
}

/// The whole file. Field names of the engine overrides match
/// [`shoal::engine::Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    // --- node ---
    pub identity: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub echo_channel: Option<u32>,
    pub metrics: Option<SocketAddr>,
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    // --- engine ---
    #[serde(default)]
    pub preset: Preset,
    pub backend: Option<Backend>,
    pub shards: Option<usize>,
    pub force_shards: Option<bool>,
    pub namespace: Option<String>,
    pub pin_cores: Option<bool>,
    pub core_offset: Option<usize>,
    pub busy_poll: Option<bool>,
    pub uring_doorbell: Option<bool>,
    pub wait_spin: Option<HumanDuration>,
    pub idle_spin: Option<HumanDuration>,
    pub max_frame_body: Option<usize>,
    pub max_message_size: Option<usize>,
    pub handshake_max_age: Option<HumanDuration>,
    pub synchrony_bound: Option<HumanDuration>,
    pub handshake_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub ping_interval: Option<HumanDuration>,
    pub advertise: Option<SocketAddr>,
    pub tracked_peer_sets: Option<usize>,
    pub peer_gossip_max: Option<usize>,
    pub gossip_interval: Option<HumanDuration>,
    pub allow_private_ips: Option<bool>,
    pub control_queue: Option<usize>,
    pub dial_frequency: Option<HumanDuration>,
    /// Accepted under its former name too.
    #[serde(alias = "dial_attempts")]
    pub dial_quick_attempts: Option<u32>,
    pub dial_backoff_min: Option<HumanDuration>,
    pub dial_backoff_max: Option<HumanDuration>,
    pub max_inbound: Option<usize>,
    pub max_inbound_per_ip: Option<usize>,
    pub accept_rate_per_ip: Option<u32>,
    pub accept_burst_per_ip: Option<u32>,
    pub misbehavior_cooldown: Option<HumanDuration>,
    pub max_outbound: Option<usize>,
    pub peer_send_backlog: Option<usize>,
    pub peer_send_bytes: Option<usize>,
    pub write_timeout: Option<HumanDuration>,
    pub max_write_batch: Option<usize>,
    pub max_in_progress_bytes: Option<usize>,
    pub max_in_progress_messages: Option<usize>,
    pub max_pending_requests: Option<usize>,
    pub shard_queue: Option<usize>,
    pub recv_buffers: Option<u16>,
    pub recv_buffer_size: Option<usize>,
    pub uring_entries: Option<u32>,
    // --- bench ---
    pub bench: Option<BenchSection>,
    // --- delivery probe (`shoal node` only) ---
    pub probe: Option<ProbeSection>,
}

/// A resolved peer.
pub struct Peer {
    pub key: PublicKey,
    pub address: Option<SocketAddr>,
}

impl FileConfig {
    /// Reads and parses `path`. The error text names the field (toml's
    /// message quotes the offending line).
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| describe_toml_error(&text, &e))
    }

    /// The preset with every override applied (identity left random,
    /// `listen` as given). Does not run [`Config::validate`].
    pub fn engine_config(&self, listen: Option<SocketAddr>) -> Config {
        let mut c = match self.preset {
            Preset::Recommended => Config::recommended(listen),
            Preset::Aggressive => Config::aggressive(listen),
            Preset::Local => Config::local(listen),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_dur {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v.0; } )* };
        }
        set!(
            backend,
            shards,
            force_shards,
            pin_cores,
            core_offset,
            busy_poll,
            uring_doorbell,
            max_frame_body,
            max_message_size,
            dial_quick_attempts,
            max_inbound,
            max_inbound_per_ip,
            accept_rate_per_ip,
            accept_burst_per_ip,
            max_outbound,
            peer_send_backlog,
            peer_send_bytes,
            max_write_batch,
            max_in_progress_bytes,
            max_in_progress_messages,
            max_pending_requests,
            tracked_peer_sets,
            peer_gossip_max,
            allow_private_ips,
            control_queue,
            shard_queue,
            recv_buffers,
            recv_buffer_size,
            uring_entries
        );
        set_dur!(
            misbehavior_cooldown,
            write_timeout,
            wait_spin,
            idle_spin,
            handshake_max_age,
            synchrony_bound,
            handshake_timeout,
            idle_timeout,
            ping_interval,
            gossip_interval,
            dial_frequency,
            dial_backoff_min,
            dial_backoff_max
        );
        if let Some(ns) = &self.namespace {
            c.namespace = ns.as_bytes().to_vec();
        }
        if self.advertise.is_some() {
            c.advertise = self.advertise;
        }
        c
    }

    /// The full node config: identity loaded (relative paths are relative
    /// to the config file's directory), peers parsed, everything validated.
    /// Returns whether the identity was generated (no `identity` field).
    pub fn node_config(&self, base_dir: &Path) -> Result<(Config, Vec<Peer>, bool), ConfigError> {
        let mut c = self.engine_config(self.listen);
        let random = match &self.identity {
            None => true,
            Some(p) => {
                let path = if p.is_relative() {
                    base_dir.join(p)
                } else {
                    p.clone()
                };
                let signer =
                    Ed25519Signer::load(&path).map_err(|e| bad("identity", e.to_string()))?;
                c.identity = Arc::new(signer);
                false
            }
        };
        if let Some(ns) = &self.namespace {
            if ns.is_empty() {
                return Err(bad("namespace", "must not be empty"));
            }
        }
        if self.echo_channel.is_some() && self.listen.is_none() && self.peers.is_empty() {
            return Err(bad(
                "echo_channel",
                "needs `listen` or `peers`: nobody could reach this node",
            ));
        }
        if let Some(p) = &self.probe {
            if self.echo_channel == Some(p.channel) {
                return Err(bad("probe.channel", "must differ from `echo_channel`"));
            }
            if p.interval().is_zero() {
                return Err(bad("probe.interval", "must be longer than 0"));
            }
            if self.peers.is_empty() {
                return Err(bad(
                    "probe",
                    "needs `peers`: it probes the `[[peers]]` keys",
                ));
            }
        }
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let key = parse_key(&p.key).map_err(|r| bad(format!("peers[{i}].key"), r))?;
            if &key == c.identity.public_key() {
                return Err(bad(format!("peers[{i}].key"), "is this node's own key"));
            }
            peers.push(Peer {
                key,
                address: p.address,
            });
        }
        c.validate().map_err(engine_error)?;
        Ok((c, peers, random))
    }
}

/// "`field`: what is wrong (line L, column C)", naming the field from the
/// error's position (the key on that line, qualified by its `[table]`).
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let Some(span) = e.span() else {
        return msg.to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count();
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    // The innermost table header above the line, if any.
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let at = format!("(line {}, column {column})", line_no + 1);
    match (key, table) {
        (Some(k), Some(t)) => format!("`{t}.{k}`: {msg} {at}"),
        (Some(k), None) => format!("`{k}`: {msg} {at}"),
        (None, _) => format!("{msg} {at}"),
    }
}

/// Maps an engine config error to a [`ConfigError`].
pub fn engine_error(e: shoal::engine::Error) -> ConfigError {
    match e {
        shoal::engine::Error::InvalidConfig { field, reason } => bad(field, reason),
        other => bad("config", other.to_string()),
    }
}

/// Parses a hex Ed25519 public key.
pub fn parse_key(hex: &str) -> Result<PublicKey, String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(format!(
            "must be 64 hex characters (an Ed25519 public key), got {}",
            hex.len()
        ));
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
            .map_err(|_| "is not hex".to_string())?;
    }
    ED25519
        .parse_public_key(&bytes)
        .map_err(|e| format!("is not a valid Ed25519 public key ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_quick_attempts_is_also_read_under_its_former_name() {
        for toml in ["dial_quick_attempts = 5", "dial_attempts = 5"] {
            let f: FileConfig = toml::from_str(toml).unwrap();
            assert_eq!(f.engine_config(None).dial_quick_attempts, 5, "{toml}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let e = toml::from_str::<FileConfig>("idle_timeot = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("idle_timeot"), "{e}");
        let e = toml::from_str::<FileConfig>("idle_timeout = 10").unwrap_err();
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        let e = toml::from_str::<FileConfig>("backend = \"kqueue\"").unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
    }

    #[test]
    fn session_7_keys_parse_as_documented() {
        let f: FileConfig =
            toml::from_str("uring_doorbell = false\nmax_inbound_per_ip = 3").unwrap();
        let c = f.engine_config(None);
        assert!(!c.uring_doorbell);
        assert_eq!(c.max_inbound_per_ip, 3);
        // Defaults (recommended) as docs/operating.md lists them.
        let c = FileConfig::default().engine_config(None);
        assert!(c.uring_doorbell);
        assert_eq!(c.max_inbound_per_ip, 8);
    }

    #[test]
    fn session_8_keys_parse_as_documented() {
        let f: FileConfig =
            toml::from_str("accept_rate_per_ip = 1\naccept_burst_per_ip = 2").unwrap();
        let c = f.engine_config(None);
        assert_eq!((c.accept_rate_per_ip, c.accept_burst_per_ip), (1, 2));
        let f: FileConfig = toml::from_str("misbehavior_cooldown = \"0s\"").unwrap();
        assert_eq!(f.engine_config(None).misbehavior_cooldown, Duration::ZERO);
        assert_eq!(
            FileConfig::default()
                .engine_config(None)
                .misbehavior_cooldown,
            Duration::from_secs(10)
        );
        let f: FileConfig = toml::from_str("preset = \"local\"").unwrap();
        assert_eq!(f.engine_config(None).misbehavior_cooldown, Duration::ZERO);
        let f: FileConfig = toml::from_str("uring_entries = 64").unwrap();
        assert_eq!(f.engine_config(None).uring_entries, 64);
        let f: FileConfig = toml::from_str("uring_entries = 100").unwrap();
        let e = f.engine_config(None).validate().unwrap_err();
        assert!(e.to_string().contains("uring_entries"), "{e}");
        assert_eq!(
            FileConfig::default().engine_config(None).uring_entries,
            4096
        );
        // Defaults as docs/operating.md lists them: recommended 4 / 16,
        // local no rate limit.
        let c = FileConfig::default().engine_config(None);
        assert_eq!((c.accept_rate_per_ip, c.accept_burst_per_ip), (4, 16));
        let f: FileConfig = toml::from_str("preset = \"local\"").unwrap();
        assert_eq!(f.engine_config(None).accept_rate_per_ip, 0);
        // A rate without a burst is refused by name.
        let f: FileConfig =
            toml::from_str("accept_rate_per_ip = 1\naccept_burst_per_ip = 0").unwrap();
        let e = f.engine_config(None).validate().unwrap_err();
        assert!(e.to_string().contains("accept_burst_per_ip"), "{e}");
    }

    #[test]
    fn overrides_apply_and_validate_names_fields() {
        let f: FileConfig =
            toml::from_str("preset = \"local\"\nidle_timeout = \"1s\"\nping_interval = \"2s\"")
                .unwrap();
        let c = f.engine_config(None);
        assert_eq!(c.idle_timeout, Duration::from_secs(1));
        let e = f.node_config(Path::new(".")).err().unwrap();
        assert_eq!(e.field, "idle_timeout");
        // wait_spin is in µs; over 10 ms is refused by name.
        let f: FileConfig = toml::from_str("wait_spin = \"250us\"").unwrap();
        assert_eq!(f.engine_config(None).wait_spin, Duration::from_micros(250));
        let f: FileConfig = toml::from_str("idle_spin = \"20ms\"").unwrap();
        assert_eq!(
            f.node_config(Path::new(".")).err().unwrap().field,
            "idle_spin"
        );
        let f: FileConfig = toml::from_str("wait_spin = \"11ms\"").unwrap();
        assert_eq!(
            f.node_config(Path::new(".")).err().unwrap().field,
            "wait_spin"
        );
    }

    #[test]
    fn probe_section() {
        let f: FileConfig =
            toml::from_str("[probe]\nchannel = 9\ninterval = \"250ms\"\ncount = 20").unwrap();
        let p = f.probe.as_ref().unwrap();
        assert_eq!((p.channel, p.count), (9, Some(20)));
        assert_eq!(p.interval(), Duration::from_millis(250));
        let f: FileConfig = toml::from_str("[probe]\nchannel = 9").unwrap();
        let p = f.probe.as_ref().unwrap();
        assert_eq!((p.interval(), p.count), (Duration::from_secs(1), None));
        let e = toml::from_str::<FileConfig>("[probe]\nchanel = 9").unwrap_err();
        assert!(e.to_string().contains("chanel"), "{e}");
        let e = toml::from_str::<FileConfig>("[probe]\nchannel = 9\ninterval = 5").unwrap_err();
        assert!(e.to_string().contains("interval"), "{e}");

        let peer = shoal::crypto::Signer::public_key(&Ed25519Signer::generate()).clone();
        let with_peer = |extra: &str| -> FileConfig {
            toml::from_str(&format!("{extra}\n[[peers]]\nkey = \"{peer:#}\"")).unwrap()
        };
        let e = with_peer("echo_channel = 9\n[probe]\nchannel = 9")
            .node_config(Path::new("."))
            .err()
            .unwrap();
        assert_eq!(e.field, "probe.channel");
        let e = with_peer("[probe]\nchannel = 9\ninterval = \"0ms\"")
            .node_config(Path::new("."))
            .err()
            .unwrap();
        assert_eq!(e.field, "probe.interval");
        assert!(with_peer("echo_channel = 7\n[probe]\nchannel = 9")
            .node_config(Path::new("."))
            .is_ok());
        let f: FileConfig =
            toml::from_str("listen = \"127.0.0.1:0\"\n[probe]\nchannel = 9").unwrap();
        assert_eq!(f.node_config(Path::new(".")).err().unwrap().field, "probe");
    }

    #[test]
    fn keys() {
        let s = Ed25519Signer::generate();
        let pk = shoal::crypto::Signer::public_key(&s).clone();
        assert_eq!(parse_key(&format!("{pk:#}")).unwrap(), pk);
        assert!(parse_key("abcd").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }
}
