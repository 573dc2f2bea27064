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

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

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
