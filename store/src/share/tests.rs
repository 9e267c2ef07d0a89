use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::identity::{identify, Written, WrittenFile};
use super::index::{self, IndexKey};
use super::{share_layer, Reflink};
use crate::digest::Digest;
use crate::layers::LayerStore;
use crate::meta::Meta;

/// What extraction notes for a file just written at `rel` in `diff`.
fn note(diff: &Path, rel: &str) -> WrittenFile {
    let path = diff.join(rel);
    let data = fs::read(&path).unwrap();
    let file = fs::File::open(&path).unwrap();
    let (st, id) = identify(
        std::os::fd::AsFd::as_fd(&file),
        *blake3::hash(&data).as_bytes(),
    )
    .unwrap();
    WrittenFile {
        path: rel.as_bytes().to_vec(),
        ino: st.st_ino,
        stat: super::identity::StagedStat::of(&st),
        size: st.st_size as u64,
        id,
        holder: None,
        looked_up: None,
    }
}

fn write(diff: &Path, rel: &str, data: &[u8]) {
    let path = diff.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap();
    let t = filetime(1_600_000_000);
    rustix::fs::utimensat(rustix::fs::CWD, &path, &t, rustix::fs::AtFlags::empty()).unwrap();
}

fn filetime(sec: i64) -> rustix::fs::Timestamps {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    layers: LayerStore,
    meta: Meta,
    staged: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
    fs::create_dir_all(dir.path().join("tmp/staged/diff")).unwrap();
    let layers = LayerStore::new(dir.path().join("overlay2"), dir.path().join("tmp"));
    let meta = Meta::open(&dir.path().join("db")).unwrap();
    let staged = dir.path().join("tmp/staged/diff");
    Fixture {
        _dir: dir,
        layers,
        meta,
        staged,
    }
}

/// The sharing step on the layer at `diff`.
fn share(f: &Fixture, diff: &Path, written: Written, skip: &HashSet<Digest>) -> super::Shared {
    share_layer(
        &f.layers,
        &f.meta,
        diff,
        written,
        skip,
        false,
        &Reflink::default(),
    )
    .unwrap()
}

/// Puts a committed layer `chain` holding `files` and indexes it, as an
/// import does.
fn committed_layer(f: &Fixture, chain: &Digest, files: &[(&str, &[u8])]) {
    let diff = f.layers.diff_dir(chain);
    fs::create_dir_all(&diff).unwrap();
    for (rel, data) in files {
        write(&diff, rel, data);
    }
    let written = Written {
        files: files.iter().map(|(rel, _)| note(&diff, rel)).collect(),
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(f, &diff, written, &HashSet::new());
    let mut batch = f.meta.batch();
    index::put(&mut batch, chain, &shared.entries).unwrap();
    batch.commit().unwrap();
}

#[test]
fn names_hash_ignores_order_and_tells_sets_apart() {
    let (a, b) = (b"usr/a".to_vec(), b"usr/b".to_vec());
    assert_eq!(
        index::names_hash(&[a.clone(), b.clone()]),
        index::names_hash(&[b.clone(), a.clone()])
    );
    assert_ne!(
        index::names_hash(std::slice::from_ref(&a)),
        index::names_hash(&[a, b])
    );
}

#[test]
fn identity_tells_metadata_apart() {
    let f = fixture();
    write(&f.staged, "x", b"same bytes");
    write(&f.staged, "y", b"same bytes");
    let (x, y) = (note(&f.staged, "x"), note(&f.staged, "y"));
    assert_eq!(x.id, y.id, "same content, mode, owner, mtime");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(f.staged.join("y"), fs::Permissions::from_mode(0o600)).unwrap();
    let y = note(&f.staged, "y");
    assert_eq!(x.id.content, y.id.content);
    assert_ne!(x.id.meta, y.id.meta, "another mode");
}

/// A staged file equal to a committed layer's becomes its inode; one with
/// other content stays; the staged directory keeps its times; the index
/// lookup finds the holder by key.
#[test]
fn a_staged_file_becomes_the_holders_inode() {
    let f = fixture();
    let held = Digest::of(b"held layer");
    committed_layer(
        &f,
        &held,
        &[("usr/lib/a.so", b"shared bytes"), ("own", b"one")],
    );
    write(&f.staged, "usr/lib/a.so", b"shared bytes");
    write(&f.staged, "own", b"two");
    let dir = f.staged.join("usr/lib");
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &dir,
        &filetime(1_500_000_000),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let written = Written {
        files: vec![note(&f.staged, "usr/lib/a.so"), note(&f.staged, "own")],
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 1);
    assert_eq!(shared.bytes, 12);
    assert_eq!(shared.entries.len(), 2);
    let holder = f.layers.diff_dir(&held).join("usr/lib/a.so");
    let staged = f.staged.join("usr/lib/a.so");
    assert_eq!(
        fs::metadata(&holder).unwrap().ino(),
        fs::metadata(&staged).unwrap().ino()
    );
    assert_ne!(
        fs::metadata(f.layers.diff_dir(&held).join("own"))
            .unwrap()
            .ino(),
        fs::metadata(f.staged.join("own")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(&dir).unwrap().mtime(),
        1_500_000_000,
        "dir time kept"
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("a.so")],
        "no temporary name left"
    );
    // The savings df shows need both layers indexed.
    let mut batch = f.meta.batch();
    index::put(&mut batch, &Digest::of(b"staged"), &shared.entries).unwrap();
    batch.commit().unwrap();
    let key: IndexKey = shared
        .entries
        .iter()
        .find(|(_, p)| p == b"usr/lib/a.so")
        .unwrap()
        .0;
    assert_eq!(
        index::Lookup::new(&f.meta)
            .unwrap()
            .holders(&key)
            .unwrap()
            .len(),
        2
    );
}

/// A holder in `skip` (fsck's damaged layers) is never linked to, and a
/// holder whose file is gone is passed over.
#[test]
fn skipped_and_vanished_holders_are_passed_over() {
    let f = fixture();
    let damaged = Digest::of(b"damaged");
    let gone = Digest::of(b"gone");
    committed_layer(&f, &damaged, &[("f", b"bytes")]);
    committed_layer(&f, &gone, &[("f", b"bytes")]);
    fs::remove_file(f.layers.diff_dir(&gone).join("f")).unwrap();
    write(&f.staged, "f", b"bytes");
    let written = Written {
        files: vec![note(&f.staged, "f")],
        links: Vec::new(),
        ..Default::default()
    };
    let skip: HashSet<Digest> = [damaged].into();
    let shared = share_layer(
        &f.layers,
        &f.meta,
        &f.staged,
        written,
        &skip,
        false,
        &Reflink::default(),
    )
    .unwrap();
    assert_eq!(shared.linked, 0);
    assert_eq!(fs::metadata(f.staged.join("f")).unwrap().nlink(), 1);
}

/// An inode with a name sharing does not know of (its link count says
/// more) is left whole.
#[test]
fn an_inode_with_unknown_names_is_left_alone() {
    let f = fixture();
    let held = Digest::of(b"held");
    committed_layer(&f, &held, &[("f", b"bytes")]);
    write(&f.staged, "f", b"bytes");
    fs::hard_link(f.staged.join("f"), f.staged.join("g")).unwrap();
    let written = Written {
        files: vec![note(&f.staged, "f")],
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0);
    assert!(shared.entries.is_empty());
}

/// A holder whose file has xattrs its index entry does not describe (an
/// entry recorded for another folder, a relabel) is not linked to: the
/// staged file would take on its xattrs.
#[test]
fn a_holder_whose_xattrs_differ_from_its_entry_is_not_linked() {
    let f = fixture();
    let held = Digest::of(b"held");
    committed_layer(&f, &held, &[("f", b"bytes")]);
    let holder = f.layers.diff_dir(&held).join("f");
    rustix::fs::setxattr(
        &holder,
        "user.lstore-test",
        b"added later",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("user xattrs on the test filesystem");
    write(&f.staged, "f", b"bytes");
    let written = Written {
        files: vec![note(&f.staged, "f")],
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0, "linked to a file with other xattrs");
    assert_ne!(
        fs::metadata(&holder).unwrap().ino(),
        fs::metadata(f.staged.join("f")).unwrap().ino()
    );
}

/// IMA/EVM measurements and SELinux labels are the host's: they are no
/// part of a file's identity, other xattrs are.
#[test]
fn host_xattrs_are_no_part_of_the_identity() {
    use super::identity::meta_hash;
    let f = fixture();
    write(&f.staged, "x", b"bytes");
    let st = rustix::fs::stat(f.staged.join("x")).unwrap();
    let plain = meta_hash(&st, &Vec::new());
    for name in ["security.ima", "security.evm", "security.selinux"] {
        let x = vec![(name.as_bytes().to_vec(), b"value".to_vec())];
        assert_eq!(meta_hash(&st, &x), plain, "{name}");
    }
    let acl = vec![(b"system.posix_acl_access".to_vec(), b"value".to_vec())];
    assert_ne!(meta_hash(&st, &acl), plain);
}

/// A record whose inode number is the file's but whose size is not (the
/// inode freed and reused by a later entry of the layer) describes
/// another file: it is neither linked nor indexed.
#[test]
fn a_record_of_another_size_is_stale() {
    let f = fixture();
    let held = Digest::of(b"held");
    committed_layer(&f, &held, &[("f", b"bytes")]);
    write(&f.staged, "f", b"bytes");
    let mut record = note(&f.staged, "f");
    record.size += 1;
    let written = Written {
        files: vec![record],
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0);
    assert!(shared.entries.is_empty());
}

/// An index value that does not decode leaves the layer unshared (its
/// copies kept, its entries still made), never fails it.
#[test]
fn an_unreadable_index_keeps_the_copy() {
    let f = fixture();
    write(&f.staged, "f", b"bytes");
    let record = note(&f.staged, "f");
    let key = IndexKey {
        content: record.id.content,
        meta: record.id.meta,
        names: index::names_hash(&[b"f".to_vec()]),
    };
    let mut raw = key.bytes().to_vec();
    raw.extend_from_slice(Digest::of(b"other").as_bytes());
    let mut batch = f.meta.batch();
    batch
        .put(crate::meta::CF_SHARED_FILES, &raw, &42u64)
        .unwrap();
    batch.commit().unwrap();
    let written = Written {
        files: vec![record],
        links: Vec::new(),
        ..Default::default()
    };
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0);
    assert_eq!(shared.entries.len(), 1);
    assert_eq!(fs::read(f.staged.join("f")).unwrap(), b"bytes");
}

// ---- linking before writing (prelink) ----------------------------------

use crate::oci::Compression;
use crate::unpack::testtar::{self, RawEntry};
use crate::unpack::{unpack_layer_recorded, LayerPosition, Limits};

/// Extracts `tar` as an import does, into `diff` (whose parent is the
/// layer folder), linking small files through the index as it stands now
/// when `prelink`.
fn extract(f: &Fixture, diff: &Path, tar: &[u8], prelink: bool) -> Written {
    fs::create_dir_all(diff).unwrap();
    let prelinker = prelink.then(|| {
        let meta = Meta::open_read_only(&f._dir.path().join("db")).unwrap();
        let p = super::Prelinker::new(meta, f.layers.clone(), None);
        std::sync::Arc::new(p)
    });
    let (_, _, written) = unpack_layer_recorded(
        &mut &tar[..],
        Compression::None,
        diff,
        &Limits::default(),
        LayerPosition::Upper,
        diff.parent().unwrap(),
        prelinker,
    )
    .unwrap();
    written
}

/// A committed layer `chain` extracted from `tar` and indexed, as an
/// import leaves it.
fn extracted_layer(f: &Fixture, chain: &Digest, tar: &[u8]) {
    let diff = f.layers.diff_dir(chain);
    let written = extract(f, &diff, tar, false);
    let shared = share(f, &diff, written, &HashSet::new());
    let mut batch = f.meta.batch();
    index::put(&mut batch, chain, &shared.entries).unwrap();
    batch.commit().unwrap();
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// A store with layer `held` extracted from [`held_tar`] and indexed;
/// returns it with that layer's chain id and the path of its `usr/a`.
fn with_held_layer() -> (Fixture, Digest, std::path::PathBuf) {
    let f = fixture();
    let held = Digest::of(b"held");
    extracted_layer(&f, &held, &held_tar());
    let holder = f.layers.diff_dir(&held).join("usr/a");
    (f, held, holder)
}

fn held_tar() -> Vec<u8> {
    testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::file("usr/a", b"shared bytes"),
        RawEntry::file("usr/b", b"held b"),
    ])
}

/// A small file equal (content, metadata, path) to another layer's is
/// that layer's inode as soon as it is extracted, and the sharing step
/// confirms it and records it; files that differ are written.
#[test]
fn an_equal_file_is_linked_instead_of_written() {
    let (f, _, holder) = with_held_layer();
    let mut newer = RawEntry::file("usr/c", b"shared bytes");
    newer.mtime += 1;
    let tar = testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::file("usr/a", b"shared bytes"),
        RawEntry::file("usr/b", b"other b"),
        newer,
    ]);
    let written = extract(&f, &f.staged, &tar, true);
    let prelinked: Vec<&[u8]> = written
        .files
        .iter()
        .filter(|w| w.holder.is_some())
        .map(|w| w.path.as_slice())
        .collect();
    assert_eq!(prelinked, vec![&b"usr/a"[..]]);
    assert_eq!(
        ino(&f.staged.join("usr/a")),
        ino(&holder),
        "linked while extracted"
    );
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!((shared.linked, shared.bytes), (1, 12));
    assert_eq!(shared.entries.len(), 3, "a, b and c recorded");
    assert_eq!(ino(&f.staged.join("usr/a")), ino(&holder));
    assert_eq!(fs::metadata(&holder).unwrap().nlink(), 2);
    assert_ne!(ino(&f.staged.join("usr/c")), ino(&holder), "other mtime");
    assert_eq!(fs::read(f.staged.join("usr/b")).unwrap(), b"other b");
}

/// A later hardlink entry naming a linked file again would make the
/// holder's inode carry a name its own layer lacks: the file gets an
/// inode of its own (both names), the holder keeps one link.
#[test]
fn a_linked_file_named_again_by_a_hardlink_gets_its_own_inode() {
    let (f, _, holder) = with_held_layer();
    let tar = testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::file("usr/a", b"shared bytes"),
        RawEntry::hardlink("usr/a2", "usr/a"),
    ]);
    let written = extract(&f, &f.staged, &tar, true);
    assert_eq!(fs::metadata(&holder).unwrap().nlink(), 3);
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0);
    let (a, a2) = (f.staged.join("usr/a"), f.staged.join("usr/a2"));
    assert_eq!(ino(&a), ino(&a2));
    assert_ne!(ino(&a), ino(&holder));
    assert_eq!(fs::metadata(&holder).unwrap().nlink(), 1);
    assert_eq!(fs::read(&a).unwrap(), b"shared bytes");
    let (h, s) = (fs::metadata(&holder).unwrap(), fs::metadata(&a).unwrap());
    assert_eq!(
        (h.mode(), h.uid(), h.gid(), h.mtime(), h.mtime_nsec()),
        (s.mode(), s.uid(), s.gid(), s.mtime(), s.mtime_nsec())
    );
    let names: Vec<_> = fs::read_dir(f.staged.join("usr"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary name left: {names:?}");
    assert_eq!(shared.entries.len(), 1, "one inode, two names");
}

/// A holder that left the index meanwhile (gc, or fsck found it changed)
/// is not kept as the file's inode: the file is copied, its content
/// checked; a holder whose content changed fails the layer.
#[test]
fn a_linked_file_whose_holder_left_the_index_is_copied_or_refused() {
    let (f, held, holder) = with_held_layer();
    let tar = testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::file("usr/a", b"shared bytes"),
    ]);
    let written = extract(&f, &f.staged, &tar, true);
    let mut batch = f.meta.batch();
    index::drop_layer(&f.meta, &mut batch, &held).unwrap();
    batch.commit().unwrap();
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_eq!(shared.linked, 0);
    assert_ne!(ino(&f.staged.join("usr/a")), ino(&holder));
    assert_eq!(fs::read(f.staged.join("usr/a")).unwrap(), b"shared bytes");
    assert_eq!(shared.entries.len(), 1);

    // Again, the holder's content changed behind the store's back (same
    // size and times) before it left the index.
    let again = f.layers.diff_dir(&Digest::of(b"again"));
    let held = Digest::of(b"held again");
    extracted_layer(&f, &held, &held_tar());
    let holder = f.layers.diff_dir(&held).join("usr/a");
    let written = extract(&f, &again, &tar, true);
    assert_eq!(ino(&again.join("usr/a")), ino(&holder));
    let before = fs::metadata(&holder).unwrap();
    fs::write(&holder, b"SHARED BYTES").unwrap();
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: before.atime(),
            tv_nsec: before.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: before.mtime(),
            tv_nsec: before.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &holder, &t, rustix::fs::AtFlags::empty()).unwrap();
    let mut batch = f.meta.batch();
    index::drop_layer(&f.meta, &mut batch, &held).unwrap();
    batch.commit().unwrap();
    let err = share_layer(
        &f.layers,
        &f.meta,
        &again,
        written,
        &HashSet::new(),
        false,
        &Reflink::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("fsck"), "{err}");
}

/// With no batch since the extraction's copy of the index (the database's
/// generation unchanged), a linked file is kept without looking its holder
/// up again, and a file looked up and not found is not looked up again:
/// an entry that appeared meanwhile is found only when the caller says the
/// index changed.
#[test]
fn an_unchanged_index_is_not_searched_again() {
    let (f, _, _) = with_held_layer();
    let tar = testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::file("usr/a", b"shared bytes"),
        RawEntry::file("usr/new", b"new bytes"),
    ]);
    let first = f.layers.diff_dir(&Digest::of(b"first"));
    let second = f.layers.diff_dir(&Digest::of(b"second"));
    let written = [
        extract(&f, &first, &tar, true),
        extract(&f, &second, &tar, true),
    ];
    for w in &written {
        let new = w.files.iter().find(|w| w.path == b"usr/new").unwrap();
        assert_eq!(new.looked_up, Some(new.id.meta), "looked up, not found");
        assert!(new.holder.is_none());
    }
    // Now another layer holding usr/new is indexed.
    extracted_layer(&f, &Digest::of(b"other"), &tar);
    let other = f.layers.diff_dir(&Digest::of(b"other")).join("usr/new");
    let [w1, w2] = written;
    let skip = HashSet::new();
    let trusted = share_layer(
        &f.layers,
        &f.meta,
        &first,
        w1,
        &skip,
        true,
        &Reflink::default(),
    );
    let trusted = trusted.unwrap();
    assert_eq!(
        trusted.linked, 1,
        "usr/a kept as linked, usr/new not looked up"
    );
    assert_ne!(ino(&first.join("usr/new")), ino(&other));
    let searched = share(&f, &second, w2, &skip);
    assert_eq!(searched.linked, 2, "usr/a confirmed, usr/new found");
    assert_eq!(ino(&second.join("usr/new")), ino(&other));
}

#[test]
fn the_index_is_unchanged_only_at_the_same_generation() {
    let f = fixture();
    let open = || Meta::open_read_only(&f._dir.path().join("db")).unwrap();
    let p = super::Prelinker::new(open(), f.layers.clone(), Some("a".into()));
    assert!(p.unchanged_at(Some("a")));
    assert!(!p.unchanged_at(Some("b")));
    assert!(!p.unchanged_at(None));
    let p = super::Prelinker::new(open(), f.layers.clone(), None);
    assert!(
        !p.unchanged_at(None),
        "no generation known: looked up again"
    );
}

/// An empty index is never searched: files are written, and noted as
/// looked up.
#[test]
fn an_empty_index_links_nothing() {
    let f = fixture();
    let tar = testtar::archive(&[RawEntry::file("a", b"bytes")]);
    let written = extract(&f, &f.staged, &tar, true);
    assert_eq!(written.files.len(), 1);
    assert!(written.files[0].holder.is_none());
    assert_eq!(written.files[0].looked_up, Some(written.files[0].id.meta));
}

/// A file and a hardlink to it are one inode of two names, linked whole to
/// a holder with the same two names: found from what extraction noted when
/// no name was replaced, from the disk when one was, and after the copy a
/// file linked while extracted needs once the hardlink names it.
#[test]
fn a_file_and_its_hardlink_are_linked_whole_however_found() {
    let f = fixture();
    let pair = [
        RawEntry::dir("usr"),
        RawEntry::file("usr/x", b"pair bytes"),
        RawEntry::hardlink("usr/y", "usr/x"),
    ];
    let held = Digest::of(b"held pair");
    extracted_layer(&f, &held, &testtar::archive(&pair));
    let holder = f.layers.diff_dir(&held).join("usr/x");
    let mut replaced = vec![RawEntry::dir("usr"), RawEntry::file("usr/x", b"old")];
    replaced.extend_from_slice(&pair[1..]);
    let cases = [
        ("intact", testtar::archive(&pair), false, true),
        ("replaced", testtar::archive(&replaced), false, false),
        ("prelinked", testtar::archive(&pair), true, true),
    ];
    for (what, tar, prelink, intact) in cases {
        let diff = f.layers.diff_dir(&Digest::of(what.as_bytes()));
        let written = extract(&f, &diff, &tar, prelink);
        assert_eq!(written.intact, intact, "{what}");
        let shared = share(&f, &diff, written, &HashSet::new());
        assert_eq!(shared.linked, 1, "{what}");
        assert_eq!(ino(&diff.join("usr/x")), ino(&holder), "{what}");
        assert_eq!(ino(&diff.join("usr/y")), ino(&holder), "{what}");
        assert_eq!(fs::read(diff.join("usr/y")).unwrap(), b"pair bytes");
    }
    assert_eq!(fs::metadata(&holder).unwrap().nlink(), 2 + 2 * 3);
}

/// A linked file named again by a hardlink elsewhere, then replaced at its
/// own path by a later entry: the hardlink's name still holds the other
/// layer's inode, and gets a copy of its own (the holder keeps one link).
#[test]
fn a_linked_inode_left_only_under_a_hardlink_name_is_copied() {
    let (f, _, holder) = with_held_layer();
    let tar = testtar::archive(&[
        RawEntry::dir("usr"),
        RawEntry::dir("etc"),
        RawEntry::file("usr/a", b"shared bytes"),
        RawEntry::hardlink("etc/y", "usr/a"),
        RawEntry::file("usr/a", b"replaced"),
    ]);
    let written = extract(&f, &f.staged, &tar, true);
    assert!(!written.intact);
    assert_eq!(
        ino(&f.staged.join("etc/y")),
        ino(&holder),
        "linked while extracted"
    );
    let shared = share(&f, &f.staged, written, &HashSet::new());
    assert_ne!(ino(&f.staged.join("etc/y")), ino(&holder));
    assert_eq!(fs::read(f.staged.join("etc/y")).unwrap(), b"shared bytes");
    assert_eq!(fs::read(f.staged.join("usr/a")).unwrap(), b"replaced");
    assert_eq!(fs::metadata(&holder).unwrap().nlink(), 1);
    let paths: HashSet<&[u8]> = shared.entries.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(paths, [&b"etc/y"[..], &b"usr/a"[..]].into(), "both indexed");
    assert_eq!(shared.linked, 0);
}
