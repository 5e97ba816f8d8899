//! Safe git refs and repository locations: branch names follow `git check-ref-format
//! --branch` with no shell metacharacters; repositories are URLs of the usual transports
//! or local paths. A bad value is an error, never silently rewritten.

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

/// Checks a repository location: `https://`, `http://`, `ssh://`, `git://`, `file://`,
/// `user@host:path`, or a local path. No other transports (git's `ext::` runs commands),
/// no leading `-` (an option to git), no whitespace or control characters.
pub fn check_repo_location(location: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("`{location}` is not an allowed repository location: {why}"));
    if location.is_empty() {
        return fail("it is empty");
    }
    if location.starts_with('-') {
        return fail("it starts with `-`");
    }
    if location.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("it contains whitespace or control characters");
    }
    if location.contains("::") {
        return fail("git transport helpers (`ext::`, `fd::`) are not allowed");
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" | "file" => Ok(()),
            _ => fail("use https, http, ssh, git or file URLs"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_name_has_at_most_200_bytes() {
        let name = |bytes: usize| format!("agent/{}", "x".repeat(bytes - "agent/".len()));
        assert_eq!(check_branch_name(&name(200)), Ok(()));
        let long = check_branch_name(&name(201)).unwrap_err();
        assert!(long.ends_with("longer than 200 bytes"), "{long}");
    }

    #[test]
    fn accepts_ordinary_branches() {
        for ok in ["agent/incident-42", "nightshift/audit/2026-11-22", "fix_x.y", "a+b"] {
            assert_eq!(check_branch_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn repository_locations() {
        for ok in [
            "https://github.com/acme/api.git",
            "git@github.com:acme/api.git",
            "ssh://git@host/x",
            "/srv/git/api",
            "../api",
            "file:///srv/x",
        ] {
            assert_eq!(check_repo_location(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-uhttps://x", "ext::sh -c touch% /tmp/pwned", "fd::17", "gopher://x", "https://x y", "a\nb"] {
            assert!(check_repo_location(bad).is_err(), "{bad:?}");
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
