//! Files a client sends with its message (images, documents, audio) as Dify wants them: a
//! URL Dify fetches, or an upload to `/files/upload` under the same user. Uploads are cached
//! per app, user and content, so an image kept in the history is not uploaded every turn.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::apps::AppRoute;
use super::error::ApiError;
use super::turn::{Message, Part, Role, Turn};
use crate::dify::{DifyClient, FileRef};

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

/// Turns the new input's image, file and audio parts (a user message's, and a tool
/// result's: a screenshot tool returns one) into Dify files, uploading inline data. Checks
/// the app's upload settings first, with a clear 400 when violated.
pub async fn resolve_files(
    turn: &Turn,
    route: &AppRoute,
    user: &str,
    client: &DifyClient,
    cache: &UploadCache,
) -> Result<Vec<FileRef>, ApiError> {
    let attached = turn.input().iter().any(|m| m.content.iter().any(|p| !matches!(p, Part::Text(_))));
    if !attached {
        return Ok(Vec::new());
    }
    // Boxed: the upload path's future is large, and most turns carry no file.
    Box::pin(resolve_attached(turn, route, user, client, cache)).await
}

async fn resolve_attached(
    turn: &Turn,
    route: &AppRoute,
    user: &str,
    client: &DifyClient,
    cache: &UploadCache,
) -> Result<Vec<FileRef>, ApiError> {
    let mut files = Vec::new();
    for message in turn.input().iter().filter(|m| matches!(m.role, Role::User | Role::Tool)) {
        files.extend(message_files(message, route, user, client, cache).await?);
    }
    Ok(files)
}

async fn message_files(
    message: &Message,
    route: &AppRoute,
    user: &str,
    client: &DifyClient,
    cache: &UploadCache,
) -> Result<Vec<FileRef>, ApiError> {
    let origin = &message.origin;
    let attachments: Vec<(usize, &Part)> =
        message.content.iter().enumerate().filter(|(_, p)| !matches!(p, Part::Text(_))).collect();
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(params) = &route.parameters {
        if !params.file_upload_enabled() {
            return Err(ApiError::invalid_request(format!(
                "Model `{}` does not accept files or images: file upload is switched off in its Dify app (enable it under Features > File upload)",
                route.name
            ))
            .param(format!("{origin}.content"))
            .code("files_not_supported"));
        }
        if let Some((_, Some(limit))) = params.image_upload() {
            let images = attachments.iter().filter(|(_, p)| matches!(p, Part::Image { .. })).count() as u64;
            if images > limit {
                return Err(ApiError::invalid_request(format!(
                    "Model `{}` accepts at most {limit} images per message; {origin} has {images}",
                    route.name
                ))
                .param(format!("{origin}.content")));
            }
        }
    }
    let mut files = Vec::new();
    for (part_index, part) in attachments {
        let param = format!("{origin}.content[{part_index}]");
        let file = match part {
            Part::Image { url } if !url.starts_with("data:") => FileRef {
                kind: "image".into(),
                transfer_method: "remote_url".into(),
                url: Some(url.clone()),
                upload_file_id: None,
            },
            Part::Image { url } => {
                let (mime, bytes) = decode_data_url(url, &param)?;
                let name = format!("image.{}", extension_for(&mime));
                upload(client, cache, route, user, &name, &mime, bytes, &param).await?
            }
            Part::File { data: Some(data), filename, .. } => {
                let (mime, bytes) = decode_data_url(data, &param)?;
                let name = filename.clone().unwrap_or_else(|| format!("file.{}", extension_for(&mime)));
                upload(client, cache, route, user, &name, &mime, bytes, &param).await?
            }
            Part::File { file_id: Some(id), .. } => FileRef {
                kind: "document".into(),
                transfer_method: "local_file".into(),
                url: None,
                upload_file_id: Some(id.clone()),
            },
            Part::File { url: Some(url), .. } => FileRef {
                kind: "document".into(),
                transfer_method: "remote_url".into(),
                url: Some(url.clone()),
                upload_file_id: None,
            },
            Part::Audio { data, format } => {
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

pub fn dify_file_type(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or("") {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        _ => "document",
    }
}

pub fn extension_for(mime: &str) -> &str {
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

    #[test]
    fn data_urls_decode_or_fail_clearly() {
        let (mime, bytes) = decode_data_url("data:image/png;base64,aGVsbG8=", "p").expect("valid");
        assert_eq!((mime.as_str(), bytes.as_slice()), ("image/png", b"hello".as_slice()));
        assert!(decode_data_url("data:image/png;base64,@@@", "p").expect_err("bad").message.contains("bad base64"));
        assert!(decode_data_url("data:image/png,plain", "p").is_err());
    }
}
