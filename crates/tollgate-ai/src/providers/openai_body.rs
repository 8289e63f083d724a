//! The chat body an OpenAI-style server takes, serialised straight from the
//! canonical request.
//!
//! Every call renders one, so it borrows: no `serde_json::Value` tree is
//! built and no message text is copied before it is written out (the tree
//! built by [`crate::formats::openai::chat_body`] cloned every string and
//! allocated a map per message; building it was ~3.5 % of the AI path's
//! CPU in `perf`). It writes the same fields as that function, with the
//! [`Dialect`]'s changes; a test holds the two to the same JSON.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::openai::{mistral_call_id, Dialect};
use crate::canonical::{ChatRequest, Format, Message, Part, Role, ToolCall, ToolChoice, ToolDef};

/// `request`'s chat completions body for `dialect`, naming `model`.
pub(crate) struct ChatBody<'a> {
    pub request: &'a ChatRequest,
    pub model: &'a str,
    pub dialect: Dialect,
}

impl ChatBody<'_> {
    fn mistral(&self) -> bool {
        self.dialect == Dialect::Mistral
    }

    fn max_tokens_key(&self) -> &'static str {
        self.dialect.max_tokens_key()
    }

    fn seed_key(&self) -> &'static str {
        if self.mistral() {
            "random_seed"
        } else {
            "seed"
        }
    }

    /// Whether a field the client wrote beyond the canonical ones gives way
    /// to one this body writes itself.
    fn overrides(&self, key: &str) -> bool {
        let r = self.request;
        match key {
            "model" | "messages" => true,
            "temperature" => r.temperature.is_some(),
            "top_p" => r.top_p.is_some(),
            "stop" => !r.stop.is_empty(),
            "stream" => r.stream,
            "stream_options" => r.stream && !self.mistral(),
            "tools" => !r.tools.is_empty(),
            "tool_choice" => r.tool_choice.is_some(),
            "user" => r.user.is_some() && !self.mistral(),
            key if key == self.max_tokens_key() => r.max_tokens.is_some(),
            key if key == self.seed_key() => r.seed.is_some(),
            _ => false,
        }
    }
}

impl Serialize for ChatBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        let mut map = serializer.serialize_map(None)?;
        if r.extra_format == Format::OpenAi {
            for (key, value) in &r.extra {
                if !self.overrides(key) {
                    map.serialize_entry(key, value)?;
                }
            }
        }
        map.serialize_entry("model", self.model)?;
        map.serialize_entry(
            "messages",
            &Messages {
                messages: &r.messages,
                mistral: self.mistral(),
            },
        )?;
        if let Some(max_tokens) = r.max_tokens {
            map.serialize_entry(self.max_tokens_key(), &max_tokens)?;
        }
        if let Some(temperature) = r.temperature {
            map.serialize_entry("temperature", &temperature)?;
        }
        if let Some(top_p) = r.top_p {
            map.serialize_entry("top_p", &top_p)?;
        }
        if !r.stop.is_empty() {
            map.serialize_entry("stop", &r.stop)?;
        }
        if r.stream {
            map.serialize_entry("stream", &true)?;
            // Mistral reports usage in the last chunk unasked, and refuses this.
            if !self.mistral() {
                map.serialize_entry("stream_options", &IncludeUsage {})?;
            }
        }
        if !r.tools.is_empty() {
            map.serialize_entry("tools", &Tools(&r.tools))?;
        }
        if let Some(choice) = &r.tool_choice {
            map.serialize_entry("tool_choice", &Choice(choice))?;
        }
        if let Some(seed) = r.seed {
            map.serialize_entry(self.seed_key(), &seed)?;
        }
        if let Some(user) = r.user.as_deref().filter(|_| !self.mistral()) {
            map.serialize_entry("user", user)?;
        }
        map.end()
    }
}

struct IncludeUsage {}

impl Serialize for IncludeUsage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("include_usage", &true)?;
        map.end()
    }
}

struct Messages<'a> {
    messages: &'a [Message],
    /// Mistral takes tool call ids of nine letters and digits only.
    mistral: bool,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.messages.len()))?;
        for message in self.messages {
            seq.serialize_element(&MessageJson {
                message,
                mistral: self.mistral,
            })?;
        }
        seq.end()
    }
}

struct MessageJson<'a> {
    message: &'a Message,
    mistral: bool,
}

impl MessageJson<'_> {
    /// A call id as this server takes it.
    fn call_id<'i>(&self, id: &'i str) -> std::borrow::Cow<'i, str> {
        if self.mistral {
            mistral_call_id(id).into()
        } else {
            id.into()
        }
    }
}

impl Serialize for MessageJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.message;
        let mut map = serializer.serialize_map(None)?;
        let role = match message.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        map.serialize_entry("role", role)?;
        let no_text = message.content.iter().all(|part| match part {
            Part::Text(text) => text.is_empty(),
            Part::Image(_) => false,
        });
        if message.role == Role::Assistant && no_text && !message.tool_calls.is_empty() {
            map.serialize_entry("content", &())?;
        } else {
            map.serialize_entry("content", &Content(&message.content))?;
        }
        if !message.tool_calls.is_empty() {
            map.serialize_entry(
                "tool_calls",
                &Calls {
                    calls: &message.tool_calls,
                    message: self,
                },
            )?;
        }
        if let Some(id) = &message.tool_call_id {
            map.serialize_entry("tool_call_id", &self.call_id(id))?;
        }
        if let Some(name) = &message.name {
            map.serialize_entry("name", name)?;
        }
        map.end()
    }
}

/// One text part as a string, anything else as an array of parts.
struct Content<'a>(&'a [Part]);

impl Serialize for Content<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            [] => serializer.serialize_str(""),
            [Part::Text(text)] => serializer.serialize_str(text),
            parts => {
                let mut seq = serializer.serialize_seq(Some(parts.len()))?;
                for part in parts {
                    seq.serialize_element(&PartJson(part))?;
                }
                seq.end()
            }
        }
    }
}

struct PartJson<'a>(&'a Part);

impl Serialize for PartJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match self.0 {
            Part::Text(text) => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
            }
            Part::Image(image) => {
                map.serialize_entry("type", "image_url")?;
                map.serialize_entry(
                    "image_url",
                    &ImageUrl {
                        url: &image.url,
                        detail: image.detail.as_deref(),
                    },
                )?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

struct Calls<'a> {
    calls: &'a [ToolCall],
    message: &'a MessageJson<'a>,
}

impl Serialize for Calls<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.calls.len()))?;
        for call in self.calls {
            seq.serialize_element(&CallJson {
                id: &self.message.call_id(&call.id),
                kind: "function",
                function: FunctionCall {
                    name: &call.name,
                    arguments: &call.arguments,
                },
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct CallJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

struct Tools<'a>(&'a [ToolDef]);

impl Serialize for Tools<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for tool in self.0 {
            seq.serialize_element(&ToolJson {
                kind: "function",
                function: FunctionDef {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    parameters: &tool.parameters,
                },
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct ToolJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Serialize)]
struct FunctionDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a serde_json::Value,
}

struct Choice<'a>(&'a ToolChoice);

impl Serialize for Choice<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ToolChoice::Auto => serializer.serialize_str("auto"),
            ToolChoice::None => serializer.serialize_str("none"),
            ToolChoice::Required => serializer.serialize_str("required"),
            ToolChoice::Tool(name) => {
                #[derive(Serialize)]
                struct Named<'a> {
                    name: &'a str,
                }
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", "function")?;
                map.serialize_entry("function", &Named { name })?;
                map.end()
            }
        }
    }
}
