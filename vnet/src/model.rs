//! The declarative description: nodes, tenant networks, external networks, security
//! groups, ports, routers and floating IPs, read from TOML (or JSON) and checked for
//! consistency before anything touches a host.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Bytes VXLAN adds to every frame on an IPv4 underlay: outer IPv4 (20) + UDP (8) +
/// VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The IANA VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// An IPv4 prefix such as `198.51.100.0/25`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    /// The address as written (host bits may be set).
    pub addr: Ipv4Addr,
    /// The prefix length, 0-32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The netmask.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether `ip` is the network or the broadcast address of a prefix shorter than /31.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        if self.prefix >= 31 {
            return false;
        }
        let n = u32::from(self.network());
        let b = n | !self.mask();
        let i = u32::from(ip);
        i == n || i == b
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("'{s}' is not an IPv4 prefix like 198.51.100.0/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("'{p}' is not a prefix length 0-32"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast address derived from `seed` (fa:16:3e:xx:xx:xx),
    /// stable across runs so that remote nodes can hold static FDB entries for it.
    pub fn derived(seed: &str) -> Mac {
        let h = fnv1a(seed.as_bytes());
        Mac([0xfa, 0x16, 0x3e, (h >> 16) as u8, (h >> 8) as u8, h as u8])
    }

    /// Whether the group (multicast) bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The all-zero address, the key of VXLAN flood (head-end replication) entries.
    pub fn zero() -> Mac {
        Mac([0; 6])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("'{s}' is not a MAC address like 52:54:00:12:34:56"));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            m[i] =
                u8::from_str_radix(p, 16).map_err(|_| format!("'{s}' is not a MAC address like 52:54:00:12:34:56"))?;
        }
        Ok(Mac(m))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// 32-bit FNV-1a; short, stable names for kernel objects are derived from it.
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Eight hex digits naming an object whose description name may be too long for a
/// 15-character interface name.
pub fn short_id(seed: &str) -> String {
    format!("{:08x}", fnv1a(seed.as_bytes()))
}

/// A whole deployment. Every host applies only its own part of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Hosts: compute nodes (that run VMs) and network nodes (that run routers).
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Tenant networks, each one VXLAN segment.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Provider networks that routers connect to the outside through.
    #[serde(default)]
    pub external_networks: Vec<ExternalNetwork>,
    /// Stateful (or stateless) packet filters applied per port.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    /// VM network interfaces.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Routers between tenant networks and an external network.
    #[serde(default)]
    pub routers: Vec<Router>,
    /// Public addresses mapped one-to-one onto ports.
    #[serde(default)]
    pub floating_ips: Vec<FloatingIp>,
}

/// A host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The name given to `--node`.
    pub name: String,
    /// The host's address on the underlay; VXLAN packets leave from it. It must
    /// already be configured on the host.
    pub underlay_ip: Ipv4Addr,
    /// Bind VXLAN devices to this underlay interface (optional; the route to the peer
    /// decides otherwise).
    #[serde(default)]
    pub underlay_interface: Option<String>,
    /// The underlay MTU (default 1500); tenant MTUs default to it minus 50.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// For network nodes: the host interface plugged into each external network's
    /// bridge, by external network name.
    #[serde(default)]
    pub external_interfaces: BTreeMap<String, String>,
}

fn default_underlay_mtu() -> u32 {
    1500
}

/// How a network's VXLAN devices find the node behind a MAC address.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FdbMode {
    /// Head-end replication: an all-zero FDB entry per peer node, so broadcasts (ARP)
    /// and unknown unicast go to every peer; MACs are learned from traffic.
    #[default]
    Flood,
    /// No flooding and no learning: a static FDB entry for every MAC in the
    /// description, and the VXLAN device answers ARP from static neighbour entries
    /// (ARP proxy).
    Static,
}

/// A tenant network: one L2 segment carried by VXLAN between the nodes that need it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Name.
    pub name: String,
    /// VXLAN network identifier, 1-16777215.
    pub vni: u32,
    /// The IPv4 subnet.
    pub subnet: Ipv4Net,
    /// The router's address in it (the router takes it on its internal interface).
    pub gateway: Ipv4Addr,
    /// The guest MTU; default: the smallest underlay MTU of the nodes minus 50.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// How remote MACs are found, `flood` (default) or `static`.
    #[serde(default)]
    pub fdb: FdbMode,
}

/// An external (provider) network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalNetwork {
    /// Name.
    pub name: String,
    /// Its subnet; router external addresses and floating IPs come from it.
    pub subnet: Ipv4Net,
    /// The upstream router: the default route of every router on this network.
    pub gateway: Ipv4Addr,
    /// MTU of the external bridge (default 1500).
    #[serde(default = "default_underlay_mtu")]
    pub mtu: u32,
}

/// Direction of a security-group rule, seen from the VM.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic towards the VM.
    Ingress,
    /// Traffic from the VM.
    Egress,
}

/// Protocol a rule matches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any IPv4 protocol.
    #[default]
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

/// One allow rule. Everything not allowed is dropped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// `any` (default), `tcp`, `udp` or `icmp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination port or range (`"22"`, `"8000-8080"`), TCP and UDP only.
    #[serde(default)]
    pub ports: Option<String>,
    /// The remote end: source prefix for ingress, destination prefix for egress
    /// (default 0.0.0.0/0).
    #[serde(default)]
    pub remote: Option<Ipv4Net>,
}

impl Rule {
    /// The port range, if any.
    pub fn port_range(&self) -> std::result::Result<Option<(u16, u16)>, String> {
        let Some(p) = &self.ports else { return Ok(None) };
        let bad = || format!("'{p}' is not a port or range like 80 or 8000-8080");
        let (a, b) = match p.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u16>().map_err(|_| bad())?, b.trim().parse::<u16>().map_err(|_| bad())?),
            None => {
                let a = p.trim().parse::<u16>().map_err(|_| bad())?;
                (a, a)
            }
        };
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(Some((a, b)))
    }
}

/// A security group: allow rules, applied statefully by default (return traffic of
/// an allowed flow is allowed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    /// Name.
    pub name: String,
    /// Track connections (default true). Stateless groups must allow return traffic
    /// explicitly.
    #[serde(default = "yes")]
    pub stateful: bool,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// A VM's network interface on a tenant network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Name, given to `rvmm run --net port=NAME`.
    pub name: String,
    /// The VM it belongs to (informational).
    #[serde(default)]
    pub vm: Option<String>,
    /// The compute node the VM runs on.
    pub node: String,
    /// The tenant network.
    pub network: String,
    /// The guest's MAC address.
    pub mac: Mac,
    /// The guest's fixed IPv4 address.
    pub ip: Ipv4Addr,
    /// Security groups; none means no filtering.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// virtio-net queue pairs: a multi-queue tap is created for more than one.
    #[serde(default = "one")]
    pub queues: u32,
    /// For tests and containers: instead of a tap, a veth whose far end (named
    /// `standin_interface`, default `eth0`) sits in this existing network namespace,
    /// configured with the port's MAC, address, MTU and default route.
    #[serde(default)]
    pub standin_netns: Option<String>,
    /// Interface name of the stand-in end (default `eth0`).
    #[serde(default)]
    pub standin_interface: Option<String>,
}

/// A router: one network namespace on a network node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Name; the namespace is `qrouter-NAME`.
    pub name: String,
    /// The network node it runs on.
    pub node: String,
    /// Tenant networks it routes for (it takes each one's gateway address).
    #[serde(default)]
    pub networks: Vec<String>,
    /// The external network (its gateway is the default route).
    pub external_network: String,
    /// The router's own address on the external network.
    pub external_ip: Ipv4Addr,
    /// Source-NAT tenant traffic leaving through the external network to
    /// `external_ip` (default true).
    #[serde(default = "yes")]
    pub snat: bool,
}

/// A floating IP: DNAT in to the port's fixed IP, SNAT out from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FloatingIp {
    /// The public address, from the router's external network.
    pub ip: Ipv4Addr,
    /// The port it maps to.
    pub port: String,
    /// The router doing the NAT; may be left out when one router serves the port's
    /// network.
    #[serde(default)]
    pub router: Option<String>,
}

/// Whether `name` can become part of a kernel object name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

/// Checks an interface name the way the kernel does (1-15 bytes, no '/', ':' or blanks).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Description {
    /// Reads and checks a description: TOML, or JSON if the file ends in `.json`.
    pub fn load(path: &Path) -> Result<Description> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Description {
            file: file.clone(),
            object: "file".into(),
            problem: format!("cannot be read: {e}"),
            fix: "give the path of a readable description file".into(),
        })?;
        let json = path.extension().is_some_and(|e| e == "json");
        Description::parse(&text, json, &file)
    }

    /// Parses and checks a description from text; `file` names it in errors.
    pub fn parse(text: &str, json: bool, file: &str) -> Result<Description> {
        let d: Description = if json {
            serde_json::from_str(text).map_err(|e| Error::Description {
                file: file.into(),
                object: "file".into(),
                problem: format!("is not a valid description: {e}"),
                fix: "correct the JSON (see the README's example)".into(),
            })?
        } else {
            toml::from_str(text).map_err(|e| Error::Description {
                file: file.into(),
                object: "file".into(),
                problem: format!("is not a valid description: {}", e.to_string().trim()),
                fix: "correct the TOML (see the README's example)".into(),
            })?
        };
        d.validate(file)?;
        Ok(d)
    }

    /// Finds a node.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Finds a tenant network.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// Finds a port.
    pub fn port(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|n| n.name == name)
    }

    /// Finds a router.
    pub fn router(&self, name: &str) -> Option<&Router> {
        self.routers.iter().find(|n| n.name == name)
    }

    /// Finds an external network.
    pub fn external_network(&self, name: &str) -> Option<&ExternalNetwork> {
        self.external_networks.iter().find(|n| n.name == name)
    }

    /// Finds a security group.
    pub fn security_group(&self, name: &str) -> Option<&SecurityGroup> {
        self.security_groups.iter().find(|n| n.name == name)
    }

    /// The nodes a tenant network is present on: those with a port on it or a router
    /// attached to it.
    pub fn nodes_of_network(&self, network: &str) -> BTreeSet<String> {
        let mut s: BTreeSet<String> =
            self.ports.iter().filter(|p| p.network == network).map(|p| p.node.clone()).collect();
        for r in &self.routers {
            if r.networks.iter().any(|n| n == network) {
                s.insert(r.node.clone());
            }
        }
        s
    }

    /// The MTU of a tenant network: given, or the smallest underlay MTU of its nodes
    /// minus the VXLAN overhead.
    pub fn network_mtu(&self, net: &Network) -> u32 {
        if let Some(m) = net.mtu {
            return m;
        }
        self.min_underlay_mtu(net) - VXLAN_OVERHEAD
    }

    fn min_underlay_mtu(&self, net: &Network) -> u32 {
        self.nodes_of_network(&net.name)
            .iter()
            .filter_map(|n| self.node(n))
            .map(|n| n.underlay_mtu)
            .min()
            .unwrap_or(1500)
    }

    /// The router that does a floating IP's NAT.
    pub fn router_of_fip(&self, fip: &FloatingIp) -> Option<&Router> {
        if let Some(r) = &fip.router {
            return self.router(r);
        }
        let port = self.port(&fip.port)?;
        let mut serving = self.routers.iter().filter(|r| r.networks.contains(&port.network));
        let first = serving.next()?;
        if serving.next().is_some() {
            return None;
        }
        Some(first)
    }

    /// Checks the description for consistency.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |object: String, problem: String, fix: &str| Error::Description {
            file: file.into(),
            object,
            problem,
            fix: fix.into(),
        };
        fn dups<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
            let mut seen = BTreeSet::new();
            names.into_iter().find(|n| !seen.insert(*n))
        }
        macro_rules! unique_names {
            ($list:expr, $what:literal) => {
                for x in &$list {
                    if !valid_name(&x.name) {
                        return Err(err(
                            format!("{}.{}", $what, x.name),
                            "the name is empty, longer than 48 characters or has characters other than letters, digits, '-', '_' and '.'".into(),
                            "rename it",
                        ));
                    }
                }
                if let Some(d) = dups($list.iter().map(|x| x.name.as_str())) {
                    return Err(err(format!("{}.{}", $what, d), "the name is used twice".into(), "give each one its own name"));
                }
            };
        }
        unique_names!(self.nodes, "nodes");
        unique_names!(self.networks, "networks");
        unique_names!(self.external_networks, "external_networks");
        unique_names!(self.security_groups, "security_groups");
        unique_names!(self.ports, "ports");
        unique_names!(self.routers, "routers");

        let mut underlay = BTreeSet::new();
        for n in &self.nodes {
            let o = format!("nodes.{}", n.name);
            if !underlay.insert(n.underlay_ip) {
                return Err(err(
                    o,
                    format!("underlay_ip {} is used by another node", n.underlay_ip),
                    "give each node its own underlay address",
                ));
            }
            if !(576..=65535).contains(&n.underlay_mtu) {
                return Err(err(
                    o,
                    format!("underlay_mtu {} is out of range", n.underlay_mtu),
                    "use 576-65535 (usually 1500 or 9000)",
                ));
            }
            if let Some(i) = &n.underlay_interface {
                if !valid_ifname(i) {
                    return Err(err(
                        o,
                        format!("underlay_interface '{i}' is not an interface name"),
                        "use the host's interface name",
                    ));
                }
            }
            for (ext, ifname) in &n.external_interfaces {
                if self.external_network(ext).is_none() {
                    return Err(err(
                        o,
                        format!("external_interfaces names unknown external network '{ext}'"),
                        "add it to [[external_networks]] or correct the name",
                    ));
                }
                if !valid_ifname(ifname) {
                    return Err(err(
                        o,
                        format!("external interface '{ifname}' is not an interface name"),
                        "use the host's interface name",
                    ));
                }
            }
        }

        let mut vnis = BTreeSet::new();
        let mut subnets: Vec<(String, Ipv4Net)> = Vec::new();
        for net in &self.networks {
            let o = format!("networks.{}", net.name);
            if net.vni == 0 || net.vni > 0xff_ffff {
                return Err(err(o, format!("vni {} is out of range", net.vni), "use a VNI from 1 to 16777215"));
            }
            if !vnis.insert(net.vni) {
                return Err(err(
                    o,
                    format!("vni {} is used by another network", net.vni),
                    "give each network its own VNI",
                ));
            }
            if net.subnet.prefix > 30 || net.subnet.addr != net.subnet.network() {
                return Err(err(
                    o,
                    format!("subnet {} is not a network address with prefix length up to /30", net.subnet),
                    "write it like 198.51.100.0/24",
                ));
            }
            if !net.subnet.contains(net.gateway) || net.subnet.is_reserved(net.gateway) {
                return Err(err(
                    o,
                    format!("gateway {} is not a host address of subnet {}", net.gateway, net.subnet),
                    "pick the gateway from the subnet, e.g. its first address",
                ));
            }
            for (other, s) in &subnets {
                if s.contains(net.subnet.network()) || net.subnet.contains(s.network()) {
                    return Err(err(
                        o,
                        format!("subnet {} overlaps network {other}'s {s}", net.subnet),
                        "routers cannot route between overlapping subnets; pick disjoint subnets",
                    ));
                }
            }
            subnets.push((net.name.clone(), net.subnet));
            let limit = self.min_underlay_mtu(net) - VXLAN_OVERHEAD;
            let mtu = self.network_mtu(net);
            if !(576..=limit).contains(&mtu) {
                return Err(err(
                    o,
                    format!(
                        "mtu {mtu} does not fit: VXLAN over an underlay MTU of {} leaves {limit}",
                        limit + VXLAN_OVERHEAD
                    ),
                    "leave mtu out (it is derived) or set it to 576..the underlay MTU minus 50",
                ));
            }
        }

        for ext in &self.external_networks {
            let o = format!("external_networks.{}", ext.name);
            if ext.subnet.addr != ext.subnet.network() || ext.subnet.prefix > 30 {
                return Err(err(
                    o,
                    format!("subnet {} is not a network address with prefix length up to /30", ext.subnet),
                    "write it like 203.0.113.0/24",
                ));
            }
            if !ext.subnet.contains(ext.gateway) {
                return Err(err(
                    o,
                    format!("gateway {} is outside {}", ext.gateway, ext.subnet),
                    "give the upstream router's address in the subnet",
                ));
            }
            if !(576..=65535).contains(&ext.mtu) {
                return Err(err(o, format!("mtu {} is out of range", ext.mtu), "use 576-65535"));
            }
        }

        for sg in &self.security_groups {
            for (i, r) in sg.rules.iter().enumerate() {
                let o = format!("security_groups.{}.rules[{i}]", sg.name);
                let range =
                    r.port_range().map_err(|p| err(o.clone(), p, "write a port 1-65535 or a range low-high"))?;
                if range.is_some() && !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
                    return Err(err(
                        o,
                        "ports are given but the protocol is not tcp or udp".into(),
                        "set protocol = \"tcp\" or \"udp\", or drop ports",
                    ));
                }
            }
        }

        let mut addrs: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut macs = BTreeSet::new();
        let mut derived = BTreeMap::new();
        for p in &self.ports {
            let o = format!("ports.{}", p.name);
            if self.node(&p.node).is_none() {
                return Err(err(
                    o,
                    format!("node '{}' is not in [[nodes]]", p.node),
                    "add the node or correct the name",
                ));
            }
            let Some(net) = self.network(&p.network) else {
                return Err(err(
                    o,
                    format!("network '{}' is not in [[networks]]", p.network),
                    "add the network or correct the name",
                ));
            };
            if !net.subnet.contains(p.ip) || net.subnet.is_reserved(p.ip) || p.ip == net.gateway {
                return Err(err(
                    o,
                    format!("ip {} is not a free host address of {} (gateway {})", p.ip, net.subnet, net.gateway),
                    "pick an unused address from the network's subnet",
                ));
            }
            if !addrs.insert(p.ip) {
                return Err(err(o, format!("ip {} is used by another port", p.ip), "give each port its own address"));
            }
            if p.mac.is_multicast() || p.mac == Mac::zero() {
                return Err(err(
                    o,
                    format!("mac {} is not a unicast address", p.mac),
                    "use a unicast MAC such as 52:54:00:xx:xx:xx",
                ));
            }
            if !macs.insert(p.mac) {
                return Err(err(o, format!("mac {} is used by another port", p.mac), "give each port its own MAC"));
            }
            let mut stateful = BTreeSet::new();
            for g in &p.security_groups {
                let Some(sg) = self.security_group(g) else {
                    return Err(err(
                        o,
                        format!("security group '{g}' is not in [[security_groups]]"),
                        "add the group or correct the name",
                    ));
                };
                stateful.insert(sg.stateful);
            }
            if stateful.len() > 1 {
                return Err(err(
                    o,
                    "mixes stateful and stateless security groups".into(),
                    "use groups of one kind on a port",
                ));
            }
            if p.queues == 0 || p.queues > 256 {
                return Err(err(o, format!("queues {} is out of range", p.queues), "use 1-256"));
            }
            if let Some(ns) = &p.standin_netns {
                if ns.is_empty() || ns.contains('/') && !ns.starts_with('/') {
                    return Err(err(
                        o,
                        format!("standin_netns '{ns}' is not a namespace name or absolute path"),
                        "name a namespace under /run/netns",
                    ));
                }
            }
            if let Some(i) = &p.standin_interface {
                if !valid_ifname(i) {
                    return Err(err(
                        o,
                        format!("standin_interface '{i}' is not an interface name"),
                        "use a name of at most 15 characters",
                    ));
                }
            }
            let id = short_id(&p.name);
            if let Some(other) = derived.insert(id.clone(), p.name.clone()) {
                return Err(err(
                    o,
                    format!("its device names (tap-{id}) collide with port {other}'s"),
                    "rename one of the two ports",
                ));
            }
        }

        let mut ext_ips = BTreeSet::new();
        for r in &self.routers {
            let o = format!("routers.{}", r.name);
            if r.name.len() > 40 {
                return Err(err(
                    o,
                    "the name is longer than 40 characters".into(),
                    "shorten it (it names the namespace qrouter-NAME)",
                ));
            }
            let Some(node) = self.node(&r.node) else {
                return Err(err(
                    o,
                    format!("node '{}' is not in [[nodes]]", r.node),
                    "add the node or correct the name",
                ));
            };
            let Some(ext) = self.external_network(&r.external_network) else {
                return Err(err(
                    o,
                    format!("external network '{}' is not in [[external_networks]]", r.external_network),
                    "add it or correct the name",
                ));
            };
            if !node.external_interfaces.contains_key(&ext.name) {
                return Err(err(
                    o,
                    format!("node {} has no interface on external network {}", node.name, ext.name),
                    "add external_interfaces = { NAME = \"IFNAME\" } to the node",
                ));
            }
            if !ext.subnet.contains(r.external_ip)
                || ext.subnet.is_reserved(r.external_ip)
                || r.external_ip == ext.gateway
            {
                return Err(err(
                    o,
                    format!("external_ip {} is not a free host address of {}", r.external_ip, ext.subnet),
                    "pick an unused address of the external subnet",
                ));
            }
            if !ext_ips.insert(r.external_ip) {
                return Err(err(
                    o,
                    format!("external_ip {} is used twice", r.external_ip),
                    "give each router and floating IP its own address",
                ));
            }
            let mut seen = BTreeSet::new();
            for n in &r.networks {
                if self.network(n).is_none() {
                    return Err(err(o, format!("network '{n}' is not in [[networks]]"), "add it or correct the name"));
                }
                if !seen.insert(n) {
                    return Err(err(o, format!("network '{n}' is listed twice"), "list each network once"));
                }
            }
        }
        for net in &self.networks {
            let routers: Vec<&str> =
                self.routers.iter().filter(|r| r.networks.contains(&net.name)).map(|r| r.name.as_str()).collect();
            if routers.len() > 1 {
                return Err(err(
                    format!("networks.{}", net.name),
                    format!("routers {} all claim its gateway {}", routers.join(", "), net.gateway),
                    "attach the network to one router",
                ));
            }
        }

        let mut fip_ports = BTreeSet::new();
        for f in &self.floating_ips {
            let o = format!("floating_ips.{}", f.ip);
            let Some(port) = self.port(&f.port) else {
                return Err(err(
                    o,
                    format!("port '{}' is not in [[ports]]", f.port),
                    "add the port or correct the name",
                ));
            };
            if !fip_ports.insert(&f.port) {
                return Err(err(
                    o,
                    format!("port {} already has a floating IP", f.port),
                    "give a port one floating IP",
                ));
            }
            let Some(r) = self.router_of_fip(f) else {
                return Err(err(
                    o,
                    format!("no router given and no single router serves network {}", port.network),
                    "set router = \"NAME\"",
                ));
            };
            if !r.networks.contains(&port.network) {
                return Err(err(
                    o,
                    format!("router {} is not attached to network {} of port {}", r.name, port.network, port.name),
                    "attach the network to the router or pick the right router",
                ));
            }
            let ext = self.external_network(&r.external_network).map(|e| e.subnet);
            if ext.is_some_and(|s| !s.contains(f.ip) || s.is_reserved(f.ip)) {
                return Err(err(
                    o,
                    format!("{} is not a host address of external network {}", f.ip, r.external_network),
                    "pick an address of the router's external subnet",
                ));
            }
            if self.external_network(&r.external_network).is_some_and(|e| e.gateway == f.ip) || !ext_ips.insert(f.ip) {
                return Err(err(o, format!("{} is already in use", f.ip), "pick an unused external address"));
            }
        }
        Ok(())
    }
}
