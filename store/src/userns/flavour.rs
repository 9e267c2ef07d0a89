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
    pub fn of_store(root: &Path) -> Result<OverlayXattrs, UsernsError> {
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
                // Root's stores stay as they are (no file: trusted).
                let flavour = OverlayXattrs::for_this_process();
                if flavour == OverlayXattrs::User {
                    std::fs::write(&file, "user\n").map_err(|e| {
                        UsernsError::Flavour(format!("cannot write {}: {e}", file.display()))
                    })?;
                }
                Ok(flavour)
            }
            Err(e) => Err(UsernsError::Flavour(format!(
                "cannot read {}: {e}",
                file.display()
            ))),
        }
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
        assert_eq!(
            OverlayXattrs::of_store(dir.path()).unwrap(),
            OverlayXattrs::User
        );
        std::fs::write(dir.path().join(FLAVOUR_FILE), "other\n").unwrap();
        assert!(OverlayXattrs::of_store(dir.path()).is_err());
    }
}
