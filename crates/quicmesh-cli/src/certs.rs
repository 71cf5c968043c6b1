//! `quicmesh certs`: the bundled certificate tool.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use quicmesh::NodeName;
use quicmesh_identity::{CertificateAuthority, Ledger, describe_pem, serial_of, write_issued};

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
        #[command(flatten)]
        cert: NodeCertArgs,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a new certificate and key for a node, replacing NAME.pem and
    /// NAME.key; then send the node SIGHUP to use them. The old
    /// certificate stays valid until it expires or is revoked.
    Renew {
        #[command(flatten)]
        cert: NodeCertArgs,
    },
    /// Revoke certificates: writes the CA's revocation list, crl.pem, in
    /// the CA directory. Copy it to the nodes (their --crl) and send them
    /// SIGHUP: they drop and refuse the revoked nodes.
    Revoke {
        /// Revoke every certificate the CA issued to this node.
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<NodeName>,
        /// Revoke the certificate with this serial (hex, as `certs show`
        /// prints it). Repeatable.
        #[arg(long)]
        serial: Vec<String>,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        ca: PathBuf,
        /// Days until the list's next update (nodes use it until replaced).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Print subject, SAN, issuer, validity and fingerprint of certificates.
    Show {
        /// A PEM file.
        file: PathBuf,
    },
}

/// Which node certificate to issue, with which CA, where to.
#[derive(Debug, Args)]
pub(crate) struct NodeCertArgs {
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
        CertsCommand::Issue { cert, force } => issue(cert, force)?,
        CertsCommand::Renew { cert } => {
            issue(cert, true)?;
            println!("send the node SIGHUP (kill -HUP <pid>) to use it");
        }
        CertsCommand::Revoke {
            name,
            serial,
            ca,
            days,
        } => revoke(name.as_ref(), serial, &ca, days)?,
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

/// Issues the certificate `args` describe, writes it and records its
/// serial in the CA's ledger.
fn issue(args: NodeCertArgs, force: bool) -> anyhow::Result<()> {
    let NodeCertArgs {
        name,
        days,
        ca,
        out,
    } = args;
    let authority = load_ca(&ca)?;
    let issued = authority.issue(&name, days)?;
    let out = out.unwrap_or_else(|| ca.clone());
    let (cert, key) = write_issued(&issued, &out, &name, force)?;
    Ledger::open(&ca).record_issued(&issued, &name)?;
    let serial = serial_of(&issued.cert).unwrap_or_default();
    println!(
        "wrote {} and {} (serial {serial})",
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Revokes the certificates of `name`, or `serials`, and writes the CRL.
fn revoke(
    name: Option<&NodeName>,
    mut serials: Vec<String>,
    ca: &Path,
    days: u32,
) -> anyhow::Result<()> {
    let authority = load_ca(ca)?;
    let ledger = Ledger::open(ca);
    if let Some(name) = name {
        serials = ledger.issued_to(name)?;
        if serials.is_empty() {
            anyhow::bail!(
                "no certificate issued to {name} is recorded in {}: pass --serial                  (`quicmesh certs show NAME.pem` prints it)",
                ca.join(Ledger::ISSUED_FILE).display()
            );
        }
    }
    let done = ledger.revoke(&authority, &serials, days)?;
    for serial in &done.newly_revoked {
        println!("revoked {serial}");
    }
    println!(
        "wrote {} ({} revoked); copy it to the nodes and send them SIGHUP",
        done.crl.display(),
        done.revoked.len()
    );
    Ok(())
}

fn load_ca(ca: &Path) -> anyhow::Result<CertificateAuthority> {
    CertificateAuthority::load_dir(ca)
        .with_context(|| format!("loading the CA from {}", ca.display()))
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
        writeln!(out, "serial:      {}", info.serial)?;
        writeln!(out, "SHA-256:     {}", info.fingerprint)?;
    }
    out.flush()
}
