//! Ctrl-C (SIGINT), SIGTERM or SIGHUP during `felt lab up`: stop at the next
//! step and roll back what was built, rather than dying with namespaces and
//! agents left behind.
//!
//! [`catch`] blocks the three signals in the calling thread (and so in the
//! threads it starts later; children get a clean mask from `std::process`)
//! and starts one thread that waits for them and raises a flag. Bring-up
//! checks the flag ([`check`]) between steps and in its wait loops, and
//! returns [`LabError::Interrupted`]; its teardown guard does the rest.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};

use super::LabError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns SIGINT, SIGTERM and SIGHUP into the flag. Call before starting
/// other threads. A second signal while rolling back is ignored: stopping
/// the rollback would leave exactly what it removes.
pub fn catch() -> std::io::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new().name("felt-lab-signals".into()).spawn(move || {
        while let Ok(signal) = set.wait() {
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("felt lab: {signal} received; stopping and removing what was built");
            }
        }
    })?;
    Ok(())
}

/// `Err(Interrupted)` once a signal came.
pub fn check() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err(LabError::Interrupted) } else { Ok(()) }
}
