//! Who may use the gateway. With PROXY_API_KEYS set, every API request must carry one of the
//! keys, as `Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>` (Anthropic's);
//! anything else gets a 401 in the caller's API shape, which every SDK understands. Keys are compared as SHA-256 digests in constant time, so neither the
//! content nor the length of a key leaks through response timing.
//!
//! DIFY_KEY_PASSTHROUGH=true lets a client send a Dify app key (`app-…`) instead: it is used
//! as the app key for that request (per-user keys of the same app), and Dify checks it.

use std::net::{IpAddr, SocketAddr};

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::Dialect;
use crate::bridge::ApiError;
use crate::config::Config;
use crate::secret::Secret;

/// The app key a client sent with DIFY_KEY_PASSTHROUGH, carried to the chat handler as a
/// request extension.
#[derive(Clone)]
pub struct ClientAppKey(pub Secret);

pub struct Auth {
    digests: Vec<[u8; 32]>,
    passthrough: bool,
}

/// What a request may do after the check.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// A proxy key matched, or no client auth is configured.
    Granted,
    /// The client's own Dify app key, to be used for this request.
    Passthrough(Secret),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

impl Refusal {
    pub fn into_error(self) -> ApiError {
        let message = match self {
            Refusal::Missing => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>` (one of PROXY_API_KEYS)."
            }
            Refusal::Invalid => "Incorrect API key provided. Use one of the keys in opendify's PROXY_API_KEYS.",
        };
        ApiError::unauthorized(message).code("invalid_api_key")
    }

    pub fn into_response(self, dialect: Dialect) -> Response {
        let mut response = dialect.error_response(&self.into_error());
        response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        response
    }
}

impl Auth {
    pub fn new(keys: &[Secret], passthrough: bool) -> Self {
        let digests = keys.iter().filter(|k| !k.is_empty()).map(|k| digest(k.expose().trim())).collect();
        Auth { digests, passthrough }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.proxy_api_keys, config.dify_key_passthrough)
    }

    /// Whether clients must present a key.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<Access, Refusal> {
        let token = bearer(headers).or_else(|| api_key(headers));
        if self.required() {
            let Some(token) = token else { return Err(Refusal::Missing) };
            let presented = digest(token);
            // Every key is compared, whatever matched: the time taken does not depend on which.
            let matched = self.digests.iter().fold(subtle::Choice::from(0), |acc, key| acc | key.ct_eq(&presented));
            if bool::from(matched) {
                return Ok(Access::Granted);
            }
        }
        match token {
            Some(token) if self.passthrough && token.starts_with("app-") && token.len() > 4 => {
                Ok(Access::Passthrough(Secret::new(token)))
            }
            _ if self.required() => Err(Refusal::Invalid),
            _ => Ok(Access::Granted),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of `Authorization: Bearer <token>` (scheme in any case), if well formed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Anthropic's `x-api-key: <token>`.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    let token = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!token.is_empty()).then_some(token)
}

/// The startup warning when anyone who can reach the port can use the gateway.
pub fn warn_if_open(auth: &Auth, local: SocketAddr) {
    if auth.required() || is_loopback(local.ip()) {
        return;
    }
    tracing::warn!(
        "⚠️ ⚠️ ⚠️  opendify is listening on {local} WITHOUT client authentication: anyone who can reach this \
         port can use your Dify apps and spend your tokens. Set PROXY_API_KEYS=<a long random key> (clients send \
         it as `Authorization: Bearer <key>`), or bind to 127.0.0.1 with SERVER_HOST."
    );
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).expect("header"));
        h
    }

    #[test]
    fn keys_are_required_when_configured() {
        let auth = Auth::new(&[Secret::new("sk-one"), Secret::new("sk-two")], false);
        assert_eq!(auth.check(&headers("Bearer sk-two")), Ok(Access::Granted));
        assert_eq!(auth.check(&headers("bearer  sk-one ")), Ok(Access::Granted));
        assert_eq!(auth.check(&headers("Bearer sk-three")), Err(Refusal::Invalid));
        assert_eq!(auth.check(&headers("Bearer sk-on")), Err(Refusal::Invalid));
        assert_eq!(auth.check(&headers("Basic sk-one")), Err(Refusal::Missing));
        assert_eq!(auth.check(&HeaderMap::new()), Err(Refusal::Missing));
        assert_eq!(auth.check(&headers("Bearer app-user-key")), Err(Refusal::Invalid));
        let mut anthropic = HeaderMap::new();
        anthropic.insert("x-api-key", HeaderValue::from_static("sk-two"));
        assert_eq!(auth.check(&anthropic), Ok(Access::Granted), "Anthropic's SDK sends x-api-key");
    }

    #[test]
    fn no_keys_means_open_and_passthrough_takes_app_keys_only() {
        let open = Auth::new(&[], false);
        assert!(!open.required());
        assert_eq!(open.check(&HeaderMap::new()), Ok(Access::Granted));
        assert_eq!(open.check(&headers("Bearer app-mine")), Ok(Access::Granted));

        let pass = Auth::new(&[Secret::new("sk-proxy")], true);
        assert_eq!(pass.check(&headers("Bearer app-mine")), Ok(Access::Passthrough(Secret::new("app-mine"))));
        assert_eq!(pass.check(&headers("Bearer sk-proxy")), Ok(Access::Granted));
        assert_eq!(pass.check(&headers("Bearer app-")), Err(Refusal::Invalid));
        assert_eq!(pass.check(&headers("Bearer sk-other")), Err(Refusal::Invalid));
    }

    #[test]
    fn the_401_is_openai_shaped_and_never_echoes_the_key() {
        let error = Refusal::Invalid.into_error();
        assert_eq!(error.status, axum::http::StatusCode::UNAUTHORIZED);
        assert_eq!(error.code.as_deref(), Some("invalid_api_key"));
        assert!(crate::api::openai::error_json(&error).contains("\"type\":\"invalid_request_error\""));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1".parse().expect("ip")));
        assert!(is_loopback("::1".parse().expect("ip")));
        assert!(!is_loopback("0.0.0.0".parse().expect("ip")));
        assert!(!is_loopback("192.168.1.2".parse().expect("ip")));
    }
}
