//! What an agent can change without a restart: the settings file
//! (`--settings FILE`, JSON), read at start and again on SIGHUP.
//!
//! ```json
//! { "logLevel": "info,felt=debug", "probeInterval": "2s", "resyncPeriod": "1m" }
//! ```
//!
//! Every key is optional: one that is absent falls back to its flag (or the
//! flag's default), so deleting a key undoes it. An unknown key or a bad
//! value refuses the whole file with the reason: at start the agent does
//! not run, on SIGHUP it keeps what is in force. Anything else (the network
//! config, the data plane, the registry) takes a restart; a SIGHUP that
//! finds the network config file changed says so and changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The settings file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The log filter (`tracing`'s syntax: `info`, `debug`, `info,felt=debug`).
    #[serde(default)]
    pub log_level: Option<String>,
    /// How often every peer is probed (`5s`, `500ms`).
    #[serde(default, deserialize_with = "duration")]
    pub probe_interval: Option<Duration>,
    /// The full resync period when nothing happens (`30s`, `2m`).
    #[serde(default, deserialize_with = "duration")]
    pub resync_period: Option<Duration>,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::util::parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Why a settings file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// It cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a settings document.
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// Its log level is not a filter.
    #[error("{path}: logLevel")]
    LogLevel {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: crate::logging::FilterError,
    },
}

impl Settings {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Settings, SettingsError> {
        let bytes =
            std::fs::read(path).map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
        let s: Settings = serde_json::from_slice(&bytes)
            .map_err(|source| SettingsError::Parse { path: path.to_owned(), source })?;
        if let Some(level) = &s.log_level {
            crate::logging::validate(level)
                .map_err(|source| SettingsError::LogLevel { path: path.to_owned(), source })?;
        }
        Ok(s)
    }
}

/// The values in force: the flags', each overridden by the file when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// The log filter; `None`: the one the process started with.
    pub log_level: Option<String>,
    /// The peer probe interval.
    pub probe_interval: Duration,
    /// The resync period.
    pub resync: Duration,
}

impl InForce {
    /// The flags' values (`probe_interval`, `resync`) with `s` over them.
    pub fn of(probe_interval: Duration, resync: Duration, s: &Settings) -> InForce {
        InForce {
            log_level: s.log_level.clone(),
            probe_interval: s.probe_interval.unwrap_or(probe_interval),
            resync: s.resync_period.unwrap_or(resync),
        }
    }

    /// What differs from `before`, one phrase each (`probe interval 5s → 2s`).
    pub fn changes_from(&self, before: &InForce) -> Vec<String> {
        let mut out = Vec::new();
        if self.log_level != before.log_level {
            let show = |l: &Option<String>| l.clone().unwrap_or_else(|| "(the start-up filter)".to_owned());
            out.push(format!("log level {} → {}", show(&before.log_level), show(&self.log_level)));
        }
        let h = |d: Duration| humantime::format_duration(d).to_string();
        if self.probe_interval != before.probe_interval {
            out.push(format!("probe interval {} → {}", h(before.probe_interval), h(self.probe_interval)));
        }
        if self.resync != before.resync {
            out.push(format!("resync period {} → {}", h(before.resync), h(self.resync)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, json).unwrap();
        Settings::read(&path).map_err(|e| crate::util::error_chain(&e))
    }

    #[test]
    fn every_key_is_optional_and_absent_ones_fall_back_to_the_flags() {
        let s = parse(r#"{"probeInterval":"2s"}"#).unwrap();
        let f = InForce::of(Duration::from_secs(5), Duration::from_secs(30), &s);
        assert_eq!(f.probe_interval, Duration::from_secs(2));
        assert_eq!((f.resync, f.log_level.as_deref()), (Duration::from_secs(30), None));
        let all = parse(r#"{"logLevel":"debug","probeInterval":"500ms","resyncPeriod":"1m"}"#).unwrap();
        let g = InForce::of(Duration::from_secs(5), Duration::from_secs(30), &all);
        assert_eq!(
            g.changes_from(&f),
            [
                "log level (the start-up filter) → debug",
                "probe interval 2s → 500ms",
                "resync period 30s → 1m"
            ]
        );
        assert!(g.changes_from(&g).is_empty());
        assert_eq!(parse("{}").unwrap(), Settings::default());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (json, want) in [
            (r#"{"probeInterval":"0s"}"#, "more than zero"),
            (r#"{"resyncPeriod":"soon"}"#, "`soon`"),
            (r#"{"network":"10.0.0.0/8"}"#, "unknown field `network`"),
            (r#"{"logLevel":"info,felt=loud"}"#, "logLevel: `info,felt=loud` is not a log filter"),
            ("[", "EOF"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let missing = Settings::read(Path::new("/nonexistent/felt-settings.json")).unwrap_err();
        assert!(crate::util::error_chain(&missing).starts_with("reading /nonexistent/felt-settings.json: "));
    }
}
