//! The node's own limits that a large fabric can outgrow: the kernel's
//! neighbour (ARP) table. Reaching a peer over a flat underlay takes one
//! dynamic ARP entry per peer; above `gc_thresh3` entries the kernel
//! refuses new ones ("neighbor table overflow"), and pods on the node cannot
//! even resolve their gateway. felt's own VTEP entries are permanent and do
//! not count (Linux ≥ 4.20).

use std::path::Path;

/// Room the node itself needs beside its peers: its pods, their gateway,
/// the underlay's router.
pub const LOCAL_ENTRIES: u64 = 128;

/// Where the limit is; present in the host's network namespace only.
pub const GC_THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";

/// The limit, when this namespace has one to read.
pub fn gc_thresh3(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How many entries `peers` peers need that the table cannot hold (0: enough).
pub fn shortfall(peers: usize, limit: u64) -> u64 {
    (peers as u64 + LOCAL_ENTRIES).saturating_sub(limit)
}

/// The warning for `peers` peers under `limit`, if they need more.
pub fn warning(peers: usize, limit: u64) -> Option<String> {
    let short = shortfall(peers, limit);
    (short > 0).then(|| {
        let want = (peers as u64 + LOCAL_ENTRIES).next_power_of_two();
        format!(
            "the neighbour table holds {limit} entries (net.ipv4.neigh.default.gc_thresh3) and {peers} peers need about {}: \
             underlay ARP entries will be refused; raise gc_thresh1/2/3 (e.g. to {}/{}/{})",
            peers as u64 + LOCAL_ENTRIES,
            want / 4,
            want / 2,
            want
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_past_the_limit() {
        assert_eq!(shortfall(800, 1024), 0);
        assert!(warning(896, 1024).is_none(), "exactly enough");
        let w = warning(1000, 1024).unwrap();
        assert!(w.contains("holds 1024 entries") && w.contains("1000 peers need about 1128"), "{w}");
        assert!(w.contains("(e.g. to 512/1024/2048)"), "{w}");
        assert_eq!(shortfall(5000, 1024), 4104);
    }

    #[test]
    fn reads_the_limit_where_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gc_thresh3");
        std::fs::write(&file, "1024\n").unwrap();
        assert_eq!(gc_thresh3(&file), Some(1024));
        assert_eq!(gc_thresh3(&dir.path().join("absent")), None, "a namespace without it: no limit to check");
    }
}
