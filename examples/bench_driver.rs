//! The streaming side of `bench/run` (the load generator does the rest). It times every SSE
//! event of streams sent alternately straight to the mock Dify (Dify's API) and through
//! opendify (OpenAI's API), holds many streams open while it reads the servers' RSS, drives
//! multi-turn conversations, and times the conversation store as serving uses it.
//!
//! Output is one `name value` line per figure, for the script to read. Exit code 1 when a
//! measurement could not be made (a request failed, a chunk went missing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use opendify::bridge::{Message, Role, Turn};
use opendify::conversations::{Continuity, Conversations, RequestView, Store};
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Streams, alternately direct and through opendify, timing each answer event.
    Stream {
        /// The mock's base URL (`http://127.0.0.1:P/v1`).
        #[arg(long)]
        direct: String,
        /// opendify's base URL (`http://127.0.0.1:P/v1`).
        #[arg(long)]
        through: String,
        #[arg(long, default_value_t = 20)]
        streams: usize,
        /// The mock's pause between events; gaps under half of it count as bunched.
        #[arg(long, default_value_t = 5.0)]
        delay_ms: f64,
        #[arg(long, default_value = "app-mock-chat")]
        key: String,
        #[arg(long, default_value = "bench")]
        model: String,
    },
    /// One request at a time, in turn: direct (streamed, as opendify asks Dify), direct
    /// blocking (as a client calling Dify itself would), through opendify, and through a peer
    /// gateway when given (non-streaming): latency.
    Latency {
        #[arg(long)]
        direct: String,
        #[arg(long)]
        through: String,
        /// Another gateway's base URL (`http://127.0.0.1:P/v1`), asked like opendify.
        #[arg(long)]
        peer: Option<String>,
        /// The bearer token the peer gets (one that picks the app; default: the app key).
        #[arg(long)]
        peer_auth: Option<String>,
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value = "app-mock-chat")]
        key: String,
        #[arg(long, default_value = "bench")]
        model: String,
    },
    /// Opens streams through opendify that stay open (the mock's `hang`), then reads RSS.
    Hold {
        #[arg(long)]
        through: String,
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Processes whose RSS to read while the streams are open.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        #[arg(long, default_value = "bench")]
        model: String,
    },
    /// Multi-turn conversations through opendify, each turn sending the whole history.
    Turns {
        #[arg(long)]
        through: String,
        #[arg(long, default_value_t = 32)]
        conversations: usize,
        #[arg(long, default_value_t = 6)]
        turns: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value = "bench")]
        model: String,
    },
    /// The store as serving uses it: a turn's lookup and record, and the next turn's.
    Store {
        /// A SQLite path or a `redis://` URL.
        #[arg(long)]
        spec: String,
        #[arg(long, default_value_t = 2000)]
        conversations: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build()?;
    match Cli::parse().command {
        Command::Stream { direct, through, streams, delay_ms, key, model } => {
            let dify = json!({"query": "bench", "inputs": {}, "response_mode": "streaming", "user": "bench"});
            let openai = json!({"model": model, "messages": [{"role": "user", "content": "bench"}], "stream": true});
            let direct_req = || client.post(format!("{direct}/chat-messages")).bearer_auth(&key).json(&dify);
            let through_req = || client.post(format!("{through}/chat/completions")).json(&openai);
            for _ in 0..3 {
                time_stream(direct_req(), false).await?;
                time_stream(through_req(), true).await?;
            }
            let (mut d, mut t) = (Vec::new(), Vec::new());
            for _ in 0..streams {
                d.push(time_stream(direct_req(), false).await?);
                t.push(time_stream(through_req(), true).await?);
            }
            report("direct", &d, delay_ms);
            report("through", &t, delay_ms);
            let expected = d[0].events.len();
            let split = d.iter().chain(&t).all(|s| s.events.len() == expected);
            println!("events_per_stream {expected}");
            if !split {
                bail!("a stream through opendify did not carry one chunk per upstream event");
            }
        }
        Command::Latency { direct, through, peer, peer_auth, requests, key, model } => {
            let streamed = json!({"query": "Hello", "inputs": {}, "response_mode": "streaming", "user": "bench"});
            let blocking = json!({"query": "Hello", "inputs": {}, "response_mode": "blocking", "user": "bench"});
            let openai = json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]});
            let peer_auth = peer_auth.unwrap_or_else(|| key.clone());
            let mut sides: Vec<(&str, reqwest::RequestBuilder, Vec<f64>)> = vec![
                (
                    "direct",
                    client.post(format!("{direct}/chat-messages")).bearer_auth(&key).json(&streamed),
                    Vec::new(),
                ),
                (
                    "direct_blocking",
                    client.post(format!("{direct}/chat-messages")).bearer_auth(&key).json(&blocking),
                    Vec::new(),
                ),
                ("through", client.post(format!("{through}/chat/completions")).json(&openai), Vec::new()),
            ];
            if let Some(peer) = &peer {
                let request = client.post(format!("{peer}/chat/completions")).bearer_auth(&peer_auth).json(&openai);
                sides.push(("peer", request, Vec::new()));
            }
            for i in 0..requests + 100 {
                for (side, request, times) in &mut sides {
                    let request = request.try_clone().ok_or_else(|| anyhow::anyhow!("{side}: cannot repeat"))?;
                    let started = Instant::now();
                    request.send().await?.error_for_status()?.bytes().await?;
                    if i >= 100 {
                        times.push(ms(started.elapsed()));
                    }
                }
            }
            for (side, _, times) in &mut sides {
                println!("{side}_lat_p50_ms {:.4}", percentile(times, 50.0));
                println!("{side}_lat_p99_ms {:.4}", percentile(times, 99.0));
            }
        }
        Command::Hold { through, streams, pids, model } => hold(&client, &through, streams, &pids, &model).await?,
        Command::Turns { through, conversations, turns, concurrency, model } => {
            let next = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (client, url, model, next) =
                        (client.clone(), format!("{through}/chat/completions"), model.clone(), next.clone());
                    tokio::spawn(async move {
                        let (mut latencies, mut continued) = (Vec::new(), 0);
                        while next.fetch_add(1, Ordering::Relaxed) < conversations {
                            continued += conversation(&client, &url, &model, turns, &mut latencies).await?;
                        }
                        anyhow::Ok((latencies, continued))
                    })
                })
                .collect();
            let (mut latencies, mut continued) = (Vec::new(), 0);
            for worker in workers {
                let (l, c) = worker.await??;
                latencies.extend(l);
                continued += c;
            }
            let secs = started.elapsed().as_secs_f64();
            println!("turns {}", latencies.len());
            println!("turns_per_s {:.1}", latencies.len() as f64 / secs);
            println!("turn_p50_ms {:.3}", percentile(&mut latencies, 50.0));
            println!("turn_p99_ms {:.3}", percentile(&mut latencies, 99.0));
            println!("continued {continued} of {}", conversations * turns.saturating_sub(1));
            if continued != conversations * turns.saturating_sub(1) {
                bail!("a turn did not continue its conversation (the fingerprint store missed it)");
            }
        }
        Command::Store { spec, conversations } => store(&spec, conversations).await?,
    }
    Ok(())
}

/// One stream: when each answer event arrived (ms after sending), and when the body ended.
struct Timed {
    events: Vec<f64>,
    total: f64,
    /// Answer events that arrived in the same read as the one before them.
    shared_reads: usize,
}

async fn time_stream(request: reqwest::RequestBuilder, openai: bool) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let mut response = request.send().await?.error_for_status()?;
    let (mut buf, mut events, mut shared_reads) = (Vec::new(), Vec::new(), 0);
    while let Some(chunk) = response.chunk().await? {
        let at = ms(started.elapsed());
        buf.extend_from_slice(&chunk);
        let mut in_read = 0usize;
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            if is_answer(&frame[..end], openai) {
                events.push(at);
                in_read += 1;
            }
        }
        shared_reads += in_read.saturating_sub(1);
    }
    if events.is_empty() {
        bail!("a stream carried no answer");
    }
    Ok(Timed { events, total: ms(started.elapsed()), shared_reads })
}

/// Whether an SSE frame carries answer text: a Dify `message`, or an OpenAI content delta.
fn is_answer(frame: &[u8], openai: bool) -> bool {
    let Some(Ok(v)) = frame.strip_prefix(b"data: ").map(serde_json::from_slice::<Value>) else { return false };
    let text = if openai { &v["choices"][0]["delta"]["content"] } else { &v["answer"] };
    let answer_event = openai || matches!(v["event"].as_str(), Some("message" | "agent_message"));
    answer_event && text.as_str().is_some_and(|s| !s.is_empty())
}

fn report(side: &str, streams: &[Timed], delay_ms: f64) {
    let mut ttft: Vec<f64> = streams.iter().map(|s| s.events[0]).collect();
    let mut gaps: Vec<f64> = streams.iter().flat_map(|s| s.events.windows(2).map(|w| w[1] - w[0])).collect();
    let mut total: Vec<f64> = streams.iter().map(|s| s.total).collect();
    let bunched = gaps.iter().filter(|g| **g < delay_ms / 2.0).count();
    let events: usize = streams.iter().map(|s| s.events.len()).sum();
    println!("{side}_ttft_p50_ms {:.3}", percentile(&mut ttft, 50.0));
    println!("{side}_ttft_p99_ms {:.3}", percentile(&mut ttft, 99.0));
    println!("{side}_gap_mean_ms {:.4}", mean(&gaps));
    println!("{side}_gap_p50_ms {:.3}", percentile(&mut gaps, 50.0));
    println!("{side}_gap_p99_ms {:.3}", percentile(&mut gaps, 99.0));
    println!("{side}_total_mean_ms {:.3}", mean(&total));
    println!("{side}_total_p50_ms {:.3}", percentile(&mut total, 50.0));
    println!("{side}_events {events}");
    println!(
        "{side}_own_read_pct {:.2}",
        100.0 * (1.0 - streams.iter().map(|s| s.shared_reads).sum::<usize>() as f64 / events as f64)
    );
    println!("{side}_bunched {bunched} of {}", gaps.len());
}

async fn hold(
    client: &reqwest::Client,
    through: &str,
    streams: usize,
    pids: &[u32],
    model: &str,
) -> anyhow::Result<()> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "[[mock:hang]]"}], "stream": true});
    let ready = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let request = client.post(format!("{through}/chat/completions")).json(&body);
            let (ready, mut released) = (ready.clone(), released.clone());
            tokio::spawn(async move {
                let mut response = request.send().await?.error_for_status()?;
                let mut seen = Vec::new();
                while !String::from_utf8_lossy(&seen).contains("\"content\":\"Echo") {
                    seen.extend_from_slice(&response.chunk().await?.context("stream ended early")?);
                }
                ready.fetch_add(1, Ordering::Relaxed);
                let _ = released.wait_for(|r| *r).await;
                anyhow::Ok(())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < streams && Instant::now() < deadline && !tasks.iter().any(|t| t.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = ready.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("open_streams {open}");
    for pid in pids {
        println!("rss_kib_{pid} {}", rss_kib(*pid).unwrap_or(0));
    }
    let _ = release.send(true);
    for task in tasks {
        task.await??;
    }
    if open < streams {
        bail!("only {open} of {streams} streams opened");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// One conversation, turn by turn, non-streaming. Returns how many turns after the first
/// continued it: the mock then echoes only the new message, not a re-sent history.
async fn conversation(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    turns: usize,
    latencies: &mut Vec<f64>,
) -> anyhow::Result<usize> {
    let topic = fastrand::u64(..);
    let (mut messages, mut continued) = (Vec::new(), 0);
    for turn in 1..=turns {
        let text = format!("conversation {topic:x}, turn {turn}");
        messages.push(json!({"role": "user", "content": text}));
        let started = Instant::now();
        let body = json!({"model": model, "messages": messages, "user": "bench"});
        let answer: Value = client.post(url).json(&body).send().await?.error_for_status()?.json().await?;
        latencies.push(ms(started.elapsed()));
        let content = answer["choices"][0]["message"]["content"].as_str().context("no answer")?.to_string();
        if turn > 1 && content == format!("Echo: {text}") {
            continued += 1;
        }
        messages.push(json!({"role": "assistant", "content": content}));
    }
    Ok(continued)
}

async fn store(spec: &str, conversations: usize) -> anyhow::Result<()> {
    let store = Store::open(spec, Duration::from_secs(86_400)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let conversations_store = Conversations::new(store, false);
    let message = |role: Role, text: String| -> anyhow::Result<Message> { Ok(Message::text(role, text, "")) };
    let started = Instant::now();
    let cpu_started = process_cpu();
    let mut continued = 0;
    for i in 0..conversations {
        let id = format!("bench-{:016x}-{i}", fastrand::u64(..));
        let mut history = Turn { messages: vec![message(Role::User, format!("question {i}"))?], ..Turn::default() };
        for turn in 0..2 {
            let view = RequestView {
                key: "app-mock-chat",
                model: "bench",
                user: "bench",
                chat_id: None,
                explicit: None,
                turn: &history,
            };
            let decision = conversations_store.decide(&view).await;
            continued += usize::from(decision.continuity == Continuity::Fingerprint);
            let answer = format!("answer {i} {turn}");
            if let Some(recorder) = decision.recorder {
                conversations_store.record(recorder, &id, Some("message"), &answer).await;
            }
            history.messages.push(message(Role::Assistant, answer)?);
            history.messages.push(message(Role::User, format!("follow-up {i}"))?);
        }
    }
    // Until every turn is durable: the SQLite store commits on a thread of its own.
    conversations_store.store().flush().await;
    let turns = 2 * conversations;
    println!("store_us_per_turn {:.2}", started.elapsed().as_secs_f64() * 1e6 / turns as f64);
    println!("store_cpu_us_per_turn {:.2}", (process_cpu() - cpu_started).as_secs_f64() * 1e6 / turns as f64);
    println!("store_continued {continued} of {conversations}");
    if continued != conversations {
        bail!("the store did not find a recorded turn");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// CPU time of this process, every thread (the store's writer thread included).
fn process_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two i64 on 64-bit Linux) into `ts`.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}
