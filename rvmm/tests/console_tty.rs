//! The console on a real terminal: rvmm puts it in raw mode (keys reach the
//! guest one by one, unprocessed), Ctrl-A x quits, and the terminal's settings
//! are restored afterwards. Runs rvmm on a pseudo-terminal, as a person would.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn open_pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the provided ints; the name, termios and
    // winsize pointers may be null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    (master, slave)
}

fn local_flags(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

/// Reads from the master until `text` has appeared or the deadline passes.
fn read_until(master: &mut File, seen: &mut String, text: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        if seen.contains(text) {
            return true;
        }
    }
    false
}

#[test]
fn raw_mode_echo_and_ctrl_a_x() {
    let (mut master, slave) = open_pty();
    let before = local_flags(&slave);
    assert!(before & libc::ICANON != 0, "a new pty starts in canonical mode");

    let mut child = Command::new(RVMM)
        .args(["run", "--kernel", rvmm_probes::PVH_ELF, "--cmdline", "echo"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    assert!(read_until(&mut master, &mut seen, "probe-result: ok", TIMEOUT), "no report:\n{seen}");
    assert_eq!(local_flags(&slave) & (libc::ICANON | libc::ECHO), 0, "rvmm must put the terminal in raw mode");

    // Without a newline: only a raw-mode terminal passes these bytes on at once,
    // and only the guest's echo can bring them back.
    seen.clear();
    master.write_all(b"zq7").unwrap();
    assert!(read_until(&mut master, &mut seen, "zq7", TIMEOUT), "the guest did not echo typed keys:\n{seen:?}");

    master.write_all(&[0x01, b'x']).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "Ctrl-A x did not end rvmm");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(local_flags(&slave), before, "rvmm must restore the terminal's settings");
}

#[test]
fn virtio_console_shows_the_terminal_size() {
    let (mut master, slave) = open_pty();
    let ws = libc::winsize { ws_row: 31, ws_col: 97, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, valid for the call.
    assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);

    let mut child = Command::new(RVMM)
        .args(["run", "--kernel", rvmm_probes::PVH_ELF, "--console", "virtio", "--cmdline", "console"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // COM1 (the probe's report) is discarded; the probe writes the size it read on hvc0.
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "vcon-size: cols=97 rows=31", TIMEOUT);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    read_until(&mut master, &mut seen, "\n", Duration::from_millis(200));
    // VIRTIO_CONSOLE_F_SIZE was offered and accepted, and the guest read cols, then rows.
    let got = seen.lines().any(|l| l.trim_end() == "vcon-size: cols=97 rows=31");
    assert!(got, "the guest did not report the terminal's size:\n{seen}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{seen}");
}
