//! The supply chain as the repository states it: every crate that does
//! cryptography for payhook is named, with its audit status, on the
//! development page, and every cargo step of the suite's scripts is
//! `--locked`. Needs neither the broker nor the database.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Crates that do cryptography, TLS, certificate handling or randomness. A
/// new one in `Cargo.lock` must be named on the page (and, if it is not on
/// this list yet, added here).
const CRYPTO: &[&str] = &[
    "rustls",
    "rustls-graviola",
    "graviola",
    "rustls-webpki",
    "rustls-pki-types",
    "webpki-roots",
    "untrusted",
    "tokio-rustls",
    "tokio-postgres-rustls",
    "postgres-protocol",
    "x509-cert",
    "der",
    "spki",
    "rsasl",
    "hmac",
    "sha1",
    "sha2",
    "sha3",
    "md-5",
    "md5",
    "digest",
    "crypto-common",
    "block-buffer",
    "pbkdf2",
    "hkdf",
    "subtle",
    "ctutils",
    "cmov",
    "zeroize",
    "rand",
    "rand_core",
    "rand_chacha",
    "chacha20",
    "getrandom",
    "ring",
    "aws-lc-rs",
    "aws-lc-sys",
    "openssl",
    "openssl-sys",
    "native-tls",
];

/// The crate names in `Cargo.lock`.
fn locked_crates() -> Vec<String> {
    let lock = std::fs::read_to_string(format!("{ROOT}/Cargo.lock")).unwrap();
    lock.lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"').to_owned())
        .collect()
}

/// The table of `docs/development.md`'s "Crypto on the path": the crates
/// named in its first column.
fn crypto_table() -> Vec<String> {
    let page = std::fs::read_to_string(format!("{ROOT}/docs/development.md")).unwrap();
    let section = page
        .split("\n### Crypto on the path\n")
        .nth(1)
        .expect("docs/development.md has a ### Crypto on the path section");
    let section = section.split("\n#").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.trim_matches('|').split('|').next().unwrap();
            first
                .split(',')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_crypto_crate_in_the_lock_file_is_named_with_its_audit_status() {
    let locked = locked_crates();
    let named = crypto_table();
    let missing: Vec<&str> = CRYPTO
        .iter()
        .copied()
        .filter(|c| locked.iter().any(|l| l == c) && !named.iter().any(|n| n == c))
        .collect();
    assert!(
        missing.is_empty(),
        "crypto crates in Cargo.lock not named in docs/development.md (### Crypto on the path): {missing:?}"
    );
    // And the table names nothing that is not there.
    let stale: Vec<&String> = named
        .iter()
        .filter(|n| !locked.iter().any(|l| l == *n))
        .collect();
    assert!(stale.is_empty(), "named but not in Cargo.lock: {stale:?}");
    // The check itself sees the lock file: the TLS stack is in it.
    assert!(locked.iter().any(|l| l == "rustls"), "{locked:?}");
}

#[test]
fn every_cargo_step_of_the_suite_is_locked() {
    let mut unlocked = Vec::new();
    for script in [
        "scripts/test",
        "scripts/check-no-c",
        "scripts/check-static",
        "scripts/check-deps",
        ".ci/run",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{script}")).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap();
            let builds = ["build", "test", "clippy", "check", "tree", "bench", "run"]
                .iter()
                .any(|cmd| {
                    code.split_whitespace()
                        .collect::<Vec<_>>()
                        .windows(2)
                        .any(|w| w[0].ends_with("cargo") && w[1] == *cmd)
                });
            if builds && !code.contains("--locked") {
                unlocked.push(format!("{script}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        unlocked.is_empty(),
        "cargo steps without --locked:\n{}",
        unlocked.join("\n")
    );
}
