//! The web board over HTTP (docs/board.md): the page at `/` and `/runs/{id}`, its script
//! and style, `/login` and `/logout`, `GET /board/session` (the CSRF token the buttons
//! send), the live feed `GET /api/runs/stream` (server-sent events), and `access`, the
//! check in front of every `/api` route: the API token may do anything, the read-only
//! token and read-only sessions may only GET, and a board session's POST must come from
//! the board's own origin with its CSRF token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::error;
use crate::board::{Access, CSRF_HEADER, SESSION_COOKIE, SESSION_LIFETIME, Session};
use crate::server::Server;

/// What the board's pages may load: their own script and style, nothing else.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// How often the live feed sends a comment, so proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/", get(page))
        .route("/runs/{id}", get(page))
        .route("/board/board.js", get(|| async { asset("text/javascript; charset=utf-8", crate::board::BOARD_JS) }))
        .route("/board/board.css", get(|| async { asset("text/css; charset=utf-8", crate::board::BOARD_CSS) }))
        .route("/board/session", get(session))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

/// Who is asking.
enum Caller {
    /// `Authorization: Bearer` with the API or the read-only token.
    Bearer(Access),
    /// A board login, by its cookie.
    Session(String, Session),
}

impl Caller {
    fn access(&self) -> Access {
        match self {
            Caller::Bearer(access) => *access,
            Caller::Session(_, session) => session.access,
        }
    }
}

/// The caller a request's bearer token or session cookie names, or why there is none.
fn caller(server: &Server, headers: &HeaderMap) -> Result<Caller, String> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let given = authorization
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()));
        let Some(given) = given else { return Err("expected `Authorization: Bearer <token>`".into()) };
        return crate::board::token_access(given, server.api_token(), server.read_token())
            .map(Caller::Bearer)
            .ok_or_else(|| "the credentials are wrong".into());
    }
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| crate::board::cookie(value, SESSION_COOKIE));
    let Some(id) = id else { return Err("no credentials".into()) };
    match server.sessions().get(id, Instant::now()) {
        Some(session) => Ok(Caller::Session(id.to_string(), session)),
        None => Err("the board session expired or ended: log in again".into()),
    }
}

/// In front of every `/api` route: who may do what (the module's doc).
pub async fn access(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let caller = match caller(&server, request.headers()) {
        Ok(caller) => caller,
        Err(why) => {
            return error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{why}: /api needs `Authorization: Bearer <token>` (the token in serve.json in the data directory) or a board login"
                ),
            );
        }
    };
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    if caller.access() == Access::Read {
        return error(StatusCode::FORBIDDEN, "the read-only token may look but not act: this needs the API token");
    }
    if let Caller::Session(_, session) = &caller
        && let Err(why) = from_the_board(&server, request.headers(), session)
    {
        return error(StatusCode::FORBIDDEN, why);
    }
    next.run(request).await
}

/// A board session's change: from the board's origin, with the session's CSRF token.
fn from_the_board(server: &Server, headers: &HeaderMap, session: &Session) -> Result<(), String> {
    same_origin(server, headers)?;
    let given = headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("");
    if crate::auth::same_secret(given, &session.csrf) {
        Ok(())
    } else {
        Err(format!("the request lacks the board's {CSRF_HEADER} header (reload the page)"))
    }
}

fn same_origin(server: &Server, headers: &HeaderMap) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let public_url = server.options().public_url.as_deref();
    crate::board::same_origin(text("origin"), text("sec-fetch-site"), text("host"), public_url)
}

/// `/` and `/runs/{id}`: the board, for a caller with a login; else to `/login`.
async fn page(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if caller(&server, &headers).is_err() {
        return Redirect::to("/login").into_response();
    }
    html(StatusCode::OK, crate::board::BOARD_HTML.to_string())
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn login_form() -> Response {
    html(StatusCode::OK, crate::board::LOGIN_HTML.replace("{{message}}", ""))
}

/// `POST /login` with the form's `token`: a session cookie and off to the board, or the
/// form again with 401 and no cookie.
async fn login(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    // A login from another site would log this browser in as someone else.
    if (text("origin").is_some() || text("sec-fetch-site").is_some())
        && let Err(why) = same_origin(&server, &headers)
    {
        return error(StatusCode::FORBIDDEN, why);
    }
    let given = form_urlencoded::parse(&body).find(|(key, _)| key == "token").map(|(_, value)| value.into_owned());
    let access =
        given.as_deref().and_then(|token| crate::board::token_access(token, server.api_token(), server.read_token()));
    let Some(access) = access else {
        let again = crate::board::LOGIN_HTML.replace("{{message}}", "That token is not this server's. Try again.");
        return html(StatusCode::UNAUTHORIZED, again);
    };
    let id = match server.sessions().open(access, Instant::now()) {
        Ok((id, _)) => id,
        Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot start a session: {why}")),
    };
    let secure = if over_https(&server, &headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Whether the browser reached the server over https: through a proxy that says so, or
/// the public URL is https.
fn over_https(server: &Server, headers: &HeaderMap) -> bool {
    let forwarded = headers.get("x-forwarded-proto").and_then(|value| value.to_str().ok());
    forwarded.is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
        || server.options().public_url.as_deref().is_some_and(|url| url.starts_with("https://"))
}

/// `POST /logout`: ends the session (from the board's own origin) and clears the cookie.
async fn logout(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Err(why) = same_origin(&server, &headers) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if let Ok(Caller::Session(id, _)) = caller(&server, &headers) {
        server.sessions().close(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    let expired = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /board/session`: what the page needs to act: its CSRF token and its access.
async fn session(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    match caller(&server, &headers) {
        Ok(Caller::Session(_, session)) => {
            axum::Json(json!({"csrf": session.csrf, "access": session.access})).into_response()
        }
        Ok(Caller::Bearer(access)) => axum::Json(json!({"csrf": "", "access": access})).into_response(),
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

/// `GET /api/runs/stream`: a `runs` event (a JSON list of `{"id", "state", "automation",
/// "updated_at"}`, each run once with its newest state) when runs were queued, changed
/// state or ended, gathered for `board::GATHER`; `reload` when more than
/// `board::MOST_PER_EVENT` runs changed at once or this client fell behind; a comment
/// every 15 s otherwise. It ends when the server starts to stop.
pub async fn stream(State(server): State<Arc<Server>>) -> Response {
    use crate::board::feed::FeedEvent;
    use tokio::sync::broadcast::error::RecvError;
    let wakeup = Arc::clone(server.wakeup());
    let boards = server.board_feed().subscribe(
        || server.store().run_changes(),
        move || async move {
            // The server is stopping: end the feed, or it would hold up the drain.
            let mut stopping = wakeup.subscribe();
            while !wakeup.is_closed() {
                if stopping.changed().await.is_err() {
                    break;
                }
            }
        },
    );
    let events = futures_util::stream::unfold(boards, |mut boards| async move {
        let event = match boards.recv().await {
            Ok(gathered) => match &*gathered {
                FeedEvent::Runs(batch) => {
                    Event::default().event("runs").json_data(batch).unwrap_or_else(|_| Event::default())
                }
                FeedEvent::Reload => Event::default().event("reload").data("many runs changed"),
            },
            // This board fell behind the feed: it reads its whole view again.
            Err(RecvError::Lagged(_)) => Event::default().event("reload").data("many runs changed"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), boards))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
