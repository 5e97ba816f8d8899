//! The web board's pieces that are not HTTP (docs/board.md): the pages, script and style
//! (`assets/`, embedded), the board's login sessions kept in memory, and the checks a
//! button's request must pass (same origin, CSRF token). `http/board.rs` serves them.

pub mod feed;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The board's one page: the runs list and a run, drawn by `BOARD_JS`.
pub const BOARD_HTML: &str = include_str!("assets/board.html");
pub const BOARD_JS: &str = include_str!("assets/board.js");
pub const BOARD_CSS: &str = include_str!("assets/board.css");
/// The login form; `{{message}}` is replaced by a fixed message (never by request text).
pub const LOGIN_HTML: &str = include_str!("assets/login.html");

/// The cookie that carries a board session's id.
pub const SESSION_COOKIE: &str = "nightshift_session";
/// The request header a board button sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-nightshift-csrf";
/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a login beyond drops the oldest.
const MAX_SESSIONS: usize = 10_000;

/// What a token or session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// See runs (GET), act on nothing.
    Read,
    /// Everything the API does.
    Full,
}

/// Which token `given` is: the API token (full) or the read-only one, compared in
/// constant time.
pub fn token_access(given: &str, api_token: &str, read_token: Option<&str>) -> Option<Access> {
    // Both comparisons run, so the time does not say which token was close.
    let full = crate::auth::same_secret(given, api_token);
    let read = read_token.is_some_and(|token| crate::auth::same_secret(given, token));
    if full {
        Some(Access::Full)
    } else if read {
        Some(Access::Read)
    } else {
        None
    }
}

/// A logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub access: Access,
    /// Sent back by the board's buttons in `CSRF_HEADER`.
    pub csrf: String,
    opened: Instant,
}

/// The board's sessions, in memory: they end with the process (people log in again).
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session: its id (the cookie's value, random, never the token) and itself.
    pub fn open(&self, access: Access, now: Instant) -> std::io::Result<(String, Session)> {
        let id = crate::server::discovery::random_token()?;
        let session = Session { access, csrf: crate::server::discovery::random_token()?, opened: now };
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, session| now.duration_since(session.opened) < SESSION_LIFETIME);
        }
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, session)| session.opened).map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with this id.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.get(id).filter(|session| now.duration_since(session.opened) < SESSION_LIFETIME).cloned()
    }

    pub fn close(&self, id: &str) {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(key, _)| *key == name).map(|(_, v)| v)
}

/// Whether a browser's request comes from the board's own pages: `Sec-Fetch-Site`, when
/// sent, must be `same-origin`, and `Origin` must name the host the request was sent to,
/// or be the server's public URL (`--public-url`, for a proxy that rewrites `Host`).
/// A request without `Origin` is refused too (browsers send it on every POST).
pub fn same_origin(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    host: Option<&str>,
    public_url: Option<&str>,
) -> Result<(), String> {
    if let Some(site) = fetch_site
        && site != "same-origin"
    {
        return Err(format!("Sec-Fetch-Site is `{site}`: the board's buttons work from its own pages only"));
    }
    let origin = origin.ok_or("the request has no Origin header")?;
    if public_url.is_some_and(|url| url.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let host = host.ok_or("the request has no Host header")?;
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")).unwrap_or("");
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(format!("Origin `{origin}` is not this server (`{host}`): cross-site requests are refused"))
    }
}

/// How long a live feed gathers run changes before it tells its client of them: a board
/// gets at most a few events a second however fast runs change.
pub const GATHER: Duration = Duration::from_millis(250);

/// The most runs one `runs` event names; past that the client is told to read its view
/// again (`reload`), which is cheaper for both sides than a long list.
pub const MOST_PER_EVENT: usize = 100;

/// What a live feed sends after gathering: the newest change of each run (oldest run
/// first), or `None` when the client should read its view again (too many runs changed,
/// or it fell behind the store's buffer).
pub fn gather(
    first: crate::store::RunChange,
    changes: &mut tokio::sync::broadcast::Receiver<crate::store::RunChange>,
) -> Option<Vec<crate::store::RunChange>> {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut newest = std::collections::BTreeMap::new();
    newest.insert(first.id, first);
    loop {
        match changes.try_recv() {
            Ok(change) => {
                newest.insert(change.id, change);
                if newest.len() > MOST_PER_EVENT {
                    return None;
                }
            }
            Err(TryRecvError::Lagged(_)) => return None,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return Some(newest.into_values().collect()),
        }
    }
}

#[cfg(test)]
mod tests {

    fn change(id: u64, state: crate::runs::RunState) -> crate::store::RunChange {
        crate::store::RunChange {
            id: crate::runs::RunId(id),
            state,
            automation: "a".into(),
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_gathered_event_names_each_run_once_with_its_newest_state() {
        use crate::runs::RunState::{Cancelled, Queued, Running};
        let (sender, mut changes) = tokio::sync::broadcast::channel(16);
        for sent in [change(2, Queued), change(1, Running), change(2, Cancelled)] {
            sender.send(sent).unwrap();
        }
        let first = changes.try_recv().unwrap();
        let batch = gather(first, &mut changes).expect("a batch");
        let states: Vec<_> = batch.iter().map(|c| (c.id.0, c.state)).collect();
        assert_eq!(states, [(1, Running), (2, Cancelled)]);
        assert!(changes.try_recv().is_err(), "everything was taken");
    }

    #[test]
    fn too_many_runs_or_a_lag_asks_for_a_reload() {
        use crate::runs::RunState::Queued;
        let (sender, mut changes) = tokio::sync::broadcast::channel(4 * MOST_PER_EVENT);
        for id in 0..=MOST_PER_EVENT as u64 {
            sender.send(change(id, Queued)).unwrap();
        }
        let first = changes.try_recv().unwrap();
        assert_eq!(gather(first.clone(), &mut changes), None, "{} runs", MOST_PER_EVENT + 1);
        let (sender, mut changes) = tokio::sync::broadcast::channel(4 * MOST_PER_EVENT);
        for id in 0..MOST_PER_EVENT as u64 {
            sender.send(change(id, Queued)).unwrap();
        }
        let first = changes.try_recv().unwrap();
        assert_eq!(gather(first.clone(), &mut changes).map(|batch| batch.len()), Some(MOST_PER_EVENT));
        let (sender, mut changes) = tokio::sync::broadcast::channel(2);
        for id in 0..5 {
            sender.send(change(id, Queued)).unwrap();
        }
        assert_eq!(gather(first, &mut changes), None, "fell behind the buffer");
    }

    use super::*;

    #[test]
    fn only_the_same_origin_may_press_a_button() {
        let host = Some("127.0.0.1:8080");
        let check = |origin, site| same_origin(origin, site, host, None);
        assert_eq!(check(Some("http://127.0.0.1:8080"), Some("same-origin")), Ok(()));
        assert_eq!(check(Some("https://127.0.0.1:8080"), None), Ok(()));
        assert!(check(Some("http://evil.example"), None).is_err());
        assert!(check(Some("http://127.0.0.1:8080.evil.example"), None).is_err());
        assert!(check(Some("http://127.0.0.1:8080"), Some("cross-site")).is_err());
        assert!(check(None, Some("same-origin")).is_err());
        assert!(check(Some("null"), None).is_err());
        // Behind a proxy that sends its own Host, the public URL is the board's origin.
        let public = Some("https://ns.example.com");
        assert_eq!(same_origin(Some("https://ns.example.com"), Some("same-origin"), host, public), Ok(()));
        assert!(same_origin(Some("https://evil.example"), None, host, public).is_err());
    }

    #[test]
    fn tokens_give_full_or_read_access_and_nothing_else() {
        assert_eq!(token_access("full", "full", Some("read")), Some(Access::Full));
        assert_eq!(token_access("read", "full", Some("read")), Some(Access::Read));
        assert_eq!(token_access("", "full", None), None);
        assert_eq!(token_access("read", "full", None), None);
    }

    #[test]
    fn past_the_cap_a_login_drops_the_expired_sessions_else_the_oldest() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let at = |n: usize| start + Duration::from_secs(n as u64);
        // Half of a full table expires just as the next login comes (none before).
        let mut ids = Vec::new();
        for n in 0..MAX_SESSIONS {
            ids.push(sessions.open(Access::Full, if n < MAX_SESSIONS / 2 { start } else { at(1) }).unwrap().0);
        }
        let later = start + SESSION_LIFETIME;
        let (newest, _) = sessions.open(Access::Full, later).unwrap();
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS / 2 + 1, "the expired ones went");
        assert!(sessions.get(&ids[MAX_SESSIONS - 1], later).is_some() && sessions.get(&newest, later).is_some());
        // A full table of live sessions: only the oldest goes.
        let sessions = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS).map(|n| sessions.open(Access::Read, at(n)).unwrap().0).collect();
        let now = at(MAX_SESSIONS);
        let (newest, _) = sessions.open(Access::Read, now).unwrap();
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(sessions.get(&ids[0], now), None, "the oldest went");
        assert!(sessions.get(&ids[1], now).is_some() && sessions.get(&newest, now).is_some());
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_or_is_closed() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, session) = sessions.open(Access::Read, now).unwrap();
        assert_ne!(id, session.csrf);
        assert_eq!(sessions.get(&id, now + Duration::from_secs(60)), Some(session.clone()));
        // A login lasts twelve hours (docs/board.md), to the second.
        let almost = now + Duration::from_secs(12 * 3600 - 1);
        assert_eq!(sessions.get(&id, almost), Some(session));
        assert_eq!(sessions.get(&id, now + SESSION_LIFETIME), None);
        assert_eq!(sessions.get("other", now), None);
        sessions.close(&id);
        assert_eq!(sessions.get(&id, now), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie("a=1; nightshift_session=abc; b=2", SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie("xnightshift_session=abc", SESSION_COOKIE), None);
    }
}
