//! SIGHUP: the settings file re-read, what can change without a restart
//! applied, the rest named and ignored, a bad file refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{TestLab, require_root, run, sample_value, wait_until};

/// The sum of a counter family's samples whose labels include `label`.
fn counter(lab: &TestLab, name: &str, label: (&str, &str)) -> f64 {
    lab.metric_samples("n1", name)
        .iter()
        .filter(|s| s.labels.get(label.0) == Some(label.1))
        .filter_map(sample_value)
        .sum()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn sighup_reloads_the_settings_and_says_what_it_ignored() {
    require_root();
    let lab = TestLab::up(2, 1);
    let dir = lab.node_dir("n1");
    let (settings, net_conf) = (dir.join("settings.json"), dir.join("net-conf.json"));
    // n1's agent again, with a settings file and a network config of its own.
    let pid = lab.status().nodes[0].pid;
    let mut args = felt::process::cmdline(pid).expect("n1's agent runs");
    let at = args.iter().position(|a| a == "--net-conf").expect("the lab passes --net-conf") + 1;
    std::fs::copy(&args[at], &net_conf).unwrap();
    args[at] = net_conf.display().to_string();
    args.extend(["--settings".to_owned(), settings.display().to_string()]);
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    assert!(wait_until(Duration::from_secs(10), || felt::process::is_zombie_or_gone(pid)).is_some());
    std::fs::write(&settings, r#"{"probeInterval":"3s"}"#).unwrap();
    let log = std::fs::OpenOptions::new().append(true).open(dir.join("agent.log")).unwrap();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns("n1")])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = || lab.try_debug_get("n1", "/readyz").is_some_and(|(code, _)| code == 200);
    assert!(wait_until(Duration::from_secs(15), ready).is_some(), "{}", lab.log("n1"));
    let config = lab.debug_state("n1").config;
    assert_eq!(config.probe_interval_seconds, 3.0, "the file's value over the flag's (1s)");
    assert_eq!((config.resync_seconds, config.settings_file), (5.0, Some(settings.display().to_string())));
    assert_eq!(config.log_level.as_deref(), Some("info,kube_client::client::builder=off"));

    // At info, reconciles that change nothing log nothing: seen after a
    // timer pass, in the same log that shows them at debug below.
    let timer = || counter(&lab, "felt_wakeups_total", ("cause", "timer"));
    let before = timer();
    assert!(wait_until(Duration::from_secs(15), || timer() > before).is_some(), "no resync pass");
    let hup = |expect: &str| {
        let said = lab.log("n1").matches(expect).count();
        run(Command::new("kill").args(["-HUP", &agent.id().to_string()]));
        let heard = || lab.log("n1").matches(expect).count() > said;
        assert!(
            wait_until(Duration::from_secs(10), heard).is_some(),
            "`{expect}` not logged:\n{}",
            lab.log("n1")
        );
    };
    assert!(!lab.log("n1").contains(" DEBUG "), "{}", lab.log("n1"));

    // What can change does; the network config's change is named and ignored.
    std::fs::write(&settings, r#"{"logLevel":"debug","probeInterval":"500ms","resyncPeriod":"2s"}"#).unwrap();
    let conf = std::fs::read_to_string(&net_conf).unwrap().replace("10.244.0.0/16", "10.96.0.0/12");
    std::fs::write(&net_conf, conf).unwrap();
    hup("SIGHUP: settings reloaded");
    let said = lab.log("n1");
    assert!(
        said.contains("changed=log level (the start-up filter) → debug; probe interval 3s → 500ms; resync period 5s → 2s"),
        "{said}"
    );
    assert!(
        said.contains("net-conf.json changed or is unreadable (the network config takes a restart)"),
        "{said}"
    );
    let config = lab.debug_state("n1").config;
    assert_eq!((config.probe_interval_seconds, config.resync_seconds), (0.5, 2.0));
    assert_eq!(config.log_level.as_deref(), Some("debug"));
    assert_eq!(
        lab.debug_state("n1").lease.unwrap().pod_cidr.unwrap().to_string().split('.').next(),
        Some("10")
    );
    let debugs = || lab.log("n1").contains(" DEBUG ");
    assert!(wait_until(Duration::from_secs(10), debugs).is_some(), "no debug line after the reload");
    // Probes every 500 ms: at least 4 more in 3 s (at 3 s there would be one).
    let probes = || counter(&lab, "felt_peer_probes_total", ("result", "ok"));
    let start = probes();
    std::thread::sleep(Duration::from_secs(3));
    assert!(probes() - start >= 4.0, "{} probes in 3 s", probes() - start);
    assert_eq!(counter(&lab, "felt_reloads_total", ("result", "ok")), 1.0);

    // A bad file changes nothing and says why.
    std::fs::write(&settings, r#"{"probeInterval":"soon"}"#).unwrap();
    hup("SIGHUP: the settings were refused; nothing changed");
    assert!(lab.log("n1").contains("`soon`"), "{}", lab.log("n1"));
    assert_eq!(lab.debug_state("n1").config.probe_interval_seconds, 0.5);
    assert_eq!(counter(&lab, "felt_reloads_total", ("result", "error")), 1.0);

    // Keys removed: the flags' values come back.
    std::fs::write(&settings, "{}").unwrap();
    hup("probe interval 500ms → 1s");
    let config = lab.debug_state("n1").config;
    assert_eq!((config.probe_interval_seconds, config.resync_seconds), (1.0, 5.0));
    assert_eq!(config.log_level.as_deref(), Some("info,kube_client::client::builder=off"));
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    lab.finish();
    let _ = agent.wait();
}
