//! `nightshift schema`: print or write the JSON Schemas generated from the config types.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::schema::Format;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the schema of nightshift.yaml instead of automation files.
    #[arg(long)]
    project: bool,
    /// Write both schemas into this repository directory's schemas/ folder.
    #[arg(long, value_name = "REPO_DIR")]
    write: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.write {
        for format in [Format::Automation, Format::Project] {
            let path = dir.join(format.schema_file());
            std::fs::create_dir_all(path.parent().expect("schema files are in a folder"))?;
            std::fs::write(&path, format.schema_text()).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", if args.project { Format::Project } else { Format::Automation }.schema_text());
    Ok(ExitCode::SUCCESS)
}
