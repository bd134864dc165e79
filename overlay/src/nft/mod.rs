//! felt's own nftables table, over netlink: egress masquerade and the
//! VXLAN port lock.
//!
//! One table that belongs to felt alone (`table ip felt`); no other table
//! (kube-proxy's, the host's) is read or touched:
//! ```text
//! table ip felt {
//!   set nodes { type ipv4_addr; }                  # every node's underlay address
//!   chain postrouting {                            # with masquerade (Flannel's ipMasq)
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr CLUSTER ip daddr != CLUSTER ip daddr != 224.0.0.0/4
//!       ip daddr != @nodes masquerade fully-random  # userdata: felt-masq-v1 CLUSTER
//!   }
//!   chain input {                                  # with the VXLAN port lock
//!     type filter hook input priority filter; policy accept;
//!     udp dport PORT ip saddr != @nodes counter drop
//!                                                  # userdata: felt-lock-v1 PORT
//!   }
//! }
//! ```
//! Masquerade: pod-to-pod traffic (inside the cluster CIDR) and pod-to-node
//! traffic (to `@nodes`, or delivered locally) are never NATed; everything
//! else a pod sends leaves with the node's address. Port lock: VXLAN is
//! unauthenticated (RFC 7348 §7), so datagrams to the VXLAN port from any
//! address but a node's are dropped before the VXLAN device sees them, and
//! counted.
//!
//! IPv6 has a table of family `ip6` of the same name and shape (`set nodes
//! { type ipv6_addr; }`): the masquerade of the IPv6 cluster CIDR (`ip6
//! saddr CLUSTER6 ip6 daddr != CLUSTER6 ip6 daddr != ff00::/8 ip6 daddr !=
//! @nodes masquerade fully-random`), and on an IPv6 underlay the lock
//! (`udp dport PORT ip6 saddr != @nodes counter drop`). [`Nft`] speaks for
//! one family; the agent holds one per table it keeps.
//!
//! Observe → plan → apply, as for the VXLAN entries: [`Nft::observe`] dumps
//! felt's chains, rules and set; [`plan`] (pure) says whether nothing, the
//! set's elements, or the whole table must change; [`Nft::apply`] sends one
//! batch, which the kernel commits atomically. A table that is already
//! right is never rewritten; one changed by hand is replaced whole.

pub mod msg;

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;
use msg::{Dumped, Expr, Msg, MsgType};

/// felt's table (family `ip`, and `ip6` for an IPv6 underlay's lock).
pub const TABLE: &str = "felt";

/// A table's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `ip`: the masquerade, and the lock of an IPv4 underlay.
    #[default]
    Ipv4,
    /// `ip6`: the lock of an IPv6 underlay.
    Ipv6,
}

impl Family {
    /// `nfgen_family`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => msg::NFPROTO_IPV4,
            Family::Ipv6 => msg::NFPROTO_IPV6,
        }
    }

    /// As `nft` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }
}
/// Its NAT chain.
pub const CHAIN: &str = "postrouting";
/// Its filter chain (the VXLAN port lock).
pub const INPUT_CHAIN: &str = "input";
/// The set of node addresses.
pub const NODES_SET: &str = "nodes";
/// `IPPROTO_UDP`.
const UDP: u8 = 17;

/// Chains by name and policy.
pub type Chains = Vec<(String, Option<u32>)>;
/// Rules by chain and userdata.
pub type Rules = Vec<(String, Vec<u8>)>;

/// What the table should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Masquerade pods' traffic that leaves this cluster CIDR (of the
    /// table's family).
    pub masquerade: Option<IpNet>,
    /// Drop datagrams to this VXLAN port from anyone but `nodes`.
    pub port_lock: Option<u16>,
    /// Every node's underlay address (this node's too), of the table's family.
    pub nodes: BTreeSet<IpAddr>,
}

impl Table {
    /// Whether the table has anything to hold.
    pub fn is_empty(&self) -> bool {
        self.masquerade.is_none() && self.port_lock.is_none()
    }

    /// The masquerade rule's userdata: names the rule and what it was made for.
    pub fn masquerade_userdata(cluster: IpNet) -> Vec<u8> {
        format!("felt-masq-v1 {cluster}").into_bytes()
    }

    /// The port lock rule's userdata.
    pub fn lock_userdata(port: u16) -> Vec<u8> {
        format!("felt-lock-v1 {port}").into_bytes()
    }

    /// The masquerade rule's expressions, in `cluster`'s family (the
    /// destination is at 16, 4 bytes, of an IPv4 header; at 24, 16 bytes, of
    /// an IPv6 one).
    pub fn masquerade_exprs(cluster: IpNet) -> Vec<Expr> {
        let (multicast, daddr): (IpNet, _) = match cluster {
            IpNet::V4(_) => {
                ("224.0.0.0/4".parse().expect("a valid CIDR"), Expr::NetworkHeader { offset: 16, len: 4 })
            }
            IpNet::V6(_) => {
                ("ff00::/8".parse().expect("a valid CIDR"), Expr::NetworkHeader { offset: 24, len: 16 })
            }
        };
        let mut e = Vec::new();
        e.extend(Expr::addr_in(true, cluster, false));
        e.extend(Expr::addr_in(false, cluster, true));
        e.extend(Expr::addr_in(false, multicast, true));
        e.push(daddr);
        e.push(Expr::Lookup { set: NODES_SET.to_owned(), negate: true });
        e.push(Expr::Masquerade);
        e
    }

    /// The port lock rule's expressions: the source address is at 12 (4
    /// bytes) in an IPv4 header, at 8 (16 bytes) in an IPv6 one.
    pub fn lock_exprs(port: u16, family: Family) -> Vec<Expr> {
        let source = match family {
            Family::Ipv4 => Expr::NetworkHeader { offset: 12, len: 4 },
            Family::Ipv6 => Expr::NetworkHeader { offset: 8, len: 16 },
        };
        vec![
            Expr::L4Proto,
            Expr::Cmp { negate: false, value: vec![UDP] },
            Expr::TransportHeader { offset: 2, len: 2 },
            Expr::Cmp { negate: false, value: port.to_be_bytes().to_vec() },
            source,
            Expr::Lookup { set: NODES_SET.to_owned(), negate: true },
            Expr::Counter,
            Expr::Drop,
        ]
    }

    /// The chains (name, policy) and rules (chain, userdata) it holds, sorted.
    fn shape(&self) -> (Chains, Rules) {
        let mut chains = Vec::new();
        let mut rules = Vec::new();
        if let Some(cluster) = self.masquerade {
            chains.push((CHAIN.to_owned(), Some(msg::POLICY_ACCEPT)));
            rules.push((CHAIN.to_owned(), Self::masquerade_userdata(cluster)));
        }
        if let Some(port) = self.port_lock {
            chains.push((INPUT_CHAIN.to_owned(), Some(msg::POLICY_ACCEPT)));
            rules.push((INPUT_CHAIN.to_owned(), Self::lock_userdata(port)));
        }
        chains.sort();
        rules.sort();
        (chains, rules)
    }
}

/// What felt's table holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chains: name and policy.
    pub chains: Chains,
    /// Rules: chain and userdata.
    pub rules: Rules,
    /// The node set's elements; `None` when there is no such set.
    pub nodes: Option<BTreeSet<IpAddr>>,
    /// Datagrams the port lock dropped (its rule's counter), if it has one.
    pub locked_out: Option<u64>,
}

impl Observed {
    /// Whether felt's table holds anything.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty() && self.nodes.is_none()
    }
}

impl Observed {
    /// What the kernel holds once `table` was built (its drop counter aside).
    pub fn built(table: &Table) -> Self {
        if table.is_empty() {
            return Observed::default();
        }
        let (chains, rules) = table.shape();
        Observed { chains, rules, nodes: Some(table.nodes.clone()), locked_out: None }
    }
}

/// What to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The table is right.
    Nothing,
    /// Only the node set differs.
    Elements {
        /// Addresses to add.
        add: Vec<IpAddr>,
        /// Addresses to remove.
        del: Vec<IpAddr>,
    },
    /// Build the table afresh (missing, or changed by hand), atomically.
    Replace,
    /// Nothing is wanted: remove felt's table.
    Remove,
}

impl Plan {
    /// The write's name in `felt_dataplane_ops_total{op}` (kept from when
    /// the table held only the masquerade); `None` for no write.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Plan::Nothing => None,
            Plan::Elements { .. } => Some("set_masquerade_nodes"),
            Plan::Replace => Some("set_masquerade"),
            Plan::Remove => Some("del_masquerade"),
        }
    }
}

/// The change that takes `seen` to `want` (`None`, or nothing wanted: no table).
pub fn plan(want: Option<&Table>, seen: &Observed) -> Plan {
    let Some(want) = want.filter(|w| !w.is_empty()) else {
        return if seen.is_empty() { Plan::Nothing } else { Plan::Remove };
    };
    let (mut chains, mut rules) = (seen.chains.clone(), seen.rules.clone());
    chains.sort();
    rules.sort();
    let shape_ok = (chains, rules) == want.shape();
    let Some(nodes) = seen.nodes.as_ref().filter(|_| shape_ok) else { return Plan::Replace };
    let add: Vec<_> = want.nodes.difference(nodes).copied().collect();
    let del: Vec<_> = nodes.difference(&want.nodes).copied().collect();
    if add.is_empty() && del.is_empty() { Plan::Nothing } else { Plan::Elements { add, del } }
}

/// The messages of one batch for `plan`, in a table of `family`.
pub fn messages(plan: &Plan, want: Option<&Table>, family: Family) -> Vec<Msg> {
    let mut msgs = family_messages(plan, want, family);
    for m in &mut msgs {
        m.family = family.nfproto();
    }
    msgs
}

fn family_messages(plan: &Plan, want: Option<&Table>, family: Family) -> Vec<Msg> {
    match (plan, want.filter(|w| !w.is_empty())) {
        (Plan::Nothing, _) => Vec::new(),
        (Plan::Remove, _) | (Plan::Replace, None) => {
            // Adding first makes the delete succeed whether or not the table exists.
            vec![msg::new_table(TABLE), msg::del_table(TABLE)]
        }
        (Plan::Elements { add, del }, _) => {
            let mut m = Vec::new();
            m.extend(msg::del_elements(TABLE, NODES_SET, del));
            m.extend(msg::add_elements(TABLE, NODES_SET, add));
            m
        }
        (Plan::Replace, Some(want)) => {
            let mut m = vec![
                msg::new_table(TABLE),
                msg::del_table(TABLE),
                msg::new_table(TABLE),
                msg::new_addr_set(TABLE, NODES_SET, family == Family::Ipv6),
            ];
            let nodes: Vec<IpAddr> = want.nodes.iter().copied().collect();
            m.extend(msg::add_elements(TABLE, NODES_SET, &nodes));
            if let Some(cluster) = want.masquerade {
                m.push(msg::new_nat_postrouting_chain(TABLE, CHAIN));
                let (exprs, userdata) =
                    (Table::masquerade_exprs(cluster), Table::masquerade_userdata(cluster));
                m.push(msg::new_rule(TABLE, CHAIN, &exprs, &userdata));
            }
            if let Some(port) = want.port_lock {
                m.push(msg::new_filter_input_chain(TABLE, INPUT_CHAIN));
                m.push(msg::new_rule(
                    TABLE,
                    INPUT_CHAIN,
                    &Table::lock_exprs(port, family),
                    &Table::lock_userdata(port),
                ));
            }
            m
        }
    }
}

/// What went wrong talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened or used.
    #[error("netlink (nf_tables) socket")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("nf_tables refused {what}")]
    Refused {
        /// The request.
        what: &'static str,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// A netlink socket to nf_tables in the caller's network namespace.
#[derive(Debug)]
pub struct Nft {
    sock: netlink_sys::Socket,
    seq: u32,
    family: Family,
}

impl Nft {
    /// Opens the socket for the `ip` table (answers within 5 s or fail).
    pub fn open() -> Result<Nft, NftError> {
        Self::open_for(Family::Ipv4)
    }

    /// Opens the socket for the table of `family`.
    pub fn open_for(family: Family) -> Result<Nft, NftError> {
        let mut sock = netlink_sys::Socket::new(msg::NETLINK_NETFILTER).map_err(NftError::Socket)?;
        sock.bind_auto().map_err(NftError::Socket)?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(NftError::Socket)?;
        let timeout = nix::sys::time::TimeVal::new(5, 0);
        nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| NftError::Socket(e.into()))?;
        Ok(Nft { sock, seq: 1, family })
    }

    /// Makes the send buffer hold a batch of `len` bytes: a batch must go in
    /// one message to be one transaction, and the default buffer (~200 KiB)
    /// refuses a table of ~12,000 nodes. Root may go past `wmem_max`.
    fn room_for(&mut self, len: usize) -> Result<(), NftError> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let fd = self.sock.as_fd();
        // The kernel reports twice what was asked (its bookkeeping), and
        // wants some room beside the message.
        let want = len + 64 * 1024;
        if getsockopt(&fd, sockopt::SndBuf).map_err(|e| NftError::Socket(e.into()))? >= want {
            return Ok(());
        }
        setsockopt(&fd, sockopt::SndBufForce, &want)
            .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &want))
            .map_err(|e| NftError::Socket(e.into()))
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n + 2);
        s
    }

    /// Replies to `seq` until the dump is done; an `ENOENT` (no table, no
    /// set) is an empty dump.
    fn dump(
        &mut self,
        kind: MsgType,
        set: Option<&str>,
        what: &'static str,
    ) -> Result<Vec<Dumped>, NftError> {
        let seq = self.next_seq(0);
        let mut out = Vec::new();
        let mut request = msg::dump(kind, TABLE, set);
        request.family = self.family.nfproto();
        request.emit(seq, &mut out);
        self.sock.send(&out, 0).map_err(NftError::Socket)?;
        let mut found = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full().map_err(NftError::Socket)?;
            for (kind, mseq, body) in msg::split(&buf) {
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => {
                        let errno = msg::error_of(body);
                        if errno == 0 || errno == libc::ENOENT {
                            return Ok(found);
                        }
                        return Err(NftError::Refused { what, source: io::Error::from_raw_os_error(errno) });
                    }
                    k => found.extend(msg::parse_dumped(k, body)),
                }
            }
        }
    }

    /// What felt's table holds now.
    pub fn observe(&mut self) -> Result<Observed, NftError> {
        let mut seen = Observed::default();
        for d in self.dump(MsgType::GetChain, None, "listing felt's chains")? {
            if let Dumped::Chain { table, name, policy } = d
                && table == TABLE
            {
                seen.chains.push((name, policy));
            }
        }
        for d in self.dump(MsgType::GetRule, None, "listing felt's rules")? {
            if let Dumped::Rule { table, chain, userdata, packets } = d
                && table == TABLE
            {
                if chain == INPUT_CHAIN {
                    seen.locked_out = packets;
                }
                seen.rules.push((chain, userdata));
            }
        }
        if !seen.chains.is_empty() || !seen.rules.is_empty() {
            // An empty set dumps nothing, like a missing one; but while felt's
            // rule exists its set does (the kernel refuses to delete a set in use),
            // and without the rule the plan replaces the table anyway.
            let mut nodes = BTreeSet::new();
            for d in self.dump(MsgType::GetSetElem, Some(NODES_SET), "listing felt's node set")? {
                if let Dumped::Elements(a) = d {
                    nodes.extend(a);
                }
            }
            seen.nodes = Some(nodes);
        }
        Ok(seen)
    }

    /// Sends one batch and waits for every acknowledgement.
    pub fn send(&mut self, msgs: &[Msg], what: &'static str) -> Result<(), NftError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let first = self.next_seq(msgs.len() as u32);
        let (bytes, mut waiting) = msg::batch(msgs, first);
        self.room_for(bytes.len())?;
        self.sock.send(&bytes, 0).map_err(NftError::Socket)?;
        let mut failure = None;
        while !waiting.is_empty() {
            let (buf, _) = match self.sock.recv_from_full() {
                Ok(r) => r,
                // Nothing more comes after a failed batch's errors.
                Err(_) if failure.is_some() => break,
                Err(e) => return Err(NftError::Socket(e)),
            };
            for (kind, seq, body) in msg::split(&buf) {
                if kind != NLMSG_ERROR || !waiting.contains(&seq) {
                    continue;
                }
                waiting.retain(|s| *s != seq);
                let errno = msg::error_of(body);
                if errno != 0 && failure.is_none() {
                    failure = Some(io::Error::from_raw_os_error(errno));
                }
            }
        }
        match failure {
            Some(source) => Err(NftError::Refused { what, source }),
            None => Ok(()),
        }
    }

    /// Applies `plan` in one batch.
    pub fn apply(&mut self, plan: &Plan, want: Option<&Table>) -> Result<(), NftError> {
        self.send(&messages(plan, want, self.family), "updating felt's nftables table")
    }

    /// Removes felt's table, whatever it holds; `Ok(true)` if it held chains or rules.
    pub fn remove(&mut self) -> Result<bool, NftError> {
        let existed = !self.observe()?.is_empty();
        self.apply(&Plan::Remove, None)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests;
