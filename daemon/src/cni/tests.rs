use super::*;

#[test]
fn host_veth_names_fit_and_are_stable() {
    let a = host_veth_name("abc", "eth0");
    assert_eq!(a, host_veth_name("abc", "eth0"));
    assert_ne!(a, host_veth_name("abd", "eth0"));
    assert!(a.len() <= 15 && a.starts_with("veth"));
}

fn spec() -> AttachSpec {
    AttachSpec {
        bridge: "felt0".into(),
        host: "veth01020304".into(),
        netns: "/run/netns/p".into(),
        ifname: "eth0".into(),
        mtu: 1450,
        v4: Some(Attach4 {
            ip: "10.244.1.2".parse().unwrap(),
            prefix: 24,
            gateway: "10.244.1.1".parse().unwrap(),
        }),
        v6: None,
    }
}

fn as_added() -> Observed {
    Observed {
        host: Some(HostSide { mtu: 1450, on_bridge: true, up: true, hairpin: true }),
        pod: Some(PodSide {
            mtu: 1450,
            addresses: vec![("10.244.1.2".parse().unwrap(), 24)],
            default_gateway: Some("10.244.1.1".parse().unwrap()),
            addresses6: vec![],
            default_gateway6: None,
        }),
    }
}

fn dual() -> AttachSpec {
    AttachSpec {
        v6: Some(Attach6 {
            ip: "fd00:f31:244:1::2".parse().unwrap(),
            prefix: 64,
            gateway: "fd00:f31:244:1::1".parse().unwrap(),
        }),
        ..spec()
    }
}

#[test]
fn a_dual_stack_attachment_needs_both_families() {
    let mut seen = as_added();
    let found = problems(&dual(), &seen);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("eth0 lacks fd00:f31:244:1::2/64"), "{found:#?}");
    assert!(found[1].contains("IPv6 default route is via None, want fd00:f31:244:1::1"), "{found:#?}");
    if let Some(p) = &mut seen.pod {
        p.addresses6 = vec![("fd00:f31:244:1::2".parse().unwrap(), 64)];
        p.default_gateway6 = Some("fd00:f31:244:1::1".parse().unwrap());
    }
    assert!(problems(&dual(), &seen).is_empty());
    let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"felt"}"#).unwrap();
    let made = link::Attached { bridge_mac: "b".into(), host_mac: "h".into(), pod_mac: "p".into() };
    let r = add_result(&conf, &dual(), &made);
    let ips: Vec<String> = r.ips.iter().map(|c| c.address.to_string()).collect();
    assert_eq!(ips, ["10.244.1.2/24", "fd00:f31:244:1::2/64"]);
    let routes: Vec<String> = r.routes.iter().map(|r| format!("{} via {:?}", r.dst, r.gw)).collect();
    assert_eq!(routes, ["0.0.0.0/0 via Some(10.244.1.1)", "::/0 via Some(fd00:f31:244:1::1)"]);
}

/// An IPv6-only attachment: no IPv4 address or route is wanted, and an IPv4
/// one left in the pod is not a problem CHECK reports.
#[test]
fn an_ipv6_only_attachment_has_no_ipv4_side() {
    let v6 = AttachSpec { v4: None, ..dual() };
    let mut seen = as_added();
    if let Some(p) = &mut seen.pod {
        p.addresses6 = vec![("fd00:f31:244:1::2".parse().unwrap(), 64)];
        p.default_gateway6 = Some("fd00:f31:244:1::1".parse().unwrap());
    }
    assert!(problems(&v6, &seen).is_empty());
    if let Some(p) = &mut seen.pod {
        p.default_gateway6 = None;
    }
    assert_eq!(problems(&v6, &seen), ["the pod's IPv6 default route is via None, want fd00:f31:244:1::1"]);
    let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"felt"}"#).unwrap();
    let made = link::Attached { bridge_mac: "b".into(), host_mac: "h".into(), pod_mac: "p".into() };
    let r = add_result(&conf, &v6, &made);
    let ips: Vec<String> = r.ips.iter().map(|c| format!("{} gw {:?}", c.address, c.gateway)).collect();
    assert_eq!(ips, ["fd00:f31:244:1::2/64 gw Some(fd00:f31:244:1::1)"]);
    let routes: Vec<String> = r.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(routes, ["::/0"]);
}

#[test]
fn check_passes_what_add_made() {
    assert!(problems(&spec(), &as_added()).is_empty());
}

#[test]
fn check_names_every_difference() {
    let mut seen = as_added();
    seen.host = Some(HostSide { mtu: 1500, on_bridge: false, up: false, hairpin: false });
    if let Some(p) = &mut seen.pod {
        p.mtu = 1500;
        p.addresses.clear();
        p.default_gateway = None;
    }
    let found = problems(&spec(), &seen);
    assert_eq!(found.len(), 7, "{found:#?}");
    assert!(found.iter().any(|p| p.contains("MTU 1500 in the pod, want 1450")), "{found:#?}");
    let gone = problems(&spec(), &Observed::default());
    assert_eq!(gone, ["host end veth01020304 is missing", "eth0 is missing in the pod"]);
}

#[test]
fn add_results_extend_a_previous_result() {
    let prev: CniResult = serde_json::from_str(
        r#"{"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"192.0.2.5/24","interface":0}],"dns":{"nameservers":["192.0.2.53"]}}"#,
    )
    .unwrap();
    let conf = NetConf::parse(
        &serde_json::to_vec(&serde_json::json!({"cniVersion":"1.1.0","name":"felt","prevResult":prev}))
            .unwrap(),
    )
    .unwrap();
    let made = link::Attached { bridge_mac: "b".into(), host_mac: "h".into(), pod_mac: "p".into() };
    let r = add_result(&conf, &spec(), &made);
    assert_eq!(r.interfaces.len(), 4);
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.ips[1].interface, Some(3), "the pod interface's index counts the previous ones");
    assert_eq!(r.ips[1].address.to_string(), "10.244.1.2/24");
    assert_eq!(r.dns.nameservers, ["192.0.2.53"], "DNS from the previous plugin is kept");
    assert_eq!(r.interfaces[3].mtu, Some(1450));
}
