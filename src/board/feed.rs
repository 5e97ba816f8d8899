//! The board's live feed, gathered once for every open board: one task reads the store's
//! run changes, gathers them for `GATHER` and sends each gathered event to all the
//! boards' streams, so a hundred boards cost the ingest path what one does.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{GATHER, gather};
use crate::store::RunChange;

/// What every open board is told after a gathering.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// The newest change of each run that changed, oldest run first.
    Runs(Vec<RunChange>),
    /// Too many runs changed (or the feed fell behind): read the view again.
    Reload,
}

/// How many gathered events a slow board may fall behind before it is told to reload.
const BACKLOG: usize = 16;

/// The feed of one server, started by the first board that opens it. It keeps only a
/// weak handle: the gathering task holds the one sender, so when it ends (the server
/// stops, the store closes) every board's stream ends too, and the next board to open
/// starts a new one.
#[derive(Default)]
pub struct Feed(Mutex<Option<broadcast::WeakSender<Arc<FeedEvent>>>>);

impl Feed {
    /// A receiver of the gathered events. Starts the gathering task on the current tokio
    /// runtime when none runs, reading `changes` until `stopped` resolves or the store
    /// closes its side.
    pub fn subscribe<S>(
        &self,
        changes: impl FnOnce() -> broadcast::Receiver<RunChange>,
        stopped: impl FnOnce() -> S,
    ) -> broadcast::Receiver<Arc<FeedEvent>>
    where
        S: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = running.as_ref().and_then(broadcast::WeakSender::upgrade) {
            return sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(BACKLOG);
        *running = Some(sender.downgrade());
        tokio::spawn(run(changes(), sender, stopped()));
        receiver
    }
}

/// Gathers until the store closes its side or `stopped` resolves; then drops its sender,
/// which ends every board's stream.
async fn run(
    mut changes: broadcast::Receiver<RunChange>,
    boards: broadcast::Sender<Arc<FeedEvent>>,
    stopped: impl std::future::Future<Output = ()>,
) {
    use broadcast::error::RecvError;
    tokio::pin!(stopped);
    loop {
        let first = tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => Some(change),
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            },
            () = &mut stopped => return,
        };
        tokio::time::sleep(GATHER).await;
        let event = match first.and_then(|first| gather(first, &mut changes)) {
            Some(batch) => FeedEvent::Runs(batch),
            None => {
                // Skip what is left: every board reads its whole view again.
                changes = changes.resubscribe();
                FeedEvent::Reload
            }
        };
        // No board listening is no error: the next one to open gets the next event.
        let _ = boards.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{RunId, RunState};

    fn change(id: u64) -> RunChange {
        RunChange {
            id: RunId(id),
            state: RunState::Queued,
            automation: "a".into(),
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn every_board_gets_the_same_gathered_event_and_the_feed_ends_with_the_store() {
        let (store, _) = broadcast::channel(64);
        let feed = Feed::default();
        let first_changes = store.subscribe();
        let mut one = feed.subscribe(move || first_changes, std::future::pending);
        let mut two = feed.subscribe(|| unreachable!("the feed is started once"), std::future::pending);
        for id in [1, 2, 1] {
            store.send(change(id)).unwrap();
        }
        let expected = FeedEvent::Runs(vec![change(1), change(2)]);
        assert_eq!(*one.recv().await.unwrap(), expected);
        assert_eq!(*two.recv().await.unwrap(), expected);
        drop(store);
        assert!(one.recv().await.is_err(), "the stream ends when the store's side closes");
    }

    #[tokio::test]
    async fn more_runs_than_one_event_names_is_a_reload() {
        let (store, _) = broadcast::channel(4 * super::super::MOST_PER_EVENT);
        let feed = Feed::default();
        let changes = store.subscribe();
        let mut board = feed.subscribe(move || changes, std::future::pending);
        for id in 0..=super::super::MOST_PER_EVENT as u64 {
            store.send(change(id)).unwrap();
        }
        assert_eq!(*board.recv().await.unwrap(), FeedEvent::Reload);
    }
}
