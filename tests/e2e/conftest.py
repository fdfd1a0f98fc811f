"""pytest fixtures for the scanoutd end-to-end tests (real spice-gtk client, remote-viewer).

Run with the system Python that has gi:
    /usr/bin/python3 -m pytest tests/e2e -v

Environment:
    SCANOUTD_BIN      server binary (default <repo>/target/debug/scanoutd)
    E2E_ARTIFACTS     where logs, screenshots and picture dumps go (default /tmp/scanoutd-e2e)
    E2E_TEST_TIMEOUT  per-test wall-clock limit in seconds (default 30; tests may ask for more)
    SCANOUTD_REQUIRE  parts that must be present (e.g. qemu,netns,spice-gtk,scanoutd, or all):
                      a test that would skip for lack of one fails instead (require.py)
    SCANOUTD_TEST_STRESS=1
                      run the whole session next to a CPU hog that keeps one core busy (the
                      suite must pass on a loaded machine; see docs/TESTING.md)

Tests skip, with the reason, only when a part is missing (QEMU, root for namespaces, the
spice-gtk typelib, the scanoutd binary); anything else that is missing (Xvfb, remote-viewer,
ImageMagick) is a failure.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spiceclient as sc  # noqa: E402
from require import need  # noqa: E402

DEFAULT_TIMEOUT = float(os.environ.get("E2E_TEST_TIMEOUT", "30"))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(seconds): per-test wall-clock limit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def _per_test_timeout(request):
    """Bound every test: SIGALRM sets the harness abort flag (which every pump loop checks) and
    raises. Each wait in the harness is bounded too; this is the backstop."""
    m = request.node.get_closest_marker("timeout_s")
    limit = float(m.args[0]) if m else DEFAULT_TIMEOUT
    sc.clear_abort()

    def on_alarm(signum, frame):
        msg = f"test exceeded its {limit:.0f} s limit"
        sc.request_abort(msg)
        raise sc.Aborted(msg)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        sc.clear_abort()


@pytest.fixture(scope="session", autouse=True)
def _cpu_hog():
    """With SCANOUTD_TEST_STRESS=1: a busy loop on one core for the whole session (started and
    ended here, by PID), so the suite runs as it would on a loaded CI machine."""
    if os.environ.get("SCANOUTD_TEST_STRESS") != "1":
        yield None
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    print(f"\nSCANOUTD_TEST_STRESS=1: CPU hog running as pid {hog.pid}")
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait(5)


@pytest.fixture(scope="session")
def spice_gi():
    reason = sc.spice_gi_missing_reason()
    if reason:
        need("spice-gtk", reason)
    return sc.spice_gi()


@pytest.fixture(scope="session")
def scanoutd_bin():
    path = sc.default_scanoutd_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        need("scanoutd", f"scanoutd binary not found at {path} (build it with `cargo build`, or set "
                    f"SCANOUTD_BIN)")
    return path


@pytest.fixture
def artifacts(request):
    """A fresh per-test folder under $E2E_ARTIFACTS (emptied at the start of the test)."""
    root = sc.artifacts_dir()
    d = os.path.join(root, request.node.name.replace("/", "_"))
    if os.path.isdir(d) and os.path.realpath(d).startswith(os.path.realpath(root) + os.sep):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d, exist_ok=True)
    return d


@pytest.fixture
def workdir():
    """A private scratch folder (sockets, logs, screendumps), removed afterwards."""
    d = tempfile.mkdtemp(prefix="sod-e2e-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers(request, scanoutd_bin, artifacts):
    """Factory: servers(scene=..., size=..., fps=..., password=...) -> started ScanoutdServer.

    Every server is stopped (SIGTERM, then SIGKILL) at teardown; on failure its log tail is
    printed, and the log stays under $E2E_ARTIFACTS.
    """
    started = []

    def start(**kw):
        kw.setdefault("log_dir", artifacts)
        srv = sc.ScanoutdServer(binary=scanoutd_bin, **kw)
        started.append(srv)
        return srv.start()

    yield start
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    for srv in started:
        alive_before_stop = srv.alive()
        rc = srv.stop()
        if failed or not alive_before_stop:
            print(f"\n--- scanoutd log ({srv.log_path}); alive at teardown: "
                  f"{alive_before_stop}, exit code {rc} ---\n{srv.log_tail()}")


@pytest.fixture
def clients(spice_gi):
    """Factory: clients(uri, **kw) -> connected SpiceClient; all are closed at teardown."""
    made = []

    def make(uri, **kw):
        c = sc.SpiceClient(uri, **kw)
        made.append(c)
        return c.connect()

    yield make
    for c in made:
        try:
            c.close()
        except Exception as e:  # pragma: no cover
            print(f"closing {c.name}: {e!r}")
