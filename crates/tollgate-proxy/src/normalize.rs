//! Path normalisation, done exactly once, before routing.
//!
//! The rule (also in `docs/routing.md`):
//! 1. percent-encoded unreserved characters (letters, digits, `-`, `.`, `_`,
//!    `~`: `%61`, `%2e`, `%7E`) are decoded, as RFC 3986 §6.2.2.2 makes them
//!    equivalent and upstreams decode them; no other escape is touched, so
//!    `%2F` never becomes a separator;
//! 2. runs of `/` collapse into one;
//! 3. `.` segments are removed and `..` removes the segment before it;
//!    a `..` that would climb above `/` is a `bad_request`;
//! 4. an encoded NUL (`%00`), a `%` not followed by two hex digits or a raw
//!    control byte is a `bad_request` (a malformed escape could otherwise
//!    become a valid one once decoded: `%%36%31` → `%61`).
//!
//! The normalised path is both what the router sees and what the upstream
//! receives, so the two can never disagree about which resource is meant.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    AboveRoot,
    Forbidden,
    BadEscape,
    NotAbsolute,
}

impl PathError {
    pub fn message(&self) -> &'static str {
        match self {
            PathError::AboveRoot => "the path climbs above the root",
            PathError::Forbidden => "the path contains a forbidden character",
            PathError::BadEscape => "the path contains a malformed percent-escape",
            PathError::NotAbsolute => "the path must start with '/'",
        }
    }
}

/// Normalises a request path (without its query). Borrows when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass over the bytes for both questions: three substring searches
    // after a scan for control bytes cost ~300 instructions on every request.
    let bytes = path.as_bytes();
    let mut needs_work = false;
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            0..0x20 | 0x7f => return Err(PathError::Forbidden),
            b'%' => needs_work = true,
            b'/' => needs_work |= matches!(bytes.get(at + 1), Some(b'/' | b'.')),
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }

    // Step 1: decode encoded unreserved characters; refuse an encoded NUL
    // and malformed escapes.
    let decoded = decode_unreserved(path)?;

    // Steps 2 and 3: walk the segments.
    let ends_with_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (ends_with_slash && !segments.is_empty()) {
        out.push('/');
    }
    if out == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(out))
}

/// Decodes `%XX` when it stands for an unreserved character: otherwise
/// `/%61dmin` would miss the routes of `/admin` and still reach the upstream's
/// `/admin`.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                return Err(PathError::BadEscape);
            };
            let b = (high * 16 + low) as u8;
            if b == 0 {
                return Err(PathError::Forbidden);
            }
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only ASCII bytes were replaced by ASCII bytes, so the result is still UTF-8.
    String::from_utf8(out).map_err(|_| PathError::Forbidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/orders/42").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_path("/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn the_rule() {
        assert_eq!(norm("//orders///42").unwrap(), "/orders/42");
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/%2e%2E/c").unwrap(), "/c");
        assert_eq!(norm("/a/%2e/c").unwrap(), "/a/c");
        assert_eq!(norm("/admin/..%2fsecret").unwrap(), "/admin/..%2fsecret");
        assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/%41").unwrap(), "/a/A");
        assert_eq!(norm("/%61dmin/%7e%2D%5f").unwrap(), "/admin/~-_");
        assert_eq!(norm("/a/%2F%3f%25%20").unwrap(), "/a/%2F%3f%25%20");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/etc"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a%00b"), Err(PathError::Forbidden));
        // A control byte after what needs normalising is still found.
        assert_eq!(norm("/a//b\x7f"), Err(PathError::Forbidden));
        assert_eq!(norm("/%41/\x01"), Err(PathError::Forbidden));
        assert_eq!(norm("relative"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/%%36%31dmin"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
    }

    /// Seeded random paths built from the pieces that matter: the rule's
    /// invariants hold for every one, and normalising is idempotent.
    #[test]
    fn invariants_on_random_paths() {
        const PIECES: &[&str] = &[
            "a",
            "b",
            "",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "%2f",
            "%2F..",
            "x%41",
            "%%36%31",
            "%6%31",
            "%7e%25%32%65",
            "caf%C3%A9",
            "...",
            ".a",
            "a.",
        ];
        let mut rng = fastrand::Rng::with_seed(0x7011_6a7e);
        for _ in 0..20_000 {
            let segments = rng.usize(0..8);
            let mut path = String::new();
            for _ in 0..segments {
                path.push('/');
                path.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            if path.is_empty() || rng.bool() {
                path.push('/');
            }
            let Ok(normal) = normalize_path(&path) else {
                continue;
            };
            assert!(normal.starts_with('/'), "{path} -> {normal}");
            assert!(!normal.contains("//"), "{path} -> {normal}");
            for segment in normal.split('/') {
                assert!(segment != "." && segment != "..", "{path} -> {normal}");
                assert!(!segment.eq_ignore_ascii_case("%2e"), "{path} -> {normal}");
            }
            // What is left encoded is never an unreserved character.
            for escape in normal.split('%').skip(1) {
                let b = u8::from_str_radix(&escape[..2], 16).unwrap();
                assert!(
                    !(b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                    "{path} -> {normal}"
                );
            }
            assert_eq!(
                normalize_path(&normal).unwrap(),
                normal,
                "not idempotent for {path}"
            );
        }
    }
}
