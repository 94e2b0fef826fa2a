//! A device worker thread (book chapter 5.8, "I/O threads"): it sleeps in epoll
//! on the file descriptors that bring the device work — its queues' notification
//! eventfds, a backend such as a tap — and calls the device's handler with the
//! token of whatever became readable, until it is told to stop.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Token reserved for the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;

/// What a worker does with readiness.
pub trait WorkerHandler: Send + 'static {
    /// Called once before waiting, for work queued before activation.
    fn start(&mut self) {}
    /// `token` (as registered) is readable (or `events` say otherwise).
    fn ready(&mut self, token: u64, events: EventSet);
    /// Called once when the worker is told to stop (or its epoll fails), before
    /// the thread ends: the place to wait for work that still refers to guest
    /// memory, such as disk I/O in flight.
    fn stop(&mut self) {}
}

/// A running worker; dropping it stops the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `name` polling `fds` (fd, token, events) for `handler`.
    pub fn spawn(
        name: &str,
        fds: Vec<(RawFd, u64, EventSet)>,
        mut handler: impl WorkerHandler,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, STOP_TOKEN))?;
        for (fd, token, events) in fds {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        }
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            handler.start();
            let mut events = vec![EpollEvent::default(); 16];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("device worker: epoll_wait failed: {e}");
                        handler.stop();
                        return;
                    }
                };
                for ev in &events[..n] {
                    if ev.data() == STOP_TOKEN {
                        handler.stop();
                        return;
                    }
                    handler.ready(ev.data(), ev.event_set());
                }
            }
        })?;
        Ok(Worker { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
