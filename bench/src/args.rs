//! Option parsing and report helpers shared by the benchmark programs.

use std::fmt::Display;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

/// How long a case runs: an untimed warm-up (caches, the allocator, queues
/// filling up), then the measured interval (`--warmup`, `--seconds`).
#[allow(dead_code)] // rvmm-bench counts runs, not time
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Untimed time first: what completes in it is not counted.
    pub warmup: Duration,
    /// The measured part.
    pub measure: Duration,
}

/// Why parsing stopped without options.
#[derive(Debug)]
pub enum ArgsExit {
    /// `--help` was asked for.
    Help,
    /// The arguments are wrong; the message says how.
    Usage(String),
}

/// The options, or the exit code of a program that printed its usage (for
/// `--help`, exit 0) or what was wrong with its arguments (exit 2).
pub fn options_or_exit<T>(program: &str, usage: &str, parsed: Result<T, ArgsExit>) -> Result<T, ExitCode> {
    match parsed {
        Ok(options) => Ok(options),
        Err(ArgsExit::Help) => {
            print!("{usage}");
            Err(ExitCode::SUCCESS)
        }
        Err(ArgsExit::Usage(message)) => {
            eprintln!("{program}: {message}");
            Err(ExitCode::from(2))
        }
    }
}

/// A number of seconds from `min` to 3600.
#[allow(dead_code)] // not every program takes a duration
pub fn parse_seconds(name: &str, v: &str, min: f64) -> Result<Duration, ArgsExit> {
    match v.trim().parse::<f64>() {
        Ok(s) if s >= min && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(ArgsExit::Usage(format!("{name} {v}: expected seconds from {min} to 3600"))),
    }
}

/// A whole number from `min` to `max`.
#[allow(dead_code)]
pub fn parse_whole<T: FromStr + PartialOrd + Display + Copy>(
    name: &str,
    v: &str,
    min: T,
    max: T,
) -> Result<T, ArgsExit> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(ArgsExit::Usage(format!("{name} {v}: expected a whole number from {min} to {max}"))),
    }
}

/// Prints the report's notes: a Markdown list, or `note:` lines.
#[allow(dead_code)]
pub fn print_notes(notes: &[String], markdown: bool) {
    for n in notes {
        if markdown {
            println!("- {n}");
        } else {
            println!("note: {n}");
        }
    }
}
