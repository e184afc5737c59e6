//! The Dify `user` of a request. Dify scopes conversations and uploaded files by this
//! string, so it must be stable per person: the first of the configured user-id headers
//! (Open WebUI's `X-OpenWebUI-User-Id` by default, any capitalisation), the body's `user`,
//! then DEFAULT_USER. Changing how users are derived orphans existing Dify conversations.

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::openai::ApiError;
use crate::secret::Secret;

/// Open WebUI's signed user header (sent instead of the plain ones when it has a secret).
pub const JWT_HEADER: &str = "x-openwebui-user-jwt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// `header:<name>`, `body` or `default`: logged, and shown by the doctor.
    pub source: String,
}

#[derive(Debug, Deserialize)]
struct OpenWebUiClaims {
    sub: String,
}

/// With OPENWEBUI_JWT_SECRET set, the user comes only from a valid signed token (HS256, not
/// expired): plain user headers are ignored, so no client can pose as another user. Without
/// a token, the body's `user` or DEFAULT_USER applies.
pub fn resolve_verified_identity(
    headers: &HeaderMap,
    body_user: Option<&str>,
    secret: &Secret,
    default_user: &str,
) -> Result<Identity, ApiError> {
    let Some(token) = headers.get(JWT_HEADER) else {
        return Ok(resolve_identity(headers, body_user, &[], default_user));
    };
    let unauthorized = |why: String| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", format!("Invalid X-OpenWebUI-User-Jwt: {why}"))
            .code("invalid_user_token")
    };
    let token = token.to_str().map_err(|_| unauthorized("not text".into()))?.trim();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 30;
    let data = jsonwebtoken::decode::<OpenWebUiClaims>(
        token,
        &DecodingKey::from_secret(secret.expose().as_bytes()),
        &validation,
    )
    .map_err(|e| unauthorized(e.to_string()))?;
    let user = data.claims.sub.trim().to_string();
    if user.is_empty() {
        return Err(unauthorized("empty subject".into()));
    }
    Ok(Identity { user, source: "jwt".into() })
}

pub fn resolve_identity(
    headers: &HeaderMap,
    body_user: Option<&str>,
    header_names: &[String],
    default_user: &str,
) -> Identity {
    for name in header_names {
        if let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::trim)
            && !value.is_empty()
        {
            return Identity { user: value.to_string(), source: format!("header:{name}") };
        }
    }
    if let Some(user) = body_user.map(str::trim).filter(|u| !u.is_empty()) {
        return Identity { user: user.to_string(), source: "body".into() };
    }
    Identity { user: default_user.to_string(), source: "default".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &str, sub: &str, exp_offset: i64) -> String {
        let exp = (crate::conversations::store::now_secs() as i64 + exp_offset) as u64;
        let claims = serde_json::json!({"sub": sub, "iss": "open-webui", "exp": exp, "role": "user"});
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("encode")
    }

    #[test]
    fn signed_token_decides_the_user_and_plain_headers_are_ignored() {
        let secret = Secret::new("s3cret");
        let mut headers = HeaderMap::new();
        headers.insert("x-openwebui-user-id", "mallory".parse().expect("header"));
        let id = resolve_verified_identity(&headers, None, &secret, "d").expect("no token is fine");
        assert_eq!(id.user, "d", "plain header must be ignored in JWT mode");
        headers.insert(JWT_HEADER, token("s3cret", "alice", 300).parse().expect("header"));
        assert_eq!(resolve_verified_identity(&headers, None, &secret, "d").expect("valid").user, "alice");
        headers.insert(JWT_HEADER, token("wrong", "alice", 300).parse().expect("header"));
        assert_eq!(resolve_verified_identity(&headers, None, &secret, "d").expect_err("bad sig").status, 401);
        headers.insert(JWT_HEADER, token("s3cret", "alice", -3600).parse().expect("header"));
        assert_eq!(resolve_verified_identity(&headers, None, &secret, "d").expect_err("expired").status, 401);
    }

    #[test]
    fn header_beats_body_beats_default_and_names_are_case_insensitive() {
        let names = vec!["x-openwebui-user-id".to_string()];
        let mut headers = HeaderMap::new();
        assert_eq!(resolve_identity(&headers, None, &names, "default_user").user, "default_user");
        assert_eq!(resolve_identity(&headers, Some("bob"), &names, "d").user, "bob");
        headers.insert("X-OpenWebUI-User-Id", "u-42".parse().expect("header"));
        let id = resolve_identity(&headers, Some("bob"), &names, "d");
        assert_eq!((id.user.as_str(), id.source.as_str()), ("u-42", "header:x-openwebui-user-id"));
    }
}
