//! Named network namespaces, the way iproute2 keeps them (a bind mount of the
//! namespace under /run/netns), and running code inside one.
//!
//! Nothing here shells out: creating a namespace is unshare(2) plus a bind mount,
//! entering one is setns(2) on a dedicated thread, so the calling thread (and the
//! rest of the process) stays where it is.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live.
pub const NETNS_RUN_DIR: &str = "/run/netns";

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The path of a namespace given by name (under /run/netns) or by absolute path.
pub fn path_of(name_or_path: &str) -> PathBuf {
    if name_or_path.starts_with('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_RUN_DIR).join(name_or_path)
    }
}

/// Whether `path` is a namespace bind mount (and not a stale file).
pub fn is_netns(path: &Path) -> bool {
    let Ok(f) = File::open(path) else { return false };
    // SAFETY: fstatfs writes into a zeroed statfs we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    is_netns(&path_of(name))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes /run/netns a shared mount point, like `ip netns add` does, so that namespace
/// mounts made later propagate into other mount namespaces (`ip netns exec`).
fn prepare_run_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let dir = cstr(Path::new(NETNS_RUN_DIR))?;
    let none = c"none";
    // SAFETY: mount(2) with NUL-terminated strings we own.
    let r = unsafe {
        libc::mount(none.as_ptr(), dir.as_ptr(), std::ptr::null(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    };
    if r == 0 {
        return Ok(());
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    // Not a mount point yet: bind it onto itself, then make it shared.
    // SAFETY: as above.
    check(unsafe {
        libc::mount(dir.as_ptr(), dir.as_ptr(), none.as_ptr(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    })?;
    // SAFETY: as above.
    check(unsafe {
        libc::mount(none.as_ptr(), dir.as_ptr(), std::ptr::null(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    })
}

/// Creates the named namespace (`ip netns add NAME`). Returns false if it already
/// existed.
pub fn create(name: &str) -> io::Result<bool> {
    let path = path_of(name);
    if is_netns(&path) {
        return Ok(false);
    }
    prepare_run_dir()?;
    // A leftover plain file (a namespace whose mount went away) is replaced.
    let _ = std::fs::remove_file(&path);
    OpenOptions::new().write(true).create_new(true).open(&path)?;
    let target = cstr(&path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: unshare(2) affects this dedicated thread only.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            let src = c"/proc/thread-self/ns/net";
            // SAFETY: mount(2) with NUL-terminated strings.
            check(unsafe {
                libc::mount(src.as_ptr(), target.as_ptr(), c"none".as_ptr(), libc::MS_BIND, std::ptr::null())
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

/// Deletes the named namespace (`ip netns del NAME`): its interfaces go when the
/// last user leaves. Returns false if there was none.
pub fn delete(name: &str) -> io::Result<bool> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(false);
    }
    let p = cstr(&path)?;
    // SAFETY: umount2(2) on a NUL-terminated path. EINVAL: not mounted (stale file).
    let r = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    std::fs::remove_file(&path)?;
    Ok(true)
}

/// Opens a namespace file (for IFLA_NET_NS_FD or setns).
pub fn open(name_or_path: &str) -> io::Result<File> {
    let path = path_of(name_or_path);
    if !is_netns(&path) {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a network namespace", path.display())));
    }
    File::open(path)
}

/// Runs `f` inside a network namespace, on a dedicated thread that enters it with
/// setns(2); `None` runs `f` right here. Sockets `f` opens, processes it spawns and
/// /proc/sys/net files it opens all belong to that namespace. A panic in `f` is
/// passed on.
pub fn run_in<T: Send, F: FnOnce() -> T + Send>(netns: Option<&str>, f: F) -> io::Result<T> {
    let Some(ns) = netns else { return Ok(f()) };
    let file = open(ns)?;
    std::thread::scope(|s| {
        let h = s.spawn(move || -> io::Result<T> {
            // SAFETY: setns(2) with an open nsfs fd; changes only this thread.
            check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })?;
            drop(file);
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
