//! The formats clients write: OpenAI (chat completions, embeddings, models)
//! and Anthropic (messages). Each parses a client's body into the canonical
//! model and renders canonical answers, streams and errors back.

pub mod anthropic;
pub mod openai;
pub(crate) mod openai_plain;
