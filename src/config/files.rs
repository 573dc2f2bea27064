//! Secrets from files: every secret setting (`secret` or `password_in_url`
//! in the table) may be given as `NAME`, or as `NAME_FILE`, the path of a
//! file that holds it, the way container platforms hand secrets over
//! (Docker and Compose secrets, Kubernetes secret volumes under
//! `/run/secrets/...`). A value in a file is not in the process's
//! environment (`/proc/<pid>/environ`, `docker inspect`) nor on its command
//! line (`ps`).
//!
//! - The file's content is the value; like a variable's, it is trimmed, so
//!   the trailing newline `echo` and most editors leave is dropped.
//! - Giving both `NAME` and `NAME_FILE` is refused: which one wins would be a
//!   guess, and a stale variable next to a rotated file is how an old secret
//!   lives on. An empty `NAME` counts as not given (a copied `.env.example`
//!   has them).
//! - A file that cannot be read, is empty or is not UTF-8 is refused with
//!   its path and the reason; its content is never shown.
//!
//! Adding a secret needs nothing here: marking it `secret` in the table
//! gives it its `_FILE` variable, flag and help line.

use super::VarError;

/// What a secret's file must be, as errors state it.
pub const EXPECTED_FILE: &str = "a readable, non-empty UTF-8 file holding the secret";

/// What a secret given twice is told.
pub const EXPECTED_ONE_SOURCE: &str = "to be unset when the variable it stands for is set too: give a secret as NAME or as NAME_FILE, not both";

/// The value of `var` as given (by `get`), or for a secret with a
/// `file_var`, the content of the file that names; `None` when neither is
/// given (the default applies).
pub fn given(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: Option<&'static str>,
) -> Result<Option<String>, VarError> {
    let direct = get(var);
    let Some(file_var) = file_var else {
        return Ok(direct);
    };
    let Some(path) = get(file_var)
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
    else {
        return Ok(direct);
    };
    if direct.as_deref().is_some_and(|v| !v.trim().is_empty()) {
        return Err(VarError {
            var: file_var,
            value: path,
            expected: EXPECTED_ONE_SOURCE,
        });
    }
    read_secret(file_var, &path).map(Some)
}

/// The content of the file at `path`. Errors name `file_var` and the path,
/// never the content.
fn read_secret(file_var: &'static str, path: &str) -> Result<String, VarError> {
    let refuse = |why: String| VarError {
        var: file_var,
        value: format!("{path}: {why}"),
        expected: EXPECTED_FILE,
    };
    let bytes = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| refuse("not UTF-8".into()))?;
    // Surrounding whitespace, the trailing newline included, is dropped
    // when the value is checked, as for a variable.
    if text.trim().is_empty() {
        return Err(refuse("empty".into()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Config, SETTINGS, Secrecy};

    /// A file of its own under the system's temporary directory.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(content: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!(
                "payhook-secret-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }

        fn path(&self) -> String {
            self.0.to_str().unwrap().to_owned()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map)
    }

    /// The secret settings, each with a valid value different from its
    /// default and how to see it in the configuration.
    #[allow(clippy::type_complexity)]
    fn secrets() -> Vec<(&'static str, &'static str, fn(&Config) -> String)> {
        vec![
            (
                "WEBHOOK_ORDERS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                |c| format!("{:?}", c.webhooks.orders().secrets.len()),
            ),
            (
                "WEBHOOK_CHARGEBACKS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                |c| format!("{:?}", c.webhooks.chargebacks().secrets.len()),
            ),
            (
                "STRIPE_WEBHOOK_SECRETS",
                "whsec_stripe_test_secret_0123456789",
                |c| format!("{:?}", c.webhooks.stripe_keys().len()),
            ),
            (
                "ADYEN_HMAC_KEYS",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
                |c| format!("{:?}", c.webhooks.adyen_keys().len()),
            ),
            (
                "ENVELOPE_SIGNING_KEYS",
                "k1:0123456789abcdef0123456789abcdef-file",
                |c| format!("{:?}", c.kafka.signing_keys),
            ),
            (
                "DATABASE_URL",
                "postgres://app:s3cret@db.internal:5432/payhook",
                |c| c.database.url.clone(),
            ),
            ("KAFKA_SASL_PASSWORD", "s3cret pass", |c| {
                c.kafka.sasl_password.clone().unwrap_or_default()
            }),
        ]
    }

    #[test]
    fn every_secret_and_only_secrets_have_a_file_variable() {
        let with_file: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| s.file_env.is_some())
            .map(|s| s.env)
            .collect();
        let listed: Vec<&str> = secrets().iter().map(|(v, _, _)| *v).collect();
        // Every secret setting is in the list this module's tests exercise.
        for s in SETTINGS.iter().filter(|s| s.secrecy != Secrecy::Plain) {
            assert!(
                listed.contains(&s.env),
                "{} is secret: add it to secrets() with a valid value",
                s.env
            );
            assert_eq!(s.file_env, Some(format!("{}_FILE", s.env).as_str()));
        }
        assert_eq!(with_file.len(), listed.len(), "{with_file:?}");
        // No _FILE variable is also a setting of its own.
        for s in SETTINGS {
            if let Some(f) = s.file_env {
                assert!(crate::config::Setting::named(f).is_none(), "{f}");
            }
        }
    }

    #[test]
    fn each_secret_is_read_from_its_file_without_the_trailing_newline() {
        // Adyen's keys need their merchant accounts.
        let cfg = |pairs: &[(&str, &str)]| {
            let mut all = pairs.to_vec();
            all.push(("ADYEN_MERCHANT_ACCOUNTS", "Shop"));
            cfg(&all)
        };
        for (var, value, seen) in secrets() {
            let direct = cfg(&[(var, value)]).unwrap();
            let file_var = format!("{var}_FILE");
            for content in [format!("{value}\n"), format!("{value}\r\n"), value.into()] {
                let f = TempFile::new(content.as_bytes());
                let from_file = cfg(&[(&file_var, &f.path())]).unwrap();
                assert_eq!(seen(&from_file), seen(&direct), "{var} from {content:?}");
                assert_ne!(seen(&from_file), seen(&cfg(&[]).unwrap()), "{var}");
            }
            // The content goes through the setting's check, redacted (a
            // SASL password may be any text).
            if var != "KAFKA_SASL_PASSWORD" {
                let f = TempFile::new(b"hunter2\n");
                let text = cfg(&[(&file_var, &f.path())]).unwrap_err().to_string();
                assert!(text.contains(&format!("  {var}=")), "{var}: {text}");
                assert!(!text.contains("hunter2"), "{text}");
            }
        }
        assert_eq!(
            cfg(&[(
                "KAFKA_SASL_PASSWORD_FILE",
                &TempFile::new(b"pw with spaces \n").path()
            )])
            .unwrap()
            .kafka
            .sasl_password
            .as_deref(),
            Some("pw with spaces")
        );
    }

    #[test]
    fn a_secret_given_twice_is_refused() {
        let f = TempFile::new(b"s3cret\n");
        let e = cfg(&[
            ("KAFKA_SASL_PASSWORD", "other"),
            ("KAFKA_SASL_PASSWORD_FILE", &f.path()),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].var, "KAFKA_SASL_PASSWORD_FILE");
        assert_eq!(e.0[0].expected, EXPECTED_ONE_SOURCE);
        let text = e.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("other"),
            "{text}"
        );
        // An empty variable (a copied .env.example) is not given.
        let c = cfg(&[
            ("KAFKA_SASL_PASSWORD", ""),
            ("KAFKA_SASL_PASSWORD_FILE", &f.path()),
        ])
        .unwrap();
        assert_eq!(c.kafka.sasl_password.as_deref(), Some("s3cret"));
        // Nor is an empty _FILE.
        let c = cfg(&[
            ("KAFKA_SASL_PASSWORD", "direct"),
            ("KAFKA_SASL_PASSWORD_FILE", ""),
        ])
        .unwrap();
        assert_eq!(c.kafka.sasl_password.as_deref(), Some("direct"));
    }

    #[test]
    fn an_unusable_file_is_named_by_its_path_never_its_content() {
        let missing = std::env::temp_dir().join("payhook-no-such-secret-file");
        let missing = missing.to_str().unwrap();
        let empty = TempFile::new(b"\n");
        let binary = TempFile::new(b"hunter2\xff\xfe");
        for (path, why) in [
            (missing, "No such file"),
            (&empty.path(), "empty"),
            (&binary.path(), "not UTF-8"),
        ] {
            let e = cfg(&[("DATABASE_URL_FILE", path)]).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].var, "DATABASE_URL_FILE");
            let text = e.to_string();
            assert!(
                text.contains(&format!("DATABASE_URL_FILE=\"{path}: {why}")),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
        // A directory cannot be read either.
        let dir = std::env::temp_dir();
        let e = cfg(&[("ADYEN_HMAC_KEYS_FILE", dir.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.0[0].var, "ADYEN_HMAC_KEYS_FILE", "{e}");
    }

    #[test]
    fn a_plain_setting_has_no_file_variable() {
        let f = TempFile::new(b"0.0.0.0:1\n");
        let c = cfg(&[("HTTP_ADDR_FILE", &f.path())]).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:8080".parse().unwrap());
    }
}
