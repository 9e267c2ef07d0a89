//! Tar entry names made safe, and the OCI whiteout naming rules.
//!
//! A name becomes a list of plain components below the layer root: leading
//! `/` and `./` are dropped (absolute names land inside the layer, as Docker
//! does), `.` and empty components vanish, `..` removes the previous
//! component and may never climb above the root. The result never contains
//! `.`, `..`, an empty component or a NUL byte, so each component is exactly
//! one directory entry name for `*at` system calls.

/// The longest normalised name accepted, in bytes: the kernel's `PATH_MAX`
/// less the NUL. A longer name could not be addressed by any other tool.
pub(crate) const MAX_PATH_BYTES: usize = 4095;

/// Prefix of an OCI whiteout file: `.wh.NAME` deletes NAME of lower layers.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Prefix of AUFS metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`).
pub(crate) const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Marker making its directory opaque: lower layers' content is hidden.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    Escapes,
    Nul,
    TooLong,
}

impl PathError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PathError::Escapes => "path climbs above the layer root",
            PathError::Nul => "path contains a NUL byte",
            PathError::TooLong => "path is longer than 4095 bytes",
        }
    }
}

/// Normalises a raw tar name: the components joined by `/`, no leading or
/// trailing slash. The empty result is the layer root itself.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if out.is_empty() {
                    return Err(PathError::Escapes);
                }
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            name => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    if out.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(out)
}

/// Splits a normalised, non-empty path into its parent (possibly empty: the
/// root) and its last component.
pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Whether `path` is `ancestor` or lies below it (both normalised).
pub(crate) fn is_within(path: &[u8], ancestor: &[u8]) -> bool {
    if ancestor.is_empty() {
        return true;
    }
    path.starts_with(ancestor) && (path.len() == ancestor.len() || path[ancestor.len()] == b'/')
}

/// What the last component of an entry name means to a layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role<'a> {
    /// An ordinary name: the entry is created as it says.
    Plain,
    /// `.wh..wh..opq`: the parent directory becomes opaque.
    Opaque,
    /// `.wh.NAME`: NAME of lower layers is deleted.
    Whiteout(&'a [u8]),
    /// AUFS bookkeeping (`.wh..wh.*` other than the opaque marker): skipped,
    /// as Docker skips it.
    AufsMeta,
    /// `.wh.`, `.wh..` or `.wh...`: a whiteout naming nothing, an error.
    InvalidWhiteout,
}

/// Classifies a normalised path by its whiteout role.
pub(crate) fn role(path: &[u8]) -> Role<'_> {
    let (parent, name) = split_parent(path);
    if parent
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(WHITEOUT_META_PREFIX))
    {
        // Inside an AUFS metadata directory such as `.wh..wh.plnk/`.
        return Role::AufsMeta;
    }
    if name == OPAQUE_MARKER {
        return Role::Opaque;
    }
    if name.starts_with(WHITEOUT_META_PREFIX) {
        return Role::AufsMeta;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        None => Role::Plain,
        Some(b"" | b"." | b"..") => Role::InvalidWhiteout,
        Some(target) => Role::Whiteout(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, PathError> {
        normalize(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn normalises_like_a_chroot() {
        assert_eq!(norm("a/b/c").unwrap(), "a/b/c");
        assert_eq!(norm("./a/./b/").unwrap(), "a/b");
        assert_eq!(norm("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(norm("//a//b").unwrap(), "a/b");
        assert_eq!(norm("a/../b").unwrap(), "b");
        assert_eq!(norm("a/b/../../c").unwrap(), "c");
        assert_eq!(norm("").unwrap(), "");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm("/").unwrap(), "");
        assert_eq!(norm("a/..").unwrap(), "");
        assert_eq!(norm("...").unwrap(), "...");
        assert_eq!(norm("a/..b").unwrap(), "a/..b");
    }

    #[test]
    fn refuses_to_climb_out() {
        assert_eq!(norm("../x"), Err(PathError::Escapes));
        assert_eq!(norm("a/../../x"), Err(PathError::Escapes));
        assert_eq!(norm("/../x"), Err(PathError::Escapes));
        assert_eq!(norm("./.."), Err(PathError::Escapes));
    }

    #[test]
    fn refuses_nul_and_overlong_names() {
        assert_eq!(normalize(b"a\0b"), Err(PathError::Nul));
        assert_eq!(norm(&"d/".repeat(2049)), Err(PathError::TooLong));
        assert_eq!(norm(&"d/".repeat(2048)).unwrap().len(), MAX_PATH_BYTES);
    }

    #[test]
    fn splits_and_nests() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(!is_within(b"ab", b"a"));
        assert!(is_within(b"x", b""));
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(role(b"a/b"), Role::Plain);
        assert_eq!(role(b"a/.wh..wh..opq"), Role::Opaque);
        assert_eq!(role(b".wh..wh..opq"), Role::Opaque);
        assert_eq!(role(b"a/.wh.b"), Role::Whiteout(b"b"));
        assert_eq!(role(b".wh..b"), Role::Whiteout(b".b"));
        assert_eq!(role(b"a/.wh."), Role::InvalidWhiteout);
        assert_eq!(role(b"a/.wh.."), Role::InvalidWhiteout);
        assert_eq!(role(b"a/.wh..."), Role::InvalidWhiteout);
        assert_eq!(role(b".wh..wh.aufs"), Role::AufsMeta);
        assert_eq!(role(b".wh..wh.plnk/123.45"), Role::AufsMeta);
        assert_eq!(role(b"x.wh.y"), Role::Plain);
    }
}
