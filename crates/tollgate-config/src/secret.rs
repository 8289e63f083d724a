//! Secret values: `env:NAME` read from the environment at load time, or a
//! literal (accepted, with a warning). The written form is kept so that
//! serialising a configuration never expands an environment secret.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// `env:NAME`: the value of the environment variable `NAME`.
    Env(String),
    /// A value written in the file itself.
    Literal(String),
}

impl Secret {
    /// The secret's value; an unset variable is an error message for the field.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(value),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            },
            Secret::Literal(value) => Ok(value.clone()),
        }
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, Secret::Literal(_))
    }
}

/// Never prints a literal's value: configurations end up in logs.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "env:{name}"),
            Secret::Literal(_) => f.write_str("<redacted>"),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Secret::Env(name) => s.collect_str(&format_args!("env:{name}")),
            Secret::Literal(value) => s.serialize_str(value),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.strip_prefix("env:") {
            Some(name) => Secret::Env(name.trim().to_string()),
            None => Secret::Literal(text),
        })
    }
}
