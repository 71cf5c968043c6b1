//! What a certificate-mode CA directory records of the certificates it
//! issued and revoked, and the revocation list (CRL) it signs from that.
//!
//! Two text files beside `ca.pem`, one line per certificate:
//! `issued.txt` (`<serial> <node name>`) and `revoked.txt` (`<serial>
//! <unix time of revocation>`), serials in lower-case hex. The CRL,
//! `crl.pem`, is rewritten whole from `revoked.txt` at every revocation.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use crate::pki::CertificateAuthority;
use crate::{IdentityError, IssuedCert, NodeName};

/// The record of a CA directory: serials issued per node, serials
/// revoked. Opening it touches no file.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// What [`Ledger::revoke`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Revocation {
    /// The revocation list written (`crl.pem` in the CA directory).
    pub crl: PathBuf,
    /// Serials revoked by this call (those already revoked are left out).
    pub newly_revoked: Vec<String>,
    /// Every serial the list now holds.
    pub revoked: Vec<String>,
}

impl Ledger {
    /// File of issued serials.
    pub const ISSUED_FILE: &'static str = "issued.txt";
    /// File of revoked serials.
    pub const REVOKED_FILE: &'static str = "revoked.txt";
    /// The revocation list.
    pub const CRL_FILE: &'static str = "crl.pem";

    /// The ledger of the CA directory `dir`.
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Notes that `issued` was issued to `name`.
    pub fn record_issued(&self, issued: &IssuedCert, name: &NodeName) -> Result<(), IdentityError> {
        let serial = serial_of(&issued.cert).unwrap_or_default();
        self.append(Self::ISSUED_FILE, &format!("{serial} {name}"))
    }

    /// The serials issued to `name`, oldest first.
    pub fn issued_to(&self, name: &NodeName) -> Result<Vec<String>, IdentityError> {
        Ok(self
            .lines(Self::ISSUED_FILE)?
            .into_iter()
            .filter_map(|(serial, who)| (who == name.as_str()).then_some(serial))
            .collect())
    }

    /// Revokes `serials` (hex, colons and case ignored) and writes the
    /// CRL, signed by `ca` and valid for `days`, listing every serial
    /// revoked so far.
    pub fn revoke(
        &self,
        ca: &CertificateAuthority,
        serials: &[String],
        days: u32,
    ) -> Result<Revocation, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let mut known = self.lines(Self::REVOKED_FILE)?;
        let mut newly_revoked = Vec::new();
        for serial in serials {
            let serial = normalise_serial(serial).ok_or_else(|| IdentityError::BadSerial {
                serial: serial.clone(),
            })?;
            if known.iter().any(|(s, _)| *s == serial) || newly_revoked.contains(&serial) {
                continue;
            }
            newly_revoked.push(serial);
        }
        for serial in &newly_revoked {
            let at = now.unix_timestamp().to_string();
            self.append(Self::REVOKED_FILE, &format!("{serial} {at}"))?;
            known.push((serial.clone(), at));
        }
        let revoked_certs = known
            .iter()
            .map(|(serial, at)| {
                let bytes = hex_bytes(serial).ok_or_else(|| IdentityError::BadPem {
                    path: self.dir.join(Self::REVOKED_FILE),
                    what: format!("{serial:?} is not a serial"),
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from(bytes),
                    revocation_time: at
                        .parse()
                        .ok()
                        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                        .unwrap_or(now),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, IdentityError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(days.into()),
            // Increasing from one list to the next, as RFC 5280 asks.
            crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(0)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = ca.sign_crl(&params)?;
        let crl = self.dir.join(Self::CRL_FILE);
        replace_file(&crl, "revocation list", &pem)?;
        Ok(Revocation {
            crl,
            newly_revoked,
            revoked: known.into_iter().map(|(s, _)| s).collect(),
        })
    }

    /// The lines of a record file as (serial, rest); none if it is missing.
    fn lines(&self, file: &str) -> Result<Vec<(String, String)>, IdentityError> {
        let path = self.dir.join(file);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(IdentityError::Io {
                    role: "CA record",
                    path,
                    source,
                });
            }
        };
        Ok(text
            .lines()
            .filter_map(|l| {
                let (serial, rest) = l.trim().split_once(' ')?;
                Some((serial.to_owned(), rest.trim().to_owned()))
            })
            .collect())
    }

    fn append(&self, file: &str, line: &str) -> Result<(), IdentityError> {
        let path = self.dir.join(file);
        let io = |source| IdentityError::Io {
            role: "CA record",
            path: path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        writeln!(f, "{line}").map_err(io)
    }
}

/// The serial of a certificate, lower-case hex.
pub fn serial_of(cert: &[u8]) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(x.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

/// A serial as `quicmesh certs` writes it: lower-case hex without
/// colons, no leading zero byte; `None` if it is not hex.
fn normalise_serial(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes = hex_bytes(&hex)?;
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    // DER keeps one zero byte before a first byte with its top bit set.
    let start = if bytes[first] & 0x80 != 0 && first > 0 {
        first - 1
    } else {
        first
    };
    Some(bytes[start..].iter().map(|b| format!("{b:02x}")).collect())
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    if hex.is_empty() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `path` by renaming a complete temporary file over it, so a node
/// reloading at that moment reads the old file or the new one, never half.
pub(crate) fn replace_file(
    path: &Path,
    role: &'static str,
    contents: &str,
) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        role,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalise_serial("0A:bc").as_deref(), Some("0abc"));
        assert_eq!(normalise_serial("00ff").as_deref(), Some("00ff"));
        assert_eq!(normalise_serial("0000ff").as_deref(), Some("00ff"));
        assert_eq!(normalise_serial("1").as_deref(), Some("01"));
        assert_eq!(normalise_serial("xyz"), None);
        assert_eq!(normalise_serial(""), None);
    }
}
