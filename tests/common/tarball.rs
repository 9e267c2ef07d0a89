//! A tar writer for test layers and archives.
//!
//! It writes exactly the headers it is asked for, with no path cleaning and
//! no ordering rules, so the same code builds ordinary layers and malicious
//! ones (`../` names, absolute names, links out of the root, duplicates).
//! Long names use PAX records by default or GNU `L`/`K` headers on request.

use sha2::{Digest as _, Sha256};
use std::io::Write;

const BLOCK: usize = 512;

/// How a name or link target longer than the ustar fields is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongNames {
    Pax,
    Gnu,
}

#[derive(Clone, Debug)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    CharDev(u32, u32),
    BlockDev(u32, u32),
}

impl Kind {
    fn typeflag(&self) -> u8 {
        match self {
            Kind::File(_) => b'0',
            Kind::Hardlink(_) => b'1',
            Kind::Symlink(_) => b'2',
            Kind::CharDev(..) => b'3',
            Kind::BlockDev(..) => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One tar entry; the setters chain on the `&mut Entry` the layer returns.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: String,
    pub gname: String,
    /// Written as `SCHILY.xattr.<name>` PAX records, in this order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Extra raw PAX records (key, value), written after the xattrs.
    pub pax: Vec<(String, Vec<u8>)>,
    pub long_names: LongNames,
    /// Overrides the size field of the ustar header (malformed archives).
    pub header_size: Option<u64>,
}

/// Default mtime of fixture entries: 2021-01-01T00:00:00Z.
pub const DEFAULT_MTIME: u64 = 1_609_459_200;

impl Entry {
    pub fn new(name: impl AsRef<[u8]>, kind: Kind) -> Entry {
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink(_) => 0o777,
            _ => 0o644,
        };
        Entry {
            name: name.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            uname: String::new(),
            gname: String::new(),
            xattrs: Vec::new(),
            pax: Vec::new(),
            long_names: LongNames::Pax,
            header_size: None,
        }
    }

    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn names(&mut self, uname: &str, gname: &str) -> &mut Self {
        self.uname = uname.to_string();
        self.gname = gname.to_string();
        self
    }

    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn pax(&mut self, key: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.pax.push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn gnu_long_names(&mut self) -> &mut Self {
        self.long_names = LongNames::Gnu;
        self
    }

    pub fn header_size(&mut self, size: u64) -> &mut Self {
        self.header_size = Some(size);
        self
    }

    fn content(&self) -> &[u8] {
        match &self.kind {
            Kind::File(data) => data,
            _ => &[],
        }
    }

    fn link_name(&self) -> &[u8] {
        match &self.kind {
            Kind::Symlink(target) | Kind::Hardlink(target) => target,
            _ => &[],
        }
    }

    /// Appends this entry (special headers, header, data, padding) to `out`.
    fn write_to(&self, out: &mut Vec<u8>) {
        let content = self.content();
        let link = self.link_name();
        let name_too_long = self.name.len() > 100;
        let link_too_long = link.len() > 100;
        let big_ids = self.uid > 0o7777777 || self.gid > 0o7777777;

        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let gnu = self.long_names == LongNames::Gnu;
        if gnu {
            if name_too_long {
                write_gnu_long(out, b'L', &self.name);
            }
            if link_too_long {
                write_gnu_long(out, b'K', link);
            }
        } else {
            if name_too_long {
                pax.push(("path".into(), self.name.clone()));
            }
            if link_too_long {
                pax.push(("linkpath".into(), link.to_vec()));
            }
        }
        if big_ids {
            pax.push(("uid".into(), self.uid.to_string().into_bytes()));
            pax.push(("gid".into(), self.gid.to_string().into_bytes()));
        }
        for (name, value) in &self.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        pax.extend(self.pax.iter().cloned());
        if !pax.is_empty() {
            let body = pax_records(&pax);
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(truncate(&self.name, 80));
            let header = Header {
                name: &name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: body.len() as u64,
                mtime: self.mtime,
                typeflag: b'x',
                link: b"",
                uname: "",
                gname: "",
                dev: (0, 0),
                gnu: false,
            };
            header.write_to(out);
            write_data(out, &body);
        }

        let (major, minor) = match self.kind {
            Kind::CharDev(ma, mi) | Kind::BlockDev(ma, mi) => (ma, mi),
            _ => (0, 0),
        };
        let header = Header {
            name: truncate(&self.name, 100),
            mode: self.mode,
            uid: self.uid.min(0o7777777),
            gid: self.gid.min(0o7777777),
            size: self.header_size.unwrap_or(content.len() as u64),
            mtime: self.mtime,
            typeflag: self.kind.typeflag(),
            link: truncate(link, 100),
            uname: &self.uname,
            gname: &self.gname,
            dev: (major, minor),
            gnu,
        };
        header.write_to(out);
        write_data(out, content);
    }
}

fn truncate(bytes: &[u8], len: usize) -> &[u8] {
    &bytes[..bytes.len().min(len)]
}

/// PAX records: `"<len> <key>=<value>\n"` where len counts the whole record.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(format!("{len} {key}=").as_bytes());
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    body
}

fn write_gnu_long(out: &mut Vec<u8>, typeflag: u8, value: &[u8]) {
    let mut body = value.to_vec();
    body.push(0);
    let header = Header {
        name: b"././@LongLink",
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: body.len() as u64,
        mtime: 0,
        typeflag,
        link: b"",
        uname: "",
        gname: "",
        dev: (0, 0),
        gnu: true,
    };
    header.write_to(out);
    write_data(out, &body);
}

fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    out.extend(std::iter::repeat_n(0u8, pad));
}

struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    uname: &'a str,
    gname: &'a str,
    dev: (u32, u32),
    gnu: bool,
}

impl Header<'_> {
    fn write_to(&self, out: &mut Vec<u8>) {
        let mut block = [0u8; BLOCK];
        put(&mut block[0..100], self.name);
        octal(&mut block[100..108], u64::from(self.mode));
        octal(&mut block[108..116], self.uid);
        octal(&mut block[116..124], self.gid);
        octal(&mut block[124..136], self.size);
        octal(&mut block[136..148], self.mtime);
        block[148..156].copy_from_slice(b"        ");
        block[156] = self.typeflag;
        put(&mut block[157..257], self.link);
        if self.gnu {
            block[257..265].copy_from_slice(b"ustar  \0");
        } else {
            block[257..263].copy_from_slice(b"ustar\0");
            block[263..265].copy_from_slice(b"00");
        }
        put(&mut block[265..297], self.uname.as_bytes());
        put(&mut block[297..329], self.gname.as_bytes());
        octal(&mut block[329..337], u64::from(self.dev.0));
        octal(&mut block[337..345], u64::from(self.dev.1));
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
        out.extend_from_slice(&block);
    }
}

fn put(field: &mut [u8], value: &[u8]) {
    assert!(value.len() <= field.len(), "tar field overflow");
    field[..value.len()].copy_from_slice(value);
}

/// Zero-padded octal with a terminating NUL, filling the field.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert!(
        text.len() == digits,
        "value {value} does not fit the tar field"
    );
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A tar stream under construction.
#[derive(Clone, Debug, Default)]
pub struct TarBuilder {
    entries: Vec<Entry>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    pub fn push(&mut self, entry: Entry) -> &mut Entry {
        self.entries.push(entry);
        self.entries.last_mut().expect("just pushed")
    }

    pub fn file(&mut self, name: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> &mut Entry {
        self.push(Entry::new(name, Kind::File(content.as_ref().to_vec())))
    }

    /// A directory; a trailing `/` is added as tar writers do.
    pub fn dir(&mut self, name: impl AsRef<[u8]>) -> &mut Entry {
        let mut name = name.as_ref().to_vec();
        if !name.ends_with(b"/") {
            name.push(b'/');
        }
        self.push(Entry::new(name, Kind::Dir))
    }

    /// A directory named exactly as given (no trailing `/` added).
    pub fn dir_raw(&mut self, name: impl AsRef<[u8]>) -> &mut Entry {
        self.push(Entry::new(name, Kind::Dir))
    }

    pub fn symlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Entry {
        self.push(Entry::new(name, Kind::Symlink(target.as_ref().to_vec())))
    }

    pub fn hardlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Entry {
        self.push(Entry::new(name, Kind::Hardlink(target.as_ref().to_vec())))
    }

    pub fn fifo(&mut self, name: impl AsRef<[u8]>) -> &mut Entry {
        self.push(Entry::new(name, Kind::Fifo))
    }

    pub fn char_dev(&mut self, name: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut Entry {
        self.push(Entry::new(name, Kind::CharDev(major, minor)))
    }

    pub fn block_dev(&mut self, name: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut Entry {
        self.push(Entry::new(name, Kind::BlockDev(major, minor)))
    }

    /// `.wh.<base>` next to `path`: hides `path` of lower layers.
    pub fn whiteout(&mut self, path: &str) -> &mut Entry {
        let (dir, base) = match path.rsplit_once('/') {
            Some((dir, base)) => (format!("{dir}/"), base),
            None => (String::new(), path),
        };
        self.file(format!("{dir}.wh.{base}"), b"")
    }

    /// `<dir>/.wh..wh..opq`: hides everything lower layers have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Entry {
        let dir = dir.trim_end_matches('/');
        let name = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.file(name, b"")
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The uncompressed tar stream, end-of-archive blocks included.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            entry.write_to(&mut out);
        }
        out.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
        out
    }

    /// The tar stream compressed into a layer blob.
    pub fn layer(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.tar(), compression)
    }
}

/// A layer blob with its digests.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Vec<u8>,
    /// The uncompressed stream (what a docker-archive stores as layer.tar).
    pub tar: Vec<u8>,
    pub compression: Compression,
    /// `sha256:<hex>` of the blob as stored.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    pub uncompressed_size: u64,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = sha256_digest(&tar);
        let uncompressed_size = tar.len() as u64;
        let blob = compress(&tar, compression);
        Layer {
            digest: sha256_digest(&blob),
            blob,
            tar,
            compression,
            diff_id,
            uncompressed_size,
        }
    }

    /// A layer with an arbitrary blob and a claimed diff_id (corrupt cases).
    pub fn raw(blob: Vec<u8>, compression: Compression, diff_id: &str) -> Layer {
        Layer {
            digest: sha256_digest(&blob),
            uncompressed_size: blob.len() as u64,
            tar: blob.clone(),
            blob,
            compression,
            diff_id: diff_id.to_string(),
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).expect("gzip");
            encoder.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd"),
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The OCI chain ids of a list of diff_ids, base first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let body = pax_records(&[("path".into(), vec![b'a'; 5])]);
        assert_eq!(body, b"14 path=aaaaa\n");
        // 99 bytes with a 2-digit length, 101 once the length needs 3 digits.
        assert_eq!(pax_records(&[("k".into(), vec![b'v'; 93])]).len(), 99);
        let body = pax_records(&[("k".into(), vec![b'v'; 94])]);
        assert_eq!(body.len(), 101);
        assert!(body.starts_with(b"101 k="));
    }
}
