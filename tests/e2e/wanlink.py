"""WAN-like links between a server namespace and a client namespace, for the lag tests.

Every profile joins two namespaces made by `netns.NetLab` with a veth pair:

    sod-srv-<pid>                                        sod-cli-<pid>
    scanoutd 0.0.0.0:5900, metrics 0.0.0.0:9100
      vsrv0 10.250.0.1/24  ------- veth ----------->     vcli0 10.250.0.2/24
      (tbf on vsrv0's egress: everything the server      the client: spice://10.250.0.1:5900,
       sends towards the client)                         or through the relay (below)

and shapes the server-to-client direction in one of three ways:

  * tbf (`shallow-4m`, `deep-1.5m`, `deep-500k`): a token bucket on vsrv0's egress. Its queue
    holds `rate x latency + burst` bytes: with `latency 50ms` (shallow-4m, test_lag.py's link)
    a packet waits at most ~80 ms and one that does not fit is dropped, so TCP backs off at
    once; with `latency 2s` (a bloated router) the queue holds two seconds of data and TCP
    fills it before it loses anything, so a sender that only reacts to loss or to a blocked
    socket keeps pictures seconds old. The kernel has no netem: no propagation delay is added,
    the link's delay is queueing and serialization only.
  * relay (`relay-1.5m`): an SSH-tunnel-like path. No qdisc; `relay.py` runs in the client
    namespace, listens on 127.0.0.1:5901 there and connects to the server over the unshaped
    veth for every connection the client opens (main, display, inputs, cursor: they all go
    through it and share its one rate). It reads the server's data at a fixed 1.5 Mbit/s with
    a large SO_RCVBUF on the upstream sockets and a large SO_SNDBUF towards the client (2 MB
    asked, the kernel grants twice that), so the server's socket never blocks until megabytes
    wait in the relay: the queue is in the tunnel, invisible to the server except as delay. The
    client uses spice://127.0.0.1:5901. The relay writes its byte count and the bytes waiting
    in its sockets (SIOCINQ/SIOCOUTQ) once a second to a stats file.
  * step (`step-20m-2m`): a deep tbf (latency 2s) at 20 Mbit/s, changed in place
    (`tc qdisc change`) to 2 Mbit/s at a moment the test picks; `WanLink.step()` applies it
    and records the unix time.

The server namespace's TCP congestion control is set to a loss-based one, `cubic` (Linux's
default) or, where the kernel does not allow that in a namespace (tcp_allowed_congestion_control
without it: EPERM), `reno`. A new namespace otherwise inherits the host's, which may be BBR, a
delay-based one that keeps a router's queue short by itself and would hide what the server
must cope with; a loss-based sender fills a deep buffer before it backs off, the worst case,
on every machine alike. The root namespace's settings are never changed.

    with netns.NetLab() as lab:
        link = wanlink.setup(lab, wanlink.PROFILES["deep-1.5m"], log_dir=artifacts)
        lab.popen(link.srv, ["scanoutd", "serve", ...])
        lab.popen(link.cli, [..., "--uri", link.uri])
        link.sample()            # about once a second: tc backlog / relay queue, bytes carried
        link.step()              # step profiles only
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRV_ADDR, CLI_ADDR = "10.250.0.1", "10.250.0.2"
SRV_DEV, CLI_DEV = "vsrv0", "vcli0"
SPICE_PORT, RELAY_PORT = 5900, 5901
RELAY_BUF = 2 * 1024 * 1024
CONGESTION_CONTROL = ("cubic", "reno")   # the first one the namespace accepts


@dataclass(frozen=True)
class Profile:
    """One link. `kbps` is its rate (for a step: before it; `after_kbps` after it)."""
    name: str
    kind: str                     # "tbf", "relay" or "step"
    kbps: float
    tbf: dict | None = None       # rate/burst/latency on the server's egress
    after_kbps: float | None = None
    after_tbf: dict | None = None
    relay_buf: int = 0
    note: str = ""

    @property
    def end_kbps(self):
        """The rate at the end of a run (after the step, if any)."""
        return self.after_kbps if self.after_kbps is not None else self.kbps

    def describe(self):
        if self.kind == "relay":
            return (f"{self.name}: userspace relay at {self.kbps:.0f} kbit/s, socket buffers "
                    f"{self.relay_buf // (1024 * 1024)} MB asked")
        s = f"{self.name}: tbf {self.tbf}"
        if self.after_tbf:
            s += f", stepped to {self.after_tbf}"
        return s


PROFILES = {p.name: p for p in (
    Profile("shallow-4m", "tbf", 4000, tbf=dict(rate="4mbit", burst="16kb", latency="50ms"),
            note="test_lag.py's link: a queue of ~80 ms"),
    Profile("deep-1.5m", "tbf", 1500, tbf=dict(rate="1500kbit", burst="16kb", latency="2s"),
            note="a bloated router: 2 s of queue at 1.5 Mbit/s"),
    Profile("deep-500k", "tbf", 500, tbf=dict(rate="500kbit", burst="16kb", latency="2s"),
            note="a bloated router: 2 s of queue at 500 kbit/s"),
    Profile("relay-1.5m", "relay", 1500, relay_buf=RELAY_BUF,
            note="an SSH tunnel: megabytes of socket buffer in a 1.5 Mbit/s relay"),
    Profile("step-20m-2m", "step", 20000, tbf=dict(rate="20mbit", burst="16kb", latency="2s"),
            after_kbps=2000, after_tbf=dict(rate="2mbit", burst="16kb", latency="2s"),
            note="a deep 20 Mbit/s link that drops to 2 Mbit/s mid-run"),
)}


@dataclass
class WanLink:
    """A profile set up in a NetLab: where the server runs, where the client runs and the URI
    it uses, the link's samples and the step's time."""
    lab: netns.NetLab
    profile: Profile
    srv: str
    cli: str
    uri: str
    relay: object = None          # the relay's Popen (relay profiles)
    relay_stats_path: str | None = None
    tc_line: str = ""
    step_unix: float | None = None
    step_line: str = ""
    cc: str = ""                  # the server namespace's TCP congestion control
    samples: list = field(default_factory=list)

    def kbps_at(self, t_unix):
        """The link's rate at unix time `t_unix`."""
        if self.step_unix is not None and t_unix >= self.step_unix:
            return self.profile.end_kbps
        return self.profile.kbps

    def step(self):
        """Apply the profile's step (tc qdisc change); returns the unix time it took effect
        (the moment `tc` returned: the change is in place by then)."""
        assert self.profile.after_tbf, f"{self.profile.name} has no step"
        self.step_line = self.lab.tbf_change(self.srv, SRV_DEV, **self.profile.after_tbf)
        self.step_unix = time.time()
        return self.step_unix

    def sample(self):
        """One sample of the link now, appended to `samples` and returned:
        tbf: {t, sent_bytes, backlog_bytes, backlog_pkts, dropped, queue_ms}; relay: the
        relay's latest stats line ({t, bytes_down, queued_in, queued_out, ...}) with
        sent_bytes = bytes_down, backlog_bytes = queued_in + queued_out and queue_ms."""
        t = time.time()
        if self.profile.kind == "relay":
            s = read_relay_stats(self.relay_stats_path)
            if not s:
                return None
            s = dict(s[-1])
            s["sent_bytes"] = s.get("bytes_down", 0)
            s["backlog_bytes"] = s.get("queued_in", 0) + s.get("queued_out", 0)
        else:
            s = self.lab.qdisc_stats(self.srv, SRV_DEV)
            s["t"] = t
        s["queue_ms"] = s.get("backlog_bytes", 0) * 8 / self.kbps_at(s["t"])
        self.samples.append(s)
        return s

    def carried_kbps(self, ta, tb):
        """What the link carried towards the client over [ta, tb] (unix s), from the samples
        (the tbf's sent bytes include TCP/IP headers and every channel; the relay's are
        payload)."""
        pts = [s for s in self.samples if ta <= s["t"] <= tb and "sent_bytes" in s]
        if len(pts) < 2 or pts[-1]["t"] - pts[0]["t"] < 1.0:
            return None
        return ((pts[-1]["sent_bytes"] - pts[0]["sent_bytes"]) * 8
                / (pts[-1]["t"] - pts[0]["t"]) / 1000.0)

    def max_queue(self, ta, tb):
        """(the largest backlog in bytes, its delay at the link's rate in ms) over [ta, tb]."""
        pts = [s for s in self.samples if ta <= s["t"] <= tb]
        if not pts:
            return None, None
        worst = max(pts, key=lambda s: s.get("queue_ms", 0))
        return worst.get("backlog_bytes"), worst.get("queue_ms")


def read_relay_stats(path):
    """The relay's stats lines ([{...}], an incomplete last line ignored)."""
    out = []
    try:
        with open(path) as f:
            for ln in f:
                try:
                    out.append(json.loads(ln))
                except ValueError:
                    continue
    except (OSError, TypeError):
        pass
    return out


def set_congestion_control(lab, ns, names):
    """Set `ns`'s default TCP congestion control (a per-namespace sysctl) to the first of
    `names` it accepts; returns the one in effect (the inherited one if none was accepted)."""
    path = "/proc/sys/net/ipv4/tcp_congestion_control"
    for name in names:
        lab.exec(ns, ["sh", "-c", f"echo {name} > {path}"], check=False)
        now = lab.exec(ns, ["cat", path], check=False).stdout.strip()
        if now == name:
            return now
    return now


def setup(lab, profile, log_dir, python=sys.executable):
    """Make the two namespaces, the veth pair and the profile's shaping (tbf, or the relay in
    the client namespace, listening before this returns). The server must listen on
    0.0.0.0:SPICE_PORT in `link.srv`; the client runs in `link.cli` and uses `link.uri`."""
    srv = lab.add_ns("srv")
    cli = lab.add_ns("cli")
    lab.veth(srv, SRV_DEV, f"{SRV_ADDR}/24", cli, CLI_DEV, f"{CLI_ADDR}/24")
    link = WanLink(lab, profile, srv, cli, uri=f"spice://{SRV_ADDR}:{SPICE_PORT}")
    link.cc = set_congestion_control(lab, srv, CONGESTION_CONTROL)
    if profile.tbf:
        link.tc_line = lab.tbf(srv, SRV_DEV, **profile.tbf)
    if profile.kind == "relay":
        link.relay_stats_path = os.path.join(log_dir, "relay-stats.jsonl")
        log = os.path.join(log_dir, "relay.log")
        link.relay = lab.popen(cli, [
            python, "-u", os.path.join(HERE, "relay.py"), str(SPICE_PORT),
            str(profile.kbps), "--target-host", SRV_ADDR, "--bind", "127.0.0.1",
            "--port", str(RELAY_PORT), "--rcvbuf", str(profile.relay_buf),
            "--sndbuf", str(profile.relay_buf), "--stats", link.relay_stats_path],
            log_path=log)
        lab.wait_listening(link.relay, RELAY_PORT, log_path=log)
        link.uri = f"spice://127.0.0.1:{RELAY_PORT}"
    return link
