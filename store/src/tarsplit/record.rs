//! Writing a tar-split record while a tar stream goes by.
//!
//! The tar parser reports what it reads: raw bytes outside file contents
//! (`segment`), the start of each entry (`begin_file`), content bytes
//! (`content`), the end of the archive and what follows it (`trailing`).
//! The record comes out as tar-split's packer writes it: one JSON object a
//! line, fields in its order and left out when it leaves them out, strings
//! escaped as Go's encoding/json escapes them, gzip-compressed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};

use base64::Engine as _;
use flate2::write::GzEncoder;

use super::{is_whiteout_name, LayerSummary, SEGMENT_TYPE};

/// JSON text kept before it goes to the compressor.
const JSON_BUFFER: usize = 256 * 1024;
/// Largest segment written for data after the end of the archive: what
/// tar-split reads at a time there, so a long tail never sits in memory.
const TRAILING_CHUNK: usize = 1024 * 1024;

/// A file entry whose content is still going by.
struct PendingFile {
    name: Vec<u8>,
    size: u64,
    crc: crc_fast::Digest,
}

/// Builds the record of one tar stream into a gzip file.
pub(crate) struct Recorder {
    out: GzEncoder<File>,
    /// JSON lines not yet compressed.
    json: Vec<u8>,
    /// Raw bytes of the segment being gathered.
    segment: Vec<u8>,
    position: u64,
    file: Option<PendingFile>,
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    tar_size: u64,
    /// The first write error; reported by `finish`, so that the parser's
    /// hot path has no error to handle.
    error: Option<io::Error>,
}

impl Recorder {
    /// Records into `file` (gzip level 1, as containers/storage writes
    /// its records: the record is small next to the layer).
    pub(crate) fn new(file: File) -> Recorder {
        Recorder {
            out: GzEncoder::new(file, flate2::Compression::fast()),
            json: Vec::with_capacity(JSON_BUFFER + 4096),
            segment: Vec::with_capacity(4096),
            position: 0,
            file: None,
            uids: BTreeSet::new(),
            gids: BTreeSet::new(),
            tar_size: 0,
            error: None,
        }
    }

    /// Raw bytes outside file contents: headers, extension records,
    /// padding, the end-of-archive blocks.
    pub(crate) fn segment(&mut self, bytes: &[u8]) {
        self.tar_size += bytes.len() as u64;
        self.segment.extend_from_slice(bytes);
    }

    /// An entry (any kind) whose header bytes were just given to
    /// `segment`; `size` bytes of content follow. `name` is the name the
    /// extraction used (PAX and GNU long names applied).
    pub(crate) fn begin_file(&mut self, name: &[u8], size: u64, uid: u32, gid: u32) {
        self.end_file();
        self.flush_segment();
        // As containers/storage's uid and gid sets: whiteouts and opaque
        // markers do not count.
        if !is_whiteout_name(name) {
            self.uids.insert(uid);
            self.gids.insert(gid);
        }
        self.file = Some(PendingFile {
            name: name.to_vec(),
            size,
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso),
        });
    }

    /// Content bytes of the current entry.
    pub(crate) fn content(&mut self, bytes: &[u8]) {
        self.tar_size += bytes.len() as u64;
        if let Some(f) = &mut self.file {
            f.crc.update(bytes);
        }
    }

    /// The current entry's content is over: its file entry is written
    /// (after its header segment, before the next one, as tar-split does).
    pub(crate) fn end_file(&mut self) {
        let Some(f) = self.file.take() else {
            return;
        };
        self.json.extend_from_slice(b"{\"type\":1,");
        match std::str::from_utf8(&f.name) {
            Ok("") => {}
            Ok(name) => {
                self.json.extend_from_slice(b"\"name\":");
                go_json_string(&mut self.json, name);
                self.json.push(b',');
            }
            Err(_) => {
                self.json.extend_from_slice(b"\"name_raw\":\"");
                push_base64(&mut self.json, &f.name);
                self.json.extend_from_slice(b"\",");
            }
        }
        if f.size > 0 {
            // Go's hash/crc64 Sum: the value big-endian.
            let crc = f.crc.finalize().to_be_bytes();
            self.json.extend_from_slice(b"\"size\":");
            self.json
                .extend_from_slice(itoa(f.size, &mut [0u8; 20]).as_bytes());
            self.json.extend_from_slice(b",\"payload\":\"");
            push_base64(&mut self.json, &crc);
            self.json.extend_from_slice(b"\",");
        } else {
            self.json.extend_from_slice(b"\"payload\":null,");
        }
        self.end_line();
    }

    /// The end-of-archive marker was read (or the stream ended cleanly
    /// after an entry): the last entry and segment are written.
    pub(crate) fn end_archive(&mut self) {
        self.end_file();
        self.flush_segment();
    }

    /// Bytes after the end of the archive, kept as segments of at most
    /// 1 MiB.
    pub(crate) fn trailing(&mut self, mut bytes: &[u8]) {
        self.tar_size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min(TRAILING_CHUNK - self.segment.len());
            self.segment.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.segment.len() == TRAILING_CHUNK {
                self.flush_segment();
            }
        }
    }

    /// Writes what is pending and closes the gzip stream. Returns the
    /// file (not synced) and what the record says of the tar.
    pub(crate) fn finish(mut self) -> io::Result<(File, LayerSummary)> {
        self.end_archive();
        self.write_json();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let file = self.out.finish()?;
        let summary = LayerSummary {
            tar_size: self.tar_size,
            uids: self.uids.into_iter().collect(),
            gids: self.gids.into_iter().collect(),
        };
        Ok((file, summary))
    }

    fn flush_segment(&mut self) {
        if self.segment.is_empty() {
            return;
        }
        self.json.extend_from_slice(b"{\"type\":");
        self.json.push(b'0' + SEGMENT_TYPE);
        self.json.extend_from_slice(b",\"payload\":\"");
        push_base64(&mut self.json, &self.segment);
        self.json.extend_from_slice(b"\",");
        self.segment.clear();
        self.end_line();
    }

    /// Ends an object with its position and a newline, as Go's
    /// json.Encoder does.
    fn end_line(&mut self) {
        self.json.extend_from_slice(b"\"position\":");
        self.json
            .extend_from_slice(itoa(self.position, &mut [0u8; 20]).as_bytes());
        self.json.extend_from_slice(b"}\n");
        self.position += 1;
        if self.json.len() >= JSON_BUFFER {
            self.write_json();
        }
    }

    fn write_json(&mut self) {
        if self.error.is_none() && !self.json.is_empty() {
            if let Err(e) = self.out.write_all(&self.json) {
                self.error = Some(e);
            }
        }
        self.json.clear();
    }
}

/// Appends the standard base64 (with padding) of `data`, as Go encodes
/// a `[]byte`.
fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(data.len(), true).unwrap_or(0),
        0,
    );
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(data, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

/// Decimal text of `v` in `buf`.
fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Appends `s` as a JSON string the way Go's encoding/json writes it
/// (HTML-safe: `<`, `>`, `&` escaped; U+2028 and U+2029 escaped).
pub(crate) fn go_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                let b = c as u32 as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let mut out = Vec::new();
        go_json_string(&mut out, "a\"b\\c\n\t\u{1}<>&\u{2028}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\"b\\c\n\t\u0001\u003c\u003e\u0026\u2028é""#
        );
        let mut n = [0u8; 20];
        assert_eq!(itoa(0, &mut n), "0");
        assert_eq!(itoa(u64::MAX, &mut n), "18446744073709551615");
    }

    #[test]
    fn crc_is_go_iso() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)).
        let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
        d.update(b"123456789");
        assert_eq!(d.finalize(), 0xb909_56c7_75a4_1001);
    }
}
