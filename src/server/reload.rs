//! Hot reload: watches the automations and the project file, and on a change loads them
//! again. A set with any problem is refused as a whole: the last good one keeps
//! running, and each problem is logged as `file:line:col`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{ServeError, Server, load_generation};

/// Changes closer together than this are loaded once (editors write files in steps).
const SETTLE: Duration = Duration::from_millis(150);

fn unwatchable(path: &Path) -> impl FnOnce(notify::Error) -> ServeError + '_ {
    move |cause| ServeError::Watch { path: path.to_path_buf(), cause }
}

/// Starts watching; the returned watcher stops when dropped.
pub fn watch(
    server: Arc<Server>,
    mut stopped: watch::Receiver<bool>,
) -> Result<notify::RecommendedWatcher, ServeError> {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = changed.send(());
        }
    })
    .map_err(unwatchable(Path::new(".")))?;
    let options = server.options();
    watcher.watch(&options.automations, RecursiveMode::Recursive).map_err(unwatchable(&options.automations))?;
    if let Some(project) = &options.project {
        // The project file may be replaced by an editor: watch its directory.
        let directory = project.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        watcher.watch(directory, RecursiveMode::NonRecursive).map_err(unwatchable(directory))?;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                change = changes.recv() => if change.is_none() { return },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
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
