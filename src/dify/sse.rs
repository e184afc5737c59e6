//! An incremental Server-Sent Events parser, written to the WHATWG rules: events end at a
//! blank line, lines end at CRLF, LF or CR (even when the CR and LF arrive in different
//! network chunks), `data:` lines join with `\n`, `:` lines are comments.
//!
//! Bytes are buffered and only complete lines are decoded, so a multi-byte UTF-8 character
//! split across network chunks is never mangled (the original proxy decoded each chunk on
//! its own and lost such characters).

use std::fmt;

/// One dispatched event. `event` is the `event:` field (Dify uses it only for `ping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn is_ping(&self) -> bool {
        self.data.is_empty() && self.event.as_deref() == Some("ping")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// One event grew past the limit without ending: a broken or hostile upstream.
    TooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::TooLarge { limit } => write!(f, "an upstream event exceeded {} MiB", limit / (1024 * 1024)),
        }
    }
}

impl std::error::Error for SseError {}

/// Default cap on one event: far above any real Dify frame, low enough to bound memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

pub struct SseParser {
    buf: Vec<u8>,
    /// Start of the unparsed part of `buf`.
    pos: usize,
    /// How much of the line starting at `pos` is known to have no line end yet: a long
    /// event arriving in many reads is scanned once, not once per read.
    scanned: usize,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    skip_lf: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            skip_lf: false,
            data: Vec::new(),
            has_data: false,
            event: None,
            max_event_bytes,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event in what was fed so far, if any.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            if self.skip_lf && self.pos < self.buf.len() {
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
                self.skip_lf = false;
            }
            let rest = &self.buf[self.pos..];
            let Some(end) = find_line_end(&rest[self.scanned.min(rest.len())..]).map(|end| end + self.scanned) else {
                self.scanned = rest.len();
                if rest.len() + self.data.len() > self.max_event_bytes {
                    return Err(SseError::TooLarge { limit: self.max_event_bytes });
                }
                return Ok(None);
            };
            self.scanned = 0;
            let line_start = self.pos;
            let terminator = rest[end];
            self.pos += end + 1;
            if terminator == b'\r' {
                self.skip_lf = true;
            }
            if let Some(event) = self.process_line(line_start, line_start + end)? {
                return Ok(Some(event));
            }
        }
    }

    /// End of input: a last event without its closing blank line is still delivered, since
    /// dropping the tail of an answer would lose data.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if self.pos < self.buf.len() {
            let (start, end) = (self.pos, self.buf.len());
            self.pos = end;
            self.scanned = 0;
            if let Some(event) = self.process_line(start, end)? {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn process_line(&mut self, start: usize, end: usize) -> Result<Option<SseEvent>, SseError> {
        let line = &self.buf[start..end];
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                if self.data.len() > self.max_event_bytes {
                    return Err(SseError::TooLarge { limit: self.max_event_bytes });
                }
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields: nothing a Dify client needs
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_data && self.event.is_none() {
            return None;
        }
        let bytes = std::mem::take(&mut self.data);
        let data = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        self.has_data = false;
        Some(SseEvent { event: self.event.take(), data })
    }
}

/// The first `\n` or `\r` (memchr, vectorised: frames are long JSON lines, and this scan
/// is most of the parser's work).
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            while let Some(ev) = parser.next_event().expect("parse") {
                out.push(ev);
            }
        }
        while let Some(ev) = parser.finish().expect("finish") {
            out.push(ev);
        }
        out
    }

    fn data(s: &str) -> SseEvent {
        SseEvent { event: None, data: s.to_string() }
    }

    #[test]
    fn frames_on_blank_lines_with_any_line_ending() {
        let events = parse_chunks(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n"]);
        assert_eq!(events, vec![data("a"), data("b"), data("c"), data("d")]);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_ending() {
        let events = parse_chunks(&[b"data: a\r", b"\n\r", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![data("a"), data("b")]);
    }

    #[test]
    fn multi_line_data_joins_with_newline_and_comments_are_skipped() {
        let events = parse_chunks(&[b": keep-alive\ndata: one\ndata:two\n\n"]);
        assert_eq!(events, vec![data("one\ntwo")]);
    }

    #[test]
    fn ping_is_an_event_without_data() {
        let events = parse_chunks(&[b"event: ping\n\ndata: x\n\n"]);
        assert!(events[0].is_ping());
        assert_eq!(events[1], data("x"));
    }

    #[test]
    fn utf8_split_across_chunks_survives_at_every_byte() {
        let frame = "data: {\"answer\":\"你好, мир 👋\"}\n\n".as_bytes();
        for split in 1..frame.len() {
            let events = parse_chunks(&[&frame[..split], &frame[split..]]);
            assert_eq!(events, vec![data("{\"answer\":\"你好, мир 👋\"}")], "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_events() {
        let text = b"data: {\"a\":1}\r\n\r\nevent: ping\r\n\r\ndata: last";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let events = parse_chunks(&chunks);
        assert_eq!(events.len(), 3);
        assert_eq!(events[2], data("last"));
    }

    #[test]
    fn line_end_scan_finds_the_first_cr_or_lf_at_every_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for (eol, other) in [(b'\n', b'\r'), (b'\r', b'\n')] {
                    let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    // Bytes that only differ from a line end by one bit must not match.
                    bytes.iter_mut().step_by(3).for_each(|b| *b = 0x8a);
                    if at < len {
                        bytes[at] = eol;
                        if at + 1 < len {
                            bytes[at + 1] = other;
                        }
                    }
                    let expected = bytes.iter().position(|&b| b == b'\n' || b == b'\r');
                    assert_eq!(find_line_end(&bytes), expected, "len {len}, at {at}");
                }
            }
        }
    }

    #[test]
    fn oversized_event_is_an_error_not_unbounded_memory() {
        let mut parser = SseParser::new(64);
        parser.feed(b"data: ");
        parser.feed(&[b'x'; 100]);
        assert_eq!(parser.next_event(), Err(SseError::TooLarge { limit: 64 }));
    }
}
