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
    if diagnostics.is_empty() {
        eprintln!("{} automations OK", catalog.automations.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} errors in {} files; {} automations OK",
            diagnostics.len(),
            files.len(),
            catalog.automations.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
