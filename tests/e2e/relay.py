"""A userspace TCP relay on 127.0.0.1 that carries the server-to-client direction at a fixed
rate: a throttled link without network namespaces (no root). Every connection through one
relay shares the rate, as the channels of one SPICE client share a link.

    with Relay(target_port, kbps=1200) as r:
        client connects to 127.0.0.1:r.port

Small socket buffers on the relay's upstream side (32 KB, the default) let the server feel the
backpressure the way it would on a real link with a shallow queue. Large ones (`rcvbuf` on the
upstream socket, `sndbuf` on the client's side, a few MB) make an SSH-tunnel-like path instead:
the relay takes in everything the server sends at once and passes it on at the fixed rate, so
the server never feels backpressure directly and the data waits, seconds long, in the relay's
buffers (tests/e2e/wanlink.py, profile relay-1.5m). Threads are daemon threads; stop() closes
every socket and joins them (bounded).

As a program (what RelayProcess and wanlink.py run):

    python3 relay.py TARGET_PORT KBPS [--target-host H] [--bind H] [--port P]
                     [--rcvbuf BYTES] [--sndbuf BYTES] [--stats FILE]

prints `port N` once listening; with --stats it appends one JSON line a second:
{"t": unix s, "bytes_down": carried towards the clients so far, "connections": n,
 "queued_in": bytes waiting in the upstream sockets' receive queues (SIOCINQ),
 "queued_out": bytes not yet acknowledged by the clients (SIOCOUTQ), "rcvbuf"/"sndbuf": the
 buffer sizes the kernel granted (it doubles the request)}.
"""

import fcntl
import json
import socket
import struct
import termios
import threading
import time

CHUNK = 1400
SMALL_BUF = 32 * 1024


def _set_buf(sock, opt, force_opt, size):
    """Set a socket buffer; as root past net.core.[rw]mem_max (SO_*BUFFORCE). Returns the size
    the kernel granted."""
    try:
        if force_opt is None:
            raise OSError("no SO_*BUFFORCE")
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)
    return sock.getsockopt(socket.SOL_SOCKET, opt)


def _queued(sock, req):
    """Bytes in a TCP socket's receive (termios.FIONREAD = SIOCINQ) or unacknowledged send
    (termios.TIOCOUTQ = SIOCOUTQ) queue; 0 once closed."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), req, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0


class Bucket:
    """A token bucket shared by every connection of a relay (bytes/s, bounded burst)."""

    def __init__(self, kbps, burst=16 * 1024):
        self.rate = kbps * 1000 / 8
        self.burst = burst
        self.tokens = burst
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n, stop):
        while not stop.is_set():
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(min(wait, 0.05))


class Relay:
    def __init__(self, target_port, kbps, target_host="127.0.0.1", bind_host="127.0.0.1",
                 port=0, rcvbuf=SMALL_BUF, sndbuf=SMALL_BUF):
        self.target = (target_host, target_port)
        self.bucket = Bucket(kbps)
        self.rcvbuf, self.sndbuf = rcvbuf, sndbuf
        self.granted = {}
        self.stop_ev = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((bind_host, port))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads = []
        self.sockets = []
        self.pairs = []             # (client, upstream) per connection
        self.bytes_down = 0
        self.count_lock = threading.Lock()

    def __enter__(self):
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if self.rcvbuf > SMALL_BUF:
                    # a large buffer before connect(), so that the window scale offered in
                    # the SYN lets the server fill all of it
                    self.granted["rcvbuf"] = _set_buf(upstream, socket.SO_RCVBUF,
                                                      getattr(socket, "SO_RCVBUFFORCE", None),
                                                      self.rcvbuf)
                upstream.settimeout(5)
                upstream.connect(self.target)
            except OSError:
                upstream.close()
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
            if self.rcvbuf <= SMALL_BUF:
                # the small default after connect(), as it always was
                self.granted["rcvbuf"] = _set_buf(upstream, socket.SO_RCVBUF, None, self.rcvbuf)
            self.granted["sndbuf"] = _set_buf(
                client, socket.SO_SNDBUF,
                getattr(socket, "SO_SNDBUFFORCE", None) if self.sndbuf > SMALL_BUF else None,
                self.sndbuf)
            self.sockets += [client, upstream]
            self.pairs.append((client, upstream))
            for src, dst, throttled in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, throttled), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, throttled):
        try:
            while not self.stop_ev.is_set():
                try:
                    data = src.recv(CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    break
                if throttled:
                    self.bucket.take(len(data), self.stop_ev)
                    with self.count_lock:
                        self.bytes_down += len(data)
                view = memoryview(data)
                while view and not self.stop_ev.is_set():
                    try:
                        n = dst.send(view)
                    except socket.timeout:
                        continue
                    view = view[n:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stats(self):
        """What the relay carried and what waits in its buffers now (see the module doc)."""
        pairs = list(self.pairs)
        with self.count_lock:
            down = self.bytes_down
        return {"t": time.time(), "bytes_down": down, "connections": len(pairs),
                "queued_in": sum(_queued(u, termios.FIONREAD) for _, u in pairs),
                "queued_out": sum(_queued(c, termios.TIOCOUTQ) for c, _ in pairs),
                "rcvbuf": self.granted.get("rcvbuf"), "sndbuf": self.granted.get("sndbuf")}

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in self.sockets + [self.listener]:
            try:
                s.close()
            except OSError:
                pass


class RelayProcess:
    """The relay in a process of its own (so its threads do not compete with the test's
    clients for the interpreter), ended by PID."""

    def __init__(self, target_port, kbps):
        import subprocess
        import sys
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__, str(target_port), str(kbps)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "port":
            self.stop()
            raise RuntimeError(f"the relay did not start: {line}")
        self.port = int(line[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)


def main(argv=None):
    import argparse
    import signal
    ap = argparse.ArgumentParser(description="a TCP relay carrying server-to-client at KBPS")
    ap.add_argument("target_port", type=int)
    ap.add_argument("kbps", type=float)
    ap.add_argument("--target-host", default="127.0.0.1")
    ap.add_argument("--bind", default="127.0.0.1", help="listening address")
    ap.add_argument("--port", type=int, default=0, help="listening port (0: any free one)")
    ap.add_argument("--rcvbuf", type=int, default=SMALL_BUF,
                    help="SO_RCVBUF of each upstream socket, bytes")
    ap.add_argument("--sndbuf", type=int, default=SMALL_BUF,
                    help="SO_SNDBUF of each client-side socket, bytes")
    ap.add_argument("--stats", help="append one JSON line of stats() a second to this file")
    a = ap.parse_args(argv)
    r = Relay(a.target_port, a.kbps, target_host=a.target_host, bind_host=a.bind, port=a.port,
              rcvbuf=a.rcvbuf, sndbuf=a.sndbuf)
    r.__enter__()
    print(f"port {r.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: r.stop_ev.set())
    out = open(a.stats, "a") if a.stats else None
    nxt = time.monotonic()
    while not r.stop_ev.is_set():
        time.sleep(0.2)
        if out is not None and time.monotonic() >= nxt:
            nxt += 1.0
            out.write(json.dumps(r.stats()) + "\n")
            out.flush()
    r.stop()
    if out is not None:
        out.write(json.dumps(r.stats()) + "\n")
        out.close()
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
