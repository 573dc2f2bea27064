//! The README and the pages under `docs/`: every relative link resolves (the
//! file exists and, with a `#fragment`, the fragment is the anchor GitHub
//! gives one of the target's headings), and the README links every page.
//! Needs neither the broker nor the database.

use std::collections::BTreeMap;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// README.md and docs/*.md, by path relative to the repository root.
fn documents() -> BTreeMap<String, String> {
    let mut docs = BTreeMap::new();
    let readme = Path::new(ROOT).join("README.md");
    docs.insert(
        "README.md".to_owned(),
        std::fs::read_to_string(readme).unwrap(),
    );
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().unwrap().to_str().unwrap();
            docs.insert(
                format!("docs/{name}"),
                std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
    docs
}

/// The lines outside fenced code blocks, numbered from 1.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => fence = Some("```"),
            None if t.starts_with("~~~") => fence = Some("~~~"),
            None => lines.push((i + 1, line)),
        }
    }
    lines
}

/// GitHub's anchor for a heading: lower case; letters, digits, `_` and `-`
/// kept, each space a `-`, everything else (punctuation, backticks) dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a document's headings; a repeated one gets `-1`, `-2`, …
fn anchors(text: &str) -> Vec<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut out = Vec::new();
    for (_, line) in prose(text) {
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_default();
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` outside code, with the
/// line each is on. A code span may run over several lines of a paragraph.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (n, line) in prose(text) {
        if line.trim().is_empty() {
            in_code = false;
            continue;
        }
        let mut outside = String::new();
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                outside.push(' ');
            } else if !in_code {
                outside.push(c);
            }
        }
        let mut rest = outside.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.trim_matches(['<', '>']).to_owned()));
            rest = &rest[end..];
        }
    }
    out
}

/// `docs/../README.md` → `README.md`; None above the repository root.
fn normalize(from_dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = from_dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Every relative link of every document that does not resolve, as
/// `file:line: target: why`. `exists` says whether a file that is not one of
/// the documents exists.
fn broken_links(docs: &BTreeMap<String, String>, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in docs {
        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
        for (line, target) in links(text) {
            if target.is_empty() {
                problems.push(format!("{name}:{line}: empty link target"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                name.clone()
            } else {
                match normalize(dir, path) {
                    Some(f) => f,
                    None => {
                        problems.push(format!("{name}:{line}: {target}: leaves the repository"));
                        continue;
                    }
                }
            };
            let body = docs.get(&file);
            if body.is_none() && !exists(&file) {
                problems.push(format!("{name}:{line}: {target}: no file {file}"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            match body {
                Some(body) => {
                    let known = anchors(body);
                    if !known.iter().any(|a| a == fragment) {
                        problems.push(format!(
                            "{name}:{line}: {target}: no heading #{fragment} in {file} \
                             (its anchors: {})",
                            known.join(", ")
                        ));
                    }
                }
                None if file.ends_with(".md") => {
                    let body = std::fs::read_to_string(Path::new(ROOT).join(&file)).unwrap();
                    if !anchors(&body).iter().any(|a| a == fragment) {
                        problems.push(format!(
                            "{name}:{line}: {target}: no heading #{fragment} in {file}"
                        ));
                    }
                }
                None => problems.push(format!(
                    "{name}:{line}: {target}: a #fragment into {file}, which is not markdown"
                )),
            }
        }
    }
    problems
}

/// The pages under docs/ that the README does not link to.
fn unlinked_pages(docs: &BTreeMap<String, String>) -> Vec<String> {
    let linked: Vec<String> = links(&docs["README.md"])
        .into_iter()
        .filter_map(|(_, t)| normalize("", t.split('#').next().unwrap()))
        .collect();
    docs.keys()
        .filter(|d| d.starts_with("docs/") && !linked.contains(d))
        .cloned()
        .collect()
}

#[test]
fn docs_relative_links_resolve() {
    let docs = documents();
    assert!(docs.len() > 1, "no pages under docs/");
    let problems = broken_links(&docs, |f| Path::new(ROOT).join(f).exists());
    assert!(
        problems.is_empty(),
        "broken links:\n{}\n",
        problems.join("\n")
    );
}

#[test]
fn docs_every_page_is_linked_from_the_readme() {
    let missing = unlinked_pages(&documents());
    assert!(missing.is_empty(), "README.md does not link {missing:?}");
}

#[test]
fn docs_anchors_are_github_slugs() {
    assert_eq!(
        slug("Stripe: `POST /webhooks/stripe`"),
        "stripe-post-webhooksstripe"
    );
    assert_eq!(
        slug("Kafka: SASL_SSL, worked example"),
        "kafka-sasl_ssl-worked-example"
    );
    assert_eq!(
        slug("What `payhook topics` can and cannot do"),
        "what-payhook-topics-can-and-cannot-do"
    );
    assert_eq!(
        anchors("# A\n```\n# not a heading\n```\n## A\n### B ##\n#nospace\n"),
        ["a", "a-1", "b"]
    );
}

#[test]
fn docs_link_check_reports_what_is_broken() {
    let docs: BTreeMap<String, String> = [
        (
            "README.md",
            "# Top\n\nSee [a](docs/a.md#good-heading), [b](docs/a.md#gone), \
             [c](docs/missing.md), [d](#top), [e](#nowhere), [f](../up.md), \
             [g](https://example.com/x#y), `[h](docs/in-code.md)`.\n\n\
             ```\n[i](docs/in-fence.md)\n```\n",
        ),
        (
            "docs/a.md",
            "# A\n\n## Good heading\n\nBack to [the top](../README.md#top), \
             [the file](../openapi.yaml), [not it](../openapi.yaml#x).\n",
        ),
        ("docs/b.md", "# B\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let problems = broken_links(&docs, |f| f == "openapi.yaml");
    let all = problems.join("\n");
    assert_eq!(problems.len(), 5, "{all}");
    for expected in [
        "README.md:3: docs/a.md#gone: no heading #gone in docs/a.md (its anchors: a, good-heading)",
        "README.md:3: docs/missing.md: no file docs/missing.md",
        "README.md:3: #nowhere: no heading #nowhere in README.md",
        "README.md:3: ../up.md: leaves the repository",
        "docs/a.md:5: ../openapi.yaml#x: a #fragment into openapi.yaml, which is not markdown",
    ] {
        assert!(all.contains(expected), "{expected}\nnot in:\n{all}");
    }
    assert_eq!(unlinked_pages(&docs), ["docs/b.md"]);
}
