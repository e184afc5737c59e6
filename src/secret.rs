//! Secrets (Dify app keys, proxy keys, JWT secrets, URL credentials) must never reach a log
//! line, an error message or doctor output in full. `Secret` makes the safe thing the
//! default: its `Debug` and `Display` print the masked form, and the real value needs an
//! explicit `expose()`. Every other kind of masking lives here too: keys inside free text,
//! credentials inside URLs, and the [`Redactor`] for text that may hold any of them.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the one place that needs it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        mask(&self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// `app-abcdefgh12345xyz` → `app-ab…yz`. Short values show almost nothing: a masked form must
/// never give away a meaningful fraction of the secret.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match chars.len() {
        0 => "(empty)".to_string(),
        n if n >= 12 => {
            let head: String = chars[..6].iter().collect();
            let tail: String = chars[n - 2..].iter().collect();
            format!("{head}…{tail}")
        }
        n if n >= 6 => {
            let head: String = chars[..2].iter().collect();
            format!("{head}…")
        }
        _ => "…".to_string(),
    }
}

/// Masks every `app-…` token inside free text (a `.env` line, an upstream message), for the
/// places where text that may contain a key has to be shown.
pub fn mask_keys_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("app-") {
        out.push_str(&rest[..pos]);
        let token_len = rest[pos..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len() - pos);
        let token = &rest[pos..pos + token_len];
        // Already masked (`app-ab…yz`): leave it as it is.
        if rest[pos + token_len..].starts_with('…') {
            out.push_str(token);
        } else {
            out.push_str(&mask(token));
        }
        rest = &rest[pos + token_len..];
    }
    out.push_str(rest);
    out
}

/// `user:password@` in a URL (DIFY_API_BASE, a proxy, a Redis store) replaced by `***@`;
/// anything that is not a URL with credentials is returned as it is.
pub fn mask_url_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Replaces every known secret, and anything that looks like one (`app-…` keys, `Bearer`
/// tokens), in text bound for somewhere public (`opendify doctor report`).
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(mut secrets: Vec<String>) -> Redactor {
        // Longest first, so a secret containing another is replaced whole.
        secrets.retain(|s| s.trim().len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), &mask(secret));
            }
        }
        mask_bearer(&mask_keys_in(&mask_url_credentials_in(&text)))
    }
}

/// `Bearer abc…` tokens become `Bearer ***`.
fn mask_bearer(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("Bearer ") {
        out.push_str(&rest[..pos + 7]);
        let after = &rest[pos + 7..];
        let end = after.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(after.len());
        let token = &after[..end];
        if token.is_empty() || token == "***" || token.contains('…') {
            out.push_str(token);
        } else {
            out.push_str("***");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// [`mask_url_credentials`] for every URL inside free text.
fn mask_url_credentials_in(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    text.split_inclusive(char::is_whitespace).map(mask_url_credentials).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_app_keys_like_the_docs() {
        assert_eq!(mask("app-abcdefghijklmnyz"), "app-ab…yz");
        assert_eq!(mask("short1"), "sh…");
        assert_eq!(mask("abc"), "…");
        assert_eq!(mask(""), "(empty)");
    }

    #[test]
    fn masks_keys_inside_text() {
        assert_eq!(mask_keys_in("MODEL_CONFIG={\"a\":\"app-abcdefghijklmnyz\"}"), "MODEL_CONFIG={\"a\":\"app-ab…yz\"}");
        assert_eq!(mask_keys_in("no keys here"), "no keys here");
        assert_eq!(mask_keys_in("key app-ab…yz"), "key app-ab…yz", "masking twice changes nothing");
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("app-0123456789secret");
        assert!(!format!("{s:?}").contains("0123456789"));
        assert!(!format!("{s}").contains("0123456789"));
        assert_eq!(s.expose(), "app-0123456789secret");
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(mask_url_credentials("redis://:hunter2@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(mask_url_credentials("http://u:p@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(mask_url_credentials("http://proxy:3128/a@b"), "http://proxy:3128/a@b");
        assert_eq!(mask_url_credentials("data/conversations.db"), "data/conversations.db");
    }

    #[test]
    fn redaction_masks_known_secrets_bearer_tokens_app_keys_and_url_credentials() {
        let text = "auth=Bearer sk-live-123456 key app-abcdefghijklmnop done \"Bearer xyz\" http://u:pw@proxy:3128 x";
        let masked = Redactor::new(vec!["sk-live-123456".into()]).redact(text);
        assert!(!masked.contains("123456"), "{masked}");
        assert!(!masked.contains("abcdefghijklmnop"), "{masked}");
        assert!(!masked.contains("xyz"), "{masked}");
        assert!(!masked.contains("u:pw"), "{masked}");
        assert!(masked.contains("app-ab…op"), "{masked}");
        assert_eq!(mask_keys_in("{\"m\": \"app-ab…op\"}"), "{\"m\": \"app-ab…op\"}", "masked once only");
    }
}
