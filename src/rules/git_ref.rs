//! Safe git branch names: the rules of `git check-ref-format --branch`, plus no shell
//! metacharacters. A bad name is an error, never silently rewritten.

/// Checks a branch name; `Err` says what is wrong.
pub fn check_branch_name(name: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("`{name}` is not a safe branch name: {why}"));
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > 200 {
        return fail("longer than 200 bytes");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '+'))) {
        return fail(&format!(
            "`{}` is not allowed (use letters, digits, `/`, `-`, `_`, `.`, `+`; `slug()` makes text safe)",
            c.escape_default()
        ));
    }
    if name.starts_with('-') {
        return fail("it starts with `-`");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return fail("empty path component");
    }
    if name.contains("..") {
        return fail("it contains `..`");
    }
    if name.ends_with('.') {
        return fail("it ends with `.`");
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return fail("a component starts with `.`");
        }
        if component.ends_with(".lock") {
            return fail("a component ends with `.lock`");
        }
    }
    if name == "HEAD" {
        return fail("`HEAD` is reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_branches() {
        for ok in ["agent/incident-42", "nightshift/audit/2026-11-22", "fix_x.y", "a+b"] {
            assert_eq!(check_branch_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_what_git_or_a_shell_would_trip_on() {
        for bad in [
            "", "a b", "a..b", "/a", "a/", "a//b", ".a", "a/.b", "a.lock", "a.", "-a", "a~1", "a^", "a:b", "a?", "a*",
            "a[", "a\\b", "a@{1}", "$(x)", "a;b", "HEAD", "é",
        ] {
            assert!(check_branch_name(bad).is_err(), "{bad:?}");
        }
    }
}
