//! Separates a model's inline reasoning from its answer in a streamed text: `<think>…</think>`
//! and Dify's `<details …><summary> Thinking... </summary>…</details>` wrapper. Tags may be
//! split across deltas at any byte, so a possible tag prefix at the end of a delta is held
//! back until the next delta decides it.

/// A piece of the split text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Answer(std::borrow::Cow<'a, str>),
    ReasoningStart,
    Reasoning(std::borrow::Cow<'a, str>),
    ReasoningEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Answer,
    Think,
    Details,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const DETAILS_OPEN: &str = "<details";
const DETAILS_CLOSE: &str = "</details>";
const SUMMARY_CLOSE: &str = "</summary>";
/// An opening `<details …><summary>…</summary>` longer than this is not Dify's wrapper.
const MAX_DETAILS_HEADER: usize = 512;

pub struct ReasoningSplitter {
    state: State,
    held: String,
    /// Just left a reasoning block: leading blank lines of the answer are dropped.
    trim_next: bool,
}

impl Default for ReasoningSplitter {
    fn default() -> Self {
        ReasoningSplitter { state: State::Answer, held: String::new(), trim_next: false }
    }
}

impl ReasoningSplitter {
    pub fn in_reasoning(&self) -> bool {
        self.state != State::Answer
    }

    /// Splits one delta. The common case (no `<` anywhere, nothing held) borrows the input.
    pub fn push<'a>(&mut self, delta: &'a str, out: &mut Vec<Piece<'a>>) {
        if self.held.is_empty() && self.state == State::Answer && !self.trim_next && !delta.contains('<') {
            if !delta.is_empty() {
                out.push(Piece::Answer(delta.into()));
            }
            return;
        }
        let mut text = std::mem::take(&mut self.held);
        text.push_str(delta);
        self.process(text, out);
    }

    /// End of the answer: whatever is held back is released as it is.
    pub fn finish(&mut self, out: &mut Vec<Piece<'static>>) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Answer => {
                if !held.is_empty() {
                    out.push(Piece::Answer(held.into()));
                }
            }
            State::Think | State::Details => {
                if !held.is_empty() {
                    out.push(Piece::Reasoning(held.into()));
                }
                out.push(Piece::ReasoningEnd);
                self.state = State::Answer;
            }
        }
    }

    fn process<'a>(&mut self, mut text: String, out: &mut Vec<Piece<'a>>) {
        loop {
            match self.state {
                State::Answer => {
                    if self.trim_next {
                        let trimmed = text.trim_start_matches(['\n', '\r', ' ']);
                        if trimmed.is_empty() {
                            return;
                        }
                        text = trimmed.to_string();
                        self.trim_next = false;
                    }
                    let think = text.find(THINK_OPEN);
                    let details = text.find(DETAILS_OPEN);
                    let next = match (think, details) {
                        (Some(t), Some(d)) => Some(t.min(d)),
                        (a, b) => a.or(b),
                    };
                    let Some(start) = next else {
                        let keep = partial_suffix(&text, &[THINK_OPEN, DETAILS_OPEN]);
                        self.emit_answer(&text[..text.len() - keep], out);
                        self.held = text[text.len() - keep..].to_string();
                        return;
                    };
                    if text[start..].starts_with(THINK_OPEN) {
                        self.emit_answer(&text[..start], out);
                        out.push(Piece::ReasoningStart);
                        self.state = State::Think;
                        text = text[start + THINK_OPEN.len()..].to_string();
                        continue;
                    }
                    // `<details`: Dify's reasoning wrapper only if its summary says Thinking.
                    let header_end = text[start..].find(SUMMARY_CLOSE).map(|i| start + i + SUMMARY_CLOSE.len());
                    match header_end {
                        Some(end) if text[start..end].contains("Thinking") => {
                            self.emit_answer(&text[..start], out);
                            out.push(Piece::ReasoningStart);
                            self.state = State::Details;
                            text = text[end..].to_string();
                        }
                        None if text.len() - start <= MAX_DETAILS_HEADER => {
                            self.emit_answer(&text[..start], out);
                            self.held = text[start..].to_string();
                            return;
                        }
                        _ => {
                            // An ordinary <details> block of the answer.
                            let after = start + DETAILS_OPEN.len();
                            self.emit_answer(&text[..after], out);
                            text = text[after..].to_string();
                        }
                    }
                }
                State::Think | State::Details => {
                    let close = if self.state == State::Think { THINK_CLOSE } else { DETAILS_CLOSE };
                    match text.find(close) {
                        Some(end) => {
                            let inner = &text[..end];
                            let inner = if self.state == State::Details {
                                inner.trim_start_matches(['\n', ' '])
                            } else {
                                inner
                            };
                            if !inner.is_empty() {
                                out.push(Piece::Reasoning(inner.to_string().into()));
                            }
                            out.push(Piece::ReasoningEnd);
                            self.state = State::Answer;
                            self.trim_next = true;
                            text = text[end + close.len()..].to_string();
                        }
                        None => {
                            let keep = partial_suffix(&text, &[close]);
                            let emit = &text[..text.len() - keep];
                            if !emit.is_empty() {
                                out.push(Piece::Reasoning(emit.to_string().into()));
                            }
                            self.held = text[text.len() - keep..].to_string();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn emit_answer<'a>(&mut self, text: &str, out: &mut Vec<Piece<'a>>) {
        if !text.is_empty() {
            out.push(Piece::Answer(text.to_string().into()));
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of one of `tags`.
fn partial_suffix(text: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for tag in tags {
        for len in (1..tag.len()).rev() {
            if len > text.len() || len <= best {
                continue;
            }
            if text.is_char_boundary(text.len() - len) && text.ends_with(&tag[..len]) {
                best = len;
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` split at every position into two deltas and checks the result is the same.
    fn split_all(text: &str) -> (String, String) {
        let whole = run(&[text]);
        for i in 1..text.len() {
            if !text.is_char_boundary(i) {
                continue;
            }
            assert_eq!(run(&[&text[..i], &text[i..]]), whole, "split at {i}");
        }
        whole
    }

    fn run(deltas: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::default();
        let (mut answer, mut reasoning) = (String::new(), String::new());
        let mut collect = |pieces: Vec<Piece<'_>>| {
            for p in pieces {
                match p {
                    Piece::Answer(t) => answer.push_str(&t),
                    Piece::Reasoning(t) => reasoning.push_str(&t),
                    _ => {}
                }
            }
        };
        for d in deltas {
            let mut out = Vec::new();
            s.push(d, &mut out);
            collect(out);
        }
        let mut out = Vec::new();
        s.finish(&mut out);
        collect(out);
        (answer, reasoning)
    }

    #[test]
    fn think_tags_split_anywhere() {
        let (a, r) = split_all("<think>step 1, 步骤</think>\n\nThe answer.");
        assert_eq!(r, "step 1, 步骤");
        assert_eq!(a, "The answer.");
    }

    #[test]
    fn dify_details_wrapper_is_reasoning() {
        let text = "<details style=\"color:gray\" open> <summary> Thinking... </summary>hmm</details>Done";
        let (a, r) = split_all(text);
        assert_eq!((a.as_str(), r.as_str()), ("Done", "hmm"));
    }

    #[test]
    fn ordinary_details_and_lone_angle_brackets_stay_in_the_answer() {
        let text = "a < b and <details><summary>More</summary>x</details>";
        assert_eq!(split_all(text), (text.to_string(), String::new()));
    }

    #[test]
    fn unterminated_reasoning_is_released_at_the_end() {
        assert_eq!(run(&["<think>never closed"]), (String::new(), "never closed".to_string()));
        assert_eq!(run(&["tail <thi"]), ("tail <thi".to_string(), String::new()));
    }
}
