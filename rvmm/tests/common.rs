//! Helpers shared by rvmm's end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rvmm_tests::{VmOutput, VmRunner};

/// The rvmm binary cargo built for these tests.
pub const RVMM: &str = env!("CARGO_BIN_EXE_rvmm");

/// A time limit generous for a 2-core CI machine; probes finish in well under a second.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `rvmm run` with `args`.
pub fn rvmm_run(args: &[&str]) -> Command {
    let mut cmd = Command::new(RVMM);
    cmd.arg("run").args(args);
    cmd
}

/// Runs `rvmm run args...` to completion with the standard time limit.
pub fn run(args: &[&str]) -> VmOutput {
    VmRunner::new(rvmm_run(args)).timeout(TIMEOUT).run().expect("spawn rvmm")
}

/// A scratch file path unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rvmm-e2e-{}-{name}", std::process::id()))
}

/// Writes an initrd of `len` known bytes and returns its path and contents.
pub fn initrd(name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(131) ^ (i >> 9)) as u8).collect();
    let path = scratch(name);
    std::fs::write(&path, &bytes).expect("write initrd");
    (path, bytes)
}

/// Asserts that the VM exited with `code`, showing its output otherwise.
pub fn assert_exit(out: &VmOutput, code: i32) {
    assert!(!out.timed_out, "rvmm timed out\n{}", out.describe());
    assert_eq!(out.exit_code(), Some(code), "unexpected exit\n{}", out.describe());
}
