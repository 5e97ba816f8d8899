//! `nightshift test`: run every automation's `tests:` block.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Sources, load_catalog, print_diagnostics};
use crate::rules::RuleEngine;
use crate::selftest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Automation files or directories. Default: automations/
    paths: Vec<PathBuf>,
    /// Print what each case's run would send to its `notify:` targets.
    #[arg(long)]
    messages: bool,
    /// Print each case's parallel plan (attempts, verification, children).
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    sources: Sources,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (catalog, diagnostics) = load_catalog(&args.paths, &args.sources);
    print_diagnostics(&diagnostics);
    let results = selftest::run_all(RuleEngine::shared(), &catalog);
    for result in &results {
        let status = if result.passed() { "ok  " } else { "FAIL" };
        println!("{status} {} › {}", result.automation, result.name);
        for failure in &result.failures {
            println!("{}", indented(failure, "       "));
        }
        if args.messages {
            for message in &result.messages {
                println!("{}", indented(message, "     = "));
            }
        }
        if args.plan {
            for plan in &result.plans {
                println!("{}", indented(plan, "     = "));
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed()).count();
    let failed = results.len() - passed;
    println!("{passed} passed, {failed} failed");
    if !diagnostics.is_empty() {
        eprintln!("{} errors in automation files (see above); their tests did not run", diagnostics.len());
    }
    Ok(if failed == 0 && diagnostics.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `text` with `first` before its first line and as many spaces before the others.
fn indented(text: &str, first: &str) -> String {
    let rest = " ".repeat(first.chars().count());
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(n, line)| if n == 0 { format!("{first}{line}") } else { format!("{rest}{line}") })
        .collect();
    lines.join("\n")
}
