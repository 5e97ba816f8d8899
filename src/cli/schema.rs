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

/// The committed text of a schema: pretty JSON with a final newline.
pub fn schema_text(format: Format) -> String {
    let mut text = serde_json::to_string_pretty(&format.schema()).expect("a schema serializes");
    text.push('\n');
    text
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.write {
        for format in [Format::Automation, Format::Project] {
            let path = dir.join(format.schema_file());
            std::fs::create_dir_all(path.parent().expect("schema files are in a folder"))?;
            std::fs::write(&path, schema_text(format)).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", schema_text(if args.project { Format::Project } else { Format::Automation }));
    Ok(ExitCode::SUCCESS)
}
