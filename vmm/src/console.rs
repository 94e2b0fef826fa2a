//! The host side of the guest's console: where serial output goes, raw-mode
//! handling of the host terminal, and the Ctrl-A escape sequences typed input
//! passes through.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use vmm_sys_util::terminal::Terminal;

/// Where the guest's console (COM1) is connected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    /// The host's standard output and input (raw mode when it is a terminal).
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
    /// The host's standard output and input on a virtio-console (the guest's
    /// hvc0); COM1's output is discarded.
    Virtio,
}

/// The escape character: Ctrl-A, as in QEMU and minicom.
pub const ESCAPE: u8 = 0x01;

/// What a typed byte means after escape decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Send this byte to the guest.
    Byte(u8),
    /// Ctrl-A x: quit the VM.
    Quit,
    /// Ctrl-A h: print the escape help.
    Help,
    /// Nothing to do (the escape key itself).
    Nothing,
}

/// Decodes Ctrl-A escape sequences in typed input.
#[derive(Debug, Default)]
pub struct EscapeDecoder {
    after_escape: bool,
}

impl EscapeDecoder {
    /// Feeds one typed byte.
    pub fn feed(&mut self, byte: u8) -> ConsoleInput {
        if self.after_escape {
            self.after_escape = false;
            return match byte {
                b'x' | b'X' => ConsoleInput::Quit,
                b'h' | b'H' | b'?' => ConsoleInput::Help,
                // Ctrl-A Ctrl-A (or Ctrl-A a) sends a literal Ctrl-A.
                ESCAPE | b'a' => ConsoleInput::Byte(ESCAPE),
                _ => ConsoleInput::Byte(byte),
            };
        }
        if byte == ESCAPE {
            self.after_escape = true;
            return ConsoleInput::Nothing;
        }
        ConsoleInput::Byte(byte)
    }
}

/// The help text for the escape sequences.
pub const ESCAPE_HELP: &str =
    "\r\nrvmm console: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h shows this help\r\n";

/// Opens the writer serial output goes to.
pub fn open_output(config: &ConsoleConfig) -> io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match config {
        ConsoleConfig::Stdio => Some(Box::new(io::stdout())),
        ConsoleConfig::File(path) => Some(Box::new(File::options().create(true).append(true).open(path)?)),
        ConsoleConfig::None | ConsoleConfig::Virtio => None,
    })
}

/// The size of the host terminal on stdin, or else on stdout, from
/// `TIOCGWINSZ`; `None` when neither is a terminal.
pub fn host_terminal_size() -> Option<virtio::console::ConsoleSize> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: isatty only looks at the fd number.
        if unsafe { libc::isatty(fd) } != 1 {
            continue;
        }
        // SAFETY: winsize is plain data that TIOCGWINSZ fills in; the pointer is
        // valid for the duration of the call and the ioctl writes nothing else.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 {
            return Some(virtio::console::ConsoleSize { cols: ws.ws_col, rows: ws.ws_row });
        }
    }
    None
}

/// Whether raw mode is in force, so the restore paths run once.
static RAW_MODE: Mutex<bool> = Mutex::new(false);

/// Puts the host terminal in raw mode if stdin is one (keys go to the guest
/// unprocessed, Ctrl-C included), and arranges for it to be restored on every exit path.
pub fn enter_raw_mode() -> io::Result<()> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Ok(());
    }
    stdin.lock().set_raw_mode().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    *RAW_MODE.lock().unwrap_or_else(|e| e.into_inner()) = true;
    // A panic (even with panic=abort) or a fatal error must not leave the terminal raw.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    Ok(())
}

/// Restores canonical mode if [`enter_raw_mode`] changed it. Safe to call more than once.
pub fn restore_terminal() {
    let mut raw = RAW_MODE.lock().unwrap_or_else(|e| e.into_inner());
    if *raw {
        let _ = io::stdin().lock().set_canon_mode();
        *raw = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut d = EscapeDecoder::default();
        assert_eq!(d.feed(b'a'), ConsoleInput::Byte(b'a'));
        assert_eq!(d.feed(ESCAPE), ConsoleInput::Nothing);
        assert_eq!(d.feed(b'x'), ConsoleInput::Quit);
        assert_eq!(d.feed(ESCAPE), ConsoleInput::Nothing);
        assert_eq!(d.feed(ESCAPE), ConsoleInput::Byte(ESCAPE));
        assert_eq!(d.feed(ESCAPE), ConsoleInput::Nothing);
        assert_eq!(d.feed(b'h'), ConsoleInput::Help);
        assert_eq!(d.feed(b'x'), ConsoleInput::Byte(b'x'));
    }
}
