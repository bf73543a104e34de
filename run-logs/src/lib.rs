//! Directories of run logs, `<root>/<run id>/…`, kept within an age, a size and the disk's
//! free space: the dispatcher's log store and every worker's own log directory.
//!
//! What a pull request's plan prints is written to disk, and the plan decides how much. Each
//! log has its own cap; this crate bounds the rest. A run's logs together stay under
//! `per_run`, all runs' logs under `total`, and no log is written into the last `keep_free`
//! bytes of its filesystem. When a write needs room, the logs of the runs written longest ago
//! go first, as journald vacuums its oldest files, but runs marked to be kept longer
//! ([`RunLogs::keep_longer`]: the dispatcher marks pushes', whose applies are the audit trail)
//! only once no other is left. A run written in the last [`IDLE_BEFORE_EVICTION`] is never
//! evicted: its logs are likely still being written. (A run can still be evicted while a job
//! of it waits, for an approval say; that job's log starts afresh, and the caller drops late
//! chunks of a log that went.) What cannot be made room for is not written, and the caller
//! says so in the log's end.
//!
//! Only directories named by a run id count and are ever deleted: anything else an operator
//! keeps beside them stays. Symbolic links are neither followed nor deleted through. The sizes
//! are counted once (on first use) and then kept in memory, so a write costs no walk of the
//! directory; the filesystem's free space is read again every [`CHECK_FREE_EVERY`] bytes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// A run written to within this long is never evicted to make room for another.
pub const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(600);
/// Bytes written between two reads of the filesystem's free space.
pub const CHECK_FREE_EVERY: u64 = 1 << 20;
/// Runs whose logs went that are remembered, so that a late write to one is refused instead
/// of starting its log again with a hole.
const GONE_REMEMBERED: usize = 4096;
/// The file in a run's directory that marks it to be kept longer.
const KEEP_LONGER: &str = ".keep-longer";

/// How much room logs may take. `u64::MAX` (or 0 for `keep_free`) means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes one run's logs may take.
    pub per_run: u64,
    /// Bytes all runs' logs may take.
    pub total: u64,
    /// Bytes left free on the filesystem that holds the logs.
    pub keep_free: u64,
}

impl Budget {
    /// No limit at all.
    pub const UNLIMITED: Budget = Budget {
        per_run: u64::MAX,
        total: u64::MAX,
        keep_free: 0,
    };

    /// From settings where 0 means no limit (`max_run_log_bytes = 0`, and so on).
    pub fn from_settings(per_run: u64, total: u64, keep_free: u64) -> Budget {
        let limit = |bytes: u64| if bytes == 0 { u64::MAX } else { bytes };
        Budget {
            per_run: limit(per_run),
            total: limit(total),
            keep_free,
        }
    }
}

/// What stopped a write short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The run's logs reached [`Budget::per_run`].
    Run,
    /// All logs reached [`Budget::total`], and no idle run's logs were left to evict.
    Total,
    /// The filesystem reached [`Budget::keep_free`], and no idle run's logs were left to evict.
    Disk,
}

impl Limit {
    /// The configuration's word for it, for a log's end and the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Run => "run",
            Limit::Total => "total",
            Limit::Disk => "disk",
        }
    }
}

/// The answer to [`RunLogs::room`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// Bytes that may be written now (at most what was asked).
    pub bytes: u64,
    /// Why it is less than what was asked.
    pub short: Option<Limit>,
    /// Runs whose logs were deleted to make the room (each is logged too).
    pub evicted: Vec<Evicted>,
}

/// A run whose logs were deleted to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub run_id: Uuid,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    bytes: u64,
    newest: SystemTime,
    /// Evicted only after every idle run without it.
    keep_longer: bool,
}

/// The log directory's runs, their sizes and the budget they are kept within.
#[derive(Debug)]
pub struct RunLogs {
    root: PathBuf,
    budget: Budget,
    /// `None` until the directory is first counted.
    runs: Option<HashMap<Uuid, Usage>>,
    total: u64,
    /// Free bytes at the last read, less what was written since.
    free: u64,
    /// Bytes written since the last read of the free space.
    unread: u64,
    /// Runs whose logs were evicted or pruned (bounded): a late chunk of one of their logs is
    /// dropped, while a new log (from its start) may begin.
    gone: HashSet<Uuid>,
}

impl RunLogs {
    /// The runs under `root` (counted on first use, not here: this does no I/O).
    pub fn new(root: impl Into<PathBuf>, budget: Budget) -> RunLogs {
        RunLogs {
            root: root.into(),
            budget,
            runs: None,
            total: 0,
            free: 0,
            unread: u64::MAX,
            gone: HashSet::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Bytes all runs' logs take, as counted (blocking on first use).
    pub fn total_bytes(&mut self) -> u64 {
        self.counted();
        self.total
    }

    /// Bytes `run_id`'s logs take, as counted (blocking on first use).
    pub fn run_bytes(&mut self, run_id: Uuid) -> u64 {
        self.counted().get(&run_id).map_or(0, |usage| usage.bytes)
    }

    /// Whether `run_id`'s logs were deleted (evicted, or pruned by age) since this started: a
    /// chunk of one of them from its middle would start that log again with a hole.
    pub fn is_gone(&self, run_id: Uuid) -> bool {
        self.gone.contains(&run_id)
    }

    /// Marks `run_id`'s logs to be evicted only after every other idle run's (blocking: the
    /// mark is a file in the run's directory, so that it outlives a restart).
    pub fn keep_longer(&mut self, run_id: Uuid, now: SystemTime) {
        let root = self.root.clone();
        let usage = self.counted().entry(run_id).or_insert(Usage {
            bytes: 0,
            newest: now,
            keep_longer: false,
        });
        if usage.keep_longer {
            return;
        }
        usage.keep_longer = true;
        let dir = root.join(run_id.to_string());
        let _ =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(KEEP_LONGER), ""));
    }

    /// How many of `wanted` more bytes `run_id`'s logs may take now. Evicts the logs of the
    /// runs written longest ago (never `run_id`, never one written within
    /// [`IDLE_BEFORE_EVICTION`] of `now`) while that makes room (blocking).
    pub fn room(&mut self, run_id: Uuid, wanted: u64, now: SystemTime) -> Room {
        self.counted();
        let mut room = Room {
            bytes: wanted,
            short: None,
            evicted: Vec::new(),
        };
        if wanted == 0 {
            return room;
        }
        let used = self.run_bytes(run_id);
        let run_left = self.budget.per_run.saturating_sub(used);
        if run_left < room.bytes {
            room.bytes = run_left;
            room.short = Some(Limit::Run);
        }
        if room.bytes == 0 {
            return room;
        }
        // Evict until both the total and the disk have room, or nothing idle is left.
        loop {
            let total_left = self.budget.total.saturating_sub(self.total);
            let disk_left = self.free_bytes().saturating_sub(self.budget.keep_free);
            if total_left >= room.bytes && disk_left >= room.bytes {
                break;
            }
            match self.evict_oldest_idle(run_id, now) {
                Some(evicted) => {
                    tracing::info!(
                        run_id = %evicted.run_id,
                        bytes = evicted.bytes,
                        for_run = %run_id,
                        "Deleted the logs of the run written longest ago, to make room."
                    );
                    room.evicted.push(evicted);
                }
                None => {
                    if total_left < room.bytes {
                        room.bytes = total_left;
                        room.short = Some(Limit::Total);
                    }
                    if disk_left < room.bytes {
                        room.bytes = disk_left;
                        room.short = Some(Limit::Disk);
                    }
                    break;
                }
            }
        }
        room
    }

    /// Counts `bytes` more written to `run_id`'s logs at `now`.
    pub fn wrote(&mut self, run_id: Uuid, bytes: u64, now: SystemTime) {
        let runs = self.counted();
        let usage = runs.entry(run_id).or_insert(Usage {
            bytes: 0,
            newest: now,
            keep_longer: false,
        });
        usage.bytes = usage.bytes.saturating_add(bytes);
        usage.newest = usage.newest.max(now);
        self.total = self.total.saturating_add(bytes);
        self.free = self.free.saturating_sub(bytes);
        self.unread = self.unread.saturating_add(bytes);
    }

    /// Gives back `bytes` counted to `run_id` by [`RunLogs::wrote`] and not written after all
    /// (room claimed ahead of the writes, a block at a time).
    pub fn unwrote(&mut self, run_id: Uuid, bytes: u64) {
        let Some(usage) = self.counted().get_mut(&run_id) else {
            return;
        };
        let bytes = bytes.min(usage.bytes);
        usage.bytes -= bytes;
        self.total = self.total.saturating_sub(bytes);
        // The free space is left as counted: it may have been read from the disk since the
        // claim, without those bytes. It is read again within CHECK_FREE_EVERY.
    }

    /// Deletes the logs of runs not written to since `before` (blocking). Returns how many
    /// runs' logs went.
    pub fn prune_older_than(&mut self, before: SystemTime) -> usize {
        let old: Vec<Uuid> = self
            .counted()
            .iter()
            .filter(|(_, usage)| usage.newest < before)
            .map(|(run_id, _)| *run_id)
            .collect();
        old.into_iter()
            .filter(|run_id| self.delete(*run_id).is_some())
            .count()
    }

    /// The free bytes of the filesystem, read again when enough was written since the last
    /// read. A filesystem that cannot be read counts as having room: a log is worth less
    /// than the job that writes it.
    fn free_bytes(&mut self) -> u64 {
        if self.unread >= CHECK_FREE_EVERY || self.free <= self.budget.keep_free {
            self.free = free_bytes(&self.root).unwrap_or(u64::MAX);
            self.unread = 0;
        }
        self.free
    }

    /// Deletes the idle run written longest ago, those kept longer last; a run that cannot be
    /// deleted is forgotten (see [`RunLogs::delete`]) and the next one tried.
    fn evict_oldest_idle(&mut self, except: Uuid, now: SystemTime) -> Option<Evicted> {
        let idle_since = now.checked_sub(IDLE_BEFORE_EVICTION)?;
        loop {
            let oldest = self
                .counted()
                .iter()
                .filter(|(run_id, usage)| **run_id != except && usage.newest <= idle_since)
                .min_by_key(|(_, usage)| (usage.keep_longer, usage.newest))
                .map(|(run_id, _)| *run_id)?;
            if let Some(bytes) = self.delete(oldest) {
                // What was deleted shows in the free space at once.
                self.unread = CHECK_FREE_EVERY;
                return Some(Evicted {
                    run_id: oldest,
                    bytes,
                });
            }
        }
    }

    /// Deletes one run's directory; its bytes, or `None` when it could not be deleted (it is
    /// then forgotten all the same, so that it is not tried on every write).
    fn delete(&mut self, run_id: Uuid) -> Option<u64> {
        let usage = self.counted().remove(&run_id)?;
        self.total = self.total.saturating_sub(usage.bytes);
        if self.gone.len() >= GONE_REMEMBERED {
            self.gone.clear();
        }
        self.gone.insert(run_id);
        let path = self.root.join(run_id.to_string());
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Some(usage.bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some(usage.bytes),
            Err(_) => None,
        }
    }

    fn counted(&mut self) -> &mut HashMap<Uuid, Usage> {
        if self.runs.is_none() {
            let runs = count(&self.root);
            self.total = runs
                .values()
                .fold(0u64, |sum, usage| sum.saturating_add(usage.bytes));
            self.runs = Some(runs);
        }
        self.runs.get_or_insert_with(HashMap::new)
    }
}

/// One log directory's [`RunLogs`], shared by the threads that write logs and the task that
/// prunes them.
#[derive(Debug, Clone)]
pub struct SharedRunLogs(Arc<Mutex<RunLogs>>);

impl SharedRunLogs {
    pub fn new(root: impl Into<PathBuf>, budget: Budget) -> SharedRunLogs {
        SharedRunLogs(Arc::new(Mutex::new(RunLogs::new(root, budget))))
    }

    /// The directory's budget and sizes. Holding the guard can block on the file system (a
    /// first count, an eviction, a prune): take it off async threads, or for one write.
    /// A thread that panicked while holding it left the sizes as they were, which is still
    /// a fair count, so a poisoned lock is taken all the same.
    pub fn lock(&self) -> MutexGuard<'_, RunLogs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The free bytes (for an unprivileged user) of the filesystem holding `path`, or of its
/// nearest existing ancestor.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut at = path;
    loop {
        match rustix::fs::statvfs(at) {
            Ok(stat) => return Ok(stat.f_bavail.saturating_mul(stat.f_frsize)),
            Err(rustix::io::Errno::NOENT) => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(rustix::io::Errno::NOENT.into()),
            },
            Err(err) => return Err(err.into()),
        }
    }
}

/// Every run directory under `root` with the bytes it holds and its newest modification.
fn count(root: &Path) -> HashMap<Uuid, Usage> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let run_id = entry.file_name().to_str()?.parse::<Uuid>().ok()?;
            let meta = entry.metadata().ok()?;
            if !meta.is_dir() {
                return None;
            }
            let mut usage = Usage {
                bytes: 0,
                newest: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                keep_longer: entry.path().join(KEEP_LONGER).exists(),
            };
            add_dir(&entry.path(), &mut usage);
            Some((run_id, usage))
        })
        .collect()
}

fn add_dir(dir: &Path, usage: &mut Usage) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // `DirEntry::metadata` does not follow a symbolic link.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if let Ok(modified) = meta.modified() {
            usage.newest = usage.newest.max(modified);
        }
        if meta.is_dir() {
            add_dir(&entry.path(), usage);
        } else {
            usage.bytes = usage.bytes.saturating_add(meta.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn run(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A run directory holding one log of `bytes`.
    fn log(root: &Path, run_id: Uuid, bytes: usize) {
        let dir = root.join(run_id.to_string()).join("job");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1.log"), vec![b'x'; bytes]).unwrap();
    }

    fn budget(per_run: u64, total: u64) -> Budget {
        Budget {
            per_run,
            total,
            keep_free: 0,
        }
    }

    #[test]
    fn a_run_gets_what_is_left_of_its_budget_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), run(1), 700);
        let mut logs = RunLogs::new(dir.path(), budget(1000, u64::MAX));
        let now = SystemTime::now();
        assert_eq!(logs.run_bytes(run(1)), 700);

        let room = logs.room(run(1), 500, now);
        assert_eq!((room.bytes, room.short), (300, Some(Limit::Run)));
        logs.wrote(run(1), 300, now);
        assert_eq!(logs.room(run(1), 1, now).bytes, 0);
        // Another run has its own budget.
        let room = logs.room(run(2), 500, now);
        assert_eq!((room.bytes, room.short), (500, None));
        assert!(room.evicted.is_empty());
    }

    #[test]
    fn room_claimed_and_given_back_is_free_again_for_the_run_and_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = RunLogs::new(dir.path(), budget(1000, 1500));
        let now = SystemTime::now();
        logs.wrote(run(1), 1000, now);
        assert_eq!(logs.room(run(1), 1, now).bytes, 0);
        assert_eq!(logs.room(run(2), 900, now).bytes, 500);
        // 600 of the 1,000 claimed were never written.
        logs.unwrote(run(1), 600);
        assert_eq!((logs.run_bytes(run(1)), logs.total_bytes()), (400, 400));
        assert_eq!(logs.room(run(1), 600, now).bytes, 600);
        assert_eq!(logs.room(run(2), 900, now).bytes, 900);
        // Never more than was counted, and nothing for a run never written.
        logs.unwrote(run(1), 5000);
        logs.unwrote(run(3), 5000);
        assert_eq!((logs.run_bytes(run(1)), logs.total_bytes()), (0, 0));
    }

    #[test]
    fn past_the_total_the_oldest_idle_run_goes_first_and_never_the_writer_or_a_busy_run() {
        let dir = tempfile::tempdir().unwrap();
        for n in 1..=3 {
            log(dir.path(), run(n), 100);
        }
        std::fs::write(dir.path().join("README"), "kept").unwrap();
        let mut logs = RunLogs::new(dir.path(), budget(u64::MAX, 400));
        let later = SystemTime::now() + HOUR;
        // Run 1 idle longest, run 2 next; run 3 is being written.
        logs.wrote(run(1), 0, later - 3 * IDLE_BEFORE_EVICTION);
        logs.wrote(run(2), 0, later - 2 * IDLE_BEFORE_EVICTION);
        logs.wrote(run(3), 0, later);
        assert_eq!(logs.total_bytes(), 300);

        let room = logs.room(run(4), 150, later);
        assert_eq!((room.bytes, room.short), (150, None));
        let gone: Vec<Uuid> = room.evicted.iter().map(|e| e.run_id).collect();
        assert_eq!(gone, [run(1)]);
        assert!(!dir.path().join(run(1).to_string()).exists());
        assert!(logs.is_gone(run(1)) && !logs.is_gone(run(2)));
        logs.wrote(run(4), 150, later);

        // Run 2 goes next; then only the writer and the busy run are left, so it is cut.
        let room = logs.room(run(4), 1000, later);
        assert_eq!(
            room.evicted.iter().map(|e| e.run_id).collect::<Vec<_>>(),
            [run(2)]
        );
        assert_eq!((room.bytes, room.short), (400 - 250, Some(Limit::Total)));
        assert!(dir.path().join(run(3).to_string()).exists());
        assert!(dir.path().join("README").exists());
    }

    #[test]
    fn runs_kept_longer_go_after_every_other_idle_run_and_the_mark_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        for n in 1..=3 {
            log(dir.path(), run(n), 100);
        }
        let later = SystemTime::now() + HOUR;
        let mut logs = RunLogs::new(dir.path(), budget(u64::MAX, 300));
        // Run 1 is the oldest, but a push's: kept longer.
        logs.keep_longer(run(1), later - 3 * IDLE_BEFORE_EVICTION);
        logs.wrote(run(2), 0, later - 2 * IDLE_BEFORE_EVICTION);
        logs.wrote(run(3), 0, later - IDLE_BEFORE_EVICTION);
        drop(logs);

        let mut logs = RunLogs::new(dir.path(), budget(u64::MAX, 300));
        let room = logs.room(run(4), 150, later);
        let mut gone: Vec<Uuid> = room.evicted.iter().map(|e| e.run_id).collect();
        gone.sort();
        assert_eq!(gone, [run(2), run(3)], "the unmarked runs first");
        let room = logs.room(run(4), 250, later);
        let gone: Vec<Uuid> = room.evicted.iter().map(|e| e.run_id).collect();
        assert_eq!(gone, [run(1)], "then the marked one");
    }

    #[test]
    fn the_last_free_bytes_of_the_disk_are_never_written_and_idle_runs_go_to_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), run(1), 10);
        log(dir.path(), run(2), 10);
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);

        // A filesystem with room for what is asked: nothing goes.
        let mut logs = RunLogs::new(
            dir.path(),
            Budget {
                keep_free: 0,
                ..Budget::UNLIMITED
            },
        );
        let later = SystemTime::now() + HOUR;
        let room = logs.room(run(3), 10, later);
        assert_eq!((room.bytes, room.short, room.evicted.len()), (10, None, 0));

        // Keeping more free than the disk has: every idle run goes, and nothing is written.
        let mut logs = RunLogs::new(
            dir.path(),
            Budget {
                keep_free: u64::MAX,
                ..Budget::UNLIMITED
            },
        );
        logs.wrote(run(2), 0, later);
        let room = logs.room(run(3), 10, later);
        assert_eq!((room.bytes, room.short), (0, Some(Limit::Disk)));
        assert_eq!(
            room.evicted.iter().map(|e| e.run_id).collect::<Vec<_>>(),
            [run(1)]
        );
        assert!(
            dir.path().join(run(2).to_string()).exists(),
            "a busy run stays"
        );
    }

    #[test]
    fn pruning_by_age_deletes_only_old_run_directories() {
        let dir = tempfile::tempdir().unwrap();
        log(dir.path(), run(1), 10);
        log(dir.path(), run(2), 10);
        std::fs::create_dir(dir.path().join("kept-by-an-operator")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(run(3).to_string())).unwrap();
        let mut logs = RunLogs::new(dir.path(), Budget::UNLIMITED);
        let later = SystemTime::now() + HOUR;
        logs.wrote(run(2), 5, later);

        assert_eq!(logs.prune_older_than(later - Duration::from_secs(1)), 1);
        assert!(!dir.path().join(run(1).to_string()).exists());
        assert!(dir.path().join(run(2).to_string()).exists());
        assert!(dir.path().join("kept-by-an-operator").exists());
        assert!(
            outside.path().join("precious").exists(),
            "a link is not followed"
        );
        assert_eq!(logs.total_bytes(), 15);
        assert!(logs.is_gone(run(1)));
    }

    #[test]
    fn free_bytes_of_a_path_not_made_yet_are_its_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(&dir.path().join("not/yet")).unwrap();
        assert!(free > 0);
    }
}
