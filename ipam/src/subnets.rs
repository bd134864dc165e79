//! CIDR math: node subnets inside the cluster CIDR, for either family
//! (a dual-stack cluster has an IPv4 and an IPv6 one).

use ipnet::IpNet;

/// Why a pod CIDR cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The CIDR is not inside the cluster network.
    #[error("{cidr} is outside the cluster network {network}")]
    OutsideNetwork {
        /// The offending CIDR.
        cidr: IpNet,
        /// The cluster network.
        network: IpNet,
    },
    /// The CIDR is too small to hold a gateway and a pod.
    #[error("{0} is too small for a node subnet (want /{max} or larger)", max = longest_prefix(.0))]
    TooSmall(IpNet),
}

/// The longest prefix a node subnet may have: /30 for IPv4, /120 for IPv6.
fn longest_prefix(cidr: &IpNet) -> u8 {
    match cidr {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 120,
    }
}

/// Every subnet of length `len` in `network`, in address order.
pub fn subnets(network: IpNet, len: u8) -> impl Iterator<Item = IpNet> {
    network.subnets(len).into_iter().flatten()
}

/// True when the two CIDRs share any address (never across families).
pub fn overlaps(a: impl Into<IpNet>, b: impl Into<IpNet>) -> bool {
    let (a, b) = (a.into(), b.into());
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of length `len` in `network` that overlaps none of `taken`.
pub fn first_free(network: IpNet, len: u8, taken: &[IpNet]) -> Option<IpNet> {
    subnets(network, len).find(|s| !taken.iter().any(|t| overlaps(*s, *t)))
}

/// Checks a pod CIDR a registry assigned to a node against the cluster
/// network of its family.
pub fn validate_pod_cidr(cidr: impl Into<IpNet>, network: impl Into<IpNet>) -> Result<(), CidrError> {
    let (cidr, network) = (cidr.into(), network.into());
    if !network.contains(&cidr) {
        return Err(CidrError::OutsideNetwork { cidr, network });
    }
    if cidr.prefix_len() > longest_prefix(&cidr) {
        return Err(CidrError::TooSmall(cidr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn first_free_skips_taken_and_overlapping() {
        let n = net("10.244.0.0/16");
        assert_eq!(first_free(n, 24, &[]), Some(net("10.244.0.0/24")));
        assert_eq!(first_free(n, 24, &[net("10.244.0.0/24")]), Some(net("10.244.1.0/24")));
        // A foreign /23 covers two /24s.
        assert_eq!(first_free(n, 24, &[net("10.244.0.0/23")]), Some(net("10.244.2.0/24")));
        // A full network has nothing free.
        assert_eq!(first_free(net("10.0.0.0/23"), 24, &[net("10.0.0.0/24"), net("10.0.1.0/24")]), None);
    }

    #[test]
    fn validates_pod_cidr() {
        let n = net("10.244.0.0/16");
        assert!(validate_pod_cidr(net("10.244.7.0/24"), n).is_ok());
        assert!(matches!(validate_pod_cidr(net("10.245.0.0/24"), n), Err(CidrError::OutsideNetwork { .. })));
        assert!(matches!(validate_pod_cidr(net("10.0.0.0/8"), n), Err(CidrError::OutsideNetwork { .. })));
        assert!(matches!(validate_pod_cidr(net("10.244.0.0/31"), n), Err(CidrError::TooSmall(_))));
    }

    #[test]
    fn ipv6_subnets_are_carved_and_checked_alike() {
        let n = net("fd00:10:244::/56");
        assert_eq!(first_free(n, 64, &[]), Some(net("fd00:10:244::/64")));
        assert_eq!(first_free(n, 64, &[net("fd00:10:244::/63")]), Some(net("fd00:10:244:2::/64")));
        assert!(validate_pod_cidr(net("fd00:10:244:7::/64"), n).is_ok());
        let outside = validate_pod_cidr(net("fd00:10:245::/64"), n).unwrap_err();
        assert_eq!(outside.to_string(), "fd00:10:245::/64 is outside the cluster network fd00:10:244::/56");
        let small = validate_pod_cidr(net("fd00:10:244::/124"), n).unwrap_err();
        assert_eq!(
            small.to_string(),
            "fd00:10:244::/124 is too small for a node subnet (want /120 or larger)"
        );
        assert!(!overlaps(net("10.244.0.0/16"), net("::/0")), "families never overlap");
        assert!(matches!(validate_pod_cidr(net("10.244.1.0/24"), n), Err(CidrError::OutsideNetwork { .. })));
    }

    proptest! {
        #[test]
        fn first_free_never_overlaps(taken in proptest::collection::vec((0u32..256, 22u8..27), 0..40)) {
            let n = net("10.244.0.0/16");
            let base = u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0));
            let taken: Vec<IpNet> = taken
                .into_iter()
                .map(|(i, len)| ipnet::Ipv4Net::new((base + (i << 8)).into(), len).unwrap().trunc().into())
                .collect();
            if let Some(s) = first_free(n, 24, &taken) {
                prop_assert!(n.contains(&s));
                prop_assert!(taken.iter().all(|t| !overlaps(s, *t)));
            }
        }
    }
}
