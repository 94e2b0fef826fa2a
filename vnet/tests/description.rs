//! The description, the plans made from it and the command line: no root needed.

use std::path::Path;

use vnet::model::{short_id, Description};
use vnet::plan::NodePlan;

fn example() -> Description {
    Description::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/two-hosts.toml")).expect("example parses")
}

#[test]
fn readme_example_plans_both_hosts() {
    let d = example();
    let h1 = NodePlan::build(&d, "host1").unwrap();
    assert_eq!(h1.segments.len(), 1);
    let s = &h1.segments[0];
    assert_eq!((s.bridge.as_str(), s.vxlan.as_str(), s.mtu, s.port), ("brq-100", "vxlan-100", 1450, 4789));
    assert_eq!(s.peers, vec!["192.0.2.12".parse::<std::net::Ipv4Addr>().unwrap()], "head-end replication to host2");
    let p = &h1.ports[0];
    let id = short_id("vm1-eth0");
    assert_eq!(p.tap, format!("tap-{id}"));
    assert_eq!(p.bridge, format!("qbr-{id}"));
    assert_eq!((p.veth_bridge_end.clone(), p.veth_integration_end.clone()), (format!("qvb-{id}"), format!("qvo-{id}")));
    assert!(p.filtered && p.stateful);
    assert!(h1.routers.is_empty() && h1.external_bridges.is_empty());

    let h2 = NodePlan::build(&d, "host2").unwrap();
    let r = &h2.routers[0];
    assert_eq!(r.netns, "qrouter-r1");
    assert_eq!(r.internal[0].addresses, vec![("198.51.100.1".parse().unwrap(), 24)]);
    assert_eq!(
        r.external.addresses,
        vec![("203.0.113.10".parse().unwrap(), 24), ("203.0.113.20".parse().unwrap(), 32)]
    );
    assert_eq!(h2.external_bridges[0].interface, "eth1");
    for name in h1.owned_links().iter().chain(h2.owned_links().iter()) {
        assert!(vnet::model::valid_ifname(name), "{name} is not a valid interface name");
    }
}

#[test]
fn nft_rulesets_say_what_the_issue_asks() {
    let d = example();
    let h1 = NodePlan::build(&d, "host1").unwrap();
    let sg = serde_json::to_string(&vnet::nft::sg_ruleset(&h1).unwrap()).unwrap();
    assert!(sg.contains(r#""hook":"forward""#));
    assert!(sg.contains(r#""right":["established","related"]"#), "stateful");
    assert!(sg.contains(r#""right":"198.51.100.10""#), "the port's own address decides the direction");
    let h2 = NodePlan::build(&d, "host2").unwrap();
    let nat = serde_json::to_string(&vnet::nft::nat_ruleset(&h2.routers[0]).unwrap()).unwrap();
    assert!(nat.contains(r#"{"dnat":{"addr":"198.51.100.10"}}"#));
    assert!(nat.contains(r#"{"snat":{"addr":"203.0.113.20"}}"#));
    assert!(nat.contains(r#"{"snat":{"addr":"203.0.113.10"}}"#));
    // The floating IP's SNAT comes before the router-wide one.
    assert!(nat.find("203.0.113.20\"}}").unwrap() < nat.find("203.0.113.10\"}}").unwrap());
}

#[test]
fn port_attachment_from_the_description() {
    let d = example();
    let a = vnet::port_tap(vnet::PortSource::Description(&d), "vm2-eth0").unwrap();
    assert_eq!(a.tap_name, format!("tap-{}", short_id("vm2-eth0")));
    assert_eq!((a.mac.to_string(), a.mtu, a.queues, a.node.as_str()), ("52:54:00:00:00:02".into(), 1450, 1, "host2"));
    let e = vnet::port_tap(vnet::PortSource::Description(&d), "nope").unwrap_err();
    assert!(e.to_string().starts_with("port nope: is not in the description; fix:"), "{e}");
    let dir = std::env::temp_dir().join(format!("vnet-empty-{}", std::process::id()));
    let e = vnet::port_tap(vnet::PortSource::StateDir(&dir), "vm2-eth0").unwrap_err();
    assert!(e.to_string().contains("rvmm net apply"), "{e}");
}

fn invalid(edit: impl FnOnce(&mut Description)) -> String {
    let mut d = example();
    edit(&mut d);
    d.validate("net.toml").expect_err("must be rejected").to_string()
}

#[test]
fn inconsistent_descriptions_are_rejected_with_object_and_fix() {
    let e = invalid(|d| d.ports[1].ip = "198.51.100.10".parse().unwrap());
    assert!(
        e.starts_with("description net.toml: ports.vm2-eth0: ip 198.51.100.10 is used by another port; fix:"),
        "{e}"
    );
    let e = invalid(|d| d.networks[0].mtu = Some(1500));
    assert!(e.contains("networks.blue: mtu 1500 does not fit") && e.contains("fix:"), "{e}");
    let e = invalid(|d| d.ports[0].network = "red".into());
    assert!(e.contains("ports.vm1-eth0: network 'red' is not in [[networks]]"), "{e}");
    let e = invalid(|d| d.ports[0].security_groups.push("db".into()));
    assert!(e.contains("security group 'db'"), "{e}");
    let e = invalid(|d| d.floating_ips[0].ip = "203.0.113.10".parse().unwrap());
    assert!(e.contains("floating_ips.203.0.113.10") && e.contains("already in use"), "{e}");
    let e = invalid(|d| d.nodes[1].external_interfaces.clear());
    assert!(e.contains("routers.r1: node host2 has no interface on external network public"), "{e}");
    let e = invalid(|d| d.security_groups[0].rules[2].ports = Some("1-2".into()));
    assert!(e.contains("rules[2]: ports are given but the protocol is not tcp or udp"), "{e}");
    let e = invalid(|d| d.networks[0].vni = 1 << 24);
    assert!(e.contains("vni 16777216 is out of range"), "{e}");

    let e = Description::parse("[[nodes]]\nname = 'x'\nunderlay_ip = 'nope'\n", false, "bad.toml").unwrap_err();
    assert!(e.to_string().starts_with("description bad.toml: file: is not a valid description"), "{e}");
    assert_eq!(e.exit_code(), 64);
    let e = NodePlan::build(&example(), "host3").unwrap_err();
    assert!(e.to_string().contains("nodes.host3: no such node (the description has: host1, host2)"), "{e}");
}

#[test]
fn json_descriptions_work_too() {
    let d = example();
    let text = serde_json::to_string(&d).unwrap();
    assert_eq!(Description::parse(&text, true, "net.json").unwrap(), d);
}

#[test]
fn command_line_exit_codes() {
    let ex = format!("{}/examples/two-hosts.toml", env!("CARGO_MANIFEST_DIR"));
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(vnet::run_cli(argv(&["check", &ex])), 0);
    assert_eq!(vnet::run_cli(argv(&["check", "/nonexistent.toml"])), 64);
    assert_eq!(vnet::run_cli(argv(&["apply", &ex])), 2, "--node is required");
    assert_eq!(vnet::run_cli(argv(&["apply", &ex, "--node", "host9"])), 64);
    let dir = std::env::temp_dir().join(format!("vnet-cli-{}", std::process::id()));
    assert_eq!(vnet::run_cli(argv(&["show", "--state-dir", dir.to_str().unwrap()])), 0);
    assert_eq!(vnet::run_cli(argv(&["port", "vm1-eth0", "--state-dir", dir.to_str().unwrap()])), 64);
    assert_eq!(vnet::run_cli(argv(&["destroy", "--node", "host1", "--state-dir", dir.to_str().unwrap()])), 71);
}
