//! A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary
//! directory, listening on a Unix socket only (no TCP port), stopped and removed on drop.
//! initdb refuses root, so as root the cluster runs as the `postgres` user (Debian's
//! package makes it) or `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; `url(db)` names one of its databases.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Who runs the server: `None` for this process's own user.
    run_as: Option<String>,
    durable: bool,
}

impl Cluster {
    /// A cluster that does not sync (fast, for tests): a crash of the machine would
    /// lose its data, a crash of a nightshift process would not.
    pub fn start() -> Result<Cluster, String> {
        Cluster::start_with(false)
    }

    /// `durable`: fsync and synchronous commit on, as a production database (for
    /// benchmarks that claim durable figures).
    pub fn start_with(durable: bool) -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("nightshift-pg-")
            .tempdir()
            .map_err(|e| format!("a temporary directory: {e}"))?;
        let run_as = if nix::unistd::geteuid().is_root() { Some(unprivileged_user()?) } else { None };
        if let Some(user) = &run_as {
            let status = Command::new("chown").arg("-R").arg(user).arg(dir.path()).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(format!("cannot give {} to {user}", dir.path().display()));
            }
        }
        let cluster = Cluster { dir, bin, run_as, durable };
        cluster.tool(
            "initdb",
            &["-D", &cluster.data(), "-A", "trust", "-U", "nightshift", "--no-sync", "-E", "UTF8", "--locale=C"],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The directory of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again after `stop`.
    pub fn start_server(&self) -> Result<(), String> {
        let sync = if self.durable { "on" } else { "off" };
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync={sync} -c synchronous_commit={sync} -c full_page_writes={sync} -c max_connections=200",
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.tool("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "-o", &options, "start"])
    }

    /// Stops the server at once (no checkpoint), as a crash or an outage would.
    pub fn stop_server(&self) -> Result<(), String> {
        self.tool("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])
    }

    /// The URL of database `db`, created if it does not exist.
    pub fn database(&self, db: &str) -> Result<String, String> {
        if self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"))? != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{db}\""))?;
        }
        Ok(self.url(db))
    }

    /// Runs `sql` in database `db` with psql; its output, unaligned, rows on lines.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", &self.dir.path().display().to_string(), "-U", "nightshift", "-d", db, "-qAtc", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The URL of database `db` (not created).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://nightshift@localhost/{db}?host={}", self.dir.path().display())
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(name);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        let out = command.args(args).current_dir(self.dir.path()).output().map_err(|e| format!("{name}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            Err(format!(
                "{name} {args:?} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop_server();
    }
}

/// `$NIGHTSHIFT_PG_BIN`, else the newest of Debian's `/usr/lib/postgresql/*/bin`, else
/// the directory of `initdb` on the PATH.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("NIGHTSHIFT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file())
        .ok_or_else(|| "no PostgreSQL found: install Debian's `postgresql`, or set NIGHTSHIFT_PG_BIN".to_string())
}

fn unprivileged_user() -> Result<String, String> {
    for user in ["postgres", "nobody"] {
        if nix::unistd::User::from_name(user).ok().flatten().is_some() {
            return Ok(user.to_string());
        }
    }
    Err("running as root, and neither `postgres` nor `nobody` exists to run PostgreSQL".into())
}
