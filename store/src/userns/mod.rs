//! Running as a user without root, like rootless podman: the store is used
//! from inside a user namespace and a mount namespace where the user is
//! uid 0 and their subordinate ids (`/etc/subuid`, `/etc/subgid`) are
//! 1..=N, so layers keep every owner as a mapped id.
//!
//! The namespaces are held by a pause process per user (its pid in
//! `$XDG_RUNTIME_DIR/lstore/pause.pid`), which every command joins: a
//! `lstore mount` made by one command is seen by the next and by
//! `lstore unshare CMD`. Without subordinate ids only the user's own id is
//! mapped (to 0); a layer with other owners then fails, or keeps them in
//! `user.containers.override_stat` with `--ignore-chown-errors`.

pub mod flavour;
pub mod idmap;
mod pause;

use std::ffi::OsString;
use std::path::Path;

pub use flavour::{OverlayXattrs, OverrideStat, OVERRIDE_STAT_XATTR};

/// Why the user namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// Making, mapping or joining the namespaces failed.
    #[error("user namespace: {0}")]
    Setup(String),
    /// The store's overlay xattr flavour cannot be read or recorded.
    #[error("{0}")]
    Flavour(String),
    /// The command given to `unshare` cannot be run.
    #[error("cannot run {program}: {reason}")]
    Command {
        /// The program named.
        program: String,
        /// Why it did not start.
        reason: String,
    },
}

/// Whether this process is in a user namespace other than the first one
/// (its uid map is not the identity over every id).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// Root on the host: not a user, not uid 0 of a user namespace.
pub fn is_host_root() -> bool {
    rustix::process::geteuid().is_root() && !in_user_namespace()
}

/// Whether a command that uses the store must first enter the user's
/// namespace: any user but uid 0 (host root, or already inside).
pub fn needs_entry() -> bool {
    !rustix::process::geteuid().is_root()
}

/// Joins the user's pause process namespaces, starting it first when it
/// is not running (or was made with other id ranges). Call it while the
/// process has one thread; the working directory is kept.
pub fn enter() -> Result<(), UsernsError> {
    pause::join_or_start()
}

/// Whether the namespace maps ids besides the user's own (0 inside).
pub fn has_subordinate_ids() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.lines().any(|l| l.split_whitespace().next() != Some("0")))
        .unwrap_or(false)
}

/// What to do when a layer's file has an owner the namespace does not map.
pub fn unmapped_owner_fix(uid: u32, gid: u32) -> String {
    format!(
        "owner {uid}:{gid} is not mapped in this user's namespace: {} \
         or store the owners in xattrs with --ignore-chown-errors",
        add_subordinate_ids()
    )
}

/// The same for a symlink or special file, whose owner cannot go to an
/// xattr (the kernel takes `user.*` xattrs only on files and directories).
pub fn owner_without_xattr_fix(uid: u32, gid: u32, kind: &str) -> String {
    format!(
        "owner {uid}:{gid} of a {kind} is not mapped in this user's namespace and cannot \
         be kept in an xattr: {}",
        add_subordinate_ids()
    )
}

fn add_subordinate_ids() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "USER".into());
    format!(
        "add subordinate ids (as root: usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 {user})"
    )
}

/// Runs `command` (the user's shell when empty) inside the namespace, with
/// `LSTORE_ROOT` set to `root`; returns its exit code (128 + the signal
/// that ended it, like a shell).
pub fn run_inside(command: &[OsString], root: &Path) -> Result<i32, UsernsError> {
    use std::os::unix::process::ExitStatusExt;
    let shell: OsString = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
    let (program, args) = match command.split_first() {
        Some((p, a)) => (p.clone(), a),
        None => (shell, &[][..]),
    };
    let status = std::process::Command::new(&program)
        .args(args)
        .env("LSTORE_ROOT", root)
        .status()
        .map_err(|e| UsernsError::Command {
            program: program.to_string_lossy().into_owned(),
            reason: e.to_string(),
        })?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
