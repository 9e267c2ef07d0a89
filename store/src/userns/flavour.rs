//! How a store marks overlay metadata, and how owners are kept when they
//! cannot be set.
//!
//! Root's stores use `trusted.overlay.*` xattrs; a user namespace cannot
//! set those, so a user's store uses `user.overlay.*` and its mounts pass
//! `userxattr`. A user's store says so in `<root>/overlay-xattrs`
//! (`user`); root's stores have no such file (`trusted`).
//!
//! Each open `Store` keeps its own flavour (a process may hold stores of
//! both kinds) and hands it to extraction, mounts and commits.

use std::path::Path;

use super::UsernsError;

/// The file, under the store root, that names the store's flavour.
pub const FLAVOUR_FILE: &str = "overlay-xattrs";

/// Where overlay's own xattrs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattrs {
    /// `trusted.overlay.*`: stores made by root.
    Trusted,
    /// `user.overlay.*` (`userxattr` mounts): stores made in a user namespace.
    User,
}

impl OverlayXattrs {
    /// The flavour this process can write: `user` inside a user namespace.
    pub fn for_this_process() -> OverlayXattrs {
        if super::in_user_namespace() || !rustix::process::geteuid().is_root() {
            OverlayXattrs::User
        } else {
            OverlayXattrs::Trusted
        }
    }

    /// The opaque-directory xattr's name.
    pub fn opaque(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.opaque",
            OverlayXattrs::User => "user.overlay.opaque",
        }
    }

    /// The prefix of overlay's xattrs (`trusted.overlay.` or `user.overlay.`).
    pub fn prefix(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.",
            OverlayXattrs::User => "user.overlay.",
        }
    }

    /// The store's recorded flavour; a new store records this process's.
    /// Host root may not use a user's store: it would write files owned
    /// by the host's uid 0 (setuid ones included) into a tree the user
    /// owns.
    pub fn of_store(root: &Path) -> Result<OverlayXattrs, UsernsError> {
        let flavour = Self::recorded(root)?;
        if flavour == OverlayXattrs::User && super::is_host_root() {
            return Err(UsernsError::Flavour(format!(
                "{} is a user's store: run lstore as that user, not as root",
                root.display()
            )));
        }
        Ok(flavour)
    }

    fn recorded(root: &Path) -> Result<OverlayXattrs, UsernsError> {
        let file = root.join(FLAVOUR_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => match text.trim() {
                "trusted" => Ok(OverlayXattrs::Trusted),
                "user" => Ok(OverlayXattrs::User),
                other => Err(UsernsError::Flavour(format!(
                    "{}: unknown flavour {other:?} (expected trusted or user)",
                    file.display()
                ))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A store with a database but no file is root's, from
                // before flavours were recorded: it stays trusted.
                let flavour = OverlayXattrs::for_this_process();
                if flavour == OverlayXattrs::User && is_new_store(root) {
                    return record_user_flavour(root);
                }
                Ok(OverlayXattrs::Trusted)
            }
            Err(e) => Err(UsernsError::Flavour(format!(
                "cannot read {}: {e}",
                file.display()
            ))),
        }
    }
}

/// No database yet: nothing has been stored in this root.
fn is_new_store(root: &Path) -> bool {
    std::fs::read_dir(root.join("db")).map_or(true, |mut d| d.next().is_none())
}

/// Writes `user` into the flavour file, whole or not at all: the full file
/// is linked into place, so a concurrent first open reads either nothing
/// or `user`, never an empty file.
fn record_user_flavour(root: &Path) -> Result<OverlayXattrs, UsernsError> {
    let file = root.join(FLAVOUR_FILE);
    let tmp = root.join(format!("{FLAVOUR_FILE}.{}.tmp", std::process::id()));
    let fail =
        |e: std::io::Error| UsernsError::Flavour(format!("cannot write {}: {e}", file.display()));
    std::fs::write(&tmp, "user\n").map_err(fail)?;
    let linked = std::fs::hard_link(&tmp, &file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(OverlayXattrs::User),
        // Another first open won: its file is complete.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OverlayXattrs::recorded(root),
        Err(e) => Err(fail(e)),
    }
}

/// containers/storage's xattr for the owner and mode a file should have
/// (what fuse-overlayfs and `ignore_chown_errors` use).
pub const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// A file's owner, mode and type as `user.containers.override_stat`
/// holds them: `UID:GID:MODE:TYPE`, the mode in four octal digits
/// (permissions and setuid/setgid/sticky), the type `file`, `dir`,
/// `symlink`, `pipe`, `socket`, `block-MAJ-MIN` or `char-MAJ-MIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideStat {
    /// The owner.
    pub uid: u32,
    /// The group.
    pub gid: u32,
    /// Permission and special bits (07777).
    pub mode: u32,
    /// The type word (`file` when the value has none).
    pub kind: String,
}

impl OverrideStat {
    /// The xattr value.
    pub fn format(&self) -> String {
        format!(
            "{}:{}:{:04o}:{}",
            self.uid,
            self.gid,
            self.mode & 0o7777,
            self.kind
        )
    }

    /// Reads a value; None when it does not parse.
    pub fn parse(value: &[u8]) -> Option<OverrideStat> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
        let kind = parts.next().unwrap_or("file").to_string();
        Some(OverrideStat {
            uid,
            gid,
            mode: mode & 0o7777,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_stat_round_trips_in_containers_storage_format() {
        let s = OverrideStat {
            uid: 1000,
            gid: 42,
            mode: 0o4755,
            kind: "file".into(),
        };
        assert_eq!(s.format(), "1000:42:4755:file");
        assert_eq!(OverrideStat::parse(b"1000:42:4755:file"), Some(s));
        let dir = OverrideStat::parse(b"0:0:0700").unwrap();
        assert_eq!((dir.mode, dir.kind.as_str()), (0o700, "file"));
        assert_eq!(OverrideStat::parse(b"x:0:0700"), None);
        assert_eq!(OverrideStat::parse(b"0:0"), None);
    }

    #[test]
    fn a_store_keeps_the_flavour_it_recorded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLAVOUR_FILE), "user\n").unwrap();
        assert_eq!(recorded_or_trusted(dir.path()), OverlayXattrs::User);
        std::fs::write(dir.path().join(FLAVOUR_FILE), "other\n").unwrap();
        assert!(OverlayXattrs::of_store(dir.path()).is_err());
    }

    #[test]
    fn host_root_refuses_a_users_store() {
        if !super::super::is_host_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLAVOUR_FILE), "user\n").unwrap();
        let err = OverlayXattrs::of_store(dir.path()).unwrap_err().to_string();
        assert!(err.contains("run lstore as that user"), "{err}");
    }

    #[test]
    fn only_a_new_store_records_a_flavour() {
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("db")).unwrap();
        std::fs::write(old.path().join("db/CURRENT"), "MANIFEST-000001\n").unwrap();
        assert_eq!(recorded_or_trusted(old.path()), OverlayXattrs::Trusted);
        assert!(!old.path().join(FLAVOUR_FILE).exists());
        let new = tempfile::tempdir().unwrap();
        let first = record_user_flavour(new.path()).unwrap();
        let second = record_user_flavour(new.path()).unwrap();
        assert_eq!((first, second), (OverlayXattrs::User, OverlayXattrs::User));
        assert_eq!(
            std::fs::read_to_string(new.path().join(FLAVOUR_FILE)).unwrap(),
            "user\n"
        );
        let leftovers = std::fs::read_dir(new.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }

    fn recorded_or_trusted(root: &Path) -> OverlayXattrs {
        OverlayXattrs::recorded(root).unwrap()
    }
}
