"""A userspace TCP relay on 127.0.0.1 that carries the server-to-client direction at a fixed
rate: a throttled link without network namespaces (no root). Every connection through one
relay shares the rate, as the channels of one SPICE client share a link.

    with Relay(target_port, kbps=1200) as r:
        client connects to 127.0.0.1:r.port

Small socket buffers on the relay's upstream side let the server feel the backpressure the way
it would on a real link with a shallow queue. Threads are daemon threads; stop() closes every
socket and joins them (bounded).
"""

import socket
import threading
import time

CHUNK = 1400


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
    def __init__(self, target_port, kbps, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.bucket = Bucket(kbps)
        self.stop_ev = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.threads = []
        self.sockets = []
        self.bytes_down = 0

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
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            self.sockets += [client, upstream]
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


if __name__ == "__main__":
    import signal
    import sys
    r = Relay(int(sys.argv[1]), float(sys.argv[2]))
    r.__enter__()
    print(f"port {r.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: r.stop_ev.set())
    while not r.stop_ev.is_set():
        time.sleep(0.2)
    r.stop()
