//! The store backends the store tests are written against, once: sled in a temporary
//! directory, and PostgreSQL in a database of its own in one throwaway cluster per test
//! binary. `on_both!` turns each listed `fn name(backend: &Backend)` into two tests,
//! `on_sled::name` and `on_postgres::name`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nightshift::store::postgres::cluster::Cluster;
use nightshift::store::{PgStore, SledStore, Store};

/// Where a test's store lives; `open` opens it, again after a restart as often as needed.
pub enum Backend {
    Sled(tempfile::TempDir),
    /// The URL of a database no other test uses.
    Postgres(String),
}

impl Backend {
    /// A store in a fresh temporary directory.
    pub fn sled() -> Backend {
        Backend::Sled(tempfile::tempdir().expect("a temporary directory"))
    }

    /// A fresh database for `test` in this binary's cluster; `None` (a loud skip) where
    /// PostgreSQL is not installed and `.ci/run` did not ask for it.
    pub fn postgres(test: &str) -> Option<Backend> {
        let Some(cluster) = cluster() else {
            crate::requires::skip(
                crate::requires::REQUIRE_PROGRAMS,
                "no PostgreSQL `initdb` found: install Debian's `postgresql` (as .ci/run does) or set NIGHTSHIFT_PG_BIN",
            );
            return None;
        };
        static DATABASES: AtomicUsize = AtomicUsize::new(0);
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        // PostgreSQL's names are at most 63 bytes: the number keeps a long name unique.
        let name: String = format!("t{n}_{test}").chars().take(63).collect();
        Some(Backend::Postgres(cluster.database(&name).unwrap_or_else(|error| panic!("database {name}: {error}"))))
    }

    /// Opens the store: a second call after the first store is dropped is a restart.
    /// (PostgreSQL also lets several stores be open at once, as instances do.)
    pub fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sled(dir) => Arc::new(SledStore::open(dir.path()).expect("the sled store opens")),
            Backend::Postgres(url) => Arc::new(PgStore::open(url).expect("the PostgreSQL store opens")),
        }
    }

    /// The store's directory or database URL, for messages.
    pub fn location(&self) -> String {
        match self {
            Backend::Sled(dir) => dir.path().display().to_string(),
            Backend::Postgres(url) => url.clone(),
        }
    }
}

/// The cluster every PostgreSQL test of this binary shares, started by the first;
/// `None` where PostgreSQL is not installed. A static is never dropped, so the server
/// is stopped and its directory removed when the process exits.
fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            if !postgres_installed() {
                return None;
            }
            let cluster = Cluster::start().unwrap_or_else(|error| panic!("a throwaway PostgreSQL cluster: {error}"));
            // SAFETY: `stop_cluster` is a plain `extern "C" fn` that does not unwind.
            let registered = unsafe { libc::atexit(stop_cluster) };
            assert_eq!(registered, 0, "atexit refused the cluster's clean-up");
            Some(cluster)
        })
        .as_ref()
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// Run at exit: stops the shared cluster's server and removes its directory.
extern "C" fn stop_cluster() {
    let Some(cluster) = CLUSTER.get().and_then(Option::as_ref) else { return };
    let _ = cluster.stop_server();
    let _ = std::fs::remove_dir_all(cluster.socket_dir());
}

/// Where `Cluster::start` looks: `$NIGHTSHIFT_PG_BIN`, Debian's
/// `/usr/lib/postgresql/*/bin`, or `initdb` on the PATH.
fn postgres_installed() -> bool {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|version| version.path().join("bin/initdb").is_file());
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir: PathBuf| dir.join("initdb").is_file());
    std::env::var_os("NIGHTSHIFT_PG_BIN").is_some() || debian || on_path
}

/// For each `fn name(backend: &Backend)` listed, one test per backend: `on_sled::name`
/// and `on_postgres::name`. A test function left out of the list is dead code, which
/// clippy refuses.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::backends::Backend::sled());
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(backend) = $crate::backends::Backend::postgres(stringify!($name)) {
                        super::$name(&backend);
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both;

#[test]
fn each_postgres_test_gets_a_database_of_its_own_that_it_can_reopen() {
    let Some(mine) = Backend::postgres("harness") else { return };
    let Some(other) = Backend::postgres("harness") else { return };
    assert_ne!(mine.location(), other.location(), "one name, two tests, two databases");
    // The duty's row: held by the instance that took it, for 15 s of the database's clock
    // (the time passed is not used), far longer than these few statements take.
    let now = crate::store::at(0);
    let first = mine.open();
    assert!(first.maintains("probe", now).unwrap(), "the first instance takes the duty");
    let reopened = mine.open();
    assert!(!reopened.maintains("probe", now).unwrap(), "a reopen sees the same database's holder");
    drop(first);
    drop(reopened);
    let elsewhere = other.open();
    assert!(elsewhere.maintains("probe", now).unwrap(), "another test's database has no holder");
}
