"""Private network namespaces for end-to-end tests: veth links, tbf shaping, processes inside.

Everything here needs root and iproute2 (`ip`, `tc`). Only namespaces created here are touched,
and only processes started here are stopped (by PID). Addresses are 10.250.x.y on veth pairs
whose two ends both live in namespaces created here, so no traffic ever leaves them and the
root namespace's interfaces are never changed.

    with NetLab() as lab:
        srv, cli = lab.add_ns("srv"), lab.add_ns("cli")      # sod-srv-<pid>, sod-cli-<pid>
        lab.veth(srv, "vsrv0", "10.250.0.1/24", cli, "vcli0", "10.250.0.2/24")
        lab.tbf(srv, "vsrv0", rate="4mbit", burst="16kb", latency="50ms")
        p = lab.popen(srv, ["scanoutd", "serve", ...], log_path=...)
    # every process stopped (SIGTERM, then SIGKILL), every namespace deleted, also on errors

The kernel here has tbf and htb but not netem: bandwidth can be shaped, delay cannot be added
(a queue builds up only when more is sent than the link carries).

Run as a script, it polls a metrics URL (from inside a namespace, through `ip netns exec`):
    python3 netns.py poll-metrics URL --interval 0.5 --seconds 90 --out FILE
writing one JSON line per sample: {"t": unix seconds, "text": the Prometheus text}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spiceclient import stop_process  # noqa: E402  (one way to end a process, by PID)

PREFIX = "sod"
_NS_RE = re.compile(r"^sod-(srv|cli|lan|probe)-(\d+)$")
CMD_TIMEOUT = 10.0


class NetnsError(RuntimeError):
    pass


def _run(argv, timeout=CMD_TIMEOUT, check=True):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"{' '.join(argv)}: timed out after {timeout}s") from e
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: rc {r.returncode}: {r.stderr.strip()[:500]}")
    return r


def list_namespaces():
    r = _run(["ip", "netns", "list"], check=False)
    if r.returncode != 0:
        return []
    return [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]


def _pid_alive(pid):
    return os.path.exists(f"/proc/{pid}")


def cleanup_stale():
    """Delete namespaces this module made in an earlier run whose creating process is gone
    (e.g. a run killed with SIGKILL). Returns their names."""
    gone = []
    for name in list_namespaces():
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(2))):
            if _run(["ip", "netns", "del", name], check=False).returncode == 0:
                gone.append(name)
    return gone


def missing_reason():
    """None when namespaces, veth pairs and tbf can be used here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the test as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    name = f"{PREFIX}-probe-{os.getpid()}"
    try:
        r = _run(["ip", "netns", "add", name], check=False)
        if r.returncode != 0:
            return f"`ip netns add` does not work here: {r.stderr.strip()[:300]}"
        try:
            for argv, what in (
                (["ip", "-n", name, "link", "add", "vp0", "type", "veth", "peer", "name", "vp1"],
                 "veth pairs"),
                (["tc", "-n", name, "qdisc", "add", "dev", "vp0", "root", "tbf", "rate",
                  "1mbit", "burst", "16kb", "latency", "50ms"], "the tbf qdisc"),
            ):
                r = _run(argv, check=False)
                if r.returncode != 0:
                    return f"{what} unavailable: {' '.join(argv)}: {r.stderr.strip()[:300]}"
        finally:
            _run(["ip", "netns", "del", name], check=False)
    except (OSError, NetnsError) as e:
        return f"`ip netns` unavailable: {e}"
    return None


def tcp_listening(pid, port):
    """True if the process `pid`'s network namespace has a TCP socket listening on `port`
    (read from /proc/PID/net/tcp*, which shows that namespace, without connecting)."""
    for path in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) > 3 and parts[3] == "0A" and \
                    int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def parse_tc_stats(text):
    """{sent_bytes, sent_pkts, dropped, overlimits, backlog_bytes, backlog_pkts} from
    `tc -s qdisc show` text (first qdisc)."""
    out = {}
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", text)
    if m:
        out.update(sent_bytes=int(m.group(1)), sent_pkts=int(m.group(2)),
                   dropped=int(m.group(3)), overlimits=int(m.group(4)))
    m = re.search(r"backlog (\d+)([KMG]?)b (\d+)p", text)
    if m:
        mult = {"": 1, "K": 1000, "M": 1000_000, "G": 1000_000_000}[m.group(2)]
        out.update(backlog_bytes=int(m.group(1)) * mult, backlog_pkts=int(m.group(3)))
    return out


class NetLab:
    """Namespaces, veth pairs and processes that are all removed on close()."""

    def __init__(self, tag=None):
        self.tag = str(tag or os.getpid())
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.log_files = []
        self.stale_removed = cleanup_stale()

    # -- topology -------------------------------------------------------------------------

    def add_ns(self, role):
        name = f"{PREFIX}-{role}-{self.tag}"
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def veth(self, ns_a, dev_a, addr_a, ns_b, dev_b, addr_b):
        """A veth pair with one end in each namespace (created there directly, never in the
        root namespace), addressed and up."""
        _run(["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
              "netns", ns_b])
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def tbf(self, ns, dev, rate, burst, latency):
        """Shape `dev`'s egress with a token bucket. Returns the `tc qdisc show` line."""
        _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
              "burst", burst, "latency", latency])
        return self.qdisc_show(ns, dev, stats=False)

    def tbf_change(self, ns, dev, rate, burst, latency):
        """Change the token bucket `tbf()` put on `dev` in place (`tc qdisc change`: packets
        already queued stay queued). Returns the `tc qdisc show` line."""
        _run(["tc", "-n", ns, "qdisc", "change", "dev", dev, "root", "tbf", "rate", rate,
              "burst", burst, "latency", latency])
        return self.qdisc_show(ns, dev, stats=False)

    def qdisc_show(self, ns, dev, stats=True):
        argv = ["tc", "-n", ns] + (["-s"] if stats else []) + ["qdisc", "show", "dev", dev]
        return _run(argv, check=False).stdout.strip()

    def qdisc_stats(self, ns, dev):
        return parse_tc_stats(self.qdisc_show(ns, dev, stats=True))

    # -- processes ------------------------------------------------------------------------

    @staticmethod
    def argv(ns, argv):
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns, argv, log_path=None, env=None, stdout=None):
        """Start `argv` inside `ns` (ip netns exec execs it, so the PID is the program's own).
        Output goes to `log_path` (or `stdout`); the process is stopped on close()."""
        if log_path is not None:
            out = open(log_path, "ab")
            self.log_files.append(out)
            out.write(("$ " + " ".join(argv) + "\n").encode())
            out.flush()
            err = subprocess.STDOUT
        else:
            out, err = (stdout or subprocess.DEVNULL), subprocess.PIPE
        p = subprocess.Popen(self.argv(ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def exec(self, ns, argv, timeout=CMD_TIMEOUT, check=True):
        return _run(self.argv(ns, argv), timeout=timeout, check=check)

    def wait_listening(self, proc, port, timeout=20.0, log_path=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(log_path) if log_path else ""
                raise NetnsError(f"process exited with {proc.returncode} before listening on "
                                 f"{port}\n{tail}")
            if tcp_listening(proc.pid, port):
                return
            time.sleep(0.02)
        raise NetnsError(f"nothing listening on port {port} after {timeout}s")

    # -- teardown -------------------------------------------------------------------------

    def close(self):
        """Stop our processes (by PID), then delete our namespaces. Returns a list of
        problems (empty when everything went)."""
        problems = []
        for p in reversed(self.procs):
            try:
                stop_process(p, 5.0)
            except Exception as e:  # pragma: no cover
                problems.append(f"stopping pid {p.pid}: {e!r}")
            if p.poll() is None:
                problems.append(f"pid {p.pid} still running")
        self.procs.clear()
        for f in self.log_files:
            try:
                f.close()
            except OSError:
                pass
        self.log_files.clear()
        for ns in reversed(self.namespaces):
            left = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            if left:
                problems.append(f"{ns}: processes not started here still inside: {left}")
            r = _run(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0:
                problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
        self.namespaces.clear()
        return problems

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        problems = self.close()
        if problems:
            print("netns teardown: " + "; ".join(problems), file=sys.stderr)


def _tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"


# ------------------------------------------------------------------------------------------
# The metrics poller (runs inside a namespace)
# ------------------------------------------------------------------------------------------

def read_poll_file(path):
    """[(unix_s, text)] from a poll-metrics output file (incomplete last line ignored)."""
    out = []
    try:
        with open(path) as f:
            for ln in f:
                try:
                    d = json.loads(ln)
                except ValueError:
                    continue
                if d.get("text") is not None:
                    out.append((d["t"], d["text"]))
    except OSError:
        pass
    return out


def poll_metrics(url, interval, seconds, out_path):
    deadline = time.monotonic() + seconds
    errors = 0
    with open(out_path, "a") as out:
        while time.monotonic() < deadline:
            t = time.time()
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:
                    text = r.read().decode("utf-8", "replace")
                out.write(json.dumps({"t": t, "text": text}) + "\n")
                out.flush()
            except Exception as e:
                errors += 1
                out.write(json.dumps({"t": t, "error": f"{type(e).__name__}: {e}"}) + "\n")
                out.flush()
            time.sleep(max(0.0, interval - (time.time() - t)))
    return 0


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="metrics poller for tests in namespaces")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("poll-metrics")
    p.add_argument("url")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "poll-metrics":
        return poll_metrics(a.url, a.interval, min(a.seconds, 600.0), a.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
