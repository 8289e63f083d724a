//! The match patterns of an API, parsed once: paths and hosts.
//!
//! Validation and the router share these types, so what `tollgate validate`
//! accepts is exactly what the router understands.

/// A path pattern from `match.paths`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// `=/health`: only this exact (normalised) path.
    Exact(String),
    /// `/orders/{id}`: this path and everything below it; `{param}` stands for one segment.
    Prefix(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

impl PathPattern {
    /// Parses a pattern, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let (exact, path) = match text.strip_prefix('=') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if !path.starts_with('/') {
            return Err("must start with '/'".into());
        }
        if path.contains("//") {
            return Err("must not contain an empty segment ('//')".into());
        }
        if path
            .bytes()
            .any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace())
        {
            return Err("must not contain '?', '#' or whitespace".into());
        }
        let trimmed = path.trim_end_matches('/');
        let mut segments = Vec::new();
        for raw in trimmed.split('/').skip(1) {
            if raw == "." || raw == ".." {
                return Err("must not contain '.' or '..' segments".into());
            }
            if raw.contains('%') {
                return Err("must not contain percent-encoded characters".into());
            }
            if let Some(inner) = raw.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(format!(
                        "segment `{raw}`: a parameter must be a whole `{{name}}` segment"
                    ));
                };
                if exact {
                    return Err("an exact path (`=`) cannot contain parameters".into());
                }
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "segment `{raw}`: parameter names are letters, digits and '_'"
                    ));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if raw.contains('{') || raw.contains('}') {
                return Err(format!(
                    "segment `{raw}`: a parameter must be a whole `{{name}}` segment"
                ));
            } else {
                segments.push(Segment::Literal(raw.to_string()));
            }
        }
        if exact {
            let exact_path = if trimmed.is_empty() { "/" } else { trimmed };
            Ok(PathPattern::Exact(exact_path.to_string()))
        } else {
            Ok(PathPattern::Prefix(segments))
        }
    }

    /// Whether `path` (already normalised, starting with '/') matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(exact) => {
                path == exact
                    || (path.len() == exact.len() + 1
                        && path.starts_with(exact.as_str())
                        && path.ends_with('/'))
            }
            PathPattern::Prefix(segments) => {
                let mut rest = path.split('/').skip(1).filter(|s| !s.is_empty());
                for segment in segments {
                    let Some(actual) = rest.next() else {
                        return false;
                    };
                    if let Segment::Literal(literal) = segment {
                        if literal != actual {
                            return false;
                        }
                    }
                }
                true
            }
        }
    }

    /// Literal path bytes this pattern fixes: the prefix a `strip_prefix` would remove.
    pub fn literal_len(&self) -> usize {
        match self {
            PathPattern::Exact(p) => p.len(),
            PathPattern::Prefix(segments) => segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.len() + 1,
                    Segment::Param(_) => 1,
                })
                .sum(),
        }
    }
}

/// A host pattern from `match.hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// A full name, lower-cased.
    Exact(String),
    /// `*.example.org`, stored as `.example.org`: matches `a.example.org`
    /// and `a.b.example.org`, not `example.org`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() {
            return Err("must name a host".into());
        }
        if name.contains(':') {
            return Err("must not contain a port".into());
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !name.split('.').all(valid_label) {
            return Err(format!(
                "`{text}` is not a valid host name (wildcards only as a leading `*.`)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Whether `host` (lower-case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_itself_and_below() {
        let p = PathPattern::parse("/orders").unwrap();
        assert!(p.matches("/orders"));
        assert!(p.matches("/orders/"));
        assert!(p.matches("/orders/42"));
        assert!(!p.matches("/ordersx"));
        assert!(!p.matches("/"));
    }

    #[test]
    fn params_match_one_segment() {
        let p = PathPattern::parse("/orders/{id}/items").unwrap();
        assert!(p.matches("/orders/42/items"));
        assert!(p.matches("/orders/42/items/7"));
        assert!(!p.matches("/orders/42"));
        assert!(!p.matches("/orders/42/other"));
    }

    #[test]
    fn exact_matches_only_itself() {
        let p = PathPattern::parse("=/health").unwrap();
        assert!(p.matches("/health"));
        assert!(p.matches("/health/"));
        assert!(!p.matches("/health/x"));
        assert!(!p.matches("/healthz"));
    }

    #[test]
    fn bad_paths_say_why() {
        assert_eq!(
            PathPattern::parse("orders").unwrap_err(),
            "must start with '/'"
        );
        assert!(PathPattern::parse("/a/../b").is_err());
        assert!(PathPattern::parse("/a/{id").is_err());
        assert!(PathPattern::parse("/a/x{id}").is_err());
        assert!(PathPattern::parse("=/a/{id}").is_err());
    }

    #[test]
    fn wildcard_hosts() {
        let h = HostPattern::parse("*.example.org").unwrap();
        assert!(h.matches("a.example.org"));
        assert!(h.matches("a.b.example.org"));
        assert!(!h.matches("example.org"));
        assert!(!h.matches("aexample.org"));
        assert!(HostPattern::parse("a.*.org").is_err());
        assert!(HostPattern::parse("API.Example.com")
            .unwrap()
            .matches("api.example.com"));
    }
}
