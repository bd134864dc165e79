use super::*;

const RESULT_1_0: &str = r#"{
  "cniVersion": "1.0.0",
  "interfaces": [
    {"name": "felt0", "mac": "aa:bb:cc:dd:ee:01"},
    {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/p"}
  ],
  "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2}],
  "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
  "dns": {}
}"#;

#[test]
fn config_defaults_and_unknown_keys() {
    let c = NetConf::parse(
        br#"{"cniVersion":"1.0.0","name":"felt","type":"felt","capabilities":{"portMappings":true},"runtimeConfig":{}}"#,
    )
    .unwrap();
    assert_eq!(c.bridge, "felt0");
    assert_eq!(c.subnet_file, PathBuf::from("/run/felt/subnet.env"));
    assert!(c.prev_result.is_none() && c.valid_attachments.is_none());
}

#[test]
fn config_errors_carry_the_spec_codes() {
    let code = |doc: &str| NetConf::parse(doc.as_bytes()).unwrap_err().code;
    assert_eq!(code("not json"), 6);
    assert_eq!(code(r#"{"name":"felt"}"#), 6);
    assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"felt"}"#), 1);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"../x"}"#), 7);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"felt","bridge":"a-name-that-is-too-long"}"#), 7);
    assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"felt","bridge":7}"#), 6);
}

#[test]
fn verbs_by_version() {
    let conf = |v: &str| NetConf::parse(format!(r#"{{"cniVersion":"{v}","name":"n"}}"#).as_bytes()).unwrap();
    assert!(!conf("0.3.1").allows(Command::Check));
    assert!(conf("0.4.0").allows(Command::Check));
    assert!(!conf("1.0.0").allows(Command::Gc));
    assert!(conf("1.1.0").allows(Command::Status));
    for v in SUPPORTED_VERSIONS {
        assert!(conf(v).allows(Command::Add), "{v}");
    }
    assert_eq!(Command::parse("GC"), Some(Command::Gc));
    assert_eq!(Command::parse("add"), None);
}

#[test]
fn gc_attachments_parse() {
    let c = NetConf::parse(
        br#"{"cniVersion":"1.1.0","name":"felt","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.valid_attachments.unwrap(),
        vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]
    );
}

#[test]
fn results_round_trip_and_take_each_versions_shape() {
    let r: CniResult = serde_json::from_str(RESULT_1_0).unwrap();
    let again: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(r, again);

    let mut with_mtu = r.clone();
    with_mtu.interfaces[2].mtu = Some(1450);
    let old = serde_json::to_value(with_mtu.clone().for_version("0.3.1")).unwrap();
    assert_eq!(old["ips"][0]["version"], "4");
    assert!(old["interfaces"][2].get("mtu").is_none());
    let v1 = serde_json::to_value(with_mtu.clone().for_version("1.0.0")).unwrap();
    assert!(v1["ips"][0].get("version").is_none());
    assert!(v1["interfaces"][2].get("mtu").is_none());
    let v11 = serde_json::to_value(with_mtu.for_version("1.1.0")).unwrap();
    assert_eq!(v11["interfaces"][2]["mtu"], 1450);
    assert_eq!(v11["cniVersion"], "1.1.0");
}

#[test]
fn chained_results_keep_what_came_before() {
    let prev: CniResult = serde_json::from_str(RESULT_1_0).unwrap();
    let r = CniResult::start("1.1.0", Some(&prev));
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(r.cni_version, "1.1.0");
    assert!(CniResult::start("1.0.0", None).interfaces.is_empty());
}

#[test]
fn errors_and_versions_serialize_as_the_spec_shows() {
    let e = CniError::new(ErrorCode::NotAvailable, "not ready").details("no subnet file");
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"cniVersion":"1.1.0","code":50,"msg":"not ready","details":"no subnet file"})
    );
    let v = serde_json::to_value(VersionReply::default()).unwrap();
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), SUPPORTED_VERSIONS.len());
}

#[test]
fn versions_compare() {
    use std::cmp::Ordering::*;
    assert_eq!(version_cmp("0.4.0", "1.0.0"), Some(Less));
    assert_eq!(version_cmp("1.10.0", "1.9.0"), Some(Greater));
    assert_eq!(version_cmp("1.0", "1.0.0"), None);
    assert_eq!(version_cmp("1.0.0.0", "1.0.0"), None);
}

proptest::proptest! {
    /// No input makes the config parser panic; what it accepts is a version felt speaks.
    #[test]
    fn config_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        if let Ok(c) = NetConf::parse(&bytes) {
            proptest::prop_assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()));
        }
    }
}
