//! Ready-made layer sets shared by several test files.

use super::image::{Image, ImageBuilder, ManifestKind};
use super::tarball::{Compression, Layer, TarBuilder, DEFAULT_MTIME};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const T1: u64 = DEFAULT_MTIME;
pub const T2: u64 = DEFAULT_MTIME + 86_400;
pub const T3: u64 = DEFAULT_MTIME + 2 * 86_400;
pub const T4: u64 = DEFAULT_MTIME + 3 * 86_400;

/// Deterministic pseudo-random bytes (xorshift), for content that does not
/// compress to nothing.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A name component of `len` characters, for long-name entries.
pub fn long_component(prefix: &str, len: usize) -> String {
    let mut name = prefix.to_string();
    while name.len() < len {
        name.push((b'a' + (name.len() % 26) as u8) as char);
    }
    name
}

/// The base layer of the "everything" image: every entry kind and every
/// piece of metadata a layer can carry.
pub fn everything_base() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("etc").mtime(T1);
    t.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    t.file("etc/hostname", "box\n");
    t.file("etc/xattrs", "has xattrs\n")
        .xattr("user.comment", "hello")
        .xattr("user.binary", [0u8, 1, 2, 255])
        .xattr("trusted.note", "kept by root");
    t.dir("bin");
    t.file("bin/sh", "#!/bin/true\n").mode(0o755);
    t.symlink("bin/ash", "sh").mtime(T2);
    t.dir("usr");
    t.dir("usr/bin");
    t.file("usr/bin/su", "setuid\n").mode(0o4755);
    t.file("usr/bin/wall", "setgid\n").mode(0o2755).owner(0, 5);
    t.file("usr/bin/both", "setuid+setgid\n")
        .mode(0o6750)
        .owner(0, 7);
    t.file("usr/bin/a", "three names, one inode\n").mode(0o755);
    // Hardlink headers carry their target's metadata, as tar writes them.
    t.hardlink("usr/bin/b", "usr/bin/a").mode(0o755);
    t.hardlink("usr/bin/c", "usr/bin/a").mode(0o755);
    t.symlink("usr/lib64", "lib");
    t.symlink("usr/passwd-abs", "/etc/passwd");
    t.symlink("usr/dangling", "../nowhere/at/all");
    t.dir("tmp").mode(0o1777);
    t.dir("dev");
    t.char_dev("dev/null", 1, 3).mode(0o666);
    t.char_dev("dev/tty", 5, 0).mode(0o620).owner(0, 5);
    t.block_dev("dev/loop0", 7, 0).mode(0o660).owner(0, 6);
    t.fifo("dev/initctl").mode(0o600);
    t.dir("home");
    t.dir("home/user").mode(0o700).owner(1000, 1000);
    t.file("home/user/.profile", "export PS1='$ '\n")
        .owner(1000, 1000)
        .mtime(T3);
    // Read-only directories with content: modes must be set after content.
    t.dir("ro").mode(0o555);
    t.dir("ro/inner").mode(0o500);
    t.file("ro/inner/deep", "deep\n").mode(0o400);
    t.file("ro/file", "read only\n").mode(0o444);
    t.dir("var").xattr("user.dirattr", "on a dir");
    t.dir("var/cache");
    t.file("var/cache/item", "cached\n");
    // Hidden by layer 2: a whole directory, a file, an opaque directory, a
    // directory and a file that are removed and re-created.
    t.dir("old");
    t.file("old/a", "a\n");
    t.dir("old/sub");
    t.file("old/sub/b", "b\n");
    t.file("gone", "gone\n");
    t.dir("opq");
    t.file("opq/lower1", "lower\n");
    t.dir("opq/lowerdir");
    t.file("opq/lowerdir/x", "x\n");
    t.dir("redir");
    t.file("redir/lower", "lower\n");
    t.file("refile", "old content\n");
    t.dir("deep");
    t.dir("deep/keep");
    t.file("deep/keep/lower", "lower\n");
    // Out of order: the file comes before its directory's header.
    t.file("late/child", "child\n");
    t.dir("late").mode(0o750).mtime(T3);
    // Duplicates: the last entry wins.
    t.file("dup", "first\n").mode(0o600);
    t.file("dup", "second\n").mode(0o640);
    t.dir("dupdir").mode(0o700);
    t.dir("dupdir").mode(0o755).mtime(T4);
    // Long names and link targets, PAX and GNU encodings.
    let long_pax = format!("long/{}", long_component("pax-", 140));
    let long_gnu = format!("long/{}", long_component("gnu-", 130));
    let long_dir = format!("long/{}", long_component("dir-", 90));
    t.dir("long");
    t.file(&long_pax, "pax long name\n");
    t.file(&long_gnu, "gnu long name\n").gnu_long_names();
    t.dir(&long_dir);
    t.file(
        format!("{long_dir}/{}", long_component("f-", 40)),
        "nested\n",
    );
    t.symlink("long/link-pax", format!("../{long_pax}"));
    t.symlink("long/link-gnu", format!("../{long_gnu}"))
        .gnu_long_names();
    t.hardlink("long/hardlink-to-long", &long_pax);
    // Non-ASCII names.
    t.dir("unicode");
    t.file("unicode/naïve café.txt", "accents\n");
    t.file("unicode/日本語.txt", "kanji\n");
    t.dir("unicode/Ωmega");
    t.symlink("unicode/rocket-🚀", "naïve café.txt");
    // Owners beyond the ustar fields (PAX uid/gid) and names that must be
    // ignored in favour of numeric ids.
    t.dir("ids");
    t.file("ids/big", "big ids\n").owner(3_000_000, 3_000_001);
    t.file("ids/named", "named\n")
        .owner(1234, 5678)
        .names("no-such-user", "no-such-group");
    // Content of several blocks, an empty file, extreme mtimes.
    t.file("data/noise.bin", noise(200_000, 7));
    t.dir("data");
    t.file("data/empty", b"");
    t.file("data/epoch", "1970\n").mtime(0);
    t.file("data/future", "2100\n").mtime(4_102_444_800);
    // A PAX mtime (with a fraction) overrides the ustar one.
    t.file("data/pax-mtime", "pax\n")
        .mtime(T1)
        .pax("mtime", "1700000000.25");
    // setuid on a file owned by someone else: chown after chmod would clear it.
    t.file("usr/bin/suid-user", "suid\n")
        .mode(0o4755)
        .owner(1000, 1000);
    // A setgid directory: its subdirectories must keep their own modes.
    t.dir("srv").mode(0o755);
    t.dir("srv/shared").mode(0o2775).owner(0, 50);
    t.dir("srv/shared/sub").mode(0o755);
    t.file("srv/shared/sub/file", "shared\n").owner(1000, 1000);
    // No permissions at all, content inside.
    t.dir("locked").mode(0o000);
    t.file("locked/inside", "inside\n").mode(0o000);
    // A hardlink kept while its first name is overwritten later on.
    t.dir("hl");
    t.file("hl/orig", "first version\n");
    t.hardlink("hl/keep", "hl/orig");
    t.file("hl/orig", "second version\n");
    // A hardlink to a symlink links the symlink itself.
    t.symlink("hl/sym", "orig")
        .xattr("trusted.on-symlink", "yes");
    t.hardlink("hl/sym-link", "hl/sym").mode(0o777);
    // A file replaced by a directory and a directory by a file, same layer.
    t.file("swap", "file first\n");
    t.dir("swap");
    t.file("swap/child", "child\n");
    t.dir("swap2");
    t.file("swap2/child", "child\n");
    t.file("swap2", "file last\n");
    // A device number beyond 8-bit minors, a name at NAME_MAX, a name that
    // is not UTF-8.
    t.block_dev("dev/nvme0n1p1", 259, 300).mode(0o660);
    t.file(format!("long/{}", long_component("max-", 255)), "255\n");
    t.file(b"unicode/latin1-\xe9t\xe9", "latin-1\n");
    t
}

/// Layer 2: whiteouts, opaque directories, re-creations, replacements.
pub fn everything_changes() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("etc").mtime(T2);
    t.whiteout("etc/hostname");
    t.file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
        .mode(0o600)
        .mtime(T2);
    t.whiteout("old");
    t.whiteout("gone");
    // Opaque marker after the directory's new content.
    t.dir("opq").mtime(T2);
    t.file("opq/upper", "upper\n");
    t.opaque("opq");
    // Removed and re-created in the same layer.
    t.whiteout("redir");
    t.dir("redir").mtime(T2);
    t.file("redir/fresh", "fresh\n");
    t.whiteout("refile");
    t.file("refile", "new content\n").mode(0o600);
    // Content added to a read-only directory of a lower layer.
    t.dir("ro").mode(0o555);
    t.file("ro/added", "added\n").mode(0o444);
    // A directory's attributes replaced.
    t.dir("home");
    t.dir("home/user").mode(0o750).owner(1000, 100).mtime(T2);
    // A directory replaced by a file (no whiteout needed).
    t.dir("var").xattr("user.dirattr", "changed");
    t.file("var/cache", "now a file\n");
    // One name of a hardlinked file hidden; new hardlinks.
    t.dir("usr");
    t.dir("usr/bin");
    t.whiteout("usr/bin/b");
    t.file("usr/bin/new", "new\n");
    t.hardlink("usr/bin/new2", "usr/bin/new");
    t
}

/// Layer 4: an opaque marker far from its directory's entries, and a
/// whiteout of something that never existed.
pub fn everything_late() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("deep").mtime(T4);
    t.dir("deep/new").mtime(T4);
    t.file("deep/new/file", "upper\n");
    t.dir("late").mode(0o750).mtime(T3);
    t.file("late/child2", "second child\n");
    t.whiteout("never-existed");
    t.opaque("deep");
    t
}

/// An empty layer: only the end-of-archive blocks.
pub fn empty_layer() -> TarBuilder {
    TarBuilder::new()
}

/// The "everything" image: base (gzip), changes (zstd), empty (none), late
/// (none) with OCI media types; all gzip for Docker schema2.
pub fn everything_image(kind: ManifestKind) -> Image {
    let compressions = match kind {
        ManifestKind::Oci => [
            Compression::Gzip,
            Compression::Zstd,
            Compression::None,
            Compression::None,
        ],
        ManifestKind::Docker => [Compression::Gzip; 4],
    };
    let tars = [
        everything_base(),
        everything_changes(),
        empty_layer(),
        everything_late(),
    ];
    let mut builder = ImageBuilder::new().kind(kind);
    for (tar, compression) in tars.iter().zip(compressions) {
        builder = builder.tar(tar, compression);
    }
    builder.build()
}

/// A small base layer shared by several images.
pub fn small_base() -> Layer {
    let mut t = TarBuilder::new();
    t.dir("etc");
    t.file("etc/os-release", "ID=lstore-test\n");
    t.dir("bin");
    t.file("bin/tool", noise(20_000, 1)).mode(0o755);
    t.symlink("bin/alias", "tool");
    t.layer(Compression::Gzip)
}

/// A small layer with content unique to `name`.
pub fn small_app(name: &str) -> Layer {
    let mut t = TarBuilder::new();
    t.dir("app");
    t.file(format!("app/{name}"), noise(10_000, name.len() as u64 + 11));
    t.file("app/name", format!("{name}\n"));
    // The parent's header comes along, as image builders write it: a
    // directory the tar lacks gets fresh metadata in the upper layer.
    t.dir("bin");
    t.whiteout("bin/alias");
    t.layer(Compression::Gzip)
}

/// One layer holding the host's `/bin/cat` with the libraries it loads and
/// `/greeting`; its command prints the greeting.
pub fn runnable_image(greeting: &str) -> Image {
    let mut tar = host_binaries(&["/bin/cat"]);
    tar.file("greeting", format!("{greeting}\n"));
    ImageBuilder::new()
        .tar(&tar, Compression::Gzip)
        .cmd(&["/bin/cat", "/greeting"])
        .build()
}

/// A layer of the host's `binaries` with the libraries they load (dynamic
/// loader included), at the paths they ask for.
pub fn host_binaries(binaries: &[&str]) -> TarBuilder {
    let mut tar = TarBuilder::new();
    let mut files = Vec::new();
    for b in binaries {
        files.push(PathBuf::from(b));
        files.extend(shared_libraries(Path::new(b)));
    }
    files.sort();
    files.dedup();
    let mut dirs = std::collections::BTreeSet::new();
    for file in &files {
        for dir in file.ancestors().skip(1) {
            if dir != Path::new("/") {
                dirs.insert(dir.to_path_buf());
            }
        }
    }
    for dir in &dirs {
        tar.dir(relative(dir));
    }
    for file in &files {
        let bytes = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        tar.file(relative(file), bytes).mode(0o755);
    }
    tar
}

fn relative(path: &Path) -> String {
    path.strip_prefix("/")
        .expect("absolute")
        .to_str()
        .expect("utf-8")
        .to_string()
}

/// The libraries `ldd` names for `binary` (dynamic loader included), with
/// symlinks resolved: the files to copy, at the paths the binary asks for.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(output.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// A base layer with every kind of entry a tar-split record must carry and
/// no path named twice (tar-split refuses those, and such a tar cannot be
/// rebuilt from its folder): files of several sizes, a directory,
/// symlinks, hardlinks, PAX and GNU long names, a name that is not UTF-8,
/// xattrs, large owners.
pub fn record_fixture() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("etc");
    t.file("etc/hostname", "lstore\n").owner(1000, 1001);
    t.file("etc/xattrs", "has xattrs\n")
        .xattr("user.comment", "hello")
        .xattr("trusted.note", "kept by root");
    t.file("empty", b"");
    t.file("noise.bin", noise(70_000, 3));
    t.symlink("etc/link", "hostname");
    t.hardlink("etc/hard", "etc/hostname");
    let long_pax = format!("long/{}", long_component("pax-", 140));
    let long_gnu = format!("long/{}", long_component("gnu-", 130));
    t.dir("long");
    t.file(&long_pax, "pax long name\n");
    t.file(&long_gnu, "gnu long name\n").gnu_long_names();
    t.symlink("long/link-gnu", format!("../{long_gnu}"))
        .gnu_long_names();
    t.file(b"latin1-\xe9t\xe9 <&>", "latin-1\n");
    t.file("ids", "big ids\n").owner(3_000_000, 3_000_001);
    t.file("opq/lower", "lower\n");
    t
}
