//! `fsck`'s view of the content index: does each entry's file still have
//! the identity it was indexed under? Each inode is read once, however
//! many layers hold it, the inodes in parallel.

use std::collections::HashMap;
use std::io::Read;

use rayon::prelude::*;
use rustix::fs::{self as rfs, Mode, OFlags};

use super::identity::{identify, FileIdentity};
use super::index::Entry;
use super::{open_holder, HolderFile};
use crate::layers::LayerStore;

/// What became of an indexed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryState {
    /// Its layer's folder is not there (a missing layer, or an entry left
    /// behind by one removed).
    NoFolder,
    /// The file is gone or is no regular file any more.
    Missing,
    /// The file, as inode (dev, ino), whose identity is as indexed or not.
    Inode { dev: u64, ino: u64, intact: bool },
}

/// Hashes the file a holder names and takes its identity again.
fn identity_of(h: &HolderFile) -> Option<FileIdentity> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rfs::openat(&h.parent, h.name.as_slice(), flags, Mode::empty()).ok()?;
    let mut file = std::fs::File::from(fd);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let (st, id) = identify(
        std::os::fd::AsFd::as_fd(&file),
        *hasher.finalize().as_bytes(),
    )
    .ok()?;
    (st.st_ino == h.st.st_ino).then_some(id)
}

/// The state of every entry, in the order given.
pub(crate) fn verify(layers: &LayerStore, entries: &[Entry]) -> Vec<EntryState> {
    let mut states: Vec<EntryState> = Vec::with_capacity(entries.len());
    // (dev, ino) -> (a holder to read it through, the entries naming it)
    let mut inodes: HashMap<(u64, u64), (HolderFile, Vec<usize>)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if !layers.diff_dir(&entry.chain).is_dir() {
            states.push(EntryState::NoFolder);
            continue;
        }
        match open_holder(layers, entry) {
            None => states.push(EntryState::Missing),
            Some(h) => {
                let key = (h.st.st_dev, h.st.st_ino);
                states.push(EntryState::Inode {
                    dev: key.0,
                    ino: key.1,
                    intact: false,
                });
                inodes.entry(key).or_insert((h, Vec::new())).1.push(i);
            }
        }
    }
    let checked: Vec<(Option<FileIdentity>, Vec<usize>)> = inodes
        .into_par_iter()
        .map(|(_, (h, users))| (identity_of(&h), users))
        .collect();
    for (id, users) in checked {
        for i in users {
            let key = &entries[i].key;
            let intact = id.is_some_and(|id| id.content == key.content && id.meta == key.meta);
            if let EntryState::Inode { intact: slot, .. } = &mut states[i] {
                *slot = intact;
            }
        }
    }
    states
}
