//! Prompt APIs: one prompt served as a plain REST endpoint. The JSON body's
//! variables are checked against their schemas and placed into the
//! template; the model's answer comes back as `{"result", "usage"}`, or as
//! a stream of `{"delta"}` events with `?stream=true`.
//!
//! A variable's value is inserted once, as text: it is never read as
//! template syntax (a value holding `{{other}}` stays those characters), and
//! it goes into the user turn's text, never into the request's structure.

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tollgate_ai::{ChatRequest, Format, Message, Role, StreamEvent, Usage};

/// One piece of a compiled template.
enum Piece {
    Text(String),
    Variable(String),
}

struct Variable {
    name: String,
    validator: jsonschema::Validator,
    default: Option<Value>,
}

pub struct PromptRuntime {
    pub model: String,
    pieces: Vec<Piece>,
    system: Option<String>,
    variables: Vec<Variable>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
}

/// Largest prompt API body read.
pub(crate) const MAX_PROMPT_BODY: u64 = 1024 * 1024;

impl PromptRuntime {
    pub fn compile(prompt: &tollgate_config::PromptApi) -> Result<PromptRuntime, String> {
        let mut pieces = Vec::new();
        let mut rest = prompt.template.as_str();
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("a `{{` is not closed")?;
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            pieces.push(Piece::Variable(after[..end].trim().to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        let mut variables = Vec::new();
        for (name, schema) in &prompt.variables {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| format!("variables.{name}: not a valid JSON Schema: {e}"))?;
            variables.push(Variable {
                name: name.clone(),
                validator,
                default: schema.get("default").cloned(),
            });
        }
        Ok(PromptRuntime {
            model: prompt.model.clone(),
            pieces,
            system: prompt.system.clone(),
            variables,
            max_tokens: prompt.max_tokens,
            temperature: prompt.temperature,
        })
    }

    /// The chat request for a client's body, or why the body is refused.
    pub fn request(&self, body: &[u8], stream: bool) -> Result<ChatRequest, String> {
        let values: Map<String, Value> = match serde_json::from_slice(body) {
            Ok(Value::Object(values)) => values,
            Ok(_) => return Err("the body must be a JSON object of the prompt's variables".into()),
            Err(e) => return Err(format!("the body is not valid JSON: {e}")),
        };
        if let Some(unknown) = values
            .keys()
            .find(|k| !self.variables.iter().any(|v| &v.name == *k))
        {
            return Err(format!("`{unknown}` is not a variable of this prompt"));
        }
        let mut resolved: Vec<(&str, Value)> = Vec::new();
        for variable in &self.variables {
            let value = match values.get(&variable.name).or(variable.default.as_ref()) {
                Some(value) => value,
                None => return Err(format!("`{}` is required", variable.name)),
            };
            if let Some(error) = variable.validator.iter_errors(value).next() {
                return Err(format!("`{}`: {error}", variable.name));
            }
            resolved.push((&variable.name, value.clone()));
        }
        let mut text = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => text.push_str(t),
                Piece::Variable(name) => {
                    if let Some((_, value)) = resolved.iter().find(|(n, _)| n == name) {
                        match value {
                            Value::String(s) => text.push_str(s),
                            other => text.push_str(&other.to_string()),
                        }
                    }
                }
            }
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::text(Role::System, system.clone()));
        }
        messages.push(Message::text(Role::User, text));
        Ok(ChatRequest {
            model: self.model.clone(),
            messages,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: None,
            stop: Vec::new(),
            stream,
            tools: Vec::new(),
            tool_choice: None,
            seed: None,
            user: None,
            extra: Map::new(),
            extra_format: Format::OpenAi,
        })
    }
}

/// `{"result": "...", "usage": {...}}`.
pub(crate) fn render_result(text: &str, usage: &Usage, cost_usd: Option<f64>) -> Bytes {
    Bytes::from(
        json!({
            "result": text,
            "usage": usage_json(usage, cost_usd),
        })
        .to_string(),
    )
}

fn usage_json(usage: &Usage, cost_usd: Option<f64>) -> Value {
    json!({
        "input_tokens": usage.input,
        "output_tokens": usage.output,
        "cost_usd": cost_usd,
    })
}

/// `data: {"delta": "..."}` events, then `data: {"done": true, "usage": …}`.
#[derive(Default)]
pub(crate) struct PromptStreamRenderer {
    usage: Option<Usage>,
}

impl PromptStreamRenderer {
    pub fn event(&mut self, event: &StreamEvent) -> Bytes {
        match event {
            StreamEvent::Text(text) => {
                Bytes::from(format!("data: {}\n\n", json!({ "delta": text })))
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                Bytes::new()
            }
            _ => Bytes::new(),
        }
    }

    pub fn done(&mut self) -> Bytes {
        let usage = self
            .usage
            .map(|u| json!({ "input_tokens": u.input, "output_tokens": u.output }));
        Bytes::from(format!(
            "data: {}\n\n",
            json!({ "done": true, "usage": usage })
        ))
    }
}
