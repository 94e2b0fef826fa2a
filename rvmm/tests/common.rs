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

/// Spawns `rvmm run args...` with piped stdio and reads its console until `text`
/// appears; returns the child (still running) and what it printed so far.
pub fn spawn_until(args: &[&str], text: &str) -> (std::process::Child, String) {
    use std::io::Read;
    let mut child = rvmm_run(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rvmm");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains(text) {
        let n = stdout.read(&mut buf).expect("read rvmm's console");
        assert!(n > 0, "rvmm ended before printing {text:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // Keep the pipe open (and drained) so the guest's later output cannot block rvmm.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, String::from_utf8_lossy(&seen).into_owned())
}
