//! The user documentation stands on its own: README.md and docs/ point to
//! nothing outside the repository (no "shared design folder", no DESIGN.md),
//! and every relative link in them names a file or directory that exists.

use std::path::{Path, PathBuf};

use vigil_tests::repo_root;

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files
}

/// `](target)` links that are not URLs or in-page anchors.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn docs_point_nowhere_outside_the_repo_and_their_links_resolve() {
    let files = markdown_files();
    assert!(files.len() > 10, "{files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            if lower.contains("design.md")
                || lower.contains("design folder")
                || line.contains("DESIGN §")
            {
                problems.push(format!(
                    "{}:{}: points outside: {line}",
                    file.display(),
                    n + 1
                ));
            }
        }
        for link in relative_links(&text) {
            let target = file.parent().unwrap().join(&link);
            if !target.exists() {
                problems.push(format!("{}: broken link {link}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn relative_links_are_found() {
    let table = [
        ("see [a](b.md) and [c](../d/#x)", vec!["b.md", "../d/"]),
        ("[web](https://example.org) [here](#anchor)", vec![]),
    ];
    for (text, want) in table {
        assert_eq!(relative_links(text), want, "{text}");
    }
}
