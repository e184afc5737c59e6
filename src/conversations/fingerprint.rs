//! Fingerprints of a chat's history, for clients that send no chat id: after each answer,
//! the hash of (app, user, every user/assistant turn so far, the answer) is recorded; the
//! next request whose history before its last user message hashes to the same value
//! continues that conversation.
//!
//! Content is canonicalised first so that harmless differences clients introduce do not
//! break the match: whitespace runs collapse to one space and ends are trimmed, inline
//! reasoning (`<think>…</think>`, `<details…>…</details>`) is dropped from assistant turns,
//! and system messages are left out (clients rewrite system prompts freely). Tool calls and
//! tool results count, as the text blocks they stand for in the conversation.

use sha2::{Digest, Sha256};

use crate::bridge::request::message_text;
use crate::bridge::{Message, Role, Turn};

pub type Fingerprint = [u8; 32];

/// An incremental fingerprint: feed turns in order, take the hash at any point.
#[derive(Clone)]
pub struct Fingerprinter {
    hasher: Sha256,
}

impl Fingerprinter {
    /// `app` identifies the Dify app (a hash of its key, never the key itself).
    pub fn new(app: &str, user: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"opendify-fp-v1\0");
        hasher.update(app.as_bytes());
        hasher.update([0]);
        hasher.update(user.as_bytes());
        hasher.update([0]);
        Fingerprinter { hasher }
    }

    pub fn turn(&mut self, role: Role, text: &str) {
        let tag: &[u8] = match role {
            Role::User => b"u",
            Role::Assistant => b"a",
            Role::Tool => b"t",
            Role::System => return,
        };
        let stripped;
        let text = if role == Role::Assistant && (text.contains("<think>") || text.contains("<details")) {
            stripped = strip_reasoning(text);
            stripped.as_str()
        } else {
            text
        };
        self.hasher.update(tag);
        let mut first = true;
        for word in text.split_whitespace() {
            if !first {
                self.hasher.update(b" ");
            }
            self.hasher.update(word.as_bytes());
            first = false;
        }
        self.hasher.update([0x1e]);
    }

    /// A message of `turn`, as the text it stands for (tool calls and results included).
    pub fn message(&mut self, message: &Message, turn: &Turn) {
        self.turn(message.role, &message_text(message, turn));
    }

    pub fn finish(&self) -> Fingerprint {
        self.hasher.clone().finalize().into()
    }
}

/// Removes `<think>…</think>` and `<details…>…</details>` blocks.
fn strip_reasoning(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let think = rest.find("<think>");
        let details = rest.find("<details");
        let (start, close) = match (think, details) {
            (Some(t), Some(d)) if d < t => (d, "</details>"),
            (Some(t), _) => (t, "</think>"),
            (None, Some(d)) => (d, "</details>"),
            (None, None) => break,
        };
        match rest[start..].find(close) {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + end + close.len()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// A short, stable, non-reversible id for an app key (stored instead of the key).
pub fn app_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    lower_hex(&digest[..8])
}

pub fn hex(fp: &Fingerprint) -> String {
    lower_hex(fp)
}

/// Lowercase hex without a `format!` per byte (this runs on every request).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(turns: &[(Role, &str)]) -> Fingerprint {
        let mut f = Fingerprinter::new("app", "user");
        for (role, text) in turns {
            f.turn(*role, text);
        }
        f.finish()
    }

    #[test]
    fn whitespace_and_reasoning_do_not_change_the_fingerprint() {
        let a = fp(&[(Role::User, "Hello  world\n"), (Role::Assistant, "<think>hmm</think>\n\nHi there")]);
        let b = fp(&[(Role::User, " Hello world"), (Role::Assistant, "Hi   there")]);
        assert_eq!(a, b);
        let system_ignored =
            fp(&[(Role::System, "be nice"), (Role::User, "Hello world"), (Role::Assistant, "Hi there")]);
        assert_eq!(a, system_ignored);
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(app_id("app-key").len(), 16);
        let fp: Fingerprint = std::array::from_fn(|i| i as u8 * 8);
        assert_eq!(hex(&fp), fp.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }

    #[test]
    fn content_roles_and_scope_change_the_fingerprint() {
        let base = fp(&[(Role::User, "a"), (Role::Assistant, "b")]);
        assert_ne!(base, fp(&[(Role::User, "a"), (Role::Assistant, "c")]));
        assert_ne!(base, fp(&[(Role::Assistant, "a"), (Role::User, "b")]));
        assert_ne!(fp(&[(Role::User, "ab")]), fp(&[(Role::User, "a"), (Role::User, "b")]));
        let mut other_user = Fingerprinter::new("app", "someone-else");
        other_user.turn(Role::User, "a");
        other_user.turn(Role::Assistant, "b");
        assert_ne!(base, other_user.finish());
    }
}
