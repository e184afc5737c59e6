//! The events of one streaming generation as they arrive from Dify, each wait bounded by
//! the idle timeout; and a blocking answer replayed as the events a stream would have had.

use std::pin::Pin;
use std::time::Duration;

use reqwest::Response;
use tokio::time::{Instant, Sleep};

use super::direct::DirectBody;
use super::error::{DifyError, error_chain};
use super::sse::{SseError, SseEvent, SseParser};

/// The events of one streaming generation, read as they arrive. Each wait for the next bytes
/// is bounded by the idle timeout; a stream that ends without Dify's closing event is the
/// caller's to judge (it knows which event closes its mode).
pub struct EventStream {
    source: Source,
    parser: SseParser,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
    /// When the request was sent, and when the latest event arrived.
    opened: Instant,
    last_event: Instant,
    /// When bytes last arrived (or the stream began): the idle deadline counts from here.
    last_read: Instant,
}

enum Source {
    /// Read in this task from a direct connection (plain HTTP, no proxy).
    Direct(DirectBody),
    Live(Response),
    Replay(std::vec::IntoIter<SseEvent>),
}

impl EventStream {
    pub(super) fn new(response: Response, idle: Duration, opened: Instant) -> Self {
        Self::of(Source::Live(response), idle, opened)
    }

    pub(super) fn direct(body: DirectBody, idle: Duration, opened: Instant) -> Self {
        Self::of(Source::Direct(body), idle, opened)
    }

    /// A blocking JSON answer, replayed as the events a stream would have carried.
    pub(super) fn from_blocking(body: &[u8], idle: Duration, opened: Instant) -> Self {
        Self::of(Source::Replay(blocking_to_events(body).into_iter()), idle, opened)
    }

    fn of(source: Source, idle: Duration, opened: Instant) -> Self {
        EventStream {
            source,
            parser: SseParser::default(),
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            ended: false,
            opened,
            last_event: Instant::now(),
            last_read: Instant::now(),
        }
    }

    /// Time spent waiting on Dify: from sending the request to the latest event.
    pub fn upstream_time(&self) -> Duration {
        self.last_event.saturating_duration_since(self.opened)
    }

    /// The next event; `None` once the body has ended.
    pub async fn next(&mut self) -> Option<Result<SseEvent, DifyError>> {
        let next = self.next_event().await;
        if let Some(Ok(_)) = &next {
            self.last_event = Instant::now();
        }
        next
    }

    async fn next_event(&mut self) -> Option<Result<SseEvent, DifyError>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(SseError::TooLarge { limit }) => return Some(Err(DifyError::TooLarge { limit })),
            }
            if self.ended {
                return match self.parser.finish() {
                    Ok(event) => event.map(Ok),
                    Err(SseError::TooLarge { limit }) => Some(Err(DifyError::TooLarge { limit })),
                };
            }
            let more = match &mut self.source {
                Source::Replay(events) => return events.next().map(Ok),
                Source::Direct(body) => {
                    // What has arrived already is parsed before waiting for more.
                    let parser = &mut self.parser;
                    let mut fed = false;
                    match body.decode(&mut |bytes: &[u8]| {
                        fed = true;
                        parser.feed(bytes);
                    }) {
                        Ok(true) => {
                            self.ended = true;
                            continue;
                        }
                        Ok(false) if fed => continue,
                        Ok(false) => {}
                        Err(e) => {
                            self.ended = true;
                            return Some(Err(e));
                        }
                    }
                    tokio::select! {
                        biased;
                        read = body.read() => Some(read.map(|closed| {
                            if closed {
                                self.ended = true;
                            }
                        })),
                        () = &mut self.deadline => None,
                    }
                }
                Source::Live(response) => {
                    tokio::select! {
                        biased;
                        chunk = response.chunk() => Some(match chunk {
                            Ok(Some(bytes)) => {
                                self.parser.feed(&bytes);
                                Ok(())
                            }
                            Ok(None) => {
                                self.ended = true;
                                Ok(())
                            }
                            Err(e) => Err(DifyError::Transport(error_chain(&e))),
                        }),
                        () = &mut self.deadline => None,
                    }
                }
            };
            match more {
                Some(Ok(())) => self.last_read = Instant::now(),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                // The idle deadline is not moved on every read (each move is a trip through the
                // timer wheel): when it fires, it is re-armed from the latest read if there was one.
                None => {
                    let quiet_since = self.last_read;
                    if quiet_since.elapsed() < self.idle {
                        self.deadline.as_mut().reset(quiet_since + self.idle);
                        continue;
                    }
                    self.ended = true;
                    return Some(Err(DifyError::Idle(self.idle)));
                }
            }
        }
    }
}

fn blocking_to_events(body: &[u8]) -> Vec<SseEvent> {
    let Ok(serde_json::Value::Object(mut answer)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return vec![SseEvent { event: None, data: String::from_utf8_lossy(body).into_owned() }];
    };
    let frame = |value: serde_json::Value| SseEvent { event: None, data: value.to_string() };
    if answer.contains_key("workflow_run_id") && answer.contains_key("data") && !answer.contains_key("answer") {
        answer.insert("event".into(), "workflow_finished".into());
        return vec![frame(answer.into())];
    }
    let mut end = serde_json::Map::new();
    end.insert("event".into(), "message_end".into());
    for key in ["conversation_id", "message_id", "id", "task_id", "metadata"] {
        if let Some(v) = answer.get(key) {
            end.insert(key.into(), v.clone());
        }
    }
    answer.insert("event".into(), "message".into());
    vec![frame(answer.into()), frame(end.into())]
}
