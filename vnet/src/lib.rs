//! # vnet: network virtualization for rvmm (the book's chapter 6)
//!
//! A declarative description ([`Description`], TOML or JSON) of tenant networks,
//! ports, security groups, routers and floating IPs, and the code that makes one host
//! match its part of it ([`apply()`]), removes it all again ([`destroy()`]) and shows it
//! ([`show`]). `rvmm net ...` is [`run_cli`].
//!
//! On a **compute node** a VM's traffic goes
//!
//! ```text
//! VM virtio-net -> tap-ID -> qbr-ID (port bridge; nftables filters it through br_netfilter)
//!    -> qvb-ID == qvo-ID (veth) -> brq-VNI (integration bridge) -> vxlan-VNI -> underlay (UDP 4789)
//! ```
//!
//! and on a **network node**
//!
//! ```text
//! underlay -> vxlan-VNI -> brq-VNI -> tqr-ID == qr-ID (in namespace qrouter-R: the gateway)
//!    -> routing, SNAT / floating-IP DNAT -> qg-ID == tqg-ID -> brex-ID (external bridge) -> external interface
//! ```
//!
//! VXLAN devices send unicast only: an all-zero FDB entry per peer node (head-end
//! replication, `fdb = "flood"`), or static FDB and ARP-proxy entries for every MAC of
//! the description (`fdb = "static"`). The guest MTU is the underlay's minus 50 and is
//! handed to rvmm's virtio-net through [`port_tap`].
//!
//! Links, addresses, routes and FDB/neighbour entries are made over rtnetlink
//! ([`netlink`]); taps with the tun ioctls ([`tap`]); namespaces with unshare/setns
//! ([`netns`]); NAT and security groups with nftables' JSON interface ([`nft`]).

#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod error;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod plan;
pub mod state;
pub mod tap;

use std::path::Path;

pub use apply::{apply, destroy, show, Options, Report};
pub use cli::{run, run_cli, NetArgs, NetCommand};
pub use error::{Error, Result};
pub use model::{Description, Mac};
pub use plan::NodePlan;
pub use state::DEFAULT_STATE_DIR;

/// What `rvmm run --net port=NAME` needs to attach a VM to a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAttachment {
    /// The port.
    pub port: String,
    /// The node the port is on.
    pub node: String,
    /// The tap `rvmm net apply` created (open it with `--net tap=`).
    pub tap_name: String,
    /// The guest MAC.
    pub mac: Mac,
    /// The guest MTU, to offer with VIRTIO_NET_F_MTU.
    pub mtu: u32,
    /// Queue pairs: the tap is multi-queue when more than one.
    pub queues: u32,
}

/// Where [`port_tap`] looks a port up.
#[derive(Debug, Clone, Copy)]
pub enum PortSource<'a> {
    /// The state files `apply` wrote (default directory [`DEFAULT_STATE_DIR`]); the tap
    /// must exist on this host.
    StateDir(&'a Path),
    /// A description (no check that the tap exists).
    Description(&'a Description),
}

/// Finds the tap, MAC and MTU of a port.
pub fn port_tap(source: PortSource, port: &str) -> Result<PortAttachment> {
    let plans: Vec<(NodePlan, Option<String>)> = match source {
        PortSource::StateDir(dir) => state::all(dir)?.into_iter().map(|s| (s.plan, s.netns)).collect(),
        PortSource::Description(d) => {
            let Some(p) = d.port(port) else {
                return Err(Error::Port {
                    port: port.into(),
                    problem: "is not in the description".into(),
                    fix: "add it under [[ports]] or correct the name".into(),
                });
            };
            vec![(NodePlan::build(d, &p.node)?, None)]
        }
    };
    let from_state = matches!(source, PortSource::StateDir(_));
    for (plan, netns) in &plans {
        let Some(p) = plan.ports.iter().find(|p| p.name == port) else { continue };
        if let Some(s) = &p.standin {
            return Err(Error::Port {
                port: port.into(),
                problem: format!("is played by namespace {} (standin_netns), it has no tap", s.netns),
                fix: "drop standin_netns from the port and apply again".into(),
            });
        }
        if from_state && netns.is_none() {
            let name = std::ffi::CString::new(p.tap.as_str()).map_err(|_| Error::Port {
                port: port.into(),
                problem: format!("tap name {:?} is invalid", p.tap),
                fix: "apply the description again".into(),
            })?;
            // SAFETY: if_nametoindex reads a NUL-terminated string.
            if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
                return Err(Error::Port {
                    port: port.into(),
                    problem: format!("its tap {} does not exist on this host (node {})", p.tap, plan.node),
                    fix: format!("run `rvmm net apply FILE --node {}` on this host first", plan.node),
                });
            }
        }
        return Ok(PortAttachment {
            port: port.into(),
            node: plan.node.clone(),
            tap_name: p.tap.clone(),
            mac: p.mac,
            mtu: p.mtu,
            queues: p.queues,
        });
    }
    Err(Error::Port {
        port: port.into(),
        problem: match source {
            PortSource::StateDir(dir) => format!("no node applied under {} has it", dir.display()),
            PortSource::Description(_) => "is in no node's plan".into(),
        },
        fix: "run `rvmm net apply FILE --node NODE` for the port's node on this host".into(),
    })
}
