//! Joining a user's rootless lab before anything else runs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use felt::lab::{self, Lab, Mode};

use super::RegistryKind;
use super::lab::LabCommand;

/// Joins this user's rootless lab of that name, if there is one (starting
/// it for `up --rootless`). Runs while the process still has one thread.
/// Returns the lab's holder and whether this call started it.
pub fn enter(command: &LabCommand) -> anyhow::Result<Option<(lab::rootless::Holder, bool)>> {
    let name = command.lab().name.clone();
    if matches!(command, LabCommand::Hold { .. } | LabCommand::ApiProxy { .. }) {
        return Ok(None);
    }
    if let Some(holder) = lab::rootless::holder(&name) {
        holder.enter()?;
        return Ok(Some((holder, false)));
    }
    let LabCommand::Up { rootless: true, registry, mode, .. } = command else {
        if !nix::unistd::Uid::effective().is_root() {
            if matches!(command, LabCommand::Down { .. }) {
                // `down` is safe to repeat.
                println!("lab `{name}` is not up; nothing to remove");
                std::process::exit(0);
            }
            bail!(
                "`felt lab` needs root, or a rootless lab: `felt lab up --rootless --name {name}` \
                 (no rootless lab named `{name}` belongs to this user)"
            );
        }
        return Ok(None);
    };
    if matches!(registry, RegistryKind::Kube) {
        bail!("rootless labs use the file registry (--registry kube needs an API server inside the lab)");
    }
    Lab::new(&name, &command.lab().state_root, PathBuf::new())?;
    if mode.is_none_or(|m| m != Mode::Kernel) {
        // Say it now rather than through every agent's log.
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
            bail!(
                "opening /dev/net/tun: {e}. The userspace data plane needs it readable and writable \
                 by this user (most distributions ship it mode 0666: `sudo chmod 0666 /dev/net/tun`), \
                 or use --mode kernel"
            );
        }
    }
    let felt = std::env::current_exe().context("finding the felt binary")?;
    let holder = lab::rootless::start_holder(&name, &felt)?;
    if let Err(e) = holder.enter() {
        holder.stop();
        return Err(e.into());
    }
    Ok(Some((holder, true)))
}
