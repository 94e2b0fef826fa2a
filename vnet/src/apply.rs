//! Making a host match its plan (`apply`), taking it all away again (`destroy`), and
//! comparing the two (`show`).
//!
//! `apply` is idempotent: every object is read back first and only what differs is
//! changed, so a second run reports no change and leaves interface indexes, FDB
//! entries and nftables handles as they were. Objects of the previous plan (from the
//! state file) that the new one no longer has are removed.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::model::{Description, Mac};
use crate::netlink::{Link, Netlink, NewLink, VxlanParams};
use crate::plan::{NodePlan, PortPlan, RouterInterfacePlan, RouterPlan, SegmentPlan, NAT_TABLE, SG_TABLE};
use crate::state::{self, NftRecord, NodeState, STATE_VERSION};
use crate::{netns, nft, tap};

/// Where and how to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configure this network namespace (name under /run/netns or absolute path)
    /// instead of the host's own: how tests let namespaces play the hosts.
    pub netns: Option<String>,
    /// Directory of state files.
    pub state_dir: PathBuf,
    /// The description file, recorded in the state file.
    pub description_path: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { netns: None, state_dir: PathBuf::from(state::DEFAULT_STATE_DIR), description_path: None }
    }
}

/// What a run changed, one line per change; empty when the host already matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The node.
    pub node: String,
    /// Human-readable changes, in the order they were made.
    pub changes: Vec<String>,
}

/// One namespace being configured.
struct Ctx<'a> {
    host: &'a str,
    /// Where we are, for messages: `node` or `qrouter-r1`.
    place: String,
    nl: Netlink,
    changes: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn open(host: &'a str, place: &str) -> Result<Ctx<'a>> {
        let nl = Netlink::open().map_err(|e| Error::host(host, format!("rtnetlink socket in {place}"), "open", e))?;
        Ok(Ctx { host, place: place.to_string(), nl, changes: Vec::new() })
    }

    fn err(&self, object: impl std::fmt::Display, action: &str, e: io::Error) -> Error {
        Error::host(self.host, format!("{object} (in {})", self.place), action, e)
    }

    fn changed(&mut self, what: String) {
        log::info!("{}: {}: {what}", self.host, self.place);
        self.changes.push(if self.place == "node" { what } else { format!("{}: {what}", self.place) });
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.nl.link(name).map_err(|e| self.err(format!("link {name}"), "look up", e))
    }

    fn must_link(&mut self, name: &str) -> Result<Link> {
        match self.link(name)? {
            Some(l) => Ok(l),
            None => Err(self.err(format!("link {name}"), "look up", io::Error::from_raw_os_error(libc::ENODEV))),
        }
    }

    fn delete_link(&mut self, name: &str) -> Result<bool> {
        let Some(l) = self.link(name)? else { return Ok(false) };
        match self.nl.del_link(l.index) {
            Ok(()) => {}
            // A veth whose peer was deleted first took this end along.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(false),
            Err(e) => return Err(self.err(format!("link {name}"), "delete", e)),
        }
        self.changed(format!("deleted link {name}"));
        Ok(true)
    }

    /// Deletes `name` if it exists with another kind than `kind`: ours (in `owned`) are
    /// replaced, anything else is a conflict. Returns the link if it is usable.
    fn existing_of_kind(&mut self, name: &str, kind: &str, owned: &BTreeSet<String>) -> Result<Option<Link>> {
        let Some(l) = self.link(name)? else { return Ok(None) };
        if l.kind.as_deref() == Some(kind) {
            return Ok(Some(l));
        }
        if owned.contains(name) {
            self.delete_link(name)?;
            return Ok(None);
        }
        Err(Error::Conflict {
            host: self.host.into(),
            object: format!("link {name} (in {})", self.place),
            problem: format!(
                "exists as a {} device, but rvmm needs a {kind} of that name and did not create it",
                l.kind.as_deref().unwrap_or("physical")
            ),
            fix: format!("delete it (ip link del {name}) or rename the object in the description"),
        })
    }

    /// Sets MTU, MAC, master and up-ness where they differ.
    fn ensure_props(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<Mac>,
        master: Option<Option<u32>>,
        up: bool,
    ) -> Result<()> {
        let l = self.must_link(name)?;
        let mtu = mtu.filter(|m| *m != l.mtu);
        let mac = mac.filter(|m| Some(*m) != l.mac);
        let master = master.filter(|m| *m != l.master);
        let upc = (up != l.up).then_some(up);
        if mtu.is_none() && mac.is_none() && master.is_none() && upc.is_none() {
            return Ok(());
        }
        self.nl
            .set_link(l.index, mtu, mac, master, upc)
            .map_err(|e| self.err(format!("link {name}"), "configure", e))?;
        let mut what = Vec::new();
        if let Some(m) = mtu {
            what.push(format!("mtu {m}"));
        }
        if let Some(m) = mac {
            what.push(format!("address {m}"));
        }
        if let Some(m) = master {
            what.push(match m {
                Some(_) => "master set".to_string(),
                None => "released from its bridge".to_string(),
            });
        }
        if let Some(u) = upc {
            what.push(if u { "up".into() } else { "down".into() });
        }
        self.changed(format!("set link {name}: {}", what.join(", ")));
        Ok(())
    }

    fn ensure_bridge(&mut self, name: &str, mtu: u32, nf_call: bool, owned: &BTreeSet<String>) -> Result<u32> {
        match self.existing_of_kind(name, "bridge", owned)? {
            Some(l) => {
                if l.nf_call_iptables != Some(nf_call) || l.nf_call_ip6tables != Some(nf_call) {
                    self.nl
                        .set_bridge_nf_call(l.index, nf_call)
                        .map_err(|e| self.err(format!("bridge {name}"), "set nf_call_iptables", e))?;
                    self.changed(format!("set bridge {name}: nf_call_iptables {}", nf_call as u8));
                }
            }
            None => {
                self.nl
                    .add_link(name, &NewLink::Bridge { nf_call }, Some(mtu), None)
                    .map_err(|e| self.err(format!("bridge {name}"), "create", e))?;
                self.changed(format!("created bridge {name}"));
            }
        }
        self.ensure_props(name, Some(mtu), None, Some(None), true)?;
        Ok(self.must_link(name)?.index)
    }

    /// A veth pair with both ends in this namespace.
    fn ensure_veth(&mut self, name: &str, peer: &str, mtu: u32, owned: &BTreeSet<String>) -> Result<()> {
        let a = self.existing_of_kind(name, "veth", owned)?;
        let b = self.link(peer)?;
        let paired = match (&a, &b) {
            (Some(a), Some(b)) => a.link == Some(b.index) && b.link == Some(a.index),
            _ => false,
        };
        if !paired {
            if a.is_some() {
                self.delete_link(name)?;
            }
            if b.is_some() {
                self.delete_link(peer)?;
            }
            self.nl
                .add_link(name, &NewLink::Veth { peer, peer_netns: None, peer_mac: None }, Some(mtu), None)
                .map_err(|e| self.err(format!("veth {name}/{peer}"), "create", e))?;
            self.changed(format!("created veth {name} <-> {peer}"));
        }
        Ok(())
    }

    fn ensure_addresses(&mut self, name: &str, index: u32, want: &[(Ipv4Addr, u8)]) -> Result<()> {
        let have = self.nl.addresses(index).map_err(|e| self.err(format!("addresses of {name}"), "list", e))?;
        for (ip, len) in &have {
            if !want.contains(&(*ip, *len)) {
                self.nl
                    .del_address(index, *ip, *len)
                    .map_err(|e| self.err(format!("address {ip}/{len} on {name}"), "delete", e))?;
                self.changed(format!("deleted address {ip}/{len} from {name}"));
            }
        }
        for (ip, len) in want {
            if !have.contains(&(*ip, *len)) {
                self.nl
                    .add_address(index, *ip, *len)
                    .map_err(|e| self.err(format!("address {ip}/{len} on {name}"), "add", e))?;
                self.changed(format!("added address {ip}/{len} to {name}"));
            }
        }
        Ok(())
    }

    fn ensure_default_route(&mut self, gw: Ipv4Addr) -> Result<()> {
        let cur = self.nl.default_route().map_err(|e| self.err("default route", "read", e))?;
        if cur.is_some_and(|(g, _)| g == Some(gw)) {
            return Ok(());
        }
        self.nl.replace_default_route(gw).map_err(|e| self.err(format!("default route via {gw}"), "set", e))?;
        self.changed(format!("set default route via {gw}"));
        Ok(())
    }

    fn ensure_sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let cur = std::fs::read_to_string(&path).map_err(|e| self.err(format!("sysctl {key}"), "read", e))?;
        if cur.trim() == value {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(|e| self.err(format!("sysctl {key}"), "write", e))?;
        self.changed(format!("set sysctl {key} = {value}"));
        Ok(())
    }

    /// Loads an nftables table unless the kernel already holds exactly what was loaded
    /// last time (same input, same listing).
    fn ensure_nft(
        &mut self,
        key: &str,
        family: &str,
        table: &str,
        commands: Option<Vec<serde_json::Value>>,
        records: &mut std::collections::BTreeMap<String, NftRecord>,
    ) -> Result<()> {
        let Some(commands) = commands else {
            if nft::delete_table(self.host, family, table)? {
                self.changed(format!("deleted nftables table {family} {table}"));
            }
            records.remove(key);
            return Ok(());
        };
        let input = nft::input_fingerprint(&commands);
        let live = nft::list_table(self.host, family, table)?.map(|l| nft::fingerprint(&l));
        if let (Some(rec), Some(live)) = (records.get(key), &live) {
            if rec.input == input && &rec.live == live {
                return Ok(());
            }
        }
        nft::load(self.host, &format!("table {family} {table} (in {})", self.place), commands)?;
        let listed = nft::list_table(self.host, family, table)?.ok_or_else(|| Error::Nftables {
            host: self.host.into(),
            object: format!("table {family} {table}"),
            action: "load".into(),
            detail: "the table is missing right after loading it".into(),
            fix: "check for another program flushing the ruleset".into(),
        })?;
        records.insert(key.to_string(), NftRecord { input, live: nft::fingerprint(&listed) });
        self.changed(format!("loaded nftables table {family} {table}"));
        Ok(())
    }
}

fn check_underlay(c: &mut Ctx, plan: &NodePlan) -> Result<Option<u32>> {
    let addrs = c.nl.all_addresses().map_err(|e| c.err("addresses", "list", e))?;
    if !addrs.iter().any(|(_, ip, _)| *ip == plan.underlay_ip) && !plan.segments.is_empty() {
        return Err(Error::Conflict {
            host: c.host.into(),
            object: format!("underlay address {}", plan.underlay_ip),
            problem: "is not configured on any interface of this host".into(),
            fix: format!(
                "configure it on the underlay interface (ip addr add {}/24 dev eth0), or correct nodes.{}.underlay_ip, or pass the right --node/--netns",
                plan.underlay_ip, plan.node
            ),
        });
    }
    match &plan.underlay_interface {
        None => Ok(None),
        Some(i) => match c.link(i)? {
            Some(l) => Ok(Some(l.index)),
            None => Err(Error::Conflict {
                host: c.host.into(),
                object: format!("underlay interface {i}"),
                problem: "does not exist".into(),
                fix: format!("correct nodes.{}.underlay_interface", plan.node),
            }),
        },
    }
}

fn ensure_segment(
    c: &mut Ctx,
    plan: &NodePlan,
    s: &SegmentPlan,
    dev: Option<u32>,
    owned: &BTreeSet<String>,
) -> Result<()> {
    let br = c.ensure_bridge(&s.bridge, s.mtu, false, owned)?;
    let want = VxlanParams {
        vni: s.vni,
        local: Some(plan.underlay_ip),
        port: s.port,
        learning: s.fdb_mode == crate::model::FdbMode::Flood,
        proxy: s.fdb_mode == crate::model::FdbMode::Static,
        link: dev,
    };
    let cur = c.existing_of_kind(&s.vxlan, "vxlan", owned)?;
    if cur.as_ref().is_some_and(|l| l.vxlan.as_ref() != Some(&want)) {
        // VNI, addresses and port cannot all be changed in place: rebuild.
        c.delete_link(&s.vxlan)?;
    }
    if c.link(&s.vxlan)?.is_none() {
        match c.nl.add_link(&s.vxlan, &NewLink::Vxlan(want), Some(s.mtu), None) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) || e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(Error::host_fix(
                    c.host,
                    format!("vxlan {} (vni {})", s.vxlan, s.vni),
                    "create",
                    e,
                    format!("another VXLAN device already uses VNI {} or UDP port {}; delete it or change the network's vni", s.vni, s.port),
                ))
            }
            Err(e) => return Err(c.err(format!("vxlan {} (vni {})", s.vxlan, s.vni), "create", e)),
        }
        c.changed(format!("created vxlan {} (vni {}, local {}, dstport {})", s.vxlan, s.vni, plan.underlay_ip, s.port));
    }
    c.ensure_props(&s.vxlan, Some(s.mtu), None, Some(Some(br)), true)?;
    let vx = c.must_link(&s.vxlan)?.index;

    // FDB: permanent entries with a remote VTEP are ours; learned ones are left alone.
    let want: BTreeSet<(Mac, Ipv4Addr)> = s.fdb_entries().into_iter().collect();
    let have: BTreeSet<(Mac, Ipv4Addr)> =
        c.nl.fdb(vx)
            .map_err(|e| c.err(format!("fdb of {}", s.vxlan), "list", e))?
            .into_iter()
            .filter(|f| f.permanent)
            .filter_map(|f| f.dst.map(|d| (f.mac, d)))
            .collect();
    for (mac, dst) in have.difference(&want) {
        c.nl.del_fdb(vx, *mac, Some(*dst))
            .map_err(|e| c.err(format!("fdb {mac} dst {dst} on {}", s.vxlan), "delete", e))?;
        c.changed(format!("deleted fdb {mac} dst {dst} from {}", s.vxlan));
    }
    for (mac, dst) in want.difference(&have) {
        c.nl.add_fdb(vx, *mac, *dst).map_err(|e| c.err(format!("fdb {mac} dst {dst} on {}", s.vxlan), "add", e))?;
        c.changed(format!("added fdb {mac} dst {dst} to {}", s.vxlan));
    }
    // ARP proxy entries.
    let want: BTreeSet<(Ipv4Addr, Mac)> = s.neighbours().into_iter().collect();
    let have: BTreeSet<(Ipv4Addr, Mac)> =
        c.nl.neighbours(vx)
            .map_err(|e| c.err(format!("neighbours of {}", s.vxlan), "list", e))?
            .into_iter()
            .filter(|n| n.permanent)
            .filter_map(|n| n.mac.map(|m| (n.ip, m)))
            .collect();
    for (ip, mac) in have.difference(&want) {
        if !want.iter().any(|(i, _)| i == ip) {
            c.nl.del_neighbour(vx, *ip).map_err(|e| c.err(format!("neighbour {ip} on {}", s.vxlan), "delete", e))?;
            c.changed(format!("deleted neighbour {ip} {mac} from {}", s.vxlan));
        }
    }
    for (ip, mac) in want.difference(&have) {
        c.nl.replace_neighbour(vx, *ip, *mac).map_err(|e| c.err(format!("neighbour {ip} on {}", s.vxlan), "set", e))?;
        c.changed(format!("set neighbour {ip} {mac} on {}", s.vxlan));
    }
    Ok(())
}

/// A veth pair with one end (`host_end`) here and the other (`peer`) in the
/// namespace `ns`, with the given MAC on the far end.
fn ensure_veth_into(
    c: &mut Ctx,
    host_end: &str,
    peer: &str,
    ns: &str,
    peer_mac: Mac,
    mtu: u32,
    owned: &BTreeSet<String>,
) -> Result<()> {
    let a = c.existing_of_kind(host_end, "veth", owned)?;
    let b = netns::run_in(Some(ns), || Netlink::open()?.link(peer))
        .and_then(|r| r)
        .map_err(|e| c.err(format!("link {peer} in namespace {ns}"), "look up", e))?;
    let paired = match (&a, &b) {
        (Some(a), Some(b)) => a.link == Some(b.index) && b.link == Some(a.index) && b.kind.as_deref() == Some("veth"),
        _ => false,
    };
    if paired {
        return Ok(());
    }
    if a.is_some() {
        c.delete_link(host_end)?;
    }
    if b.is_some() {
        netns::run_in(Some(ns), || -> io::Result<()> {
            let mut nl = Netlink::open()?;
            if let Some(l) = nl.link(peer)? {
                nl.del_link(l.index)?;
            }
            Ok(())
        })
        .and_then(|r| r)
        .map_err(|e| c.err(format!("link {peer} in namespace {ns}"), "delete", e))?;
        c.changed(format!("deleted link {peer} in {ns}"));
    }
    let fd = netns::open(ns).map_err(|e| c.err(format!("namespace {ns}"), "open", e))?;
    use std::os::fd::AsRawFd;
    c.nl.add_link(
        host_end,
        &NewLink::Veth { peer, peer_netns: Some(fd.as_raw_fd()), peer_mac: Some(peer_mac) },
        Some(mtu),
        None,
    )
    .map_err(|e| c.err(format!("veth {host_end} <-> {ns}:{peer}"), "create", e))?;
    c.changed(format!("created veth {host_end} <-> {ns}:{peer}"));
    Ok(())
}

/// The far end of a veth inside a namespace: MTU, MAC, up, addresses, default route.
#[allow(clippy::too_many_arguments)]
fn configure_far_end(
    host: &str,
    ns: &str,
    ifname: &str,
    mtu: u32,
    mac: Mac,
    addresses: &[(Ipv4Addr, u8)],
    gateway: Option<Ipv4Addr>,
) -> Result<Vec<String>> {
    netns::run_in(Some(ns), || -> Result<Vec<String>> {
        let mut c = Ctx::open(host, ns)?;
        c.ensure_props("lo", None, None, None, true)?;
        c.ensure_props(ifname, Some(mtu), Some(mac), None, true)?;
        let idx = c.must_link(ifname)?.index;
        c.ensure_addresses(ifname, idx, addresses)?;
        if let Some(gw) = gateway {
            c.ensure_default_route(gw)?;
        }
        Ok(c.changes)
    })
    .map_err(|e| Error::host(host, format!("namespace {ns}"), "enter", e))?
}

fn ensure_port(c: &mut Ctx, p: &PortPlan, owned: &BTreeSet<String>) -> Result<()> {
    let qbr = c.ensure_bridge(&p.bridge, p.mtu, p.filtered, owned)?;
    match &p.standin {
        None => {
            let cur = c.existing_of_kind(&p.tap, "tun", owned)?;
            let mq = p.queues > 1;
            if cur.as_ref().is_some_and(|l| l.tun_multi_queue.is_some_and(|m| m != mq)) {
                c.delete_link(&p.tap)?;
            }
            if c.link(&p.tap)?.is_none() {
                tap::create_persistent(&p.tap, p.queues).map_err(|e| c.err(format!("tap {}", p.tap), "create", e))?;
                c.changed(format!("created tap {} ({} queue{})", p.tap, p.queues, if mq { "s" } else { "" }));
            }
        }
        Some(s) => {
            if !netns::exists(&s.netns) {
                return Err(Error::Conflict {
                    host: c.host.into(),
                    object: format!("port {} stand-in namespace {}", p.name, s.netns),
                    problem: "does not exist".into(),
                    fix: format!("create it first (ip netns add {}) or drop standin_netns from the port", s.netns),
                });
            }
            ensure_veth_into(c, &p.tap, &s.interface, &s.netns, p.mac, p.mtu, owned)?;
            let ch =
                configure_far_end(c.host, &s.netns, &s.interface, p.mtu, p.mac, &[(p.ip, p.prefix)], Some(p.gateway))?;
            c.changes.extend(ch);
        }
    }
    c.ensure_props(&p.tap, Some(p.mtu), None, Some(Some(qbr)), true)?;
    c.ensure_veth(&p.veth_bridge_end, &p.veth_integration_end, p.mtu, owned)?;
    c.ensure_props(&p.veth_bridge_end, Some(p.mtu), None, Some(Some(qbr)), true)?;
    let brq = c.must_link(&p.integration_bridge)?.index;
    c.ensure_props(&p.veth_integration_end, Some(p.mtu), None, Some(Some(brq)), true)?;
    Ok(())
}

fn ensure_router(
    c: &mut Ctx,
    r: &RouterPlan,
    owned: &BTreeSet<String>,
    records: &mut std::collections::BTreeMap<String, NftRecord>,
) -> Result<()> {
    let created = netns::create(&r.netns).map_err(|e| c.err(format!("namespace {}", r.netns), "create", e))?;
    if created {
        c.changed(format!("created namespace {}", r.netns));
    }
    let ifaces: Vec<&RouterInterfacePlan> = r.internal.iter().chain(std::iter::once(&r.external)).collect();
    for i in &ifaces {
        ensure_veth_into(c, &i.host_end, &i.name, &r.netns, i.mac, i.mtu, owned)?;
        let br = c.must_link(&i.bridge)?.index;
        c.ensure_props(&i.host_end, Some(i.mtu), None, Some(Some(br)), true)?;
    }
    let host = c.host;
    let key = format!("{}:ip {}", r.netns, NAT_TABLE);
    let ch = netns::run_in(Some(&r.netns), || -> Result<Vec<String>> {
        let mut rc = Ctx::open(host, &r.netns)?;
        rc.ensure_props("lo", None, None, None, true)?;
        // Interfaces of the namespace that no longer belong to the plan.
        let want: BTreeSet<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        let links = rc.nl.links().map_err(|e| rc.err("links", "list", e))?;
        for l in links {
            if l.name != "lo" && !want.contains(l.name.as_str()) {
                rc.delete_link(&l.name)?;
            }
        }
        for i in &ifaces {
            rc.ensure_props(&i.name, Some(i.mtu), Some(i.mac), None, true)?;
            let idx = rc.must_link(&i.name)?.index;
            rc.ensure_addresses(&i.name, idx, &i.addresses)?;
        }
        rc.ensure_default_route(r.default_gateway)?;
        rc.ensure_sysctl("net.ipv4.ip_forward", "1")?;
        rc.ensure_nft(&key, "ip", NAT_TABLE, nft::nat_ruleset(r), records)?;
        Ok(rc.changes)
    })
    .map_err(|e| Error::host(host, format!("namespace {}", r.netns), "enter", e))??;
    c.changes.extend(ch);
    Ok(())
}

fn apply_here(
    plan: &NodePlan,
    old: &[&NodePlan],
    records: &mut std::collections::BTreeMap<String, NftRecord>,
) -> Result<Vec<String>> {
    let mut c = Ctx::open(&plan.node, "node")?;
    let dev = check_underlay(&mut c, plan)?;
    // Without br_netfilter the port bridges would forward unfiltered: refuse.
    if plan.has_filtered_ports() && !std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        return Err(Error::Conflict {
            host: c.host.into(),
            object: "br_netfilter".into(),
            problem: "is not loaded, so security groups on port bridges would not filter anything".into(),
            fix: "modprobe br_netfilter (and add it to /etc/modules-load.d)".into(),
        });
    }
    let mut owned: BTreeSet<String> = plan.owned_links().into_iter().collect();
    // Leftovers of the previous plan(s) go first, so renamed objects cannot collide.
    for old in old {
        let new_ns: BTreeSet<String> = plan.owned_namespaces().into_iter().collect();
        for ns in old.owned_namespaces() {
            if !new_ns.contains(&ns) && netns::delete(&ns).map_err(|e| c.err(format!("namespace {ns}"), "delete", e))? {
                c.changed(format!("deleted namespace {ns}"));
                records.retain(|k, _| !k.starts_with(&format!("{ns}:")));
            }
        }
        for l in old.owned_links() {
            if !owned.contains(&l) {
                c.delete_link(&l)?;
            }
        }
        owned.extend(old.owned_links());
    }
    for s in &plan.segments {
        ensure_segment(&mut c, plan, s, dev, &owned)?;
    }
    for p in &plan.ports {
        ensure_port(&mut c, p, &owned)?;
    }
    for b in &plan.external_bridges {
        let br = c.ensure_bridge(&b.bridge, b.mtu, false, &owned)?;
        if c.link(&b.interface)?.is_none() {
            return Err(Error::Conflict {
                host: c.host.into(),
                object: format!("external interface {} of {}", b.interface, b.network),
                problem: "does not exist".into(),
                fix: format!("correct external_interfaces.{} of node {}", b.network, plan.node),
            });
        }
        c.ensure_props(&b.interface, None, None, Some(Some(br)), true)?;
    }
    for r in &plan.routers {
        ensure_router(&mut c, r, &owned, records)?;
    }
    let key = format!("node:inet {SG_TABLE}");
    c.ensure_nft(&key, "inet", SG_TABLE, nft::sg_ruleset(plan), records)?;
    Ok(c.changes)
}

/// Makes the host (or `opts.netns`) match `node`'s part of the description, and
/// records it in the state file.
pub fn apply(desc: &Description, node: &str, opts: &Options) -> Result<Report> {
    let plan = NodePlan::build(desc, node)?;
    let old = state::load(&opts.state_dir, node)?;
    let mut records = old.as_ref().map(|o| o.nft.clone()).unwrap_or_default();
    let old_plans: Vec<&NodePlan> = old.as_ref().map(|o| o.plans()).unwrap_or_default();
    let netns_name = opts.netns.as_deref();
    let result = netns::run_in(netns_name, || apply_here(&plan, &old_plans, &mut records)).map_err(|e| {
        Error::host_fix(
            node,
            format!("namespace {}", netns_name.unwrap_or("-")),
            "enter",
            e,
            "create the namespace or correct --netns",
        )
    });
    let result = result.and_then(|r| r);
    // After a failure the host may hold some of the new plan and some of the old one:
    // both are recorded, so that the next apply or a destroy cleans up either.
    let previous = match (&result, &old) {
        (Ok(_), _) | (Err(_), None) => None,
        (Err(_), Some(o)) if o.plan == plan => o.previous.clone(),
        (Err(_), Some(o)) => Some(o.plan.clone()),
    };
    let st = NodeState {
        version: STATE_VERSION,
        node: node.to_string(),
        netns: opts.netns.clone(),
        description: opts.description_path.clone().or(old.as_ref().and_then(|o| o.description.clone())),
        plan,
        nft: records,
        previous,
    };
    if old.as_ref() != Some(&st) {
        state::save(&opts.state_dir, &st)?;
    }
    Ok(Report { node: node.to_string(), changes: result? })
}

fn destroy_here(plan: &NodePlan) -> Result<Vec<String>> {
    let mut c = Ctx::open(&plan.node, "node")?;
    // Links first: deleting a veth end takes its peer along at once, whereas a
    // namespace's interfaces go asynchronously after its last reference.
    for l in plan.owned_links() {
        c.delete_link(&l)?;
    }
    for ns in plan.owned_namespaces() {
        if netns::delete(&ns).map_err(|e| c.err(format!("namespace {ns}"), "delete", e))? {
            c.changed(format!("deleted namespace {ns}"));
        }
    }
    if nft::delete_table(c.host, "inet", SG_TABLE)? {
        c.changed(format!("deleted nftables table inet {SG_TABLE}"));
    }
    Ok(c.changes)
}

/// Removes everything of `node` that apply made: from the state file, or (without
/// one) from the description. The external interfaces are released from their
/// bridges, not deleted.
pub fn destroy(desc: Option<&Description>, node: &str, opts: &Options) -> Result<Report> {
    let st = state::load(&opts.state_dir, node)?;
    let mut plans = Vec::new();
    if let Some(s) = &st {
        plans.extend(s.plans().into_iter().cloned());
    }
    if let Some(d) = desc {
        plans.push(NodePlan::build(d, node)?);
    }
    if plans.is_empty() {
        return Err(Error::State {
            host: node.into(),
            path: state::path(&opts.state_dir, node).display().to_string(),
            problem: "does not exist, and no description was given".into(),
            fix: "pass the description file: rvmm net destroy FILE --node NODE".into(),
        });
    }
    let netns_name = opts.netns.clone().or(st.as_ref().and_then(|s| s.netns.clone()));
    let mut changes = Vec::new();
    for plan in &plans {
        let ch = netns::run_in(netns_name.as_deref(), || destroy_here(plan)).map_err(|e| {
            Error::host_fix(
                node,
                format!("namespace {}", netns_name.as_deref().unwrap_or("-")),
                "enter",
                e,
                "correct --netns",
            )
        })??;
        changes.extend(ch);
    }
    state::remove(&opts.state_dir, node)?;
    Ok(Report { node: node.to_string(), changes })
}

/// Status of one object for `show`.
fn status(l: Option<&Link>) -> &'static str {
    match l {
        None => "MISSING",
        Some(l) if !l.up => "down",
        Some(_) => "up",
    }
}

/// A readable account of a node's state file and how the host compares with it.
pub fn show(st: &NodeState) -> Result<String> {
    use std::fmt::Write;
    let plan = &st.plan;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} (underlay {}){}{}",
        plan.node,
        plan.underlay_ip,
        st.netns.as_ref().map(|n| format!(", namespace {n}")).unwrap_or_default(),
        st.description.as_ref().map(|d| format!(", from {d}")).unwrap_or_default()
    );
    let text = netns::run_in(st.netns.as_deref(), || -> Result<String> {
        let mut c = Ctx::open(&plan.node, "node")?;
        let mut o = String::new();
        for s in &plan.segments {
            let br = c.link(&s.bridge)?;
            let vx = c.link(&s.vxlan)?;
            let _ = writeln!(
                o,
                "  network {} vni {} mtu {} fdb {}: {} {}, {} {}",
                s.network,
                s.vni,
                s.mtu,
                match s.fdb_mode {
                    crate::model::FdbMode::Flood => "flood",
                    crate::model::FdbMode::Static => "static",
                },
                s.bridge,
                status(br.as_ref()),
                s.vxlan,
                status(vx.as_ref())
            );
            if let Some(vx) = vx {
                let fdb = c.nl.fdb(vx.index).map_err(|e| c.err(format!("fdb of {}", s.vxlan), "list", e))?;
                for f in fdb.iter().filter(|f| f.dst.is_some()) {
                    let _ = writeln!(
                        o,
                        "    fdb {} dst {}{}",
                        f.mac,
                        f.dst.map(|d| d.to_string()).unwrap_or_default(),
                        if f.permanent { " permanent" } else { " learned" }
                    );
                }
            }
        }
        for p in &plan.ports {
            let names = [&p.tap, &p.bridge, &p.veth_bridge_end, &p.veth_integration_end];
            let mut parts = Vec::new();
            for n in names {
                let l = c.link(n)?;
                parts.push(format!("{n} {}", status(l.as_ref())));
            }
            let _ = writeln!(
                o,
                "  port {}{} on {}: {} {}/{} mtu {}{}{}: {}",
                p.name,
                p.vm.as_ref().map(|v| format!(" (vm {v})")).unwrap_or_default(),
                p.network,
                p.mac,
                p.ip,
                p.prefix,
                p.mtu,
                if p.filtered {
                    if p.stateful {
                        ", stateful security groups"
                    } else {
                        ", stateless security groups"
                    }
                } else {
                    ", unfiltered"
                },
                p.standin.as_ref().map(|s| format!(", stand-in {}:{}", s.netns, s.interface)).unwrap_or_default(),
                parts.join(", ")
            );
        }
        for b in &plan.external_bridges {
            let l = c.link(&b.bridge)?;
            let _ = writeln!(
                o,
                "  external network {}: {} {} with {}",
                b.network,
                b.bridge,
                status(l.as_ref()),
                b.interface
            );
        }
        for r in &plan.routers {
            let present = netns::exists(&r.netns);
            let _ = writeln!(
                o,
                "  router {} in {} ({}): external {} via {}, snat {}",
                r.name,
                r.netns,
                if present { "present" } else { "MISSING" },
                r.external_ip,
                r.default_gateway,
                if r.snat { "on" } else { "off" }
            );
            for i in &r.internal {
                let _ = writeln!(
                    o,
                    "    {} {} on {}",
                    i.name,
                    i.addresses.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>().join(" "),
                    i.network
                );
            }
            for f in &r.floating_ips {
                let _ = writeln!(o, "    floating ip {} -> {} (port {})", f.ip, f.fixed_ip, f.port);
            }
        }
        if plan.has_filtered_ports() {
            let t = nft::list_table(c.host, "inet", SG_TABLE)?;
            let rec = st.nft.get(&format!("node:inet {SG_TABLE}"));
            let s = match (t, rec) {
                (None, _) => "MISSING",
                (Some(t), Some(r)) if nft::fingerprint(&t) == r.live => "as applied",
                (Some(_), _) => "CHANGED since apply",
            };
            let _ = writeln!(o, "  nftables table inet {SG_TABLE}: {s}");
        }
        Ok(o)
    })
    .map_err(|e| {
        Error::host_fix(
            &plan.node,
            format!("namespace {}", st.netns.as_deref().unwrap_or("-")),
            "enter",
            e,
            "correct the namespace",
        )
    })??;
    out.push_str(&text);
    Ok(out)
}
