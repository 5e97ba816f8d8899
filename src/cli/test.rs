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
            println!("       {failure}");
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
