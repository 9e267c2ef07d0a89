//! Byte-level tar writer for tests: it can write what well-behaved tools
//! never would (wrong sizes, odd typeflags, hostile names).

/// One header (plus data) to write.
#[derive(Clone)]
pub(crate) struct RawEntry {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Size written in the header instead of the data length.
    pub header_size: Option<u64>,
    /// ustar prefix field.
    pub prefix: Option<String>,
    pub dev: (u32, u32),
    /// Write the uid in GNU base-256 form.
    pub uid_base256: Option<u64>,
    /// GNU magic instead of POSIX ustar.
    pub gnu: bool,
}

impl RawEntry {
    fn new(name: &[u8], typeflag: u8) -> RawEntry {
        RawEntry {
            name: name.to_vec(),
            typeflag,
            data: Vec::new(),
            link: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_500_000_000,
            header_size: None,
            prefix: None,
            dev: (0, 0),
            uid_base256: None,
            gnu: false,
        }
    }

    pub(crate) fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry::file_bytes(name.as_bytes(), data)
    }

    pub(crate) fn file_bytes(name: &[u8], data: &[u8]) -> RawEntry {
        let mut e = RawEntry::new(name, b'0');
        e.data = data.to_vec();
        e
    }

    pub(crate) fn dir(name: &str) -> RawEntry {
        let mut e = RawEntry::new(name.as_bytes(), b'5');
        e.mode = 0o755;
        e
    }

    pub(crate) fn symlink(name: &str, target: &str) -> RawEntry {
        let mut e = RawEntry::new(name.as_bytes(), b'2');
        e.link = target.as_bytes().to_vec();
        e.mode = 0o777;
        e
    }

    pub(crate) fn hardlink(name: &str, target: &str) -> RawEntry {
        let mut e = RawEntry::new(name.as_bytes(), b'1');
        e.link = target.as_bytes().to_vec();
        e
    }

    pub(crate) fn device(typeflag: u8, name: &str, major: u32, minor: u32) -> RawEntry {
        let mut e = RawEntry::new(name.as_bytes(), typeflag);
        e.dev = (major, minor);
        e
    }

    /// A PAX extended header for the next entry.
    pub(crate) fn pax(records: &[(&str, &[u8])]) -> RawEntry {
        let mut e = RawEntry::new(b"PaxHeaders.0/entry", b'x');
        for (key, value) in records {
            e.data.extend_from_slice(&pax_record(key, value));
        }
        e
    }

    /// A GNU long name ('L') or long link ('K') header.
    pub(crate) fn gnu_long(typeflag: u8, name: &[u8]) -> RawEntry {
        let mut e = RawEntry::new(b"././@LongLink", typeflag);
        e.data = name.to_vec();
        e.data.push(0);
        e.gnu = true;
        e
    }

    pub(crate) fn with_mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }

    pub(crate) fn with_owner(mut self, uid: u32, gid: u32) -> RawEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub(crate) fn with_mtime(mut self, mtime: u64) -> RawEntry {
        self.mtime = mtime;
        self
    }
}

/// One `LEN KEY=VALUE\n` record, LEN counting itself.
pub(crate) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert!(digits.len() < field.len(), "{value} does not fit");
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

/// The header block(s) and padded data of one entry, without end marker.
pub(crate) fn header_block(e: &RawEntry) -> Vec<u8> {
    let mut h = [0u8; 512];
    let n = e.name.len().min(100);
    h[..n].copy_from_slice(&e.name[..n]);
    put_octal(&mut h[100..108], u64::from(e.mode));
    match e.uid_base256 {
        Some(uid) => {
            h[109..116].copy_from_slice(&uid.to_be_bytes()[1..8]);
            h[108] = 0x80;
        }
        None => put_octal(&mut h[108..116], u64::from(e.uid)),
    }
    put_octal(&mut h[116..124], u64::from(e.gid));
    let size = e.header_size.unwrap_or(e.data.len() as u64);
    if size >= 1 << 33 {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    } else {
        put_octal(&mut h[124..136], size);
    }
    put_octal(&mut h[136..148], e.mtime);
    h[156] = e.typeflag;
    let n = e.link.len().min(100);
    h[157..157 + n].copy_from_slice(&e.link[..n]);
    if e.gnu {
        h[257..263].copy_from_slice(b"ustar ");
        h[263..265].copy_from_slice(b" \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    put_octal(&mut h[329..337], u64::from(e.dev.0));
    put_octal(&mut h[337..345], u64::from(e.dev.1));
    if let Some(prefix) = &e.prefix {
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let chk = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(chk.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(&e.data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A whole archive with the two-block end marker.
pub(crate) fn archive(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&header_block(e));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}
