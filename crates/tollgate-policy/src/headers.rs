//! Request and response header transforms, applied in the order
//! rename → remove → set.
//!
//! Names and values are parsed once at compile time; config validation already
//! guarantees they parse, and any that do not are skipped rather than failing
//! a request.

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_config::policy::HeaderOps;

/// A compiled [`HeaderOps`].
#[derive(Clone, Debug, Default)]
pub struct HeaderTransform {
    /// `(from, to)`: when `from` is present, all its values move to `to`,
    /// replacing whatever `to` held.
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
    /// Replaces every value the header had.
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderTransform {
    pub fn compile(ops: &HeaderOps) -> HeaderTransform {
        let name = |s: &String| HeaderName::from_bytes(s.as_bytes()).ok();
        HeaderTransform {
            rename: ops
                .rename
                .iter()
                .filter_map(|(from, to)| Some((name(from)?, name(to)?)))
                .filter(|(from, to)| from != to)
                .collect(),
            remove: ops.remove.iter().filter_map(name).collect(),
            set: ops
                .set
                .iter()
                .filter_map(|(n, v)| Some((name(n)?, HeaderValue::from_str(v).ok()?)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rename.is_empty() && self.remove.is_empty() && self.set.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (from, to) in &self.rename {
            rename(headers, from, to);
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
    }
}

/// Moves every value of `from` to `to` (in order), replacing `to`'s values.
fn rename(headers: &mut HeaderMap, from: &HeaderName, to: &HeaderName) {
    let Entry::Occupied(entry) = headers.entry(from) else {
        return;
    };
    if entry.iter().nth(1).is_none() {
        // The common case: one value, moved without a temporary list.
        let value = entry.remove();
        headers.insert(to, value);
    } else {
        let (_, drain) = entry.remove_entry_mult();
        let values: Vec<HeaderValue> = drain.collect();
        headers.remove(to);
        for value in values {
            headers.append(to, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(rename: &[(&str, &str)], remove: &[&str], set: &[(&str, &str)]) -> HeaderOps {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        HeaderOps {
            rename: pairs(rename),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            set: pairs(set),
        }
    }

    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn empty_ops_are_empty() {
        let t = HeaderTransform::compile(&HeaderOps::default());
        assert!(t.is_empty());
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        t.apply(&mut headers);
        assert_eq!(values(&headers, "x-a"), ["1"]);
    }

    #[test]
    fn set_replaces_every_value() {
        let t = HeaderTransform::compile(&ops(&[], &[], &[("X-Env", "prod")]));
        assert!(!t.is_empty());
        let mut headers = HeaderMap::new();
        headers.append("x-env", HeaderValue::from_static("dev"));
        headers.append("x-env", HeaderValue::from_static("test"));
        t.apply(&mut headers);
        assert_eq!(values(&headers, "x-env"), ["prod"]);

        let mut headers = HeaderMap::new();
        t.apply(&mut headers);
        assert_eq!(values(&headers, "x-env"), ["prod"]);
    }

    #[test]
    fn remove_drops_every_value_case_insensitively() {
        let t = HeaderTransform::compile(&ops(&[], &["X-Powered-By", "server"], &[]));
        let mut headers = HeaderMap::new();
        headers.append("x-powered-by", HeaderValue::from_static("a"));
        headers.append("x-powered-by", HeaderValue::from_static("b"));
        headers.insert("server", HeaderValue::from_static("upstream"));
        headers.insert("x-keep", HeaderValue::from_static("1"));
        t.apply(&mut headers);
        assert!(!headers.contains_key("x-powered-by"));
        assert!(!headers.contains_key("server"));
        assert_eq!(values(&headers, "x-keep"), ["1"]);
    }

    #[test]
    fn rename_moves_every_value_and_replaces_the_target() {
        let t = HeaderTransform::compile(&ops(&[("x-old", "X-New")], &[], &[]));
        let mut headers = HeaderMap::new();
        headers.append("x-old", HeaderValue::from_static("1"));
        headers.append("x-old", HeaderValue::from_static("2"));
        headers.append("x-old", HeaderValue::from_static("3"));
        headers.insert("x-new", HeaderValue::from_static("spoofed"));
        t.apply(&mut headers);
        assert!(!headers.contains_key("x-old"));
        assert_eq!(values(&headers, "x-new"), ["1", "2", "3"]);

        // Single value.
        let mut headers = HeaderMap::new();
        headers.insert("x-old", HeaderValue::from_static("only"));
        t.apply(&mut headers);
        assert_eq!(values(&headers, "x-new"), ["only"]);

        // Absent source: the target is left alone.
        let mut headers = HeaderMap::new();
        headers.insert("x-new", HeaderValue::from_static("kept"));
        t.apply(&mut headers);
        assert_eq!(values(&headers, "x-new"), ["kept"]);
    }

    #[test]
    fn order_is_rename_remove_set() {
        // rename a→b, then remove b (drops the renamed values), then set c.
        let t = HeaderTransform::compile(&ops(&[("a", "b"), ("c", "d")], &["b"], &[("d", "set")]));
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.insert("c", HeaderValue::from_static("2"));
        t.apply(&mut headers);
        assert!(!headers.contains_key("a"));
        assert!(!headers.contains_key("b"));
        assert!(!headers.contains_key("c"));
        assert_eq!(values(&headers, "d"), ["set"]);
    }

    #[test]
    fn invalid_entries_are_skipped() {
        let t = HeaderTransform::compile(&ops(
            &[("bad name", "x-to")],
            &["bad name"],
            &[("x-ok", "fine"), ("x-bad", "line\nbreak")],
        ));
        assert!(t.rename.is_empty());
        assert!(t.remove.is_empty());
        assert_eq!(t.set.len(), 1);
    }
}
