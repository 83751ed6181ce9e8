#!/usr/bin/env python3
"""User-space link impairment for scripts/netns-mesh.sh (stdlib only, root).

The kernel on the development machines has no netem qdisc, so this helper
stands in for it. Subcommands:

  relay IFACE...        An Ethernet switch with a delay line. Runs in the
                        router namespace; opens one AF_PACKET socket per
                        router-side veth, learns source MACs, forwards each
                        frame to the port that owns its destination MAC
                        (floods broadcast, multicast and unknown
                        destinations), never back out of the port it came
                        in on, after a delay drawn uniformly from
                        [--delay-min-ms, --delay-max-ms], dropping
                        --loss-pct percent of frames (default 0: loss is
                        normally done by nftables in the hosts).
  offload-off IFACE...  Turns off TX checksum, scatter-gather, TSO, GSO and
                        GRO on interfaces (ethtool ioctls; no ethtool
                        binary needed). Needed on the host veths: frames
                        copied by an AF_PACKET socket must carry real
                        checksums and be at most one MTU.
  udp-echo PORT         Echoes UDP datagrams until --timeout seconds pass.
  udp-ping ADDR PORT    Sends --count numbered datagrams every --interval
                        seconds and prints the loss and round-trip times.

The relay prints one line of counters on SIGTERM/SIGINT and exits 0.
"""

import argparse
import array
import ctypes
import fcntl
import heapq
import random
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SIOCETHTOOL = 0x8946
# Legacy ethtool "set" commands taking struct ethtool_value {u32 cmd, data}.
ETHTOOL_SET = {
    "tx-checksum": 0x17,  # ETHTOOL_STXCSUM
    "scatter-gather": 0x19,  # ETHTOOL_SSG
    "tso": 0x1F,  # ETHTOOL_STSO
    "gso": 0x24,  # ETHTOOL_SGSO
    "gro": 0x2C,  # ETHTOOL_SGRO
}


def offload_off(ifaces):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ok = True
    for ifname in ifaces:
        for name, cmd in ETHTOOL_SET.items():
            val = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
            ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(val))
            ifreq += b"\0" * (40 - len(ifreq))
            try:
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, array.array("b", ifreq))
            except OSError as e:
                # gro/gso may be absent on some drivers; checksum must work.
                if name == "tx-checksum":
                    print(f"offload-off: {ifname}: {name}: {e}", file=sys.stderr)
                    ok = False
    return 0 if ok else 1


def relay(args):
    lo, hi = args.delay_min_ms / 1000.0, args.delay_max_ms / 1000.0
    loss = args.loss_pct / 100.0
    sel = selectors.DefaultSelector()
    socks = {}
    for ifname in args.ifaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((ifname, ETH_P_ALL))
        s.setblocking(False)
        socks[ifname] = s
        sel.register(s, selectors.EVENT_READ, ifname)
    # Drain anything captured before every port was bound.
    for s in socks.values():
        try:
            while s.recv(65535):
                pass
        except BlockingIOError:
            pass

    mac_port = {}  # source MAC -> port it was last seen on
    line = []  # heap of (due, seq, out_port, frame)
    seq = 0
    stats = {"in": 0, "out": 0, "dropped": 0, "flooded": 0, "send_errors": 0}
    stop = []

    def on_signal(_sig, _frm):
        stop.append(True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"relay: {len(socks)} ports, delay {args.delay_min_ms}-{args.delay_max_ms} ms, "
        f"loss {args.loss_pct}%",
        flush=True,
    )
    while not stop:
        now = time.monotonic()
        while line and line[0][0] <= now:
            _, _, port, frame = heapq.heappop(line)
            try:
                socks[port].send(frame)
                stats["out"] += 1
            except OSError:
                stats["send_errors"] += 1
        timeout = max(0.0, line[0][0] - now) if line else 0.5
        try:
            events = sel.select(timeout)
        except InterruptedError:
            continue
        for key, _ in events:
            inport = key.data
            s = key.fileobj
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                # Our own transmissions on this port are captured too.
                if addr[2] == PACKET_OUTGOING or len(frame) < 14:
                    continue
                stats["in"] += 1
                dst, src = frame[0:6], frame[6:12]
                if not src[0] & 1:
                    mac_port[src] = inport
                if loss and random.random() < loss:
                    stats["dropped"] += 1
                    continue
                out = mac_port.get(dst) if not dst[0] & 1 else None
                if out == inport:
                    continue  # already on the right segment
                ports = [out] if out else [p for p in socks if p != inport]
                if not out:
                    stats["flooded"] += 1
                due = time.monotonic() + random.uniform(lo, hi)
                for p in ports:
                    seq += 1
                    heapq.heappush(line, (due, seq, p, frame))
    print("relay: " + ", ".join(f"{k} {v}" for k, v in stats.items()), flush=True)
    return 0


def udp_echo(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", args.port))
    deadline = time.monotonic() + args.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return 0
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            return 0
        s.sendto(data, peer)


def udp_ping(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent_at = {}
    rtts = []
    dup = 0
    end = time.monotonic() + args.count * args.interval + args.wait
    next_send, n = time.monotonic(), 0
    while time.monotonic() < end:
        now = time.monotonic()
        if n < args.count and now >= next_send:
            sent_at[n] = now
            s.sendto(struct.pack("!Q", n) + b"\0" * 56, (args.addr, args.port))
            n += 1
            next_send += args.interval
        try:
            data, _ = s.recvfrom(2048)
            (i,) = struct.unpack("!Q", data[:8])
            t = sent_at.pop(i, None)
            if t is None:
                dup += 1
            else:
                rtts.append((time.monotonic() - t) * 1000.0)
            continue
        except BlockingIOError:
            pass
        if n >= args.count and not sent_at:
            break
        time.sleep(0.001)
    lost = n - len(rtts)
    line = f"udp-ping {args.addr}: {n} sent, {len(rtts)} received, {lost} lost ({100.0 * lost / max(n, 1):.1f}% round-trip loss)"
    if rtts:
        rtts.sort()
        mean = sum(rtts) / len(rtts)
        line += (
            f", rtt min/median/mean/max {rtts[0]:.1f}/{rtts[len(rtts) // 2]:.1f}/"
            f"{mean:.1f}/{rtts[-1]:.1f} ms"
        )
    print(line, flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("ifaces", nargs="+")
    r.add_argument("--delay-min-ms", type=float, default=40.0)
    r.add_argument("--delay-max-ms", type=float, default=60.0)
    r.add_argument("--loss-pct", type=float, default=0.0)
    o = sub.add_parser("offload-off")
    o.add_argument("ifaces", nargs="+")
    e = sub.add_parser("udp-echo")
    e.add_argument("port", type=int)
    e.add_argument("--timeout", type=float, default=30.0)
    u = sub.add_parser("udp-ping")
    u.add_argument("addr")
    u.add_argument("port", type=int)
    u.add_argument("--count", type=int, default=500)
    u.add_argument("--interval", type=float, default=0.01)
    u.add_argument("--wait", type=float, default=1.0, help="seconds to wait for late replies")
    a = p.parse_args()
    if a.cmd == "relay":
        return relay(a)
    if a.cmd == "offload-off":
        return offload_off(a.ifaces)
    if a.cmd == "udp-echo":
        return udp_echo(a)
    return udp_ping(a)


if __name__ == "__main__":
    sys.exit(main())
