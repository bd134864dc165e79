//! Ctrl-C (SIGINT), SIGTERM or SIGHUP during `felt lab up`: stop at the next
//! step and roll back what was built, rather than dying with namespaces and
//! agents left behind.
//!
//! [`catch`] installs handlers for the three signals (tokio's, on a thread
//! of its own) that raise a flag. Handlers, unlike a blocked signal mask,
//! do not pass to the agents the lab starts: exec resets them. Bring-up
//! checks the flag ([`check`]) between steps and in its wait loops, and
//! returns [`LabError::Interrupted`]; its teardown guard does the rest.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

use super::LabError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns SIGINT, SIGTERM and SIGHUP into the flag; returns once the
/// handlers are in place. A second signal while rolling back is ignored:
/// stopping the rollback would leave exactly what it removes.
pub fn catch() -> std::io::Result<()> {
    let (ready_tx, ready) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new().name("felt-lab-signals".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(ready_tx.send(Err(e))),
        };
        rt.block_on(async move {
            let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
            let mut streams = Vec::new();
            for kind in kinds {
                match signal(kind) {
                    Ok(s) => streams.push(s),
                    Err(e) => return drop(ready_tx.send(Err(e))),
                }
            }
            let _ = ready_tx.send(Ok(()));
            let [int, term, hup] = &mut streams[..] else { return };
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    eprintln!("felt lab: {name} received; stopping and removing what was built");
                }
            }
        });
    })?;
    ready.recv().unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended")))
}

/// `Err(Interrupted)` once a signal came.
pub fn check() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err(LabError::Interrupted) } else { Ok(()) }
}
