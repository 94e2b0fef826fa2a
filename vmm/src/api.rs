//! The control socket (`--api-socket PATH`): one command per connection, one
//! line each way, so a shell with `rvmm ctl PATH COMMAND` (or `socat`) can
//! steer a running VM.
//!
//! | command | effect / answer |
//! |---|---|
//! | `balloon` | the balloon's target, actual size and counters |
//! | `balloon MIB` | set the balloon's target to MIB MiB (the guest gives that much back) |
//! | `balloon-stats` | ask the guest for fresh memory statistics; answers the last ones |
//! | `stats` | the exit statistics, as `--stats` prints them |
//! | `pause` | stop every vCPU (and the guest's kvmclock) until `resume`; answers once none runs |
//! | `resume` | let the vCPUs run again |
//! | `state` | `running` or `paused` |
//! | `quit` | end the VM (exit code 0) |
//!
//! Answers start with `ok` or `error`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtio::balloon::BalloonControl;
use vmm_sys_util::epoll::EventSet;

use crate::cpu::pause::PauseControl;
use crate::event_loop::{EventHandler, Watch};
use crate::exit::{ExitSignal, VmExit};

/// How long `pause` waits for the vCPUs to leave guest code.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes per balloon page.
const BALLOON_PAGE: u64 = 4096;

/// What the control socket can reach.
pub struct ApiContext {
    /// The balloon, if the VM has one.
    pub balloon: Option<BalloonControl>,
    /// Formats the exit statistics.
    pub stats: Box<dyn Fn() -> String + Send>,
    /// Where `quit` goes.
    pub exit: Arc<ExitSignal>,
    /// The vCPUs' pause and resume.
    pub pause: PauseControl,
}

/// The listening socket's handler in the main event loop.
pub struct ApiServer {
    listener: UnixListener,
    context: ApiContext,
}

impl ApiServer {
    /// Listens on `listener` (already bound, non-blocking).
    pub fn new(listener: UnixListener, context: ApiContext) -> Self {
        ApiServer { listener, context }
    }

    /// The listening socket's descriptor, for the event loop.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }

    fn serve(&mut self, stream: UnixStream) -> std::io::Result<()> {
        // A client that connects and says nothing must not stall the VMM's loop.
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut line = String::new();
        BufReader::new(&stream).take(4096).read_line(&mut line)?;
        let answer = self.command(line.trim());
        (&stream).write_all(answer.as_bytes())?;
        if !answer.ends_with('\n') {
            (&stream).write_all(b"\n")?;
        }
        Ok(())
    }

    /// Runs one command and returns the answer.
    pub fn command(&mut self, line: &str) -> String {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("stats"), None, None) => format!("ok\n{}", (self.context.stats)()),
            (Some("pause"), None, None) => match self.context.pause.pause(PAUSE_TIMEOUT) {
                Ok(()) => "ok paused".to_string(),
                Err(e) => format!("error: {e}"),
            },
            (Some("resume"), None, None) => {
                self.context.pause.resume();
                "ok running".to_string()
            }
            (Some("state"), None, None) => {
                format!("ok {}", if self.context.pause.is_paused() { "paused" } else { "running" })
            }
            (Some("quit"), None, None) => {
                self.context.exit.request(VmExit::UserQuit);
                "ok".into()
            }
            (Some("balloon"), arg, None) => {
                let Some(balloon) = &self.context.balloon else {
                    return "error: this VM has no balloon (start it with --balloon)".into();
                };
                if let Some(mib) = arg {
                    let Some(pages) =
                        mib.parse::<u64>().ok().and_then(|m| u32::try_from(m * (1 << 20) / BALLOON_PAGE).ok())
                    else {
                        return format!("error: '{mib}' is not a size in MiB");
                    };
                    balloon.set_target_pages(pages);
                }
                let c = balloon.counters();
                format!(
                    "ok target={} MiB actual={} MiB inflated_pages={} deflated_pages={} reported_pages={}",
                    (u64::from(balloon.target_pages()) * BALLOON_PAGE) >> 20,
                    (u64::from(balloon.actual_pages()) * BALLOON_PAGE) >> 20,
                    c.inflated_pages,
                    c.deflated_pages,
                    c.reported_pages
                )
            }
            (Some("balloon-stats"), None, None) => {
                let Some(balloon) = &self.context.balloon else {
                    return "error: this VM has no balloon (start it with --balloon)".into();
                };
                balloon.request_stats();
                let stats: Vec<String> = balloon.stats().iter().map(|(tag, value)| format!("{tag}={value}")).collect();
                format!("ok {}", stats.join(" "))
            }
            _ => format!(
                "error: unknown command '{line}' (balloon [MIB], balloon-stats, stats, pause, resume, state, quit)"
            ),
        }
    }
}

impl EventHandler for ApiServer {
    fn handle(&mut self, _: EventSet) -> Watch {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.serve(stream) {
                        log::info!("api socket: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Watch::Keep,
                Err(e) => {
                    log::warn!("api socket: accept failed: {e}");
                    return Watch::Keep;
                }
            }
        }
    }
}
