//! A problem a person can act on: what is wrong, and what to do about it. The configuration
//! loader, the conversation store, every doctor check and `serve`'s startup errors speak in
//! this one shape, so a fix is always shown the same way (`fix:` under the message).

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(message: impl Into<String>) -> Self {
        Finding { message: message.into(), fix: None }
    }

    pub fn with_fix(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { message: message.into(), fix: Some(fix.into()) }
    }
}

/// The message, then `hint: <fix>` on its own line (how terminal errors read).
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  hint: {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Finding {}
