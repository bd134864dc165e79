//! The human reports of `felt lab`; `--json` prints the same types as JSON.

use felt::lab::{self, CheckReport};

/// The bench table.
pub fn bench(results: &[lab::bench::PathResult]) {
    let ratio = |r: &lab::bench::PathResult| r.ratio_to_kernel.map_or("-".to_owned(), |x| format!("{x:.2}"));
    // IPv6 paths (a dual-stack lab) are compared with IPv6 kernel VXLAN.
    let path = |r: &lab::bench::PathResult| {
        if r.family == "ipv6" { format!("{} (v6)", r.path) } else { r.path.clone() }
    };
    println!("TCP, pod to pod (underlay: node to node)");
    println!("{:<14} {:>7} {:>10} {:>10} {:>14}", "PATH", "STREAMS", "GBIT/S", "× KERNEL", "CORES/GBIT/S");
    for r in results.iter().filter(|r| r.test == "tcp") {
        println!(
            "{:<14} {:>7} {:>10.2} {:>10} {:>14.2}",
            path(r),
            r.streams,
            r.gbit_per_s,
            ratio(r),
            r.cores_per_gbit
        );
    }
    println!("\nUDP, {}-byte datagrams, one sender", lab::bench::UDP_PAYLOAD);
    println!("{:<14} {:>10} {:>10} {:>8} {:>12}", "PATH", "KPPS", "× KERNEL", "LOSS", "CORES/MPPS");
    for r in results.iter().filter(|r| r.test == "udp") {
        println!(
            "{:<14} {:>10.0} {:>10} {:>7.1}% {:>12}",
            path(r),
            r.packets_per_s.unwrap_or(0.0) / 1e3,
            ratio(r),
            r.loss.unwrap_or(0.0) * 100.0,
            r.cores_per_mpps.map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
    }
}

/// The lab's nodes and pods, problems after the table.
pub fn status(status: &felt::lab::LabStatus) {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "null".to_owned());
    println!(
        "{:<6} {:<14} {:<15} {:<19} {:<18} {:>8} {:<9} {:>6} {:>9}",
        "NODE", "NETNS", "UNDERLAY", "POD CIDR", "VTEP MAC", "AGENT", "READY", "PEERS", "REACHABLE"
    );
    let mut problems = Vec::new();
    for n in &status.nodes {
        let agent = if n.agent_running { n.pid.to_string() } else { "stopped".into() };
        let ready = match (n.agent, n.ready) {
            (felt::lab::NodeAgent::Flannel, _) => "flanneld",
            (_, Some(true)) => "ready",
            (_, Some(false)) => "NOT READY",
            (_, None) => "unknown",
        };
        println!(
            "{:<6} {:<14} {:<15} {:<19} {:<18} {:>8} {:<9} {:>6} {:>9}",
            n.name,
            n.netns,
            n.underlay_ip.to_string(),
            // An IPv6-only lab's node shows its IPv6 subnet.
            dash(n.pod_cidr.map(|c| c.to_string()).or(n.pod_cidr6.map(|c| c.to_string()))),
            dash(n.vtep_mac.map(|m| m.to_string())),
            agent,
            ready,
            format!("{}/{}", n.peers_programmed, n.peers_desired),
            format!("{}/{}", n.peers_reachable, n.peers_desired),
        );
        problems.extend(n.problems.iter().map(|p| format!("{}: {p}", n.name)));
    }
    if !problems.is_empty() {
        println!("\nproblems:");
        for p in problems {
            println!("  - {p}");
        }
    }
    println!();
    let dual = status.pods.iter().any(|p| p.ip6.is_some());
    let ip6 = |p: &felt::lab::PodState| {
        if dual { p.ip6.map_or("-".to_owned(), |ip| ip.to_string()) } else { String::new() }
    };
    println!("{:<10} {:<6} {:<16} {}", "POD", "NODE", "IP", if dual { "IP6" } else { "" });
    for p in &status.pods {
        let ip = p.ip.map_or("-".to_owned(), |ip| ip.to_string());
        println!("{:<10} {:<6} {:<16} {}", p.name, p.node, ip, ip6(p));
    }
}

/// Every failed probe, then the egress line, then the pair line (kept last,
/// and worded as before: scripts read it).
pub fn check(report: &CheckReport) {
    fn show<T: std::fmt::Display>(r: &Result<T, String>) -> String {
        match r {
            Ok(seen) => format!("seen as {seen}"),
            Err(e) => e.clone(),
        }
    }
    for r in report.pairs.iter().filter(|r| !r.ok()) {
        println!(
            "FAIL {} → {} ({}): icmp {}, tcp {} (want seen as {})",
            r.from,
            r.to,
            r.ip,
            if r.icmp { "ok" } else { "no reply" },
            show(&r.tcp),
            r.from_ip
        );
    }
    let outside = |ip: &std::net::IpAddr| -> std::net::IpAddr {
        if ip.is_ipv4() { lab::OUTSIDE_IP.into() } else { lab::OUTSIDE_IP6.into() }
    };
    for r in report.egress.iter().filter(|r| !r.ok()) {
        println!(
            "FAIL {} ({}) → outside {}: {} (want seen as its node {})",
            r.from,
            r.from_ip,
            outside(&r.from_ip),
            show(&r.seen),
            r.node_ip
        );
    }
    let count = |oks: usize, all: usize| format!("{oks}/{all}");
    // Before the last two lines, which scripts read.
    let v6: Vec<_> = report.pairs.iter().filter(|r| r.ip.is_ipv6()).collect();
    if !v6.is_empty() {
        let v4: Vec<_> = report.pairs.iter().filter(|r| r.ip.is_ipv4()).collect();
        println!(
            "by family: ipv4 {}, ipv6 {}",
            count(v4.iter().filter(|r| r.ok()).count(), v4.len()),
            count(v6.iter().filter(|r| r.ok()).count(), v6.len())
        );
    }
    let (egress4, egress6): (Vec<_>, Vec<_>) = report.egress.iter().partition(|r| r.from_ip.is_ipv4());
    if !egress6.is_empty() {
        println!(
            "egress ipv6: {} pods reach the outside host {} as their node's address",
            count(egress6.iter().filter(|r| r.ok()).count(), egress6.len()),
            lab::OUTSIDE_IP6
        );
    }
    if egress4.is_empty() && report.pods > 0 {
        println!("egress: not probed over IPv4: no pod has an IPv4 address");
    } else {
        println!(
            "egress: {} pods reach the outside host {} as their node's address",
            count(egress4.iter().filter(|r| r.ok()).count(), egress4.len()),
            lab::OUTSIDE_IP
        );
    }
    println!(
        "{} pod pairs reachable",
        count(report.pairs.iter().filter(|r| r.ok()).count(), report.pairs.len())
    );
}

/// Where every garbage datagram went, and how the fabric fared.
pub fn soak(r: &lab::soak::SoakReport) {
    println!(
        "{} datagrams at {} in {:.1} s ({:.0}/s): felt counted {}, the kernel dropped {} before felt \
         read them, {} unaccounted",
        r.sent,
        r.target,
        r.seconds,
        r.sent as f64 / r.seconds.max(1e-9),
        r.counted_by_felt.values().sum::<u64>(),
        r.dropped_by_kernel,
        r.unaccounted
    );
    for (reason, n) in &r.counted_by_felt {
        println!("  {reason:<18} {n}");
    }
    println!(
        "pings during the flood: {}/{} answered; right after: {}; agent {}",
        r.pings_answered,
        r.pings_sent,
        if r.recovered { "answered" } else { "NO ANSWER" },
        if r.agent_alive { "running" } else { "NOT RUNNING" }
    );
}

/// `felt lab bench --control-plane`.
pub fn scale(report: &lab::scale::ScaleReport) {
    println!("control plane, {} registry: one agent, N synthetic peers, real netlink", report.registry);
    println!(
        "{:>6} {:>9} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8} {:>7} {:>8}",
        "PEERS",
        "COLD MS",
        "IDLE %",
        "CHG P50",
        "CHG P99",
        "CHG MAX",
        "WRITES",
        "PASSES",
        "RM MS",
        "RSS MIB",
        "CPU S",
        "READY MS"
    );
    for r in &report.rows {
        println!(
            "{:>6} {:>9.1} {:>7.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>7.2} {:>9.1} {:>8.1} {:>7.2} {:>8.1}",
            r.peers,
            r.cold_ms,
            r.idle_cpu_percent,
            r.change_p50_ms,
            r.change_p99_ms,
            r.change_max_ms,
            r.netlink_writes_per_change,
            r.passes_per_change,
            r.removal_ms,
            r.rss_peak_mib,
            r.cpu_seconds,
            r.readiness_probe_max_ms
        );
    }
    let phases: Vec<&String> =
        report.rows.first().map(|r| r.phase_ms_per_change.keys().collect()).unwrap_or_default();
    println!("\nwhere a change's time goes in the agent (ms per change, by reconcile phase)");
    print!("{:>6}", "PEERS");
    for p in &phases {
        print!(" {:>9}", p.to_uppercase());
    }
    println!();
    for r in &report.rows {
        print!("{:>6}", r.peers);
        for p in &phases {
            print!(" {:>9.2}", r.phase_ms_per_change.get(*p).copied().unwrap_or(0.0));
        }
        println!();
    }
    println!("\nCHG: one peer's address rewritten in the registry → its FDB entry rewritten (ms);");
    println!("WRITES/PASSES: netlink writes and reconcile passes per change; RM: the removal of");
    println!("min(N, --removals) peers at once, until the last of their routes is gone (ms);");
    println!("RSS and CPU with /readyz asked every 5 s, as the DaemonSet's readinessProbe does;");
    println!("READY: its slowest answer (ms).");
    if report.rows.iter().all(|r| r.api.is_none()) {
        return;
    }
    println!("\nwhat the API server sent while every Node's status was updated once");
    println!(
        "{:>6} {:>9} {:>8} {:>7} {:>14} {:>14} {:>7} {:>7} {:>7}",
        "PEERS", "READS", "UPDATES", "SECONDS", "AGENT B/MIN", "FULL B/MIN", "RATIO", "WRITES", "PASSES"
    );
    for r in &report.rows {
        let Some(a) = &r.api else { continue };
        println!(
            "{:>6} {:>9} {:>8} {:>7.1} {:>14.0} {:>14.0} {:>6.1}x {:>7.0} {:>7.0}",
            r.peers,
            a.peer_source,
            a.status_updates,
            a.seconds,
            a.agent_bytes_per_minute,
            a.full_watch_bytes_per_minute,
            a.ratio,
            a.netlink_writes,
            a.passes
        );
    }
    if let Some(a) = report.rows.iter().rev().find_map(|r| r.api.as_ref()) {
        println!(
            "one peer's Node: {} bytes of JSON, its metadata {} (managedFields {})",
            a.node_bytes, a.metadata_bytes, a.managed_fields_bytes
        );
    }
    println!("READS: where the agent read its peers (feltnodes, or nodes: Node metadata);");
    println!("AGENT: bytes the API server sent felt's agent; FULL: a Flannel-style watch of whole");
    println!(
        "Nodes in the same run; WRITES/PASSES: the agent's netlink writes and reconcile passes meanwhile."
    );
}
