//! Records the git revision payhook is built from, for `payhook --version`
//! and the `payhook_build_info` metric. Pure Rust: it only runs `git`, and
//! falls back to "unknown" where there is no git or no repository (e.g. a
//! Docker build, which may pass `PAYHOOK_GIT_REVISION` instead).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PAYHOOK_GIT_REVISION");
    let revision = std::env::var("PAYHOOK_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // points to (a commit), wherever git keeps them (worktrees included).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rustc-env=PAYHOOK_GIT_REVISION={revision}");
}
