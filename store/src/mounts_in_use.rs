//! Layers that live overlay mounts use, read from the kernel's mount
//! tables: podman's and containerd's mounts, lstore's own, and any made by
//! hand. `rmi` and `gc` keep those layer folders (and `fsck` leaves them
//! alone) until they are unmounted.
//!
//! Every mount namespace is looked at: `/proc/self/mountinfo` first, then
//! one `/proc/<pid>/mountinfo` per other namespace found under
//! `/proc/*/ns/mnt` (best effort: processes come and go, and a namespace
//! no process is in is not seen). Of each `overlay` mount, the lower dirs
//! (`lowerdir=a:b`, repeated `lowerdir+=`, `datadir+=`) and the upper and
//! work dirs are resolved, symlinks followed, and a path that lands in
//! `overlay2/<chain-hex>/` names that layer. A path whose target is gone is
//! resolved as far as it exists, so a short link `l/<short>` still names
//! its layer after the folder went.
//!
//! Limits: paths are resolved in lstore's own mount namespace, so a mount
//! made inside a different root (a chroot, a container's pivot_root) is
//! seen only where its paths name the same directories here. A relative
//! lower dir (overlay resolves it against the mounting process's working
//! dir, which the mount table does not keep) cannot be resolved, and names
//! no layer: not even `l/<short>`, for short ids follow from chain ids, so
//! another store's mount would name the same link. (lstore's own mounts,
//! which use such paths, are kept through their records in `mounts/`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Layers under live overlay mounts, each with one mount point that uses
/// it (as that mount's namespace names it). `overlay2` is the store's
/// layer folder root.
pub(crate) fn layers_in_use(overlay2: &Path) -> BTreeMap<Digest, PathBuf> {
    layers_in_tables(&mount_tables(Path::new("/proc")), overlay2)
}

/// The layers the overlay mounts of these mount tables use.
fn layers_in_tables(tables: &[Vec<u8>], overlay2: &Path) -> BTreeMap<Digest, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(root) = fs::canonicalize(overlay2) else {
        return out;
    };
    // Many mounts share lower dirs: resolve each path once.
    let mut dirs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for table in tables {
        for m in overlay_mounts(table) {
            for d in m.dirs {
                dirs.entry(d).or_insert_with(|| m.mount_point.clone());
            }
        }
    }
    let mut seen = Lookups::default();
    for (dir, mount_point) in dirs {
        if let Some(chain) = layer_of(&dir, &root, &mut seen) {
            out.entry(chain).or_insert(mount_point);
        }
    }
    out
}

/// The mount table of each mount namespace that a process under `proc`
/// is in, read once per namespace (the caller's own first).
fn mount_tables(proc: &Path) -> Vec<Vec<u8>> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut tables = Vec::new();
    let pids = fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.as_bytes().iter().all(u8::is_ascii_digit));
    for pid in std::iter::once(OsString::from("self")).chain(pids) {
        let dir = proc.join(&pid);
        // The namespace file's inode names the namespace.
        let Ok(ns) = fs::metadata(dir.join("ns/mnt")) else {
            continue;
        };
        let id = (ns.dev(), ns.ino());
        if seen.contains(&id) {
            continue;
        }
        // A process that has just gone leaves the namespace to its peers.
        if let Ok(table) = fs::read(dir.join("mountinfo")) {
            seen.insert(id);
            tables.push(table);
        }
    }
    tables
}

/// The mount table of mount namespace `ns` (its `ns/mnt` inode), read
/// through a process under `proc` that is in it; None when no process is.
pub(crate) fn namespace_table(proc: &Path, ns: u64) -> Option<Vec<u8>> {
    fs::read_dir(proc)
        .ok()?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.as_bytes().iter().all(u8::is_ascii_digit))
        .map(|pid| proc.join(pid))
        .filter(|dir| fs::metadata(dir.join("ns/mnt")).is_ok_and(|m| m.ino() == ns))
        // A process that has just gone leaves the namespace to its peers.
        .find_map(|dir| fs::read(dir.join("mountinfo")).ok())
}

/// One overlay mount of a mount table.
#[derive(Debug, PartialEq)]
struct OverlayMount {
    mount_point: PathBuf,
    /// Lower, data, upper and work dirs, as given when it was mounted.
    dirs: Vec<PathBuf>,
}

/// The overlay mounts of a `mountinfo` table.
fn overlay_mounts(table: &[u8]) -> Vec<OverlayMount> {
    table
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            // id parent dev root mount-point options [optional…] - type source super-options
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let dash = 6 + fields.get(6..)?.iter().position(|f| *f == b"-")?;
            if *fields.get(dash + 1)? != b"overlay" {
                return None;
            }
            Some(OverlayMount {
                mount_point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
                dirs: overlay_dirs(fields.get(dash + 3)?),
            })
        })
        .collect()
}

/// The directories an overlay's super options name. The kernel shows each
/// value as it was given, with `,`, space, tab, newline and `\` in octal
/// (`\054`); in `lowerdir`, `upperdir` and `workdir` a `\` escapes the next
/// character (`\:` a colon in a path), while `lowerdir+` and `datadir+`
/// take a path verbatim.
fn overlay_dirs(options: &[u8]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for opt in options.split(|b| *b == b',') {
        let opt = unescape(opt);
        let Some(eq) = opt.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&opt[..eq], &opt[eq + 1..]);
        match key {
            b"lowerdir" => dirs.extend(split_lowerdir(value)),
            b"lowerdir+" | b"datadir+" => dirs.push(path(value.to_vec())),
            b"upperdir" | b"workdir" => dirs.push(path(unescape_backslash(value))),
            _ => {}
        }
    }
    dirs
}

fn path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

/// The paths of a legacy `lowerdir` value: split at unescaped colons (two
/// mark the data-only layers), each then unescaped.
fn split_lowerdir(value: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => current.extend(bytes.next()),
            b':' => out.push(std::mem::take(&mut current)),
            _ => current.push(b),
        }
    }
    out.push(current);
    out.into_iter()
        .filter(|p| !p.is_empty())
        .map(path)
        .collect()
}

/// Drops each `\` and keeps the character after it, as overlay does.
fn unescape_backslash(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            out.extend(bytes.next());
        } else {
            out.push(b);
        }
    }
    out
}

/// Undoes the octal escapes (`\040` for a space) of a mountinfo field.
pub(crate) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let octal = field.get(i + 1..i + 4).and_then(|d| {
                d.iter().try_fold(0u16, |v, c| {
                    (b'0'..=b'7')
                        .contains(c)
                        .then(|| v * 8 + u16::from(c - b'0'))
                })
            });
            if let Some(v) = octal.and_then(|v| u8::try_from(v).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The layer whose folder `dir` lies in, if any; `root` is the canonical
/// path of `overlay2/`.
fn layer_of(dir: &Path, root: &Path, seen: &mut Lookups) -> Option<Digest> {
    let resolved = resolve(dir, seen)?;
    let first = resolved.strip_prefix(root).ok()?.components().next()?;
    Digest::from_hex(first.as_os_str().to_str()?)
}

/// `path` with every symlink followed, as the kernel would resolve it; from
/// the first component that does not exist on, the rest is taken as
/// written (like `realpath -m`), so a dangling link still says where it
/// pointed. None for a relative path or a symlink loop.
fn resolve(path: &Path, seen: &mut Lookups) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut links = 0;
    let mut missing = false;
    while let Some(name) = todo.pop() {
        if name == ".." {
            out.pop();
            continue;
        }
        out.push(&name);
        if missing {
            continue;
        }
        match seen.look_up(&out) {
            Entry::Link(target) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                out.pop();
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_components(&mut todo, &target);
            }
            Entry::Present => {}
            Entry::Missing => missing = true,
            Entry::Unreadable => return None,
        }
    }
    Some(out)
}

/// What one name of a path is.
#[derive(Clone)]
enum Entry {
    Link(PathBuf),
    Present,
    Missing,
    Unreadable,
}

/// Names already looked up in one scan: the lower dirs of many mounts
/// share their leading directories, so each is read once.
#[derive(Default)]
struct Lookups(HashMap<PathBuf, Entry>);

impl Lookups {
    fn look_up(&mut self, path: &Path) -> Entry {
        if let Some(e) = self.0.get(path) {
            return e.clone();
        }
        let entry = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match fs::read_link(path) {
                Ok(target) => Entry::Link(target),
                Err(_) => Entry::Unreadable,
            },
            Ok(_) => Entry::Present,
            Err(_) => Entry::Missing,
        };
        self.0.insert(path.to_path_buf(), entry.clone());
        entry
    }
}

/// Pushes the names and `..` of `path` onto `todo`, the first on top.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(names.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::short_id;
    use std::os::unix::fs::symlink;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape(b"/a\\040b"), b"/a b");
        assert_eq!(unescape(b"/plain"), b"/plain");
        assert_eq!(unescape(b"a\\134b\\054c\\011"), b"a\\b,c\t");
        // Not an escape: kept as it is.
        assert_eq!(unescape(b"a\\9x\\"), b"a\\9x\\");
        assert_eq!(unescape("/é\\040ü".as_bytes()), "/é ü".as_bytes());
    }

    #[test]
    fn overlay_mounts_of_a_table_with_their_dirs() {
        let table = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            90 27 0:50 / /mnt/my\\040root rw,relatime shared:7 master:1 - overlay overlay \
            rw,lowerdir=/s/l/AAA:/s/l/BBB,upperdir=/c/up,workdir=/c/work,index=off\n\
            91 27 0:51 / /mnt/new ro,relatime - overlay none \
            ro,lowerdir+=/s/l/CCC,lowerdir+=/x/with\\054comma,datadir+=/d/data,redirect_dir=follow\n\
            92 27 8:1 / /overlay-named-ext4 rw - ext4 /dev/sda1 rw,lowerdir=/not/overlay\n";
        let mounts = overlay_mounts(table);
        assert_eq!(
            mounts,
            vec![
                OverlayMount {
                    mount_point: p("/mnt/my root"),
                    dirs: vec![p("/s/l/AAA"), p("/s/l/BBB"), p("/c/up"), p("/c/work")],
                },
                OverlayMount {
                    mount_point: p("/mnt/new"),
                    dirs: vec![p("/s/l/CCC"), p("/x/with,comma"), p("/d/data")],
                },
            ]
        );
    }

    #[test]
    fn lowerdir_escapes_and_data_layers() {
        // As the kernel shows `lowerdir=/a\:b:/c d::/data` (a `\` is `\134`,
        // a space `\040`).
        let dirs = overlay_dirs(b"rw,lowerdir=/a\\134:b:/c\\040d::/data,upperdir=/u\\134\\134v");
        assert_eq!(dirs, vec![p("/a:b"), p("/c d"), p("/data"), p("/u\\v")]);
        // lowerdir+ takes its path verbatim: a backslash stays.
        assert_eq!(overlay_dirs(b"lowerdir+=/a\\134:b"), vec![p("/a\\:b")]);
        assert_eq!(
            overlay_dirs(b"lowerdir=relative/l/X"),
            vec![p("relative/l/X")]
        );
        assert!(overlay_dirs(b"rw,index=off,xino=off").is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let table = b"garbage\n\n1 2 3\n1 2 3 4 5 6 - overlay\n1 2 0:1 / /m rw - overlay o rw,lowerdir=/a:/b";
        assert_eq!(overlay_mounts(table).len(), 1);
    }

    /// A store's overlay2/ with one layer folder and its short link.
    fn overlay2(dir: &Path, chain: &Digest) -> PathBuf {
        let root = dir.join("store/overlay2");
        fs::create_dir_all(root.join(chain.hex()).join("diff")).unwrap();
        fs::create_dir_all(root.join("l")).unwrap();
        symlink(
            format!("../{}/diff", chain.hex()),
            root.join("l").join(short_id(chain)),
        )
        .unwrap();
        root
    }

    #[test]
    fn paths_name_a_layer_through_links_and_only_inside_overlay2() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Digest::of(b"layer");
        let root = overlay2(dir.path(), &chain);
        let canon = fs::canonicalize(&root).unwrap();
        let short = short_id(&chain);
        // containers-storage's view: overlay/l -> ../../overlay2/l
        let view = dir.path().join("store/containers-storage/overlay");
        fs::create_dir_all(&view).unwrap();
        symlink("../../overlay2/l", view.join("l")).unwrap();
        symlink(
            format!("../../overlay2/{}", chain.hex()),
            view.join("podman-id"),
        )
        .unwrap();

        let named = |d: PathBuf| layer_of(&d, &canon, &mut Lookups::default());
        assert_eq!(named(root.join(chain.hex()).join("diff")), Some(chain));
        assert_eq!(named(root.join("l").join(&short)), Some(chain));
        assert_eq!(named(view.join("l").join(&short)), Some(chain));
        assert_eq!(named(view.join("podman-id/diff")), Some(chain));
        assert_eq!(
            named(root.join(chain.hex()).join("diff/../work")),
            Some(chain)
        );
        assert_eq!(named(p("l").join(&short)), None, "relative: unknown");
        assert_eq!(named(root.join("l")), None);
        assert_eq!(named(root.join("not-a-digest/diff")), None);
        assert_eq!(named(dir.path().join("other")), None);
        assert_eq!(named(root.join("l/NOSUCHLINK")), None);

        // The folder gone: the short link still says which layer it was.
        fs::remove_dir_all(root.join(chain.hex())).unwrap();
        assert_eq!(named(view.join("l").join(&short)), Some(chain));
        assert_eq!(named(root.join(chain.hex()).join("diff")), Some(chain));
    }

    #[test]
    fn symlink_loops_name_nothing() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let seen = &mut Lookups::default();
        assert_eq!(resolve(&dir.path().join("a/x"), seen), None);
        assert_eq!(resolve(Path::new("relative"), seen), None);
        assert_eq!(resolve(Path::new("/../.."), seen), Some(p("/")));
    }

    /// A fake `/proc`: `pids` name (pid, namespace, mountinfo); pids in one
    /// namespace share its `ns/mnt` file (one inode), as the kernel's do.
    fn fake_proc(dir: &Path, pids: &[(&str, &str, &str)]) -> PathBuf {
        let proc = dir.join("proc");
        let ns = dir.join("ns");
        fs::create_dir_all(&ns).unwrap();
        for (pid, namespace, table) in pids {
            let d = proc.join(pid);
            fs::create_dir_all(d.join("ns")).unwrap();
            let ns_file = ns.join(namespace);
            if !ns_file.exists() {
                fs::write(&ns_file, namespace).unwrap();
            }
            fs::hard_link(&ns_file, d.join("ns/mnt")).unwrap();
            fs::write(d.join("mountinfo"), table).unwrap();
        }
        // A process gone between the listing and the read.
        fs::create_dir_all(proc.join("999")).unwrap();
        fs::create_dir_all(proc.join("not-a-pid/ns")).unwrap();
        proc
    }

    #[test]
    fn one_table_per_namespace_and_every_namespace_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let root = overlay2(dir.path(), &a);
        fs::create_dir_all(root.join(b.hex()).join("diff")).unwrap();
        let mount = |target: &str, lower: &Path| {
            format!(
                "90 27 0:50 / {target} ro - overlay overlay ro,lowerdir={}:/nonexistent\n",
                lower.display()
            )
        };
        let host = mount("/mnt/host", &root.join("l").join(short_id(&a)));
        let other = mount("/mnt/other", &root.join(b.hex()).join("diff"));
        let proc = fake_proc(
            dir.path(),
            &[
                ("self", "host", &host),
                (
                    "1",
                    "host",
                    "a table that the same namespace's self already gave",
                ),
                ("42", "other", &other),
                ("43", "other", ""),
            ],
        );
        let tables = mount_tables(&proc);
        assert_eq!(tables, vec![host.clone().into_bytes(), other.into_bytes()]);
        let used = layers_in_tables(&tables, &root);
        assert_eq!(
            used,
            BTreeMap::from([(a, p("/mnt/host")), (b, p("/mnt/other"))])
        );
    }

    #[test]
    fn a_namespace_table_is_read_through_a_process_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let proc = fake_proc(
            dir.path(),
            &[("7", "host", "host table"), ("42", "other", "other table")],
        );
        let ino = |name: &str| {
            fs::metadata(dir.path().join("ns").join(name))
                .unwrap()
                .ino()
        };
        assert_eq!(
            namespace_table(&proc, ino("other")),
            Some(b"other table".to_vec())
        );
        assert_eq!(
            namespace_table(&proc, ino("host")),
            Some(b"host table".to_vec())
        );
        let gone = fs::metadata(dir.path()).unwrap().ino();
        assert_eq!(namespace_table(&proc, gone), None, "no process in it");
    }

    #[test]
    fn the_live_mount_table_is_read() {
        // This process's own namespace at least; no overlay needs to exist.
        assert!(!mount_tables(Path::new("/proc")).is_empty());
    }
}
