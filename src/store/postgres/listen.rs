//! The listener: one connection per instance that LISTENs for the run changes and
//! outbox writes of every instance and turns them into this instance's run-change
//! broadcast and wake-ups. Notifications sent while it is disconnected are lost, so
//! after every (re)connect it wakes everyone to poll: the poll is the source of truth.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use super::rows::{OUTBOX_CHANNEL, RUNS_CHANNEL};
use crate::runs::RunState;
use crate::store::RunChange;

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

/// Where notifications go.
#[derive(Clone)]
struct Sinks {
    run_changes: tokio::sync::broadcast::Sender<RunChange>,
    outbox_written: Arc<tokio::sync::Notify>,
    wakeups: Arc<tokio::sync::Notify>,
    /// The store's trouble: set while the listener cannot reach the database, so
    /// `/healthz` says why even when no request has tried.
    trouble: Arc<std::sync::Mutex<Option<String>>>,
}

impl Sinks {
    fn trouble(&self, why: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = why;
    }
}

impl Listener {
    pub fn start(store: &PgStore) -> Listener {
        let config = store.db.config().clone();
        let sinks = Sinks {
            run_changes: store.run_changes.clone(),
            outbox_written: Arc::clone(&store.outbox_written),
            wakeups: Arc::clone(&store.wakeups),
            trouble: Arc::clone(&store.trouble),
        };
        let shown = store.db.shown.clone();
        let task = store.db.runtime().spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match listen(&config, &sinks).await {
                    Ok(()) => {
                        tracing::warn!(database = %shown, "The database ended the listener's connection; reconnecting")
                    }
                    Err(error) => {
                        tracing::warn!(database = %shown, %error, "The listener lost the database; reconnecting");
                        sinks.trouble(Some(super::db::unreachable(&shown, &error).to_string()));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        Listener { task }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// One connection's life: LISTEN, wake everyone (what was missed is found by polling),
/// then forward notifications until the connection ends.
async fn listen(config: &tokio_postgres::Config, sinks: &Sinks) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    let listening = client.batch_execute(&format!("LISTEN {RUNS_CHANNEL}; LISTEN {OUTBOX_CHANNEL}")).await;
    if let Err(error) = listening {
        driver.abort();
        return Err(error);
    }
    sinks.trouble(None);
    sinks.wakeups.notify_one();
    sinks.outbox_written.notify_one();
    let mut ended = Ok(());
    while let Some(message) = messages.recv().await {
        match message {
            Ok(AsyncMessage::Notification(note)) if note.channel() == RUNS_CHANNEL => {
                let Ok(change) = serde_json::from_str::<RunChange>(note.payload()) else { continue };
                if change.state == RunState::Queued {
                    sinks.wakeups.notify_one();
                }
                let _ = sinks.run_changes.send(change);
            }
            Ok(AsyncMessage::Notification(note)) if note.channel() == OUTBOX_CHANNEL => {
                sinks.outbox_written.notify_one()
            }
            Ok(_) => {}
            Err(error) => {
                ended = Err(error);
                break;
            }
        }
    }
    driver.abort();
    drop(client);
    ended
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::cluster::Cluster;
    use crate::store::{PgStore, Store};

    /// Waits (bounded) for `notify` to be rung; whether it was.
    fn rung(notify: &tokio::sync::Notify, within: Duration) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async { tokio::time::timeout(within, notify.notified()).await.is_ok() })
    }

    fn queue_one(store: &PgStore, id: &str) {
        let mut event = crate::event::Event::from_delivery(
            crate::triggers::TriggerKind::Manual,
            serde_json::json!({}),
            Default::default(),
            chrono::Utc::now(),
        );
        event.id = id.to_string();
        let task = super::super::reads::tests::task(Vec::new());
        let new = crate::store::NewRun {
            automation: "a".into(),
            definition_hash: "h".into(),
            rendered: Ok((task, crate::task::Flow::default())),
        };
        store.ingest(&event, vec![new], chrono::Utc::now()).expect("ingest");
    }

    #[test]
    fn a_listener_the_database_cut_off_reconnects_wakes_everyone_and_hears_again() {
        let cluster = Cluster::start().expect("a cluster");
        let url = cluster.database("listen").expect("a database");
        let (one, other) = (PgStore::open(&url).expect("open"), PgStore::open(&url).expect("open"));
        let wakeups = other.wakeups().expect("a shared store has wake-ups");
        // The first connect rings once; then a run queued by `one` rings `other`.
        assert!(rung(&wakeups, Duration::from_secs(10)), "the first connect rings");
        queue_one(&one, "manual:first");
        assert!(rung(&wakeups, Duration::from_secs(10)), "a run queued elsewhere wakes this instance");

        let cut = cluster
            .psql("listen", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
            .expect("terminate the listeners");
        assert_eq!(cut, "2", "both instances' listeners were cut off");
        let started = Instant::now();
        assert!(rung(&wakeups, Duration::from_secs(10)), "reconnecting wakes everyone to poll");
        assert!(started.elapsed() < Duration::from_secs(10));
        queue_one(&one, "manual:second");
        assert!(rung(&wakeups, Duration::from_secs(10)), "the new connection hears later runs");
        let claim = other.claim("w", Duration::from_secs(60), chrono::Utc::now()).expect("claim");
        assert!(claim.is_some(), "the woken instance claims");
    }
}
