//! The settings on the command line: every entry of [`SETTINGS`] becomes a
//! clap argument with its flag, environment variable, default and help, so
//! `payhook serve --help` is the reference. clap resolves each value (flag,
//! then environment variable, then default, as clap documents); the values
//! stay text, and [`Config::from_lookup`] checks them all at once so every
//! problem is reported together, with secrets redacted.

use std::collections::HashMap;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

use super::{Config, ConfigError, SETTINGS, Secrecy, Section, Setting};

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
}

impl<const SECTIONS: u8> Settings<SECTIONS> {
    fn shown() -> impl Iterator<Item = &'static Setting> {
        SETTINGS.iter().filter(|s| SECTIONS & s.section.bit() != 0)
    }

    /// The value of `var` as clap resolved it (flag, environment or default),
    /// or, for a setting this command does not show, the environment's.
    pub fn raw(&self, var: &str) -> Option<String> {
        match self.values.get(var) {
            Some(v) => Some(v.clone()),
            None => std::env::var(var).ok(),
        }
    }

    /// The checked configuration.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::from_lookup(|var| self.raw(var))
    }

    /// `VAR=value` for every setting, in table order, secrets redacted: what
    /// `payhook config` prints.
    pub fn effective(&self) -> Vec<String> {
        SETTINGS
            .iter()
            .map(|s| {
                let v = self.raw(s.env).unwrap_or_else(|| s.default.to_owned());
                format!("{}={}", s.env, s.secrecy.show(v.trim()))
            })
            .collect()
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

impl<const SECTIONS: u8> Args for Settings<SECTIONS> {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(Self::shown().map(arg))
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
        for s in Self::shown() {
            if let Some(v) = m.get_one::<String>(s.env) {
                self.values.insert(s.env, v.clone());
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
