//! A deterministic tar writer for layer blobs: POSIX ustar headers with
//! PAX extended headers only where ustar cannot hold a value (long names
//! and link targets, large sizes and ids, negative times, xattrs).
//!
//! Headers carry numeric owners with empty user and group names, the mode's
//! permission bits, and the mtime in whole seconds; no atime or ctime. The
//! same entries always give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal field (7 digits).
const MAX_OCTAL_7: u64 = 0o7_777_777;
/// Largest value of a 12-byte octal field (11 digits).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A file; exactly `size` bytes of content follow its header.
    Regular {
        size: u64,
    },
    /// Another name of an entry written earlier in the same tar.
    Hardlink {
        target: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Directory,
    Fifo,
}

/// One tar entry's metadata. `path` is relative, without a leading `./`
/// or a trailing `/` (directories get theirs when written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Written as `SCHILY.xattr.<name>` PAX records, in name order.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Writes tar entries to `out`.
pub struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter {
            out,
            buf: vec![0; 128 * 1024],
        }
    }

    /// Writes an entry that has no content (anything but a regular file).
    pub fn append(&mut self, header: &EntryHeader) -> io::Result<()> {
        if let EntryKind::Regular { size } = header.kind {
            if size > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a non-empty file needs its content",
                ));
            }
        }
        self.write_headers(header)
    }

    /// Writes a regular file: the header, then exactly `size` bytes read
    /// from `content`. A source shorter than `size` is an error (the file
    /// changed while it was read); bytes beyond `size` are not read.
    pub fn append_file(&mut self, header: &EntryHeader, content: &mut dyn Read) -> io::Result<()> {
        let EntryKind::Regular { size } = header.kind else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only regular files have content",
            ));
        };
        self.write_headers(header)?;
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match content.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} became shorter while being read ({} of {size} bytes)",
                            String::from_utf8_lossy(&header.path),
                            size - left
                        ),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        self.pad(size)
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rest = (len % BLOCK as u64) as usize;
        if rest != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rest])?;
        }
        Ok(())
    }

    fn write_headers(&mut self, h: &EntryHeader) -> io::Result<()> {
        if h.path.is_empty() || h.path.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an entry name must be non-empty and free of NUL bytes",
            ));
        }
        let mut name = h.path.clone();
        if h.kind == EntryKind::Directory {
            name.push(b'/');
        }
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if name.len() > 100 {
            pax.push((b"path".to_vec(), name.clone()));
        }
        let (typeflag, size, link, dev) = match &h.kind {
            EntryKind::Regular { size } => (b'0', *size, &[][..], (0, 0)),
            EntryKind::Hardlink { target } => (b'1', 0, &target[..], (0, 0)),
            EntryKind::Symlink { target } => (b'2', 0, &target[..], (0, 0)),
            EntryKind::CharDevice { major, minor } => (b'3', 0, &[][..], (*major, *minor)),
            EntryKind::BlockDevice { major, minor } => (b'4', 0, &[][..], (*major, *minor)),
            EntryKind::Directory => (b'5', 0, &[][..], (0, 0)),
            EntryKind::Fifo => (b'6', 0, &[][..], (0, 0)),
        };
        if link.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a link target must be free of NUL bytes",
            ));
        }
        if link.len() > 100 {
            pax.push((b"linkpath".to_vec(), link.to_vec()));
        }
        if size > MAX_OCTAL_11 {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        if h.uid > MAX_OCTAL_7 {
            pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        }
        if h.gid > MAX_OCTAL_7 {
            pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        }
        let mtime_fits = u64::try_from(h.mtime).is_ok_and(|t| t <= MAX_OCTAL_11);
        if !mtime_fits {
            pax.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
        }
        if u64::from(dev.0) > MAX_OCTAL_7 || u64::from(dev.1) > MAX_OCTAL_7 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: device number {}:{} does not fit a tar header",
                    String::from_utf8_lossy(&h.path),
                    dev.0,
                    dev.1
                ),
            ));
        }
        for (key, value) in &h.xattrs {
            if key.contains(&0) || key.contains(&b'=') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an xattr name must be free of NUL and '='",
                ));
            }
            let mut k = b"SCHILY.xattr.".to_vec();
            k.extend_from_slice(key);
            pax.push((k, value.clone()));
        }

        if !pax.is_empty() {
            let records = pax_records(&pax);
            let pax_name = pax_header_name(&h.path);
            let block = ustar_block(&UstarFields {
                name: &pax_name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: records.len() as u64,
                mtime: 0,
                typeflag: b'x',
                link: &[],
                dev: (0, 0),
            });
            self.out.write_all(&block)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let block = ustar_block(&UstarFields {
            name: &name,
            mode: h.mode & 0o7777,
            uid: if h.uid > MAX_OCTAL_7 { 0 } else { h.uid },
            gid: if h.gid > MAX_OCTAL_7 { 0 } else { h.gid },
            size: if size > MAX_OCTAL_11 { 0 } else { size },
            mtime: if mtime_fits { h.mtime as u64 } else { 0 },
            typeflag,
            link,
            dev,
        });
        self.out.write_all(&block)
    }
}

/// `PaxHeaders.0/<last component>`, as Go's archive/tar names them; only
/// tools without PAX support ever show it.
fn pax_header_name(path: &[u8]) -> Vec<u8> {
    let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let mut name = b"PaxHeaders.0/".to_vec();
    name.extend_from_slice(base);
    name.truncate(100);
    name
}

/// `"<len> <key>=<value>\n"` records; `len` counts the whole record,
/// its own digits included.
fn pax_records(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        let base = key.len() + value.len() + 3;
        let mut len = base + digits(base);
        if digits(len) != digits(base) {
            len = base + digits(len);
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

struct UstarFields<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    dev: (u32, u32),
}

/// One ustar header block. Names and links longer than their fields are
/// cut (the PAX header before it carries them whole).
fn ustar_block(f: &UstarFields<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    copy_cut(&mut b[0..100], f.name);
    octal(&mut b[100..108], u64::from(f.mode));
    octal(&mut b[108..116], f.uid);
    octal(&mut b[116..124], f.gid);
    octal(&mut b[124..136], f.size);
    octal(&mut b[136..148], f.mtime);
    b[156] = f.typeflag;
    copy_cut(&mut b[157..257], f.link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname and gname (265..329) stay empty.
    octal(&mut b[329..337], u64::from(f.dev.0));
    octal(&mut b[337..345], u64::from(f.dev.1));
    // The checksum is computed with its own field as eight spaces.
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let text = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(text.as_bytes());
    b
}

fn copy_cut(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal digits followed by a NUL; callers check the range.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let bytes = text.as_bytes();
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: EntryKind) -> EntryHeader {
        EntryHeader {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            xattrs: BTreeMap::new(),
        }
    }

    fn read_back(bytes: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>, Option<String>)> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut e = entry.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((path, kind, data, link));
        }
        out
    }

    #[test]
    fn entries_read_back_with_their_metadata() {
        let mut w = TarWriter::new(Vec::new());
        let mut dir = header("etc", EntryKind::Directory);
        dir.mode = 0o1755;
        w.append(&dir).unwrap();
        let mut file = header("etc/passwd", EntryKind::Regular { size: 5 });
        file.uid = 1000;
        file.gid = 100;
        w.append_file(&file, &mut &b"hello world"[..]).unwrap();
        w.append(&header(
            "etc/again",
            EntryKind::Hardlink {
                target: b"etc/passwd".to_vec(),
            },
        ))
        .unwrap();
        w.append(&header(
            "etc/link",
            EntryKind::Symlink {
                target: b"../x".to_vec(),
            },
        ))
        .unwrap();
        w.append(&header(
            "dev/null",
            EntryKind::CharDevice { major: 1, minor: 3 },
        ))
        .unwrap();
        w.append(&header("dev/fifo", EntryKind::Fifo)).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        assert!(bytes.ends_with(&[0u8; 1024]));

        let entries = read_back(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "etc/again",
                "etc/link",
                "dev/null",
                "dev/fifo"
            ]
        );
        assert_eq!(entries[1].2, b"hello");
        assert_eq!(entries[2].3.as_deref(), Some("etc/passwd"));
        assert_eq!(entries[3].3.as_deref(), Some("../x"));
        assert_eq!(entries[4].1, tar::EntryType::Char);
        assert_eq!(entries[5].1, tar::EntryType::Fifo);

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut it = archive.entries().unwrap();
        let d = it.next().unwrap().unwrap();
        assert_eq!(d.header().mode().unwrap(), 0o1755);
        assert_eq!(d.header().mtime().unwrap(), 1_600_000_000);
        assert_eq!(d.header().username_bytes(), Some(&b""[..]));
        let f = it.next().unwrap().unwrap();
        assert_eq!(f.header().uid().unwrap(), 1000);
        assert_eq!(f.header().gid().unwrap(), 100);
        assert!(f.header().as_ustar().is_some());
    }

    #[test]
    fn long_names_links_and_xattrs_use_pax() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(130));
        let target = "t".repeat(150);
        let mut w = TarWriter::new(Vec::new());
        let mut file = header(&long, EntryKind::Regular { size: 3 });
        file.xattrs.insert(b"user.bin".to_vec(), vec![0, 1, 2, 255]);
        file.xattrs
            .insert(b"security.capability".to_vec(), b"cap".to_vec());
        w.append_file(&file, &mut &b"abc"[..]).unwrap();
        w.append(&header(
            "s",
            EntryKind::Symlink {
                target: target.as_bytes().to_vec(),
            },
        ))
        .unwrap();
        let bytes = w.finish().unwrap();

        let entries = read_back(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, long);
        assert_eq!(entries[0].2, b"abc");
        assert_eq!(entries[1].3.as_deref(), Some(target.as_str()));

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut first = archive.entries().unwrap().next().unwrap().unwrap();
        let pax: Vec<(String, Vec<u8>)> = first
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        // (The tar crate splits records at newlines, so none in values here;
        // the store's own reader honours the lengths, see commit's tests.)
        assert!(pax.contains(&("SCHILY.xattr.user.bin".to_string(), vec![0, 1, 2, 255])));
        assert!(pax.contains(&(
            "SCHILY.xattr.security.capability".to_string(),
            b"cap".to_vec()
        )));
        // xattr records are in name order.
        let keys: Vec<&str> = pax
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("SCHILY."))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn out_of_range_numbers_go_to_pax() {
        let mut w = TarWriter::new(Vec::new());
        let mut h = header("big-ids", EntryKind::Fifo);
        h.uid = 5_000_000;
        h.gid = 6_000_000;
        h.mtime = -86_400;
        w.append(&h).unwrap();
        let bytes = w.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut e = archive.entries().unwrap().next().unwrap().unwrap();
        let pax: Vec<(String, String)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value().unwrap().to_string())
            })
            .collect();
        assert!(pax.contains(&("uid".into(), "5000000".into())));
        assert!(pax.contains(&("gid".into(), "6000000".into())));
        assert!(pax.contains(&("mtime".into(), "-86400".into())));
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        // "8 a=bcd\n" is 8 bytes, its length digit included.
        assert_eq!(
            pax_records(&[(b"a".to_vec(), b"bcd".to_vec())]),
            b"8 a=bcd\n"
        );
        // 96 bytes of payload: base 99 + 2 digits = 101, which has 3 digits.
        let value = vec![b'v'; 95];
        let rec = pax_records(&[(b"k".to_vec(), value)]);
        let len: usize = std::str::from_utf8(rec.split(|&b| b == b' ').next().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, rec.len());
    }

    #[test]
    fn same_entries_same_bytes_and_short_files_fail() {
        let build = || {
            let mut w = TarWriter::new(Vec::new());
            w.append_file(
                &header("a", EntryKind::Regular { size: 2 }),
                &mut &b"xy"[..],
            )
            .unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
        let mut w = TarWriter::new(Vec::new());
        let err = w
            .append_file(
                &header("a", EntryKind::Regular { size: 10 }),
                &mut &b"xy"[..],
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(w
            .append(&header("b", EntryKind::Regular { size: 1 }))
            .is_err());
        assert!(w.append(&header("", EntryKind::Fifo)).is_err());
    }
}
