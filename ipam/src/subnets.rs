//! CIDR math: node subnets inside the cluster CIDR.

use ipnet::Ipv4Net;

/// Why a pod CIDR cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The CIDR is not inside the cluster network.
    #[error("{cidr} is outside the cluster network {network}")]
    OutsideNetwork {
        /// The offending CIDR.
        cidr: Ipv4Net,
        /// The cluster network.
        network: Ipv4Net,
    },
    /// The CIDR is too small to hold a gateway and a pod.
    #[error("{0} is too small for a node subnet (want /30 or larger)")]
    TooSmall(Ipv4Net),
}

/// Every subnet of length `len` in `network`, in address order.
pub fn subnets(network: Ipv4Net, len: u8) -> impl Iterator<Item = Ipv4Net> {
    network.subnets(len).into_iter().flatten()
}

/// True when the two CIDRs share any address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of length `len` in `network` that overlaps none of `taken`.
pub fn first_free(network: Ipv4Net, len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    subnets(network, len).find(|s| !taken.iter().any(|t| overlaps(*s, *t)))
}

/// Checks a pod CIDR a registry assigned to a node against the cluster network.
pub fn validate_pod_cidr(cidr: Ipv4Net, network: Ipv4Net) -> Result<(), CidrError> {
    if !network.contains(&cidr) {
        return Err(CidrError::OutsideNetwork { cidr, network });
    }
    if cidr.prefix_len() > 30 {
        return Err(CidrError::TooSmall(cidr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
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

    proptest! {
        #[test]
        fn first_free_never_overlaps(taken in proptest::collection::vec((0u32..256, 22u8..27), 0..40)) {
            let n = net("10.244.0.0/16");
            let taken: Vec<Ipv4Net> = taken
                .into_iter()
                .map(|(i, len)| Ipv4Net::new((u32::from(n.network()) + (i << 8)).into(), len).unwrap().trunc())
                .collect();
            if let Some(s) = first_free(n, 24, &taken) {
                prop_assert!(n.contains(&s));
                prop_assert!(taken.iter().all(|t| !overlaps(s, *t)));
            }
        }
    }
}
