//! `quicmesh`: run a node, issue certificates, run the demo cluster, print
//! shell completions.

mod admin;
mod bench;
mod certs;
mod commands;
mod demo;
mod metrics;
mod node;
mod say;

use std::io::IsTerminal;

use clap::{CommandFactory as _, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// quicmesh: named nodes in a mutually authenticated QUIC mesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node and log its peers coming up and going down.
    Node(node::NodeArgs),
    #[command(flatten)]
    Admin(admin::AdminCommand),
    /// Make a CA and issue node certificates (certificate mode).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Start a 3-node cluster on loopback, kill a node, show what happens.
    Demo,
    /// Benchmark RPC between two processes against a raw quinn baseline.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script to stdout.
    ///
    /// bash: `quicmesh completions bash > ~/.local/share/bash-completion/completions/quicmesh`
    ///
    /// zsh: `quicmesh completions zsh > ~/.zfunc/_quicmesh` (with `~/.zfunc` in `fpath`)
    ///
    /// fish: `quicmesh completions fish > ~/.config/fish/completions/quicmesh.fish`
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        // openraft's info lines dump its whole state at each start and
        // election: a node in consensus mode says what matters itself.
        Command::Node(_) => "info,openraft=warn",
        _ => "warn",
    };
    // Colour only for a person at a terminal, and never with NO_COLOR set.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Certs(cmd) => certs::run(cmd),
        Command::Node(args) => runtime().and_then(|rt| rt.block_on(node::run(args))),
        Command::Admin(cmd) => runtime().and_then(|rt| rt.block_on(admin::run(cmd))),
        Command::Demo => runtime().and_then(|rt| rt.block_on(demo::run())),
        Command::Bench(cmd) => runtime().and_then(|rt| rt.block_on(bench::run(cmd))),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cause_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the completion script for `shell`. A reader that stops early
/// (`| head`) is no error.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "quicmesh", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// An error and its causes on one line, each said once: many errors
/// already print their cause in their own message.
fn cause_chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every command's flags are well formed (clap checks names, groups
    /// and conflicts only when a command is built).
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
