//! The checks settings use. Each one is the expected form, as error
//! messages state it, and the parser that accepts exactly that form.

use std::{num::NonZeroU32, ops::RangeInclusive, str::FromStr, time::Duration};

use super::{
    Check, LogFormat, Secrets,
    keys::{EnvelopeKey, Scheme},
};

/// Anything `FromStr` reads.
pub fn from_str<T: FromStr>(expected: &'static str) -> Check<impl Fn(&str) -> Option<T>> {
    Check {
        expected,
        parse: |s: &str| s.parse().ok(),
    }
}

/// A number within `range`.
pub fn whole<T: FromStr + PartialOrd>(
    range: RangeInclusive<T>,
    expected: &'static str,
) -> Check<impl Fn(&str) -> Option<T>> {
    Check {
        expected,
        parse: move |s: &str| s.parse().ok().filter(|n| range.contains(n)),
    }
}

/// A humantime duration of more than zero.
pub fn duration() -> Check<impl Fn(&str) -> Option<Duration>> {
    Check {
        expected: "a duration like 250ms, 5s or 1m (more than zero)",
        parse: |s: &str| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
    }
}

/// A humantime duration within `range`.
pub fn duration_within(
    range: RangeInclusive<Duration>,
    expected: &'static str,
) -> Check<impl Fn(&str) -> Option<Duration>> {
    Check {
        expected,
        parse: move |s: &str| {
            humantime::parse_duration(s)
                .ok()
                .filter(|d| range.contains(d))
        },
    }
}

/// true/false, on/off, yes/no, 1/0.
pub fn switch(expected: &'static str) -> Check<impl Fn(&str) -> Option<bool>> {
    Check {
        expected,
        parse: |s: &str| match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
    }
}

/// Kafka's own rule for topic names, also used for consumer group names
/// so they stay readable in logs and SQL.
pub fn name() -> Check<impl Fn(&str) -> Option<String>> {
    Check {
        expected: "1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'",
        parse: |s: &str| {
            let ok = !s.is_empty()
                && s.len() <= 249
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            ok.then(|| s.to_owned())
        },
    }
}

pub fn brokers() -> Check<impl Fn(&str) -> Option<Vec<String>>> {
    Check {
        expected: "comma-separated host:port pairs",
        parse: |s: &str| {
            let list: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect();
            let valid = !list.is_empty()
                && list.iter().all(|b| {
                    b.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                });
            valid.then_some(list)
        },
    }
}

pub fn postgres_url() -> Check<impl Fn(&str) -> Option<String>> {
    Check {
        expected: "a postgres:// URL",
        parse: |s: &str| {
            // payhook applies sslmode itself (tokio-postgres knows no
            // verify-full); the mode is checked with DATABASE_SSLMODE.
            let ok = (s.starts_with("postgres://") || s.starts_with("postgresql://"))
                && super::strip_sslmode(s)
                    .parse::<tokio_postgres::Config>()
                    .is_ok();
            ok.then(|| s.to_owned())
        },
    }
}

pub fn partitions() -> Check<impl Fn(&str) -> Option<NonZeroU32>> {
    Check {
        expected: "a whole number between 1 and 10000",
        parse: |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n <= 10_000)
                .and_then(NonZeroU32::new)
        },
    }
}

/// A count where 0 means "no limit".
pub fn attempts() -> Check<impl Fn(&str) -> Option<Option<u32>>> {
    Check {
        expected: "a whole number of attempts (0 = retry without limit)",
        parse: |s: &str| s.parse::<u32>().ok().map(|n| (n > 0).then_some(n)),
    }
}

pub fn scheme() -> Check<impl Fn(&str) -> Option<Scheme>> {
    Check {
        expected: "standard or stripe",
        parse: Scheme::parse,
    }
}

/// Kept as given; read against the endpoint's scheme in
/// `Config::check_together`, where the reason can be named.
pub fn secrets() -> Check<impl Fn(&str) -> Option<Secrets>> {
    Check {
        expected: "comma-separated secrets",
        parse: |s: &str| Some(Secrets(s.to_owned())),
    }
}

/// `ENVELOPE_SIGNING_KEYS`: `id:secret` pairs ([`EnvelopeKey`]).
pub fn envelope_keys() -> Check<impl Fn(&str) -> Option<Vec<EnvelopeKey>>> {
    Check {
        expected: "comma-separated id:secret pairs, distinct ids of 1 to 32 of A-Z a-z 0-9 . _ -, \
                   secrets of at least 32 characters (e.g. payhook-1:$(openssl rand -hex 32))",
        parse: |s: &str| EnvelopeKey::parse_list(s).ok(),
    }
}

/// A key in a provider's metadata: 1 to 40 visible ASCII characters.
pub fn metadata_key() -> Check<impl Fn(&str) -> Option<String>> {
    Check {
        expected: "1 to 40 visible ASCII characters, like order_id",
        parse: |s: &str| {
            (!s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_graphic()))
                .then(|| s.to_owned())
        },
    }
}

/// A comma-separated list of account identifiers (Stripe `acct_…`, Adyen
/// merchant account codes): each 1 to 255 visible ASCII characters; empty
/// is the empty list.
pub fn accounts(expected: &'static str) -> Check<impl Fn(&str) -> Option<Vec<String>>> {
    Check {
        expected,
        parse: |s: &str| {
            if s.trim().is_empty() {
                return Some(Vec::new());
            }
            let list: Vec<String> = s.split(',').map(|a| a.trim().to_owned()).collect();
            list.iter()
                .all(|a| !a.is_empty() && a.len() <= 255 && a.bytes().all(|b| b.is_ascii_graphic()))
                .then_some(list)
        },
    }
}

/// `live` or `test`: which Stripe events an endpoint applies (`true` is live).
pub fn stripe_mode() -> Check<impl Fn(&str) -> Option<bool>> {
    Check {
        expected: "live or test",
        parse: |s: &str| match s.to_ascii_lowercase().as_str() {
            "live" => Some(true),
            "test" => Some(false),
            _ => None,
        },
    }
}

/// Empty means "not set" (`None`); anything else must pass `inner`.
/// For settings without a default, e.g. `KAFKA_SASL_USERNAME("")`.
pub fn optional<T>(
    inner: Check<impl Fn(&str) -> Option<T>>,
) -> Check<impl Fn(&str) -> Option<Option<T>>> {
    Check {
        expected: inner.expected,
        parse: move |s: &str| {
            if s.is_empty() {
                Some(None)
            } else {
                (inner.parse)(s).map(Some)
            }
        },
    }
}

/// `auto` (`None`), or a whole number in `range`.
pub fn auto_or(range: RangeInclusive<i16>) -> Check<impl Fn(&str) -> Option<Option<i16>>> {
    Check {
        expected: "auto, or a whole number between 1 and 32",
        parse: move |s: &str| {
            if s.eq_ignore_ascii_case("auto") {
                Some(None)
            } else {
                s.parse::<i16>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .map(Some)
            }
        },
    }
}

/// A duration, or `forever` (`None`).
pub fn duration_or_forever() -> Check<impl Fn(&str) -> Option<Option<Duration>>> {
    Check {
        expected: "a duration like 365days, or forever",
        parse: |s: &str| duration_or_word(s, "forever", Duration::from_nanos(1)),
    }
}

/// `off` (`None`), or a duration of at least a minute.
pub fn duration_or_off() -> Check<impl Fn(&str) -> Option<Option<Duration>>> {
    Check {
        expected: "off, or a duration of at least 1m, like 90days",
        parse: |s: &str| duration_or_word(s, "off", Duration::from_secs(60)),
    }
}

/// `word` (any case) as `None`, or a duration of at least `min`.
fn duration_or_word(s: &str, word: &str, min: Duration) -> Option<Option<Duration>> {
    if s.eq_ignore_ascii_case(word) {
        Some(None)
    } else {
        humantime::parse_duration(s)
            .ok()
            .filter(|d| *d >= min)
            .map(Some)
    }
}

/// The path of a file that exists (a PEM certificate or key).
pub fn pem_file() -> Check<impl Fn(&str) -> Option<std::path::PathBuf>> {
    Check {
        expected: "the path of a readable PEM file",
        parse: |s: &str| {
            let p = std::path::PathBuf::from(s);
            p.is_file().then_some(p)
        },
    }
}

/// Any text (a user name, a path).
pub fn text(expected: &'static str) -> Check<impl Fn(&str) -> Option<String>> {
    Check {
        expected,
        parse: |s: &str| Some(s.to_owned()),
    }
}

pub fn log_filter() -> Check<impl Fn(&str) -> Option<String>> {
    Check {
        expected: "a tracing filter like info,rskafka=warn or payhook=debug",
        parse: |s: &str| {
            tracing_subscriber::EnvFilter::builder()
                .parse(s)
                .ok()
                .map(|_| s.to_owned())
        },
    }
}

pub fn log_format() -> Check<impl Fn(&str) -> Option<LogFormat>> {
    Check {
        expected: "json, text or auto",
        parse: |s: &str| match s.to_ascii_lowercase().as_str() {
            "auto" => Some(LogFormat::Auto),
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        },
    }
}
