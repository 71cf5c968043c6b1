//! `quicmesh certs`: the bundled certificate tool.

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
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
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
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
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
            for (i, info) in describe_pem(&file)?.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!("subject:     {}", info.subject);
                println!("issuer:      {}", info.issuer);
                println!("SAN:         {}", info.sans.join(", "));
                println!("valid from:  {}", info.not_before);
                println!("valid until: {}", info.not_after);
                println!("CA:          {}", if info.is_ca { "yes" } else { "no" });
                println!("SHA-256:     {}", info.fingerprint);
            }
        }
    }
    Ok(())
}
