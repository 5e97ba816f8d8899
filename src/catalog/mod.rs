//! The catalog: every automation loaded, checked and compiled, with every problem found
//! in any file reported together.

mod partial;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use crate::config::load::{SourceFile, check_automation, discover, io_diagnostic, load_project};
use crate::config::profiles::builtin_profiles;
use crate::config::schema::Format;
use crate::config::{
    AgentProfile, Automation, Code, Diagnostic, FieldPath, Finding, GithubSettings, NotifySettings, Retention,
    SlackSettings,
};
use crate::parallel::ParallelLimits;
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
    /// How much run history the store keeps (from `nightshift.yaml`).
    pub retention: Retention,
    /// `slack:`, `github:` and `notify:` from `nightshift.yaml`: how `notify:` targets
    /// are sent.
    pub slack: SlackSettings,
    pub github: GithubSettings,
    pub notify: NotifySettings,
    /// `parallel:` from `nightshift.yaml`: the ceilings of parallel work.
    pub parallel: ParallelLimits,
    /// Problems that do not stop loading, such as a notify token that cannot be read,
    /// as `file:line:col: warning: ...` lines.
    pub warnings: Vec<String>,
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
    let mut retention = Retention::default();
    let mut max_prompt_bytes = crate::config::DEFAULT_MAX_PROMPT_BYTES;
    let (mut slack, mut github, mut notify) = Default::default();
    let mut parallel = ParallelLimits::default();
    match load_project(project) {
        Ok(config) => {
            parallel = config.parallel;
            profiles.extend(config.profiles);
            retention = config.retention;
            max_prompt_bytes = config.max_prompt_bytes;
            (slack, github, notify) = (config.slack, config.github, config.notify);
        }
        Err(problems) => diagnostics.extend(problems),
    }
    let (files, problems) = discover(paths);
    diagnostics.extend(problems);

    let results = load_files(engine, &files, &profiles, &parallel);
    let mut first_use: HashMap<&str, &SourceFile> = HashMap::new();
    let mut duplicates = HashSet::new();
    for (index, (file, (automation, _, _))) in results.iter().enumerate() {
        let Some(automation) = automation else { continue };
        let Some(first) = first_use.get(automation.name.as_str()) else {
            first_use.insert(&automation.name, file);
            continue;
        };
        let name = FieldPath::root().key("name");
        let first_at = first.locate(vec![Finding::new(name.clone(), Code::DuplicateName, "")]).remove(0);
        let message = format!(
            "automation name `{}` is already used by {}:{}",
            automation.name,
            first_at.file.display(),
            first_at.line
        );
        let finding =
            Finding::new(name, Code::DuplicateName, message).hint("names are unique across all automation files");
        diagnostics.extend(file.locate(vec![finding]));
        duplicates.insert(index);
    }
    let (hook_problems, conflicting) = duplicate_hook_names(&results);
    diagnostics.extend(hook_problems);

    let mut automations = Vec::new();
    let mut warnings = Vec::new();
    for (index, (file, (_, compiled, problems))) in results.into_iter().enumerate() {
        diagnostics.extend(problems);
        let Some(mut compiled) = compiled else { continue };
        compiled.set_max_prompt_bytes(max_prompt_bytes);
        compiled.set_notify_settings(slack.clone(), github.clone());
        compiled.set_parallel_limits(parallel);
        let found = crate::config::notify::token_warnings(&compiled.definition, &slack, &github);
        warnings.extend(
            file.locate(found)
                .iter()
                .map(|d| format!("{}:{}:{}: warning: {}", d.file.display(), d.line, d.col, d.message)),
        );
        if !duplicates.contains(&index) && !conflicting.contains(compiled.name()) {
            automations.push(LoadedAutomation { file: file.path, compiled });
        }
    }
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    (Catalog { automations, profiles, retention, slack, github, notify, parallel, warnings }, diagnostics)
}

/// Webhook-style triggers are served at `/hooks/{name}`: the webhook's `path`, else the
/// automation's name. Two triggers may not share one; the later automation is reported
/// (and, like one with any other problem, left out of the catalog).
fn duplicate_hook_names(results: &[(SourceFile, FileResult)]) -> (Vec<Diagnostic>, HashSet<String>) {
    let mut taken: HashMap<String, PathBuf> = HashMap::new();
    let mut diagnostics = Vec::new();
    let mut conflicting = HashSet::new();
    for (file, (automation, _, _)) in results {
        let Some(automation) = automation else { continue };
        let triggers = automation.trigger.iter().map(|t| (FieldPath::root().key("trigger"), t)).chain(
            automation.triggers.iter().enumerate().map(|(i, t)| (FieldPath::root().key("triggers").index(i), t)),
        );
        for (at, spec) in triggers {
            let Some(source) = spec.source() else { continue };
            let Some(hook) = source.hook_name(&automation.name) else { continue };
            let at = at.key(source.kind().as_str());
            if let Some(first) = taken.get(&hook) {
                let message = format!("hook name `{hook}` is already served for {}", first.display());
                let finding = Finding::new(at, Code::DuplicateName, message).hint(
                    "a hook name serves one trigger: give a webhook its own `path`, or put the other source in an automation of its own",
                );
                diagnostics.extend(file.locate(vec![finding]));
                conflicting.insert(automation.name.clone());
            } else {
                taken.insert(hook, file.path.clone());
            }
        }
    }
    (diagnostics, conflicting)
}

type FileResult = (Option<Automation>, Option<CompiledAutomation>, Vec<Diagnostic>);

/// Loads files on every core; results keep the files' order. A panic while loading one
/// file (a bug, in nightshift or a library) becomes that file's diagnostic.
fn load_files(
    engine: &RuleEngine,
    files: &[PathBuf],
    profiles: &BTreeMap<String, AgentProfile>,
    parallel: &ParallelLimits,
) -> Vec<(SourceFile, FileResult)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let load_guarded = |path: &PathBuf| {
        std::panic::catch_unwind(AssertUnwindSafe(|| load_file(engine, path, profiles, parallel))).unwrap_or_else(
            |_| {
                let file = SourceFile { path: path.clone(), text: String::new() };
                let problem =
                    io_diagnostic(path, "internal error while loading this file; please report it with the file");
                (file, (None, None, vec![problem]))
            },
        )
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(load_guarded).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    })
}

fn load_file(
    engine: &RuleEngine,
    path: &Path,
    profiles: &BTreeMap<String, AgentProfile>,
    parallel: &ParallelLimits,
) -> (SourceFile, FileResult) {
    let file = match SourceFile::read(path) {
        Ok(file) => file,
        Err(problem) => {
            let file = SourceFile { path: path.to_path_buf(), text: String::new() };
            return (file, (None, None, vec![problem]));
        }
    };
    let value = match file.parse_value() {
        Ok(value) => value,
        Err(problems) => return (file, (None, None, problems)),
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
        Err(problems) => return (file, (None, None, problems)),
    };
    let mut findings = check_automation(&automation, path);
    crate::config::parallel::check(&automation.task, parallel, &FieldPath::root().key("task"), &mut findings);
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
