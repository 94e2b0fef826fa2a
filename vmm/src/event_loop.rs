//! The VMM's event loop (book chapter 5.9, "lightweight exits"): one thread
//! waits with epoll on every file descriptor that can bring work — console
//! input, a device queue's ioeventfd, a backend's completions — and runs the
//! handler registered for it. vCPU threads never do device work; they only
//! route exits, and a guest's queue notification reaches this loop through an
//! ioeventfd without any exit to user space on the vCPU thread at all.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::exit::{ExitSignal, VmExit};

/// What a handler wants after handling an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Keep watching the fd.
    Keep,
    /// Stop watching it (end of input, a closed backend).
    Remove,
}

/// Something that acts when its file descriptor is ready.
pub trait EventHandler: Send {
    /// Handles readiness `events` of the handler's fd.
    fn handle(&mut self, events: EventSet) -> Watch;
}

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// An epoll call failed.
    #[error("epoll: {0}")]
    Epoll(#[from] std::io::Error),
}

/// An epoll set and the handlers of its fds.
pub struct EventLoop {
    epoll: Epoll,
    handlers: HashMap<u64, (RawFd, Box<dyn EventHandler>)>,
    next_token: u64,
}

/// Token of the VM's exit eventfd.
const EXIT_TOKEN: u64 = 0;

impl EventLoop {
    /// An empty loop.
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(EventLoop { epoll: Epoll::new()?, handlers: HashMap::new(), next_token: EXIT_TOKEN + 1 })
    }

    /// Watches `fd` for input and runs `handler` when it is readable.
    pub fn add(&mut self, fd: RawFd, handler: Box<dyn EventHandler>) -> Result<(), EventLoopError> {
        let token = self.next_token;
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))?;
        self.next_token += 1;
        self.handlers.insert(token, (fd, handler));
        Ok(())
    }

    /// Runs handlers until `exit` is signalled (by a vCPU, a device, a handler or a
    /// signal handler writing its eventfd) and returns the reason; `signal_reason`
    /// turns an exit with no recorded reason into one (the signal that arrived).
    pub fn run(
        &mut self,
        exit: &Arc<ExitSignal>,
        signal_reason: impl Fn() -> Option<VmExit>,
    ) -> Result<VmExit, EventLoopError> {
        use std::os::fd::AsRawFd;
        self.epoll.ctl(ControlOperation::Add, exit.event().as_raw_fd(), EpollEvent::new(EventSet::IN, EXIT_TOKEN))?;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e.into()),
            };
            if let Some(reason) = exit.reason().or_else(&signal_reason) {
                return Ok(reason);
            }
            // Woken without a reason (a signal asking for something else): re-arm.
            if events[..n].iter().any(|e| e.data() == EXIT_TOKEN) {
                let _ = exit.event().read();
            }
            for event in &events[..n] {
                let token = event.data();
                let Some((fd, handler)) = self.handlers.get_mut(&token) else {
                    continue;
                };
                if handler.handle(event.event_set()) == Watch::Remove {
                    let fd = *fd;
                    // The fd may already be closed; the handler is gone either way.
                    let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    self.handlers.remove(&token);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        fd: EventFd,
        seen: Arc<AtomicU32>,
        exit: Arc<ExitSignal>,
    }

    impl EventHandler for Counter {
        fn handle(&mut self, _: EventSet) -> Watch {
            let _ = self.fd.read();
            if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                self.exit.request(VmExit::PowerOff);
            }
            Watch::Keep
        }
    }

    #[test]
    fn handlers_run_until_exit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let seen = Arc::new(AtomicU32::new(0));
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = fd.try_clone().unwrap();
        let mut lp = EventLoop::new().unwrap();
        lp.add(fd.as_raw_fd(), Box::new(Counter { fd, seen: seen.clone(), exit: exit.clone() })).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..3 {
                writer.write(1).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        assert_eq!(lp.run(&exit, || None).unwrap(), VmExit::PowerOff);
        t.join().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }
}
