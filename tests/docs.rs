//! The README and the pages under `docs/` hold together: every relative
//! link reaches a file and, with `#anchor`, a heading of it; every page is
//! reachable from the README; the repository paths and configuration keys
//! the prose names exist. Reads files only: no server, no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown page under docs/, relative to the root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| p.strip_prefix(root()).expect("under the root").to_path_buf())
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The page's lines outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter_map(move |(i, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return None;
        }
        (!fenced).then_some((i + 1, line))
    })
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let Some(heading) = line.strip_prefix('#') else { continue };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of `[text](target)` links on one line, code spans left out.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b']' if !in_code && bytes.get(i + 1) == Some(&b'(') => {
                if let Some(end) = line[i + 2..].find(')') {
                    out.push(line[i + 2..i + 2 + end].to_string());
                    i += 2 + end;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[test]
fn every_relative_link_reaches_a_file_and_a_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).expect("readable page");
        let dir = page.parent().unwrap_or(Path::new(""));
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = target.split_once('#').map_or((target.as_str(), None), |(f, a)| (f, Some(a)));
                let resolved = if file.is_empty() { page.clone() } else { dir.join(file) };
                let path = root().join(&resolved);
                if !path.exists() {
                    broken.push(format!("{}:{n}: {target}: no file {}", page.display(), resolved.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let linked = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&linked).contains(anchor) {
                    broken.push(format!(
                        "{}:{n}: {target}: no heading #{anchor} in {}",
                        page.display(),
                        resolved.display()
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} relative links found: is the link parser still right?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_under_docs_is_reachable_from_the_readme() {
    let mut reached = BTreeSet::from([PathBuf::from("README.md")]);
    let mut queue = vec![PathBuf::from("README.md")];
    while let Some(page) = queue.pop() {
        let text = std::fs::read_to_string(root().join(&page)).expect("readable page");
        let dir = page.parent().unwrap_or(Path::new("")).to_path_buf();
        for (_, line) in prose(&text) {
            for target in links(line) {
                let file = target.split('#').next().unwrap_or("");
                if file.is_empty() || target.contains("://") || !file.ends_with(".md") {
                    continue;
                }
                let next = normalize(&dir.join(file));
                if reached.insert(next.clone()) {
                    queue.push(next);
                }
            }
        }
    }
    let unreached: Vec<_> = pages().into_iter().filter(|p| !reached.contains(p)).collect();
    assert!(unreached.is_empty(), "pages no link from README.md leads to: {unreached:?}");
}

/// `docs/../README.md` as `README.md`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Words in code spans that look like a path of this repository.
fn repo_paths(line: &str) -> Vec<String> {
    const DIRS: [&str; 7] = ["src/", "tests/", "scripts/", "examples/", "docs/", "systemd/", "assets/"];
    line.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| span.split_whitespace())
        .map(|w| w.trim_end_matches([',', ';', ':', ')']))
        .filter(|w| DIRS.iter().any(|d| w.starts_with(d)))
        .filter(|w| !w.contains(['*', '<', '{', '…']))
        .map(|w| w.split_once("::").map_or(w, |(p, _)| p).to_string())
        .collect()
}

#[test]
fn the_paths_the_docs_name_exist() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).expect("readable page");
        // The history names files as they were then.
        if page.ends_with("benchmark-history.md") {
            continue;
        }
        for (n, line) in prose(&text) {
            for path in repo_paths(line) {
                checked += 1;
                if !root().join(&path).exists() {
                    missing.push(format!("{}:{n}: `{path}`", page.display()));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} paths found: is the span parser still right?");
    assert!(missing.is_empty(), "the docs name paths that do not exist:\n{}", missing.join("\n"));
}

/// `section.key` of every key the shipped config.toml documents (commented-out keys included).
fn config_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("config.toml")).expect("config.toml");
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn the_config_keys_the_docs_name_are_in_config_toml() {
    let keys = config_keys();
    let sections: BTreeSet<&str> = keys.iter().filter_map(|k| k.split_once('.').map(|(s, _)| s)).collect();
    let mut unknown = Vec::new();
    let mut checked = 0;
    for page in pages() {
        if page.ends_with("benchmark-history.md") {
            continue;
        }
        let text = std::fs::read_to_string(root().join(&page)).expect("readable page");
        for (n, line) in prose(&text) {
            for span in line.split('`').skip(1).step_by(2) {
                let Some((section, key)) = span.split_once('.') else { continue };
                let key = key.split([' ', '=']).next().unwrap_or("");
                // `events.rs` is a file, not a key.
                if !sections.contains(section)
                    || key.is_empty()
                    || matches!(key, "rs" | "md" | "toml" | "json" | "sh" | "py" | "yaml")
                    || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    continue;
                }
                checked += 1;
                if !keys.contains(&format!("{section}.{key}")) {
                    unknown.push(format!("{}:{n}: `{section}.{key}`", page.display()));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} config keys found: is the span parser still right?");
    assert!(unknown.is_empty(), "the docs name config keys config.toml does not have:\n{}", unknown.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug(" Backup and restore"), "backup-and-restore");
    assert_eq!(slug("musl vs glibc"), "musl-vs-glibc");
    assert_eq!(slug("Logs, metrics, health and signals"), "logs-metrics-health-and-signals");
    assert_eq!(slug("A lost or different `secret.key`"), "a-lost-or-different-secretkey");
    assert_eq!(links("see [a](b.md#c) and `[x](y)`"), vec!["b.md#c".to_string()]);
}

#[test]
fn the_readme_is_a_page_and_links_every_guide() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    // A landing page a newcomer reads in minutes; the rest belongs under docs/.
    assert!(lines <= 250, "README.md has {lines} lines: move detail to a page under docs/");
    for page in ["api", "configuration", "operations", "synapse", "architecture", "benchmarks"] {
        let target = format!("(docs/{page}.md)");
        assert!(readme.contains(&target), "README.md does not link docs/{page}.md");
    }
}
