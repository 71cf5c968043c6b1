//! The cluster cookie: where it comes from and how it is kept.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::IdentityError;

/// The environment variable a cookie is read from.
pub const COOKIE_ENV: &str = "QUICMESH_COOKIE";

/// The cluster's shared secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

impl Cookie {
    /// A cookie from a string; empty cookies are refused. Surrounding
    /// white space is trimmed (cookie files often end with a newline).
    pub fn new(s: impl AsRef<str>) -> Result<Self, IdentityError> {
        let s = s.as_ref().trim();
        if s.is_empty() {
            return Err(IdentityError::EmptyCookie);
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh random cookie of 256 bits, hex encoded.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        // SystemRandom only fails when the OS has no entropy source at all.
        if SystemRandom::new().fill(&mut bytes).is_err() {
            panic!("the operating system's random number generator failed");
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The cookie the way Erlang finds one, the most explicit first: the
    /// file at `path` if one is named (it must exist: a mistyped path
    /// would otherwise become a new cluster's cookie); else
    /// `QUICMESH_COOKIE` if set; else `~/.quicmesh.cookie`, created with a
    /// random cookie and mode 0600 when missing.
    pub fn from_env_or_file(path: Option<&Path>) -> Result<Self, IdentityError> {
        if let Some(path) = path {
            return Self::load(path);
        }
        if let Ok(v) = std::env::var(COOKIE_ENV) {
            return Self::new(v);
        }
        Self::load_or_create(&default_cookie_path()?)
    }

    /// Reads the cookie file at `path`, which must exist, refusing one
    /// readable by group or others.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(IdentityError::NoCookieFile {
                    path: path.to_owned(),
                })
            }
            _ => Self::load_or_create(path),
        }
    }

    /// Reads the cookie file at `path`, refusing one readable by group or
    /// others; creates it (mode 0600, 256 random bits) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            role: "cookie file",
            path: path.to_owned(),
            source,
        };
        match fs::metadata(path) {
            Ok(meta) => {
                if let Some(mode) = open_to_others(&meta) {
                    return Err(IdentityError::CookieFileOpen {
                        path: path.to_owned(),
                        mode,
                    });
                }
                Self::new(fs::read_to_string(path).map_err(io)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cookie = Self::random();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(cookie.0.as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "created a new cookie file");
                Ok(cookie)
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// The permission bits of a secret's file if group or others may read or
/// write it (such a file is refused), else `None`.
pub(crate) fn open_to_others(meta: &fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// `~/.quicmesh.cookie`.
pub fn default_cookie_path() -> Result<PathBuf, IdentityError> {
    let home = std::env::var_os("HOME").ok_or(IdentityError::NoHome)?;
    Ok(PathBuf::from(home).join(".quicmesh.cookie"))
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cookie");
        let c1 = Cookie::load_or_create(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(c1.expose().len(), 64);
        let c2 = Cookie::load_or_create(&p).unwrap();
        assert_eq!(c1, c2);
    }

    #[test]
    fn a_named_cookie_file_must_exist_and_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("typo");
        let err = Cookie::from_env_or_file(Some(&p)).unwrap_err();
        assert!(matches!(err, IdentityError::NoCookieFile { .. }), "{err}");
        assert!(!p.exists(), "nothing is created at a named path");
        fs::write(&p, "from the file").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        // The environment is this process's; a named file never reads it.
        assert_eq!(
            Cookie::from_env_or_file(Some(&p)).unwrap().expose(),
            b"from the file"
        );
    }

    #[test]
    fn open_cookie_file_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cookie");
        fs::write(&p, "secret\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Cookie::load_or_create(&p).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::CookieFileOpen { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Cookie::load_or_create(&p).unwrap().expose(), b"secret");
    }

    #[test]
    fn empty_refused_and_debug_redacted() {
        assert!(matches!(
            Cookie::new("  \n"),
            Err(IdentityError::EmptyCookie)
        ));
        assert_eq!(
            format!("{:?}", Cookie::new("s3cret").unwrap()),
            "Cookie(<redacted>)"
        );
    }
}
