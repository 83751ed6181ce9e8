#!/usr/bin/env bash
# Multi-host test of `shoal node` over impaired links, in network namespaces.
#
#   sudo scripts/netns-mesh.sh
#
# Builds `shoal` (release), creates NODES (default 8) namespaces as hosts
# (shoal-<pid>-h0 ..), each with one veth to a central router namespace,
# addresses 10.77.0.1.. /24, and impairs every host-to-host path with a
# one-way delay of DELAY_MS +- JITTER_MS (uniform) and LOSS_PCT loss in each
# direction (default 50 ms +- 10 ms, 1 %; the round trip is then ~100 ms and
# ~2 % of round trips lose a packet):
#   - netem, where the kernel has it: a bridge in the router namespace and
#     `netem delay D J loss L` on every router port (the egress toward its
#     host), so each one-way path crosses exactly one netem;
#   - otherwise (IMPAIR=relay, or no netem): no kernel bridge; the shipped
#     scripts/netns_delay_bridge.py switches Ethernet frames between the
#     router ports in user space after a uniform random delay, and loss is
#     `numgen random` drops in an nftables input hook in every host (in the
#     relay itself when `nft` is missing).
# The RTT and loss between two hosts are measured and printed before shoal
# starts (ping -c 5, and 500 UDP round trips for the loss figure).
#
# Then one `shoal node` per host (`ip netns exec`), discovery only: every
# node authorizes all NODES keys, only the BOOTSTRAPPERS first nodes have
# addresses, `allow_private_ips = true`. Each node runs the `[probe]` of
# `shoal node` (docs/operating.md): PROBE_COUNT numbered messages to every
# connected peer, one per PROBE_INTERVAL. The script polls every node's
# /metrics (bounded by MESH_TIMEOUT) until every node has NODES-1
# connections and has exchanged a probe each way with every peer, then (bounded by DELIVERY_TIMEOUT) until every node received
# PROBE_COUNT probes from every peer. Each node also runs the `[gossip]`
# probe: once connected to all the others it broadcasts GOSSIP_COUNT
# messages, one per PROBE_INTERVAL; the script then polls (bounded by
# DELIVERY_TIMEOUT) until every node delivered (NODES-1) x GOSSIP_COUNT
# (`shoal_gossip_events_total{event="delivered"}`, each message once). It
# prints a per-node summary and exits 1 if the full mesh or any delivery
# failed. Namespaces, processes and
# nftables tables are always removed on exit.
#
# Skips (exit 0, reason printed) when not root or when namespaces or veths
# cannot be created.
#
# Environment (defaults): NODES=8 BOOTSTRAPPERS=2 DELAY_MS=50 JITTER_MS=10
# LOSS_PCT=1 IMPAIR=auto|netem|relay LOSS_BY=auto|nft|relay (relay mode) PRESET=recommended SHARDS=1
# MESH_TIMEOUT=120 PROBE_COUNT=40 PROBE_INTERVAL=250ms DELIVERY_TIMEOUT=60 GOSSIP_COUNT=20
# SHOAL_BIN (skip the build and use this binary) KEEP_WORKDIR=0 PYTHON=python3

set -euo pipefail

NODES=${NODES:-8}
BOOTSTRAPPERS=${BOOTSTRAPPERS:-2}
DELAY_MS=${DELAY_MS:-50}
JITTER_MS=${JITTER_MS:-10}
LOSS_PCT=${LOSS_PCT:-1}
IMPAIR=${IMPAIR:-auto}
PRESET=${PRESET:-recommended}
SHARDS=${SHARDS:-1}
MESH_TIMEOUT=${MESH_TIMEOUT:-120}
PROBE_COUNT=${PROBE_COUNT:-40}
PROBE_INTERVAL=${PROBE_INTERVAL:-250ms}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-60}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
PORT=7000
METRICS_PORT=9898
PROBE_CHANNEL=9
GOSSIP_CHANNEL=11
GOSSIP_COUNT=${GOSSIP_COUNT:-20}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RELAY_PY="$HERE/netns_delay_bridge.py"
TAG="shoal-$$"
ROUTER="$TAG-rt"

say() { printf 'netns-mesh: %s\n' "$*"; }
skip() {
    say "SKIP: $*"
    exit 0
}
die() {
    say "FAIL: $*"
    exit 1
}

# ------------------------------------------------------------ preconditions
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, veths, raw sockets)"
command -v ip >/dev/null || skip "iproute2 (ip) not found"
PY=$(command -v "${PYTHON:-python3}") || skip "python3 not found"
[ "$NODES" -ge 2 ] || die "NODES must be at least 2"
if [ "$BOOTSTRAPPERS" -lt 1 ] || [ "$BOOTSTRAPPERS" -gt "$NODES" ]; then die "BOOTSTRAPPERS must be in 1..NODES"; fi

NAMESPACES=()
PIDS=()
HELPER_PIDS=()
WORKDIR=""
RESULT=1

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}" "${HELPER_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    # Bounded wait (5 s), then SIGKILL what is left.
    local i
    for i in $(seq 50); do
        local alive=0
        for p in "${PIDS[@]}" "${HELPER_PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}" "${HELPER_PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    local ns
    for ns in "${NAMESPACES[@]}"; do
        # nftables tables live in the namespace; delete them explicitly anyway.
        ip netns exec "$ns" nft delete table inet shoal_mesh 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
        if [ "$KEEP_WORKDIR" = 1 ] || [ "$RESULT" -ne 0 ]; then
            say "logs and configs kept in $WORKDIR"
        else
            rm -rf "$WORKDIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Can namespaces and veths be created here (not in an unprivileged container)?
probe_ns="$TAG-try"
if ! ip netns add "$probe_ns" 2>/dev/null; then
    skip "cannot create network namespaces (ip netns add failed)"
fi
NAMESPACES+=("$probe_ns")
if ! ip netns exec "$probe_ns" ip link add a0 type veth peer name b0 2>/dev/null; then
    skip "cannot create veth pairs"
fi
NETEM=0
if ip netns exec "$probe_ns" ip link set lo up 2>/dev/null &&
    ip netns exec "$probe_ns" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    NETEM=1
fi
ip netns del "$probe_ns"
NAMESPACES=()
case "$IMPAIR" in
auto) if [ "$NETEM" = 1 ]; then IMPAIR=netem; else IMPAIR=relay; fi ;;
netem) [ "$NETEM" = 1 ] || die "IMPAIR=netem but this kernel has no netem qdisc" ;;
relay) ;;
*) die "IMPAIR must be auto, netem or relay" ;;
esac
NFT=0
case "${LOSS_BY:-auto}" in
auto) if [ "$IMPAIR" = relay ] && command -v nft >/dev/null; then NFT=1; fi ;;
nft) [ "$IMPAIR" = relay ] || die "LOSS_BY=nft needs IMPAIR=relay"
    command -v nft >/dev/null || die "LOSS_BY=nft but nft is not installed"
    NFT=1 ;;
relay) ;;
*) die "LOSS_BY must be auto, nft or relay" ;;
esac

# ------------------------------------------------------------ build, keys
if [ -n "${SHOAL_BIN:-}" ]; then
    BIN=$SHOAL_BIN
else
    say "building shoal (cargo build --release --bin shoal)"
    (cd "$REPO" && cargo build --release --bin shoal)
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/shoal"
fi
[ -x "$BIN" ] || die "no executable shoal at $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

WORKDIR=$(mktemp -d "/tmp/$TAG.XXXXXX")
KEYS=()
for i in $(seq 0 $((NODES - 1))); do
    KEYS+=("$("$BIN" keygen --out "$WORKDIR/h$i.key")")
done
addr() { echo "10.77.0.$(($1 + 1))"; }

for i in $(seq 0 $((NODES - 1))); do
    {
        echo "preset = \"$PRESET\""
        echo
        echo "[node]"
        echo "metrics = \"127.0.0.1:$METRICS_PORT\""
        echo
        echo "[identity]"
        echo "key_file = \"h$i.key\""
        echo
        echo "[listen]"
        echo "address = \"$(addr "$i"):$PORT\""
        echo
        echo "[io]"
        echo "shards = $SHARDS"
        echo
        echo "[discovery]"
        echo "allow_private_ips = true"
        echo
        echo "[probe]"
        echo "channel = $PROBE_CHANNEL"
        echo "interval = \"$PROBE_INTERVAL\""
        echo "count = $PROBE_COUNT"
        echo
        echo "[gossip]"
        echo "channel = $GOSSIP_CHANNEL"
        echo "interval = \"$PROBE_INTERVAL\""
        echo "count = $GOSSIP_COUNT"
        echo "wait_peers = $((NODES - 1))"
        for j in $(seq 0 $((NODES - 1))); do
            [ "$j" -eq "$i" ] && continue
            echo
            echo "[[peers]]"
            echo "key = \"${KEYS[$j]}\""
            if [ "$j" -lt "$BOOTSTRAPPERS" ]; then
                echo "address = \"$(addr "$j"):$PORT\""
            fi
        done
    } >"$WORKDIR/h$i.toml"
done

# ------------------------------------------------------------ topology
how="netem on every router port"
if [ "$IMPAIR" = relay ]; then
    how="delay by the user-space relay, loss by nftables in each host"
    [ "$NFT" = 1 ] || how="delay and loss by the user-space relay (no nft)"
fi
say "topology: $NODES hosts ($TAG-h0..h$((NODES - 1)), 10.77.0.1..$NODES/24) around $ROUTER"
say "impairment: one-way ${DELAY_MS}±${JITTER_MS} ms, ${LOSS_PCT}% loss per direction ($how)"
ip netns add "$ROUTER"
NAMESPACES+=("$ROUTER")
ip netns exec "$ROUTER" ip link set lo up
ip netns exec "$ROUTER" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
ip netns exec "$ROUTER" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 || true
if [ "$IMPAIR" = netem ]; then
    ip netns exec "$ROUTER" ip link add br0 type bridge
    ip netns exec "$ROUTER" ip link set br0 up
fi
PORTS=()
for i in $(seq 0 $((NODES - 1))); do
    h="$TAG-h$i"
    ip netns add "$h"
    NAMESPACES+=("$h")
    ip netns exec "$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
    ip netns exec "$h" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 || true
    ip link add eth0 netns "$h" type veth peer name "p$i" netns "$ROUTER"
    PORTS+=("p$i")
    ip netns exec "$h" ip link set lo up
    ip netns exec "$h" ip addr add "$(addr "$i")/24" dev eth0
    ip netns exec "$h" ip link set eth0 up
    ip netns exec "$ROUTER" ip link set "p$i" up
    if [ "$IMPAIR" = netem ]; then
        ip netns exec "$ROUTER" ip link set "p$i" master br0
        ip netns exec "$ROUTER" tc qdisc add dev "p$i" root netem \
            delay "${DELAY_MS}ms" "${JITTER_MS}ms" loss "${LOSS_PCT}%"
    else
        # Frames copied by AF_PACKET must carry real checksums and fit the MTU.
        ip netns exec "$h" "$PY" "$RELAY_PY" offload-off eth0
        if [ "$NFT" = 1 ]; then
            per10k=$(awk -v p="$LOSS_PCT" 'BEGIN { printf "%d", p * 100 + 0.5 }')
            ip netns exec "$h" nft -f - <<EOF
table inet shoal_mesh {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "eth0" counter
        iifname "eth0" numgen random mod 10000 < $per10k counter drop
    }
}
EOF
        fi
    fi
done
if [ "$IMPAIR" = relay ]; then
    ip netns exec "$ROUTER" "$PY" "$RELAY_PY" offload-off "${PORTS[@]}"
    relay_loss=0
    [ "$NFT" = 1 ] || relay_loss=$LOSS_PCT
    ip netns exec "$ROUTER" "$PY" "$RELAY_PY" relay "${PORTS[@]}" \
        --delay-min-ms "$((DELAY_MS - JITTER_MS))" --delay-max-ms "$((DELAY_MS + JITTER_MS))" \
        --loss-pct "$relay_loss" >"$WORKDIR/relay.log" 2>&1 &
    HELPER_PIDS+=("$!")
    RELAY_PID=$!
    sleep 0.5
    kill -0 "$RELAY_PID" 2>/dev/null || die "the relay did not start: $(cat "$WORKDIR/relay.log")"
fi

# ------------------------------------------------------------ measure the links
H0="$TAG-h0"
H1="$TAG-h1"
A1=$(addr 1)
if command -v ping >/dev/null; then
    # First contact also resolves ARP through the impaired switch (bounded).
    ok=0
    for _ in $(seq 10); do
        if ip netns exec "$H0" ping -c 1 -W 1 "$A1" >/dev/null 2>&1; then
            ok=1
            break
        fi
    done
    [ "$ok" = 1 ] || die "h0 cannot reach h1 ($A1) through the impaired links"
    say "ping -c 5 h0 -> h1 ($A1):"
    ip netns exec "$H0" ping -c 5 -i 0.2 "$A1" | tail -n 2 | sed 's/^/    /'
else
    say "ping not installed: RTT from the UDP round trips only"
fi
ip netns exec "$H1" "$PY" "$RELAY_PY" udp-echo 9999 --timeout 30 &
ECHO_PID=$!
HELPER_PIDS+=("$ECHO_PID")
sleep 0.3
UDP=$(ip netns exec "$H0" "$PY" "$RELAY_PY" udp-ping "$A1" 9999 --count 500 --interval 0.01)
kill "$ECHO_PID" 2>/dev/null || true
say "$UDP"
MEDIAN=$(sed -n 's|.*rtt min/median/mean/max [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$UDP")
[ -n "$MEDIAN" ] || die "no UDP round trip between h0 and h1"
awk -v m="$MEDIAN" -v d="$DELAY_MS" -v j="$JITTER_MS" 'BEGIN { exit !(m >= 2 * (d - j) * 0.9) }' ||
    die "median RTT ${MEDIAN} ms: the delay is not in effect"

# ------------------------------------------------------------ run the nodes
scrape() { # scrape <i>: the node's /metrics text (empty on failure)
    if command -v curl >/dev/null; then
        ip netns exec "$TAG-h$1" curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null || true
    else
        ip netns exec "$TAG-h$1" "$PY" -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=2).read().decode())" 2>/dev/null || true
    fi
}
scrape_all() { # scrape_all: every node's /metrics into $WORKDIR/scrape.<i>, in parallel
    local i jobs_=()
    for i in $(seq 0 $((NODES - 1))); do
        scrape "$i" >"$WORKDIR/scrape.$i" &
        jobs_+=("$!")
    done
    for i in "${jobs_[@]}"; do wait "$i" || true; done
}
metric() { # metric <name> <text>: the value of an unlabelled metric
    awk -v n="$1" '$1 == n { print $2; f = 1 } END { if (!f) print 0 }' <<<"$2"
}
family() { # family <name> <text>: "sum min count nonzero" over the labelled series
    awk -v n="$1" 'index($1, n "{") == 1 { s += $NF; c++; if (c == 1 || $NF < m) m = $NF; if ($NF > 0) z++ }
                   END { printf "%d %d %d %d\n", s, m, c, z }' <<<"$2"
}

say "starting $NODES nodes (preset $PRESET, $SHARDS shard(s) each, bootstrappers h0..h$((BOOTSTRAPPERS - 1)))"
T0=$EPOCHREALTIME
for i in $(seq 0 $((NODES - 1))); do
    ip netns exec "$TAG-h$i" "$BIN" node --config "$WORKDIR/h$i.toml" >"$WORKDIR/h$i.log" 2>&1 &
    PIDS+=("$!")
done

elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
check_alive() {
    local i
    for i in $(seq 0 $((NODES - 1))); do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            say "node h$i exited early; its log:"
            sed 's/^/    /' "$WORKDIR/h$i.log"
            die "node h$i is not running"
        fi
    done
}

declare -A MESH_AT
want=$((NODES - 1))
mesh=0
while :; do
    check_alive
    now=$(elapsed)
    scrape_all
    done_nodes=0
    for i in $(seq 0 $((NODES - 1))); do
        if [ -n "${MESH_AT[$i]:-}" ]; then
            done_nodes=$((done_nodes + 1))
            continue
        fi
        m=$(cat "$WORKDIR/scrape.$i")
        c=$(metric shoal_connections "$m")
        read -r _ smin scount _ <<<"$(family shoal_probe_sent_total "$m")"
        read -r _ rmin rcount _ <<<"$(family shoal_probe_received_total "$m")"
        # The gauge alone can over-count (a replaced duplicate connection),
        # so every peer must also have exchanged a probe in each direction.
        if [ "${c:-0}" -ge "$want" ] && [ "$scount" -eq "$want" ] && [ "$smin" -ge 1 ] &&
            [ "$rcount" -eq "$want" ] && [ "$rmin" -ge 1 ]; then
            MESH_AT[$i]=$now
            done_nodes=$((done_nodes + 1))
        fi
    done
    if [ "$done_nodes" -eq "$NODES" ]; then
        mesh=1
        MESH_TIME=$now
        break
    fi
    if awk -v e="$(elapsed)" -v t="$MESH_TIMEOUT" 'BEGIN { exit !(e >= t) }'; then break; fi
    sleep 0.2
done
if [ "$mesh" = 1 ]; then
    say "full mesh after $MESH_TIME s (every node: $want connections, a probe sent to and received from each peer)"
else
    say "no full mesh within $MESH_TIMEOUT s ($done_nodes/$NODES nodes with $want connections)"
fi

# Delivery: every node received PROBE_COUNT probes from each of its peers.
delivered=0
T1=$EPOCHREALTIME
if [ "$mesh" = 1 ]; then
    while :; do
        check_alive
        full=0
        scrape_all
        for i in $(seq 0 $((NODES - 1))); do
            read -r _ min count _ <<<"$(family shoal_probe_received_total "$(cat "$WORKDIR/scrape.$i")")"
            if [ "$count" -eq "$want" ] && [ "$min" -ge "$PROBE_COUNT" ]; then
                full=$((full + 1))
            fi
        done
        if [ "$full" -eq "$NODES" ]; then
            delivered=1
            break
        fi
        if awk -v a="$T1" -v b="$EPOCHREALTIME" -v t="$DELIVERY_TIMEOUT" 'BEGIN { exit !(b - a >= t) }'; then break; fi
        sleep 0.5
    done
fi

# Gossip: every node delivered every other node's GOSSIP_COUNT broadcasts.
gossip_want=$(((NODES - 1) * GOSSIP_COUNT))
gossip_of() { # gossip_of <event> <text>: the node's gossip counter for <event>
    awk -v e="event=\"$2\"" -v c="channel=\"$GOSSIP_CHANNEL\"" \
        'index($1, "shoal_gossip_events_total{") == 1 && index($1, e) && index($1, c) { v = $NF } END { print v + 0 }' <<<"$1"
}
gossip_ok=0
T2=$EPOCHREALTIME
if [ "$mesh" = 1 ]; then
    while :; do
        check_alive
        full=0
        scrape_all
        for i in $(seq 0 $((NODES - 1))); do
            d=$(gossip_of "$(cat "$WORKDIR/scrape.$i")" delivered)
            if [ "$d" -ge "$gossip_want" ]; then full=$((full + 1)); fi
        done
        if [ "$full" -eq "$NODES" ]; then
            gossip_ok=1
            break
        fi
        if awk -v a="$T2" -v b="$EPOCHREALTIME" -v t="$DELIVERY_TIMEOUT" 'BEGIN { exit !(b - a >= t) }'; then break; fi
        sleep 0.5
    done
fi

# ------------------------------------------------------------ summary
echo
say "per node (peers: peers heard from; conns: the shoal_connections gauge; mesh_at_s: first scrape showing NODES-1 connections and a probe each way with every peer, polled every ~0.3 s; one_way_ms: mean probe delay):"
printf '%-5s %-12s %6s %6s %10s %8s %9s %8s %8s %10s %7s\n' \
    node address peers conns mesh_at_s sent received missing min/peer one_way_ms closes
tot_sent=0
tot_recv=0
tot_missing=0
over=""
for i in $(seq 0 $((NODES - 1))); do
    m=$(scrape "$i")
    printf '%s\n' "$m" >"$WORKDIR/h$i.metrics"
    c=$(metric shoal_connections "$m")
    read -r sent _ _ _ <<<"$(family shoal_probe_sent_total "$m")"
    read -r recv rmin _ heard <<<"$(family shoal_probe_received_total "$m")"
    read -r missing _ _ _ <<<"$(family shoal_probe_missing_total "$m")"
    read -r closes _ _ _ <<<"$(family shoal_closes_total "$m")"
    delay=$(metric shoal_probe_delay_microseconds_total "$m")
    owd=$(awk -v d="$delay" -v r="$recv" 'BEGIN { if (r > 0) printf "%.1f", d / r / 1000; else print "-" }')
    printf '%-5s %-12s %6s %6s %10s %8s %9s %8s %8s %10s %7s\n' \
        "h$i" "$(addr "$i")" "$heard/$want" "$c" "${MESH_AT[$i]:--}" "$sent" "$recv" "$missing" "$rmin" "$owd" "$closes"
    tot_sent=$((tot_sent + sent))
    tot_recv=$((tot_recv + recv))
    tot_missing=$((tot_missing + missing))
    if [ "${c:-0}" -gt "$want" ]; then
        over="$over h$i($c)"
    fi
done
expected=$((NODES * want * PROBE_COUNT))
echo
reasons=$(cat "$WORKDIR"/h*.metrics | awk -F'[{}]' '/^shoal_closes_total\{/ { split($3, v, " "); n[$2] += v[1] }
    END { for (r in n) if (n[r] > 0) printf "%s %s=%d", (s++ ? "," : ""), r, n[r] }')
say "connection closes over all nodes:${reasons:- none}"
if [ -n "$over" ]; then
    say "note: shoal_connections above the $want peers on:$over (kept: see the .metrics files)"
    KEEP_WORKDIR=1
fi
say "probes: $tot_sent sent, $tot_recv received, $tot_missing missing, $expected expected ($NODES nodes x $want peers x $PROBE_COUNT)"
g_pub=0
g_del=0
g_dup=0
for i in $(seq 0 $((NODES - 1))); do
    m=$(cat "$WORKDIR/h$i.metrics")
    g_pub=$((g_pub + $(gossip_of "$m" published)))
    g_del=$((g_del + $(gossip_of "$m" delivered)))
    g_dup=$((g_dup + $(gossip_of "$m" duplicate)))
done
say "gossip: $g_pub published, $g_del delivered of $((NODES * gossip_want)) expected ($NODES nodes x $((NODES - 1)) origins x $GOSSIP_COUNT), $g_dup duplicate copies"
if [ "$NFT" = 1 ]; then
    # The two counters of each host's input chain: all packets, dropped ones.
    nft_in=0
    nft_drop=0
    for i in $(seq 0 $((NODES - 1))); do
        read -r a d <<<"$(ip netns exec "$TAG-h$i" nft list table inet shoal_mesh |
            awk '/counter packets/ { for (k = 1; k < NF; k++) if ($k == "packets") v[++n] = $(k + 1) }
                 END { print v[1] + 0, v[2] + 0 }')"
        nft_in=$((nft_in + a))
        nft_drop=$((nft_drop + d))
    done
    say "nftables: $nft_drop of $nft_in IP packets arriving on the hosts' eth0 dropped ($(awk -v d="$nft_drop" -v a="$nft_in" 'BEGIN { printf "%.2f", a ? 100 * d / a : 0 }')%)"
fi
if [ "$IMPAIR" = relay ]; then
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    say "$(tail -n 1 "$WORKDIR/relay.log")"
fi

# Graceful stop: every node must exit 0 on SIGTERM (bounded: 10 s).
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
stopped=0
for i in $(seq 0 $((NODES - 1))); do
    for _ in $(seq 100); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null && wait "${PIDS[$i]}"; then
        stopped=$((stopped + 1))
    fi
done
say "$stopped/$NODES nodes stopped gracefully (exit 0 on SIGTERM)"

if [ "$mesh" != 1 ]; then
    die "no full mesh within $MESH_TIMEOUT s"
fi
if [ "$delivered" != 1 ] || [ "$tot_missing" -ne 0 ]; then
    die "probe delivery incomplete ($tot_recv/$expected received, $tot_missing missing) within $DELIVERY_TIMEOUT s of the full mesh"
fi
if [ "$gossip_ok" != 1 ] || [ "$g_del" -ne $((NODES * gossip_want)) ]; then
    die "gossip delivery incomplete ($g_del/$((NODES * gossip_want)) delivered) within $DELIVERY_TIMEOUT s"
fi
RESULT=0
say "PASS: full mesh of $NODES nodes after $MESH_TIME s, $tot_recv/$expected probes and $g_del/$((NODES * gossip_want)) gossip deliveries over ${DELAY_MS}±${JITTER_MS} ms, ${LOSS_PCT}% loss paths"
