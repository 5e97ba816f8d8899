//! The discovery file, `serve.json` in the data directory: while `serve` runs it says
//! where its API listens and with which token, so `nightshift runs`, `show`, `memory`
//! and `trigger` reach the store through the server (sled lets one process open it).
//! It is readable by its owner only, since it holds the API token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "serve.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeFile {
    /// The API's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub pid: u32,
    /// The bearer token of `/api`.
    pub token: String,
    /// The server keeps its store elsewhere (`--store`, a shared database): commands
    /// reach it through the API while it runs, never the data directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_store: bool,
}

impl ServeFile {
    pub fn new(address: SocketAddr, token: &str) -> ServeFile {
        // A server listening on every address is reached on the loopback one.
        let host = match address.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        ServeFile {
            url: format!("http://{host}:{}", address.port()),
            pid: std::process::id(),
            token: token.into(),
            shared_store: false,
        }
    }

    /// Whether the server that wrote the file is still running.
    pub fn is_alive(&self) -> bool {
        i32::try_from(self.pid).is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
    }

    pub fn path(data: &Path) -> PathBuf {
        data.join(FILE_NAME)
    }

    /// Writes the file (mode 0600) through a temporary file, so readers never see half.
    pub fn write(&self, data: &Path) -> std::io::Result<()> {
        let path = Self::path(data);
        let temporary = data.join(format!(".{FILE_NAME}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&temporary)?, &text)?;
        std::fs::rename(temporary, path)
    }

    /// The file of a server on `data`, if one is there.
    pub fn read(data: &Path) -> Option<ServeFile> {
        let text = std::fs::read(Self::path(data)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn remove(data: &Path) {
        let _ = std::fs::remove_file(Self::path(data));
    }
}

/// A random API token: 32 bytes from the operating system, hex.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(format!("no randomness for the API token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
