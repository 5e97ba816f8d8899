//! Hot reload: watches the automations and the project file, and on a change loads them
//! again, once a burst of changes has settled. Changes to other files (logs, editors'
//! swap files) are ignored. A set with any problem is refused as a whole: the last good
//! one keeps running, and each problem is logged as `file:line:col`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{ServeError, Server, load_generation};

/// A reload waits until the files have been quiet this long (editors write in steps).
const SETTLE: Duration = Duration::from_millis(200);

/// Changes that never stop (a generator writing files in a loop) still reload this often.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// How many ignored files are named in the log, each once.
const MAX_IGNORED_NAMED: usize = 1000;

fn unwatchable(path: &Path) -> impl FnOnce(notify::Error) -> ServeError + '_ {
    move |cause| ServeError::Watch { path: path.to_path_buf(), cause }
}

/// Which changed paths matter: automation files (`.yaml`/`.yml`, not hidden, under the
/// automations directory) and the project file. Everything else beside them (a log, an
/// editor's swap file, the server's own data) is ignored.
#[derive(Debug, Clone)]
pub struct Relevant {
    automations: PathBuf,
    project: Option<PathBuf>,
}

impl Relevant {
    /// `automations` and `project` as the watcher names them (absolute).
    pub fn new(automations: &Path, project: Option<&Path>) -> Relevant {
        let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Relevant { automations: absolute(automations), project: project.map(absolute) }
    }

    /// Whether `event` may change what loads.
    pub fn matters(&self, event: &notify::Event) -> bool {
        use notify::EventKind;
        use notify::event::ModifyKind;
        if matches!(event.kind, EventKind::Access(_)) {
            return false;
        }
        // A directory moved or removed may take automation files with it.
        let moved_or_removed = matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)));
        event.paths.iter().any(|path| {
            if self.project.as_deref() == Some(path.as_path()) {
                return true;
            }
            let Ok(inside) = path.strip_prefix(&self.automations) else { return false };
            let hidden = inside.components().any(|part| part.as_os_str().to_string_lossy().starts_with('.'));
            let extension = path.extension().and_then(|e| e.to_str());
            !hidden && (matches!(extension, Some("yaml" | "yml")) || (moved_or_removed && extension.is_none()))
        })
    }
}

/// Starts watching; the returned watcher stops when dropped.
pub fn watch(
    server: Arc<Server>,
    mut stopped: watch::Receiver<bool>,
) -> Result<notify::RecommendedWatcher, ServeError> {
    let options = server.options();
    let relevant = Relevant::new(&options.automations, options.project.as_deref());
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    let filter = relevant.clone();
    let mut ignored = HashSet::new();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
        Ok(event) if !filter.matters(&event) => {
            // Once per file (the server's own log is one of them: a line per change would
            // be a change of its own).
            for path in event.paths {
                if ignored.len() < MAX_IGNORED_NAMED && ignored.insert(path.clone()) {
                    tracing::debug!(path = %path.display(), "Not an automation file: its changes are ignored");
                }
            }
        }
        // An error (the kernel's queue overflowed) may hide a change: reload to be sure.
        _ => {
            let _ = changed.send(());
        }
    })
    .map_err(unwatchable(Path::new(".")))?;
    watcher.watch(&relevant.automations, RecursiveMode::Recursive).map_err(unwatchable(&relevant.automations))?;
    if let Some(project) = &relevant.project {
        // The project file may be replaced by an editor: watch its directory.
        let directory = project.parent().unwrap_or(Path::new("/"));
        watcher.watch(directory, RecursiveMode::NonRecursive).map_err(unwatchable(directory))?;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            // Until the changes pause for `SETTLE`, or for at most `MAX_DELAY`.
            let first = Instant::now();
            while first.elapsed() < MAX_DELAY {
                match tokio::time::timeout(SETTLE, changes.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let server = Arc::clone(&server);
            let reloaded = tokio::task::spawn_blocking(move || reload(&server)).await;
            if let Err(error) = reloaded {
                tracing::error!(%error, "reloading the automations failed");
            }
        }
    });
    Ok(watcher)
}

/// Loads the automations again and installs them if they have no problem.
pub fn reload(server: &Server) {
    let options = server.options();
    let project: Option<PathBuf> = options.project.clone();
    match load_generation(&options.automations, project.as_deref(), server.store()) {
        Ok((generation, problems)) => {
            for problem in &problems {
                tracing::warn!("{problem}");
            }
            let automations = generation.pipeline.catalog().automations.len();
            server.install(generation);
            tracing::info!(automations, "automations reloaded");
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                tracing::error!("{diagnostic}");
            }
            tracing::error!(
                problems = diagnostics.len(),
                "the changed automations have problems; the last good version keeps running"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
    use notify::{Event, EventKind};

    use super::*;

    #[track_caller]
    fn check(kind: EventKind, path: &str, expected: bool) {
        let relevant = Relevant::new(Path::new("/p/automations"), Some(Path::new("/p/nightshift.yaml")));
        let event = Event::new(kind).add_path(PathBuf::from(path));
        assert_eq!(relevant.matters(&event), expected, "{kind:?} {path}");
    }

    #[test]
    fn only_automation_files_and_the_project_file_matter() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        let create = EventKind::Create(CreateKind::File);
        check(write, "/p/automations/a.yaml", true);
        check(create, "/p/automations/team/b.yml", true);
        check(write, "/p/nightshift.yaml", true);
        check(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/p/nightshift.yaml", true);
        check(EventKind::Remove(RemoveKind::Folder), "/p/automations/team", true);
        check(EventKind::Access(AccessKind::Any), "/p/automations/a.yaml", false);
        check(write, "/p/serve.log", false);
        check(write, "/p/nightshift.yaml.swp", false);
        check(write, "/p/automations/notes.log", false);
        check(create, "/p/automations/.a.yaml.swp", false);
        check(write, "/p/automations/.hidden/a.yaml", false);
        check(create, "/p/automations/4913", false);
        check(write, "/p/automations/README", false);
        check(write, "/p/other/a.yaml", false);
    }
}
