//! Log output: tracing to stderr, as text (with the guide's emoji markers: 👤 user,
//! 🔍 lookups, ❌ errors) or as JSON lines, and with LOG_FILE also to a file. The file is
//! written by a background thread (a slow disk never stalls a request), stays at the path
//! the operator named (`tail -f logs/app.log` works), and is rotated daily or at 50 MiB,
//! keeping the last 7 as `app.log.1` … `app.log.7`.
//!
//! Every line written while a request is handled carries its request id (the `request`
//! span). Nothing here ever formats a header: secrets stay out of the logs by construction.
//! Values a client chose (user, model, ids) are logged through [`Shown`]: control characters
//! escaped, so a `\n` in a user name cannot forge a log line, and long values cut.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::OnceLock;

use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{Config, LogFormat};

/// A value a client chose, as it may appear in a log line: control characters escaped
/// (`\n`, `\u{1b}`) and anything past [`Shown::MAX_CHARS`] characters cut, with the full
/// length said (`…(1048576 bytes)`).
pub struct Shown<'a>(pub &'a str);

impl Shown<'_> {
    pub const MAX_CHARS: usize = 200;
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let text = self.0;
        // The common case, a short printable value, is written as it is.
        if text.len() <= Self::MAX_CHARS && !text.chars().any(char::is_control) {
            return f.write_str(text);
        }
        for (count, c) in text.chars().enumerate() {
            if count == Self::MAX_CHARS {
                return write!(f, "…({} bytes)", text.len());
            }
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A rotated file is started past this size even within the day.
const MAX_FILE_BYTES: u64 = 50 * 1024 * 1024;
/// Rotated files kept next to the live one.
const KEEP_FILES: usize = 7;

/// Keeps the log file's writer thread alive; drop it last (it flushes what is queued).
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// RUST_LOG wins over LOG_LEVEL, so a developer can turn up one module.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("warn,opendify={level}")))
}

/// Stderr only (commands other than `serve`).
pub fn init(level: &str, format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)).with_writer(io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The serve log's filter, replaceable on reload.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// What a reload did to the log level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    Changed,
    /// RUST_LOG is set and wins over LOG_LEVEL.
    OverriddenByRustLog,
    /// Not the serve logger (tests, the doctor): nothing to change.
    NoLogger,
}

/// Applies a new LOG_LEVEL to the running server's log.
pub fn set_level(level: &str) -> LevelChange {
    if std::env::var_os("RUST_LOG").is_some() {
        return LevelChange::OverriddenByRustLog;
    }
    match LEVEL.get() {
        Some(handle) if handle.reload(filter(level)).is_ok() => LevelChange::Changed,
        _ => LevelChange::NoLogger,
    }
}
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Logging for `serve`: stderr, plus LOG_FILE when set. Fails only when the log file cannot
/// be opened (the error names the path and why).
pub fn init_serve(config: &Config) -> anyhow::Result<LogGuard> {
    let mut layers: Vec<BoxedLayer> = vec![layer(config.log_format, io::stderr, io::stderr().is_terminal())];
    let mut guard = None;
    if let Some(path) = &config.log_file {
        let file = RotatingFile::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot write the log file {}: {e}\n  hint: create its directory and make it writable, or unset LOG_FILE",
                path.display()
            )
        })?;
        let (writer, worker) = tracing_appender::non_blocking(file);
        layers.push(layer(config.log_format, writer, false));
        guard = Some(worker);
    }
    let (level, handle) = reload::Layer::new(filter(&config.log_level));
    if tracing_subscriber::registry().with(level).with(layers).try_init().is_ok() {
        let _ = LEVEL.set(handle);
    }
    Ok(LogGuard { _file: guard })
}

fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = fmt::layer().with_writer(writer).with_target(false).with_ansi(ansi);
    match format {
        LogFormat::Json => base.json().with_current_span(true).with_span_list(false).boxed(),
        // Span fields are formatted once per formatter type and shared between layers: the
        // plain layer gets its own type, so colours meant for a terminal never reach a file.
        LogFormat::Text if ansi => base.boxed(),
        LogFormat::Text => base.fmt_fields(PlainFields::default()).boxed(),
    }
}

/// The default field format, as a distinct type (see [`layer`]).
#[derive(Default)]
struct PlainFields(fmt::format::DefaultFields);

impl<'w> fmt::FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

/// A log file that rotates itself: daily (UTC) and past [`MAX_FILE_BYTES`].
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    day: u64,
    max_bytes: u64,
}

impl RotatingFile {
    pub fn open(path: &Path) -> io::Result<RotatingFile> {
        Self::with_limit(path, MAX_FILE_BYTES)
    }

    fn with_limit(path: &Path, max_bytes: u64) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        let day = meta.modified().map(day_of).unwrap_or_else(|_| day_of(SystemTime::now()));
        Ok(RotatingFile { path: path.to_path_buf(), file, size: meta.len(), day, max_bytes })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(numbered(KEEP_FILES));
        for n in (1..KEEP_FILES).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn day_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let today = day_of(SystemTime::now());
        if (today != self.day || self.size + buf.len() as u64 > self.max_bytes) && self.size > 0 {
            // If rotating fails (permissions), keep writing to the current file.
            let _ = self.rotate();
        }
        self.day = today;
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_values_cannot_forge_lines_or_flood_the_log() {
        assert_eq!(Shown("alice").to_string(), "alice");
        assert_eq!(Shown("bob\nINFO forged line").to_string(), "bob\\nINFO forged line");
        assert_eq!(Shown("esc\u{1b}[31mred").to_string(), "esc\\u{1b}[31mred");
        let huge = "m".repeat(1_048_576);
        let shown = Shown(&huge).to_string();
        assert!(shown.ends_with("…(1048576 bytes)"), "{}", &shown[shown.len() - 30..]);
        assert!(shown.len() < 300);
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs").join("app.log");
        let mut file = RotatingFile::with_limit(&path, 100).expect("open");
        for i in 0..20 {
            // One line per write, as the background writer does.
            file.write_all(format!("{i:0>60}\n").as_bytes()).expect("write");
        }
        assert!(path.exists());
        assert!(dir.path().join("logs/app.log.1").exists());
        assert!(dir.path().join("logs/app.log.7").exists());
        assert!(!dir.path().join("logs/app.log.8").exists());
        let live = std::fs::read_to_string(&path).expect("read");
        assert!(live.ends_with(&format!("{:0>60}\n", 19)), "{live}");
    }
}
