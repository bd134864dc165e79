//! The `felt` binary: the node agent, the CNI plugin and the lab.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, LabCommand};

fn main() -> ExitCode {
    // A container runtime runs the plugin as `/opt/cni/bin/felt` with no arguments.
    if std::env::args_os().len() == 1 && std::env::var_os("CNI_COMMAND").is_some() {
        return cli::node::cni();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => cli::node::daemon(args),
        Command::Cni => return cli::node::cni(),
        Command::InstallCni { dirs, conflist } => cli::node::install_cni(dirs, conflist),
        Command::Cleanup(args) => cli::node::cleanup(args),
        Command::Status { addr, json } => cli::node::status(addr, json),
        Command::Keeper { device, hold } => cli::node::keeper(&device, hold),
        Command::Lab { command } => cli::rootless::enter(&command).and_then(|rootless| {
            let down = matches!(command, LabCommand::Down { .. });
            let up = matches!(command, LabCommand::Up { .. });
            let result = cli::lab::run(command);
            if let Some((holder, started)) = rootless {
                // A rootless lab lives as long as its holder: stop it with the lab,
                // or when the `up` that started it failed.
                if down || (up && started && result.as_ref().map_or(true, |c| *c != ExitCode::SUCCESS)) {
                    holder.stop();
                }
            }
            result
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("felt: {e:#}");
            ExitCode::FAILURE
        }
    }
}
