//! What the load tools share: a repository of 10,000 files made with git, and how
//! samples are reported.

#![allow(dead_code)]

pub mod http;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const DIRS: usize = 100;
pub const FILES_PER_DIR: usize = 100;

/// `DIRS` directories of `FILES_PER_DIR` files of a few hundred bytes, in one commit on
/// `main`.
pub fn make_repository(source: &Path) {
    make_repository_of(source, DIRS, FILES_PER_DIR);
}

/// `dirs` directories of `files_per_dir` files, in one commit on `main`.
pub fn make_repository_of(source: &Path, dirs: usize, files_per_dir: usize) {
    for d in 0..dirs {
        let dir = source.join(format!("module_{d:03}"));
        std::fs::create_dir_all(&dir).expect("a directory");
        for f in 0..files_per_dir {
            let text = format!("// module {d}, file {f}\n{}", "pub fn value() -> u64 { 42 }\n".repeat(10));
            std::fs::write(dir.join(format!("file_{f:03}.rs")), text).expect("a file");
        }
    }
    git(source, &["init", "--quiet", "--initial-branch=main"]);
    git(source, &["add", "--all"]);
    git(source, &["commit", "--quiet", "-m", &format!("{} files", dirs * files_per_dir)]);
}

/// Runs git in `dir`, ignoring the machine's config; panics if it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "user.name=Bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

pub fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

pub fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let p90 = samples[(samples.len() * 9).div_ceil(10) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<17} n={:<3} median {:>8.1} ms  p90 {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms",
        samples.len(),
        ms(median(samples)),
        ms(p90),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}
