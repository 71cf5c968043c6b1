//! `quicmesh certs`: the bundled certificate tool.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use quicmesh::NodeName;
use quicmesh_identity::{CertificateAuthority, describe_pem, write_issued};

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a new CA: writes ca.pem and ca.key (mode 0600).
    Ca {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "quicmesh CA")]
        common_name: String,
        /// Validity in days (at least 1).
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA: writes NAME.pem and
    /// NAME.key (mode 0600).
    Issue {
        /// The node name, e.g. app1@host1 (goes into the URI SAN).
        #[arg(long)]
        name: NodeName,
        /// Validity in days (at least 1).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// Directory to write into (default: the CA's).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print subject, SAN, issuer, validity and fingerprint of certificates.
    Show {
        /// A PEM file.
        file: PathBuf,
    },
}

pub(crate) fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Ca {
            out,
            common_name,
            days,
            force,
        } => {
            let ca = CertificateAuthority::generate(&common_name, days)?;
            let (cert, key) = ca.write_dir(&out, force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCommand::Issue {
            name,
            days,
            ca,
            out,
            force,
        } => {
            let authority = CertificateAuthority::load_dir(&ca)
                .with_context(|| format!("loading the CA from {}", ca.display()))?;
            let issued = authority.issue(&name, days)?;
            let out = out.unwrap_or(ca);
            let (cert, key) = write_issued(&issued, &out, &name, force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCommand::Show { file } => {
            let certs = describe_pem(&file)?;
            match show(&certs, &mut std::io::stdout().lock()) {
                // The reader went away (`| head`): nothing more to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing to stdout")?,
            }
        }
    }
    Ok(())
}

/// Writes what `certs show` prints of each certificate.
fn show(certs: &[quicmesh_identity::CertInfo], out: &mut impl Write) -> std::io::Result<()> {
    for (i, info) in certs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "subject:     {}", info.subject)?;
        writeln!(out, "issuer:      {}", info.issuer)?;
        writeln!(out, "SAN:         {}", info.sans.join(", "))?;
        writeln!(out, "valid from:  {}", info.not_before)?;
        writeln!(out, "valid until: {}", info.not_after)?;
        writeln!(
            out,
            "CA:          {}",
            if info.is_ca { "yes" } else { "no" }
        )?;
        writeln!(out, "SHA-256:     {}", info.fingerprint)?;
    }
    out.flush()
}
