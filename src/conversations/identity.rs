//! The Dify `user` of a request. Dify scopes conversations and uploaded files by this
//! string, so it must be stable per person and never shared by two people.
//!
//! Without OPENWEBUI_JWT_SECRET: the first of the configured user-id headers (Open WebUI's
//! `X-OpenWebUI-User-Id` by default, any capitalisation), then the body's `user`, then
//! DEFAULT_USER. With it, only Open WebUI's signed `X-OpenWebUI-User-Jwt` names the user: a
//! request without a valid token is refused, whatever its body or plain headers say.
//!
//! Header values are read as UTF-8 after percent-decoding (Open WebUI percent-encodes
//! non-ASCII text), so `jos%C3%A9` and the raw bytes of `josé` are one user; a value that is
//! not UTF-8 is refused rather than replaced by DEFAULT_USER, which would merge people.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::bridge::ApiError;
use crate::config::Config;
use crate::secret::Secret;

/// Open WebUI's signed user header (with `FORWARD_USER_INFO_HEADER_JWT_SECRET` set there).
pub const JWT_HEADER: &str = "x-openwebui-user-jwt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub source: IdentitySource,
}

/// Where the user came from: logged, and shown by the doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The verified `X-OpenWebUI-User-Jwt`.
    Jwt,
    /// A plain header, by its (lowercase) name.
    Header(String),
    /// The body's `user` field.
    Body,
    /// DEFAULT_USER: the request named nobody.
    Default,
}

impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentitySource::Jwt => f.write_str("jwt"),
            IdentitySource::Header(name) => write!(f, "header:{name}"),
            IdentitySource::Body => f.write_str("body"),
            IdentitySource::Default => f.write_str("default"),
        }
    }
}

/// How users are told apart, from the configuration.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    jwt_secret: Option<Secret>,
    user_headers: Vec<String>,
    default_user: String,
}

#[derive(Debug, Deserialize)]
struct OpenWebUiClaims {
    sub: String,
}

impl IdentityRules {
    pub fn from_config(config: &Config) -> Self {
        IdentityRules {
            jwt_secret: config.jwt_secret.clone(),
            user_headers: config.user_id_headers.clone(),
            default_user: config.default_user.clone(),
        }
    }

    /// The user of a request; `body_user` is what the request body names (OpenAI's `user`,
    /// Anthropic's `metadata.user_id`).
    pub fn resolve(&self, headers: &HeaderMap, body_user: Option<&str>) -> Result<Identity, ApiError> {
        if let Some(secret) = &self.jwt_secret {
            return verified(headers, secret);
        }
        for name in &self.user_headers {
            if let Some(user) = header_text(headers, name)? {
                return Ok(Identity { user, source: IdentitySource::Header(name.clone()) });
            }
        }
        if let Some(user) = body_user.map(str::trim).filter(|u| !u.is_empty()) {
            return Ok(Identity { user: user.to_string(), source: IdentitySource::Body });
        }
        Ok(Identity { user: self.default_user.clone(), source: IdentitySource::Default })
    }
}

fn unauthorized(message: String, code: &'static str) -> ApiError {
    ApiError::unauthorized(message).code(code)
}

/// JWT mode: the signed token (HS256, not expired) is the only source of the user.
fn verified(headers: &HeaderMap, secret: &Secret) -> Result<Identity, ApiError> {
    let Some(token) = headers.get(JWT_HEADER) else {
        return Err(unauthorized(
            "This gateway identifies users only by Open WebUI's signed X-OpenWebUI-User-Jwt header \
             (OPENWEBUI_JWT_SECRET is set), and the request has none; the body's `user` and plain user \
             headers are not trusted. In Open WebUI set ENABLE_FORWARD_USER_INFO_HEADERS=true and \
             FORWARD_USER_INFO_HEADER_JWT_SECRET to the same secret."
                .into(),
            "missing_user_token",
        ));
    };
    let invalid = |why: String| unauthorized(format!("Invalid X-OpenWebUI-User-Jwt: {why}"), "invalid_user_token");
    let token = token.to_str().map_err(|_| invalid("not text".into()))?.trim();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 30;
    let data = jsonwebtoken::decode::<OpenWebUiClaims>(
        token,
        &DecodingKey::from_secret(secret.expose().as_bytes()),
        &validation,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let user = data.claims.sub.trim().to_string();
    if user.is_empty() {
        return Err(invalid("empty subject".into()));
    }
    if user.chars().any(char::is_control) {
        return Err(invalid("the subject contains control characters".into()));
    }
    Ok(Identity { user, source: IdentitySource::Jwt })
}

/// A token as Open WebUI signs it (HS256, `sub` = the user, valid for five minutes): what
/// `doctor test-stream --via` sends in JWT mode, so the check goes through [`verified`].
pub fn sign_user_token(secret: &Secret, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = crate::conversations::record::now_secs() + 300;
    let claims = serde_json::json!({"sub": user, "iss": "open-webui", "exp": exp, "role": "user"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// The trimmed text of a client header carrying an id (user, chat), percent-decoded;
/// `None` when absent or empty. Bytes that are not UTF-8, or control characters, are a 400
/// naming the header: guessing would put two people (or two chats) under one id.
pub fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let bad = |why: &str| {
        ApiError::invalid_request(format!(
            "The {name} header {why}; send the id as UTF-8, percent-encoded if it is not ASCII (jos%C3%A9)"
        ))
        .param(name.to_string())
        .code("invalid_header")
    };
    let text = percent_encoding::percent_decode(value.as_bytes())
        .decode_utf8()
        .map_err(|_| bad("is not valid UTF-8 (after percent-decoding)"))?;
    let text = text.trim();
    if text.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// The first of `names` a request carries, read by [`header_text`].
pub fn first_header(headers: &HeaderMap, names: &[String]) -> Result<Option<String>, ApiError> {
    for name in names {
        if let Some(value) = header_text(headers, name)? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    fn rules(secret: Option<&str>) -> IdentityRules {
        IdentityRules {
            jwt_secret: secret.map(Secret::new),
            user_headers: vec!["x-openwebui-user-id".to_string()],
            default_user: "default_user".to_string(),
        }
    }

    #[test]
    fn the_doctors_token_is_one_serve_accepts() {
        let secret = Secret::new("s3cret");
        let mut headers = HeaderMap::new();
        let token = sign_user_token(&secret, "opendify-doctor").expect("sign");
        headers.insert(JWT_HEADER, token.parse().expect("header"));
        assert_eq!(rules(Some("s3cret")).resolve(&headers, None).expect("valid").user, "opendify-doctor");
    }

    fn token(secret: &str, sub: &str, exp_offset: i64) -> String {
        let exp = (crate::conversations::record::now_secs() as i64 + exp_offset) as u64;
        let claims = serde_json::json!({"sub": sub, "iss": "open-webui", "exp": exp, "role": "user"});
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("encode")
    }

    #[test]
    fn jwt_mode_takes_the_user_from_the_signed_token_only() {
        let jwt = rules(Some("s3cret"));
        let mut headers = HeaderMap::new();
        headers.insert("x-openwebui-user-id", "mallory".parse().expect("header"));
        // The reproduction of the impersonation: no token, a body user and a plain header.
        let refused = jwt.resolve(&headers, Some("alice")).expect_err("no token must be refused");
        assert_eq!(refused.status, 401);
        assert_eq!(refused.code.as_deref(), Some("missing_user_token"));
        headers.insert(JWT_HEADER, token("s3cret", "alice", 300).parse().expect("header"));
        let id = jwt.resolve(&headers, Some("bob")).expect("valid");
        assert_eq!((id.user.as_str(), &id.source), ("alice", &IdentitySource::Jwt));
        headers.insert(JWT_HEADER, token("wrong", "alice", 300).parse().expect("header"));
        assert_eq!(jwt.resolve(&headers, None).expect_err("bad signature").code.as_deref(), Some("invalid_user_token"));
        headers.insert(JWT_HEADER, token("s3cret", "alice", -3600).parse().expect("header"));
        assert_eq!(jwt.resolve(&headers, None).expect_err("expired").status, 401);
    }

    #[test]
    fn header_beats_body_beats_default_and_names_are_case_insensitive() {
        let plain = rules(None);
        let mut headers = HeaderMap::new();
        assert_eq!(plain.resolve(&headers, None).expect("ok").source, IdentitySource::Default);
        assert_eq!(plain.resolve(&headers, Some("bob")).expect("ok").user, "bob");
        headers.insert("X-OpenWebUI-User-Id", "u-42".parse().expect("header"));
        let id = plain.resolve(&headers, Some("bob")).expect("ok");
        assert_eq!(id.user, "u-42");
        assert_eq!(id.source.to_string(), "header:x-openwebui-user-id");
    }

    #[test]
    fn non_ascii_ids_are_read_as_utf8_whether_raw_or_percent_encoded() {
        let plain = rules(None);
        let mut headers = HeaderMap::new();
        headers.insert("x-openwebui-user-id", HeaderValue::from_bytes("josé".as_bytes()).expect("header"));
        let raw = plain.resolve(&headers, None).expect("raw UTF-8");
        headers.insert("x-openwebui-user-id", HeaderValue::from_static("jos%C3%A9"));
        let encoded = plain.resolve(&headers, None).expect("percent-encoded");
        assert_eq!(raw.user, "josé");
        assert_eq!(encoded.user, "josé");
        // A lone percent sign is not an escape: kept as it is.
        headers.insert("x-openwebui-user-id", HeaderValue::from_static("100%"));
        assert_eq!(plain.resolve(&headers, None).expect("ok").user, "100%");
    }

    #[test]
    fn ids_that_are_not_utf8_are_refused_never_merged_into_the_default_user() {
        let plain = rules(None);
        let mut headers = HeaderMap::new();
        headers.insert("x-openwebui-user-id", HeaderValue::from_bytes(b"jos\xe9").expect("header"));
        let error = plain.resolve(&headers, None).expect_err("latin-1 bytes");
        assert_eq!(error.status, 400);
        assert_eq!(error.param.as_deref(), Some("x-openwebui-user-id"));
        headers.insert("x-openwebui-user-id", HeaderValue::from_static("jos%E9"));
        assert_eq!(plain.resolve(&headers, None).expect_err("encoded latin-1").status, 400);
        headers.insert("x-openwebui-user-id", HeaderValue::from_static("a%0Ab"));
        assert_eq!(plain.resolve(&headers, None).expect_err("encoded newline").status, 400);
    }
}
