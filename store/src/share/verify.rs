//! `fsck`'s view of the content index: does each entry's file still have
//! the identity it was indexed under? Each inode is read once, however
//! many layers hold it, the inodes in parallel. No file stays open
//! between the two phases: a store holds far more inodes than a process
//! may have open files.

use std::collections::HashMap;
use std::io::Read;

use rayon::prelude::*;
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::identity::{identify, FileIdentity};
use super::index::Entry;
use super::{find_holder, means_missing};
use crate::error::{Error, Result};
use crate::layers::LayerStore;

/// What became of an indexed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryState {
    /// Its layer's folder is not there (a missing layer, or an entry left
    /// behind by one removed).
    NoFolder,
    /// The file is gone or is no regular file any more.
    Missing,
    /// The file, as inode (dev, ino), and how it compares with its entry.
    Inode {
        dev: u64,
        ino: u64,
        fidelity: Fidelity,
    },
}

/// An indexed file against its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fidelity {
    Intact,
    /// Same content, other metadata (mode, owner, xattrs): the entry is
    /// stale; the file holds the metadata hash given now.
    MetaChanged([u8; 16]),
    /// Other content, or another file by now.
    ContentChanged,
}

/// Hashes the file `entry` names and takes its identity again; `None`
/// when it is gone or is another inode than `ino` by now.
fn identity_of(
    layers: &LayerStore,
    entry: &Entry,
    ino: u64,
) -> std::result::Result<Option<FileIdentity>, Errno> {
    let Some(h) = find_holder(layers, entry)? else {
        return Ok(None);
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rfs::openat(&h.parent, h.name.as_slice(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if means_missing(e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut file = std::fs::File::from(fd);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let (st, id) = identify(
        std::os::fd::AsFd::as_fd(&file),
        *hasher.finalize().as_bytes(),
    )?;
    Ok((st.st_ino == ino).then_some(id))
}

/// The error of reading an indexed file: fsck's own, not damage.
fn read_error(entry: &Entry, e: Errno) -> Error {
    Error::io(
        format!(
            "read {:?} of layer {} (content index check)",
            String::from_utf8_lossy(&entry.path),
            entry.chain
        ),
        e.into(),
    )
}

/// The state of every entry, in the order given.
pub(crate) fn verify(layers: &LayerStore, entries: &[Entry]) -> Result<Vec<EntryState>> {
    let mut states: Vec<EntryState> = Vec::with_capacity(entries.len());
    // (dev, ino) -> (the first entry naming it, all the entries naming it)
    let mut inodes: HashMap<(u64, u64), (usize, Vec<usize>)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if !layers.diff_dir(&entry.chain).is_dir() {
            states.push(EntryState::NoFolder);
            continue;
        }
        match find_holder(layers, entry).map_err(|e| read_error(entry, e))? {
            None => states.push(EntryState::Missing),
            Some(h) => {
                let key = (h.st.st_dev, h.st.st_ino);
                states.push(EntryState::Inode {
                    dev: key.0,
                    ino: key.1,
                    fidelity: Fidelity::ContentChanged,
                });
                inodes.entry(key).or_insert((i, Vec::new())).1.push(i);
            }
        }
    }
    let checked: Vec<Result<(Option<FileIdentity>, Vec<usize>)>> = inodes
        .into_par_iter()
        .map(|((_, ino), (first, users))| {
            let entry = &entries[first];
            let id = identity_of(layers, entry, ino).map_err(|e| read_error(entry, e))?;
            Ok((id, users))
        })
        .collect();
    for r in checked {
        let (id, users) = r?;
        for i in users {
            let key = &entries[i].key;
            let fidelity = match id {
                Some(id) if id.content != key.content => Fidelity::ContentChanged,
                Some(id) if id.meta != key.meta => Fidelity::MetaChanged(id.meta),
                Some(_) => Fidelity::Intact,
                None => Fidelity::ContentChanged,
            };
            if let EntryState::Inode { fidelity: slot, .. } = &mut states[i] {
                *slot = fidelity;
            }
        }
    }
    Ok(states)
}
