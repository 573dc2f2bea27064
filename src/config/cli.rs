//! The settings on the command line: every entry of [`SETTINGS`] becomes a
//! clap argument with its flag, environment variable, default and help, so
//! `payhook serve --help` is the reference. clap resolves each value (flag,
//! then environment variable, then default, as clap documents); the values
//! stay text, and [`Config::from_lookup`] checks them all at once so every
//! problem is reported together, with secrets redacted. A secret's `_FILE`
//! variable ([`super::files`]) is an argument too (`--kafka-sasl-password-file`).
//!
//! Where each value came from is kept: a value clap filled in from the
//! default counts as not given (so `DATABASE_URL_FILE` alone is not "given
//! twice"), and a secret typed on the command line, where `ps` shows it to
//! every user of the machine, is warned about ([`Settings::warnings`]).

use std::collections::{BTreeSet, HashMap};

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, parser::ValueSource};

use super::{Config, ConfigError, SETTINGS, Secrecy, Section, Setting, files};

/// Sections shown by `payhook serve`: all of them.
pub const ALL: u8 = u8::MAX;
/// Sections shown by `payhook migrate`.
pub const DATABASE: u8 = Section::Database.bit() | Section::Process.bit();
/// Sections shown by the commands that only talk to Kafka (`topics`, `dlq`).
pub const KAFKA: u8 = Section::Kafka.bit() | Section::Process.bit();
/// Sections shown by the commands that talk to Kafka and Postgres
/// (`offsets reset`).
pub const KAFKA_AND_DATABASE: u8 = KAFKA | DATABASE;

/// The settings of one command, as clap resolved them. `SECTIONS` says
/// which sections the command shows (and takes as flags); the others are
/// still read from the environment, so every command validates the same
/// configuration.
#[derive(Clone, Debug, Default)]
pub struct Settings<const SECTIONS: u8> {
    values: HashMap<&'static str, String>,
    /// Of `values`, those clap took from the default.
    defaulted: BTreeSet<&'static str>,
    /// Of `values`, those given as flags.
    flags: BTreeSet<&'static str>,
}

impl<const SECTIONS: u8> Settings<SECTIONS> {
    fn shown() -> impl Iterator<Item = &'static Setting> {
        SETTINGS.iter().filter(|s| SECTIONS & s.section.bit() != 0)
    }

    /// The value of `var` as given (flag or environment), or, for a setting
    /// this command does not show, the environment's. `None` when clap would
    /// fill in the default: the table's default then applies.
    pub fn given(&self, var: &str) -> Option<String> {
        if self.defaulted.contains(var) {
            return None;
        }
        match self.values.get(var) {
            Some(v) => Some(v.clone()),
            None => std::env::var(var).ok(),
        }
    }

    /// The checked configuration.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::from_lookup(|var| self.given(var))
    }

    /// `VAR=value` for every setting, in table order, secrets redacted
    /// (wherever they were read from): what `payhook config` prints.
    pub fn effective(&self) -> Vec<String> {
        let get = |var: &str| self.given(var);
        SETTINGS
            .iter()
            .map(|s| {
                match files::given(&get, s.env, s.file_env) {
                    Ok(v) => {
                        let v = v.unwrap_or_else(|| s.default.to_owned());
                        format!("{}={}", s.env, s.secrecy.show(v.trim()))
                    }
                    // Checked before; a file may have gone since.
                    Err(e) => format!("{}=<{}: {}>", s.env, e.var, e.value),
                }
            })
            .collect()
    }

    /// What to warn about at start-up: each secret given as a flag (its
    /// value is then in the process list), and [`Config::warnings`].
    pub fn warnings(&self, cfg: &Config) -> Vec<String> {
        let mut out: Vec<String> = SETTINGS
            .iter()
            .filter(|s| self.flags.contains(s.env) && s.secrecy != Secrecy::Plain)
            .filter(|s| {
                // A URL without a password, or an empty value, holds no secret.
                let v = self.values.get(s.env).map_or("", |v| v.trim());
                s.secrecy.show(v) != v
            })
            .map(|s| {
                format!(
                    "{} was given on the command line (--{}), where any user of this machine \
                     can read it (ps, /proc/<pid>/cmdline); set it in the environment, or in a \
                     file named by {}",
                    s.env,
                    s.flag(),
                    s.file_env.unwrap_or("its _FILE variable")
                )
            })
            .collect();
        out.extend(cfg.warnings());
        out
    }
}

/// The clap argument of one setting.
fn arg(s: &'static Setting) -> Arg {
    let mut a = Arg::new(s.env)
        .long(s.flag())
        .env(s.env)
        .value_name(s.env)
        .help(s.help)
        .long_help(format!("{}.\nExpected: {}.", s.help, s.expected()))
        .help_heading(s.section.heading())
        .hide_env_values(s.secrecy != Secrecy::Plain);
    if !s.default.is_empty() {
        a = a.default_value(s.default);
    }
    a
}

/// The clap argument of a secret's `_FILE` variable.
fn file_arg(s: &'static Setting, file_env: &'static str) -> Arg {
    Arg::new(file_env)
        .long(file_env.to_ascii_lowercase().replace('_', "-"))
        .env(file_env)
        .value_name("PATH")
        .help(format!(
            "File holding {} (a container secret), instead of the variable",
            s.env
        ))
        .long_help(format!(
            "File holding {}, e.g. a container secret under /run/secrets; its trailing \
             newline is dropped. Not together with {}.\nExpected: {}.",
            s.env,
            s.env,
            files::EXPECTED_FILE
        ))
        .help_heading(s.section.heading())
}

impl<const SECTIONS: u8> Args for Settings<SECTIONS> {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(
            Self::shown()
                .flat_map(|s| std::iter::once(arg(s)).chain(s.file_env.map(|f| file_arg(s, f)))),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<const SECTIONS: u8> FromArgMatches for Settings<SECTIONS> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut s = Self::default();
        s.update_from_arg_matches(m)?;
        Ok(s)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for var in Self::shown().flat_map(|s| std::iter::once(s.env).chain(s.file_env)) {
            if let Some(v) = m.get_one::<String>(var) {
                self.values.insert(var, v.clone());
                match m.value_source(var) {
                    Some(ValueSource::DefaultValue) => {
                        self.defaulted.insert(var);
                    }
                    Some(ValueSource::CommandLine) => {
                        self.flags.insert(var);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings<ALL>,
    }

    fn parse(args: &[&str]) -> Settings<ALL> {
        use clap::Parser;
        let mut argv = vec!["payhook"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().settings
    }

    #[test]
    fn flags_set_values_and_defaults_fill_the_rest() {
        let s = parse(&["--http-addr", "0.0.0.0:9000", "--kafka-linger=2ms"]);
        let c = s.config().unwrap();
        assert_eq!(c.http.addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.kafka.linger, std::time::Duration::from_millis(2));
        assert_eq!(c.consumer.max_batch, 2000);
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let s = parse(&["--http-addr=nowhere", "--kafka-partitions", "0"]);
        let err = s.config().unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(vars, ["HTTP_ADDR", "KAFKA_PARTITIONS"]);
    }

    #[test]
    fn secrets_given_as_flags_are_not_echoed() {
        let s = parse(&[
            "--webhook-orders-secrets=whsec_short",
            "--database-url=postgres://app:hunter2secret@db:5432/payhook?x=1",
            "--database-pool-size=none",
        ]);
        let err = s.config().unwrap_err().to_string();
        assert!(!err.contains("whsec_short"), "{err}");
        assert!(err.contains("WEBHOOK_ORDERS_SECRETS"), "{err}");
        let shown = s.effective().join("\n");
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(!shown.contains("whsec_short"), "{shown}");
        assert!(
            shown.contains("DATABASE_URL=postgres://app:***@db:5432/payhook?x=1"),
            "{shown}"
        );
    }

    #[test]
    fn a_secret_typed_as_a_flag_warns_and_one_from_a_default_or_a_file_does_not() {
        let cfg_warnings = |s: &Settings<ALL>| s.warnings(&s.config().unwrap());
        let s = parse(&[
            "--kafka-sasl-password=hunter2pw",
            "--database-url=postgres://app:hunter2db@127.0.0.1/payhook",
            "--http-addr=127.0.0.1:9000",
        ]);
        let w = cfg_warnings(&s);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("DATABASE_URL was given on the command line (--database-url)"));
        assert!(w[0].contains("DATABASE_URL_FILE"), "{w:?}");
        assert!(w[1].starts_with("KAFKA_SASL_PASSWORD was given on the command line"));
        assert!(!w.join(" ").contains("hunter2"), "{w:?}");
        // A URL without a password, and an empty secret, hold nothing to see.
        let s = parse(&[
            "--database-url=postgres://app@127.0.0.1/payhook",
            "--kafka-sasl-password=",
        ]);
        assert_eq!(cfg_warnings(&s), Vec::<String>::new());
        // Nothing given: DATABASE_URL comes from clap's default, which is
        // neither a flag nor given.
        let s = parse(&[]);
        assert!(s.flags.is_empty(), "{:?}", s.flags);
        assert!(s.defaulted.contains("DATABASE_URL"), "{:?}", s.defaulted);
        assert_eq!(s.given("DATABASE_URL"), None);
        assert_eq!(cfg_warnings(&s), Vec::<String>::new());
        // So a file alone is not "given twice" with the default.
        let path = std::env::temp_dir().join(format!(
            "payhook-cli-secret-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, "postgres://app:hunter2db@db.internal/payhook\n").unwrap();
        let s = parse(&["--database-url-file", path.to_str().unwrap()]);
        let (c, shown) = (s.config(), s.effective().join("\n"));
        std::fs::remove_file(&path).unwrap();
        let c = c.unwrap();
        assert_eq!(
            c.database.url,
            "postgres://app:hunter2db@db.internal/payhook"
        );
        assert!(
            shown.contains("DATABASE_URL=postgres://app:***@db.internal/payhook"),
            "{shown}"
        );
        // The path is no secret: no warning for the flag, but the remote
        // database without verify-full is warned about.
        let w = s.warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("sslmode=disable"), "{w:?}");
    }

    #[test]
    fn help_shows_every_setting_with_its_variable_and_default() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        for s in SETTINGS {
            assert!(
                help.contains(&format!("--{}", s.flag())),
                "{} missing:\n{help}",
                s.env
            );
            assert!(
                help.contains(&format!("[env: {}", s.env)),
                "{} env missing",
                s.env
            );
            if !s.default.is_empty() {
                assert!(
                    help.contains(&format!("[default: {}]", s.default)),
                    "{} default missing:\n{help}",
                    s.env
                );
            }
            if let Some(f) = s.file_env {
                let flag = f.to_ascii_lowercase().replace('_', "-");
                assert!(help.contains(&format!("--{flag} <PATH>")), "{f}:\n{help}");
                assert!(help.contains(&format!("[env: {f}=]")), "{f}:\n{help}");
            }
        }
    }

    #[test]
    fn a_command_shows_only_its_sections() {
        use clap::CommandFactory;
        #[derive(Debug, clap::Parser)]
        struct Migrate {
            #[command(flatten)]
            settings: Settings<DATABASE>,
        }
        let help = Migrate::command().render_help().to_string();
        assert!(help.contains("--database-url"), "{help}");
        assert!(help.contains("--rust-log"), "{help}");
        assert!(!help.contains("--http-addr"), "{help}");
    }
}
