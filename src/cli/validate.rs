//! `nightshift validate`: load everything and report every problem at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Sources, load_catalog, print_diagnostics};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Automation files or directories. Default: automations/
    paths: Vec<PathBuf>,
    #[command(flatten)]
    sources: Sources,
    /// Print diagnostics as JSON lines on stdout instead of text on stderr.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (catalog, diagnostics) = load_catalog(&args.paths, &args.sources);
    if args.json {
        for diagnostic in &diagnostics {
            println!("{}", serde_json::to_string(diagnostic)?);
        }
    } else {
        print_diagnostics(&diagnostics);
    }
    let files: std::collections::BTreeSet<_> = diagnostics.iter().map(|d| &d.file).collect();
    let ok = plural(catalog.automations.len(), "automation");
    if diagnostics.is_empty() {
        eprintln!("{ok} OK");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} in {}; {ok} OK", plural(diagnostics.len(), "error"), plural(files.len(), "file"));
        Ok(ExitCode::FAILURE)
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}
