//! The one DAG rule: which jobs can start, which are blocked for good, and what a
//! failure skips.
//!
//! The router and the pipeliner both decide this, on either side of the wire: the
//! pipeliner to ask for starts and skips, the router to check what it is asked. If
//! they disagreed, the pipeliner would ask for a skip the router refuses (and the
//! pipeline would never close), or the router would accept what the pipeliner never
//! asks. So neither writes the rule down: both call this module.
//!
//! Today a job runs only once every parent has succeeded. Trigger rules (run when any
//! parent succeeded, run after a failure, ...) come in a later issue and belong here:
//! they change [`readiness`] and [`blocks`], and both daemons follow.

use crate::pipeline::Pipeline;
use crate::status::JobState;

/// Where a job stands with respect to its parents (its own state aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every parent succeeded or was `skipped_done` (or it has none): it may start.
    Ready,
    /// No parent blocks it, but some have not succeeded yet: it may start later.
    Waiting,
    /// It can never run in this run of the pipeline: a parent is in a state that
    /// [`blocks`].
    Blocked {
        /// Position, in the parents given, of the first parent that blocks it.
        by: usize,
    },
}

/// Whether a parent in `state` keeps its children from ever running: it failed, was
/// skipped, or was cancelled. None of these produces the output its children would
/// read, and none changes again until someone retries the pipeline.
pub fn blocks(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed | JobState::Skipped | JobState::Cancelled
    )
}

/// Where a job stands, given its parents' states in order. A parent that blocks wins
/// over one still on its way: the job is blocked for good as soon as one parent is.
pub fn readiness(parents: impl IntoIterator<Item = JobState>) -> Readiness {
    let mut all_succeeded = true;
    for (by, state) in parents.into_iter().enumerate() {
        if blocks(state) {
            return Readiness::Blocked { by };
        }
        all_succeeded &= state.is_success();
    }
    if all_succeeded {
        Readiness::Ready
    } else {
        Readiness::Waiting
    }
}

/// Where job `i` of `dag` stands, its parents' states read from `states` (one per
/// job, in the pipeline's order).
pub fn job_readiness(dag: &Pipeline, states: &[JobState], i: u32) -> Readiness {
    readiness(dag.parents(i).iter().map(|&p| states[p as usize]))
}

/// The jobs a job reaching `states[from]` (a state that [`blocks`]) leaves blocked for
/// good, and which are to be skipped: every job still queued whose readiness, once the
/// jobs before it in the list are skipped, is [`Readiness::Blocked`]. Running and
/// final jobs are left alone. Each job comes after a parent that blocks it, the order
/// the router needs to accept the skips one by one. Empty if `states[from]` does not
/// block.
pub fn skipped_by(dag: &Pipeline, states: &[JobState], from: u32) -> Vec<u32> {
    if !blocks(states[from as usize]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PipelineSpec;
    use JobState::*;

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

    #[test]
    fn failed_skipped_and_cancelled_block_and_nothing_else_does() {
        let blocking: Vec<JobState> = ALL.into_iter().filter(|s| blocks(*s)).collect();
        assert_eq!(blocking, vec![Failed, Skipped, Cancelled]);
    }

    #[test]
    fn a_job_without_parents_is_ready() {
        assert_eq!(readiness([]), Readiness::Ready);
    }

    #[test]
    fn one_parent_in_each_state() {
        for s in ALL {
            let want = match s {
                Succeeded | SkippedDone => Readiness::Ready,
                Queued | Running | Waiting => Readiness::Waiting,
                Failed | Skipped | Cancelled => Readiness::Blocked { by: 0 },
            };
            assert_eq!(readiness([s]), want, "{s:?}");
        }
    }

    #[test]
    fn every_pair_of_parents() {
        for p in ALL {
            for q in ALL {
                let got = readiness([p, q]);
                let want = if blocks(p) {
                    Readiness::Blocked { by: 0 }
                } else if blocks(q) {
                    Readiness::Blocked { by: 1 }
                } else if p.is_success() && q.is_success() {
                    Readiness::Ready
                } else {
                    Readiness::Waiting
                };
                assert_eq!(got, want, "{p:?} {q:?}");
            }
        }
    }

    #[test]
    fn a_blocking_parent_wins_over_one_still_running_and_is_named() {
        assert_eq!(
            readiness([Succeeded, Running, Queued, Cancelled, Failed]),
            Readiness::Blocked { by: 3 }
        );
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
    fn job_readiness_reads_the_parents_of_the_job() {
        let dag = diamond();
        let states = [Succeeded, Succeeded, Running, Queued, Queued, Failed];
        assert_eq!(job_readiness(&dag, &states, 0), Readiness::Ready);
        assert_eq!(job_readiness(&dag, &states, 1), Readiness::Ready);
        assert_eq!(job_readiness(&dag, &states, 3), Readiness::Waiting);
        let states = [Succeeded, Succeeded, Cancelled, Queued, Queued, Queued];
        assert_eq!(
            job_readiness(&dag, &states, 3),
            Readiness::Blocked { by: 1 }
        );
    }

    #[test]
    fn a_failure_skips_every_queued_descendant_parents_first() {
        let dag = diamond();
        let states = [Failed, Queued, Queued, Queued, Queued, Running];
        let skipped = skipped_by(&dag, &states, 0);
        let mut sorted = skipped.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3, 4], "x is no descendant");
        // Each one after a parent that blocks it.
        for (k, &j) in skipped.iter().enumerate() {
            let before = &skipped[..k];
            assert!(
                dag.parents(j).iter().any(|p| *p == 0 || before.contains(p)),
                "{j} in {skipped:?}"
            );
        }
    }

    #[test]
    fn one_failed_branch_skips_a_join_even_while_the_other_runs() {
        let dag = diamond();
        let states = [Succeeded, Failed, Running, Queued, Queued, Queued];
        let mut s = skipped_by(&dag, &states, 1);
        s.sort();
        assert_eq!(s, vec![3, 4]);
    }

    #[test]
    fn running_and_final_descendants_are_left_alone() {
        let dag = diamond();
        // c already skipped, d running (states as a retried pipeline may show them).
        let states = [Succeeded, Cancelled, Skipped, Running, Queued, Queued];
        assert_eq!(skipped_by(&dag, &states, 1), Vec::<u32>::new());
        let states = [Succeeded, Cancelled, Succeeded, Queued, Queued, Queued];
        let mut s = skipped_by(&dag, &states, 1);
        s.sort();
        assert_eq!(s, vec![3, 4], "a cancelled parent blocks like a failed one");
    }

    #[test]
    fn a_state_that_does_not_block_skips_nothing() {
        let dag = diamond();
        for s in [Queued, Running, Succeeded] {
            let states = [s, Queued, Queued, Queued, Queued, Queued];
            assert!(skipped_by(&dag, &states, 0).is_empty(), "{s:?}");
        }
    }
}
