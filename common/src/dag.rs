//! The one DAG rule: which jobs can start, which are blocked for good, and how a
//! finished pipeline ended.
//!
//! The router and the pipeliner both decide this, on either side of the wire: the
//! pipeliner to ask for starts and skips, the router to check what it is asked. If
//! they disagreed, the pipeliner would ask for a skip the router refuses (and the
//! pipeline would never close), or the router would accept what the pipeliner never
//! asks. So neither writes the rule down: both call this module.
//!
//! A job's [`TriggerRule`] says which of its parents' outcomes let it run. Each parent
//! counts as one of: succeeded (`succeeded` or `skipped_done`), failed, skipped,
//! cancelled, or open (`queued`, `running`, `waiting`). Two choices apply to every rule:
//!
//! - A cancelled parent blocks every rule but `always`. A cancelled pipeline starts
//!   nothing new in any case (cancel ends every open job); a cancelled parent outlives
//!   its pipeline's cancel only when some of its descendants are retried by name, and
//!   then only `always` (run whatever happened) lets them run.
//! - A skipped parent is neither a success nor a failure: it did not run. The router
//!   does not tell a job skipped after a failure from one skipped because its own rule
//!   could not hold (a compensation job when nothing failed), so counting `skipped` as
//!   failed (Airflow counts its `upstream_failed` so) would set off compensation for a
//!   failure that never happened. To react to a failure, hang the job on the job that
//!   may fail, or use `all_done`.
//!
//! A job without parents is ready under every rule. Blocked and ready are both for
//! good: they depend only on parents that are final, or on all of them being final,
//! so the two daemons cannot disagree however far apart their views are.

use crate::pipeline::{Pipeline, TriggerRule};
use crate::status::{JobState, PipelineState};

/// Where a job stands with respect to its parents (its own state aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Its trigger rule holds (or it has no parents): it may start.
    Ready,
    /// Its trigger rule neither holds nor is ruled out yet: some parents are still
    /// open. It may start later.
    Waiting,
    /// It can never run in this run of the pipeline: its parents ended in a way its
    /// trigger rule rules out (or one was cancelled). It is to be skipped.
    Blocked {
        /// Position, in the parents given, of a parent whose outcome rules it out:
        /// the first one that does, or the first parent when only all of them
        /// together do (`one_failed` or `one_success` with every parent done).
        by: usize,
    },
}

/// A parent's outcome, as trigger rules see it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failed,
    Skipped,
    Cancelled,
    Open,
}

fn outcome(state: JobState) -> Outcome {
    match state {
        JobState::Succeeded | JobState::SkippedDone => Outcome::Success,
        JobState::Failed => Outcome::Failed,
        JobState::Skipped => Outcome::Skipped,
        JobState::Cancelled => Outcome::Cancelled,
        JobState::Queued | JobState::Running | JobState::Waiting => Outcome::Open,
    }
}

/// Where a job under `rule` stands, given its parents' states in order.
///
/// | rule          | ready when                              | blocked when                           |
/// |---------------|-----------------------------------------|----------------------------------------|
/// | `all_success` | every parent succeeded                  | one failed or was skipped              |
/// | `all_done`    | every parent is done                    | never                                  |
/// | `all_failed`  | every parent failed                     | one succeeded or was skipped           |
/// | `one_failed`  | one parent failed (others may still run) | every parent is done and none failed   |
/// | `one_success` | one parent succeeded (others may run)   | every parent is done and none succeeded |
/// | `none_failed` | every parent is done and none failed    | one failed                             |
/// | `always`      | every parent is done, even cancelled    | never                                  |
///
/// A cancelled parent blocks every rule but `always`; blocked wins over ready.
pub fn readiness(rule: TriggerRule, parents: impl IntoIterator<Item = JobState>) -> Readiness {
    let (mut success, mut failed, mut skipped, mut cancelled) = (None, None, None, None);
    let (mut open, mut any) = (false, false);
    for (k, state) in parents.into_iter().enumerate() {
        any = true;
        let first = match outcome(state) {
            Outcome::Success => &mut success,
            Outcome::Failed => &mut failed,
            Outcome::Skipped => &mut skipped,
            Outcome::Cancelled => &mut cancelled,
            Outcome::Open => {
                open = true;
                continue;
            }
        };
        first.get_or_insert(k);
    }
    if !any {
        return Readiness::Ready;
    }
    let earliest = |a: Option<usize>, b: Option<usize>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    // Whether every parent is done and the rule wants something none of them gave.
    let none_gave = |wanted: Option<usize>| (!open && wanted.is_none()).then_some(0);
    let (ready, ruled_out) = match rule {
        TriggerRule::AllSuccess => (!open, earliest(failed, skipped)),
        TriggerRule::AllDone | TriggerRule::Always => (!open, None),
        TriggerRule::AllFailed => (!open, earliest(success, skipped)),
        TriggerRule::OneFailed => (failed.is_some(), none_gave(failed)),
        TriggerRule::OneSuccess => (success.is_some(), none_gave(success)),
        TriggerRule::NoneFailed => (!open, failed),
    };
    let cancelled = if rule == TriggerRule::Always {
        None
    } else {
        cancelled
    };
    match earliest(cancelled, ruled_out) {
        Some(by) => Readiness::Blocked { by },
        None if ready => Readiness::Ready,
        None => Readiness::Waiting,
    }
}

/// Where job `i` of `dag` stands under its own trigger rule, its parents' states read
/// from `states` (one per job, in the pipeline's order).
pub fn job_readiness(dag: &Pipeline, states: &[JobState], i: u32) -> Readiness {
    readiness(
        dag.job(i).trigger_rule,
        dag.parents(i).iter().map(|&p| states[p as usize]),
    )
}

/// The jobs that job `from` reaching its final state `states[from]` leaves blocked for
/// good under their own trigger rules, and which are to be skipped: every queued
/// descendant whose readiness, once the jobs before it in the list are skipped, is
/// [`Readiness::Blocked`]. A success can block too (a `one_failed` child once every
/// parent is done), and a failure blocks only the jobs whose rule it rules out (a
/// cleanup job under `all_done` is not skipped). Running and final jobs are left
/// alone. Each job comes after the skipped parents that block it, the order the router
/// needs to accept the skips one by one. Empty while `states[from]` is not final.
pub fn skipped_by(dag: &Pipeline, states: &[JobState], from: u32) -> Vec<u32> {
    if !states[from as usize].is_final() {
        return Vec::new();
    }
    let mut states = states.to_vec();
    let mut out = Vec::new();
    let mut stack: Vec<u32> = dag.children(from).to_vec();
    while let Some(c) = stack.pop() {
        let k = c as usize;
        if states[k] != JobState::Queued {
            continue;
        }
        if let Readiness::Blocked { .. } = job_readiness(dag, &states, c) {
            states[k] = JobState::Skipped;
            out.push(c);
            stack.extend_from_slice(dag.children(c));
        }
    }
    out
}

/// How a pipeline whose jobs are all final ended (`None` while one is still open):
/// failed if a job failed without `allow_failure`, or was cancelled (its work was not
/// done; a pipeline still has cancelled jobs only after some of its jobs were retried
/// by name); succeeded otherwise. A skipped job fails nothing: it was skipped because
/// some job failed, which decides already, or because its trigger rule did not hold
/// (a compensation job when nothing failed). So a failure a cleanup job handled still
/// fails the pipeline, unless the failing job allows it. A pipeline cancelled by a user
/// is closed `cancelled` by the cancel itself, not here.
pub fn pipeline_outcome(
    dag: &Pipeline,
    states: impl IntoIterator<Item = JobState>,
) -> Option<PipelineState> {
    let mut failed = false;
    for (i, state) in states.into_iter().enumerate() {
        match state {
            _ if !state.is_final() => return None,
            JobState::Failed => failed |= !dag.job(i as u32).allow_failure,
            JobState::Cancelled => failed = true,
            _ => {}
        }
    }
    Some(if failed {
        PipelineState::Failed
    } else {
        PipelineState::Succeeded
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PipelineSpec;
    use JobState::*;
    use TriggerRule::*;

    const ALL: [JobState; 8] = [
        Queued,
        Running,
        Succeeded,
        Failed,
        Skipped,
        Cancelled,
        SkippedDone,
        Waiting,
    ];

    const RULES: [TriggerRule; 7] = [
        AllSuccess, AllDone, AllFailed, OneFailed, OneSuccess, NoneFailed, Always,
    ];

    /// The letter of a state's row and column in [`expected`]: S succeeded, F failed,
    /// K skipped, C cancelled, O open.
    fn letter(s: JobState) -> usize {
        match s {
            Succeeded | SkippedDone => 0,
            Failed => 1,
            Skipped => 2,
            Cancelled => 3,
            Queued | Running | Waiting => 4,
        }
    }

    /// The rule written out by hand for two parents p (row) and q (column), both in
    /// the order S F K C O: R ready, W waiting, 0 or 1 blocked by that parent.
    fn expected(rule: TriggerRule) -> [&'static str; 5] {
        match rule {
            AllSuccess => ["R111W", "00000", "00000", "00000", "W111W"],
            AllDone => ["RRR1W", "RRR1W", "RRR1W", "00000", "WWW1W"],
            AllFailed => ["00000", "1R11W", "00000", "00000", "1W11W"],
            OneFailed => ["0R00W", "RRR1R", "0R00W", "00000", "WRW1W"],
            OneSuccess => ["RRR1R", "R000W", "R000W", "00000", "RWW1W"],
            NoneFailed => ["R1R1W", "00000", "R1R1W", "00000", "W1W1W"],
            Always => ["RRRRW", "RRRRW", "RRRRW", "RRRRW", "WWWWW"],
        }
    }

    fn decode(c: u8) -> Readiness {
        match c {
            b'R' => Readiness::Ready,
            b'W' => Readiness::Waiting,
            b'0' => Readiness::Blocked { by: 0 },
            b'1' => Readiness::Blocked { by: 1 },
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_rule_against_every_pair_of_parents() {
        let mut wrong = Vec::new();
        for rule in RULES {
            for p in ALL {
                for q in ALL {
                    let want = decode(expected(rule)[letter(p)].as_bytes()[letter(q)]);
                    let got = readiness(rule, [p, q]);
                    if got != want {
                        wrong.push(format!(
                            "{} {p:?} {q:?}: {got:?}, want {want:?}",
                            rule.as_str()
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_rule_against_one_parent_in_each_state() {
        // One parent: the same table, its column the parent, as if a second parent
        // had ended the way that is neutral for the rule.
        let one = |rule: TriggerRule, s: JobState| -> Readiness {
            let (ready, blocked) = match rule {
                AllSuccess => (letter(s) == 0, matches!(letter(s), 1..=3)),
                AllDone => (matches!(letter(s), 0..=2), letter(s) == 3),
                AllFailed => (letter(s) == 1, matches!(letter(s), 0 | 2 | 3)),
                OneFailed => (letter(s) == 1, matches!(letter(s), 0 | 2 | 3)),
                OneSuccess => (letter(s) == 0, matches!(letter(s), 1..=3)),
                NoneFailed => (matches!(letter(s), 0 | 2), matches!(letter(s), 1 | 3)),
                Always => (letter(s) != 4, false),
            };
            match (ready, blocked) {
                (_, true) => Readiness::Blocked { by: 0 },
                (true, false) => Readiness::Ready,
                (false, false) => Readiness::Waiting,
            }
        };
        for rule in RULES {
            for s in ALL {
                assert_eq!(
                    readiness(rule, [s]),
                    one(rule, s),
                    "{} {s:?}",
                    rule.as_str()
                );
            }
        }
    }

    #[test]
    fn a_job_without_parents_is_ready_under_every_rule() {
        for rule in RULES {
            assert_eq!(readiness(rule, []), Readiness::Ready, "{}", rule.as_str());
        }
    }

    #[test]
    fn the_first_parent_that_rules_the_job_out_is_named() {
        assert_eq!(
            readiness(AllSuccess, [Succeeded, Running, Queued, Cancelled, Failed]),
            Readiness::Blocked { by: 3 }
        );
        assert_eq!(
            readiness(AllFailed, [Failed, Running, Skipped, Succeeded]),
            Readiness::Blocked { by: 2 }
        );
        assert_eq!(
            readiness(NoneFailed, [Skipped, Running, Failed]),
            Readiness::Blocked { by: 2 }
        );
        assert_eq!(
            readiness(OneFailed, [Running, Running, Failed]),
            Readiness::Ready,
            "one failure is enough, the others still running"
        );
        assert_eq!(
            readiness(OneSuccess, [Failed, Skipped, Failed]),
            Readiness::Blocked { by: 0 }
        );
    }

    /// a, b -> c (the rule under test); c -> d (all_success); c -> e (all_done).
    /// Indices in name order: a0 b1 c2 d3 e4.
    fn fan_in(rule: TriggerRule) -> Pipeline {
        let mut spec = PipelineSpec::default()
            .job("a", "W", &[])
            .job("b", "W", &[])
            .job("c", "W", &["a", "b"])
            .job("d", "W", &["c"])
            .job("e", "W", &["c"]);
        spec.jobs.get_mut("c").unwrap().trigger_rule = rule;
        spec.jobs.get_mut("e").unwrap().trigger_rule = AllDone;
        Pipeline::new(spec).unwrap()
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort();
        v
    }

    #[test]
    fn skipped_by_follows_each_rule() {
        // (rule, a's state, b's state, what a reaching its state skips)
        let cases: [(TriggerRule, JobState, JobState, Vec<u32>); 16] = [
            (AllSuccess, Failed, Running, vec![2, 3]),
            (AllSuccess, Succeeded, Running, vec![]),
            (AllDone, Failed, Succeeded, vec![]),
            (AllDone, Cancelled, Succeeded, vec![2, 3]),
            (AllFailed, Succeeded, Running, vec![2, 3]),
            (AllFailed, Failed, Running, vec![]),
            (AllFailed, Failed, Failed, vec![]),
            (OneFailed, Succeeded, Running, vec![]),
            (OneFailed, Succeeded, Skipped, vec![2, 3]),
            (OneFailed, Failed, Succeeded, vec![]),
            (OneSuccess, Failed, Running, vec![]),
            (OneSuccess, Failed, Skipped, vec![2, 3]),
            (NoneFailed, Skipped, Succeeded, vec![]),
            (NoneFailed, Failed, Running, vec![2, 3]),
            (Always, Cancelled, Failed, vec![]),
            (Always, Cancelled, Running, vec![]),
        ];
        for (rule, a, b, want) in cases {
            let dag = fan_in(rule);
            let states = [a, b, Queued, Queued, Queued];
            let got = skipped_by(&dag, &states, 0);
            assert_eq!(sorted(got.clone()), want, "{} {a:?} {b:?}", rule.as_str());
            // e (all_done under c) is never skipped: c skipped is c done.
            assert!(!got.contains(&4));
        }
    }

    #[test]
    fn a_success_can_block_a_compensation_job_for_good() {
        let dag = fan_in(OneFailed);
        let states = [Succeeded, Succeeded, Queued, Queued, Queued];
        assert_eq!(skipped_by(&dag, &states, 1), vec![2, 3]);
    }

    #[test]
    fn skipped_by_leaves_running_and_final_jobs_alone_and_needs_a_final_state() {
        let dag = fan_in(AllSuccess);
        let states = [Failed, Succeeded, Running, Queued, Queued];
        assert!(skipped_by(&dag, &states, 0).is_empty());
        let states = [Failed, Succeeded, Skipped, Queued, Queued];
        assert!(skipped_by(&dag, &states, 0).is_empty(), "c already final");
        for s in [Queued, Running, Waiting] {
            let states = [s, Failed, Queued, Queued, Queued];
            assert!(skipped_by(&dag, &states, 0).is_empty(), "{s:?}");
        }
    }

    /// a -> b -> d, a -> c -> d, d -> e; x alone (indices in name order: a0 b1 c2 d3 e4 x5).
    fn diamond() -> Pipeline {
        Pipeline::new(
            PipelineSpec::default()
                .job("a", "W", &[])
                .job("b", "W", &["a"])
                .job("c", "W", &["a"])
                .job("d", "W", &["b", "c"])
                .job("e", "W", &["d"])
                .job("x", "W", &[]),
        )
        .unwrap()
    }

    #[test]
    fn a_failure_skips_every_queued_descendant_parents_first() {
        let dag = diamond();
        let states = [Failed, Queued, Queued, Queued, Queued, Running];
        let skipped = skipped_by(&dag, &states, 0);
        assert_eq!(
            sorted(skipped.clone()),
            vec![1, 2, 3, 4],
            "x is no descendant"
        );
        for (k, &j) in skipped.iter().enumerate() {
            let before = &skipped[..k];
            assert!(
                dag.parents(j).iter().any(|p| *p == 0 || before.contains(p)),
                "{j} in {skipped:?}"
            );
        }
    }

    #[test]
    fn job_readiness_reads_the_rule_and_the_parents_of_the_job() {
        let dag = fan_in(OneFailed);
        let states = [Failed, Running, Queued, Queued, Queued];
        assert_eq!(job_readiness(&dag, &states, 2), Readiness::Ready);
        assert_eq!(job_readiness(&dag, &states, 3), Readiness::Waiting);
        let states = [Failed, Running, Skipped, Queued, Queued];
        assert_eq!(
            job_readiness(&dag, &states, 3),
            Readiness::Blocked { by: 0 }
        );
        assert_eq!(job_readiness(&dag, &states, 4), Readiness::Ready);
    }

    fn outcome_of(allow: &[&str], states: &[JobState]) -> Option<PipelineState> {
        let mut spec = PipelineSpec::default()
            .job("a", "W", &[])
            .job("b", "W", &["a"])
            .job("c", "W", &["a"]);
        for n in allow {
            spec.jobs.get_mut(*n).unwrap().allow_failure = true;
        }
        pipeline_outcome(&Pipeline::new(spec).unwrap(), states.iter().copied())
    }

    #[test]
    fn a_pipeline_fails_on_a_failure_not_allowed_and_on_a_cancelled_job() {
        use PipelineState as P;
        assert_eq!(
            outcome_of(&[], &[Succeeded, Succeeded, SkippedDone]),
            Some(P::Succeeded)
        );
        assert_eq!(
            outcome_of(&[], &[Succeeded, Skipped, Succeeded]),
            Some(P::Succeeded)
        );
        assert_eq!(
            outcome_of(&[], &[Failed, Skipped, Succeeded]),
            Some(P::Failed)
        );
        assert_eq!(
            outcome_of(&["a"], &[Failed, Skipped, Succeeded]),
            Some(P::Succeeded)
        );
        assert_eq!(
            outcome_of(&["b"], &[Failed, Skipped, Succeeded]),
            Some(P::Failed)
        );
        assert_eq!(
            outcome_of(&["a", "b"], &[Failed, Failed, Succeeded]),
            Some(P::Succeeded)
        );
        assert_eq!(
            outcome_of(&["a"], &[Cancelled, Skipped, Skipped]),
            Some(P::Failed)
        );
        for open in [Queued, Running, Waiting] {
            assert_eq!(
                outcome_of(&[], &[Failed, open, Succeeded]),
                None,
                "{open:?}"
            );
        }
    }

    /// Runs a pipeline to its end by the rule alone: each ready job ends as `fails`
    /// says (failed if named, succeeded otherwise), each blocked one is skipped.
    fn run_to_end(dag: &Pipeline, fails: &[&str]) -> Vec<JobState> {
        let mut states = vec![Queued; dag.len()];
        loop {
            let mut moved = false;
            for i in 0..dag.len() as u32 {
                if states[i as usize] != Queued {
                    continue;
                }
                states[i as usize] = match job_readiness(dag, &states, i) {
                    Readiness::Waiting => continue,
                    Readiness::Blocked { .. } => Skipped,
                    Readiness::Ready if fails.contains(&dag.name(i)) => Failed,
                    Readiness::Ready => Succeeded,
                };
                moved = true;
            }
            if !moved {
                return states;
            }
        }
    }

    /// The README's example of a cleanup and a compensation job, as it tells it.
    #[test]
    fn the_readme_example_ends_as_the_readme_says() {
        let text = r#"{ "jobs": {
            "extract": {"worker": "Extract"},
            "load":    {"worker": "Load",    "after": ["extract"]},
            "undo":    {"worker": "Unload",  "after": ["load"], "trigger_rule": "one_failed"},
            "publish": {"worker": "Publish", "after": ["load"]},
            "clean":   {"worker": "Cleanup", "after": ["publish", "undo"], "trigger_rule": "all_done"} } }"#;
        let spec = PipelineSpec::from_json(text).unwrap();
        // Jobs in name order: clean extract load publish undo.
        let dag = Pipeline::new(spec.clone()).unwrap();
        let states = run_to_end(&dag, &["load"]);
        assert_eq!(states, [Succeeded, Succeeded, Failed, Skipped, Succeeded]);
        assert_eq!(pipeline_outcome(&dag, states), Some(PipelineState::Failed));
        let mut allowed = spec;
        allowed.jobs.get_mut("load").unwrap().allow_failure = true;
        let allowed = Pipeline::new(allowed).unwrap();
        let states = run_to_end(&allowed, &["load"]);
        assert_eq!(
            pipeline_outcome(&allowed, states),
            Some(PipelineState::Succeeded)
        );
        let states = run_to_end(&dag, &[]);
        assert_eq!(
            states,
            [Succeeded, Succeeded, Succeeded, Succeeded, Skipped]
        );
        assert_eq!(
            pipeline_outcome(&dag, states),
            Some(PipelineState::Succeeded)
        );
        // extract fails: load is skipped, which is no failure for undo; clean still runs.
        let states = run_to_end(&dag, &["extract"]);
        assert_eq!(states, [Succeeded, Failed, Skipped, Skipped, Skipped]);
        assert_eq!(pipeline_outcome(&dag, states), Some(PipelineState::Failed));
    }
}
