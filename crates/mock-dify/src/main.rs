//! The mock Dify as a standalone process, for benchmarks and for trying opendify without a
//! Dify: `mock-dify --port 5001` serves a chat app with key `app-mock-chat`, one app of every
//! other mode (`app-mock-<mode>`), and a knowledge-base chat app (`app-mock-knowledge`).

use std::time::Duration;

use clap::Parser;
use mock_dify::{MockApp, MockDify, MockSettings};

#[derive(Parser)]
#[command(about = "A mock Dify service API (for tests, benchmarks and demos)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5001)]
    port: u16,
    /// Emit exactly this many answer events per request
    #[arg(long)]
    events: Option<usize>,
    /// Characters per answer event
    #[arg(long, default_value_t = 4)]
    chunk_chars: usize,
    /// Milliseconds between events
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Fixed answer text (default: echo the query)
    #[arg(long)]
    answer: Option<String>,
    /// Worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Forget a conversation after this many seconds without a turn (Dify answers 404 for
    /// it then). Benchmarks set it low so that memory stays flat over millions of requests.
    #[arg(long, default_value_t = 86_400)]
    forget_idle_secs: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    runtime.block_on(async move {
        let apps = ["chat", "agent-chat", "advanced-chat", "agent", "completion", "workflow"]
            .iter()
            .map(|mode| {
                let app = MockApp::new(&format!("app-mock-{mode}"), &format!("Mock {mode}"), mode);
                // Chat apps suggest follow-up questions, as many Dify apps do.
                let app =
                    if matches!(*mode, "chat" | "advanced-chat" | "agent-chat") { app.suggestions() } else { app };
                match &args.answer {
                    Some(a) => app.answer(a),
                    None => app,
                }
            })
            // A knowledge-base app: every answer cites handbook passages.
            .chain([MockApp::new("app-mock-knowledge", "Mock knowledge", "chat").knowledge().suggestions()])
            .collect::<Vec<_>>();
        let settings = MockSettings {
            chunk_chars: args.chunk_chars,
            events: args.events,
            delay: Duration::from_secs_f64(args.delay_ms.max(0.0) / 1000.0),
            fail_deletes: false,
        };
        let mock = MockDify::start_with(apps, settings, &format!("{}:{}", args.host, args.port)).await?;
        println!("mock Dify listening on {}", mock.base_url());
        // Nobody can read this process's records: every two seconds, drop them and the
        // conversations idle for longer than --forget-idle-secs.
        let forget = async {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                mock.forget_idle(Duration::from_secs(args.forget_idle_secs));
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = forget => {}
        }
        Ok(())
    })
}
