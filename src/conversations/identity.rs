//! The Dify `user` of a request. Dify scopes conversations and uploaded files by this
//! string, so it must be stable per person: the first of the configured user-id headers
//! (Open WebUI's `X-OpenWebUI-User-Id` by default, any capitalisation), the body's `user`,
//! then DEFAULT_USER. Changing how users are derived orphans existing Dify conversations.

use axum::http::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// `header:<name>`, `body` or `default`: logged, and shown by the doctor.
    pub source: String,
}

pub fn resolve_identity(
    headers: &HeaderMap,
    body_user: Option<&str>,
    header_names: &[String],
    default_user: &str,
) -> Identity {
    for name in header_names {
        if let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::trim) {
            if !value.is_empty() {
                return Identity { user: value.to_string(), source: format!("header:{name}") };
            }
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
