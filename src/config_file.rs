//! The TOML file read by `shoal node --config` and `shoal bench --config`.
//!
//! # Design
//!
//! The file is the engine's [`Config`] tree, its sections the engine's own
//! types (`[identity]`, `[listen]`, `[timeouts]`, `[limits]`,
//! `[admission]`, `[discovery]`, `[io]`, `[io.uring]`; each field is
//! documented there, once), beside a top-level `preset` and what only this
//! binary reads: `[node]`, `[[peers]]`, `[probe]` and `[gossip]` (`shoal node`) and
//! `[bench]` (`shoal bench`). Every table refuses unknown keys, and every
//! engine field the file leaves out takes the preset's value
//! ([`Preset::load`]). Errors name the key by its dotted path and line.
//!
//! Durations are strings: an integer followed by `us`, `ms`, `s`, `m` or
//! `h` (`"500ms"`, `"10s"`, `"2m"`; [`shoal::config::duration`]).
//! Bare integers are rejected so that a unit is never guessed.
//!
//! See `docs/operating.md` for a complete, commented example.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shoal::config::{
    AdmissionSettings, DiscoverySettings, IdentitySettings, IoSettings, LimitSettings,
    ListenSettings, Preset, StreamSettings, TimeoutSettings,
};
use shoal::crypto::{Scheme, ED25519};
use shoal::{Config, PublicKey};

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

/// `[node]`: what `shoal node` serves beside the engine.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Prometheus endpoint: serves `GET /metrics` (OpenMetrics text).
    /// Absent: none. It has no authentication: bind it to a private
    /// interface.
    pub metrics: Option<SocketAddr>,
    /// Channel id to register and echo: every message received on it is
    /// sent back to its sender (smoke tests, latency probes). Absent: none.
    pub echo_channel: Option<u32>,
}

/// One `[[peers]]` entry: a key of the authorized peer set (set index 0).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Ed25519 public key, 64 hex characters.
    pub key: String,
    /// Where to dial it (optional: it may dial us instead).
    pub address: Option<SocketAddr>,
}

/// `[probe]` of `shoal node`: a delivery probe for test clusters. The node
/// registers `channel` and, every `interval`, sends each connected
/// `[[peers]]` key its next sequence number (per peer, from 1) and the send
/// time; it counts what it sends and receives per peer in the
/// `shoal_probe_*` metrics. Not meant for production nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// Channel id the probe registers (must differ from
    /// `node.echo_channel`).
    pub channel: u32,
    /// Period between two probes to a peer. Default 1 s.
    #[serde(
        default = "ProbeSection::default_interval",
        with = "shoal::config::duration"
    )]
    pub interval: Duration,
    /// Probes per peer, then stop sending. Absent: no limit.
    pub count: Option<u64>,
}

impl ProbeSection {
    fn default_interval() -> Duration {
        Duration::from_secs(1)
    }
}

/// `[gossip]` of `shoal node`: a gossip broadcast probe for test clusters
/// (see `src/gossip_probe.rs`). The node runs gossip on `channel` over every
/// connection and broadcasts a numbered message every `interval`, up to
/// `count`; the engine's `shoal_gossip_events_total` counts what it
/// delivers. Not meant for production nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipSection {
    /// Channel id gossip runs on (must differ from `node.echo_channel` and
    /// `probe.channel`).
    pub channel: u32,
    /// Period between two broadcasts. Default 1 s.
    #[serde(
        default = "ProbeSection::default_interval",
        with = "shoal::config::duration"
    )]
    pub interval: Duration,
    /// Broadcasts, then stop sending (it keeps relaying). Absent: no limit.
    pub count: Option<u64>,
    /// Connected peers to wait for before the first broadcast (gossip
    /// reaches the nodes connected when a message goes out). Default 0.
    #[serde(default)]
    pub wait_peers: usize,
}

/// The whole file: the engine's sections, the preset they default to, and
/// this binary's own tables.
#[derive(Debug, Deserialize)]
#[serde(default = "FileConfig::of_loading_preset", deny_unknown_fields)]
pub struct FileConfig {
    /// `recommended`, `aggressive` or `local`: where every engine field the
    /// file leaves out takes its value from. Default `recommended`.
    pub preset: Preset,
    pub identity: IdentitySettings,
    pub listen: ListenSettings,
    pub timeouts: TimeoutSettings,
    pub limits: LimitSettings,
    pub admission: AdmissionSettings,
    pub discovery: DiscoverySettings,
    pub io: IoSettings,
    pub streams: StreamSettings,
    pub node: NodeSection,
    /// The authorized peer set.
    pub peers: Vec<PeerEntry>,
    pub probe: Option<ProbeSection>,
    pub gossip: Option<GossipSection>,
    /// `shoal bench`'s own settings.
    pub bench: Option<shoal_bench::BenchSettings>,
    /// The file as written, to tell a key set to its default from a key
    /// left out ([`FileConfig::sets`]).
    #[serde(skip)]
    written: toml::Table,
}

/// A resolved peer.
pub struct Peer {
    pub key: PublicKey,
    pub address: Option<SocketAddr>,
}

impl FileConfig {
    /// An empty file under the preset being loaded.
    fn of_loading_preset() -> FileConfig {
        let preset = Preset::loading();
        let Config {
            identity,
            listen,
            timeouts,
            limits,
            admission,
            discovery,
            io,
            streams,
        } = preset.config(None);
        FileConfig {
            preset,
            identity,
            listen,
            timeouts,
            limits,
            admission,
            discovery,
            io,
            streams,
            node: NodeSection::default(),
            peers: Vec::new(),
            probe: None,
            gossip: None,
            bench: None,
            written: toml::Table::new(),
        }
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        FileConfig::parse(&text)
    }

    /// Parses a file's text: its `preset` first, then everything with that
    /// preset's values as the defaults. The error text names the field by
    /// its dotted path (toml's message quotes the offending line).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        /// The one key read before the rest.
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            preset: Preset,
        }
        let describe = |e: toml::de::Error| describe_toml_error(text, &e);
        let written: toml::Table = toml::from_str(text).map_err(describe)?;
        let head: Head = toml::from_str(text).map_err(describe)?;
        let mut file: FileConfig = head
            .preset
            .load(|| toml::from_str(text))
            .map_err(describe)?;
        file.written = written;
        Ok(file)
    }

    /// Whether the file writes the key at `path` (`"io.shards"`).
    pub fn sets(&self, path: &str) -> bool {
        let mut keys = path.split('.');
        let Some(first) = keys.next() else {
            return false;
        };
        let mut at = self.written.get(first);
        for k in keys {
            at = at.and_then(|v| v.get(k));
        }
        at.is_some()
    }

    /// The engine config the file describes (identity random until
    /// [`IdentitySettings::load_key_file`]). Does not run
    /// [`Config::validate`].
    pub fn engine_config(&self) -> Config {
        Config {
            identity: self.identity.clone(),
            listen: self.listen.clone(),
            timeouts: self.timeouts.clone(),
            limits: self.limits.clone(),
            admission: self.admission.clone(),
            discovery: self.discovery.clone(),
            io: self.io.clone(),
            streams: self.streams,
        }
    }

    /// The full node config: identity loaded (a relative `key_file` is
    /// relative to `base_dir`, the config file's directory), peers parsed,
    /// everything validated. Returns whether the identity was generated
    /// (no `identity.key_file`).
    pub fn node_config(&self, base_dir: &Path) -> Result<(Config, Vec<Peer>, bool), ConfigError> {
        let mut c = self.engine_config();
        let loaded = c
            .identity
            .load_key_file(base_dir)
            .map_err(|e| bad("identity.key_file", e.to_string()))?;
        if self.node.echo_channel.is_some() && c.listen.address.is_none() && self.peers.is_empty() {
            return Err(bad(
                "node.echo_channel",
                "needs `listen.address` or `[[peers]]`: nobody could reach this node",
            ));
        }
        if let Some(p) = &self.probe {
            if self.node.echo_channel == Some(p.channel) {
                return Err(bad("probe.channel", "must differ from `node.echo_channel`"));
            }
            if p.interval.is_zero() {
                return Err(bad("probe.interval", "must be longer than 0"));
            }
            if self.peers.is_empty() {
                return Err(bad(
                    "probe",
                    "needs `peers`: it probes the `[[peers]]` keys",
                ));
            }
        }
        if let Some(g) = &self.gossip {
            let probe = self.probe.as_ref().map(|p| p.channel);
            if self.node.echo_channel == Some(g.channel) || probe == Some(g.channel) {
                return Err(bad(
                    "gossip.channel",
                    "must differ from `node.echo_channel` and `probe.channel`",
                ));
            }
            if g.interval.is_zero() {
                return Err(bad("gossip.interval", "must be longer than 0"));
            }
        }
        let mut peers = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let key = parse_key(&p.key).map_err(|r| bad(format!("peers[{i}].key"), r))?;
            if &key == c.identity.signer.public_key() {
                return Err(bad(format!("peers[{i}].key"), "is this node's own key"));
            }
            peers.push(Peer {
                key,
                address: p.address,
            });
        }
        c.validate().map_err(engine_error)?;
        Ok((c, peers, !loaded))
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
    let hint = key
        .and_then(|k| {
            msg.starts_with("unknown field")
                .then(|| where_it_belongs(k))
        })
        .flatten()
        .map(|path| format!("; it is `{path}`"))
        .unwrap_or_default();
    match (key, table) {
        (Some(k), Some(t)) => format!("`{t}.{k}`: {msg}{hint} {at}"),
        (Some(k), None) => format!("`{k}`: {msg}{hint} {at}"),
        (None, _) => format!("{msg} {at}"),
    }
}

/// The dotted path of the engine field named `key` (its last part), if
/// there is one: where a key written in the wrong place belongs.
fn where_it_belongs(key: &str) -> Option<String> {
    fn find(prefix: &str, v: &serde_json::Value, name: &str) -> Option<String> {
        let serde_json::Value::Object(map) = v else {
            return None;
        };
        map.iter().find_map(|(k, v)| {
            let path = format!("{prefix}{k}");
            match v {
                serde_json::Value::Object(_) => find(&format!("{path}."), v, name),
                _ => (k == name).then_some(path),
            }
        })
    }
    let name = key.rsplit('.').next()?;
    let tree = serde_json::to_value(Config::recommended(None)).ok()?;
    find("", &tree, name)
}

/// Maps an engine config error to a [`ConfigError`].
pub fn engine_error(e: shoal::Error) -> ConfigError {
    match e {
        shoal::Error::InvalidConfig { field, reason } => bad(field, reason),
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
    use shoal::Ed25519Signer;

    fn parse(text: &str) -> FileConfig {
        FileConfig::parse(text).unwrap()
    }

    fn node_error(text: &str) -> String {
        parse(text).node_config(Path::new(".")).err().unwrap().field
    }

    #[test]
    fn dial_quick_attempts_is_also_read_under_its_former_name() {
        for key in ["dial_quick_attempts", "dial_attempts"] {
            let toml = format!("[discovery]\n{key} = 5");
            let c = parse(&toml).engine_config();
            assert_eq!(c.discovery.dial_quick_attempts, 5, "{toml}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        for (toml, named) in [
            ("[timeouts]\nidle_timeot = \"1s\"", "`timeouts.idle_timeot`"),
            ("[timeouts]\nidle_timeout = 10", "`timeouts.idle_timeout`"),
            ("[io]\nbackend = \"kqueue\"", "`io.backend`"),
            ("[io.uring]\nentrys = 8", "`io.uring.entrys`"),
            ("idle_timeout = \"1s\"", "it is `timeouts.idle_timeout`"),
            (
                "[limits]\nmax_inbound_per_ip = 1",
                "it is `admission.max_inbound_per_ip`",
            ),
            ("[limit]\nmax_inbound = 1", "limit"),
            ("preset = \"fast\"", "`preset`"),
            ("[identity]\nnamespace = \"\"", "`identity.namespace`"),
            ("[identity]\nsigner = \"x\"", "`identity.signer`"),
            ("[discovery]\nopen = true", "`discovery.open`"),
        ] {
            let e = FileConfig::parse(toml).unwrap_err();
            assert!(e.contains(named), "{toml}: {e}");
        }
    }

    #[test]
    fn admission_keys_and_doorbell_parse_as_documented() {
        let c = parse("[io.uring]\ndoorbell = false\n[admission]\nmax_inbound_per_ip = 3")
            .engine_config();
        assert!(!c.io.uring.doorbell);
        assert_eq!(c.admission.max_inbound_per_ip, 3);
        // Defaults (recommended) as docs/operating.md lists them.
        let c = parse("").engine_config();
        assert!(c.io.uring.doorbell);
        assert_eq!(c.admission.max_inbound_per_ip, 8);
    }

    #[test]
    fn accept_rate_cooldown_and_uring_entries_parse_as_documented() {
        let c =
            parse("[admission]\naccept_rate_per_ip = 1\naccept_burst_per_ip = 2").engine_config();
        let a = &c.admission;
        assert_eq!((a.accept_rate_per_ip, a.accept_burst_per_ip), (1, 2));
        let c = parse("[admission]\nmisbehavior_cooldown = \"0s\"").engine_config();
        assert_eq!(c.admission.misbehavior_cooldown, Duration::ZERO);
        assert_eq!(
            parse("").engine_config().admission.misbehavior_cooldown,
            Duration::from_secs(10)
        );
        let c = parse("preset = \"local\"").engine_config();
        assert_eq!(c.admission.misbehavior_cooldown, Duration::ZERO);
        let c = parse("[io.uring]\nentries = 64").engine_config();
        assert_eq!(c.io.uring.entries, 64);
        let e = parse("[io.uring]\nentries = 100")
            .engine_config()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("io.uring.entries"), "{e}");
        assert_eq!(parse("").engine_config().io.uring.entries, 4096);
        // Defaults as docs/operating.md lists them: recommended 4 / 16,
        // local no rate limit.
        let a = parse("").engine_config().admission;
        assert_eq!((a.accept_rate_per_ip, a.accept_burst_per_ip), (4, 16));
        let c = parse("preset = \"local\"").engine_config();
        assert_eq!(c.admission.accept_rate_per_ip, 0);
        // A rate without a burst is refused by name.
        let e = parse("[admission]\naccept_rate_per_ip = 1\naccept_burst_per_ip = 0")
            .engine_config()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("admission.accept_burst_per_ip"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_and_validate_names_fields() {
        let toml = "preset = \"local\"\n[timeouts]\nidle_timeout = \"1s\"\nping_interval = \"2s\"";
        let c = parse(toml).engine_config();
        assert_eq!(c.timeouts.idle_timeout, Duration::from_secs(1));
        assert_eq!(node_error(toml), "timeouts.idle_timeout");
        // wait_spin is in µs; over 10 ms is refused by name.
        let c = parse("[io]\nwait_spin = \"250us\"").engine_config();
        assert_eq!(c.io.wait_spin, Duration::from_micros(250));
        assert_eq!(node_error("[io]\nidle_spin = \"20ms\""), "io.idle_spin");
        assert_eq!(node_error("[io]\nwait_spin = \"11ms\""), "io.wait_spin");
    }

    /// A field left out takes the file's preset, whichever key comes first;
    /// a field written takes the file's value, even if it is the
    /// recommended default.
    #[test]
    fn missing_fields_take_the_files_preset() {
        for preset in [Preset::Recommended, Preset::Aggressive, Preset::Local] {
            let name = serde_json::to_value(preset).unwrap();
            let name = name.as_str().unwrap();
            let expect = serde_json::to_value(preset.config(None)).unwrap();
            let got = serde_json::to_value(parse(&format!("preset = \"{name}\"")).engine_config());
            assert_eq!(got.unwrap(), expect, "{name}");
        }
        let c = parse("limits.max_inbound = 128\npreset = \"local\"\n[io]\nbusy_poll = true")
            .engine_config();
        assert_eq!(c.limits.max_inbound, 128);
        assert_eq!(c.limits.max_outbound, 1024);
        assert_eq!(c.io.shards, 1);
        assert!(c.io.busy_poll);
        assert!(c.discovery.allow_private_ips);
    }

    /// Every field of the engine's config is a key of this file: a whole
    /// config written as TOML reads back as the same config.
    #[test]
    fn every_engine_field_is_a_file_key() {
        let mut c = Config::local("127.0.0.1:7000".parse().ok());
        c.listen.advertise = "10.0.0.1:7000".parse().ok();
        c.identity.key_file = Some("node.key".into());
        c.identity.namespace = b"other/2".to_vec();
        c.io.backend = shoal::Backend::Epoll;
        c.io.uring.entries = 64;
        c.discovery.dial_backoff_max = Duration::from_millis(1500);
        let text = toml::to_string(&c).unwrap();
        let back = parse(&text).engine_config();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&c).unwrap(),
            "{text}"
        );
        let f = parse(&text);
        assert!(f.sets("io.uring.entries") && f.sets("listen.address"));
        assert!(!parse("").sets("io.shards"));
    }

    #[test]
    fn probe_section() {
        let f = parse("[probe]\nchannel = 9\ninterval = \"250ms\"\ncount = 20");
        let p = f.probe.as_ref().unwrap();
        assert_eq!((p.channel, p.count), (9, Some(20)));
        assert_eq!(p.interval, Duration::from_millis(250));
        let f = parse("[probe]\nchannel = 9");
        let p = f.probe.as_ref().unwrap();
        assert_eq!((p.interval, p.count), (Duration::from_secs(1), None));
        let e = FileConfig::parse("[probe]\nchanel = 9").unwrap_err();
        assert!(e.contains("chanel"), "{e}");
        let e = FileConfig::parse("[probe]\nchannel = 9\ninterval = 5").unwrap_err();
        assert!(e.contains("interval"), "{e}");

        let peer = shoal::crypto::Signer::public_key(&Ed25519Signer::generate()).clone();
        let with_peer = |extra: &str| -> FileConfig {
            parse(&format!("{extra}\n[[peers]]\nkey = \"{peer:#}\""))
        };
        let e = with_peer("[node]\necho_channel = 9\n[probe]\nchannel = 9")
            .node_config(Path::new("."))
            .err()
            .unwrap();
        assert_eq!(e.field, "probe.channel");
        let e = with_peer("[probe]\nchannel = 9\ninterval = \"0ms\"")
            .node_config(Path::new("."))
            .err()
            .unwrap();
        assert_eq!(e.field, "probe.interval");
        assert!(with_peer("[node]\necho_channel = 7\n[probe]\nchannel = 9")
            .node_config(Path::new("."))
            .is_ok());
        assert_eq!(
            node_error("[listen]\naddress = \"127.0.0.1:0\"\n[probe]\nchannel = 9"),
            "probe"
        );
    }

    #[test]
    fn gossip_section() {
        let f = parse("[gossip]\nchannel = 11\ninterval = \"200ms\"\ncount = 30\nwait_peers = 7");
        let g = f.gossip.as_ref().unwrap();
        assert_eq!((g.channel, g.count, g.wait_peers), (11, Some(30), 7));
        assert_eq!(g.interval, Duration::from_millis(200));
        let e = FileConfig::parse("[gossip]\nchanel = 11").unwrap_err();
        assert!(e.contains("chanel"), "{e}");
        let peer = shoal::crypto::Signer::public_key(&Ed25519Signer::generate()).clone();
        let with_peer = |extra: &str| -> FileConfig {
            parse(&format!("{extra}\n[[peers]]\nkey = \"{peer:#}\""))
        };
        for clash in [
            "[probe]\nchannel = 11\n[gossip]\nchannel = 11",
            "[node]\necho_channel = 11\n[gossip]\nchannel = 11",
        ] {
            let e = with_peer(clash).node_config(Path::new(".")).err().unwrap();
            assert_eq!(e.field, "gossip.channel");
        }
        let e = with_peer("[gossip]\nchannel = 11\ninterval = \"0s\"")
            .node_config(Path::new("."))
            .err()
            .unwrap();
        assert_eq!(e.field, "gossip.interval");
        assert!(with_peer("[probe]\nchannel = 9\n[gossip]\nchannel = 11")
            .node_config(Path::new("."))
            .is_ok());
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
