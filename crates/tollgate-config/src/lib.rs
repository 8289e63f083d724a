//! Tollgate's resource model: the types of the YAML file (and, later, of the
//! admin API), their defaults, and their validation.
//!
//! This crate is pure: it never touches the network or a database, and reads a
//! file only when asked to through [`load_file`]. Every error carries the field
//! path it is about (`apis[2].match.paths[0]: must start with '/'`) and
//! validation returns all errors at once, not the first.

pub mod ai;
pub mod describe;
pub mod identity;
pub mod model;
pub mod openapi;
pub mod pattern;
pub mod policy;
pub mod resources;
pub mod schema;
pub mod secret;
pub mod units;
mod validate;
pub mod validate_ai;
mod validate_security;

use std::fmt;
use std::path::Path;

pub use ai::*;
pub use identity::*;
pub use model::*;
pub use pattern::{HostPattern, PathPattern, Segment};
pub use policy::*;
pub use secret::Secret;
pub use units::{Duration, Size, Timestamp};

/// One problem in a configuration, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field path, like `apis[2].match.paths[0]`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates a YAML document.
pub fn from_yaml(text: &str) -> Result<Config, Vec<ConfigError>> {
    let config = parse_yaml(text)?;
    let errors = validate::validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Parses a YAML document without validating it: for a document that is
/// one part of a configuration (`tollgate apply` of some resources), which
/// is validated once merged with the rest.
pub fn parse_yaml(text: &str) -> Result<Config, Vec<ConfigError>> {
    // An empty file is a valid, empty configuration.
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = render_path(err.path());
            let inner = err.into_inner();
            vec![ConfigError::new(path, inner.to_string())]
        })?
    };
    Ok(config)
}

/// What loads but deserves a warning (secrets written as literals), with field paths.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    validate_security::warnings(config)
}

/// Reads, parses and validates a YAML file.
pub fn load_file(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    from_yaml(&text)
}

/// serde_path_to_error writes `apis[2].match`; keep that form but drop the
/// leading `.` it gives an empty path, and its `?` for unknown positions.
pub(crate) fn render_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        let config = from_yaml("").unwrap();
        assert_eq!(config.listen.proxy.to_string(), "127.0.0.1:8000");
        assert_eq!(config.limits.max_uri, Size::kib(8));
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let errors = from_yaml("services:\n  - name: a\n    upstrem: {}\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].path.starts_with("services[0]"), "{}", errors[0]);
        assert!(errors[0].message.contains("upstrem"), "{}", errors[0]);
    }

    #[test]
    fn bad_duration_names_its_field() {
        let errors = from_yaml("limits:\n  header_timeout: 10 parsecs\n").unwrap_err();
        assert_eq!(errors[0].path, "limits.header_timeout");
    }
}
