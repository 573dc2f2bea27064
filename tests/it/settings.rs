//! The settings as users meet them: `payhook <command> --help`, `payhook
//! config`, `--version`, and the settings table of `docs/configuration.md`
//! and `.env.example`, which must list exactly the settings the code
//! declares (`payhook::config::SETTINGS`) with the same defaults.

use std::process::Command;

use payhook::config::{SETTINGS, Secrecy, Setting};

const CONFIGURATION_DOC: &str = include_str!("../../docs/configuration.md");
const ENV_EXAMPLE: &str = include_str!("../../.env.example");

fn payhook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_payhook"));
    // Only what a test sets reaches the binary.
    for s in SETTINGS {
        c.env_remove(s.env);
    }
    c
}

fn code_row(s: &Setting) -> String {
    let default = if s.default.is_empty() {
        "(none)".to_owned()
    } else {
        format!("`{}`", s.default)
    };
    format!("| `{}` | {default} | {} |", s.env, s.help)
}

/// Compares (name, default) pairs found in a document with the code's, and
/// says what to change, diff-style: `-` lines are in the document and
/// wrong, `+` lines are what the code declares.
fn compare(doc: &str, found: &[(String, String)], expected_line: impl Fn(&Setting) -> String) {
    let mut diff = Vec::new();
    for s in SETTINGS {
        match found.iter().filter(|(n, _)| n == s.env).collect::<Vec<_>>()[..] {
            [] => diff.push(format!("+ {}", expected_line(s))),
            [(_, d)] if d == s.default => {}
            [(_, d)] => {
                diff.push(format!("- {} = {d:?}", s.env));
                diff.push(format!("+ {}", expected_line(s)));
            }
            _ => diff.push(format!("- {} (listed more than once)", s.env)),
        }
    }
    for (n, d) in found {
        if Setting::named(n).is_none() {
            diff.push(format!(
                "- {n} = {d:?} (no such setting in src/config/mod.rs)"
            ));
        }
    }
    assert!(
        diff.is_empty(),
        "{doc} does not match the settings declared in src/config/mod.rs:\n{}\n",
        diff.join("\n")
    );
}

#[test]
fn configuration_doc_settings_table_matches_the_code() {
    let section = CONFIGURATION_DOC
        .split("\n## All settings\n")
        .nth(1)
        .expect("docs/configuration.md has a ## All settings section");
    let section = section.split("\n## ").next().unwrap();
    let mut found = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let name = cells[0].trim_matches('`').to_owned();
        let default = match cells.get(1).copied().unwrap_or("") {
            "(none)" => String::new(),
            d => d.trim_matches('`').to_owned(),
        };
        found.push((name, default));
    }
    compare(
        "docs/configuration.md (## All settings table)",
        &found,
        code_row,
    );
}

#[test]
fn env_example_lists_every_setting_with_its_default() {
    let found: Vec<(String, String)> = ENV_EXAMPLE
        .lines()
        .map(|l| l.trim_start_matches("# ").trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    compare(".env.example", &found, |s| {
        format!("# {}\n  {}={}", s.help, s.env, s.default)
    });
}

#[test]
fn compare_says_what_differs() {
    let found = vec![
        ("HTTP_ADDR".to_owned(), "0.0.0.0:1".to_owned()),
        ("NO_SUCH_THING".to_owned(), "1".to_owned()),
    ];
    let e = std::panic::catch_unwind(|| compare("doc", &found, code_row)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.contains("- HTTP_ADDR = \"0.0.0.0:1\""), "{msg}");
    assert!(
        msg.contains("+ | `HTTP_ADDR` | `127.0.0.1:8080` |"),
        "{msg}"
    );
    assert!(msg.contains("+ | `KAFKA_BROKERS` |"), "{msg}");
    assert!(msg.contains("- NO_SUCH_THING"), "{msg}");
}

#[test]
fn serve_help_lists_every_setting_with_its_variable_and_default() {
    let out = payhook().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for s in SETTINGS {
        assert!(
            help.contains(&format!("--{} <{}>", s.flag(), s.env)),
            "{}:\n{help}",
            s.env
        );
        assert!(help.contains(&format!("[env: {}", s.env)), "{}", s.env);
        assert!(help.contains(s.help), "{}", s.env);
        if !s.default.is_empty() {
            assert!(
                help.contains(&format!("[default: {}]", s.default)),
                "{}",
                s.env
            );
        }
    }
}

#[test]
fn secret_values_set_in_the_environment_stay_out_of_help() {
    let out = payhook()
        .args(["serve", "--help"])
        .env(
            "WEBHOOK_ORDERS_SECRETS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .env("DATABASE_URL", "postgres://app:hunter2pw@db/payhook")
        .env("KAFKA_LINGER", "3ms")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(!help.contains("MfKQ9r8G"), "{help}");
    assert!(!help.contains("hunter2pw"), "{help}");
    // A plain setting does show its value from the environment.
    assert!(help.contains("[env: KAFKA_LINGER=3ms]"), "{help}");
    for s in SETTINGS.iter().filter(|s| s.secrecy != Secrecy::Plain) {
        assert!(help.contains(&format!("[env: {}]", s.env)), "{}", s.env);
    }
}

#[test]
fn a_flag_wins_over_the_environment_and_the_environment_over_the_default() {
    let out = payhook()
        .args(["config", "--http-addr", "0.0.0.0:9999"])
        .env("HTTP_ADDR", "127.0.0.1:1111")
        .env("KAFKA_LINGER", "2ms")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("\nHTTP_ADDR=0.0.0.0:9999\n")
            || shown.starts_with("HTTP_ADDR=0.0.0.0:9999\n"),
        "{shown}"
    );
    assert!(shown.contains("\nKAFKA_LINGER=2ms\n"), "{shown}");
    assert!(shown.contains("\nKAFKA_PARTITIONS=8\n"), "{shown}");
    assert_eq!(shown.lines().count(), SETTINGS.len());
}

#[test]
fn every_invalid_setting_is_reported_at_once_without_secrets() {
    let out = payhook()
        .args(["serve", "--kafka-partitions=0"])
        .env("HTTP_ADDR", "nowhere")
        .env("WEBHOOK_ORDERS_SECRETS", "whsec_tooshort_hunter2")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2pw@db:5432/payhook?connect_timeout=x",
        )
        .env("LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for var in [
        "HTTP_ADDR",
        "WEBHOOK_ORDERS_SECRETS",
        "DATABASE_URL",
        "KAFKA_PARTITIONS",
        "LOG_FORMAT",
    ] {
        assert!(err.contains(&format!("  {var}=")), "{var} missing:\n{err}");
    }
    assert!(err.contains("expected json, text or auto"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("postgres://app:***@db:5432"), "{err}");
}

#[test]
fn version_names_the_git_revision() {
    let out = payhook().arg("--version").output().unwrap();
    let v = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        v.trim(),
        format!(
            "payhook {} (rev {})",
            payhook::version::VERSION,
            payhook::version::REVISION
        )
    );
    // Built from this repository, so the revision is known (a build outside
    // git says "unknown").
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert_ne!(payhook::version::REVISION, "unknown");
        assert!(
            payhook::version::REVISION
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
    }
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let out = payhook()
        .args([
            "healthcheck",
            "--url",
            "http://127.0.0.1:1/healthz",
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}
