//! The watermark: a small file beside sled's that remembers how far the store had got
//! (its open generation and newest run). sled recovers a damaged log by dropping
//! everything after the damage; comparing with the watermark turns that silent loss
//! into an error at start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

const FILE: &str = "watermark.json";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The generation of the latest open.
    pub generation: u64,
    /// The newest run id the store held when the file was written.
    pub last_run: u64,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

impl Watermark {
    /// The watermark in `dir`, if one was written.
    pub fn read(dir: &Path) -> Result<Option<Watermark>, StoreError> {
        let path = path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt {
                what: path.display().to_string(),
                cause: format!("{e}; delete the file if the store itself is fine"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Open { dir: dir.to_path_buf(), cause: format!("{}: {e}", path.display()) }),
        }
    }

    /// An error when what the store holds now is behind this watermark.
    pub fn check(&self, dir: &Path, found: Watermark) -> Result<(), StoreError> {
        if found.generation >= self.generation && found.last_run >= self.last_run {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            what: format!("the store in {}", dir.display()),
            cause: format!(
                "it was last opened as generation {} holding runs up to r{}, but its log recovers only generation {} \
                 and runs up to r{}: part of the log is damaged (a failing disk, or files copied while in use). \
                 Restore a backup, or move the directory away to start afresh",
                self.generation, self.last_run, found.generation, found.last_run
            ),
        })
    }

    /// Writes the file through a temporary one, so it is never half-written.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let path = path(dir);
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
    }
}
