//! A streaming tar parser with bounded headers.
//!
//! It follows Go's archive/tar (what Docker and containerd read layers with)
//! where that is unambiguous, and refuses the ambiguous cases instead of
//! picking a side, so no file can be hidden from or smuggled past another
//! reader:
//! - the PAX `size` record always wins over the ustar size field;
//! - PAX and GNU long-name/long-link data larger than the limit is refused
//!   before it is read;
//! - two PAX headers, or two GNU long names, for one entry are refused, and
//!   so is an entry named by both a PAX `path` and a GNU long name;
//! - hardlinks, symlinks, directories, devices and fifos carry no data: a
//!   non-zero size on them is refused rather than skipped or not skipped;
//! - a lone zero block in the middle of the archive is refused.
//!
//! Header checksums are verified (unsigned or signed sums, like Go).

use std::io::BufRead;

use super::{read_error, UnpackError};
use crate::oci::Compression;
use crate::tarsplit::Recorder;

const BLOCK: usize = 512;

/// The kind of filesystem object an entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

impl Kind {
    fn has_data(self) -> bool {
        self == Kind::File
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Fifo => "fifo",
        }
    }
}

/// A point in time as tar stores it: seconds since the epoch (may be
/// negative) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One real entry, with its PAX and GNU extension headers already applied.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The name exactly as the archive gives it (not yet normalised).
    pub name: Vec<u8>,
    /// Symlink target or hardlink target name.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    pub atime: Option<Time>,
    /// Data bytes that follow (only regular files have any).
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// From `SCHILY.xattr.NAME` PAX records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The name for messages.
    pub(crate) fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Fields of a PAX extended header that apply to the next entry.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// Reads entries one by one from an uncompressed tar stream.
pub(crate) struct TarReader<R> {
    inner: R,
    /// For error messages about the stream under the tar.
    compression: Compression,
    max_header_bytes: u64,
    /// Bytes of the tar stream consumed so far.
    offset: u64,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Where every byte read goes, when a tar-split record is made.
    record: Option<Recorder>,
}

/// What a run of bytes skipped is, for the record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// File content.
    Content,
    /// Anything else: headers, extension data, padding.
    Segment,
}

impl<R: BufRead> TarReader<R> {
    pub(crate) fn new(inner: R, compression: Compression, max_header_bytes: u64) -> Self {
        TarReader {
            inner,
            compression,
            max_header_bytes,
            offset: 0,
            remaining: 0,
            padding: 0,
            record: None,
        }
    }

    /// Reports every byte read to `record` (a tar-split record of the
    /// stream).
    pub(crate) fn with_record(mut self, record: Recorder) -> Self {
        self.record = Some(record);
        self
    }

    /// After the end of the archive: reads the rest of the stream into the
    /// record as trailing data (nothing to do without a record), and
    /// returns the record.
    pub(crate) fn finish_record(&mut self) -> Result<Option<Recorder>, UnpackError> {
        let Some(mut record) = self.record.take() else {
            return Ok(None);
        };
        loop {
            let buf = self
                .inner
                .fill_buf()
                .map_err(|e| read_error(self.compression, e))?;
            if buf.is_empty() {
                return Ok(Some(record));
            }
            let n = buf.len();
            record.trailing(buf);
            self.inner.consume(n);
            self.offset += n as u64;
        }
    }

    /// The stream under the tar, at the end of the archive.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The next real entry, or None at the end of the archive. Unread data of
    /// the previous entry is skipped.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, UnpackError> {
        self.skip(self.remaining, Part::Content)?;
        self.remaining = 0;
        if let Some(record) = &mut self.record {
            record.end_file();
        }
        self.skip(self.padding, Part::Segment)?;
        self.padding = 0;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let start = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return self.end_of_archive(
                    start,
                    pax.is_some() || long_name.is_some() || long_link.is_some(),
                );
            }
            if block.iter().all(|&b| b == 0) {
                let mut second = [0u8; BLOCK];
                if self.read_block(&mut second)? && second.iter().any(|&b| b != 0) {
                    return Err(invalid(start, "a single zero block inside the archive"));
                }
                return self.end_of_archive(
                    start,
                    pax.is_some() || long_name.is_some() || long_link.is_some(),
                );
            }
            let header = RawHeader::parse(&block, start)?;
            match header.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    let size = header.size;
                    if size > self.max_header_bytes {
                        return Err(UnpackError::HeaderTooLarge {
                            path: String::from_utf8_lossy(&header.name).into_owned(),
                            kind: extension_kind(header.typeflag),
                            size,
                            limit: self.max_header_bytes,
                        });
                    }
                    // Bounded just above, so it fits in memory and usize.
                    let data = self.read_extension(size as usize)?;
                    match header.typeflag {
                        b'x' => {
                            if pax.is_some() {
                                return Err(invalid(start, "two PAX headers for one entry"));
                            }
                            pax = Some(parse_pax(&data).map_err(|reason| invalid(start, &reason))?);
                        }
                        // Global headers change nothing for extraction (Docker
                        // ignores them too); their size was bounded and skipped.
                        b'g' => {}
                        b'L' => {
                            if long_name.is_some() {
                                return Err(invalid(start, "two GNU long names for one entry"));
                            }
                            long_name = Some(until_nul(&data).to_vec());
                        }
                        _ => {
                            if long_link.is_some() {
                                return Err(invalid(
                                    start,
                                    "two GNU long link names for one entry",
                                ));
                            }
                            long_link = Some(until_nul(&data).to_vec());
                        }
                    }
                }
                _ => {
                    return self
                        .finish_entry(header, pax.take(), long_name.take(), long_link.take())
                        .map(Some)
                }
            }
        }
    }

    /// The current entry's data not yet read, as much as is buffered; empty
    /// when all of it was read. Follow with `consume_data`.
    pub(crate) fn data_chunk(&mut self) -> Result<&[u8], UnpackError> {
        if self.remaining == 0 {
            return Ok(&[]);
        }
        let offset = self.offset;
        let compression = self.compression;
        let buf = self
            .inner
            .fill_buf()
            .map_err(|e| read_error(compression, e))?;
        if buf.is_empty() {
            return Err(truncated(offset));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        Ok(&buf[..n])
    }

    /// The rest of the current entry's data, in memory (for small files).
    pub(crate) fn read_data(&mut self) -> Result<Vec<u8>, UnpackError> {
        let mut data = Vec::with_capacity(usize::try_from(self.remaining).unwrap_or(0));
        loop {
            let chunk = self.data_chunk()?;
            if chunk.is_empty() {
                return Ok(data);
            }
            let n = chunk.len();
            data.extend_from_slice(chunk);
            self.consume_data(n);
        }
    }

    /// Marks `n` bytes returned by `data_chunk` as read.
    pub(crate) fn consume_data(&mut self, n: usize) {
        if let Some(record) = &mut self.record {
            // Still buffered: `data_chunk` returned these bytes.
            if let Ok(buf) = self.inner.fill_buf() {
                record.content(&buf[..n.min(buf.len())]);
            }
        }
        self.inner.consume(n);
        self.offset += n as u64;
        self.remaining -= n as u64;
    }

    fn end_of_archive(&mut self, offset: u64, pending: bool) -> Result<Option<Entry>, UnpackError> {
        if pending {
            return Err(invalid(
                offset,
                "the archive ends after an extension header with no entry",
            ));
        }
        if let Some(record) = &mut self.record {
            record.end_archive();
        }
        Ok(None)
    }

    fn finish_entry(
        &mut self,
        mut header: RawHeader,
        pax: Option<Pax>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry, UnpackError> {
        let start = header.offset;
        let pax = pax.unwrap_or_default();
        let name = match (pax.path, long_name) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    start,
                    "an entry named by both a PAX path and a GNU long name",
                ))
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => std::mem::take(&mut header.name),
        };
        let link = match (pax.linkpath, long_link) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    start,
                    "a link target given by both PAX and a GNU long link",
                ))
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => std::mem::take(&mut header.link),
        };
        let display = || String::from_utf8_lossy(&name).into_owned();
        let kind = match header.typeflag {
            b'0' | b'7' => Kind::File,
            // Old archives mark directories only by the trailing slash.
            b'\0' if name.ends_with(b"/") => Kind::Dir,
            b'\0' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => {
                return Err(UnpackError::Unsupported {
                    path: display(),
                    what: "GNU sparse file".into(),
                })
            }
            other => {
                return Err(UnpackError::Unsupported {
                    path: display(),
                    what: format!("tar entry type {:?}", char::from(other)),
                })
            }
        };
        if pax.sparse {
            return Err(UnpackError::Unsupported {
                path: display(),
                what: "PAX sparse file".into(),
            });
        }
        let size = pax.size.unwrap_or(header.size);
        if size != 0 && !kind.has_data() {
            return Err(UnpackError::InvalidEntry {
                path: display(),
                reason: format!("a {} header declares {size} bytes of data", kind.describe()),
            });
        }
        let (dev_major, dev_minor) = match kind {
            Kind::CharDevice | Kind::BlockDevice => (header.dev_major()?, header.dev_minor()?),
            _ => (0, 0),
        };
        self.remaining = size;
        self.padding = padding(size);
        let uid = pax.uid.unwrap_or(header.uid);
        let gid = pax.gid.unwrap_or(header.gid);
        if let Some(record) = &mut self.record {
            record.begin_file(&name, size, uid, gid);
        }
        Ok(Entry {
            name,
            link,
            kind,
            mode: header.mode,
            uid,
            gid,
            mtime: pax.mtime.unwrap_or(Time {
                sec: header.mtime,
                nsec: 0,
            }),
            atime: pax.atime,
            size,
            dev_major,
            dev_minor,
            xattrs: pax.xattrs,
        })
    }

    /// Reads one block; false at a clean end of stream before it.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, UnpackError> {
        let mut filled = 0;
        while filled < BLOCK {
            let buf = self
                .inner
                .fill_buf()
                .map_err(|e| read_error(self.compression, e))?;
            if buf.is_empty() {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(truncated(self.offset));
            }
            let n = buf.len().min(BLOCK - filled);
            block[filled..filled + n].copy_from_slice(&buf[..n]);
            if let Some(record) = &mut self.record {
                record.segment(&buf[..n]);
            }
            self.inner.consume(n);
            self.offset += n as u64;
            filled += n;
        }
        Ok(true)
    }

    /// Reads an extension header's data and its padding.
    fn read_extension(&mut self, size: usize) -> Result<Vec<u8>, UnpackError> {
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            let buf = self
                .inner
                .fill_buf()
                .map_err(|e| read_error(self.compression, e))?;
            if buf.is_empty() {
                return Err(truncated(self.offset));
            }
            let n = buf.len().min(size - data.len());
            data.extend_from_slice(&buf[..n]);
            if let Some(record) = &mut self.record {
                record.segment(&buf[..n]);
            }
            self.inner.consume(n);
            self.offset += n as u64;
        }
        self.skip(padding(size as u64), Part::Segment)?;
        Ok(data)
    }

    fn skip(&mut self, mut n: u64, part: Part) -> Result<(), UnpackError> {
        while n > 0 {
            let buf = self
                .inner
                .fill_buf()
                .map_err(|e| read_error(self.compression, e))?;
            if buf.is_empty() {
                return Err(truncated(self.offset));
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            if let Some(record) = &mut self.record {
                match part {
                    Part::Content => record.content(&buf[..take]),
                    Part::Segment => record.segment(&buf[..take]),
                }
            }
            self.inner.consume(take);
            self.offset += take as u64;
            n -= take as u64;
        }
        Ok(())
    }
}

/// The fields of one 512-byte header block.
struct RawHeader {
    offset: u64,
    typeflag: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    dev_major_field: [u8; 8],
    dev_minor_field: [u8; 8],
}

impl RawHeader {
    fn parse(block: &[u8; BLOCK], offset: u64) -> Result<RawHeader, UnpackError> {
        verify_checksum(block, offset)?;
        let field = |what: &str, range: std::ops::Range<usize>| -> Result<i64, UnpackError> {
            parse_numeric(&block[range])
                .ok_or_else(|| invalid(offset, &format!("invalid {what} field")))
        };
        let unsigned = |what: &str, v: i64| -> Result<u64, UnpackError> {
            u64::try_from(v).map_err(|_| invalid(offset, &format!("negative {what}")))
        };
        let id = |what: &str, v: i64| -> Result<u32, UnpackError> {
            u32::try_from(v).map_err(|_| invalid(offset, &format!("{what} {v} out of range")))
        };

        let magic = &block[257..263];
        let version = &block[263..265];
        let ustar = magic == b"ustar\0";
        let gnu = magic == b"ustar " && version == b" \0";
        let mut name = until_nul(&block[0..100]).to_vec();
        if ustar {
            // POSIX ustar splits long names into prefix "/" name; star's
            // variant has a shorter prefix and a trailer.
            let prefix_end = if &block[508..512] == b"tar\0" {
                476
            } else {
                500
            };
            let prefix = until_nul(&block[345..prefix_end]);
            if !prefix.is_empty() {
                let mut joined = prefix.to_vec();
                joined.push(b'/');
                joined.extend_from_slice(&name);
                name = joined;
            }
        }
        let mut dev_major_field = [0u8; 8];
        let mut dev_minor_field = [0u8; 8];
        if ustar || gnu {
            dev_major_field.copy_from_slice(&block[329..337]);
            dev_minor_field.copy_from_slice(&block[337..345]);
        }
        let mode = field("mode", 100..108)?;
        Ok(RawHeader {
            offset,
            typeflag: block[156],
            name,
            link: until_nul(&block[157..257]).to_vec(),
            mode: (unsigned("mode", mode)? & 0o7777) as u32,
            uid: id("uid", field("uid", 108..116)?)?,
            gid: id("gid", field("gid", 116..124)?)?,
            size: unsigned("size", field("size", 124..136)?)?,
            mtime: field("mtime", 136..148)?,
            dev_major_field,
            dev_minor_field,
        })
    }

    fn dev_major(&self) -> Result<u32, UnpackError> {
        self.device_number(&self.dev_major_field, "device major")
    }

    fn dev_minor(&self) -> Result<u32, UnpackError> {
        self.device_number(&self.dev_minor_field, "device minor")
    }

    fn device_number(&self, field: &[u8], what: &str) -> Result<u32, UnpackError> {
        parse_numeric(field)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| invalid(self.offset, &format!("invalid {what} field")))
    }
}

fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), UnpackError> {
    let stored = parse_octal(&block[148..156])
        .ok_or_else(|| invalid(offset, "invalid header checksum field (not a tar archive?)"))?;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return Err(invalid(
            offset,
            "header checksum mismatch (corrupt or not a tar archive)",
        ));
    }
    Ok(())
}

/// A numeric header field: octal text, or GNU base-256 when the high bit of
/// the first byte is set. None when malformed or beyond i64.
fn parse_numeric(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            if field.len() > 16 {
                return None;
            }
            // Big-endian two's complement; the marker bit is replaced by
            // the sign bit (0x40) extended.
            let negative = first & 0x40 != 0;
            let mut v: i128 = i128::from(if negative { first } else { first & 0x7f });
            for &b in &field[1..] {
                v = (v << 8) | i128::from(b);
            }
            if negative {
                v -= 1i128 << (8 * field.len());
            }
            i64::try_from(v).ok()
        }
        _ => parse_octal(field),
    }
}

/// Octal text padded with spaces or NULs on either side (empty means 0).
fn parse_octal(field: &[u8]) -> Option<i64> {
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !is_pad(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    let mut v: i64 = 0;
    for &b in &field[start..end] {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses PAX extended header records: `LEN KEY=VALUE\n` each, LEN counting
/// the whole record.
fn parse_pax(mut data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("malformed PAX record length")?;
        let len = parse_decimal(&data[..space]).ok_or("malformed PAX record length")?;
        let len = usize::try_from(len).map_err(|_| "malformed PAX record length")?;
        if len <= space + 1 || len > data.len() {
            return Err("malformed PAX record length".into());
        }
        let record = &data[space + 1..len];
        let Some(kv) = record.strip_suffix(b"\n") else {
            return Err("PAX record does not end with a newline".into());
        };
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err("PAX record with an invalid key".into());
        }
        apply_pax_record(&mut pax, key, value)?;
        data = &data[len..];
    }
    Ok(pax)
}

fn apply_pax_record(pax: &mut Pax, key: &[u8], value: &[u8]) -> Result<(), String> {
    let key_text = String::from_utf8_lossy(key);
    let bad = || {
        format!(
            "invalid PAX {key_text} value {:?}",
            String::from_utf8_lossy(value)
        )
    };
    let id = |v: &[u8]| {
        parse_decimal(v)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    // An empty value removes the field (POSIX): the header field applies.
    match key {
        b"path" => pax.path = (!value.is_empty()).then(|| value.to_vec()),
        b"linkpath" => pax.linkpath = (!value.is_empty()).then(|| value.to_vec()),
        // Like Go's archive/tar: a size must fit an i64, so no later sum
        // of sizes and offsets can overflow.
        b"size" => {
            pax.size = Some(
                parse_decimal(value)
                    .filter(|v| i64::try_from(*v).is_ok())
                    .ok_or_else(bad)?,
            )
        }
        b"uid" => pax.uid = Some(id(value)?),
        b"gid" => pax.gid = Some(id(value)?),
        b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(bad)?),
        b"atime" => pax.atime = Some(parse_pax_time(value).ok_or_else(bad)?),
        _ => {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.is_empty() {
                    return Err("PAX xattr record without a name".into());
                }
                pax.xattrs.retain(|(n, _)| n != name);
                pax.xattrs.push((name.to_vec(), value.to_vec()));
            } else if key.starts_with(b"GNU.sparse.") {
                pax.sparse = true;
            }
            // Anything else (uname, gname, ctime, comment, charset,
            // LIBARCHIVE.xattr.* duplicates, ...) does not change extraction.
        }
    }
    Ok(())
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// `[-]SECONDS[.FRACTION]`, the fraction cut to nanoseconds.
fn parse_pax_time(text: &[u8]) -> Option<Time> {
    let (negative, text) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    let sec = i64::try_from(parse_decimal(whole)?).ok()?;
    let mut nsec: u32 = 0;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..9 {
            let digit = fraction.get(i).map_or(0, |b| u32::from(b - b'0'));
            nsec = nsec * 10 + digit;
        }
    }
    if !negative {
        return Some(Time { sec, nsec });
    }
    if nsec == 0 {
        Some(Time { sec: -sec, nsec: 0 })
    } else {
        Some(Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn extension_kind(typeflag: u8) -> &'static str {
    match typeflag {
        b'x' => "PAX header",
        b'g' => "PAX global header",
        b'L' => "GNU long name",
        _ => "GNU long link name",
    }
}

fn invalid(offset: u64, reason: &str) -> UnpackError {
    UnpackError::InvalidTar {
        offset,
        reason: reason.to_string(),
    }
}

fn truncated(offset: u64) -> UnpackError {
    UnpackError::InvalidTar {
        offset,
        reason: "the archive is truncated".to_string(),
    }
}

/// Adapter so tests (and callers holding a plain reader) can build a reader.
#[cfg(test)]
pub(crate) fn reader_for(
    data: &[u8],
    max_header_bytes: u64,
) -> TarReader<std::io::BufReader<&[u8]>> {
    TarReader::new(
        std::io::BufReader::new(data),
        Compression::None,
        max_header_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::testtar::{self, RawEntry};

    fn entries(data: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, UnpackError> {
        let mut r = reader_for(data, 1 << 20);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let content = r.read_data()?;
            out.push((e, content));
        }
        Ok(out)
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"12 34"), None);
        assert_eq!(parse_octal(b"9"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_numeric(&big), Some(1 << 40));
        assert_eq!(parse_numeric(&[0xff; 12]), Some(-1));
        let mut huge = [0u8; 12];
        huge[0] = 0x80;
        huge[1] = 1;
        assert_eq!(parse_numeric(&huge), None);
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(Time { sec: 12, nsec: 0 }));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Time {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"1.0000000019"),
            Some(Time { sec: 1, nsec: 1 })
        );
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(Time {
                sec: -2,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_pax_time(b"-3"), Some(Time { sec: -3, nsec: 0 }));
        assert_eq!(parse_pax_time(b"1."), None);
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn reads_plain_entries_and_data() {
        let tar = testtar::archive(&[
            RawEntry::dir("d/"),
            RawEntry::file("d/f", b"hello"),
            RawEntry::symlink("d/s", "f"),
        ]);
        let got = entries(&tar).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.kind, Kind::Dir);
        assert_eq!(got[1].0.name, b"d/f");
        assert_eq!(got[1].1, b"hello");
        assert_eq!(got[2].0.kind, Kind::Symlink);
        assert_eq!(got[2].0.link, b"f");
    }

    #[test]
    fn pax_size_always_wins_over_ustar_size() {
        // The ustar header says 512 bytes, PAX says 3: a reader that used
        // the ustar size would swallow the next header as file data.
        let mut file = RawEntry::file("a", b"abc");
        file.header_size = Some(512);
        let tar = testtar::archive(&[
            RawEntry::pax(&[("size", b"3")]),
            file,
            RawEntry::file("b", b"second"),
        ]);
        let got = entries(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"abc");
        assert_eq!(got[1].0.name, b"b");
        assert_eq!(got[1].1, b"second");
    }

    #[test]
    fn pax_records_override_header_fields() {
        let tar = testtar::archive(&[
            RawEntry::pax(&[
                ("path", "long/".repeat(40).as_bytes()),
                ("uid", b"70000"),
                ("gid", b"80000"),
                ("mtime", b"1700000000.25"),
                ("atime", b"1600000000"),
                ("SCHILY.xattr.user.k", b"v\0bin"),
                ("uname", b"ignored"),
            ]),
            RawEntry::file("short", b"x"),
        ]);
        let got = entries(&tar).unwrap();
        let e = &got[0].0;
        assert_eq!(e.name, "long/".repeat(40).as_bytes());
        assert_eq!((e.uid, e.gid), (70000, 80000));
        assert_eq!(
            e.mtime,
            Time {
                sec: 1_700_000_000,
                nsec: 250_000_000
            }
        );
        assert_eq!(
            e.atime,
            Some(Time {
                sec: 1_600_000_000,
                nsec: 0
            })
        );
        assert_eq!(e.xattrs, vec![(b"user.k".to_vec(), b"v\0bin".to_vec())]);
    }

    #[test]
    fn gnu_long_names_and_links() {
        let name = "n".repeat(300);
        let target = "t".repeat(200);
        let tar = testtar::archive(&[
            RawEntry::gnu_long(b'L', name.as_bytes()),
            RawEntry::gnu_long(b'K', target.as_bytes()),
            RawEntry::symlink("short", "short"),
        ]);
        let got = entries(&tar).unwrap();
        assert_eq!(got[0].0.name, name.as_bytes());
        assert_eq!(got[0].0.link, target.as_bytes());
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_reading() {
        let big = vec![b'a'; 2000];
        for typeflag in [b'L', b'K'] {
            let tar =
                testtar::archive(&[RawEntry::gnu_long(typeflag, &big), RawEntry::file("f", b"")]);
            let mut r = reader_for(&tar, 1024);
            let err = r.next_entry().unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::HeaderTooLarge {
                        size: 2001,
                        limit: 1024,
                        ..
                    }
                ),
                "{err}"
            );
        }
        let tar = testtar::archive(&[RawEntry::pax(&[("path", &big)]), RawEntry::file("f", b"")]);
        let err = reader_for(&tar, 1024).next_entry().unwrap_err();
        assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("PAX header"), "{err}");
        // The limit is checked against the declared size: a header claiming
        // an absurd size fails at once, without data behind it.
        let mut huge = RawEntry::gnu_long(b'L', b"x");
        huge.header_size = Some(1 << 40);
        let mut tar = testtar::header_block(&huge);
        tar.extend_from_slice(&[0u8; 1024]);
        let err = reader_for(&tar, 1 << 20).next_entry().unwrap_err();
        assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{err}");
    }

    #[test]
    fn refuses_ambiguous_headers() {
        let cases: Vec<Vec<RawEntry>> = vec![
            vec![
                RawEntry::pax(&[("size", b"1")]),
                RawEntry::pax(&[("size", b"2")]),
                RawEntry::file("f", b"ab"),
            ],
            vec![
                RawEntry::gnu_long(b'L', b"a"),
                RawEntry::gnu_long(b'L', b"b"),
                RawEntry::file("f", b""),
            ],
            vec![
                RawEntry::pax(&[("path", b"a")]),
                RawEntry::gnu_long(b'L', b"b"),
                RawEntry::file("f", b""),
            ],
        ];
        for case in cases {
            let err = entries(&testtar::archive(&case)).unwrap_err();
            assert!(matches!(err, UnpackError::InvalidTar { .. }), "{err}");
        }
        // Data declared on a symlink is neither skipped nor ignored.
        let mut link = RawEntry::symlink("s", "t");
        link.header_size = Some(512);
        let mut tar = testtar::header_block(&link);
        tar.extend_from_slice(&testtar::archive(&[RawEntry::file("hidden", b"x")]));
        let err = entries(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
        let err = entries(&testtar::archive(&[
            RawEntry::pax(&[("size", b"5")]),
            RawEntry::dir("d/"),
        ]))
        .unwrap_err();
        assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_checksums_and_garbage() {
        let mut tar = testtar::archive(&[RawEntry::file("f", b"x")]);
        tar[0] ^= 1;
        let err = entries(&tar).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        let err = entries(&[b'z'; 2048]).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidTar { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn detects_truncation_and_lone_zero_blocks() {
        let tar = testtar::archive(&[RawEntry::file("f", &[7u8; 1000])]);
        for cut in [100, 512 + 10, 512 + 1000, 512 + 1010] {
            let err = entries(&tar[..cut]).unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
        // A missing end marker is accepted, like Go: the entries are whole.
        assert_eq!(entries(&tar[..512 + 1024]).unwrap().len(), 1);
        // One zero block then EOF is a (short) end marker.
        assert_eq!(entries(&tar[..512 + 1024 + 512]).unwrap().len(), 1);
        let mut odd = testtar::archive(&[RawEntry::file("f", b"x")]);
        odd.truncate(1024);
        odd.extend_from_slice(&[0u8; 512]);
        odd.extend_from_slice(&testtar::archive(&[RawEntry::file("g", b"y")]));
        let err = entries(&odd).unwrap_err();
        assert!(err.to_string().contains("single zero block"), "{err}");
        let err = entries(&testtar::header_block(&RawEntry::pax(&[("path", b"x")]))).unwrap_err();
        assert!(err.to_string().contains("extension header"), "{err}");
    }

    #[test]
    fn refuses_malformed_pax_records() {
        for data in [
            &b"5 a=b"[..],
            b"3 a=b\n",
            b"99 a=b\n",
            b"x a=b\n",
            b"7 ab c\n",
            b"6 =bc\n",
        ] {
            assert!(
                parse_pax(data).is_err(),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        assert!(parse_pax(b"6 a=b\n").is_ok());
        assert!(parse_pax(b"9 uid=-1\n").is_err());
        assert!(parse_pax(b"16 uid=4294967296\n").is_err());
    }

    #[test]
    fn sparse_and_unknown_types_are_unsupported() {
        let mut sparse = RawEntry::file("s", b"");
        sparse.typeflag = b'S';
        let err = entries(&testtar::archive(&[sparse])).unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
        let err = entries(&testtar::archive(&[
            RawEntry::pax(&[("GNU.sparse.major", b"1")]),
            RawEntry::file("s", b""),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
        let mut volume = RawEntry::file("v", b"");
        volume.typeflag = b'V';
        let err = entries(&testtar::archive(&[volume])).unwrap_err();
        assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn old_style_directories_and_prefixes() {
        let mut old_dir = RawEntry::file("olddir/", b"");
        old_dir.typeflag = 0;
        let mut prefixed = RawEntry::file("name", b"z");
        prefixed.prefix = Some("some/prefix".into());
        let got = entries(&testtar::archive(&[old_dir, prefixed])).unwrap();
        assert_eq!(got[0].0.kind, Kind::Dir);
        assert_eq!(got[1].0.name, b"some/prefix/name");
    }

    #[test]
    fn base256_and_device_fields() {
        let mut dev = RawEntry::device(b'3', "c", 4, 64);
        dev.uid_base256 = Some(1 << 33);
        // uid beyond u32 is refused.
        let err = entries(&testtar::archive(&[dev])).unwrap_err();
        assert!(err.to_string().contains("uid"), "{err}");
        let mut dev = RawEntry::device(b'4', "b", 8, 1);
        dev.uid_base256 = Some(100_000);
        let got = entries(&testtar::archive(&[dev])).unwrap();
        assert_eq!(got[0].0.kind, Kind::BlockDevice);
        assert_eq!((got[0].0.dev_major, got[0].0.dev_minor), (8, 1));
        assert_eq!(got[0].0.uid, 100_000);
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_234_567_890);
        h.set_size(4);
        let long = format!("{}/file", "dir".repeat(60));
        b.append_data(&mut h, &long, &b"data"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let got = entries(&bytes).unwrap();
        assert_eq!(got.len(), 1);
        let e = &got[0].0;
        assert_eq!(e.name, long.as_bytes());
        assert_eq!(
            (e.mode, e.uid, e.gid, e.mtime.sec),
            (0o4755, 1234, 5678, 1_234_567_890)
        );
        assert_eq!(got[0].1, b"data");
    }
}
