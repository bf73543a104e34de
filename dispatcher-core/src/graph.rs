//! A run's units as a dependency graph in SVG: laid out by layer (a job's layer is one past
//! its deepest dependency), left to right, each node coloured by its job's state and linked to
//! the job's page, with why it waits or was skipped in its tooltip. Pure.

use std::collections::HashMap;

use maud::{Markup, html};
use proto_types::{JobPhase, JobSummary, RunDetail};
use uuid::Uuid;

use crate::report::approval_note;

const NODE_WIDTH: u32 = 220;
const NODE_HEIGHT: u32 = 40;
const COLUMN_GAP: u32 = 56;
const ROW_GAP: u32 = 12;
const MARGIN: u32 = 8;
/// Characters of a unit's path shown in its node (the tooltip has all of it).
const LABEL_CHARS: usize = 30;

/// Each job's layer: 0 without dependencies in the run, else one past its deepest one.
/// Dependencies outside the run, and cycles (which the policy refuses anyway), count as none.
pub fn layers(jobs: &[JobSummary]) -> Vec<usize> {
    let index: HashMap<Uuid, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| (job.job_id, i))
        .collect();
    let mut layer: Vec<Option<usize>> = vec![None; jobs.len()];
    for start in 0..jobs.len() {
        // Depth-first without recursion: a long chain must not overflow the stack.
        let mut stack = vec![(start, false)];
        let mut on_path = vec![false; jobs.len()];
        while let Some((at, expanded)) = stack.pop() {
            if layer[at].is_some() {
                continue;
            }
            let requires: Vec<usize> = jobs[at]
                .requires
                .iter()
                .filter_map(|id| index.get(id).copied())
                .collect();
            if expanded {
                on_path[at] = false;
                let deepest = requires.iter().filter_map(|&r| layer[r]).max();
                layer[at] = Some(deepest.map_or(0, |d| d + 1));
                continue;
            }
            on_path[at] = true;
            stack.push((at, true));
            for r in requires {
                if layer[r].is_none() && !on_path[r] {
                    stack.push((r, false));
                }
            }
        }
    }
    layer.into_iter().map(|l| l.unwrap_or(0)).collect()
}

/// The graph of `detail`'s jobs.
pub fn svg(detail: &RunDetail) -> Markup {
    let jobs = &detail.jobs;
    let layers = layers(jobs);
    let columns = layers.iter().max().map_or(0, |max| max + 1);
    // Within a layer, units in path order: neighbours in the tree sit together.
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for (i, &layer) in layers.iter().enumerate() {
        rows[layer].push(i);
    }
    for column in &mut rows {
        column.sort_by(|&a, &b| jobs[a].unit.cmp(&jobs[b].unit));
    }
    let mut position = vec![(0_u32, 0_u32); jobs.len()];
    for (column, members) in rows.iter().enumerate() {
        for (row, &i) in members.iter().enumerate() {
            position[i] = (
                MARGIN + column as u32 * (NODE_WIDTH + COLUMN_GAP),
                MARGIN + row as u32 * (NODE_HEIGHT + ROW_GAP),
            );
        }
    }
    let tallest = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let width = 2 * MARGIN + (columns as u32).max(1) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP;
    let height = 2 * MARGIN + tallest.max(1) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP;
    let index: HashMap<Uuid, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| (job.job_id, i))
        .collect();
    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="dag" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label=(format!("Dependency graph of {} jobs in {} layers", jobs.len(), columns)) {
            @for (i, job) in jobs.iter().enumerate() {
                @for required in job.requires.iter().filter_map(|id| index.get(id)) {
                    @let (x1, y1) = position[*required];
                    @let (x2, y2) = position[i];
                    @let (x1, y1) = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2);
                    @let y2 = y2 + NODE_HEIGHT / 2;
                    @let middle = (x1 + x2) / 2;
                    path class="edge" d=(format!("M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}")) {}
                }
            }
            @for (i, job) in jobs.iter().enumerate() {
                @let (x, y) = position[i];
                a href={ "/jobs/" (job.job_id) } {
                    g class={ "node " (job.state.as_str()) } data-unit=(job.unit) data-state=(job.state.as_str()) {
                        title { (tooltip(detail, job)) }
                        rect x=(x) y=(y) width=(NODE_WIDTH) height=(NODE_HEIGHT) rx="6" {}
                        text x=(x + 8) y=(y + 16) class="unit" { (label(&job.unit)) }
                        text x=(x + 8) y=(y + 32) class="sub" { (job.action.as_str()) " · " (job.state.as_str()) }
                    }
                }
            }
        }
    }
}

fn label(unit: &str) -> String {
    // Measured as shown: the page shows each bidirectional character as 8 (`<U+202E>`).
    let unit = proto_types::untrusted_text::reveal_bidi(unit);
    let chars = unit.chars().count();
    if chars <= LABEL_CHARS {
        return unit;
    }
    // The end of a path says most: `…/prod/us-east-1/app`.
    let tail: String = unit.chars().skip(chars - (LABEL_CHARS - 1)).collect();
    format!("…{tail}")
}

/// Why `job` is where it is: its approval gate, its reason (a skip, a failure), the
/// scheduler's note (a unit held by an earlier run, an account cap), or the dependencies a
/// pending job still waits for.
pub fn why(detail: &RunDetail, job: &JobSummary) -> Option<String> {
    if let Some(note) = job
        .approval
        .as_ref()
        .and_then(|gate| approval_note(gate, job.state))
    {
        return Some(note);
    }
    if let Some(known) = job.reason.clone().or_else(|| job.note.clone()) {
        return Some(known);
    }
    if job.state != JobPhase::Pending {
        return None;
    }
    let waiting: Vec<&str> = job
        .requires
        .iter()
        .filter_map(|id| detail.jobs.iter().find(|other| other.job_id == *id))
        .filter(|required| required.state != JobPhase::Succeeded)
        .map(|required| required.unit.as_str())
        .collect();
    (!waiting.is_empty()).then(|| format!("waits for {}", waiting.join(", ")))
}

fn tooltip(detail: &RunDetail, job: &JobSummary) -> String {
    let mut text = format!(
        "{} ({}): {}",
        job.unit,
        job.action.as_str(),
        job.state.as_str()
    );
    if let Some(why) = why(detail, job) {
        text.push_str(" — ");
        text.push_str(&why);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_detail;

    #[test]
    fn a_chain_takes_one_layer_per_job_and_roots_share_the_first() {
        let mut detail = run_detail(&[("a", "succeeded"), ("b", "running"), ("c", "pending")]);
        assert_eq!(layers(&detail.jobs), vec![0, 1, 2]);
        // A fourth unit needing nothing sits beside the first; one needing both a and c after c.
        let mut free = detail.jobs[0].clone();
        free.job_id = Uuid::from_u128(99);
        free.unit = "z".into();
        detail.jobs.push(free);
        let mut join = detail.jobs[2].clone();
        join.job_id = Uuid::from_u128(100);
        join.requires = vec![detail.jobs[0].job_id, detail.jobs[2].job_id];
        detail.jobs.push(join);
        assert_eq!(layers(&detail.jobs), vec![0, 1, 2, 0, 3]);
    }

    #[test]
    fn a_cycle_or_a_missing_dependency_does_not_hang_or_panic() {
        let mut detail = run_detail(&[("a", "pending"), ("b", "pending")]);
        detail.jobs[0].requires = vec![detail.jobs[1].job_id, Uuid::from_u128(12345)];
        let layers = layers(&detail.jobs);
        assert_eq!(layers.len(), 2);
    }

    #[test]
    fn nodes_carry_their_state_and_say_why_they_wait() {
        let mut detail = run_detail(&[("dev/net", "failed"), ("dev/app", "skipped")]);
        detail.jobs[1].reason = Some("dev/net apply failed".into());
        let svg = svg(&detail).into_string();
        assert!(
            svg.contains(r#"data-unit="dev/net" data-state="failed""#),
            "{svg}"
        );
        assert!(svg.contains(r#"data-unit="dev/app" data-state="skipped""#));
        assert!(svg.contains("dev/app (apply): skipped — dev/net apply failed"));
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 1);
        let waiting = run_detail(&[("dev/net", "running"), ("dev/app", "pending")]);
        let svg = super::svg(&waiting).into_string();
        assert!(
            svg.contains("dev/app (apply): pending — waits for dev/net"),
            "{svg}"
        );
    }

    #[test]
    fn long_unit_paths_keep_their_end() {
        assert_eq!(
            label("organisation/production/us-east-1/networking/vpc-main"),
            "…us-east-1/networking/vpc-main"
        );
        assert_eq!(label("dev/app"), "dev/app");
        // Revealed before it is measured, so a node fits whatever the path holds.
        let bidi = label(&"\u{202E}".repeat(10));
        assert_eq!(bidi.chars().count(), LABEL_CHARS, "{bidi}");
        assert_eq!(label("dev/\u{2066}a"), "dev/<U+2066>a");
    }
}
