//! Builds the Dify request for an OpenAI chat request: which text becomes the `query` (or the
//! app's input variable), where the system prompt goes, how earlier turns are carried when a
//! new Dify conversation has to be started, and which files are attached.
//!
//! Framing, when a new conversation needs context (documented in the README):
//! ```text
//! [System instructions]
//! …system messages…
//!
//! [Earlier conversation]
//! User: …
//! Assistant: …
//!
//! [Current message]
//! …the last user message…
//! ```
//! With neither a system prompt nor earlier turns, the query is the user's text as is.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::apps::AppRoute;
use crate::dify::{AppMode, DifyClient, FileRef, GenerateRequest};
use crate::openai::{ApiError, ChatCompletionRequest, ContentPart, Role};

/// How the request relates to a Dify conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationPlan {
    /// Continue this conversation (Dify has the earlier turns).
    pub conversation_id: Option<String>,
    /// Branch from this message (regenerate/edit), when the server supports it.
    pub parent_message_id: Option<String>,
    /// Index of the first message to carry as context in a new conversation (`None`: none).
    pub seed_from: Option<usize>,
}

pub struct BuildOptions<'a> {
    pub user: &'a str,
    pub system_input: Option<&'a str>,
}

/// Builds the body for the app's generate endpoint. Files must have been resolved before.
pub fn build(
    request: &ChatCompletionRequest,
    route: &AppRoute,
    plan: &ConversationPlan,
    files: Vec<FileRef>,
    options: &BuildOptions<'_>,
) -> GenerateRequest {
    let last_user = request.last_user_index();
    let user_text = request.messages[last_user].text();
    let mut inputs: Map<String, Value> = request.inputs.clone().unwrap_or_default();

    let system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| matches!(m.role, Role::System | Role::Developer))
        .map(|m| m.text())
        .filter(|t| !t.trim().is_empty())
        .collect();
    let starts_conversation = plan.conversation_id.is_none();
    let mut sections: Vec<String> = Vec::new();
    // A continued conversation already has its system prompt and inputs on Dify's side.
    if starts_conversation && !system.is_empty() {
        let text = system.join("\n\n");
        match options.system_input {
            Some(var) => {
                inputs.insert(var.to_string(), Value::String(text));
            }
            None => sections.push(format!("[System instructions]\n{text}")),
        }
    }
    if let (Some(from), true) = (plan.seed_from, route.mode.is_chat_family()) {
        let transcript = transcript(request, from, last_user);
        if !transcript.is_empty() {
            sections.push(format!("[Earlier conversation]\n{transcript}"));
        }
    }
    let query = if sections.is_empty() {
        user_text
    } else {
        sections.push(format!("[Current message]\n{user_text}"));
        sections.join("\n\n")
    };

    let mut body = GenerateRequest {
        inputs,
        query: None,
        response_mode: "streaming",
        user: options.user.to_string(),
        conversation_id: None,
        parent_message_id: None,
        files,
        auto_generate_name: None,
    };
    match route.mode {
        AppMode::Workflow => {
            body.inputs.insert(route.input_variable(), Value::String(query));
        }
        AppMode::Completion => {
            let var = route.input_variable();
            let declared =
                route.parameters.as_ref().is_some_and(|p| p.input_fields().iter().any(|f| f.variable == var));
            if declared || route.input.is_some() {
                body.inputs.insert(var, Value::String(query.clone()));
            }
            body.query = Some(query);
        }
        _ => {
            body.query = Some(query);
            body.conversation_id = plan.conversation_id.clone();
            body.parent_message_id = plan.parent_message_id.clone();
            // Titles cost an extra LLM call per conversation; OpenAI clients make their own.
            body.auto_generate_name = Some(false);
        }
    }
    body
}

fn transcript(request: &ChatCompletionRequest, from: usize, until: usize) -> String {
    request.messages[from.min(until)..until]
        .iter()
        .filter_map(|m| {
            let who = match m.role {
                Role::User => "User",
                Role::Assistant => "Assistant",
                _ => return None,
            };
            let text = m.text();
            (!text.trim().is_empty()).then(|| format!("{who}: {text}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Uploaded files by (app key, user, content hash): a history image is not uploaded again
/// on every turn. Bounded: cleared when full.
#[derive(Default)]
pub struct UploadCache {
    ids: Mutex<HashMap<[u8; 32], String>>,
}

const UPLOAD_CACHE_MAX: usize = 4096;

impl UploadCache {
    fn get(&self, key: &[u8; 32]) -> Option<String> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }
    fn put(&self, key: [u8; 32], id: String) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() >= UPLOAD_CACHE_MAX {
            ids.clear();
        }
        ids.insert(key, id);
    }
}

/// Turns the last user message's image, file and audio parts into Dify files, uploading
/// inline data. Checks the app's upload settings first, with a clear 400 when violated.
pub async fn resolve_files(
    request: &ChatCompletionRequest,
    route: &AppRoute,
    user: &str,
    client: &DifyClient,
    cache: &UploadCache,
) -> Result<Vec<FileRef>, ApiError> {
    let index = request.last_user_index();
    let parts = request.messages[index].parts(index)?;
    let attachments: Vec<(usize, &ContentPart)> =
        parts.iter().enumerate().filter(|(_, p)| !matches!(p, ContentPart::Text(_))).collect();
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(params) = &route.parameters {
        if !params.file_upload_enabled() {
            return Err(ApiError::invalid_request(format!(
                "Model `{}` does not accept files or images: file upload is switched off in its Dify app (enable it under Features > File upload)",
                route.name
            ))
            .param(format!("messages[{index}].content"))
            .code("files_not_supported"));
        }
        if let Some((_, Some(limit))) = params.image_upload() {
            let images = attachments.iter().filter(|(_, p)| matches!(p, ContentPart::Image { .. })).count() as u64;
            if images > limit {
                return Err(ApiError::invalid_request(format!(
                    "Model `{}` accepts at most {limit} images per message; messages[{index}] has {images}",
                    route.name
                ))
                .param(format!("messages[{index}].content")));
            }
        }
    }
    let mut files = Vec::new();
    for (part_index, part) in attachments {
        let param = format!("messages[{index}].content[{part_index}]");
        let file = match part {
            ContentPart::Image { url } if !url.starts_with("data:") => FileRef {
                kind: "image".into(),
                transfer_method: "remote_url".into(),
                url: Some(url.clone()),
                upload_file_id: None,
            },
            ContentPart::Image { url } => {
                let (mime, bytes) = decode_data_url(url, &param)?;
                let name = format!("image.{}", extension_for(&mime));
                upload(client, cache, route, user, &name, &mime, bytes, &param).await?
            }
            ContentPart::File { data: Some(data), filename, .. } => {
                let (mime, bytes) = decode_data_url(data, &param)?;
                let name = filename.clone().unwrap_or_else(|| format!("file.{}", extension_for(&mime)));
                upload(client, cache, route, user, &name, &mime, bytes, &param).await?
            }
            ContentPart::File { file_id: Some(id), .. } => FileRef {
                kind: "document".into(),
                transfer_method: "local_file".into(),
                url: None,
                upload_file_id: Some(id.clone()),
            },
            ContentPart::Audio { data, format } => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| {
                    ApiError::invalid_request(format!("`{param}.input_audio.data` is not valid base64: {e}"))
                        .param(param.clone())
                })?;
                let mime = format!("audio/{}", if format == "mp3" { "mpeg" } else { format.as_str() });
                upload(client, cache, route, user, &format!("audio.{format}"), &mime, bytes, &param).await?
            }
            _ => continue,
        };
        files.push(file);
    }
    Ok(files)
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    client: &DifyClient,
    cache: &UploadCache,
    route: &AppRoute,
    user: &str,
    filename: &str,
    mime: &str,
    bytes: Vec<u8>,
    param: &str,
) -> Result<FileRef, ApiError> {
    let kind = dify_file_type(mime);
    let mut hasher = Sha256::new();
    hasher.update(route.key.expose().as_bytes());
    hasher.update([0]);
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(&bytes);
    let cache_key: [u8; 32] = hasher.finalize().into();
    let id = match cache.get(&cache_key) {
        Some(id) => id,
        None => {
            let uploaded = client.upload(&route.key, user, filename, mime, bytes).await.map_err(|e| {
                let mut err = ApiError::from_dify(&e, &route.name);
                err.message = format!("Uploading `{param}` to Dify failed: {}", err.message);
                err
            })?;
            cache.put(cache_key, uploaded.id.clone());
            uploaded.id
        }
    };
    Ok(FileRef { kind: kind.into(), transfer_method: "local_file".into(), url: None, upload_file_id: Some(id) })
}

/// `data:image/png;base64,AAAA` → (`image/png`, bytes).
pub fn decode_data_url(url: &str, param: &str) -> Result<(String, Vec<u8>), ApiError> {
    let bad = |why: &str| {
        ApiError::invalid_request(format!("`{param}` is not a usable data: URL: {why}")).param(param.to_string())
    };
    let rest = url.strip_prefix("data:").ok_or_else(|| bad("it must start with data:"))?;
    let (meta, payload) = rest.split_once(',').ok_or_else(|| bad("no comma before the data"))?;
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(bad("only base64 data is supported (…;base64,…)"));
    };
    let mime = if mime.is_empty() { "application/octet-stream" } else { mime };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| bad(&format!("bad base64 ({e})")))?;
    if bytes.is_empty() {
        return Err(bad("the data is empty"));
    }
    Ok((mime.to_ascii_lowercase(), bytes))
}

fn dify_file_type(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or("") {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        _ => "document",
    }
}

fn extension_for(mime: &str) -> &str {
    match mime {
        "image/jpeg" => "jpg",
        "image/svg+xml" => "svg",
        "audio/mpeg" => "mp3",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        other => other.split('/').nth(1).filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric())).unwrap_or("bin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(mode: AppMode) -> AppRoute {
        AppRoute {
            name: "m".into(),
            key: crate::secret::Secret::new("app-k"),
            mode,
            mode_source: "configured",
            input: None,
            output: None,
            app_name: None,
            parameters: None,
            discovery_error: None,
        }
    }

    fn req(json: &str) -> ChatCompletionRequest {
        ChatCompletionRequest::from_slice(json.as_bytes()).expect("valid request")
    }

    const OPTS: BuildOptions<'static> = BuildOptions { user: "u1", system_input: None };

    #[test]
    fn plain_message_is_the_query_as_is() {
        let r = req(r#"{"model":"m","messages":[{"role":"user","content":"Hi there"}]}"#);
        let body = build(&r, &route(AppMode::Chat), &ConversationPlan::default(), vec![], &OPTS);
        assert_eq!(body.query.as_deref(), Some("Hi there"));
        assert_eq!(body.user, "u1");
        assert_eq!(body.response_mode, "streaming");
        assert!(body.inputs.is_empty());
    }

    #[test]
    fn system_and_history_are_framed_for_a_new_conversation_only() {
        let r = req(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#,
        );
        let plan = ConversationPlan { seed_from: Some(0), ..Default::default() };
        let body = build(&r, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(
            body.query.as_deref(),
            Some(
                "[System instructions]\nBe brief\n\n[Earlier conversation]\nUser: a\nAssistant: b\n\n[Current message]\nc"
            )
        );
        let plan = ConversationPlan { conversation_id: Some("conv".into()), ..Default::default() };
        let body = build(&r, &route(AppMode::Chat), &plan, vec![], &OPTS);
        assert_eq!(body.query.as_deref(), Some("c"));
        assert_eq!(body.conversation_id.as_deref(), Some("conv"));
    }

    #[test]
    fn system_input_variable_and_workflow_input() {
        let r = req(r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"go"}]}"#);
        let opts = BuildOptions { user: "u", system_input: Some("persona") };
        let body = build(&r, &route(AppMode::Workflow), &ConversationPlan::default(), vec![], &opts);
        assert_eq!(body.inputs.get("persona"), Some(&Value::String("S".into())));
        assert_eq!(body.inputs.get("query"), Some(&Value::String("go".into())));
        assert!(body.query.is_none() && body.conversation_id.is_none());
    }

    #[test]
    fn data_urls_decode_or_fail_clearly() {
        let (mime, bytes) = decode_data_url("data:image/png;base64,aGVsbG8=", "p").expect("valid");
        assert_eq!((mime.as_str(), bytes.as_slice()), ("image/png", b"hello".as_slice()));
        assert!(decode_data_url("data:image/png;base64,@@@", "p").expect_err("bad").message.contains("bad base64"));
        assert!(decode_data_url("data:image/png,plain", "p").is_err());
    }
}
