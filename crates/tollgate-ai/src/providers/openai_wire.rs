//! Typed, borrowing views of OpenAI's chat completions and stream chunks:
//! the hot path's parse.
//!
//! Every call's answer (and every event of a stream) is read here. Parsing
//! it into a `serde_json::Value` built a map and a string for every field,
//! most of which the gateway never reads; these views name only the fields
//! it reads, borrow strings from the body where they hold no escapes, and
//! let serde skip the rest.
//!
//! They are strict where the `Value` reading is lenient (a field of an
//! unexpected type fails the whole parse). A caller that gets `None` reads
//! the body again as a `Value`, so an odd but acceptable answer is read
//! exactly as before and a well-formed one gives the same result both ways.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::canonical::Usage;

/// A chat completion, or one chunk of a streamed one.
#[derive(Deserialize)]
pub(crate) struct Completion<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(borrow, default)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// Present (and not null) on an error inside a stream: the caller
    /// reads such a chunk the general way.
    #[serde(default)]
    pub error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
pub(crate) struct Choice<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    /// A whole completion's turn.
    #[serde(borrow, default)]
    pub message: Option<Turn<'a>>,
    /// A chunk's increment.
    #[serde(borrow, default)]
    pub delta: Option<Turn<'a>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(crate) struct Turn<'a> {
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<WireToolCall<'a>>>,
}

#[derive(Deserialize)]
pub(crate) struct WireToolCall<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<Function<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct Function<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// JSON text; arguments sent as an object are read the general way.
    #[serde(borrow, default)]
    pub arguments: Option<Cow<'a, str>>,
}

/// A message's `content`: a string or (Mistral) an array of parts.
pub(crate) enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<ContentPart<'a>>),
}

#[derive(Deserialize)]
pub(crate) struct ContentPart<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
}

impl Content<'_> {
    /// The text, with only the text parts of an array counted.
    pub fn text(&self) -> String {
        match self {
            Content::Text(text) => text.to_string(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|part| part.kind.as_deref() == Some("text"))
                .filter_map(|part| part.text.as_deref())
                .collect(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// OpenAI's usage (see [`super::openai::parse_usage`] for what the fields mean).
#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    /// `Some(None)` for an explicit null, which counts as 0 rather than
    /// falling back to DeepSeek's field (as the general reading does).
    #[serde(default, deserialize_with = "present")]
    cached_tokens: Option<Option<u64>>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
}

impl WireUsage {
    pub fn usage(&self) -> Usage {
        let cached = match self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
        {
            Some(cached) => cached.unwrap_or(0),
            None => self.prompt_cache_hit_tokens.unwrap_or(0),
        };
        Usage {
            input: self.prompt_tokens.unwrap_or(0),
            output: self.completion_tokens.unwrap_or(0),
            cached_input: cached,
            reasoning: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// The typed view of `body`, or `None` when it does not fit (the caller
/// then reads it as a `Value`).
pub(crate) fn completion(body: &[u8]) -> Option<Completion<'_>> {
    crate::from_json_bytes(body)
}

/// A whole completion read for its usage alone: what the gateway needs of an
/// answer it passes on as it came. Every other field is skipped, not read
/// into fields and strings: about half the cost of [`completion`].
#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    choices: Option<FirstChoiceIsObject>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A list of choices whose first is an object, the least the general
/// reading takes (it answers anything less with a `502`); fails otherwise.
struct FirstChoiceIsObject;

impl<'de> Deserialize<'de> for FirstChoiceIsObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choices;
        impl<'de> Visitor<'de> for Choices {
            type Value = FirstChoiceIsObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of choices, the first an object")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if seq.next_element::<AnObject>()?.is_none() {
                    return Err(de::Error::invalid_length(0, &self));
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoiceIsObject)
            }
        }
        deserializer.deserialize_seq(Choices)
    }
}

/// Any JSON object, skipped.
struct AnObject;

impl<'de> Deserialize<'de> for AnObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Asked for a map, a deserializer refuses anything else; `IgnoredAny`
        // skips the map's entries.
        deserializer.deserialize_map(IgnoredAny).map(|_| AnObject)
    }
}

/// The usage a whole completion reports, read as [`completion`] would read
/// it; `None` when it reports none or is not one the general reading takes
/// (the caller then reads it whole, and estimates or refuses as usual).
pub(crate) fn completion_usage(body: &[u8]) -> Option<Usage> {
    let read: UsageOnly = crate::from_json_bytes(body)?;
    read.choices?;
    read.usage.map(|usage| usage.usage())
}
