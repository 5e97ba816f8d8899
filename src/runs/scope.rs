//! Whether two runs' `paths` may touch the same file, so claims never run two runs of
//! one repository at once whose scopes overlap.
//!
//! Patterns are globs relative to the repository root, matched as the worker's scope
//! check matches them (globset with `literal_separator`: `*` stays within a path
//! component, `**` crosses them). The answer is conservative: "overlap" may be said of
//! two sets that cannot share a file, "disjoint" never of two that can.

use globset::GlobBuilder;

/// Whether a file could be in both scopes. An empty list is a run that may change no
/// file (a review), which overlaps nothing; the whole repository is `**`, the default.
/// An invalid glob counts as overlapping everything.
pub fn paths_overlap(a: &[String], b: &[String]) -> bool {
    a.iter().any(|p| b.iter().any(|q| patterns_overlap(&Pattern::parse(p), &Pattern::parse(q))))
}

/// One entry of `paths`: a file path, or a glob.
enum Pattern<'p> {
    Literal(&'p str),
    /// A pattern ending in `/` is read as `dir/**`.
    Glob(std::borrow::Cow<'p, str>),
}

/// A `paths` entry as a glob: `dir/` means everything under `dir`, `dir/**`. The worker's
/// scope check reads entries through this too, so both agree.
pub fn normalized(pattern: &str) -> std::borrow::Cow<'_, str> {
    if pattern.ends_with('/') { format!("{pattern}**").into() } else { pattern.into() }
}

impl<'p> Pattern<'p> {
    fn parse(text: &'p str) -> Pattern<'p> {
        if text.ends_with('/') {
            Pattern::Glob(normalized(text))
        } else if has_meta(text) {
            Pattern::Glob(text.into())
        } else {
            Pattern::Literal(text)
        }
    }
}

/// Whether `text` holds a character globset gives a meaning to (a backslash escapes).
fn has_meta(text: &str) -> bool {
    text.contains(['*', '?', '[', '{', '\\'])
}

fn patterns_overlap(a: &Pattern, b: &Pattern) -> bool {
    match (a, b) {
        (Pattern::Literal(a), Pattern::Literal(b)) => a == b,
        (Pattern::Literal(path), Pattern::Glob(glob)) | (Pattern::Glob(glob), Pattern::Literal(path)) => {
            match GlobBuilder::new(glob).literal_separator(true).build() {
                Ok(glob) => glob.compile_matcher().is_match(path),
                Err(_) => true,
            }
        }
        (Pattern::Glob(a), Pattern::Glob(b)) => {
            if GlobBuilder::new(a).build().is_err() || GlobBuilder::new(b).build().is_err() {
                return true;
            }
            // Every path a glob matches begins with the glob's literal directories, so
            // globs whose literal directories part ways match no path in common.
            literal_dirs(a).zip(literal_dirs(b)).all(|(x, y)| x == y)
        }
    }
}

/// The components of a glob before the first one holding a metacharacter.
fn literal_dirs(glob: &str) -> impl Iterator<Item = &str> {
    glob.split('/').take_while(|component| !has_meta(component))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(a: &[&str], b: &[&str], overlap: bool) {
        let a: Vec<String> = a.iter().map(|p| p.to_string()).collect();
        let b: Vec<String> = b.iter().map(|p| p.to_string()).collect();
        assert_eq!(paths_overlap(&a, &b), overlap, "{a:?} vs {b:?}");
        assert_eq!(paths_overlap(&b, &a), overlap, "{b:?} vs {a:?} (the other way round)");
    }

    #[test]
    fn an_empty_list_changes_nothing_so_it_overlaps_nothing() {
        check(&[], &[], false);
        check(&[], &["docs/x.txt"], false);
        check(&[], &["**"], false);
    }

    #[test]
    fn literal_paths_overlap_when_equal() {
        check(&["Cargo.toml"], &["Cargo.toml"], true);
        check(&["Cargo.toml"], &["Cargo.lock"], false);
        check(&["src/lib.rs"], &["src/main.rs"], false);
    }

    #[test]
    fn a_literal_path_overlaps_a_glob_that_matches_it() {
        check(&["Cargo.toml"], &["**/Cargo.toml"], true);
        check(&["src/lib.rs"], &["src/**"], true);
        check(&["src/lib.rs"], &["**"], true);
        check(&["docs/x.txt"], &["docs/*.md"], false);
        // `*` stays within a directory.
        check(&["docs/a/x.md"], &["docs/*.md"], false);
        check(&["src/lib.rs"], &["tests/**"], false);
    }

    #[test]
    fn globs_overlap_unless_their_literal_directories_part_ways() {
        check(&["src/a/**"], &["src/b/**"], false);
        check(&["src/a/**"], &["src/**"], true);
        check(&["src/**"], &["**/*.rs"], true);
        check(&["docs/*.md"], &["docs/*.txt"], true);
        check(&["services/api/**"], &["services/web/*.ts"], false);
        check(&["{src,lib}/**"], &["tests/**"], true);
    }

    #[test]
    fn a_pattern_ending_in_a_slash_is_its_whole_directory() {
        check(&["src/"], &["src/lib.rs"], true);
        check(&["src/"], &["src/a/**"], true);
        check(&["src/"], &["tests/"], false);
        check(&["src/"], &["srcx/lib.rs"], false);
    }

    #[test]
    fn any_overlapping_pair_makes_the_lists_overlap() {
        check(&["docs/**", "Cargo.toml"], &["src/**", "Cargo.toml"], true);
        check(&["docs/**", "README.md"], &["src/**", "Cargo.toml"], false);
    }

    #[test]
    fn an_invalid_glob_overlaps_everything() {
        check(&["src/[a"], &["docs/x.txt"], true);
        check(&["src/[a"], &["docs/**"], true);
    }
}
