"""The require mechanism itself: a missing part is a skip, unless SCANOUTD_REQUIRE names it.

A child pytest runs a real QEMU test with QEMU taken off PATH (a private PATH of links to every
other program), once without SCANOUTD_REQUIRE (the test is skipped, naming QEMU) and once with
`SCANOUTD_REQUIRE=qemu` (the test fails, naming QEMU), as CI would with QEMU gone. Also the
summary `make test` ends with (scripts/test-summary) on fixed inputs.
"""

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys

import pytest

import require
import spiceclient as sc

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(sc.REPO_ROOT, "scripts", "test-summary")


def _path_without(tmp_path, prefix):
    """A PATH of links to every program on the current PATH except those named prefix*."""
    d = tmp_path / "bin"
    d.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            src = os.path.join(entry, name)
            dst = d / name
            if name.startswith(prefix) or dst.exists() or not os.access(src, os.X_OK):
                continue
            os.symlink(src, dst)
    return str(d)


def _child(tmp_path, path, require_value):
    env = dict(os.environ, PATH=path)
    env.pop("SCANOUTD_TEST_STRESS", None)
    if require_value is None:
        env.pop("SCANOUTD_REQUIRE", None)
    else:
        env["SCANOUTD_REQUIRE"] = require_value
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
         os.path.join(HERE, "test_qemu.py"), "-k", "on_qemu_exit_exit_ends_the_service"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=120)


@pytest.mark.timeout_s(120)
def test_missing_qemu_is_a_skip_or_a_failure_when_required(tmp_path):
    path = _path_without(tmp_path, "qemu-system-")
    assert subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"], env={"PATH": path},
                          stdout=subprocess.DEVNULL).returncode != 0

    optional = _child(tmp_path, path, None)
    assert optional.returncode == 0, optional.stdout
    assert "1 skipped" in optional.stdout and "[qemu]" in optional.stdout, optional.stdout
    assert "qemu-system-x86_64" in optional.stdout, optional.stdout

    required = _child(tmp_path, path, "egl,qemu")
    assert required.returncode == 1, required.stdout
    # (a failure in a fixture is pytest's "error": a failed run all the same)
    assert re.search(r"\b1 (failed|error)\b", required.stdout), required.stdout
    assert "SCANOUTD_REQUIRE requires 'qemu', but it is missing" in required.stdout, \
        required.stdout
    assert "qemu-system-x86_64" in required.stdout, required.stdout


def test_the_require_list():
    assert require.list_requires("qemu,egl", "qemu")
    assert require.list_requires(" QEMU ", "qemu")
    assert require.list_requires("all", "netns")
    assert not require.list_requires("", "qemu")
    assert not require.list_requires("qemu-extra", "qemu")


def _summary_module():
    loader = importlib.machinery.SourceFileLoader("test_summary_script", SUMMARY)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


CARGO_LOG = """\
     Running unittests src/lib.rs (target/debug/deps/a-1)
running 3 tests
test a::one ... ok
test a::two ... ok
test a::gpu ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s
     Running tests/x.rs (target/debug/deps/x-2)
running 2 tests
test vm ... ok
test bad ... FAILED
test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s
"""
SKIPS = """\
SKIP: a::gpu: [egl] EGL cannot be initialised
SKIP: vm: [qemu] not installed: qemu-system-x86_64
SKIP: vm: [qemu] not installed: qemu-system-x86_64
"""
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4">
<testcase classname="test_a" name="test_ok" time="1"/>
<testcase classname="test_a" name="test_ok2" time="1"/>
<testcase classname="test_b" name="test_fail" time="1"><failure message="boom">x</failure></testcase>
<testcase classname="test_c" name="test_lag" time="0"><skipped type="pytest.skip"
 message="[netns] network namespaces need root">skip</skipped></testcase>
</testsuite></testsuites>
"""


def test_the_summary_counts_skips_as_skips_not_passes(tmp_path):
    junit = tmp_path / "e2e.xml"
    junit.write_text(JUNIT)
    ts = _summary_module()
    lines, ok = ts.summarize(CARGO_LOG, SKIPS, str(junit), rust_rc=101, e2e_rc=1)
    text = "\n".join(lines)
    assert not ok
    # rust: 4 passed by cargo's count, 2 of them skipped; 1 failed
    assert "rust: 5 tests in 2 test binaries: 2 passed, 1 failed, 2 skipped, 1 ignored" in text, text
    assert "FAILED bad" in text
    assert "e2e: 4 tests: 2 passed, 1 failed, 1 skipped" in text, text
    assert "FAILED test_b::test_fail" in text
    assert "rust a::gpu: [egl] EGL cannot be initialised" in text
    assert "e2e  test_c::test_lag: [netns] network namespaces need root" in text
    assert lines[-1] == "total: 4 passed, 2 failed, 3 skipped", lines[-1]

    clean = CARGO_LOG.replace("test bad ... FAILED\n", "").replace(
        "FAILED. 1 passed; 1 failed; 1 ignored", "ok. 1 passed; 0 failed; 0 ignored")
    junit.write_text(JUNIT.replace(
        '<testcase classname="test_b" name="test_fail" time="1"><failure message="boom">x'
        '</failure></testcase>', ""))
    lines, ok = ts.summarize(clean, "", str(junit))
    assert ok, lines
    assert lines[-1] == "total: 6 passed, 0 failed, 1 skipped", lines[-1]

    # A build error: no test results at all is a failure, not "0 failed".
    lines, ok = ts.summarize("error[E0425]: cannot find value\n", "", str(junit), rust_rc=101)
    assert not ok and any("no test results" in ln for ln in lines), lines
    # The e2e suite did not run.
    lines, ok = ts.summarize(clean, "", str(tmp_path / "missing.xml"))
    assert not ok and any("no pytest report" in ln for ln in lines), lines
