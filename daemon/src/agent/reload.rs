//! SIGHUP: the settings file re-read and what changed applied (see
//! [`super::settings`]); the start applies the same file the same way.

use tracing::{info, warn};

use super::metrics::ResultLabel;
use super::settings::{InForce, Settings, SettingsError};
use super::status::ConfigView;
use super::{Agent, AgentConfig, Wakeups, resync_timer};
use crate::util::error_chain;

impl Agent {
    /// SIGHUP: re-reads the settings file and applies what changed; a file
    /// that is refused leaves everything as it is. Says what changed, and
    /// what it ignored because it takes a restart.
    pub(super) fn reload(&mut self, wakeups: &mut Wakeups) {
        let result = read(&self.cfg).and_then(|(next, ignored)| {
            apply_log_level(&self.cfg, &next, &self.in_force)?;
            Ok((next, ignored))
        });
        let (next, ignored) = match result {
            Ok(r) => r,
            Err(e) => {
                let message =
                    format!("SIGHUP: the settings were refused; nothing changed: {}", error_chain(&e));
                warn!("{message}");
                self.shared.error(message);
                self.shared.metrics.reloads.get_or_create(&ResultLabel { result: "error" }).inc();
                return;
            }
        };
        let changed = next.changes_from(&self.in_force);
        if next.resync != self.in_force.resync {
            wakeups.resync = resync_timer(next.resync);
        }
        self.shared.update_config(|c| show(c, &next));
        self.in_force = next;
        self.shared.metrics.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
        let list = |v: &[String]| if v.is_empty() { "nothing".to_owned() } else { v.join("; ") };
        info!(changed = %list(&changed), ignored = %list(&ignored), "SIGHUP: settings reloaded");
    }
}

/// The settings the file asks for (none without a file), over the
/// flags, and what changed that a reload does not apply.
fn read(cfg: &AgentConfig) -> Result<(InForce, Vec<String>), SettingsError> {
    let file = cfg.settings.as_deref().map(Settings::read).transpose()?.unwrap_or_default();
    let mut ignored = Vec::new();
    if let Some(path) = &cfg.net_conf_file {
        let now = std::fs::read(path).ok().and_then(|b| felt_proto::NetConfig::from_json(&b).ok());
        if now.as_ref() != Some(&cfg.net) {
            ignored.push(format!(
                "{} changed or is unreadable (the network config takes a restart)",
                path.display()
            ));
        }
    }
    Ok((InForce::of(cfg.probe_interval, cfg.resync, &file), ignored))
}

/// Sets the log filter of `next` when it differs from `now`'s.
fn apply_log_level(cfg: &AgentConfig, next: &InForce, now: &InForce) -> Result<(), SettingsError> {
    if next.log_level == now.log_level {
        return Ok(());
    }
    crate::logging::set_filter(next.log_level.as_deref())
        .map(drop)
        .map_err(|source| SettingsError::LogLevel { path: cfg.settings.clone().unwrap_or_default(), source })
}

/// The settings in force at start: the file's (which must be good) over
/// the flags, its log level applied.
pub(super) fn at_start(cfg: &AgentConfig) -> Result<InForce, SettingsError> {
    let (in_force, _) = read(cfg)?;
    let flags = InForce::of(cfg.probe_interval, cfg.resync, &Settings::default());
    apply_log_level(cfg, &in_force, &flags)?;
    Ok(in_force)
}

/// What `/debug/state` shows of `f`.
pub(super) fn show(c: &mut ConfigView, f: &InForce) {
    c.probe_interval_seconds = f.probe_interval.as_secs_f64();
    c.resync_seconds = f.resync.as_secs_f64();
    c.log_level = crate::logging::current();
}
