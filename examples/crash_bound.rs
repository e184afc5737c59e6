//! How much of the conversation store a crash loses: runs the real binary under load with
//! its SQLite store, kills it (`kill -9`) mid-load, starts it again on the same file, and
//! asks each conversation for its next turn. A conversation whose last answered turn is no
//! longer found was lost; its age is the time between that answer reaching the client and
//! the kill. Prints the ages, round by round and over all rounds: the README states the bound
//! this measures.
//!
//! `cargo run --release --example crash_bound -- --binary target/dist/opendify`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use mock_dify::{MockApp, MockDify};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The opendify binary to kill.
    #[arg(long, default_value = "target/dist/opendify")]
    binary: String,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Conversations driven at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Load before each kill, in milliseconds (the kill lands at a random moment after).
    #[arg(long, default_value_t = 1500)]
    load_ms: u64,
}

/// One conversation as a client drives it.
#[derive(Clone)]
struct Conversation {
    messages: Vec<Value>,
    /// When the client had the answer to its latest turn.
    answered_at: Option<Instant>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = MockDify::start(vec![MockApp::new("app-crash-chat", "Chat", "chat")]).await?;
    let dir = tempfile::tempdir()?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let (mut ages, mut answered) = (Vec::new(), 0usize);
    for round in 0..args.rounds {
        let mut server = Server::start(&args.binary, &mock, dir.path()).await?;
        let conversations: Arc<Mutex<Vec<Conversation>>> = Arc::default();
        let mut workers = Vec::new();
        for worker in 0..args.concurrency {
            let (client, url, conversations) = (client.clone(), server.url(), conversations.clone());
            workers.push(tokio::spawn(async move {
                for n in 0.. {
                    let mut conversation = Conversation { messages: Vec::new(), answered_at: None };
                    for turn in 0..3 {
                        let text = format!("round {round} worker {worker} conversation {n} turn {turn}");
                        conversation.messages.push(json!({"role": "user", "content": text}));
                        let body = json!({"model": "chat", "messages": conversation.messages});
                        let Ok(response) = client.post(&url).json(&body).send().await else { return };
                        let Ok(answer) = response.json::<Value>().await else { return };
                        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
                        conversation.answered_at = Some(Instant::now());
                        conversation.messages.push(json!({"role": "assistant", "content": content}));
                        conversations.lock().unwrap_or_else(|e| e.into_inner()).push(conversation.clone());
                    }
                }
            }));
        }
        let load = Duration::from_millis(args.load_ms + fastrand::u64(0..args.load_ms.max(1)));
        tokio::time::sleep(load).await;
        let killed_at = Instant::now();
        server.kill9();
        for worker in workers {
            let _ = worker.await;
        }
        // The latest state of each conversation the client saw answered.
        let mut latest: Vec<Conversation> = Vec::new();
        for c in conversations.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            match latest.iter_mut().find(|l| l.messages[0] == c.messages[0]) {
                Some(l) if l.messages.len() < c.messages.len() => *l = c,
                Some(_) => {}
                None => latest.push(c),
            }
        }
        let server = Server::start(&args.binary, &mock, dir.path()).await?;
        let mut lost = Vec::new();
        for c in &latest {
            let next = "are you still there";
            let mut messages = c.messages.clone();
            messages.push(json!({"role": "user", "content": next}));
            let answer: Value = client
                .post(server.url())
                .json(&json!({"model": "chat", "messages": messages}))
                .send()
                .await?
                .json()
                .await?;
            let content = answer["choices"][0]["message"]["content"].as_str().context("no answer")?;
            // Continued: only the new message reached Dify. Lost: a new conversation, seeded.
            if content != format!("Echo: {next}") {
                let age = killed_at.saturating_duration_since(c.answered_at.context("never answered")?);
                lost.push(age.as_secs_f64() * 1000.0);
            }
        }
        server.stop();
        answered += latest.len();
        println!("round {round}: {} conversations, {} lost, ages (ms) {:?}", latest.len(), lost.len(), rounded(&lost));
        ages.extend(lost);
    }
    ages.sort_by(f64::total_cmp);
    println!(
        "total: {answered} conversations over {} kills, {} lost; age of a lost turn at the kill: max {:.1} ms, p50 {:.1} ms",
        args.rounds,
        ages.len(),
        ages.last().copied().unwrap_or(0.0),
        ages.get(ages.len() / 2).copied().unwrap_or(0.0)
    );
    for bound in [10.0, 20.0, 30.0, 50.0, 100.0] {
        println!("  lost within {bound:>5.0} ms of the kill: {}", ages.iter().filter(|a| **a <= bound).count());
    }
    Ok(())
}

fn rounded(ages: &[f64]) -> Vec<f64> {
    ages.iter().map(|a| (a * 10.0).round() / 10.0).collect()
}

struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    async fn start(binary: &str, mock: &MockDify, dir: &std::path::Path) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("DIFY_API_BASE", mock.base_url())
            .env("MODEL_CONFIG", r#"{"chat":"app-crash-chat"}"#)
            .env("SERVER_PORT", port.to_string())
            .env("CONVERSATION_STORE", dir.join("conversations.db"))
            .env("LOG_LEVEL", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("opendify did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/chat/completions", self.port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
