//! The catalog: every automation loaded, checked and compiled, with every problem found
//! in any file reported together.

mod partial;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::load::{SourceFile, check_automation, discover, load_project};
use crate::config::profiles::builtin_profiles;
use crate::config::schema::Format;
use crate::config::{AgentProfile, Automation, Code, Diagnostic, FieldPath, Finding};
use crate::rules::{CompiledAutomation, RuleEngine};

/// The project settings file looked for in the working directory.
pub const PROJECT_FILE: &str = "nightshift.yaml";

/// An automation and the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedAutomation {
    pub file: PathBuf,
    pub compiled: CompiledAutomation,
}

/// Every automation that loaded cleanly, and the agent profiles.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub automations: Vec<LoadedAutomation>,
    pub profiles: BTreeMap<String, AgentProfile>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&LoadedAutomation> {
        self.automations.iter().find(|a| a.compiled.name() == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.automations.iter().map(|a| a.compiled.name())
    }
}

/// The project file to use: the one given, else `nightshift.yaml` if present.
pub fn project_file(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Path::new(PROJECT_FILE).is_file().then(|| PathBuf::from(PROJECT_FILE)),
    }
}

/// Loads `paths` (files or directories). Automations with problems are left out of the
/// catalog; every problem is in the returned diagnostics, sorted by file and line.
pub fn load(engine: &RuleEngine, paths: &[PathBuf], project: Option<&Path>) -> (Catalog, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut profiles = builtin_profiles();
    match load_project(project) {
        Ok(config) => profiles.extend(config.profiles),
        Err(problems) => diagnostics.extend(problems),
    }
    let (files, problems) = discover(paths);
    diagnostics.extend(problems);

    let results = load_files(engine, &files, &profiles);
    let mut automations = Vec::new();
    let mut first_use: HashMap<String, Diagnostic> = HashMap::new();
    for (file, result) in results {
        let (automation, compiled, problems) = result;
        diagnostics.extend(problems);
        let Some(automation) = automation else { continue };
        let at_name = file.locate(vec![Finding::new(FieldPath::root().key("name"), Code::DuplicateName, "")]).remove(0);
        if let Some(first) = first_use.get(&automation.name) {
            diagnostics.push(Diagnostic {
                message: format!(
                    "automation name `{}` is already used by {}:{}",
                    automation.name,
                    first.file.display(),
                    first.line
                ),
                hint: Some("names are unique across all automation files".into()),
                ..at_name
            });
            continue;
        }
        first_use.insert(automation.name.clone(), at_name);
        if let Some(compiled) = compiled {
            automations.push(LoadedAutomation { file: file.path.clone(), compiled });
        }
    }
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    (Catalog { automations, profiles }, diagnostics)
}

type FileResult = (Option<Automation>, Option<CompiledAutomation>, Vec<Diagnostic>);

/// Loads files on every core; results keep the files' order.
fn load_files(
    engine: &RuleEngine,
    files: &[PathBuf],
    profiles: &BTreeMap<String, AgentProfile>,
) -> Vec<(SourceFile, FileResult)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(|path| load_file(engine, path, profiles)).collect::<Vec<_>>())
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("loading a file does not panic")).collect()
    })
}

fn load_file(engine: &RuleEngine, path: &Path, profiles: &BTreeMap<String, AgentProfile>) -> (SourceFile, FileResult) {
    let file = match SourceFile::read(path) {
        Ok(file) => file,
        Err(problem) => {
            let file = SourceFile { path: path.to_path_buf(), text: String::new() };
            return (file, (None, None, vec![problem]));
        }
    };
    let value = match file.parse_value() {
        Ok(value) => value,
        Err(problem) => return (file, (None, None, vec![problem])),
    };
    let broken = Format::Automation.check(&value);
    if !broken.is_empty() {
        let mut findings = partial::check_parts(engine, &value, &broken, profiles, path);
        findings.extend(broken);
        let diagnostics = file.locate(findings);
        return (file, (None, None, diagnostics));
    }
    let automation: Automation = match file.typed(value) {
        Ok(automation) => automation,
        Err(problem) => return (file, (None, None, vec![problem])),
    };
    let mut findings = check_automation(&automation, path);
    let compiled = match CompiledAutomation::compile(engine, &automation, profiles) {
        Ok(compiled) => Some(compiled),
        Err(problems) => {
            findings.extend(problems);
            None
        }
    };
    let compiled = if findings.is_empty() { compiled } else { None };
    let diagnostics = file.locate(findings);
    (file, (Some(automation), compiled, diagnostics))
}
