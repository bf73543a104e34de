//! Which of several dispatchers sharing a PostgreSQL database leads: the lease taken and
//! renewed in the database, standing by while another holds it, and the signal that it was
//! lost.
//!
//! The lease is only half of it. A leader that stalls (a long GC-like pause, SIGSTOP, a
//! network partition) may wake up after a standby took over, still believing it leads; the
//! term it took the lead with is therefore checked by every write transaction
//! ([`Store::fenced_by`]), and its writes are refused once a newer term exists. A deposed
//! leader exits: nothing it holds in memory may outlive its term, and its supervisor starts
//! it again as a standby.
//!
//! A write is fenced; an answer is not. A deposed leader that wakes with claims in its
//! buffer would answer them from what it last knew ("unknown job": the worker drops the
//! delivery) before its next write or renewal found it out. So it also keeps its own clock of
//! the lease ([`LeaseClock`]), from when it last asked for it; once that clock ran out, it
//! renews the lease itself before it answers, and steps down if another took it.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telemetry::Ops;
use tokio::sync::watch;

use crate::store::{Store, StoreError, StoreLocation, off_runtime};

/// 1 while this dispatcher leads, 0 while it stands by.
pub const LEADER_METRIC: &str = "pipelines_dispatcher_leader";
/// The term this dispatcher leads in (0 while standing by).
pub const TERM_METRIC: &str = "pipelines_dispatcher_leader_term";

/// This dispatcher's lead, renewed in the background until it is dropped or resigned.
#[derive(Debug)]
pub struct Leadership {
    clock: LeaseClock,
    location: StoreLocation,
    lost: watch::Receiver<Option<String>>,
    renewer: tokio::task::JoinHandle<()>,
}

/// When the lease of a term ends by this process's monotonic clock: a twentieth of the lease
/// before the time it asked for its last renewal (or for the lead) plus the lease. The
/// database starts the lease when the request reaches it, later than it was asked for, so
/// while this clock has not run out no standby can have taken over.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    pub term: i64,
    pub holder: String,
    pub lease: Duration,
    ends: Arc<Mutex<Instant>>,
}

impl LeaseClock {
    /// `holder`'s lease of `term`, asked for at `asked`, lasting `lease`.
    pub fn new(term: i64, holder: &str, asked: Instant, lease: Duration) -> LeaseClock {
        LeaseClock {
            term,
            holder: holder.to_owned(),
            lease,
            ends: Arc::new(Mutex::new(Self::end(asked, lease))),
        }
    }

    fn end(asked: Instant, lease: Duration) -> Instant {
        asked + lease - lease / 20
    }

    /// A renewal asked for at `asked` succeeded.
    pub fn renewed(&self, asked: Instant) {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        *ends = (*ends).max(Self::end(asked, self.lease));
    }

    /// Whether no standby can have taken over yet, by this process's clock. When not, only
    /// the database can say (renewing the lease, [`Store::renew_lead`]).
    pub fn running(&self) -> bool {
        Instant::now() < *self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease in milliseconds, as the database takes it.
    pub fn lease_ms(&self) -> u64 {
        in_ms(self.lease)
    }
}

/// A lease in milliseconds, as the database takes it.
fn in_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

/// A name for this process among the dispatchers: host, pid and a random part, so that a
/// restarted process never passes for its predecessor.
pub fn holder_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "dispatcher".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &nonce[..8])
}

/// Stands by until this dispatcher takes the lead of `location`'s dispatchers, then renews
/// it every third of `lease`. `None`: `shutdown` came first. Lost connections are waited out;
/// any other database error is returned.
pub async fn lead(
    location: &StoreLocation,
    holder: &str,
    lease: Duration,
    ops: &Ops,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Option<Leadership>, StoreError> {
    ops.metrics.gauge(
        LEADER_METRIC,
        "1 while this dispatcher leads, 0 while it stands by.",
    );
    ops.metrics.gauge(
        TERM_METRIC,
        "The term this dispatcher leads in; 0 while it stands by.",
    );
    ops.metrics.set(LEADER_METRIC, &[], 0.0);
    tokio::pin!(shutdown);
    let lease_ms = in_ms(lease);
    let mut store: Option<Store> = None;
    let mut last_seen: Option<String> = None;
    loop {
        let asked = Instant::now();
        let tried = off_runtime(|| -> Result<_, StoreError> {
            let connected = match store.take() {
                Some(store) => store,
                None => Store::connect(location)?,
            };
            let outcome = match connected.try_lead(holder, lease_ms)? {
                Some(term) => Ok(term),
                None => Err(connected.leader()?),
            };
            store = Some(connected);
            Ok(outcome)
        });
        match tried {
            Ok(Ok(term)) => {
                tracing::info!(
                    holder,
                    term,
                    lease_s = lease.as_secs(),
                    "Leading the dispatchers."
                );
                ops.metrics.set(LEADER_METRIC, &[], 1.0);
                ops.metrics.set(TERM_METRIC, &[], term as f64);
                let (tell, lost) = watch::channel(None);
                let clock = LeaseClock::new(term, holder, asked, lease);
                let renewer = tokio::spawn(renew(location.clone(), clock.clone(), tell));
                return Ok(Some(Leadership {
                    clock,
                    location: location.clone(),
                    lost,
                    renewer,
                }));
            }
            Ok(Err(leader)) => {
                let leads = leader
                    .as_ref()
                    .map(|leader| format!("{} leads (term {})", leader.holder, leader.term));
                if leads != last_seen {
                    if let Some(leads) = &leads {
                        tracing::info!(holder, "Standing by: {leads}.");
                    }
                    last_seen = leads.clone();
                }
                ops.health.set_not_ready(format!(
                    "standing by: {}",
                    leads.unwrap_or_else(|| "the lead is being taken".into())
                ));
            }
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, "Cannot reach the run database to take the lead; trying again.");
                ops.health.set_not_ready(err.to_string());
                store = None;
            }
            Err(err) => return Err(err),
        }
        // A quarter of the lease: a lapsed lease is taken within that much of its end.
        tokio::select! {
            () = tokio::time::sleep(lease / 4) => {}
            () = &mut shutdown => return Ok(None),
        }
    }
}

/// Renews the lead every third of the lease, on a connection of its own. Says why it was
/// lost: another dispatcher took over, or the lease ran out before it could be renewed (the
/// database was unreachable for that long, so a standby may have taken over).
async fn renew(location: StoreLocation, clock: LeaseClock, lost: watch::Sender<Option<String>>) {
    let (term, lease, lease_ms) = (clock.term, clock.lease, clock.lease_ms());
    // The connection lives in a blocking thread's hands while a renewal runs; a renewal that
    // does not answer within a third of the lease (a hung server, a partition that sends no
    // reset) is abandoned with its connection, so the lease's end is noticed on time, and the
    // next renewal opens another.
    let store: std::sync::Arc<std::sync::Mutex<Option<Store>>> = Default::default();
    let mut renewed = tokio::time::Instant::now();
    let mut asked = Instant::now();
    let mut failing = false;
    loop {
        // A third of the lease after the last renewal was asked for (not after it came back):
        // a slow or abandoned one does not push the next one past the lease's end.
        tokio::time::sleep_until((asked + lease / 3).into()).await;
        asked = Instant::now();
        let (held, location, holder) = (store.clone(), location.clone(), clock.holder.clone());
        let renewal = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
            // Taken out, not used under the lock: a renewal that hangs keeps its connection to
            // itself, and the next one connects again instead of waiting for it.
            let taken = held.lock().unwrap_or_else(|e| e.into_inner()).take();
            let connected = match taken {
                Some(store) => store,
                None => Store::connect(&location)?,
            };
            let still = connected.renew_lead(&holder, term, lease_ms)?;
            // A renewal that comes back after a later one opened another connection drops its
            // own: one kept is enough.
            held.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(connected);
            Ok(still)
        });
        let attempt = match tokio::time::timeout(lease / 3, renewal).await {
            Ok(Ok(attempt)) => attempt.map_err(|err| err.to_string()),
            Ok(Err(panicked)) => Err(panicked.to_string()),
            Err(_) => Err(format!("no answer within {:?}", lease / 3)),
        };
        match attempt {
            Ok(true) => {
                renewed = tokio::time::Instant::now();
                clock.renewed(asked);
                if std::mem::take(&mut failing) {
                    tracing::info!(term, "Renewed the lead again.");
                }
            }
            Ok(false) => {
                let _ = lost.send(Some(format!(
                    "another dispatcher took the lead from term {term}"
                )));
                return;
            }
            Err(err) => {
                if renewed.elapsed() >= lease {
                    let _ = lost.send(Some(format!(
                        "the lease of term {term} ran out before it could be renewed ({err})"
                    )));
                    return;
                }
                failing = true;
                tracing::warn!(error = %err, term, "Cannot renew the lead; trying again before the lease runs out.");
            }
        }
    }
}

impl Leadership {
    /// The term this dispatcher leads in.
    pub fn term(&self) -> i64 {
        self.clock.term
    }

    /// The lease's end by this process's clock, for the dispatcher to check before it answers.
    pub fn clock(&self) -> LeaseClock {
        self.clock.clone()
    }

    /// Exits the process as soon as the lead is lost, from a task of its own: the dispatcher's
    /// loop may be blocked in a statement that never returns (the database hung), and a
    /// deposed leader must not hold its deliveries until then. Exit code 3.
    pub fn exit_when_lost(&self) {
        let mut lost = self.lost.clone();
        tokio::spawn(async move {
            loop {
                if let Some(reason) = lost.borrow_and_update().clone() {
                    tracing::error!(%reason, "This dispatcher steps down (its supervisor starts it again as a standby).");
                    // Not eprintln!: it panics when stderr is closed, which would end this
                    // task instead of the process and leave a deposed leader running.
                    let _ = writeln!(
                        std::io::stderr(),
                        "error: {reason}: this dispatcher steps down"
                    );
                    std::process::exit(3);
                }
                if lost.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Gives the lead up (a clean shutdown), so that a standby takes over at once rather than
    /// when the lease runs out.
    pub async fn resign(self) {
        let (location, holder, term) = (
            self.location.clone(),
            self.clock.holder.clone(),
            self.clock.term,
        );
        // Stops the renewal task first: a renewal after the resignation would take the lead
        // back. (One already asked on a blocking thread may still land after it; the lease
        // then ends a lease later, and a standby takes over as from a leader that stopped.)
        drop(self);
        let resigned = tokio::task::spawn_blocking(move || {
            Store::connect(&location).and_then(|store| store.resign(&holder, term))
        })
        .await;
        match resigned {
            Ok(Ok(())) => tracing::info!(term, "Gave up the lead."),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, term, "Cannot give up the lead; a standby takes over when the lease runs out.");
            }
            Err(_) => {}
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
