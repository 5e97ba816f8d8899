//! Architecture invariants, checked on the source text (see docs/ARCHITECTURE.md).

use std::path::{Path, PathBuf};

use crate::repo_root;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn source_files() -> Vec<(String, String)> {
    let root = repo_root();
    ["src", "tests", "benches"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The part of a file that is not unit tests.
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn every_file_says_what_it_owns() {
    for (path, text) in source_files() {
        assert!(text.starts_with("//! "), "{path} must start with a `//!` line saying what it owns");
    }
}

#[track_caller]
fn only_under(prefix: &str, needles: &[&str]) {
    for (path, text) in source_files() {
        if path.starts_with(prefix) || !path.starts_with("src/") {
            continue;
        }
        for needle in needles {
            assert!(!text.contains(needle), "{path} uses `{needle}`; only {prefix} may");
        }
    }
}

#[test]
fn only_the_store_imports_sled() {
    only_under("src/store/", &["sled::", "use sled"]);
}

#[test]
fn only_the_command_line_uses_anyhow() {
    only_under("src/cli/", &["anyhow"]);
}

#[test]
fn only_http_imports_axum() {
    only_under("src/http/", &["axum::", "use axum"]);
}

#[test]
fn rules_do_no_io() {
    for (path, text) in source_files().into_iter().filter(|(p, _)| p.starts_with("src/rules/")) {
        for needle in ["std::fs", "std::net", "std::process", "tokio", "reqwest", "std::env"] {
            assert!(!text.contains(needle), "{path} uses `{needle}`: rules/ does no I/O");
        }
    }
}

#[test]
fn exactly_one_function_builds_the_rhai_engine() {
    let builders: Vec<String> = source_files()
        .into_iter()
        .filter(|(path, text)| {
            path.starts_with("src/") && (text.contains("Engine::new") || text.contains("Engine::new_raw"))
        })
        .map(|(path, _)| path)
        .collect();
    assert_eq!(builders, ["src/rules/engine.rs"]);
}

#[test]
fn library_code_does_not_unwrap() {
    for (path, text) in source_files().into_iter().filter(|(p, _)| p.starts_with("src/")) {
        assert!(!non_test_code(&text).contains(".unwrap()"), "{path} calls unwrap() outside tests");
    }
}

#[test]
fn the_architecture_map_names_every_module() {
    let map = std::fs::read_to_string(repo_root().join("docs/ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(repo_root().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        assert!(
            map.contains(&format!("`{name}/`")) || map.contains(&format!("`{name}.rs`")),
            "docs/ARCHITECTURE.md does not mention src/{name}"
        );
    }
}

#[test]
fn the_readme_says_how_to_get_nightshift_before_using_it() {
    let readme = std::fs::read_to_string(crate::repo_root().join("README.md")).unwrap();
    let first_use =
        readme.lines().position(|line| line.starts_with("nightshift ")).expect("the README runs nightshift commands");
    let before: Vec<&str> = readme.lines().take(first_use).collect();
    assert!(
        before.iter().any(|line| line.contains("cargo install --path .")) && before.iter().any(|l| l.contains("PATH")),
        "README.md line {}: `nightshift` is used before saying how to put it on PATH",
        first_use + 1
    );
}
