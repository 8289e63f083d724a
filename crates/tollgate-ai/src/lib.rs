//! The AI gateway's core, free of network and runtime: what a chat request
//! is ([`canonical`]), how clients write it ([`formats`]: OpenAI, Anthropic),
//! how each provider wants it ([`providers`]: one module per provider kind,
//! behind [`providers::Provider`]), Server-Sent Events ([`sse`]), token
//! estimates ([`tokens`]), prices ([`prices`]) and the prompt guard
//! ([`guard`]).
//!
//! Every request goes client format → canonical → provider format, and every
//! answer (whole or streamed) provider format → canonical → client format, so
//! any client format reaches any provider. The proxy crate does the I/O.

pub mod canonical;
pub mod formats;
pub mod guard;
pub mod prices;
pub mod providers;
pub mod sse;
pub mod tokens;

pub use canonical::*;
