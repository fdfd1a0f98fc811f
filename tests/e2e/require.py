"""Skips that cannot hide a missing part (the Python side of `scanoutd_testkit::require`).

`SCANOUTD_REQUIRE` is a comma-separated list of parts (or `all`) that must be present. A test
that lacks a part calls `need(part, reason)`: when the part is listed the test fails with the
reason, otherwise it is skipped with `[part] reason`, and pytest counts and lists it as
skipped. Part names: `qemu` (qemu-system-x86_64 and dbus-daemon), `netns` (root, ip, tc/tbf),
`spice-gtk` (the SpiceClientGLib 2.0 typelib), `scanoutd` (the server binary).
"""

import os

import pytest

REQUIRE_VAR = "SCANOUTD_REQUIRE"


def list_requires(value, part):
    """Whether a SCANOUTD_REQUIRE value names `part` (or says `all`)."""
    names = [p.strip().lower() for p in (value or "").split(",")]
    return part.lower() in names or "all" in names


def required(part):
    return list_requires(os.environ.get(REQUIRE_VAR, ""), part)


def need(part, reason):
    """`part` is missing for `reason`: fail when the run requires it, else skip."""
    if required(part):
        pytest.fail(f"{REQUIRE_VAR} requires {part!r}, but it is missing: {reason}",
                    pytrace=False)
    pytest.skip(f"[{part}] {reason}")
