//! Helpers shared by the CLI tests: running the `ramole` binary as a user would, and reading what it
//! said.
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `ramole args` with backtraces off, under `timeout` so that a command that blocks fails the
/// test (exit status 124) instead of hanging it. `home` is the `$RAMOLE_HOME` to use (a private one
/// for tests that must not see the shared cache), or the environment's.
pub fn run_in(home: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("600").arg(env!("CARGO_BIN_EXE_ramole")).args(args).env("RUST_BACKTRACE", "0");
    if let Some(home) = home {
        cmd.env("RAMOLE_HOME", home);
    }
    cmd.output().expect("run ramole")
}

/// Runs `ramole args` with the environment's `$RAMOLE_HOME` (see [`run_in`]).
pub fn ramole(args: &[&str]) -> Output {
    run_in(None, args)
}

/// What the command printed on stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `ramole args`, expecting success.
pub fn ok(args: &[&str]) -> Output {
    let out = ramole(args);
    assert!(out.status.success(), "ramole {args:?} failed: {}", stderr(&out));
    out
}

/// Checks that `out` (of `ramole args`) is a clean failure: an error message, no panic, no hang;
/// returns stderr.
pub fn clean_failure(args: &[&str], out: &Output) -> String {
    let err = stderr(out);
    assert_ne!(out.status.code(), Some(124), "ramole {args:?} blocked");
    assert!(!out.status.success(), "ramole {args:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "ramole {args:?} panicked: {err}");
    err
}

/// Runs `ramole args`, expecting a clean failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    clean_failure(args, &ramole(args))
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `tests/data/fixtures` of the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures")
}
