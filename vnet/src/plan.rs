//! A node's part of a description, resolved into the kernel objects that make it up
//! (with their names), and the nftables rulesets. `apply` makes the host match a
//! plan; the plan is also what the state file records, so `destroy`, `show` and
//! `--net port=` need nothing else.
//!
//! Device names follow the book's (and OpenStack's Linux-bridge) layout, with an
//! 8-hex-digit id derived from the port or router name so they fit in 15 bytes:
//!
//! | device | where | what |
//! |---|---|---|
//! | `tap-ID`  | compute node | the VM's tap (or the host end of a stand-in's veth) |
//! | `qbr-ID`  | compute node | per-port bridge whose traffic nftables filters (security groups) |
//! | `qvb-ID` / `qvo-ID` | compute node | veth from the port bridge to the integration bridge |
//! | `brq-VNI` | every node of the network | integration bridge of the network |
//! | `vxlan-VNI` | every node of the network | VXLAN device, UDP 4789, unicast to the peers |
//! | `qrouter-NAME` | network node | the router's network namespace |
//! | `qr-ID` / `tqr-ID` | router ns / network node | router's internal interface (gateway IP) and its bridge end |
//! | `qg-ID` / `tqg-ID` | router ns / network node | router's external interface (external IP, floating IPs) and its bridge end |
//! | `brex-ID` | network node | external bridge, with the host's external interface |

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{short_id, Description, Direction, FdbMode, Mac, Protocol, VXLAN_PORT};

/// The name of the nftables table holding the security groups of a compute node.
pub const SG_TABLE: &str = "rvmm_sg";
/// The name of the nftables table holding a router's NAT rules (in its namespace).
pub const NAT_TABLE: &str = "rvmm_nat";

/// Everything one node runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    /// The node's name.
    pub node: String,
    /// Source address of VXLAN packets.
    pub underlay_ip: Ipv4Addr,
    /// Underlay interface VXLAN devices are bound to, if any.
    pub underlay_interface: Option<String>,
    /// Overlay segments present on this node.
    pub segments: Vec<SegmentPlan>,
    /// VM ports on this node.
    pub ports: Vec<PortPlan>,
    /// External bridges on this node.
    pub external_bridges: Vec<ExternalBridgePlan>,
    /// Routers on this node.
    pub routers: Vec<RouterPlan>,
}

/// A tenant network's presence on a node: its integration bridge and VXLAN device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentPlan {
    /// Network name.
    pub network: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// MTU of every device of the segment.
    pub mtu: u32,
    /// Integration bridge name (`brq-VNI`).
    pub bridge: String,
    /// VXLAN device name (`vxlan-VNI`).
    pub vxlan: String,
    /// UDP destination port.
    pub port: u16,
    /// FDB mode.
    pub fdb_mode: FdbMode,
    /// Underlay addresses of the other nodes of the network (flood entries in
    /// `flood` mode).
    pub peers: Vec<Ipv4Addr>,
    /// MACs behind other nodes (static FDB entries in `static` mode).
    pub remote_macs: Vec<(Mac, Ipv4Addr)>,
    /// IP to MAC of remote endpoints (ARP proxy entries in `static` mode).
    pub remote_neighbours: Vec<(Ipv4Addr, Mac)>,
}

impl SegmentPlan {
    /// The permanent FDB entries the VXLAN device should hold: (MAC, remote VTEP).
    pub fn fdb_entries(&self) -> Vec<(Mac, Ipv4Addr)> {
        match self.fdb_mode {
            FdbMode::Flood => self.peers.iter().map(|p| (Mac::zero(), *p)).collect(),
            FdbMode::Static => self.remote_macs.clone(),
        }
    }

    /// The ARP proxy entries the VXLAN device should hold.
    pub fn neighbours(&self) -> Vec<(Ipv4Addr, Mac)> {
        match self.fdb_mode {
            FdbMode::Flood => Vec::new(),
            FdbMode::Static => self.remote_neighbours.clone(),
        }
    }
}

/// A namespace stand-in at the tap position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StandinPlan {
    /// The namespace (name under /run/netns or an absolute path).
    pub netns: String,
    /// The interface name inside it.
    pub interface: String,
}

/// A VM port on a compute node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortPlan {
    /// Port name.
    pub name: String,
    /// VM name, if given.
    pub vm: Option<String>,
    /// Tenant network name.
    pub network: String,
    /// Guest MAC.
    pub mac: Mac,
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// The network's gateway.
    pub gateway: Ipv4Addr,
    /// Guest MTU (announced through virtio-net's MTU feature).
    pub mtu: u32,
    /// Queue pairs of the tap.
    pub queues: u32,
    /// Tap device (`tap-ID`).
    pub tap: String,
    /// Port bridge (`qbr-ID`).
    pub bridge: String,
    /// veth end in the port bridge (`qvb-ID`).
    pub veth_bridge_end: String,
    /// veth end in the integration bridge (`qvo-ID`).
    pub veth_integration_end: String,
    /// The integration bridge.
    pub integration_bridge: String,
    /// Whether traffic of this port is filtered (it has security groups).
    pub filtered: bool,
    /// Connection tracking: return traffic of allowed flows is allowed.
    pub stateful: bool,
    /// Ingress allow rules.
    pub ingress: Vec<RulePlan>,
    /// Egress allow rules.
    pub egress: Vec<RulePlan>,
    /// A namespace stand-in instead of a tap.
    pub standin: Option<StandinPlan>,
    /// The nftables chain of the port (`port-ID`).
    pub chain: String,
}

/// One allow rule of a port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RulePlan {
    /// The security group it comes from.
    pub group: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port range.
    pub ports: Option<(u16, u16)>,
    /// Remote prefix (source for ingress, destination for egress), `None` for any.
    pub remote: Option<(Ipv4Addr, u8)>,
}

/// An external bridge on a network node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExternalBridgePlan {
    /// External network name.
    pub network: String,
    /// Bridge name (`brex-ID`).
    pub bridge: String,
    /// The host interface plugged into it (not created or deleted by rvmm).
    pub interface: String,
    /// MTU.
    pub mtu: u32,
}

/// A router interface: a veth with one end in the router namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouterInterfacePlan {
    /// Network name (tenant or external).
    pub network: String,
    /// The end inside the router namespace (`qr-ID` or `qg-ID`).
    pub name: String,
    /// The end on the node, in `bridge` (`tqr-ID` or `tqg-ID`).
    pub host_end: String,
    /// The bridge on the node.
    pub bridge: String,
    /// MAC of the router end (derived, so remote nodes can hold static FDB entries).
    pub mac: Mac,
    /// Addresses with prefix length: the gateway; or the external address and the
    /// floating IPs as /32.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// MTU.
    pub mtu: u32,
}

/// A floating IP on a router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FloatingIpPlan {
    /// Public address.
    pub ip: Ipv4Addr,
    /// The port's fixed address.
    pub fixed_ip: Ipv4Addr,
    /// Port name.
    pub port: String,
}

/// A router namespace on a network node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouterPlan {
    /// Router name.
    pub name: String,
    /// Namespace name (`qrouter-NAME`).
    pub netns: String,
    /// Internal interfaces, one per tenant network.
    pub internal: Vec<RouterInterfacePlan>,
    /// External interface.
    pub external: RouterInterfacePlan,
    /// The default route.
    pub default_gateway: Ipv4Addr,
    /// Source-NAT tenant subnets to `external_ip`.
    pub snat: bool,
    /// The router's external address.
    pub external_ip: Ipv4Addr,
    /// Subnets behind the router (SNAT sources).
    pub subnets: Vec<(Ipv4Addr, u8)>,
    /// Floating IPs.
    pub floating_ips: Vec<FloatingIpPlan>,
}

/// Name of the integration bridge of a VNI.
pub fn bridge_name(vni: u32) -> String {
    format!("brq-{vni}")
}

/// Name of the VXLAN device of a VNI.
pub fn vxlan_name(vni: u32) -> String {
    format!("vxlan-{vni}")
}

/// Name of a router's namespace.
pub fn router_netns(router: &str) -> String {
    format!("qrouter-{router}")
}

impl NodePlan {
    /// Resolves `node`'s part of a (validated) description.
    pub fn build(d: &Description, node: &str) -> Result<NodePlan> {
        let Some(n) = d.node(node) else {
            let known: Vec<&str> = d.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(Error::Description {
                file: "description".into(),
                object: format!("nodes.{node}"),
                problem: format!("no such node (the description has: {})", known.join(", ")),
                fix: "pass one of its node names to --node".into(),
            });
        };
        let mut plan = NodePlan {
            node: n.name.clone(),
            underlay_ip: n.underlay_ip,
            underlay_interface: n.underlay_interface.clone(),
            segments: Vec::new(),
            ports: Vec::new(),
            external_bridges: Vec::new(),
            routers: Vec::new(),
        };
        // Overlay segments.
        for net in &d.networks {
            let nodes = d.nodes_of_network(&net.name);
            if !nodes.contains(node) {
                continue;
            }
            let underlay_of = |name: &str| d.node(name).map(|n| n.underlay_ip);
            let peers: Vec<Ipv4Addr> =
                nodes.iter().filter(|x| x.as_str() != node).filter_map(|x| underlay_of(x)).collect();
            let mut remote_macs = Vec::new();
            let mut remote_neighbours = Vec::new();
            for p in d.ports.iter().filter(|p| p.network == net.name && p.node != node) {
                if let Some(u) = underlay_of(&p.node) {
                    remote_macs.push((p.mac, u));
                    remote_neighbours.push((p.ip, p.mac));
                }
            }
            for r in d.routers.iter().filter(|r| r.networks.contains(&net.name) && r.node != node) {
                if let Some(u) = underlay_of(&r.node) {
                    let mac = Mac::derived(&format!("{}/{}", r.name, net.name));
                    remote_macs.push((mac, u));
                    remote_neighbours.push((net.gateway, mac));
                }
            }
            plan.segments.push(SegmentPlan {
                network: net.name.clone(),
                vni: net.vni,
                mtu: d.network_mtu(net),
                bridge: bridge_name(net.vni),
                vxlan: vxlan_name(net.vni),
                port: VXLAN_PORT,
                fdb_mode: net.fdb,
                peers,
                remote_macs,
                remote_neighbours,
            });
        }
        // Ports.
        for p in d.ports.iter().filter(|p| p.node == node) {
            let net = d.network(&p.network).ok_or_else(|| Error::Description {
                file: "description".into(),
                object: format!("ports.{}", p.name),
                problem: format!("network {} is missing", p.network),
                fix: "validate the description".into(),
            })?;
            let id = short_id(&p.name);
            let mut ingress = Vec::new();
            let mut egress = Vec::new();
            let mut stateful = true;
            for g in &p.security_groups {
                let Some(sg) = d.security_group(g) else { continue };
                stateful = sg.stateful;
                for r in &sg.rules {
                    let rp = RulePlan {
                        group: sg.name.clone(),
                        protocol: r.protocol,
                        ports: r.port_range().ok().flatten(),
                        remote: r.remote.filter(|n| n.prefix > 0).map(|n| (n.network(), n.prefix)),
                    };
                    match r.direction {
                        Direction::Ingress => ingress.push(rp),
                        Direction::Egress => egress.push(rp),
                    }
                }
            }
            plan.ports.push(PortPlan {
                name: p.name.clone(),
                vm: p.vm.clone(),
                network: net.name.clone(),
                mac: p.mac,
                ip: p.ip,
                prefix: net.subnet.prefix,
                gateway: net.gateway,
                mtu: d.network_mtu(net),
                queues: p.queues,
                tap: format!("tap-{id}"),
                bridge: format!("qbr-{id}"),
                veth_bridge_end: format!("qvb-{id}"),
                veth_integration_end: format!("qvo-{id}"),
                integration_bridge: bridge_name(net.vni),
                filtered: !p.security_groups.is_empty(),
                stateful,
                ingress,
                egress,
                standin: p.standin_netns.as_ref().map(|ns| StandinPlan {
                    netns: ns.clone(),
                    interface: p.standin_interface.clone().unwrap_or_else(|| "eth0".into()),
                }),
                chain: format!("port-{id}"),
            });
        }
        // Routers and their external bridges.
        for r in d.routers.iter().filter(|r| r.node == node) {
            let Some(ext) = d.external_network(&r.external_network) else { continue };
            let brex = format!("brex-{}", short_id(&ext.name));
            if !plan.external_bridges.iter().any(|b| b.network == ext.name) {
                plan.external_bridges.push(ExternalBridgePlan {
                    network: ext.name.clone(),
                    bridge: brex.clone(),
                    interface: n.external_interfaces.get(&ext.name).cloned().unwrap_or_default(),
                    mtu: ext.mtu,
                });
            }
            let mut internal = Vec::new();
            let mut subnets = Vec::new();
            for netname in &r.networks {
                let Some(net) = d.network(netname) else { continue };
                let id = short_id(&format!("{}/{}", r.name, net.name));
                internal.push(RouterInterfacePlan {
                    network: net.name.clone(),
                    name: format!("qr-{id}"),
                    host_end: format!("tqr-{id}"),
                    bridge: bridge_name(net.vni),
                    mac: Mac::derived(&format!("{}/{}", r.name, net.name)),
                    addresses: vec![(net.gateway, net.subnet.prefix)],
                    mtu: d.network_mtu(net),
                });
                subnets.push((net.subnet.network(), net.subnet.prefix));
            }
            let mut floating_ips = Vec::new();
            for f in &d.floating_ips {
                if d.router_of_fip(f).is_some_and(|fr| fr.name == r.name) {
                    if let Some(port) = d.port(&f.port) {
                        floating_ips.push(FloatingIpPlan { ip: f.ip, fixed_ip: port.ip, port: port.name.clone() });
                    }
                }
            }
            let id = short_id(&format!("{}/{}", r.name, ext.name));
            let mut addresses = vec![(r.external_ip, ext.subnet.prefix)];
            addresses.extend(floating_ips.iter().map(|f| (f.ip, 32)));
            plan.routers.push(RouterPlan {
                name: r.name.clone(),
                netns: router_netns(&r.name),
                internal,
                external: RouterInterfacePlan {
                    network: ext.name.clone(),
                    name: format!("qg-{id}"),
                    host_end: format!("tqg-{id}"),
                    bridge: brex,
                    mac: Mac::derived(&format!("{}/{}", r.name, ext.name)),
                    addresses,
                    mtu: ext.mtu,
                },
                default_gateway: ext.gateway,
                snat: r.snat,
                external_ip: r.external_ip,
                subnets,
                floating_ips,
            });
        }
        Ok(plan)
    }

    /// Links this plan owns in the node's namespace, in the order they can be deleted
    /// (leaves first). Router interfaces inside router namespaces go with the
    /// namespace, or with their host end.
    pub fn owned_links(&self) -> Vec<String> {
        let mut v = Vec::new();
        for p in &self.ports {
            v.push(p.tap.clone());
            v.push(p.veth_bridge_end.clone());
            v.push(p.bridge.clone());
        }
        for r in &self.routers {
            for i in r.internal.iter().chain(std::iter::once(&r.external)) {
                v.push(i.host_end.clone());
            }
        }
        for s in &self.segments {
            v.push(s.vxlan.clone());
            v.push(s.bridge.clone());
        }
        for b in &self.external_bridges {
            v.push(b.bridge.clone());
        }
        v
    }

    /// Router namespaces this plan owns.
    pub fn owned_namespaces(&self) -> Vec<String> {
        self.routers.iter().map(|r| r.netns.clone()).collect()
    }

    /// Whether the node needs the security-group table.
    pub fn has_filtered_ports(&self) -> bool {
        self.ports.iter().any(|p| p.filtered)
    }
}
