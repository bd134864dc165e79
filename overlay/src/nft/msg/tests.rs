use super::*;

#[test]
fn header_and_attributes_are_laid_out_as_the_kernel_reads_them() {
    let mut out = Vec::new();
    new_table("felt").emit(7, &mut out);
    // nlmsghdr (16) + nfgenmsg (4) + NAME "felt\0" (4 + 5, padded to 12) + FLAGS (8)
    assert_eq!(out.len(), 16 + 4 + 12 + 8);
    assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize, out.len());
    assert_eq!(u16::from_ne_bytes(out[4..6].try_into().unwrap()), 10 << 8);
    assert_eq!(u16::from_ne_bytes(out[6..8].try_into().unwrap()), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
    assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 7);
    assert_eq!(&out[16..20], &[NFPROTO_IPV4, 0, 0, 0]);
    let attrs: Vec<_> = parse_attrs(&out[20..]).collect();
    assert_eq!(attrs, [(1, &b"felt\0"[..]), (2, &[0, 0, 0, 0][..])]);
}

#[test]
fn batches_begin_and_end_with_the_subsystem_and_ack_each_change() {
    let (bytes, acked) = batch(&[new_table("felt"), del_table("felt")], 100);
    assert_eq!(acked, [101, 102]);
    let begin_type = u16::from_ne_bytes(bytes[4..6].try_into().unwrap());
    assert_eq!(begin_type, 0x10);
    // res_id carries NFNL_SUBSYS_NFTABLES, big-endian.
    assert_eq!(&bytes[18..20], &[0, 10]);
    let end = &bytes[bytes.len() - 20..];
    assert_eq!(u16::from_ne_bytes(end[4..6].try_into().unwrap()), 0x11);
    assert_eq!(u32::from_ne_bytes(end[8..12].try_into().unwrap()), 103);
}

#[test]
fn rules_carry_their_expressions_and_userdata() {
    let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let mut exprs = Expr::ip_in(true, net, false).to_vec();
    exprs.push(Expr::Masquerade);
    let m = new_rule("felt", "postrouting", &exprs, b"tag");
    let mut out = Vec::new();
    m.emit(1, &mut out);
    let dumped = parse_dumped(MsgType::NewRule.wire(), &out[16..]).unwrap();
    assert_eq!(
        dumped,
        Dumped::Rule {
            table: "felt".into(),
            chain: "postrouting".into(),
            userdata: b"tag".to_vec(),
            packets: None,
        }
    );
    let list = parse_attrs(&out[20..]).find(|(k, _)| *k == 4).unwrap().1;
    let names: Vec<String> =
        parse_attrs(list).map(|(_, e)| string_of(parse_attrs(e).find(|(k, _)| *k == 1).unwrap().1)).collect();
    assert_eq!(names, ["payload", "bitwise", "cmp", "masq"]);
    // ip saddr: offset 12 of the network header (base 1), 4 bytes.
    let payload = parse_attrs(list).next().unwrap().1;
    let data = parse_attrs(payload).find(|(k, _)| *k == 2).unwrap().1;
    let fields: Vec<u32> =
        parse_attrs(data).map(|(_, v)| u32::from_be_bytes(v.try_into().unwrap())).collect();
    assert_eq!(fields, [1, 1, 12, 4]);
}

#[test]
fn set_elements_round_trip() {
    let addrs: Vec<IpAddr> = vec!["198.18.7.11".parse().unwrap(), "fd00:f31:1::12".parse().unwrap()];
    let mut out = Vec::new();
    let msgs = add_elements("felt", "nodes", &addrs);
    assert_eq!(msgs.len(), 1);
    msgs[0].emit(3, &mut out);
    assert_eq!(parse_dumped(MsgType::NewSetElem.wire(), &out[16..]), Some(Dumped::Elements(addrs)));
}

/// 5,000 addresses in one element list would be 80 KiB, past the 16-bit
/// length of the attribute that holds it: they go in chunks, each whole.
#[test]
fn long_element_lists_are_chunked_and_each_chunk_parses_whole() {
    let addrs: Vec<IpAddr> = (0..5000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xc613_0000 + i))).collect();
    let msgs = add_elements("felt", "nodes", &addrs);
    assert_eq!(msgs.len(), 5000usize.div_ceil(ELEMENTS_PER_MESSAGE));
    let mut back = Vec::new();
    for m in &msgs {
        let mut out = Vec::new();
        m.emit(3, &mut out);
        let Some(Dumped::Elements(a)) = parse_dumped(MsgType::NewSetElem.wire(), &out[16..]) else {
            panic!("a chunk did not parse")
        };
        back.extend(a);
    }
    assert_eq!(back, addrs);
    assert_eq!(del_elements("felt", "nodes", &addrs).len(), msgs.len());
}

#[test]
fn chains_dump_their_name_and_policy() {
    let mut out = Vec::new();
    new_nat_postrouting_chain("felt", "postrouting").emit(3, &mut out);
    assert_eq!(
        parse_dumped(MsgType::NewChain.wire(), &out[16..]),
        Some(Dumped::Chain { table: "felt".into(), name: "postrouting".into(), policy: Some(POLICY_ACCEPT) })
    );
}

proptest::proptest! {
    /// No reply, however mangled, makes the parsers panic.
    #[test]
    fn parsers_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), kind in 0u16..4000) {
        let _ = parse_dumped(kind, &body);
        let _ = parse_attrs(&body).count();
    }
}
