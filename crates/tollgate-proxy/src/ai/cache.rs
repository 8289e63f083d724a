//! The opt-in exact-match response cache of an AI API (`ai.cache`).
//!
//! Only deterministic requests are cached — `temperature: 0` or a `seed` —
//! since any other answer is one draw among many. The key is the SHA-256 of
//! the canonical request (model, messages, tools and every parameter but
//! `stream` and `user`), so an OpenAI and an Anthropic client asking the
//! same thing share an entry, and a streamed request can be answered from a
//! whole one. A hit costs nothing and calls no provider.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tollgate_ai::{ChatRequest, ChatResponse, Format};

pub(crate) type CacheKey = [u8; 32];

pub struct ResponseCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<CacheKey, (Instant, Arc<CachedAnswer>)>,
    /// Keys in insertion order: the oldest go first when full.
    order: VecDeque<CacheKey>,
}

/// A cached answer and who served it.
pub(crate) struct CachedAnswer {
    pub response: ChatResponse,
    /// The provider's answer as it came, when it is written in a format
    /// clients speak (`Provider::native_format`): a hit in that format, not
    /// streamed, is given these bytes, as the miss was.
    pub native: Option<(Format, Bytes)>,
    pub provider: Arc<str>,
    pub model: Arc<str>,
    /// The serving target's `X-Tollgate-Provider` and `X-Tollgate-Model`.
    pub answer_headers: Arc<[(http::HeaderName, http::HeaderValue)]>,
}

impl ResponseCache {
    pub fn new(ttl: Duration, max_entries: usize) -> ResponseCache {
        ResponseCache {
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::default(),
        }
    }

    pub(crate) fn has_settings(&self, ttl: Duration, max_entries: usize) -> bool {
        self.ttl == ttl && self.max_entries == max_entries.max(1)
    }

    /// The key of a cacheable request; `None` for one that is not deterministic.
    pub(crate) fn key(request: &ChatRequest) -> Option<CacheKey> {
        let deterministic = request.temperature == Some(0.0) || request.seed.is_some();
        if !deterministic {
            return None;
        }
        let mut body = tollgate_ai::formats::openai::chat_body(request);
        body.remove("stream");
        body.remove("stream_options");
        body.remove("user");
        let canonical = serde_json::to_vec(&body).ok()?;
        Some(Sha256::digest(&canonical).into())
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, answer) = entries.by_key.get(key)?;
        (*expires > Instant::now()).then(|| answer.clone())
    }

    pub(crate) fn put(&self, key: CacheKey, answer: CachedAnswer) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entries = &mut *entries;
        if entries
            .by_key
            .insert(key, (now + self.ttl, Arc::new(answer)))
            .is_none()
        {
            entries.order.push_back(key);
        }
        while entries.by_key.len() > self.max_entries {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.by_key.remove(&oldest);
        }
        // Expired entries at the front go too, so memory follows the TTL.
        while let Some(front) = entries.order.front() {
            match entries.by_key.get(front) {
                Some((expires, _)) if *expires > now => break,
                _ => {
                    let front = *front;
                    entries.order.pop_front();
                    entries.by_key.remove(&front);
                }
            }
        }
    }
}
