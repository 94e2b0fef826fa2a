//! `rvmm net`: the command line.
//!
//! ```text
//! rvmm net apply FILE --node NAME [--netns NS] [--state-dir DIR]
//! rvmm net destroy [FILE] --node NAME [--netns NS] [--state-dir DIR]
//! rvmm net show [--node NAME] [--state-dir DIR]
//! rvmm net check FILE
//! rvmm net port NAME [--state-dir DIR]
//! ```

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::apply::{self, Options};
use crate::error::Result;
use crate::model::Description;
use crate::state;

/// `rvmm net`: network virtualization from a declarative description.
#[derive(Debug, Parser)]
#[command(
    name = "rvmm net",
    about = "Configure this host's part of a virtual network description (VXLAN, security groups, routers)"
)]
pub struct NetArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NetCommand,
}

/// Where the state files are and which namespace plays the host.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Configure this network namespace (a name under /run/netns, or a path) instead
    /// of the host itself.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// Directory of the state files recording what apply created.
    #[arg(long, value_name = "DIR", default_value = state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Make this host match its part of the description (idempotent).
    Apply {
        /// The description (TOML, or JSON if it ends in .json).
        file: PathBuf,
        /// Which node of the description this host is.
        #[arg(long)]
        node: String,
        /// Namespace and state directory.
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove everything apply created on this host.
    Destroy {
        /// The description; optional when the state file exists.
        file: Option<PathBuf>,
        /// Which node of the description this host is.
        #[arg(long)]
        node: String,
        /// Namespace and state directory.
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show what apply created and whether the host still matches it.
    Show {
        /// Only this node (default: every node with a state file).
        #[arg(long)]
        node: Option<String>,
        /// Directory of the state files.
        #[arg(long, value_name = "DIR", default_value = state::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Check a description without touching the host.
    Check {
        /// The description.
        file: PathBuf,
    },
    /// Print the tap, MAC and MTU of a port, as `rvmm run --net port=NAME` uses them.
    Port {
        /// The port name.
        name: String,
        /// Directory of the state files.
        #[arg(long, value_name = "DIR", default_value = state::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

fn options(target: TargetArgs, file: Option<&PathBuf>) -> Options {
    Options {
        netns: target.netns,
        state_dir: target.state_dir,
        description_path: file.map(|f| f.display().to_string()),
    }
}

fn print_report(verb: &str, r: &apply::Report) {
    if r.changes.is_empty() {
        println!("{verb} {}: nothing to change", r.node);
    } else {
        for c in &r.changes {
            println!("{}: {c}", r.node);
        }
        println!("{verb} {}: {} change{}", r.node, r.changes.len(), if r.changes.len() == 1 { "" } else { "s" });
    }
}

/// Runs a parsed `rvmm net` command, printing its report on stdout.
pub fn run(args: NetArgs) -> Result<()> {
    match args.command {
        NetCommand::Apply { file, node, target } => {
            let d = Description::load(&file)?;
            let r = apply::apply(&d, &node, &options(target, Some(&file)))?;
            print_report("apply", &r);
        }
        NetCommand::Destroy { file, node, target } => {
            let d = match &file {
                Some(f) => Some(Description::load(f)?),
                None => None,
            };
            let r = apply::destroy(d.as_ref(), &node, &options(target, file.as_ref()))?;
            print_report("destroy", &r);
        }
        NetCommand::Show { node, state_dir } => {
            let states = match &node {
                Some(n) => state::load(&state_dir, n)?.into_iter().collect(),
                None => state::all(&state_dir)?,
            };
            if states.is_empty() {
                println!(
                    "no node applied{} (state directory {})",
                    node.map(|n| format!(" as {n}")).unwrap_or_default(),
                    state_dir.display()
                );
            }
            for st in &states {
                print!("{}", apply::show(st)?);
            }
        }
        NetCommand::Check { file } => {
            let d = Description::load(&file)?;
            println!(
                "{}: {} nodes, {} networks, {} ports, {} routers, {} floating IPs: ok",
                file.display(),
                d.nodes.len(),
                d.networks.len(),
                d.ports.len(),
                d.routers.len(),
                d.floating_ips.len()
            );
        }
        NetCommand::Port { name, state_dir } => {
            let a = crate::port_tap(crate::PortSource::StateDir(&state_dir), &name)?;
            println!("tap={} mac={} mtu={} queues={} node={}", a.tap_name, a.mac, a.mtu, a.queues, a.node);
        }
    }
    Ok(())
}

/// Parses `args` (the words after `rvmm net`) and runs them; returns the exit code:
/// 0, 2 for a usage error, 64 for a bad description, 71 for a host failure.
pub fn run_cli(args: Vec<String>) -> i32 {
    let argv = std::iter::once("rvmm net".to_string()).chain(args);
    let parsed = match NetArgs::try_parse_from(argv) {
        Ok(p) => p,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(parsed) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rvmm net: {e}");
            e.exit_code()
        }
    }
}
