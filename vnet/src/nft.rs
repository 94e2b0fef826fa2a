//! nftables through `nft`'s JSON interface (`nft -j`): the security-group table of a
//! compute node and the NAT table of a router, each built as one JSON document and
//! loaded as one atomic transaction.
//!
//! nftables has no kernel interface a crate could use without re-implementing nft's
//! bytecode compiler (libnftables is the only one), so the `nft` program is the
//! interface, as the issue asks. It runs in the namespace of the calling thread.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::{fnv1a, Protocol};
use crate::plan::{NodePlan, PortPlan, RouterPlan, RulePlan, NAT_TABLE, SG_TABLE};

fn nft(host: &str, object: &str, action: &str, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Nftables {
        host: host.into(),
        object: object.into(),
        action: action.into(),
        detail: format!("cannot run nft: {e}"),
        fix: "install nftables (apt-get install nftables)".into(),
    })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).map_err(|e| Error::Nftables {
            host: host.into(),
            object: object.into(),
            action: action.into(),
            detail: format!("writing to nft: {e}"),
            fix: "check that nft runs (nft --version)".into(),
        })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Nftables {
        host: host.into(),
        object: object.into(),
        action: action.into(),
        detail: format!("waiting for nft: {e}"),
        fix: "check that nft runs (nft --version)".into(),
    })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Loads a JSON document of commands as one transaction.
pub fn load(host: &str, object: &str, commands: Vec<Value>) -> Result<()> {
    let doc = json!({ "nftables": commands }).to_string();
    let (ok, _, err) = nft(host, object, "load", &["-j", "-f", "-"], Some(&doc))?;
    if !ok {
        return Err(Error::Nftables {
            host: host.into(),
            object: object.into(),
            action: "load".into(),
            detail: err,
            fix: "check that the kernel has nf_tables, nft_ct, nft_nat and br_netfilter (modprobe them)".into(),
        });
    }
    Ok(())
}

/// Lists a table as nft's JSON, `None` if there is no such table.
pub fn list_table(host: &str, family: &str, name: &str) -> Result<Option<Value>> {
    let object = format!("table {family} {name}");
    let (ok, out, err) = nft(host, &object, "list", &["-j", "list", "table", family, name], None)?;
    if !ok {
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::Nftables {
            host: host.into(),
            object,
            action: "list".into(),
            detail: err,
            fix: "check that nft works in this namespace (nft list ruleset)".into(),
        });
    }
    serde_json::from_str(&out).map(Some).map_err(|e| Error::Nftables {
        host: host.into(),
        object,
        action: "list".into(),
        detail: format!("unreadable JSON from nft: {e}"),
        fix: "use nftables 0.9.3 or later".into(),
    })
}

/// Deletes a table if it exists.
pub fn delete_table(host: &str, family: &str, name: &str) -> Result<bool> {
    if list_table(host, family, name)?.is_none() {
        return Ok(false);
    }
    load(
        host,
        &format!("table {family} {name}"),
        vec![json!({"delete": {"table": {"family": family, "name": name}}})],
    )?;
    Ok(true)
}

/// The ruleset as text (`nft list ruleset`), for `show` and for tests.
pub fn ruleset_text(host: &str) -> Result<String> {
    let (ok, out, err) = nft(host, "ruleset", "list", &["list", "ruleset"], None)?;
    if !ok {
        return Err(Error::Nftables {
            host: host.into(),
            object: "ruleset".into(),
            action: "list".into(),
            detail: err,
            fix: "check that nft works in this namespace".into(),
        });
    }
    Ok(out)
}

/// A fingerprint of a listed table: its JSON without handles, counters and nft's
/// version banner, hashed. Equal fingerprints mean equal rules.
pub fn fingerprint(listing: &Value) -> String {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "handle" | "metainfo" | "packets" | "bytes"))
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().filter(|x| x.get("metainfo").is_none()).map(strip).collect()),
            other => other.clone(),
        }
    }
    let canon = strip(listing).to_string();
    format!("{:08x}{:08x}", fnv1a(canon.as_bytes()), canon.len())
}

/// A fingerprint of a document of commands about to be loaded.
pub fn input_fingerprint(commands: &[Value]) -> String {
    let s = Value::Array(commands.to_vec()).to_string();
    format!("{:08x}{:08x}", fnv1a(s.as_bytes()), s.len())
}

fn m(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn prefix(addr: std::net::Ipv4Addr, len: u8) -> Value {
    if len == 32 {
        json!(addr.to_string())
    } else {
        json!({"prefix": {"addr": addr.to_string(), "len": len}})
    }
}

fn rule(family: &str, table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}

/// Commands that (re)create a table from nothing, atomically: `add` makes sure it
/// exists so that `delete` cannot fail, then it is built again.
fn fresh_table(family: &str, table: &str) -> Vec<Value> {
    vec![
        json!({"add": {"table": {"family": family, "name": table}}}),
        json!({"delete": {"table": {"family": family, "name": table}}}),
        json!({"add": {"table": {"family": family, "name": table}}}),
    ]
}

fn allow_rule(r: &RulePlan, ingress: bool) -> Vec<Value> {
    let mut e = Vec::new();
    if let Some((addr, len)) = r.remote {
        e.push(m(payload("ip", if ingress { "saddr" } else { "daddr" }), prefix(addr, len)));
    }
    let proto = match r.protocol {
        Protocol::Any => None,
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
    };
    if let Some(p) = proto {
        e.push(m(meta("l4proto"), json!(p)));
        if let Some((lo, hi)) = r.ports {
            let right = if lo == hi { json!(lo) } else { json!({"range": [lo, hi]}) };
            e.push(m(payload(p, "dport"), right));
        }
    }
    e.push(json!({"accept": null}));
    e
}

fn port_chains(p: &PortPlan, out: &mut Vec<Value>) {
    let f = "inet";
    let t = SG_TABLE;
    let chain_in = format!("{}-in", p.chain);
    let chain_out = format!("{}-out", p.chain);
    for c in [&p.chain, &chain_in, &chain_out] {
        out.push(json!({"add": {"chain": {"family": f, "table": t, "name": c}}}));
    }
    // Everything crossing the port bridge, in both directions.
    out.push(rule(f, t, "forward", vec![m(meta("iifname"), json!(p.bridge)), json!({"jump": {"target": p.chain}})]));
    // IPv4 only: bridged IPv6 is dropped rather than let through unfiltered.
    out.push(rule(f, t, &p.chain, vec![m(meta("nfproto"), json!("ipv6")), json!({"drop": null})]));
    if p.stateful {
        out.push(rule(
            f,
            t,
            &p.chain,
            vec![
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
                json!({"accept": null}),
            ],
        ));
        out.push(rule(
            f,
            t,
            &p.chain,
            vec![
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}),
                json!({"drop": null}),
            ],
        ));
    }
    // Both ends of the port bridge carry the same logical device for br_netfilter, so
    // the direction is told by the port's address; a source that is not the port's
    // (spoofing) matches neither and is dropped.
    out.push(rule(
        f,
        t,
        &p.chain,
        vec![m(payload("ip", "saddr"), json!(p.ip.to_string())), json!({"jump": {"target": chain_out}})],
    ));
    out.push(rule(
        f,
        t,
        &p.chain,
        vec![m(payload("ip", "daddr"), json!(p.ip.to_string())), json!({"jump": {"target": chain_in}})],
    ));
    out.push(rule(f, t, &p.chain, vec![json!({"drop": null})]));
    for r in &p.ingress {
        out.push(rule(f, t, &chain_in, allow_rule(r, true)));
    }
    out.push(rule(f, t, &chain_in, vec![json!({"drop": null})]));
    for r in &p.egress {
        out.push(rule(f, t, &chain_out, allow_rule(r, false)));
    }
    out.push(rule(f, t, &chain_out, vec![json!({"drop": null})]));
}

/// The security-group table of a compute node: table `inet rvmm_sg`, a `forward`
/// base chain that sends traffic bridged by each filtered port's bridge to the port's
/// chain, which accepts established flows and hands new ones to the port's
/// ingress or egress chain. `None` when no port is filtered.
pub fn sg_ruleset(plan: &NodePlan) -> Option<Vec<Value>> {
    if !plan.has_filtered_ports() {
        return None;
    }
    let mut out = fresh_table("inet", SG_TABLE);
    out.push(json!({"add": {"chain": {"family": "inet", "table": SG_TABLE, "name": "forward",
        "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}));
    for p in plan.ports.iter().filter(|p| p.filtered) {
        port_chains(p, &mut out);
    }
    Some(out)
}

/// The NAT table of a router (in its namespace): floating IPs DNAT in and SNAT out;
/// the rest of the tenant subnets SNAT to the router's external address when `snat`
/// is on. `None` when there is nothing to translate.
pub fn nat_ruleset(r: &RouterPlan) -> Option<Vec<Value>> {
    let snat_subnets = r.snat && !r.subnets.is_empty();
    if r.floating_ips.is_empty() && !snat_subnets {
        return None;
    }
    let (f, t) = ("ip", NAT_TABLE);
    let mut out = fresh_table(f, t);
    out.push(json!({"add": {"chain": {"family": f, "table": t, "name": "prerouting",
        "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}}));
    out.push(json!({"add": {"chain": {"family": f, "table": t, "name": "postrouting",
        "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}));
    let qg = &r.external.name;
    for fip in &r.floating_ips {
        out.push(rule(
            f,
            t,
            "prerouting",
            vec![
                m(payload("ip", "daddr"), json!(fip.ip.to_string())),
                json!({"dnat": {"addr": fip.fixed_ip.to_string()}}),
            ],
        ));
        out.push(rule(
            f,
            t,
            "postrouting",
            vec![
                m(meta("oifname"), json!(qg)),
                m(payload("ip", "saddr"), json!(fip.fixed_ip.to_string())),
                json!({"snat": {"addr": fip.ip.to_string()}}),
            ],
        ));
    }
    if r.snat {
        for (net, len) in &r.subnets {
            out.push(rule(
                f,
                t,
                "postrouting",
                vec![
                    m(meta("oifname"), json!(qg)),
                    m(payload("ip", "saddr"), prefix(*net, *len)),
                    json!({"snat": {"addr": r.external_ip.to_string()}}),
                ],
            ));
        }
    }
    Some(out)
}
