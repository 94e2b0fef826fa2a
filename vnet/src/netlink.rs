//! A small synchronous rtnetlink client on netlink-packet-route and netlink-sys:
//! links (bridge, veth, VXLAN), addresses, routes, neighbour and FDB entries.
//!
//! A socket belongs to the network namespace of the thread that opened it, so one
//! [`Netlink`] is opened per namespace (see [`crate::netns::run_in`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoTun, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::model::Mac;

/// What `ip -d link show` would tell about a link, reduced to what rvmm checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind (`bridge`, `veth`, `vxlan`, `tun`, ...), `None` for physical devices.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Hardware address.
    pub mac: Option<Mac>,
    /// Index of the bridge it is a port of.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// For a VXLAN device: its parameters.
    pub vxlan: Option<VxlanParams>,
    /// For a bridge: whether bridged IPv4 goes through the IP hooks (br_netfilter).
    pub nf_call_iptables: Option<bool>,
    /// For a bridge: whether bridged IPv6 goes through the IP6 hooks.
    pub nf_call_ip6tables: Option<bool>,
    /// For a tap: whether it is a multi-queue tap.
    pub tun_multi_queue: Option<bool>,
}

/// Parameters of a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanParams {
    /// VNI.
    pub vni: u32,
    /// Source address.
    pub local: Option<Ipv4Addr>,
    /// UDP destination port.
    pub port: u16,
    /// MAC learning.
    pub learning: bool,
    /// ARP proxy.
    pub proxy: bool,
    /// Underlay device index.
    pub link: Option<u32>,
}

/// A permanent or learned FDB entry of a device (`bridge fdb show dev X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// MAC.
    pub mac: Mac,
    /// Remote VTEP for VXLAN entries.
    pub dst: Option<Ipv4Addr>,
    /// NUD_PERMANENT (static) entry.
    pub permanent: bool,
    /// An entry of the device itself (`self`) rather than of its bridge (`master`).
    pub own: bool,
}

/// An IPv4 neighbour entry (`ip neigh show dev X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC.
    pub mac: Option<Mac>,
    /// NUD_PERMANENT.
    pub permanent: bool,
}

/// A new link to create.
#[derive(Debug, Clone)]
pub enum NewLink<'a> {
    /// A bridge, with br_netfilter enabled on it or not.
    Bridge {
        /// Pass bridged IPv4/IPv6 through the IP hooks.
        nf_call: bool,
    },
    /// A veth pair.
    Veth {
        /// Name of the other end.
        peer: &'a str,
        /// Put the other end into this namespace (an open nsfs file).
        peer_netns: Option<RawFd>,
        /// MAC of the other end.
        peer_mac: Option<Mac>,
    },
    /// A VXLAN device.
    Vxlan(VxlanParams),
}

/// One rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn einval(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make kernel errors readable in strace; harmless otherwise.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0, buf: vec![0; 1 << 18] })
    }

    /// Sends one request and collects the replies: every message of a dump, or the
    /// answer (if any) of a request acknowledged with NLM_F_ACK.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out[..]);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let bytes = &self.buf[off..n];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < 16 || len > bytes.len() {
                    return Err(einval("truncated netlink message"));
                }
                let reply_seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                off += (len + 3) & !3;
                if reply_seq != seq {
                    continue;
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]);
                let m = match parsed {
                    Ok(m) => m,
                    // A message this crate cannot decode (an attribute newer than it) is
                    // skipped in a dump; it cannot be the answer rvmm is waiting for.
                    Err(e) if dump => {
                        log::debug!("skipping undecodable netlink message: {e}");
                        continue;
                    }
                    Err(e) => return Err(einval(&format!("undecodable netlink reply: {e}"))),
                };
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                    },
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// All links.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a link with a name, MTU and (optionally) MAC, down.
    pub fn add_link(&mut self, name: &str, kind: &NewLink, mtu: Option<u32>, mac: Option<Mac>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(m) = mac {
            msg.attributes.push(LinkAttribute::Address(m.0.to_vec()));
        }
        let info = match kind {
            NewLink::Bridge { nf_call } => vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![
                    InfoBridge::NfCallIpTables(*nf_call),
                    InfoBridge::NfCallIp6Tables(*nf_call),
                ])),
            ],
            NewLink::Veth { peer, peer_netns, peer_mac } => {
                let mut p = LinkMessage::default();
                p.attributes.push(LinkAttribute::IfName(peer.to_string()));
                if let Some(m) = mtu {
                    p.attributes.push(LinkAttribute::Mtu(m));
                }
                if let Some(m) = peer_mac {
                    p.attributes.push(LinkAttribute::Address(m.0.to_vec()));
                }
                if let Some(fd) = peer_netns {
                    p.attributes.push(LinkAttribute::NetNsFd(*fd));
                }
                vec![LinkInfo::Kind(InfoKind::Veth), LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p)))]
            }
            NewLink::Vxlan(v) => {
                let mut data = vec![
                    InfoVxlan::Id(v.vni),
                    InfoVxlan::Port(v.port),
                    InfoVxlan::Learning(v.learning),
                    InfoVxlan::Proxy(v.proxy),
                ];
                if let Some(l) = v.local {
                    data.push(InfoVxlan::Local(l));
                }
                if let Some(l) = v.link {
                    data.push(InfoVxlan::Link(l));
                }
                vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))]
            }
        };
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map(|_| ())
    }

    /// Changes a link: MTU, MAC, bridge master (`Some(None)` releases it), up/down.
    pub fn set_link(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        mac: Option<Mac>,
        master: Option<Option<u32>>,
        up: Option<bool>,
    ) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(m) = mac {
            msg.attributes.push(LinkAttribute::Address(m.0.to_vec()));
        }
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m.unwrap_or(0)));
        }
        if let Some(u) = up {
            msg.header.change_mask = LinkFlags::Up;
            if u {
                msg.header.flags = LinkFlags::Up;
            }
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(|_| ())
    }

    /// Turns br_netfilter on or off for one bridge.
    pub fn set_bridge_nf_call(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::NfCallIpTables(on), InfoBridge::NfCallIp6Tables(on)])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map(|_| ())
    }

    /// Deletes a link (a veth takes its peer along).
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0).map(|_| ())
    }

    /// IPv4 addresses of a link, with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
        let mut v = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.index != index {
                    continue;
                }
                let local = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let addr = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = local.or(addr) {
                    v.push((ip, a.header.prefix_len));
                }
            }
        }
        Ok(v)
    }

    /// Every IPv4 address of the namespace.
    pub fn all_addresses(&mut self) -> io::Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
        let mut v = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = ip {
                    v.push((a.header.index, ip, a.header.prefix_len));
                }
            }
        }
        Ok(v)
    }

    fn address_msg(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        m
    }

    /// Adds an IPv4 address.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let m = Self::address_msg(index, ip, prefix);
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL).map(|_| ())
    }

    /// Removes an IPv4 address.
    pub fn del_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let m = Self::address_msg(index, ip, prefix);
        self.request(RouteNetlinkMessage::DelAddress(m), 0).map(|_| ())
    }

    /// The IPv4 default route of the main table: (gateway, output interface).
    pub fn default_route(&mut self) -> io::Result<Option<(Option<Ipv4Addr>, Option<u32>)>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        for m in replies {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(r.header.table as u32);
                if r.header.destination_prefix_length != 0 || table != RouteHeader::RT_TABLE_MAIN as u32 {
                    continue;
                }
                if r.header.kind != RouteType::Unicast {
                    continue;
                }
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                    _ => None,
                });
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(o) => Some(*o),
                    _ => None,
                });
                return Ok(Some((gw, oif)));
            }
        }
        Ok(None)
    }

    /// Sets (creates or replaces) the IPv4 default route via `gateway`.
    pub fn replace_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE).map(|_| ())
    }

    /// FDB entries of a device (both its own and its bridge's).
    pub fn fdb(&mut self, index: u32) -> io::Result<Vec<FdbEntry>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        let mut v = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if n.header.ifindex != index {
                    continue;
                }
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        Some(Mac([l[0], l[1], l[2], l[3], l[4], l[5]]))
                    }
                    _ => None,
                });
                // In AF_BRIDGE messages the crate leaves NDA_DST undecoded.
                let dst = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    _ => None,
                });
                if let Some(mac) = mac {
                    v.push(FdbEntry {
                        mac,
                        dst,
                        permanent: n.header.state == NeighbourState::Permanent,
                        own: n.header.flags.contains(NeighbourFlags::Own),
                    });
                }
            }
        }
        Ok(v)
    }

    fn fdb_msg(index: u32, mac: Mac, dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    /// Adds a static VXLAN FDB entry (`bridge fdb append MAC dev X dst DST self
    /// permanent`); entries with the same MAC and another destination are kept, which
    /// is how the all-zero flood entry lists every peer.
    pub fn add_fdb(&mut self, index: u32, mac: Mac, dst: Ipv4Addr) -> io::Result<()> {
        let m = Self::fdb_msg(index, mac, dst);
        self.request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_APPEND).map(|_| ())
    }

    /// Removes one destination of a VXLAN FDB entry.
    pub fn del_fdb(&mut self, index: u32, mac: Mac, dst: Option<Ipv4Addr>) -> io::Result<()> {
        let mut m = Self::fdb_msg(index, mac, dst.unwrap_or(Ipv4Addr::UNSPECIFIED));
        if dst.is_none() {
            m.attributes.retain(|a| !matches!(a, NeighbourAttribute::Destination(_)));
        }
        self.request(RouteNetlinkMessage::DelNeighbour(m), 0).map(|_| ())
    }

    /// IPv4 neighbour entries of a device.
    pub fn neighbours(&mut self, index: u32) -> io::Result<Vec<Neighbour>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        let mut v = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if n.header.ifindex != index {
                    continue;
                }
                let ip = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        Some(Mac([l[0], l[1], l[2], l[3], l[4], l[5]]))
                    }
                    _ => None,
                });
                if let Some(ip) = ip {
                    v.push(Neighbour { ip, mac, permanent: n.header.state == NeighbourState::Permanent });
                }
            }
        }
        Ok(v)
    }

    fn neigh_msg(index: u32, ip: Ipv4Addr, mac: Mac) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m
    }

    /// Sets a permanent IPv4 neighbour entry (`ip neigh replace IP lladdr MAC dev X
    /// nud permanent`).
    pub fn replace_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: Mac) -> io::Result<()> {
        let m = Self::neigh_msg(index, ip, mac);
        self.request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE).map(|_| ())
    }

    /// Deletes an IPv4 neighbour entry.
    pub fn del_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<()> {
        let mut m = Self::neigh_msg(index, ip, Mac::zero());
        m.attributes.retain(|a| !matches!(a, NeighbourAttribute::LinkLayerAddress(_)));
        self.request(RouteNetlinkMessage::DelNeighbour(m), 0).map(|_| ())
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn link_from(l: &LinkMessage) -> Link {
    let mut out = Link { index: l.header.index, up: l.header.flags.contains(LinkFlags::Up), ..Default::default() };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => out.mac = Some(Mac([a[0], a[1], a[2], a[3], a[4], a[5]])),
            LinkAttribute::Controller(m) => out.master = Some(*m),
            LinkAttribute::Link(i) => out.link = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => out.kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut p = VxlanParams::default();
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => p.vni = *id,
                                    InfoVxlan::Local(ip) => p.local = Some(*ip),
                                    InfoVxlan::Port(port) => p.port = *port,
                                    InfoVxlan::Learning(b) => p.learning = *b,
                                    InfoVxlan::Proxy(b) => p.proxy = *b,
                                    InfoVxlan::Link(i) if *i != 0 => p.link = Some(*i),
                                    _ => {}
                                }
                            }
                            out.vxlan = Some(p);
                        }
                        LinkInfo::Data(InfoData::Tun(t)) => {
                            for x in t {
                                // IFLA_TUN_MULTI_QUEUE: a u8.
                                #[allow(irrefutable_let_patterns)]
                                let InfoTun::Other(nla) = x
                                else {
                                    continue;
                                };
                                if nla.kind() == 7 && nla.value_len() == 1 {
                                    let mut v = [0u8; 1];
                                    nla.emit_value(&mut v);
                                    out.tun_multi_queue = Some(v[0] != 0);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Bridge(b)) => {
                            for x in b {
                                match x {
                                    InfoBridge::NfCallIpTables(v) => out.nf_call_iptables = Some(*v),
                                    InfoBridge::NfCallIp6Tables(v) => out.nf_call_ip6tables = Some(*v),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}
