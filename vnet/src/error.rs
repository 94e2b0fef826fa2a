//! Errors. Every error names the host (the node of the description, or the file), the
//! object it was about, what went wrong, and what to do about it.

use std::io;

/// What can go wrong in `rvmm net`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The description file cannot be read, parsed, or is inconsistent.
    #[error("description {file}: {object}: {problem}; fix: {fix}")]
    Description {
        /// The description file (or `<memory>` for one built in code).
        file: String,
        /// The object of the description, e.g. `ports.vm1-eth0`.
        object: String,
        /// What is wrong with it.
        problem: String,
        /// What to change.
        fix: String,
    },
    /// A kernel request (netlink, ioctl, sysctl, mount) failed on a host.
    #[error("host {host}: {object}: {action} failed: {source}; fix: {fix}")]
    Host {
        /// The node the request was made for.
        host: String,
        /// The kernel object, e.g. `link vxlan-100` or `netns qrouter-r1`.
        object: String,
        /// What was being done, e.g. `create`.
        action: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
        /// What to do about it.
        fix: String,
    },
    /// `nft` failed or is missing on a host.
    #[error("host {host}: {object}: nft {action} failed: {detail}; fix: {fix}")]
    Nftables {
        /// The node.
        host: String,
        /// The nftables object, e.g. `table inet rvmm_sg`.
        object: String,
        /// What was being done.
        action: String,
        /// nft's message.
        detail: String,
        /// What to do about it.
        fix: String,
    },
    /// The host is not in a state the description can be applied to (an object in
    /// the way that rvmm does not own, a missing underlay address or interface).
    #[error("host {host}: {object}: {problem}; fix: {fix}")]
    Conflict {
        /// The node.
        host: String,
        /// The object in question.
        object: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// The state file that records what `apply` created cannot be read or written.
    #[error("host {host}: state file {path}: {problem}; fix: {fix}")]
    State {
        /// The node.
        host: String,
        /// The state file.
        path: String,
        /// What went wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// A port asked for by `--net port=NAME` cannot be attached.
    #[error("port {port}: {problem}; fix: {fix}")]
    Port {
        /// The port name.
        port: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

impl Error {
    /// The process exit code for this error, in rvmm's convention: 64 for bad input,
    /// 71 for a host failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Description { .. } | Error::Port { .. } => 64,
            _ => 71,
        }
    }

    /// A kernel request failed: names the fix from the errno where one is obvious.
    pub(crate) fn host(host: &str, object: impl Into<String>, action: impl Into<String>, source: io::Error) -> Error {
        let fix = fix_for(&source);
        Error::Host { host: host.to_string(), object: object.into(), action: action.into(), source, fix }
    }

    /// Like [`Error::host`] with an explicit fix.
    pub(crate) fn host_fix(
        host: &str,
        object: impl Into<String>,
        action: impl Into<String>,
        source: io::Error,
        fix: impl Into<String>,
    ) -> Error {
        Error::Host { host: host.to_string(), object: object.into(), action: action.into(), source, fix: fix.into() }
    }
}

/// The usual remedy for an errno returned by rtnetlink and friends.
fn fix_for(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => "run as root (rvmm net needs CAP_NET_ADMIN and CAP_SYS_ADMIN)".into(),
        Some(libc::EOPNOTSUPP) | Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) => {
            "load the kernel support (modprobe vxlan bridge br_netfilter veth tun nf_tables)".into()
        }
        Some(libc::EEXIST) => "remove the conflicting object, or run `rvmm net destroy` for the node first".into(),
        Some(libc::ENODEV) | Some(libc::ENOENT) => {
            "the object disappeared underneath rvmm; run `rvmm net apply` again".into()
        }
        Some(libc::ERANGE) | Some(libc::EINVAL) => {
            "check the MTU and addresses in the description against the underlay".into()
        }
        _ => "see the kernel's message; `rvmm net destroy` then `apply` rebuilds the node".into(),
    }
}

/// Short for `Result<T, vnet::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
