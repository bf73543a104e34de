//! The GitHub reporter: a task beside the dispatcher that turns run changes into one living
//! pull request comment, a commit status per run, and a comment on the merged pull request
//! when an apply on the deploy branch fails.
//!
//! GitHub keeps one status per commit and context. When several pull requests have the same
//! head, each one's newest run writes the worst of all their statuses
//! ([`report::worst_status`]), so that no run turns another pull request's failure green.
//! When a pull request moves on to another commit, the commit it left gets the statuses of the
//! pull requests still there, without its old run.
//!
//! The dispatcher only tells it which runs changed. It reads the runs from the database (its
//! own read-only connection), coalesces changes (at most one update per run per second), and
//! never blocks or fails a run: errors are logged, and the next change tries again.
//!
//! A run's final report has no next change, yet branch protection waits on its status. So a
//! final report that fails is tried again with backoff, one that lands is marked in the
//! database, and a starting reporter sends the final reports of the last day that were never
//! marked (the dispatcher stopped first). Reports are idempotent, so sending one twice is
//! harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use config::Config;
use proto_types::{RunDetail, RunPhase};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use crate::github::{GitHub, GitHubError};
use crate::report::{self, CommitStatus, Links};
use crate::store::{Store, StoreError, StoreLocation};

/// Who the drift branch's commit is by.
const DRIFT_AUTHOR: (&str, &str) = ("Pipelines", "pipelines@users.noreply.github.com");

/// Changes to one run within this time become one update.
const COALESCE: Duration = Duration::from_secs(1);
/// The first wait before a failed final report is tried again; it doubles each time.
const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between tries of a final report.
const MAX_RETRY: Duration = Duration::from_secs(600);
/// Tries of a final report before the reporter leaves it to its next start (about 1.5 h).
const MAX_TRIES: u32 = 12;
/// How far back a starting reporter looks for final reports that never landed.
const CATCH_UP_MS: u64 = 24 * 3600 * 1000;

/// The most runs waiting for a report at once. Each run is there once however often it
/// changed, so this bounds the reporter's memory while GitHub is slow or down; beyond it, a
/// change is dropped (a final report is sent again by the next start's catch-up).
const MAX_PENDING: usize = 10_000;

/// Runs that changed since the reporter last looked: a set, so a run that changes a thousand
/// times while GitHub hangs is one entry.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    runs: Mutex<BTreeSet<Uuid>>,
    notify: Notify,
    closed: AtomicBool,
}

impl Pending {
    /// Adds a run; `false` when the set is full and the run was not in it.
    pub(crate) fn add(&self, run_id: Uuid) -> bool {
        let added = match self.runs.lock() {
            Ok(mut runs) if runs.len() < MAX_PENDING || runs.contains(&run_id) => {
                runs.insert(run_id);
                true
            }
            _ => false,
        };
        self.notify.notify_one();
        added
    }

    fn take(&self) -> BTreeSet<Uuid> {
        self.runs
            .lock()
            .map(|mut runs| std::mem::take(&mut *runs))
            .unwrap_or_default()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// Closes the pending set when the last handle of the dispatcher is gone, ending the task.
#[derive(Debug)]
struct Handle(Arc<Pending>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The dispatcher's handle on the reporter.
#[derive(Debug, Clone)]
pub struct Reporter {
    handle: Arc<Handle>,
}

impl Reporter {
    /// Starts the reporter task; it reads runs from `store` and keeps its mirrors (drift pull
    /// requests) in `state_dir`.
    pub fn spawn(
        github: GitHub,
        config: Config,
        state_dir: PathBuf,
        store: StoreLocation,
    ) -> Reporter {
        let pending = Arc::new(Pending::default());
        let task = Task {
            github,
            config,
            state_dir,
            store,
            comments: HashMap::new(),
            approval_comments: HashMap::new(),
            failures: HashMap::new(),
            again: Arc::downgrade(&pending),
            first_retry: FIRST_RETRY,
        };
        tokio::spawn(task.run(pending.clone()));
        Reporter {
            handle: Arc::new(Handle(pending)),
        }
    }

    /// Says that a run changed. Never waits, and holds each run once.
    pub fn changed(&self, run_id: Uuid) {
        if !self.handle.0.add(run_id) {
            tracing::warn!(%run_id, limit = MAX_PENDING, "Too many runs wait for a GitHub report; this change is not reported.");
        }
    }
}

pub(crate) struct Task {
    pub(crate) github: GitHub,
    pub(crate) config: Config,
    pub(crate) state_dir: PathBuf,
    pub(crate) store: StoreLocation,
    /// The living comment of each pull request, once known: `(repo, number)` to comment id.
    pub(crate) comments: HashMap<(String, u64), u64>,
    /// The comment about a push run's approvals, once written: run to `(pull request, id)`.
    pub(crate) approval_comments: HashMap<Uuid, (u64, u64)>,
    /// Final reports that failed, by run: how many times.
    pub(crate) failures: HashMap<Uuid, u32>,
    /// Where a failed final report comes back after its backoff. Weak, so that the task still
    /// ends when the dispatcher's handles are gone.
    pub(crate) again: Weak<Pending>,
    pub(crate) first_retry: Duration,
}

impl Task {
    async fn run(mut self, changed: Arc<Pending>) {
        self.catch_up().await;
        loop {
            let notified = changed.notify.notified();
            if changed.closed.load(Ordering::SeqCst) {
                return;
            }
            let ready = changed.take();
            if ready.is_empty() {
                notified.await;
                continue;
            }
            // Changes within the coalescing window join this round.
            tokio::time::sleep(COALESCE).await;
            let mut ready = ready;
            ready.extend(changed.take());
            for run_id in ready {
                self.report(run_id).await;
            }
        }
    }

    /// Sends the final reports of the last day that never landed.
    async fn catch_up(&mut self) {
        let since = crate::clock::now_ms().saturating_sub(CATCH_UP_MS);
        let unreported = crate::store::off_runtime(|| {
            Store::connect(&self.store).and_then(|store| store.unreported_runs(since, 1000))
        });
        match unreported {
            Ok(runs) if runs.is_empty() => {}
            Ok(runs) => {
                tracing::info!(
                    runs = runs.len(),
                    "Sending final GitHub reports that never landed."
                );
                for run_id in runs {
                    self.report(run_id).await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "Cannot look for unsent final GitHub reports.")
            }
        }
    }

    /// Reports one run; logs what fails. A final report is marked once it lands, and tried
    /// again later when it does not.
    pub(crate) async fn report(&mut self, run_id: Uuid) {
        // Everything is read first: the database connection stays off the await points.
        let read = crate::store::off_runtime(|| -> Result<_, StoreError> {
            let store = Store::connect_read_only(&self.store)?;
            let now = crate::clock::now_ms();
            let detail = store.run_detail(&run_id.to_string(), now)?;
            let siblings = Siblings::read(&store, &detail, now)?;
            Ok((
                detail,
                siblings,
                store.outputs(run_id)?,
                store.trace(run_id)?,
            ))
        });
        let (detail, siblings, outputs, trace) = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(%run_id, error = %err, "Cannot read the run for the GitHub report.");
                return;
            }
        };
        let span = tracing::info_span!("report", %run_id, repository = %detail.run.repository);
        telemetry::propagation::set_parent(
            &span,
            &telemetry::propagation::headers_from(trace.as_deref()),
        );
        let is_final = detail.run.state.is_final();
        match self
            .report_run(&detail, &siblings, &outputs)
            .instrument(span)
            .await
        {
            Ok(()) if is_final => {
                self.failures.remove(&run_id);
                let marked = crate::store::off_runtime(|| {
                    Store::connect(&self.store)
                        .and_then(|mut store| store.mark_reported(run_id, crate::clock::now_ms()))
                });
                if let Err(err) = marked {
                    tracing::warn!(%run_id, error = %err, "Cannot record that the final report landed; a restart sends it again.");
                }
            }
            Ok(()) => {}
            Err(err) if is_final && err.is_retryable() => self.retry_later(run_id, &err),
            Err(err) if is_final => {
                tracing::error!(%run_id, error = %err, "GitHub refused the run's final report; not retried (fix the token or its permissions; the dispatcher's next start sends it).");
            }
            Err(err) => {
                tracing::warn!(%run_id, error = %err, "GitHub report failed; the next change of the run tries again.");
            }
        }
    }

    /// Schedules another try of a final report, with exponential backoff, up to [`MAX_TRIES`].
    fn retry_later(&mut self, run_id: Uuid, err: &GitHubError) {
        let tries = self.failures.entry(run_id).or_insert(0);
        *tries += 1;
        if *tries >= MAX_TRIES {
            tracing::error!(%run_id, error = %err, tries = *tries, "Giving up on the run's final GitHub report; the dispatcher's next start sends it.");
            self.failures.remove(&run_id);
            return;
        }
        let wait = self
            .first_retry
            .saturating_mul(1 << (*tries - 1).min(16))
            .min(MAX_RETRY);
        tracing::warn!(%run_id, error = %err, tries = *tries, retry_in_s = wait.as_secs(), "The run's final GitHub report failed; trying again later.");
        let again = self.again.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(again) = again.upgrade() {
                again.add(run_id);
            }
        });
    }

    pub(crate) async fn report_run(
        &mut self,
        detail: &RunDetail,
        siblings: &Siblings,
        outputs: &BTreeMap<Uuid, String>,
    ) -> Result<(), GitHubError> {
        let Some(repo) = self
            .config
            .repository(&detail.run.repository)
            .and_then(|r| r.github.clone())
        else {
            return Ok(());
        };
        let Some(settings) = self.config.github.clone() else {
            return Ok(());
        };
        if !crate::policy::is_commit_sha(&detail.run.head_sha) {
            // A rejected event's sha as it was sent: no commit to report on, and text that
            // must not reach a URL or a comment.
            return Ok(());
        }
        if detail.run.event == proto_types::EventKind::Drift {
            // A drift run reports on its repository's drift issue, not on the commit: the
            // commit's status is its push run's.
            if detail.run.state.is_final() {
                self.report_drift(&repo, &detail.run.repository).await?;
            }
            return Ok(());
        }
        let links = Links {
            commit: Some(format!(
                "{}/{repo}/commit/{}",
                self.github.web_url(),
                detail.run.head_sha
            )),
            details: self.details_url(&settings, detail.run.run_id),
        };
        if !siblings.superseded {
            // One read of the pull requests open at the run's head serves both questions asked
            // of it: whether the run may write there, and which siblings still count.
            let must_vouch =
                detail.run.pull_request.is_some() && self.config.dispatcher.oidc.is_some();
            let open_at_its_head = if must_vouch || !siblings.on_its_commit.is_empty() {
                self.github
                    .open_pulls_headed_at(&repo, &detail.run.head_sha)
                    .await?
            } else {
                BTreeSet::new()
            };
            if !must_vouch || vouched_for_its_commit(detail, &open_at_its_head) {
                let on_its_commit = still_open(&siblings.on_its_commit, &open_at_its_head);
                self.set_statuses(&repo, &settings, detail, &on_its_commit)
                    .await?;
                let left = match siblings.on_the_commit_it_left.first() {
                    Some(first) => {
                        let open = self
                            .github
                            .open_pulls_headed_at(&repo, &first.run.head_sha)
                            .await?;
                        still_open(&siblings.on_the_commit_it_left, &open)
                    }
                    None => Vec::new(),
                };
                if let Some((newest, others)) = left.split_last() {
                    self.set_statuses(&repo, &settings, newest, others).await?;
                }
            }
        }
        if let Some(number) = detail.run.pull_request {
            let body = report::pull_request_comment(detail, outputs, &links);
            self.upsert_comment(&repo, number, &body).await?;
        } else {
            if report::needs_approval_comment(detail) {
                self.report_approvals(&repo, detail, outputs, &links)
                    .await?;
            }
            if detail.run.state == RunPhase::Failed {
                let open_issue = settings.open_issue_on_apply_failure;
                self.report_failed_apply(&repo, detail, outputs, &links, open_issue)
                    .await?;
            }
        }
        Ok(())
    }

    /// `[github] details_url` when set, else the run's page on the dispatcher's web page when
    /// users can reach it (`dispatcher.public_url`).
    fn details_url(&self, settings: &config::GitHub, run_id: Uuid) -> Option<String> {
        settings
            .details_url
            .as_ref()
            .map(|url| url.replace("{run_id}", &run_id.to_string()))
            .or_else(|| {
                let public = self.config.dispatcher.public_url.as_ref()?;
                Some(format!("{}/runs/{run_id}", public.trim_end_matches('/')))
            })
    }

    /// The statuses of `detail`'s commit: its own, or the worst of `others`' (the newest runs
    /// of the other pull requests with that head).
    async fn set_statuses(
        &self,
        repo: &str,
        settings: &config::GitHub,
        detail: &RunDetail,
        others: &[RunDetail],
    ) -> Result<(), GitHubError> {
        let context = &settings.status_context;
        let details = self.details_url(settings, detail.run.run_id);
        let theirs = |status: fn(&RunDetail, &str) -> Option<CommitStatus>| {
            others
                .iter()
                .filter_map(|other| Some((other.run.pull_request?, status(other, context)?)))
                .collect::<Vec<_>>()
        };
        let status = report::worst_status(
            report::commit_status(detail, context),
            &theirs(|other, context| Some(report::commit_status(other, context))),
        );
        self.github
            .set_status(repo, &detail.run.head_sha, &status, details.as_deref())
            .await?;
        if let Some(policy) = report::policy_status(detail, context) {
            let policy = report::worst_status(policy, &theirs(report::policy_status));
            self.github
                .set_status(repo, &detail.run.head_sha, &policy, details.as_deref())
                .await?;
        }
        Ok(())
    }

    /// The repository's living drift issue, after a drift run: opened at the first drift,
    /// updated when what drifted changes (the same drift seen again says nothing new), closed
    /// once every unit is back in sync.
    async fn report_drift(&mut self, repo: &str, repository: &str) -> Result<(), GitHubError> {
        let read = crate::store::off_runtime(|| -> Result<_, StoreError> {
            let store = Store::connect_read_only(&self.store)?;
            Ok((
                store.drift_running(repository)?,
                store.drift_units(Some(repository))?,
                store.drift_report(repository)?,
            ))
        });
        let (units, reported) = match read {
            // Half of the findings are a newer run's: that run reports when it ends.
            Ok((true, _, _)) => return Ok(()),
            Ok((false, units, reported)) => (units, reported),
            Err(err) => {
                tracing::warn!(repository, error = %err, "Cannot read the drift findings for the drift issue.");
                return Ok(());
            }
        };
        let reported = reported.unwrap_or_default();
        let fingerprint = crate::drift::fingerprint(&units);
        if fingerprint == reported.notified {
            tracing::info!(
                repository,
                "Drift unchanged since the last report: the issue stays as it is."
            );
            return Ok(());
        }
        let now = crate::clock::now_ms();
        let wants_pull = self
            .config
            .drift_of(repository)
            .is_some_and(|drift| drift.open_pull_request);
        // The branch is pushed again for the new drift; its pull request, when one is open
        // already, follows the push, so only the first drift opens one.
        let (pull, pull_failed) = match crate::drift::pull_request(repository, &units) {
            Some(pull) if wants_pull => {
                match self
                    .open_drift_pull_request(repo, repository, &pull, reported.pull_request)
                    .await
                {
                    Some(number) => (Some(number), false),
                    None => (reported.pull_request, true),
                }
            }
            _ => (None, false),
        };
        let issue = crate::drift::issue(repository, &units, now, pull);
        let number = match reported.issue {
            Some(number) => {
                self.github
                    .update_issue(repo, number, &issue.body, issue.open)
                    .await?;
                Some(number)
            }
            None if issue.open => {
                self.github
                    .create_issue(repo, issue.title, &issue.body)
                    .await?
            }
            None => None,
        };
        tracing::info!(repository, issue = ?number, open = issue.open, "Drift issue updated.");
        let report = crate::store::DriftReport {
            issue: number,
            // A pull request that could not be opened is tried again by the next drift run.
            notified: if pull_failed {
                String::new()
            } else {
                fingerprint
            },
            // Once all is back in sync, the next drift gets a pull request of its own.
            pull_request: pull.filter(|_| issue.open),
        };
        let recorded = crate::store::off_runtime(|| {
            Store::connect(&self.store)
                .and_then(|mut store| store.set_drift_report(repository, &report, now))
        });
        if let Err(err) = recorded {
            tracing::warn!(repository, error = %err, "Cannot record the drift issue; the next drift run updates it again.");
        }
        Ok(())
    }

    /// Pushes the drift branch recording the drift in each drifted unit's `.drift-history.json`,
    /// from the deploy branch's head, and opens its pull request unless `open` (one opened
    /// before, which the push updates) says it is. `None` (logged) when any step fails: the
    /// drift issue goes out all the same.
    async fn open_drift_pull_request(
        &mut self,
        repo: &str,
        repository: &str,
        pull: &crate::drift::DriftPullRequest,
        open: Option<u64>,
    ) -> Option<u64> {
        let configured = self.config.repository(repository)?;
        let canonical = crate::canonical::Canonical::of(&self.config, &self.state_dir, configured);
        let branch = &configured.deploy_branch;
        let mirror = crate::canonical::exclusive().await;
        let pushed = async {
            let head = canonical.fetch(branch).await?;
            let mut files = Vec::with_capacity(pull.entries.len());
            for (path, entry) in &pull.entries {
                let previous = canonical.read(&head, path).await?;
                files.push((
                    path.clone(),
                    proto_types::append_drift_history(previous.as_deref(), entry.clone()),
                ));
            }
            canonical
                .push_commit(&head, &files, &pull.message, DRIFT_AUTHOR, &pull.branch)
                .await
        }
        .await;
        drop(mirror);
        if let Err(err) = pushed {
            tracing::error!(repository, branch = %pull.branch, error = %err, "Cannot push the drift branch; the drift issue says what drifted without a pull request.");
            return None;
        }
        if open.is_some() {
            tracing::info!(repository, branch = %pull.branch, pull_request = ?open, "Drift branch pushed again: its open pull request follows.");
            return open;
        }
        match self
            .github
            .create_pull(repo, &pull.title, &pull.branch, branch, &pull.body)
            .await
        {
            Ok(number) => {
                tracing::info!(repository, branch = %pull.branch, pull_request = ?number, "Drift pull request opened.");
                number
            }
            Err(err) => {
                tracing::error!(repository, branch = %pull.branch, error = %err, "Cannot open the drift pull request; its branch is pushed.");
                None
            }
        }
    }

    /// A push whose applies wait for an approver: one comment on the merged pull request the
    /// commit came from, saying who may approve and since when, updated until the run ends.
    async fn report_approvals(
        &mut self,
        repo: &str,
        detail: &RunDetail,
        outputs: &BTreeMap<Uuid, String>,
        links: &Links,
    ) -> Result<(), GitHubError> {
        let run_id = detail.run.run_id;
        let body = report::approval_comment(detail, outputs, links);
        match self.approval_comments.get(&run_id) {
            Some(&(_, id)) => self.github.update_comment(repo, id, &body).await?,
            None => {
                let pulls = self
                    .github
                    .pulls_for_commit(repo, &detail.run.head_sha)
                    .await?;
                let Some(&(number, _)) = pulls.first() else {
                    return Ok(());
                };
                let marker = report::approval_marker(run_id);
                let id = match self.github.find_comment(repo, number, &marker).await? {
                    Some(id) => {
                        self.github.update_comment(repo, id, &body).await?;
                        Some(id)
                    }
                    None => self.github.create_comment(repo, number, &body).await?,
                };
                if let Some(id) = id {
                    self.approval_comments.insert(run_id, (number, id));
                }
            }
        }
        if detail.run.state.is_final() {
            // Its last update is sent: nothing to remember.
            self.approval_comments.remove(&run_id);
        }
        Ok(())
    }

    /// Updates the pull request's living comment, or writes it when there is none.
    async fn upsert_comment(
        &mut self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<(), GitHubError> {
        let key = (repo.to_owned(), number);
        let known = match self.comments.get(&key) {
            Some(id) => Some(*id),
            None => {
                self.github
                    .find_comment(repo, number, report::COMMENT_MARKER)
                    .await?
            }
        };
        match known {
            Some(id) => self.github.update_comment(repo, id, body).await?,
            None => {
                if let Some(id) = self.github.create_comment(repo, number, body).await? {
                    self.comments.insert(key.clone(), id);
                }
            }
        }
        if let Some(id) = known {
            self.comments.insert(key, id);
        }
        Ok(())
    }

    /// A failed apply on the deploy branch: a comment on the merged pull request the commit
    /// came from (once per run), and an issue if configured.
    async fn report_failed_apply(
        &mut self,
        repo: &str,
        detail: &RunDetail,
        outputs: &BTreeMap<Uuid, String>,
        links: &Links,
        open_issue: bool,
    ) -> Result<(), GitHubError> {
        let body = report::apply_failure_comment(detail, outputs, links);
        let marker = report::apply_failure_marker(detail.run.run_id);
        let pulls = self
            .github
            .pulls_for_commit(repo, &detail.run.head_sha)
            .await?;
        let mut reported = false;
        if let Some((number, _)) = pulls.first() {
            if self
                .github
                .find_comment(repo, *number, &marker)
                .await?
                .is_some()
            {
                return Ok(());
            }
            self.github.create_comment(repo, *number, &body).await?;
            reported = true;
        }
        if open_issue && (reported || pulls.is_empty()) {
            let title = report::apply_failure_issue_title(detail);
            self.github.create_issue(repo, &title, &body).await?;
        }
        Ok(())
    }
}

/// Whether a pull request's run may write its own statuses on its commit under
/// `[dispatcher.oidc]`: its token vouches for its number, not for the commit its event names,
/// so they go there only while GitHub says that pull request is open with it as its head
/// (`open_at_its_head`), and one pull request's CI cannot mark another's head.
fn vouched_for_its_commit(detail: &RunDetail, open_at_its_head: &BTreeSet<u64>) -> bool {
    let vouched = detail
        .run
        .pull_request
        .is_some_and(|number| open_at_its_head.contains(&number));
    if !vouched {
        tracing::warn!(run_id = %detail.run.run_id, pull_request = ?detail.run.pull_request, sha = %detail.run.head_sha, "A pull request's run names a commit that is not its head on GitHub: no status written there.");
    }
    vouched
}

/// Of `runs` (pull requests' runs at one commit), those whose pull request GitHub says is
/// open with that commit as its head (`open_there`): a closed pull request's failure, or a
/// number an event made up, does not hold the commit's status.
fn still_open(runs: &[RunDetail], open_there: &BTreeSet<u64>) -> Vec<RunDetail> {
    runs.iter()
        .filter(|run| {
            run.run
                .pull_request
                .is_some_and(|number| open_there.contains(&number))
        })
        .cloned()
        .collect()
}

/// The runs whose statuses share a commit with a reported run: the newest runs of the other
/// pull requests with its head, and the newest runs of those still at the commit its pull
/// request left, if it just moved on. Rejected runs are not among them (their pull request
/// number is the event's word alone), and the reporter keeps only the pull requests GitHub
/// says are open with that head.
#[derive(Debug, Default)]
pub(crate) struct Siblings {
    /// The run is no longer its pull request's newest: the commit's statuses are the newer
    /// run's to write.
    pub(crate) superseded: bool,
    pub(crate) on_its_commit: Vec<RunDetail>,
    pub(crate) on_the_commit_it_left: Vec<RunDetail>,
}

impl Siblings {
    /// Empty for a push or drift run: their statuses are their own.
    pub(crate) fn read(
        store: &Store,
        detail: &RunDetail,
        now: u64,
    ) -> Result<Siblings, StoreError> {
        let run = &detail.run;
        let Some(number) = run.pull_request else {
            return Ok(Siblings::default());
        };
        let on_its_head = store.pull_request_runs_on(&run.repository, &run.head_sha)?;
        if !on_its_head.contains(&run.run_id) {
            return Ok(Siblings {
                superseded: true,
                ..Siblings::default()
            });
        }
        let others_among = |run_ids: Vec<Uuid>| -> Result<Vec<RunDetail>, StoreError> {
            let mut others = Vec::new();
            for run_id in run_ids {
                let other = store.run_detail(&run_id.to_string(), now)?;
                if other.run.pull_request != Some(number) && other.run.state != RunPhase::Rejected {
                    others.push(other);
                }
            }
            Ok(others)
        };
        let left = match store.previous_head(&run.repository, number, run.run_id)? {
            Some(sha) if sha != run.head_sha => {
                others_among(store.pull_request_runs_on(&run.repository, &sha)?)?
            }
            _ => Vec::new(),
        };
        Ok(Siblings {
            superseded: false,
            on_its_commit: others_among(on_its_head)?,
            on_the_commit_it_left: left,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pending_tests {
    use super::*;

    #[test]
    fn a_run_that_changes_often_waits_once_and_the_set_is_bounded() {
        let pending = Pending::default();
        let run = Uuid::new_v4();
        for _ in 0..1_000 {
            assert!(pending.add(run));
        }
        assert_eq!(pending.take(), BTreeSet::from([run]));
        for _ in 0..MAX_PENDING {
            assert!(pending.add(Uuid::new_v4()));
        }
        assert!(!pending.add(Uuid::new_v4()), "the set is full");
        assert_eq!(pending.take().len(), MAX_PENDING);
        assert!(pending.add(run), "room again once taken");
    }
}
