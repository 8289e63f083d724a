//! Azure OpenAI: OpenAI's wire format ([`super::openai`]) behind
//! per-deployment URLs, an `api-version` query and an `api-key` header.
//!
//! The base URL is the resource's `…/openai` (for example
//! `https://NAME.openai.azure.com/openai`); an `?api-version=…` on it
//! replaces [`DEFAULT_API_VERSION`]. The model is the deployment's name.

use http::{HeaderMap, Method};

use super::openai::{
    chat_request_json, embeddings_request_body, parse_chat_response, parse_embeddings_response,
    parse_error, Dialect, OpenAiStreamDecoder,
};
use super::{
    json_body, json_content_type, path_segment, secret_header, Provider, StreamDecoder,
    UpstreamRequest,
};
use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Format, FormatError,
    ProviderError, Usage,
};
use crate::formats::openai::VerbatimChat;

/// The API version asked for unless the base URL names one.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The adapter for Azure OpenAI deployments.
#[derive(Debug)]
pub struct AzureOpenAi {
    base_url: String,
    api_version: String,
}

impl AzureOpenAi {
    pub fn new(base_url: &str) -> AzureOpenAi {
        let (base, query) = base_url.split_once('?').unwrap_or((base_url, ""));
        let api_version = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("api-version="))
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_API_VERSION);
        AzureOpenAi {
            base_url: base.trim_end_matches('/').to_owned(),
            api_version: api_version.to_owned(),
        }
    }

    fn request(
        &self,
        model: &str,
        operation: &str,
        key: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<UpstreamRequest, FormatError> {
        let deployment = path_segment(model, "the deployment name")?;
        let mut headers = vec![json_content_type()];
        if let Some(key) = key {
            headers.push(secret_header("api-key", key)?);
        }
        Ok(UpstreamRequest {
            method: Method::POST,
            url: format!(
                "{}/deployments/{deployment}/{operation}?api-version={}",
                self.base_url, self.api_version
            ),
            headers,
            body,
        })
    }
}

impl Provider for AzureOpenAi {
    fn chat_request(
        &self,
        request: &ChatRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let body = chat_request_json(request, model, Dialect::Azure);
        self.request(model, "chat/completions", key, body)
    }

    fn chat_request_verbatim(
        &self,
        chat: &VerbatimChat,
        model: &str,
        key: Option<&str>,
    ) -> Option<Result<UpstreamRequest, FormatError>> {
        let body = Dialect::Azure.verbatim_body(chat, model)?;
        Some(self.request(model, "chat/completions", key, body))
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, ProviderError> {
        parse_chat_response(body)
    }

    fn native_format(&self) -> Option<Format> {
        Some(Format::OpenAi)
    }

    fn native_usage(&self, body: &[u8]) -> Option<Usage> {
        super::openai_wire::completion_usage(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStreamDecoder::new())
    }

    fn embeddings_request(
        &self,
        request: &EmbeddingsRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let body = json_body(embeddings_request_body(request, model, Dialect::Azure));
        self.request(model, "embeddings", key, body)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, ProviderError> {
        parse_embeddings_response(body)
    }

    fn error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::formats::openai::tests::client_chat_expected;
    use crate::providers::{adapter, ProviderKind};

    #[test]
    fn requests_name_the_deployment_version_and_key() {
        let azure = adapter(
            ProviderKind::AzureOpenAi,
            "https://contoso.openai.azure.com/openai/",
        );
        let request = azure
            .chat_request(&client_chat_expected(), "gpt4o-prod", Some("azure-key-1"))
            .unwrap();
        assert_eq!(
            request.url,
            "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        let key = request
            .headers
            .iter()
            .find(|(n, _)| n == "api-key")
            .unwrap();
        assert_eq!(key.1.to_str().unwrap(), "azure-key-1");
        assert!(key.1.is_sensitive());
        assert!(!request.headers.iter().any(|(n, _)| n == "authorization"));
        assert!(!format!("{request:?}").contains("azure-key-1"));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));

        let request = azure
            .embeddings_request(
                &EmbeddingsRequest {
                    model: "e".into(),
                    input: vec!["x".into()],
                    dimensions: None,
                    user: None,
                },
                "embed-small",
                Some("k"),
            )
            .unwrap();
        assert_eq!(
            request.url,
            "https://contoso.openai.azure.com/openai/deployments/embed-small/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn the_base_url_may_name_the_api_version() {
        let azure = AzureOpenAi::new(
            "https://contoso.openai.azure.com/openai?api-version=2025-01-01-preview",
        );
        let request = azure
            .chat_request(&client_chat_expected(), "o3-mini", None)
            .unwrap();
        assert_eq!(
            request.url,
            "https://contoso.openai.azure.com/openai/deployments/o3-mini/chat/completions?api-version=2025-01-01-preview"
        );
    }

    #[test]
    fn deployment_names_cannot_change_the_path() {
        let azure = adapter(
            ProviderKind::AzureOpenAi,
            "https://contoso.openai.azure.com/openai",
        );
        let error = azure
            .chat_request(&client_chat_expected(), "../admin?x=", Some("k"))
            .unwrap_err();
        assert!(error.0.contains("cannot be used in a URL path"));
    }
}
