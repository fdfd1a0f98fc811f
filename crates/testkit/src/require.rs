//! Skips that cannot hide a missing part.
//!
//! A test that needs a real part this machine may lack (QEMU, EGL, a GStreamer element, ...)
//! calls [`skip`] when it is missing. What happens then depends on `SCANOUTD_REQUIRE`, a
//! comma-separated list of parts (or `all`) that must be present:
//!
//! - the part is listed: the test **fails** (panics) with the reason, so a CI run that is
//!   supposed to exercise QEMU cannot pass without it;
//! - otherwise the test prints `SKIP: <test>: [<part>] <reason>` on stderr, appends the same
//!   line to the file `SCANOUTD_SKIP_LOG` names (if any: `make test` collects it, because
//!   cargo hides the output of passing tests), and returns; the caller then returns early.
//!
//! The names of parts are the ones `.ci/run` lists in `SCANOUTD_REQUIRE` (see
//! `docs/TESTING.md`): `qemu` (qemu-system-x86_64 and dbus-daemon), `egl`, `encoders` (the
//! software encoders `scripts/install-deps` installs), `netns`, `spice-gtk`, `scanoutd`; parts
//! that only hardware hosts have (`hw`, `openh264`) are never required in CI.

use std::io::Write as _;

/// The environment variable listing the parts that must be present.
pub const REQUIRE_VAR: &str = "SCANOUTD_REQUIRE";
/// The environment variable naming the file skipped tests are appended to.
pub const SKIP_LOG_VAR: &str = "SCANOUTD_SKIP_LOG";

/// Whether `list` (the value of `SCANOUTD_REQUIRE`) names `part`.
pub fn list_requires(list: &str, part: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|p| p.eq_ignore_ascii_case(part) || p.eq_ignore_ascii_case("all"))
}

/// Whether this run requires `part` (it is named in `SCANOUTD_REQUIRE`).
pub fn required(part: &str) -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| list_requires(&v, part))
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// The line a skip is reported with.
pub fn skip_line(test: &str, part: &str, reason: &str) -> String {
    let reason = reason.replace('\n', " ");
    format!("SKIP: {test}: [{part}] {reason}")
}

/// `part` is missing, for `reason`: fail the test when the run requires the part, else report
/// the skip (stderr and `SCANOUTD_SKIP_LOG`) so the caller can return.
///
/// # Panics
///
/// When `SCANOUTD_REQUIRE` names `part`.
#[track_caller]
pub fn skip(part: &str, reason: &str) {
    if required(part) {
        panic!("{REQUIRE_VAR} requires {part:?}, but it is missing: {reason}");
    }
    let line = skip_line(&test_name(), part, reason);
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        // One short line per write, opened in append mode: lines from parallel tests and
        // test binaries do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("(could not append to {}: {e})", path.to_string_lossy());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_require_list() {
        assert!(list_requires("qemu,egl", "qemu"));
        assert!(list_requires(" qemu , egl ", "egl"));
        assert!(list_requires("QEMU", "qemu"));
        assert!(list_requires("all", "netns"));
        assert!(!list_requires("qemu,egl", "netns"));
        assert!(!list_requires("", "qemu"));
        assert!(!list_requires("qemu-extra", "qemu"));
    }

    /// The real thing, in a child run of this very test binary: a skip of a part the run
    /// does not require is logged and the test passes; once `SCANOUTD_REQUIRE` names the part,
    /// the same test fails with the reason.
    #[test]
    fn a_required_part_fails_and_another_is_logged_as_skipped() {
        const NAME: &str = "require::tests::a_required_part_fails_and_another_is_logged_as_skipped";
        if std::env::var_os("SCANOUTD_REQUIRE_SELFTEST").is_some() {
            skip("selftest-part", "pretending it is missing");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let log = std::env::temp_dir().join(format!("scanoutd-skiplog-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let run = |require: &str| {
            std::process::Command::new(&exe)
                .args(["--exact", NAME, "--test-threads", "1"])
                .env("SCANOUTD_REQUIRE_SELFTEST", "1")
                .env(REQUIRE_VAR, require)
                .env(SKIP_LOG_VAR, &log)
                .output()
                .unwrap()
        };
        let optional = run("qemu,egl");
        assert!(optional.status.success(), "{optional:?}");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            logged,
            format!("SKIP: {NAME}: [selftest-part] pretending it is missing\n")
        );
        let required = run("qemu,selftest-part");
        assert!(!required.status.success(), "{required:?}");
        let out = String::from_utf8_lossy(&required.stdout).to_string()
            + &String::from_utf8_lossy(&required.stderr);
        assert!(
            out.contains("requires \"selftest-part\", but it is missing: pretending it is missing"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            logged,
            "a failure is no skip"
        );
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn the_skip_line_names_test_part_and_reason() {
        assert_eq!(
            skip_line("a::b", "egl", "no\nEGL"),
            "SKIP: a::b: [egl] no EGL"
        );
    }
}
