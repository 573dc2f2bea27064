//! Log output: one JSON object per line for machines, or text for people.
//!
//! `LOG_FORMAT=auto` (the default) writes text when stderr is a terminal
//! and JSON otherwise (a file, a pipe, a container's log collector). Logs
//! always go to stderr, so a command's own output on stdout (`payhook dlq
//! list`, `payhook config`) stays clean. Colors only on a terminal.
//!
//! Field names are the same in every module, so one query finds an event
//! wherever it was logged: `event_id`, `order_id`, `topic`, `partition`,
//! `offset`, and `error` for the cause.
//!
//! Input is never logged whole: an id, a type or a string taken from a
//! request or a record goes into a log line, an error message or a
//! dead-letter header only as an [`excerpt`], so no line grows with what a
//! client sends. Secrets are never logged at all (`crate::config`).

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// Longest excerpt of input in a log line or an error message, in bytes.
pub const EXCERPT_BYTES: usize = 256;

/// At most `max` bytes of `s`, cut at a character boundary. A cut excerpt
/// ends with `…` and says how long the whole was, so a reader knows it is
/// not all: `"abc… (1048576 bytes)"`.
pub fn excerpt(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len()).into()
}

/// [`excerpt`] of bytes that may not be text (a record's key).
pub fn excerpt_bytes(b: &[u8], max: usize) -> String {
    let head = &b[..b.len().min(max)];
    let text = String::from_utf8_lossy(head);
    if b.len() <= max {
        text.into_owned()
    } else {
        format!("{text}… ({} bytes)", b.len())
    }
}

/// Whether `format` means JSON when the output is (or is not) a terminal.
pub fn is_json(format: LogFormat, terminal: bool) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    }
}

/// A subscriber writing to `writer`; `filter` has been checked by the
/// configuration (an unreadable directive is skipped, never fatal).
pub fn subscriber<W>(
    filter: &str,
    json: bool,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse_lossy(filter);
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        Box::new(
            fmt.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        )
    } else {
        Box::new(fmt.with_ansi(ansi).finish())
    }
}

/// Installs the process-wide subscriber: stderr, format as configured.
pub fn init(filter: &str, format: LogFormat) {
    let terminal = std::io::stderr().is_terminal();
    let sub = subscriber(filter, is_json(format, terminal), terminal, std::io::stderr);
    // Only fails if a subscriber is already installed (then that one stays).
    let _ = tracing::subscriber::set_global_default(sub);
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpts_are_bounded_and_say_so() {
        assert_eq!(excerpt("short", 10), "short");
        let long = "é".repeat(1000);
        let e = excerpt(&long, 7);
        assert!(e.starts_with("ééé…"), "{e}");
        assert!(e.ends_with("(2000 bytes)"), "{e}");
        assert!(e.len() < 30);
        assert_eq!(excerpt_bytes(b"ab", 5), "ab");
        assert_eq!(excerpt_bytes(&[b'x'; 10], 3), "xxx… (10 bytes)");
    }

    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(json: bool, ansi: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber("info", json, ansi, move || out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                event_id = "e1",
                order_id = "o1",
                topic = "t",
                partition = 3,
                offset = 42_i64,
                "record applied"
            );
            tracing::debug!("filtered out");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_is_one_object_per_line_with_the_fields_at_the_top() {
        let text = capture(true, false);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "record applied");
        assert_eq!(v["event_id"], "e1");
        assert_eq!(v["order_id"], "o1");
        assert_eq!(v["topic"], "t");
        assert_eq!(v["partition"], 3);
        assert_eq!(v["offset"], 42);
        assert!(v["timestamp"].is_string());
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn text_has_no_escape_codes_unless_on_a_terminal() {
        let plain = capture(false, false);
        assert!(plain.contains("record applied"), "{plain}");
        assert!(plain.contains("order_id=\"o1\""), "{plain}");
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        let colored = capture(false, true);
        assert!(colored.contains('\u{1b}'), "{colored:?}");
    }

    #[test]
    fn auto_is_text_on_a_terminal_and_json_elsewhere() {
        assert!(!is_json(LogFormat::Auto, true));
        assert!(is_json(LogFormat::Auto, false));
        assert!(is_json(LogFormat::Json, true));
        assert!(!is_json(LogFormat::Text, false));
    }
}
