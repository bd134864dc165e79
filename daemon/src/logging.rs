//! The agent's log filter, set at start and changeable while it runs (a
//! SIGHUP that brings a new `logLevel`, see `agent::settings`).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter when neither `RUST_LOG` nor a setting gives one. The kube
/// client logs every failed response; the agent says once what it means.
pub const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

struct Installed {
    handle: reload::Handle<EnvFilter, Registry>,
    /// What the process started with (`RUST_LOG`, else [`DEFAULT_FILTER`]).
    initial: String,
    /// The filter in force, as it was given.
    current: Mutex<String>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Logs to stderr through a filter that [`set_filter`] can change later:
/// `RUST_LOG` when set, else [`DEFAULT_FILTER`].
pub fn init() {
    let initial = std::env::var("RUST_LOG").ok().filter(|f| EnvFilter::try_new(f).is_ok());
    let initial = initial.unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let current = Mutex::new(initial.clone());
        let _ = INSTALLED.set(Installed { handle, initial, current });
    }
}

/// Why a log filter was not set.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not `tracing`'s filter syntax.
    #[error("`{filter}` is not a log filter (e.g. info, debug, info,felt=debug)")]
    Invalid {
        /// What was given.
        filter: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// [`init`] did not install the reloadable filter (another subscriber was first).
    #[error("the log filter cannot be changed in this process")]
    NotReloadable,
}

/// Checks `filter` without applying it.
pub fn validate(filter: &str) -> Result<(), FilterError> {
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|source| FilterError::Invalid { filter: filter.to_owned(), source })
}

/// Sets the filter to `filter`, or back to the one the process started with.
/// Returns the filter now in force.
pub fn set_filter(filter: Option<&str>) -> Result<String, FilterError> {
    let installed = INSTALLED.get().ok_or(FilterError::NotReloadable)?;
    let want = filter.unwrap_or(&installed.initial);
    let new = EnvFilter::try_new(want)
        .map_err(|source| FilterError::Invalid { filter: want.to_owned(), source })?;
    installed.handle.reload(new).map_err(|_| FilterError::NotReloadable)?;
    *installed.current.lock().unwrap_or_else(|p| p.into_inner()) = want.to_owned();
    Ok(want.to_owned())
}

/// The filter in force, as given, if [`init`] installed one.
pub fn current() -> Option<String> {
    Some(INSTALLED.get()?.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
}
