//! How often a run's status snapshot goes out: at most once per interval while it runs, and its
//! final one at once. A snapshot holds every unit of the run, so sending one per change made a
//! 5,000-job run cost O(jobs) per dispatcher batch; followers need progress, not every step.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// Decides, from plain times, which runs' snapshots to send. Pure.
#[derive(Debug)]
pub struct StatusPacer {
    interval_ms: u64,
    /// When each run's last snapshot went out.
    last_sent: HashMap<Uuid, u64>,
    /// Runs changed since their last snapshot, and when their next one may go out.
    pending: BTreeMap<Uuid, u64>,
}

impl StatusPacer {
    pub fn new(interval_ms: u64) -> StatusPacer {
        StatusPacer {
            interval_ms,
            last_sent: HashMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// `run` changed at `now`: whether its snapshot goes out now. A final run's always does,
    /// and the run is forgotten.
    pub fn changed(&mut self, run: Uuid, is_final: bool, now: u64) -> bool {
        if is_final {
            self.last_sent.remove(&run);
            self.pending.remove(&run);
            return true;
        }
        match self.last_sent.get(&run) {
            Some(&last) if now < last + self.interval_ms => {
                self.pending.insert(run, last + self.interval_ms);
                false
            }
            _ => {
                self.last_sent.insert(run, now);
                self.pending.remove(&run);
                true
            }
        }
    }

    /// Runs whose held-back snapshot may go out at `now`; they count as sent.
    pub fn due(&mut self, now: u64) -> Vec<Uuid> {
        let due: Vec<Uuid> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(run, _)| *run)
            .collect();
        for run in &due {
            self.pending.remove(run);
            self.last_sent.insert(*run, now);
        }
        due
    }

    /// When the next held-back snapshot may go out.
    pub fn next_due(&self) -> Option<u64> {
        self.pending.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_run_sends_one_snapshot_per_interval_and_the_final_one_at_once() {
        let mut pacer = StatusPacer::new(500);
        let run = Uuid::from_u128(1);
        assert!(
            pacer.changed(run, false, 1_000),
            "the first change goes out"
        );
        assert!(!pacer.changed(run, false, 1_100));
        assert!(!pacer.changed(run, false, 1_400));
        assert_eq!(pacer.next_due(), Some(1_500));
        assert!(pacer.due(1_499).is_empty());
        assert_eq!(pacer.due(1_500), [run], "held back, then sent once");
        assert!(pacer.due(2_000).is_empty(), "nothing changed since");
        assert!(!pacer.changed(run, false, 1_600));
        assert!(
            pacer.changed(run, true, 1_700),
            "the final snapshot never waits"
        );
        assert_eq!(pacer.next_due(), None, "and nothing is left pending");
    }

    #[test]
    fn runs_are_paced_independently() {
        let mut pacer = StatusPacer::new(500);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(pacer.changed(a, false, 0));
        assert!(pacer.changed(b, false, 100));
        assert!(!pacer.changed(a, false, 200));
        assert!(pacer.changed(a, false, 600), "a quiet interval passed");
        assert!(!pacer.changed(b, false, 300));
        assert_eq!(pacer.due(600), [b]);
    }
}
