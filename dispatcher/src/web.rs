//! The web page's HTTP edge (axum): runs, a run's graph and jobs, a job's live log, and the
//! actions signed-in users may take. Served by the dispatcher at `dispatcher.web_address`
//! (and by `pipelines run --web`), with nothing else to deploy: the HTML comes from
//! `dispatcher_core::pages`, the script and style sheet are compiled in, nothing is fetched
//! from elsewhere.
//!
//! Reads go to the run database through a read-only connection and to the log files; live
//! updates are server-sent events woken by the dispatcher ([`WebLink`]) and the log store.
//! Actions are messages on the control queue, published as the dispatcher's own broker user
//! and decided like anyone's; the page only lets through users `[web]` names, and logs them.

mod auth;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Form, Path as UrlPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use config::Config;
use dispatcher_core::decide::Outcome;
use dispatcher_core::pages::{self, ForgeLinks, LogEntry, RunsFilter, Viewer};
use dispatcher_core::scheduler::ShownJob;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use proto_types::{ApprovalVerdict, EventKind, JobSummary, RunDetail};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::logs::{self, LogStore};
use crate::store::{RunFilter, Store, StoreError, StoreLocation};

pub(crate) use auth::Auth;
use auth::{Identity, Method, SESSION_COOKIE};

/// Runs the list shows at most.
const RUNS_LISTED: usize = 200;
/// Actions waiting for the dispatcher's loop at most; more are refused (503).
const ORDERS_WAITING: usize = 64;
/// How long an action waits for the dispatcher's decision.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Open event streams at most (each holds a connection and a task).
const MAX_STREAMS: usize = 512;
/// The most of a log a page shows: a longer log starts this far from its end (the raw log
/// has it all), so a page never holds the whole of a 128 MiB log.
const SHOWN_BYTES: u64 = 2 * 1024 * 1024;
/// Bytes of log one event carries at most.
const LOG_EVENT_BYTES: usize = 64 * 1024;
/// A live run page is re-rendered at most this often (a big run changes many times a second).
const RUN_UPDATE_EVERY: Duration = Duration::from_millis(500);
/// A finished job's log without its end marker is declared cut after this long without
/// growing (its last chunks may still be on their way).
const CUT_AFTER: Duration = Duration::from_secs(5);

const APP_CSS: &str = include_str!("web/app.css");
const APP_JS: &str = include_str!("web/app.js");

/// What the dispatcher and its web page share: which runs changed, and the actions of the
/// page's signed-in users, which the dispatcher's loop decides in process. They never go
/// through the broker, so no broker login (a shared one included) can speak for the page.
#[derive(Debug, Clone)]
pub struct WebLink {
    runs: broadcast::Sender<Uuid>,
    orders: mpsc::Sender<WebOrder>,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<WebOrder>>>,
    /// Whether a dispatcher loop takes orders now.
    taking: Arc<AtomicBool>,
}

impl Default for WebLink {
    fn default() -> WebLink {
        let (orders, inbox) = mpsc::channel(ORDERS_WAITING);
        WebLink {
            runs: broadcast::channel(4096).0,
            orders,
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
            taking: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl WebLink {
    /// `run_id` changed: its open pages re-render.
    pub fn run_changed(&self, run_id: Uuid) {
        let _ = self.runs.send(run_id);
    }

    /// The page's orders, for the dispatcher loop that decides them (one at a time: a second
    /// loop waits until the first lets go).
    pub async fn take_orders(&self) -> WebOrders {
        let inbox = self.inbox.clone().lock_owned().await;
        self.taking.store(true, Ordering::SeqCst);
        WebOrders {
            inbox,
            taking: self.taking.clone(),
        }
    }

    /// Hands `action` by `user` to the dispatcher and waits for its decision.
    async fn order(
        &self,
        run_id: Uuid,
        user: &str,
        action: WebAction,
        reason: String,
    ) -> Result<WebAnswer, Refusal> {
        let unavailable = |why: &str| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, why);
        if !self.taking.load(Ordering::SeqCst) {
            return Err(unavailable(
                "The dispatcher is not taking actions now (it is connecting to the broker); try again shortly.",
            ));
        }
        let (answer, answered) = oneshot::channel();
        let order = WebOrder {
            run_id,
            user: user.to_owned(),
            action,
            reason,
            answer,
        };
        self.orders.try_send(order).map_err(|_| {
            unavailable("The dispatcher has too many actions waiting; try again shortly.")
        })?;
        match tokio::time::timeout(ANSWER_WITHIN, answered).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(unavailable(
                "The dispatcher stopped before it answered; reload the run's page to see whether the action was taken.",
            )),
            Err(_) => Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "The dispatcher did not answer in time; the action may still be taken. Reload the run's page to see.",
            )),
        }
    }
}

/// The page's orders while a dispatcher loop holds them.
#[derive(Debug)]
pub struct WebOrders {
    inbox: tokio::sync::OwnedMutexGuard<mpsc::Receiver<WebOrder>>,
    taking: Arc<AtomicBool>,
}

impl WebOrders {
    pub async fn recv(&mut self) -> Option<WebOrder> {
        self.inbox.recv().await
    }
}

impl Drop for WebOrders {
    fn drop(&mut self) {
        self.taking.store(false, Ordering::SeqCst);
    }
}

/// What a signed-in user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebAction {
    Cancel,
    /// A verdict on the waiting jobs the user chose, each in the wait their page showed.
    Approval {
        verdict: ApprovalVerdict,
        chosen: Vec<ShownJob>,
    },
}

impl WebAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            WebAction::Cancel => "cancel",
            WebAction::Approval { verdict, .. } => verdict.as_str(),
        }
    }
}

/// One action of a signed-in user, on its way to the dispatcher's loop. `user` is who the
/// page authenticated; the core checks it against `[web]` again.
#[derive(Debug)]
pub struct WebOrder {
    pub run_id: Uuid,
    pub user: String,
    pub action: WebAction,
    pub reason: String,
    answer: oneshot::Sender<WebAnswer>,
}

impl WebOrder {
    /// Tells the page what was decided (once it is committed).
    pub fn answer(self, answer: WebAnswer) {
        let _ = self.answer.send(answer);
    }
}

/// What the dispatcher decided about an action, as the page tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebAnswer {
    Done(String),
    Refused(String),
    NothingToDo(String),
    UnknownRun(String),
}

impl WebAnswer {
    pub fn of(outcome: Option<&Outcome>) -> WebAnswer {
        match outcome {
            Some(Outcome::CancelRequested { reason }) => WebAnswer::Done(reason.clone()),
            Some(Outcome::ApprovalApplied { verdict, by, jobs }) => {
                WebAnswer::Done(format!("{} by {by}: {jobs} job(s).", verdict.as_str()))
            }
            Some(Outcome::CancellerRefused { user }) => {
                WebAnswer::Refused(format!("{user} may not cancel runs (see [web] operators)."))
            }
            Some(Outcome::ApproverRefused { user }) => WebAnswer::Refused(format!(
                "{user} may not approve or reject (see [web] approvers)."
            )),
            Some(Outcome::CancelOfEndedRun) => {
                WebAnswer::NothingToDo("The run has already ended.".into())
            }
            Some(Outcome::ApprovalMatchedNothing { reason }) => {
                WebAnswer::NothingToDo(reason.clone())
            }
            Some(Outcome::CancelOfUnknownRun) => WebAnswer::UnknownRun("No such run.".into()),
            _ => WebAnswer::NothingToDo("Nothing was done.".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot serve the web page on {address}: {reason}")]
    Bind { address: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything a request may need.
struct Web {
    store: Mutex<Store>,
    /// Where `store` connects again after PostgreSQL dropped it.
    location: StoreLocation,
    logs: LogStore,
    link: WebLink,
    auth: Auth,
    links: ForgeLinks,
    /// Whether the page is served as https (cookies are then `Secure`).
    secure: bool,
    /// The newest live part of each followed run, rendered once for every page following it
    /// (a 1,000-job run's part is about a megabyte; twenty pages must not make twenty).
    live: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Option<LivePart>>>>>,
    /// Open event streams (run pages and job logs) at most.
    streams: Arc<tokio::sync::Semaphore>,
}

/// A run's live part as last rendered (JSON-encoded for an event), and when.
struct LivePart {
    rendered: tokio::time::Instant,
    /// The whole server-sent event: `event: update`, the JSON-encoded HTML as its data.
    frame: Bytes,
    is_final: bool,
}

/// Serves the page on `address` until the task is dropped, reading the run database at
/// `location` (which must exist) and the logs of `logs`.
pub async fn serve(
    address: &str,
    config: Config,
    location: &StoreLocation,
    logs: LogStore,
    link: WebLink,
) -> Result<SocketAddr, WebError> {
    let store = Store::connect_read_only(location)?;
    let bind_error = |reason: String| WebError::Bind {
        address: address.to_owned(),
        reason,
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| bind_error(err.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|err| bind_error(err.to_string()))?;
    let web = Arc::new(Web {
        store: Mutex::new(store),
        location: location.clone(),
        logs,
        link,
        auth: Auth::new(config.web.clone(), Auth::random_key()),
        links: forge_links(&config),
        secure: config
            .dispatcher
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://")),
        live: Mutex::new(HashMap::new()),
        streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
    });
    let app = router(web).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "The web page stopped.");
        }
    });
    Ok(local)
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/approve", post(approve_run))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/stream", get(job_stream))
        .route("/jobs/{id}/logs/{attempt}/{stream}/{worker}", get(raw_log))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css", APP_CSS) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            drop_untrusted_proxy_header,
        ))
        .with_state(web)
}

/// `repository → https://github.com/org/name` for the repositories GitHub knows.
fn forge_links(config: &Config) -> ForgeLinks {
    let Some(github) = &config.github else {
        return ForgeLinks::new();
    };
    let web = crate::github::web_url_of(&github.api_url);
    config
        .repositories
        .iter()
        .filter_map(|repo| {
            let slug = repo.github.as_ref()?;
            Some((repo.name.clone(), format!("{web}/{slug}")))
        })
        .collect()
}

/// The proxy's sign-in header counts only from `[web] proxy_addresses`: from anywhere else it
/// is removed before any handler sees it, so reaching `web_address` directly claims nobody.
async fn drop_untrusted_proxy_header(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let settings = web.auth.settings();
    if let Some(header) = &settings.proxy_header
        && !settings.trusts_proxy(peer.ip())
        && request.headers_mut().remove(header.as_str()).is_some()
    {
        tracing::warn!(%peer, header, "A proxy sign-in header from an address not in web.proxy_addresses was ignored.");
    }
    next.run(request).await
}

/// Nothing but this server's own script and style runs or loads, no other site may frame it,
/// and nothing sniffs a log into HTML.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A page. Never stored by a browser or a proxy: a signed-in user's page carries their form
/// token, and a shared cache would hand it (and a run's state as it was) to the next reader.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

impl Web {
    fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        self.auth.identify(headers, now_ms() / 1000)
    }

    fn viewer(&self, who: Option<&Identity>) -> Viewer {
        let settings = self.auth.settings();
        Viewer {
            user: who.map(|who| who.user.clone()),
            may_cancel: who.is_some_and(|who| settings.may_cancel(&who.user)),
            may_approve: who.is_some_and(|who| settings.may_approve(&who.user)),
            csrf: who.map(|who| self.auth.csrf(&who.user)),
            sign_in: !settings.tokens.is_empty(),
        }
    }

    /// Runs `read` against the run database off the async runtime.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_then(read, |value| value).await
    }

    /// Like [`Web::read`], then `then` on what was read, on the same blocking thread once the
    /// database is free for other reads again: a big page rendered there keeps its
    /// allocations on one thread, and no other page's read waits for the rendering.
    async fn read_then<T, U: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        then: impl FnOnce(T) -> U + Send + 'static,
    ) -> Result<U, StoreError> {
        let web = self.clone();
        tokio::task::spawn_blocking(move || {
            let read = {
                let mut store = web.store.lock().unwrap_or_else(|e| e.into_inner());
                let read = read(&store);
                // PostgreSQL went away (restarted, failed over): the next read connects again.
                if matches!(&read, Err(err) if err.is_transient())
                    && let Ok(fresh) = Store::connect_read_only(&web.location)
                {
                    *store = fresh;
                }
                read
            };
            read.map(then)
        })
        .await
        .unwrap_or_else(|err| {
            Err(StoreError::Database {
                operation: "read for the web page",
                reason: err.to_string(),
            })
        })
    }

    /// The live part of `run_id`'s page (JSON-encoded) and whether the run is final: the
    /// shared rendering when it is fresh (younger than half the update interval), else a new
    /// one. Pages wait for each other here, so a run is read and rendered once per update.
    async fn live_part(self: &Arc<Self>, run_id: Uuid) -> Option<(Bytes, bool)> {
        let slot = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            // Runs nobody followed for a minute are forgotten (their pages are gone).
            live.retain(|id, slot| {
                *id == run_id
                    || slot.try_lock().is_ok_and(|part| {
                        part.as_ref().is_some_and(|part| {
                            !part.is_final && part.rendered.elapsed() < Duration::from_secs(60)
                        })
                    })
            });
            live.entry(run_id).or_default().clone()
        };
        // Pages of the same run wait for each other here; other runs' pages do not.
        let mut part = slot.lock().await;
        if let Some(part) = part.as_ref()
            && part.rendered.elapsed() < RUN_UPDATE_EVERY / 2
        {
            return Some((part.frame.clone(), part.is_final));
        }
        // Read and rendered on one blocking thread: the run's detail and its HTML (about 1 MB
        // for 1,000 jobs) are allocated and freed there, not spread over the runtime's threads,
        // whose allocator would each keep freed pages of them for a while.
        let (frame, is_final) = self
            .read_then(
                move |store| store.run_detail(&run_id.to_string(), now_ms()),
                |detail| {
                    (
                        update_frame(&pages::run_live(&detail, now_ms())),
                        detail.run.state.is_final(),
                    )
                },
            )
            .await
            .ok()?;
        *part = Some(LivePart {
            rendered: tokio::time::Instant::now(),
            frame: frame.clone(),
            is_final,
        });
        Some((frame, is_final))
    }

    /// Every log of a job, read off the async runtime.
    async fn job_logs(&self, run_id: Uuid, job_id: Uuid) -> Vec<logs::LogFile> {
        let logs = self.logs.clone();
        tokio::task::spawn_blocking(move || logs.logs(run_id, job_id))
            .await
            .unwrap_or_default()
    }

    /// A place for one more event stream, if there is one: the streams are open to anyone
    /// who may read the page, so their number is bounded.
    fn stream_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.streams.clone().try_acquire_owned().ok();
        if slot.is_none() {
            tracing::warn!(
                limit = MAX_STREAMS,
                "Too many open event streams; one more was refused."
            );
        }
        slot
    }

    fn busy(&self, viewer: &Viewer) -> Response {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message_page(
                "Busy",
                "Too many pages are following runs and logs; try again shortly.",
                viewer,
            ),
        )
    }

    fn not_found(&self, what: &str, viewer: &Viewer) -> Response {
        html(
            StatusCode::NOT_FOUND,
            pages::message_page("Not found", what, viewer),
        )
    }

    fn failed(&self, err: &StoreError, viewer: &Viewer) -> Response {
        match err {
            StoreError::UnknownRun(id) => self.not_found(&format!("No run {id}."), viewer),
            other => {
                tracing::error!(error = %other, "The web page cannot read the run database.");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    pages::message_page("Error", "The run database cannot be read.", viewer),
                )
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RunsQuery {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pr: String,
}

async fn runs_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<RunsQuery>,
) -> Response {
    let who = web.identify(&headers);
    let viewer = web.viewer(who.as_ref());
    let filled = |value: String| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = RunsFilter {
        repository: filled(query.repository),
        event: filled(query.event).and_then(|event| event.parse::<EventKind>().ok()),
        state: filled(query.state),
        pull_request: filled(query.pr).and_then(|pr| pr.parse().ok()),
    };
    let store_filter = RunFilter {
        repository: filter.repository.clone(),
        event: filter.event,
        state: filter.state.clone(),
        pull_request: filter.pull_request,
    };
    let found = web
        .read(move |store| {
            Ok((
                store.find_runs(&store_filter, RUNS_LISTED)?,
                store.repositories()?,
            ))
        })
        .await;
    match found {
        Ok((runs, repositories)) => html(
            StatusCode::OK,
            pages::runs_page(&runs, &filter, &repositories, &viewer, &web.links, now_ms()),
        ),
        Err(err) => web.failed(&err, &viewer),
    }
}

async fn run_detail(web: &Arc<Web>, id: String) -> Result<RunDetail, StoreError> {
    web.read(move |store| store.run_detail(&id, now_ms())).await
}

async fn run_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    match run_detail(&web, id).await {
        Ok(detail) => html(
            StatusCode::OK,
            pages::run_page(&detail, &viewer, &web.links, now_ms()),
        ),
        Err(err) => web.failed(&err, &viewer),
    }
}

/// Server-sent events of one run: `update` with the live part's HTML (JSON-encoded) on every
/// change, at most every [`RUN_UPDATE_EVERY`]; `end` once the run is final.
async fn run_events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    let Ok(run_id) = id.parse::<Uuid>() else {
        return web.not_found(&format!("No run {id}."), &viewer);
    };
    match web.read(move |store| store.run_phase(run_id)).await {
        Ok(Some(_)) => {}
        Ok(None) => return web.not_found(&format!("No run {id}."), &viewer),
        Err(err) => return web.failed(&err, &viewer),
    }
    let Some(slot) = web.stream_slot() else {
        return web.busy(&viewer);
    };
    let mut changes = web.link.runs.subscribe();
    // One frame in flight per page: only the newest state of a run matters. Frames share the
    // one rendering (`Bytes` counts references; no copy per page).
    let (frames, receiver) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let Some((frame, is_final)) = web.live_part(run_id).await else {
                return;
            };
            if frames.send(frame).await.is_err() {
                return;
            }
            if is_final {
                let end = Bytes::from_static(b"event: end\ndata: {}\n\n");
                let _ = frames.send(end).await;
                return;
            }
            // Wait for a change of this run (or look again every few seconds: durations
            // grow, and a missed notification costs at most that).
            tokio::select! {
                () = heard(&mut changes, run_id, Duration::from_secs(5)) => {}
                () = frames.closed() => return,
            }
            tokio::time::sleep(RUN_UPDATE_EVERY).await;
        }
    });
    let stream = futures_lite::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|frame| (Ok::<Bytes, Infallible>(frame), receiver))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn sse(receiver: mpsc::Receiver<Event>) -> Response {
    let stream = futures_lite::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<Event, Infallible>(event), receiver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An `update` event carrying `html` as a JSON string, written once into the frame's own
/// buffer (JSON has no line breaks: the data is one `data:` line).
fn update_frame(html: &str) -> Bytes {
    const HEAD: &[u8] = b"event: update\ndata: ";
    // Room for the escapes of a page's quotes: the buffer is not grown (and copied) midway.
    let mut frame = Vec::with_capacity(HEAD.len() + html.len() + html.len() / 8 + 4);
    frame.extend_from_slice(HEAD);
    if serde_json::to_writer(&mut frame, html).is_err() {
        frame.truncate(HEAD.len());
        frame.extend_from_slice(b"\"\"");
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// A JSON string: SSE data may not hold carriage returns, and text from a repository may.
fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A job and its run, by the job's id.
async fn job_and_run(
    web: &Arc<Web>,
    id: &str,
) -> Result<Option<(RunDetail, JobSummary)>, StoreError> {
    let Ok(job_id) = id.parse::<Uuid>() else {
        return Ok(None);
    };
    let Some(run_id) = web.read(move |store| store.run_of_job(job_id)).await? else {
        return Ok(None);
    };
    let detail = run_detail(web, run_id.to_string()).await?;
    let job = detail.jobs.iter().find(|job| job.job_id == job_id).cloned();
    Ok(job.map(|job| (detail, job)))
}

/// A job's run and its own id, or the page saying it is unknown.
async fn job_ids(web: &Arc<Web>, id: &str, viewer: &Viewer) -> Result<(Uuid, Uuid), Response> {
    match job_and_run(web, id).await {
        Ok(Some((detail, job))) => Ok((detail.run.run_id, job.job_id)),
        Ok(None) => Err(web.not_found(&format!("No job {id}."), viewer)),
        Err(err) => Err(web.failed(&err, viewer)),
    }
}

fn log_entries(logs: &[logs::LogFile], job_final: bool) -> Vec<LogEntry> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| LogEntry {
            attempt: log.attempt,
            stream: log.stream,
            worker: log.worker.clone(),
            bytes: log.len,
            state: match log.end {
                Some(end) => end.as_str(),
                // An earlier log without its end was cut (a newer one exists).
                None if job_final || i + 1 < logs.len() => "cut",
                None => "streaming",
            },
        })
        .collect()
}

async fn job_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    match job_and_run(&web, &id).await {
        Ok(Some((detail, job))) => {
            let files = web.job_logs(detail.run.run_id, job.job_id).await;
            let entries = log_entries(&files, job.state.is_final());
            html(
                StatusCode::OK,
                pages::job_page(&detail, &job, &entries, &viewer),
            )
        }
        Ok(None) => web.not_found(&format!("No job {id}."), &viewer),
        Err(err) => web.failed(&err, &viewer),
    }
}

/// Server-sent events of a job's newest log: `chunk` (JSON text) as the log grows, `state`
/// when it is known how it ended, then `end`. A new attempt's log replaces the old one on
/// the page (`reset`).
async fn job_stream(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    let (run_id, job_id) = match job_ids(&web, &id, &viewer).await {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    let Some(slot) = web.stream_slot() else {
        return web.busy(&viewer);
    };
    let mut grew = web.logs.subscribe();
    let (events, receiver) = mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut following: Option<(PathBuf, u64)> = None;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let files = web.job_logs(run_id, job_id).await;
            let Some(newest) = files.last().cloned() else {
                // No log yet: wait for one, unless the job ended without any.
                if job_final(&web, job_id).await && quiet_since.elapsed() > CUT_AFTER {
                    let _ = events.send(state_event("none")).await;
                    let _ = events.send(Event::default().event("end").data("{}")).await;
                    return;
                }
                tokio::select! {
                    () = heard(&mut grew, job_id, Duration::from_secs(1)) => {}
                    () = events.closed() => return,
                }
                continue;
            };
            let offset = match &following {
                Some((path, offset)) if *path == newest.path => *offset,
                _ => {
                    let label = format!("attempt {} on {}", newest.attempt, newest.worker);
                    let reset = Event::default().event("reset").data(json(&label));
                    if events.send(reset).await.is_err() {
                        return;
                    }
                    let start = newest.len.saturating_sub(SHOWN_BYTES);
                    if start > 0 {
                        let note = format!(
                            "The log is {} bytes; the page shows its last {} MiB (the raw log has it all).",
                            newest.len,
                            SHOWN_BYTES >> 20
                        );
                        let trimmed = Event::default().event("trimmed").data(json(&note));
                        if events.send(trimmed).await.is_err() {
                            return;
                        }
                    }
                    start
                }
            };
            let path = newest.path.clone();
            let read = tokio::task::spawn_blocking(move || {
                logs::read_text(&path, offset, LOG_EVENT_BYTES)
            })
            .await;
            let (text, next) = match read {
                Ok(Ok(read)) => read,
                _ => (String::new(), offset),
            };
            following = Some((newest.path.clone(), next));
            if !text.is_empty() {
                quiet_since = tokio::time::Instant::now();
                // A job's words must not reorder what the reader sees; the raw log keeps them.
                let text = proto_types::untrusted_text::reveal_bidi(&text);
                let chunk = Event::default().event("chunk").data(json(&text));
                if events.send(chunk).await.is_err() {
                    return;
                }
                continue;
            }
            // Caught up with the file.
            let ended = match newest.end {
                Some(end) => Some(end.as_str()),
                None if job_final(&web, job_id).await && quiet_since.elapsed() > CUT_AFTER => {
                    Some("cut")
                }
                None => None,
            };
            if let Some(ended) = ended {
                let _ = events.send(state_event(ended)).await;
                let _ = events.send(Event::default().event("end").data("{}")).await;
                return;
            }
            if events.send(state_event("streaming")).await.is_err() {
                return;
            }
            tokio::select! {
                () = heard(&mut grew, job_id, Duration::from_secs(1)) => {}
                () = events.closed() => return,
            }
        }
    });
    sse(receiver)
}

fn state_event(state: &str) -> Event {
    Event::default().event("state").data(json(state))
}

async fn job_final(web: &Arc<Web>, job_id: Uuid) -> bool {
    let state = web.read(move |store| store.job_state(job_id)).await;
    match state {
        Ok(Some(state)) => state
            .parse::<proto_types::JobPhase>()
            .is_ok_and(proto_types::JobPhase::is_final),
        _ => true,
    }
}

/// Until `channel` names `id` (a run that changed, a log that grew), it lags behind (something
/// may have been missed), or `within` passes.
async fn heard(channel: &mut broadcast::Receiver<Uuid>, id: Uuid, within: Duration) {
    let wait = async {
        loop {
            match channel.recv().await {
                Ok(named) if named == id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(within, wait).await;
}

/// One log as plain text, streamed from its file.
async fn raw_log(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath((id, attempt, stream, worker)): UrlPath<(String, u32, u64, String)>,
) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    let (run_id, job_id) = match job_ids(&web, &id, &viewer).await {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    // The file is looked up among the job's logs, never built from the request's path.
    let Some(log) = web
        .job_logs(run_id, job_id)
        .await
        .into_iter()
        .find(|log| log.attempt == attempt && log.stream == stream && log.worker == worker)
    else {
        return web.not_found("No such log.", &viewer);
    };
    let Ok(file) = tokio::fs::File::open(&log.path).await else {
        return web.not_found("No such log.", &viewer);
    };
    let stream = futures_lite::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buffer = vec![0_u8; LOG_EVENT_BYTES];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<Vec<u8>, std::io::Error>(buffer), Some(file)))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn sign_in_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let viewer = web.viewer(web.identify(&headers).as_ref());
    html(StatusCode::OK, pages::sign_in_page(None, &viewer))
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

async fn sign_in(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let viewer = web.viewer(None);
    if auth::cross_site(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "A sign-in from another site.",
            &viewer,
        );
    }
    let Some(user) = web.auth.user_of_token(form.token.trim()) else {
        tracing::warn!("A web sign-in with an unknown token was refused.");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::sign_in_page(Some("Unknown token."), &viewer),
        );
    };
    let hours = web.auth.settings().session_hours;
    let expires = now_ms() / 1000 + hours * 3600;
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        web.auth.session(&user, expires),
        hours * 3600,
        if web.secure { "; Secure" } else { "" }
    );
    tracing::info!(%user, "Signed in to the web page.");
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn sign_out() -> Response {
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "pipelines_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

fn refuse(status: StatusCode, message: &str, viewer: &Viewer) -> Response {
    html(status, pages::message_page("Refused", message, viewer))
}

/// Why an action is not taken: the answer's status and what the page says.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        refuse(self.status, &self.message, &Viewer::default())
    }
}

#[derive(Debug, Default, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    verdict: String,
}

/// Who may take an action: signed in, allowed, and (for browsers) with the form's token from
/// this site.
fn authorize(
    web: &Web,
    headers: &HeaderMap,
    form: &ActionForm,
    allowed: impl Fn(&config::WebSettings, &str) -> bool,
    action: &str,
) -> Result<String, Refusal> {
    let Some(who) = web.identify(headers) else {
        tracing::warn!(action, "A web action without a signed-in user was refused.");
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Sign in first: the page is read-only for anonymous users.",
        ));
    };
    if who.method != Method::Bearer
        && (auth::cross_site(headers) || !web.auth.check_csrf(&who.user, &form.csrf))
    {
        tracing::warn!(user = %who.user, action, "A web action with a missing or wrong CSRF token was refused.");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "The form is stale or came from another site; reload the page and try again.",
        ));
    }
    if !allowed(web.auth.settings(), &who.user) {
        tracing::warn!(user = %who.user, action, "A web action by a user the configuration does not allow was refused.");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not {action} (see [web] in the configuration).",
                who.user
            ),
        ));
    }
    Ok(who.user)
}

/// What every action shares: the user may take it (see [`authorize`]), the run exists. The
/// run's id and the user, or the answer to send.
async fn action_on_run(
    web: &Arc<Web>,
    headers: &HeaderMap,
    id: String,
    form: &ActionForm,
    allowed: impl Fn(&config::WebSettings, &str) -> bool,
    action: &str,
) -> Result<(Uuid, String), Response> {
    let user = authorize(web, headers, form, allowed, action).map_err(|r| r.response())?;
    match run_detail(web, id).await {
        Ok(detail) => Ok((detail.run.run_id, user)),
        Err(err) => Err(web.failed(&err, &web.viewer(None))),
    }
}

async fn cancel_run(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let allowed = |s: &config::WebSettings, user: &str| s.may_cancel(user);
    let (run_id, user) =
        match action_on_run(&web, &headers, id, &form, allowed, "cancel runs").await {
            Ok(found) => found,
            Err(response) => return response,
        };
    let reason = reason_or(&form.reason, "cancelled from the web page");
    tracing::info!(%user, %run_id, %reason, "Run cancellation requested from the web page.");
    let answer = web
        .link
        .order(run_id, &user, WebAction::Cancel, reason)
        .await;
    answered(run_id, answer)
}

async fn approve_run(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let (form, jobs) = approval_fields(fields);
    let allowed = |s: &config::WebSettings, user: &str| s.may_approve(user);
    let (run_id, user) =
        match action_on_run(&web, &headers, id, &form, allowed, "approve or reject").await {
            Ok(found) => found,
            Err(response) => return response,
        };
    let verdict = match form.verdict.as_str() {
        "approve" => ApprovalVerdict::Approve,
        "reject" => ApprovalVerdict::Reject,
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("Unknown verdict {other:?}: approve or reject."),
                &web.viewer(None),
            );
        }
    };
    let chosen = match chosen_waits(&jobs) {
        Ok(chosen) => chosen,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &why, &web.viewer(None)),
    };
    let reason = reason_or(&form.reason, "from the web page");
    tracing::info!(%user, %run_id, verdict = verdict.as_str(), jobs = chosen.len(), %reason, "Approval order from the web page.");
    let answer = web
        .link
        .order(
            run_id,
            &user,
            WebAction::Approval { verdict, chosen },
            reason,
        )
        .await;
    answered(run_id, answer)
}

/// The most jobs one approval form may name (a run's page lists at most as many waiting).
const MAX_CHOSEN: usize = 10_000;

/// An approval form's fields, and the values of its `job` fields (one per ticked job).
fn approval_fields(fields: Vec<(String, String)>) -> (ActionForm, Vec<String>) {
    let mut form = ActionForm::default();
    let mut jobs = Vec::new();
    for (name, value) in fields {
        match name.as_str() {
            "csrf" => form.csrf = value,
            "reason" => form.reason = value,
            "verdict" => form.verdict = value,
            "job" => jobs.push(value),
            _ => {}
        }
    }
    (form, jobs)
}

/// The waits an approval form names (`JOB_ID:ATTEMPT:SINCE_MS`, as the run's page writes
/// them): at least one, at most [`MAX_CHOSEN`], each well-formed.
fn chosen_waits(jobs: &[String]) -> Result<Vec<ShownJob>, String> {
    if jobs.is_empty() {
        return Err(
            "Choose at least one waiting job (job=JOB_ID:ATTEMPT:SINCE_MS, as the run's \
                    page lists them)."
                .into(),
        );
    }
    if jobs.len() > MAX_CHOSEN {
        return Err(format!(
            "An approval names at most {MAX_CHOSEN} jobs; this one names {}.",
            jobs.len()
        ));
    }
    jobs.iter()
        .map(|value| {
            value.parse().map_err(|()| {
                format!(
                    "Malformed job {:?}: JOB_ID:ATTEMPT:SINCE_MS, as the run's page lists it.",
                    value.chars().take(80).collect::<String>()
                )
            })
        })
        .collect()
}

/// The answer to an action: back to the run's page when it was taken, else why not.
fn answered(run_id: Uuid, answer: Result<WebAnswer, Refusal>) -> Response {
    let (status, message) = match answer {
        Ok(WebAnswer::Done(_)) => return Redirect::to(&format!("/runs/{run_id}")).into_response(),
        Ok(WebAnswer::Refused(why)) => (StatusCode::FORBIDDEN, why),
        Ok(WebAnswer::NothingToDo(why)) => (StatusCode::CONFLICT, why),
        Ok(WebAnswer::UnknownRun(why)) => (StatusCode::NOT_FOUND, why),
        Err(refusal) => return refusal.response(),
    };
    refuse(status, &message, &Viewer::default())
}

/// How the page's orders name their user in reasons and gates: `web:<user>`.
pub fn web_requester(user: &str) -> String {
    format!("{}{user}", dispatcher_core::decide::WEB_REQUESTER_PREFIX)
}

fn reason_or(reason: &str, default: &str) -> String {
    let reason: String = reason.trim().chars().take(500).collect();
    if reason.is_empty() {
        default.to_owned()
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogEnd;

    #[test]
    fn pages_are_never_stored_by_a_browser_or_a_proxy() {
        let page = html(StatusCode::OK, "<p>csrf</p>".into());
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
        let refused = refuse(StatusCode::FORBIDDEN, "no", &Viewer::default());
        assert_eq!(refused.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn approval_forms_name_their_waits_and_a_form_naming_none_or_a_malformed_one_is_refused() {
        let wait = |attempt| ShownJob {
            job_id: Uuid::from_u128(7),
            attempt,
            since_ms: 1_000,
        };
        let field = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        let (form, jobs) = approval_fields(vec![
            field("csrf", "t"),
            field("verdict", "approve"),
            field("job", &wait(2).to_string()),
            field("reason", "CHG-1"),
            field("job", &wait(3).to_string()),
        ]);
        assert_eq!(
            (
                form.csrf.as_str(),
                form.verdict.as_str(),
                form.reason.as_str()
            ),
            ("t", "approve", "CHG-1")
        );
        assert_eq!(chosen_waits(&jobs).unwrap(), [wait(2), wait(3)]);
        let none = chosen_waits(&[]).unwrap_err();
        assert!(none.contains("job=JOB_ID:ATTEMPT:SINCE_MS"), "{none}");
        let too_many = vec![wait(1).to_string(); MAX_CHOSEN + 1];
        assert!(
            chosen_waits(&too_many)
                .unwrap_err()
                .contains("at most 10000")
        );
        let id = Uuid::from_u128(7);
        for bad in ["7:1:1".to_owned(), format!("{id}:1"), format!("{id}:x:1")] {
            let why = chosen_waits(std::slice::from_ref(&bad)).unwrap_err();
            assert!(
                why.starts_with(&format!("Malformed job {bad:?}")),
                "{bad}: {why}"
            );
        }
    }

    #[test]
    fn log_states_follow_their_end_and_the_job() {
        let file = |attempt, end| logs::LogFile {
            attempt,
            stream: 1,
            worker: "w".into(),
            path: PathBuf::from(format!("{attempt}-w.log")),
            len: 10,
            end,
            modified: None,
        };
        let running = log_entries(&[file(1, None), file(2, None)], false);
        assert_eq!(running[0].state, "cut", "an older attempt without its end");
        assert_eq!(running[1].state, "streaming");
        let ended = log_entries(&[file(1, Some(LogEnd::Complete)), file(2, None)], true);
        assert_eq!((ended[0].state, ended[1].state), ("complete", "cut"));
        let cut = log_entries(
            &[
                file(1, Some(LogEnd::Truncated)),
                file(2, Some(LogEnd::OverBudget(run_logs::Limit::Run))),
                file(3, Some(LogEnd::OverBudget(run_logs::Limit::Disk))),
            ],
            true,
        );
        let states: Vec<&str> = cut.iter().map(|entry| entry.state).collect();
        assert_eq!(states, ["truncated", "truncated-run", "truncated-disk"]);
        // The page has words for each of them.
        for state in ["truncated-run", "truncated-total", "truncated-disk"] {
            assert!(
                include_str!("web/app.js").contains(&format!("\"{state}\":")),
                "{state}"
            );
        }
    }

    /// A GET of `path` with `headers`, over a plain socket: the body.
    async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_proxy_header_counts_only_from_the_proxys_addresses() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        for (addresses, believed) in [("127.0.0.1", true), ("10.0.0.0/8", false)] {
            let mut config = Config::embedded("infra", "/srv/git/infra.git", "main");
            config.web.proxy_header = Some("X-Forwarded-Email".into());
            config.web.proxy_addresses = vec![addresses.into()];
            let logs = LogStore::new(dir.path(), 1 << 20);
            let address = serve(
                "127.0.0.1:0",
                config,
                &StoreLocation::state_dir(dir.path()),
                logs,
                WebLink::default(),
            )
            .await
            .unwrap();
            let page = get(address, "/", &[("X-Forwarded-Email", "alice@example.com")]).await;
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            assert_eq!(
                page.contains("Signed in as <strong>alice@example.com</strong>"),
                believed,
                "proxy_addresses = [{addresses:?}], the request from 127.0.0.1"
            );
        }
    }

    #[test]
    fn reasons_are_bounded_and_defaulted() {
        assert_eq!(reason_or("  ", "default"), "default");
        assert_eq!(reason_or(&"x".repeat(900), "d").len(), 500);
    }
}
