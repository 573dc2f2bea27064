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
        if let Some(f) = s.file_env {
            c.env_remove(f);
        }
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
        .env("KAFKA_LINGER", "5ms")
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
    assert!(shown.contains("\nKAFKA_LINGER=5ms\n"), "{shown}");
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

/// A file of its own under the system's temporary directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(content: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "payhook-it-secret-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, content).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A valid value of each secret setting, and how `payhook config` shows it.
/// A new secret setting is one more line here.
const SECRET_VALUES: &[(&str, &str, &str)] = &[
    (
        "WEBHOOK_ORDERS_SECRETS",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "<redacted>",
    ),
    (
        "WEBHOOK_CHARGEBACKS_SECRETS",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "<redacted>",
    ),
    (
        "STRIPE_WEBHOOK_SECRETS",
        "whsec_stripe_test_secret_0123456789",
        "<redacted>",
    ),
    (
        "ADYEN_HMAC_KEYS",
        "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
        "<redacted>",
    ),
    (
        "DATABASE_URL",
        "postgres://app:MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw@127.0.0.1:5432/payhook",
        "postgres://app:***@127.0.0.1:5432/payhook",
    ),
    (
        "KAFKA_SASL_PASSWORD",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "<redacted>",
    ),
    (
        "ENVELOPE_SIGNING_KEYS",
        "k1:MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw-0123",
        "<redacted>",
    ),
];

#[test]
fn every_secret_setting_is_read_from_its_file() {
    let secrets: Vec<&Setting> = SETTINGS.iter().filter(|s| s.file_env.is_some()).collect();
    let listed: Vec<&str> = SECRET_VALUES.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(
        secrets.iter().map(|s| s.env).collect::<Vec<_>>(),
        listed,
        "every secret setting, and only those, has a _FILE variable; list each in SECRET_VALUES"
    );
    for s in SETTINGS.iter().filter(|s| s.secrecy != Secrecy::Plain) {
        assert!(s.file_env.is_some(), "{} is secret but has no _FILE", s.env);
    }
    for (var, value, shown) in SECRET_VALUES {
        let file_var = format!("{var}_FILE");
        let run = |file: &TempFile, extra: &[(&str, &str)]| {
            let mut c = payhook();
            c.env_remove(&file_var)
                .arg("config")
                .env(&file_var, file.path())
                // Adyen's keys need their merchant accounts.
                .env("ADYEN_MERCHANT_ACCOUNTS", "Shop");
            for (k, v) in extra {
                c.env(k, v);
            }
            let out = c.output().unwrap();
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        };
        // Read, used, shown redacted.
        let file = TempFile::new(&format!("{value}\n"));
        let (code, stdout, stderr) = run(&file, &[]);
        assert_eq!(code, Some(0), "{var}: {stderr}");
        assert!(
            stdout.contains(&format!("\n{var}={shown}\n")),
            "{var}:\n{stdout}"
        );
        assert!(!stdout.contains("MfKQ9r8G") && !stderr.contains("MfKQ9r8G"));
        // The file's content is what the check sees (a SASL password may be
        // any text).
        if *var != "KAFKA_SASL_PASSWORD" {
            let bad = TempFile::new("hunter2\n");
            let (code, _, stderr) = run(&bad, &[]);
            assert_eq!(code, Some(2), "{var}: {stderr}");
            assert!(stderr.contains(&format!("  {var}=")), "{var}: {stderr}");
            assert!(!stderr.contains("hunter2"), "{stderr}");
        }
        // Both ways at once: refused, naming both, showing neither.
        let (code, _, stderr) = run(&file, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("  {file_var}=\"{}\"", file.path())),
            "{stderr}"
        );
        assert!(stderr.contains("not both"), "{stderr}");
        assert!(!stderr.contains("MfKQ9r8G"), "{stderr}");
        // A file that is not there: its path and why, nothing else.
        let gone = TempFile::new("");
        let path = gone.path().to_owned();
        drop(gone);
        let mut c = payhook();
        let out = c.arg("config").env(&file_var, &path).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("  {file_var}=\"{path}: No such file")),
            "{stderr}"
        );
    }
}

#[test]
fn the_secrets_from_files_table_lists_every_secret() {
    let section = CONFIGURATION_DOC
        .split("\n### Secrets from files\n")
        .nth(1)
        .expect("docs/configuration.md has a ### Secrets from files section");
    let section = section.split("\n#").next().unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].trim_matches('`').to_owned(),
                cells[1].trim_matches('`').to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = SETTINGS
        .iter()
        .filter_map(|s| s.file_env.map(|f| (s.env.to_owned(), f.to_owned())))
        .collect();
    assert_eq!(
        rows, expected,
        "docs/configuration.md, ### Secrets from files"
    );
}

#[test]
fn a_secret_given_as_a_flag_is_warned_about_and_never_shown() {
    // Logged once logging is up: `migrate` against a port nothing listens
    // on fails after its warnings.
    let out = payhook()
        .args([
            "migrate",
            "--database-url",
            "postgres://app:hunter2pw@127.0.0.1:1/payhook",
        ])
        .env("LOG_FORMAT", "json")
        .env("DATABASE_CONNECT_TIMEOUT", "1s")
        .output()
        .unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    let warning = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("DATABASE_URL was given on the command line"))
        });
    assert!(warning.is_some(), "no warning:\n{log}");
    assert!(!log.contains("hunter2pw"), "{log}");

    // The same secret from the environment, or a file, is not warned about.
    let file = TempFile::new("hunter2pw\n");
    for (var, value) in [
        ("KAFKA_SASL_PASSWORD", "hunter2pw"),
        ("KAFKA_SASL_PASSWORD_FILE", file.path()),
    ] {
        let out = payhook().arg("config").env(var, value).output().unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.contains("warning"), "{var}: {stderr}");
    }
    let out = payhook()
        .args(["config", "--kafka-sasl-password", "hunter2pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("warning: KAFKA_SASL_PASSWORD was given on the command line"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}

#[test]
fn clear_text_credentials_to_another_machine_are_warned_about() {
    let out = payhook()
        .arg("config")
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
        .env("KAFKA_SASL_USERNAME", "payhook")
        .env("KAFKA_SASL_PASSWORD", "hunter2pw")
        .env("KAFKA_BROKERS", "kafka-1.internal:9095")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2pw@db.internal/payhook",
        )
        .env("DATABASE_SSLMODE", "require")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "warning: KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=sasl_plaintext"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: the database connection to db.internal uses sslmode=require"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}

#[test]
fn dot_env_is_ignored_by_git_and_the_example_is_not() {
    let root = env!("CARGO_MANIFEST_DIR");
    if !std::path::Path::new(root).join(".git").exists() {
        eprintln!("not a git checkout; nothing to check");
        return;
    }
    let ignored = |path: &str| {
        let out = Command::new("git")
            .args(["-C", root, "check-ignore", "--no-index", "-q", path])
            .output()
            .expect("git runs");
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            other => panic!("git check-ignore {path}: {other:?} {:?}", out.stderr),
        }
    };
    for path in [".env", ".env.local", ".env.production", "deploy/.env"] {
        assert!(ignored(path), "{path} is not ignored by git");
    }
    assert!(!ignored(".env.example"), ".env.example must stay tracked");
}
