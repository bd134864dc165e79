//! nf_tables netlink messages, built without I/O.
//!
//! The kernel's nf_tables API (`include/uapi/linux/netfilter/nf_tables.h`)
//! over `NETLINK_NETFILTER`: every message is an `nlmsghdr`, an `nfgenmsg`
//! (family, version, resource id) and attributes; numbers in attributes are
//! big-endian; changes go in one batch between `NFNL_MSG_BATCH_BEGIN` and
//! `NFNL_MSG_BATCH_END`, which the kernel commits atomically or not at all.
//! Only what felt needs is here: one table, a NAT chain and a filter input
//! chain, a set of IPv4 addresses, and rules made of payload / meta /
//! bitwise / cmp / lookup / counter / masq / immediate (verdict)
//! expressions. Each builder names the `nft` syntax it equals.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// `NFPROTO_IPV4`: tables of family `ip`.
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`: tables of family `ip6`.
pub const NFPROTO_IPV6: u8 = 10;

/// nf_tables message kinds (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgType {
    /// `NFT_MSG_NEWTABLE`
    NewTable = 0,
    /// `NFT_MSG_DELTABLE`
    DelTable = 2,
    /// `NFT_MSG_NEWCHAIN`
    NewChain = 3,
    /// `NFT_MSG_GETCHAIN`
    GetChain = 4,
    /// `NFT_MSG_NEWRULE`
    NewRule = 6,
    /// `NFT_MSG_GETRULE`
    GetRule = 7,
    /// `NFT_MSG_NEWSET`
    NewSet = 9,
    /// `NFT_MSG_NEWSETELEM`
    NewSetElem = 12,
    /// `NFT_MSG_GETSETELEM`
    GetSetElem = 13,
    /// `NFT_MSG_DELSETELEM`
    DelSetElem = 14,
}

impl MsgType {
    /// The `nlmsg_type` on the wire.
    pub fn wire(self) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | self as u16
    }
}

/// `nlmsg_flags` bits.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// Dump every object.
pub const NLM_F_DUMP: u16 = 0x300;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Append (rules).
pub const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

/// Attribute numbers felt uses, by object.
mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const TABLE_FLAGS: u16 = 2;
    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const RULE_USERDATA: u16 = 7;
    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;
    pub const DATA_VALUE: u16 = 1;
    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_ID: u16 = 10;
    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
}

/// `NF_INET_POST_ROUTING`.
pub const HOOK_POSTROUTING: u32 = 4;
/// `NF_INET_LOCAL_IN`.
pub const HOOK_INPUT: u32 = 1;
/// The `filter` priority.
pub const PRIORITY_FILTER: i32 = 0;
/// The `srcnat` priority.
pub const PRIORITY_SRCNAT: i32 = 100;
/// `NF_ACCEPT`, a chain's policy.
pub const POLICY_ACCEPT: u32 = 1;
/// nftables' `ipv4_addr` data type, for set keys.
const TYPE_IPADDR: u32 = 7;
/// nftables' `ipv6_addr` data type.
const TYPE_IP6ADDR: u32 = 8;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const NAT_RANDOM_FULLY: u32 = 1 << 4;
/// The transaction-local ID of the set felt creates in a batch.
const SET_TXN_ID: u32 = 1;

/// Attributes of one message or nest, 4-byte aligned.
#[derive(Debug, Default, Clone)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    fn raw(mut self, kind: u16, value: &[u8]) -> Self {
        let len = 4 + value.len();
        // An attribute's length is 16 bits: what could outgrow it (element
        // lists) is chunked by its builder, so this holds by construction.
        let len = u16::try_from(len).expect("a netlink attribute over 64 KiB (element lists are chunked)");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    fn string(self, kind: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v)
    }
    fn be32(self, kind: u16, n: u32) -> Self {
        self.raw(kind, &n.to_be_bytes())
    }
    fn nest(self, kind: u16, inner: Attrs) -> Self {
        self.raw(kind | NLA_F_NESTED, &inner.0)
    }
    /// `NFTA_DATA_VALUE` inside a nest of `kind`.
    fn data(self, kind: u16, value: &[u8]) -> Self {
        self.nest(kind, Attrs::default().raw(attr::DATA_VALUE, value))
    }
}

/// One expression of a rule (`struct nft_expr_ops` by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of the network header into register 1.
    NetworkHeader {
        /// Byte offset in the IPv4 header (12 source, 16 destination).
        offset: u32,
        /// Bytes to load.
        len: u32,
    },
    /// Register 1 &= `mask`.
    Mask(Vec<u8>),
    /// Compare register 1 with `value`: equal, or not equal when `negate`.
    Cmp {
        /// Whether the match is `!=`.
        negate: bool,
        /// The value.
        value: Vec<u8>,
    },
    /// Register 1 is (or, when `negate`, is not) in the set felt creates.
    Lookup {
        /// The set's name.
        set: String,
        /// Whether the match is `!=`.
        negate: bool,
    },
    /// `masquerade fully-random`.
    Masquerade,
    /// Load `len` bytes at `offset` of the transport header into register 1.
    TransportHeader {
        /// Byte offset in the UDP/TCP header (2: destination port).
        offset: u32,
        /// Bytes to load.
        len: u32,
    },
    /// `meta l4proto` into register 1 (one byte).
    L4Proto,
    /// `counter`: packets and bytes that reached it.
    Counter,
    /// `drop`.
    Drop,
}

const REG_1: u32 = 1;

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::NetworkHeader { .. } => "payload",
            Expr::Mask(_) => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Lookup { .. } => "lookup",
            Expr::Masquerade => "masq",
            Expr::TransportHeader { .. } => "payload",
            Expr::L4Proto => "meta",
            Expr::Counter => "counter",
            Expr::Drop => "immediate",
        }
    }

    fn data(&self) -> Attrs {
        let a = Attrs::default();
        match self {
            // NFTA_PAYLOAD_DREG, _BASE (NFT_PAYLOAD_NETWORK_HEADER = 1), _OFFSET, _LEN
            Expr::NetworkHeader { offset, len } => a.be32(1, REG_1).be32(2, 1).be32(3, *offset).be32(4, *len),
            // NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR
            Expr::Mask(mask) => a
                .be32(1, REG_1)
                .be32(2, REG_1)
                .be32(3, mask.len() as u32)
                .data(4, mask)
                .data(5, &vec![0; mask.len()]),
            // NFTA_CMP_SREG, _OP (NFT_CMP_EQ 0, NFT_CMP_NEQ 1), _DATA
            Expr::Cmp { negate, value } => a.be32(1, REG_1).be32(2, u32::from(*negate)).data(3, value),
            // NFTA_LOOKUP_SET, _SREG, _SET_ID, _FLAGS (NFT_LOOKUP_F_INV 1)
            Expr::Lookup { set, negate } => {
                a.string(1, set).be32(2, REG_1).be32(4, SET_TXN_ID).be32(5, u32::from(*negate))
            }
            // NFTA_MASQ_FLAGS
            Expr::Masquerade => a.be32(1, NAT_RANDOM_FULLY),
            // NFTA_PAYLOAD_DREG, _BASE (NFT_PAYLOAD_TRANSPORT_HEADER = 2), _OFFSET, _LEN
            Expr::TransportHeader { offset, len } => {
                a.be32(1, REG_1).be32(2, 2).be32(3, *offset).be32(4, *len)
            }
            // NFTA_META_DREG, _KEY (NFT_META_L4PROTO = 16)
            Expr::L4Proto => a.be32(1, REG_1).be32(2, 16),
            // NFTA_COUNTER_BYTES, _PACKETS, starting at zero
            Expr::Counter => a.raw(1, &0u64.to_be_bytes()).raw(2, &0u64.to_be_bytes()),
            // NFTA_IMMEDIATE_DREG (NFT_REG_VERDICT 0), _DATA { NFTA_DATA_VERDICT { NFTA_VERDICT_CODE NF_DROP 0 } }
            Expr::Drop => a.be32(1, 0).nest(2, Attrs::default().nest(2, Attrs::default().be32(1, 0))),
        }
    }

    /// `ip saddr|daddr [!=] NET`: three expressions.
    pub fn ip_in(source: bool, net: Ipv4Net, negate: bool) -> [Expr; 3] {
        [
            Expr::NetworkHeader { offset: if source { 12 } else { 16 }, len: 4 },
            Expr::Mask(net.netmask().octets().to_vec()),
            Expr::Cmp { negate, value: net.network().octets().to_vec() },
        ]
    }

    /// `ip6 saddr|daddr [!=] NET`: the same at offset 8 or 24, 16 bytes.
    pub fn ip6_in(source: bool, net: Ipv6Net, negate: bool) -> [Expr; 3] {
        [
            Expr::NetworkHeader { offset: if source { 8 } else { 24 }, len: 16 },
            Expr::Mask(net.netmask().octets().to_vec()),
            Expr::Cmp { negate, value: net.network().octets().to_vec() },
        ]
    }

    /// [`Expr::ip_in`] or [`Expr::ip6_in`], by `net`'s family.
    pub fn addr_in(source: bool, net: IpNet, negate: bool) -> [Expr; 3] {
        match net {
            IpNet::V4(n) => Self::ip_in(source, n, negate),
            IpNet::V6(n) => Self::ip6_in(source, n, negate),
        }
    }
}

/// One netlink message: type, flags, family and attributes.
#[derive(Debug, Clone)]
pub struct Msg {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nfgenmsg.nfgen_family`.
    pub family: u8,
    /// `nfgenmsg.res_id`, host order (sent big-endian).
    pub res_id: u16,
    /// The attributes.
    pub attrs: Attrs,
}

impl Msg {
    fn nft(kind: MsgType, flags: u16, attrs: Attrs) -> Msg {
        Msg { kind: kind.wire(), flags: NLM_F_REQUEST | flags, family: NFPROTO_IPV4, res_id: 0, attrs }
    }

    /// Appends the message with sequence number `seq` to `out`.
    pub fn emit(&self, seq: u32, out: &mut Vec<u8>) {
        let len = 16 + 4 + self.attrs.0.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[self.family, 0]);
        out.extend_from_slice(&self.res_id.to_be_bytes());
        out.extend_from_slice(&self.attrs.0);
    }
}

/// `add table ip NAME`
pub fn new_table(name: &str) -> Msg {
    Msg::nft(
        MsgType::NewTable,
        NLM_F_CREATE | NLM_F_ACK,
        Attrs::default().string(attr::TABLE_NAME, name).be32(attr::TABLE_FLAGS, 0),
    )
}

/// `delete table ip NAME`
pub fn del_table(name: &str) -> Msg {
    Msg::nft(MsgType::DelTable, NLM_F_ACK, Attrs::default().string(attr::TABLE_NAME, name))
}

/// `add chain ip TABLE NAME { type KIND hook HOOK priority PRIORITY; policy accept; }`
fn new_base_chain(table: &str, name: &str, kind: &str, hooknum: u32, priority: i32) -> Msg {
    let hook = Attrs::default().be32(attr::HOOK_HOOKNUM, hooknum).be32(attr::HOOK_PRIORITY, priority as u32);
    Msg::nft(
        MsgType::NewChain,
        NLM_F_CREATE | NLM_F_ACK,
        Attrs::default()
            .string(attr::CHAIN_TABLE, table)
            .string(attr::CHAIN_NAME, name)
            .nest(attr::CHAIN_HOOK, hook)
            .be32(attr::CHAIN_POLICY, POLICY_ACCEPT)
            .string(attr::CHAIN_TYPE, kind),
    )
}

/// `add chain ip TABLE NAME { type nat hook postrouting priority srcnat; policy accept; }`
pub fn new_nat_postrouting_chain(table: &str, name: &str) -> Msg {
    new_base_chain(table, name, "nat", HOOK_POSTROUTING, PRIORITY_SRCNAT)
}

/// `add chain ip TABLE NAME { type filter hook input priority filter; policy accept; }`
pub fn new_filter_input_chain(table: &str, name: &str) -> Msg {
    new_base_chain(table, name, "filter", HOOK_INPUT, PRIORITY_FILTER)
}

/// `add set ip TABLE NAME { type ipv4_addr; }`, or (`ipv6`) `add set ip6
/// TABLE NAME { type ipv6_addr; }` (the message's family is set by the
/// sender).
pub fn new_addr_set(table: &str, name: &str, ipv6: bool) -> Msg {
    let (kind, len) = if ipv6 { (TYPE_IP6ADDR, 16) } else { (TYPE_IPADDR, 4) };
    Msg::nft(
        MsgType::NewSet,
        NLM_F_CREATE | NLM_F_ACK,
        Attrs::default()
            .string(attr::SET_TABLE, table)
            .string(attr::SET_NAME, name)
            .be32(attr::SET_FLAGS, 0)
            .be32(attr::SET_KEY_TYPE, kind)
            .be32(attr::SET_KEY_LEN, len)
            .be32(attr::SET_ID, SET_TXN_ID),
    )
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn set_elems(kind: MsgType, flags: u16, table: &str, set: &str, addrs: &[IpAddr]) -> Msg {
    let elems = addrs.iter().fold(Attrs::default(), |a, ip| {
        a.nest(attr::LIST_ELEM, Attrs::default().data(attr::SET_ELEM_KEY, &octets(ip)))
    });
    Msg::nft(
        kind,
        flags | NLM_F_ACK,
        Attrs::default()
            .string(attr::SET_ELEM_LIST_TABLE, table)
            .string(attr::SET_ELEM_LIST_SET, set)
            .nest(attr::SET_ELEM_LIST_ELEMENTS, elems),
    )
}

/// `add element ip TABLE SET { ADDRS }`
///
/// One message per [`ELEMENTS_PER_MESSAGE`] addresses: a message's element
/// list is one attribute, whose length is 16 bits (4,096 addresses would
/// overflow it, and the kernel would read garbage).
pub fn add_elements(table: &str, set: &str, addrs: &[IpAddr]) -> Vec<Msg> {
    addrs
        .chunks(ELEMENTS_PER_MESSAGE)
        .map(|c| set_elems(MsgType::NewSetElem, NLM_F_CREATE, table, set, c))
        .collect()
}

/// Set elements per message: 16 bytes each, 16 KiB a message.
pub const ELEMENTS_PER_MESSAGE: usize = 1024;

/// `delete element ip TABLE SET { ADDRS }`
pub fn del_elements(table: &str, set: &str, addrs: &[IpAddr]) -> Vec<Msg> {
    addrs.chunks(ELEMENTS_PER_MESSAGE).map(|c| set_elems(MsgType::DelSetElem, 0, table, set, c)).collect()
}

/// `add rule ip TABLE CHAIN EXPRS` with `userdata` to recognise it by.
pub fn new_rule(table: &str, chain: &str, exprs: &[Expr], userdata: &[u8]) -> Msg {
    let list = exprs.iter().fold(Attrs::default(), |a, e| {
        a.nest(
            attr::LIST_ELEM,
            Attrs::default().string(attr::EXPR_NAME, e.name()).nest(attr::EXPR_DATA, e.data()),
        )
    });
    Msg::nft(
        MsgType::NewRule,
        NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
        Attrs::default()
            .string(attr::RULE_TABLE, table)
            .string(attr::RULE_CHAIN, chain)
            .nest(attr::RULE_EXPRESSIONS, list)
            .raw(attr::RULE_USERDATA, userdata),
    )
}

/// A dump request of `kind` for the objects of `table` (and `set`, for
/// elements). The kernel filters rule and element dumps by table but not
/// chain dumps: callers check each reply's table.
pub fn dump(kind: MsgType, table: &str, set: Option<&str>) -> Msg {
    let attrs = match set {
        Some(set) => {
            Attrs::default().string(attr::SET_ELEM_LIST_TABLE, table).string(attr::SET_ELEM_LIST_SET, set)
        }
        // NFTA_CHAIN_TABLE and NFTA_RULE_TABLE are both attribute 1.
        None => Attrs::default().string(attr::RULE_TABLE, table),
    };
    Msg::nft(kind, NLM_F_DUMP, attrs)
}

/// Wraps `msgs` in a batch; returns the bytes and the sequence numbers that expect an ACK.
pub fn batch(msgs: &[Msg], first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let begin = Msg {
        kind: NFNL_MSG_BATCH_BEGIN,
        flags: NLM_F_REQUEST,
        family: 0,
        res_id: NFNL_SUBSYS_NFTABLES,
        attrs: Attrs::default(),
    };
    begin.emit(first_seq, &mut out);
    let mut acked = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let seq = first_seq + 1 + i as u32;
        m.emit(seq, &mut out);
        if m.flags & NLM_F_ACK != 0 {
            acked.push(seq);
        }
    }
    let end = Msg { kind: NFNL_MSG_BATCH_END, ..begin };
    end.emit(first_seq + 1 + msgs.len() as u32, &mut out);
    (out, acked)
}

/// Iterates the attributes of a message body or nest: (type without flags, value).
pub fn parse_attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, value))
    })
}

/// What a dump reply says of one object felt looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumped {
    /// A chain: its table, name and policy.
    Chain {
        /// Its table.
        table: String,
        /// Name.
        name: String,
        /// `NFTA_CHAIN_POLICY`, if it has one.
        policy: Option<u32>,
    },
    /// A rule: its table, chain and userdata.
    Rule {
        /// Its table.
        table: String,
        /// The chain.
        chain: String,
        /// `NFTA_RULE_USERDATA`.
        userdata: Vec<u8>,
        /// The packets its `counter` expression counted, if it has one.
        packets: Option<u64>,
    },
    /// Set elements: IPv4 addresses (`ip` tables) or IPv6 ones (`ip6`).
    Elements(Vec<IpAddr>),
}

fn string_of(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// Reads one dump reply's body (after `nlmsghdr`) of message type `kind`.
pub fn parse_dumped(kind: u16, body: &[u8]) -> Option<Dumped> {
    let attrs = body.get(4..)?;
    let of = |t: u16| parse_attrs(attrs).find(|(k, _)| *k == t).map(|(_, v)| v);
    if kind == MsgType::NewChain.wire() {
        let policy = of(attr::CHAIN_POLICY).and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)));
        return Some(Dumped::Chain {
            table: string_of(of(attr::CHAIN_TABLE)?),
            name: string_of(of(attr::CHAIN_NAME)?),
            policy,
        });
    }
    if kind == MsgType::NewRule.wire() {
        return Some(Dumped::Rule {
            table: string_of(of(attr::RULE_TABLE)?),
            chain: string_of(of(attr::RULE_CHAIN)?),
            userdata: of(attr::RULE_USERDATA).unwrap_or_default().to_vec(),
            packets: of(attr::RULE_EXPRESSIONS).and_then(counted_packets),
        });
    }
    if kind == MsgType::NewSetElem.wire() {
        let elems = of(attr::SET_ELEM_LIST_ELEMENTS)?;
        let addrs = parse_attrs(elems)
            .filter(|(k, _)| *k == attr::LIST_ELEM)
            .filter_map(|(_, e)| {
                let key = parse_attrs(e).find(|(k, _)| *k == attr::SET_ELEM_KEY)?.1;
                let value = parse_attrs(key).find(|(k, _)| *k == attr::DATA_VALUE)?.1;
                match value.len() {
                    4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
                    16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?))),
                    _ => None,
                }
            })
            .collect();
        return Some(Dumped::Elements(addrs));
    }
    None
}

/// The packets of the first `counter` expression in a rule's expression list.
fn counted_packets(list: &[u8]) -> Option<u64> {
    parse_attrs(list).filter(|(k, _)| *k == attr::LIST_ELEM).find_map(|(_, e)| {
        let name = parse_attrs(e).find(|(k, _)| *k == attr::EXPR_NAME)?.1;
        if string_of(name) != "counter" {
            return None;
        }
        let data = parse_attrs(e).find(|(k, _)| *k == attr::EXPR_DATA)?.1;
        // NFTA_COUNTER_PACKETS
        let packets = parse_attrs(data).find(|(k, _)| *k == 2)?.1;
        Some(u64::from_be_bytes(packets.try_into().ok()?))
    })
}

/// The messages in one datagram: (type, seq, body after the header).
pub fn split(mut buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        out.push((kind, seq, &buf[16..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The positive errno of an `NLMSG_ERROR` body (0 for an acknowledgement).
pub fn error_of(body: &[u8]) -> i32 {
    body.get(..4).map_or(libc::EIO, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).wrapping_neg())
}

#[cfg(test)]
mod tests;
