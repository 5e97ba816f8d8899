//! The connections to PostgreSQL: a private runtime drives them, callers (async or not)
//! block on their queries, and a transaction is retried when the database asks for it
//! (a serialization failure or a deadlock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_executor::block_on;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::store::StoreError;

/// How many times a transaction the database aborted for a conflict is run again.
const RETRIES: usize = 8;
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections and the runtime that drives every connection's socket. A store
/// method takes a connection, runs its statements from the calling thread
/// (`futures_executor::block_on`: the client's futures need no runtime of their own),
/// and puts it back.
pub struct Db {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    /// Where the database is, for messages (never with a password).
    pub shown: String,
}

impl Db {
    pub fn new(url: &str) -> Result<Db, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|cause| StoreError::Open {
            dir: url_without_password(url).into(),
            cause: format!("not a PostgreSQL URL: {cause}"),
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("nightshift");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nightshift-postgres")
            .enable_all()
            .build()
            .map_err(|cause| StoreError::Io(format!("cannot start the database runtime: {cause}")))?;
        Ok(Db { runtime: Some(runtime), config, idle: Mutex::default(), shown: url_without_password(url) })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until the Db is dropped")
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let connecting = self.runtime().spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "A database connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match block_on(connecting) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(unreachable(&self.shown, &error)),
            Err(join) => Err(StoreError::Io(format!("connecting to the database failed: {join}"))),
        }
    }

    /// Runs `work` on a connection of the pool (a new one when none is idle).
    fn with<T>(&self, work: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let mut conn = match idle.filter(|conn| !conn.client.is_closed()) {
            Some(conn) => conn,
            None => Conn { client: self.connect()?, prepared: HashMap::new() },
        };
        let result = work(&mut conn);
        if !conn.client.is_closed() {
            self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(conn);
        }
        result
    }

    /// Runs `work`'s statements each on its own, with no transaction around them: for
    /// a read of one statement, which is atomic alone, it saves the BEGIN and COMMIT
    /// round trips. `work` must not write.
    pub fn read<T>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let shown = self.shown.clone();
        self.with(|conn| work(&mut Tx::on(conn, &shown)))
    }

    /// Runs `work` in a transaction and commits it; runs it again (at most `RETRIES`
    /// times) when the database aborted it for a conflict with another transaction.
    pub fn transaction<T>(&self, mut work: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.transaction_with(false, &mut work)
    }

    /// `transaction` whose commit is not waited for on disk (`synchronous_commit = off`):
    /// for changes the store's contract lets a crash lose (claims, heartbeats, logs).
    pub fn transaction_unsynced<T>(
        &self,
        mut work: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction_with(true, &mut work)
    }

    fn transaction_with<T>(
        &self,
        unsynced: bool,
        work: &mut dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let shown = self.shown.clone();
        self.with(|conn| {
            let mut tries = 0;
            loop {
                tries += 1;
                let outcome = run_once(conn, &shown, unsynced, work).and_then(|(value, notes)| {
                    let client = &conn.client;
                    // The notifications go with the commit, in one round trip; should the
                    // commit fail, they are sent anyway, which costs listeners only a
                    // look at what did not change.
                    let (committed, ()) =
                        block_on(futures_util::future::join(client.batch_execute("COMMIT"), notes.send(client)));
                    committed.map_err(|e| {
                        let retry = is_conflict(&e);
                        (database(&shown, &e), retry)
                    })?;
                    Ok(value)
                });
                match outcome {
                    Ok(value) => return Ok(value),
                    Err((_, true)) if tries < RETRIES => continue,
                    Err((error, _)) => return Err(error),
                }
            }
        })
    }
}

/// BEGIN, `work`, and on failure ROLLBACK; the error says whether a retry may help.
fn run_once<T>(
    conn: &mut Conn,
    shown: &str,
    unsynced: bool,
    work: &mut dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
) -> Result<(T, Notes), (StoreError, bool)> {
    // One round trip either way.
    let begin = if unsynced { "BEGIN; SET LOCAL synchronous_commit = off" } else { "BEGIN" };
    if let Err(error) = block_on(conn.client.batch_execute(begin)) {
        let _ = block_on(conn.client.batch_execute("ROLLBACK"));
        return Err((database(shown, &error), false));
    }
    let mut tx = Tx::on(conn, shown);
    let client = tx.client;
    match work(&mut tx).and_then(|value| tx.prepare_notes().map(|()| value)) {
        Ok(value) => Ok((value, tx.notes)),
        Err(error) => {
            let conflict = tx.conflict;
            let _ = block_on(client.batch_execute("ROLLBACK"));
            Err((error, conflict))
        }
    }
}

/// What a transaction announces, sent once it has committed, as a statement of its
/// own: PostgreSQL makes the commits of transactions that NOTIFY take turns (a lock on
/// the database held through the commit's sync), so notifying inside them held every
/// ingest to one sync at a time. A notification lost to a crash between the two is
/// covered by the listeners' poll.
#[derive(Default)]
struct Notes {
    channels: Vec<String>,
    payloads: Vec<String>,
    /// `NOTIFY_SQL`, prepared before the commit when there is something to send.
    statement: Option<Statement>,
}

const NOTIFY_SQL: &str = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)";

impl Notes {
    async fn send(self, client: &Client) {
        let Some(statement) = &self.statement else { return };
        let sent = client.execute(statement, &[&self.channels, &self.payloads]).await;
        if let Err(error) = sent {
            tracing::debug!(%error, "Could not announce a committed change; listeners find it by polling");
        }
    }
}

impl Drop for Db {
    /// The store may be dropped on an async task (the server's); a runtime may not be
    /// shut down by waiting there, so it is left to stop in the background.
    fn drop(&mut self) {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A pooled connection and the statements prepared on it: a statement prepared once
/// then takes one round trip (bind and execute) instead of two (parse first).
struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// The most statements kept prepared on one connection; beyond, the cache starts over
/// (the store's statements are far fewer, but a caller could build its text).
const MOST_PREPARED: usize = 256;

/// Takes the advisory lock named `$1` (`Tx::lock`); in a `Tx::pipeline`, the statements
/// after it run once it is held.
pub const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))";

/// A transaction: statements whose errors are `StoreError`s naming the database.
pub struct Tx<'a> {
    client: &'a Client,
    prepared: &'a mut HashMap<String, Statement>,
    shown: &'a str,
    /// The database aborted a statement for a conflict: the transaction is run again.
    conflict: bool,
    notes: Notes,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<'a> Tx<'a> {
    fn on(conn: &'a mut Conn, shown: &'a str) -> Tx<'a> {
        let Conn { client, prepared } = conn;
        Tx { client, prepared, shown, conflict: false, notes: Notes::default() }
    }

    fn check<T>(&mut self, result: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
        result.map_err(|error| {
            self.conflict |= is_conflict(&error);
            database(self.shown, &error)
        })
    }

    /// `sql` prepared on this connection, once.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let result = block_on(self.client.prepare(sql));
        let statement = self.check(result)?;
        if self.prepared.len() >= MOST_PREPARED {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let result = block_on(self.client.query(&statement, params));
        self.check(result)
    }

    pub fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let result = block_on(self.client.query_opt(&statement, params));
        self.check(result)
    }

    pub fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        let statement = self.statement(sql)?;
        let result = block_on(self.client.query_one(&statement, params));
        self.check(result)
    }

    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let result = block_on(self.client.execute(&statement, params));
        self.check(result)
    }

    /// Runs `statements` in their order, sent together: one round trip for all (once
    /// each is prepared). Each gives its rows.
    pub fn pipeline(&mut self, statements: &[(&str, Params<'_>)]) -> Result<Vec<Vec<Row>>, StoreError> {
        let prepared: Vec<Statement> =
            statements.iter().map(|(sql, _)| self.statement(sql)).collect::<Result<_, _>>()?;
        let client = self.client;
        let queries = prepared.iter().zip(statements).map(|(statement, (_, params))| client.query(statement, params));
        let result = block_on(futures_util::future::try_join_all(queries));
        self.check(result)
    }

    /// Runs several statements (a migration); no parameters.
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let result = block_on(self.client.batch_execute(sql));
        self.check(result)
    }

    /// Waits for, and holds until the transaction ends, the lock named `name` (an
    /// advisory lock on its hash): how instances take turns deciding about one group,
    /// one dedupe key, or the queue.
    pub fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        self.execute(LOCK_SQL, &[&name]).map(drop)
    }

    /// Prepares the statement that sends the notifications, when there are any.
    fn prepare_notes(&mut self) -> Result<(), StoreError> {
        if !self.notes.channels.is_empty() {
            self.notes.statement = Some(self.statement(NOTIFY_SQL)?);
        }
        Ok(())
    }

    /// Tells every instance's listener, once this transaction has committed.
    pub fn notify(&mut self, channel: &str, payload: &str) -> Result<(), StoreError> {
        self.notes.channels.push(channel.to_string());
        self.notes.payloads.push(payload.to_string());
        Ok(())
    }
}

fn is_conflict(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .code()
        .is_some_and(|code| *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED)
}

/// A failed statement or commit. A lost connection reads as the database being
/// unreachable, which hooks answer with 503.
pub fn database(shown: &str, error: &tokio_postgres::Error) -> StoreError {
    if error.is_closed() || error.code().is_none() {
        return unreachable(shown, error);
    }
    let why = error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_string());
    StoreError::Io(format!("the database at {shown} refused a statement: {why}"))
}

pub fn unreachable(shown: &str, error: &tokio_postgres::Error) -> StoreError {
    let cause =
        std::error::Error::source(error).map_or_else(|| error.to_string(), |source| format!("{error}: {source}"));
    StoreError::Unavailable(format!("the database at {shown} is unreachable: {cause}"))
}

/// `url` with any password replaced by `***`.
pub fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_string() };
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{hidden}@{host}{slash}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_never_has_its_password() {
        assert_eq!(url_without_password("postgres://u:secret@db:5432/n"), "postgres://u:***@db:5432/n");
        assert_eq!(url_without_password("postgres://u@db/n?host=/tmp"), "postgres://u@db/n?host=/tmp");
        assert_eq!(url_without_password("postgres://db/n"), "postgres://db/n");
        assert_eq!(url_without_password("postgres://u:p@db"), "postgres://u:***@db");
    }
}
