//! One pipeline's walk: which jobs are ready, which can never run, when it is done.

use petgraph::algo::toposort;
use pypelinin_common::dag::{self, Readiness};
use pypelinin_common::protocol::{Advance, PipelineId, PipelineSnapshot};
use pypelinin_common::status::JobState;
use pypelinin_common::{Pipeline, PipelineError};

/// The pipeliner's view of one pipeline. Rebuilt from a snapshot at any time.
pub struct Walk {
    id: PipelineId,
    dag: Pipeline,
    order: Vec<u32>,
    states: Vec<JobState>,
    requested: Vec<bool>,
    /// Jobs the router was asked to start once their trigger rule holds (`after`).
    armed: Vec<bool>,
    /// The router was asked to close the pipeline itself if every job succeeds.
    close_asked: bool,
    finals: usize,
}

impl Walk {
    /// Starts walking from a router snapshot.
    pub fn new(snap: PipelineSnapshot) -> Result<Self, PipelineError> {
        let dag = Pipeline::new(snap.spec)?;
        // Pipeline::new refused any cycle, so toposort finds none; were it to, the walk
        // would have no order to follow, and the pipeline is refused like a bad one.
        let order = toposort(&dag.graph(), None)
            .map_err(|c| {
                let job = dag.name(c.node_id().index() as u32).to_string();
                PipelineError::Cycle {
                    cycle: vec![job.clone(), job],
                }
            })?
            .into_iter()
            .map(|n| n.index() as u32)
            .collect();
        let mut states = snap.states;
        states.resize(dag.len(), JobState::Queued);
        let finals = states.iter().filter(|s| s.is_final()).count();
        // Running jobs were asked for already; queued ones may be too, and asking again
        // is harmless (the router enqueues a job once).
        let requested = states.iter().map(|s| *s != JobState::Queued).collect();
        let armed = vec![false; dag.len()];
        Ok(Walk {
            id: snap.id,
            dag,
            order,
            states,
            requested,
            armed,
            close_asked: false,
            finals,
        })
    }

    /// Decisions from the whole state, in topological order.
    pub fn plan_all(&mut self) -> Advance {
        let mut a = Advance {
            pipeline: self.id,
            ..Advance::default()
        };
        for k in 0..self.order.len() {
            let i = self.order[k];
            self.consider(i, &mut a);
        }
        if !self.is_done() {
            a.close_on_success = true;
            self.close_asked = true;
        }
        self.finish_into(&mut a);
        a
    }

    /// Whether every job is final (the walk is over).
    pub fn is_done(&self) -> bool {
        self.finals == self.states.len()
    }

    /// Asks to close the pipeline once every job is final, unless the router closes it
    /// itself (every job succeeded, and it was asked to). Any other end (a failure,
    /// allowed or not, a skip) is closed by this `finish`, and the router decides the
    /// pipeline's state with `dag::pipeline_outcome`.
    fn finish_into(&self, a: &mut Advance) {
        let all_succeeded = || self.states.iter().all(|s| s.is_success());
        a.finish |= self.is_done() && !(self.close_asked && all_succeeded());
    }

    /// Takes a job's new state into account and adds the decisions it leads to.
    pub fn on_change(&mut self, job: u32, state: JobState, a: &mut Advance) {
        let Some(cur) = self.states.get(job as usize).copied() else {
            return;
        };
        if !cur.is_final() {
            self.set(job, state);
            if state.is_final() {
                self.cascade(job, a);
            }
        }
        // Otherwise already final here (a skip we decided ourselves, echoed back).
        self.finish_into(a);
    }

    fn set(&mut self, job: u32, state: JobState) {
        let was = self.states[job as usize];
        if !was.is_final() && state.is_final() {
            self.finals += 1;
        }
        self.states[job as usize] = state;
    }

    /// What job `from` reaching a final state leads to, whatever that state: the
    /// descendants it leaves blocked for good under their own trigger rules are
    /// skipped, and the children of `from` and of each skipped job are considered
    /// again (a cleanup job may be ready now, a compensation job still waiting).
    fn cascade(&mut self, from: u32, a: &mut Advance) {
        let skipped = dag::skipped_by(&self.dag, &self.states, from);
        for &c in &skipped {
            self.set(c, JobState::Skipped);
            a.skip.push(c);
        }
        for f in std::iter::once(from).chain(skipped) {
            for k in 0..self.dag.children(f).len() {
                let c = self.dag.children(f)[k];
                // skipped_by has skipped every job blocked by now, so this enqueues
                // or arms; were one still blocked, its descendants would go with it.
                if self.consider(c, a) == Some(JobState::Skipped) {
                    self.cascade(c, a);
                }
            }
        }
    }

    /// Enqueues job `i` if ready, skips it if it never can run; says which. Any other
    /// job is armed (once): the router starts it when its trigger rule holds, and the
    /// walk is left with skipping and finishing.
    fn consider(&mut self, i: u32, a: &mut Advance) -> Option<JobState> {
        let k = i as usize;
        if self.states[k] != JobState::Queued || self.requested[k] {
            return None;
        }
        match dag::job_readiness(&self.dag, &self.states, i) {
            Readiness::Blocked { .. } => {
                self.set(i, JobState::Skipped);
                a.skip.push(i);
                Some(JobState::Skipped)
            }
            Readiness::Ready => {
                self.requested[k] = true;
                // An armed job was started by the router with its last parent's result.
                if !self.armed[k] {
                    a.enqueue.push(i);
                }
                Some(JobState::Queued)
            }
            Readiness::Waiting => {
                // Its rule is not decided yet: some parents are on their way. Ask now
                // that the router start it in the turn its rule comes to hold.
                if !self.armed[k] {
                    self.armed[k] = true;
                    a.after.push(i);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::{PipelineSpec, TriggerRule};

    fn diamond_with_tail() -> PipelineSpec {
        PipelineSpec::default()
            .job("a", "W", &[])
            .job("b", "W", &["a"])
            .job("c", "W", &["a"])
            .job("d", "W", &["b", "c"])
            .job("e", "W", &["d"])
            .job("x", "W", &[])
    }

    fn walk(states: Vec<JobState>) -> Walk {
        Walk::new(PipelineSnapshot {
            id: PipelineId::new(),
            spec: diamond_with_tail(),
            states,
        })
        .unwrap()
    }

    #[test]
    fn roots_first_and_every_other_job_armed_once() {
        let mut w = walk(vec![]);
        let mut a = w.plan_all();
        a.enqueue.sort();
        a.after.sort();
        assert!(a.close_on_success);
        assert_eq!(a.enqueue, vec![0, 5]);
        assert_eq!(
            a.after,
            vec![1, 2, 3, 4],
            "the router starts them when ready"
        );
        // As parents succeed, the armed children were started by the router: nothing
        // is asked twice.
        let mut a = Advance::default();
        for j in [0, 1, 2, 3] {
            w.on_change(j, JobState::Succeeded, &mut a);
        }
        assert!(a.enqueue.is_empty() && a.after.is_empty() && a.skip.is_empty());
        assert!(!a.finish);
        w.on_change(4, JobState::Succeeded, &mut a);
        w.on_change(5, JobState::Succeeded, &mut a);
        assert!(w.is_done());
        assert!(
            !a.finish,
            "all succeeded: the router, asked to, closes it itself"
        );
    }

    #[test]
    fn a_walk_rebuilt_mid_way_arms_again() {
        // A new walk (another pipeliner, or a restarted router) knows nothing of what
        // was armed: it asks again (the router starts at once what is ready by then).
        let mut w = walk(vec![
            JobState::Succeeded,
            JobState::Succeeded,
            JobState::Running,
            JobState::Queued,
            JobState::Queued,
            JobState::Succeeded,
        ]);
        let a = w.plan_all();
        assert!(a.enqueue.is_empty());
        assert_eq!(a.after, vec![3, 4]);
    }

    #[test]
    fn a_failure_skips_descendants_and_other_branches_finish() {
        let mut w = walk(vec![
            JobState::Succeeded,
            JobState::Running,
            JobState::Running,
            JobState::Queued,
            JobState::Queued,
            JobState::Running,
        ]);
        assert!(w.plan_all().enqueue.is_empty());
        let mut a = Advance::default();
        w.on_change(1, JobState::Failed, &mut a);
        let mut skipped = a.skip.clone();
        skipped.sort();
        assert_eq!(skipped, vec![3, 4]);
        assert!(!a.finish);
        let mut a = Advance::default();
        w.on_change(2, JobState::Succeeded, &mut a);
        w.on_change(3, JobState::Skipped, &mut a); // our own skip, echoed back
        assert!(a.enqueue.is_empty() && !a.finish);
        w.on_change(5, JobState::Succeeded, &mut a);
        assert!(a.finish);
    }

    /// The pipeliner skips, enqueues or arms a job exactly as the common rule says,
    /// under every trigger rule, for every combination of its two parents' states.
    #[test]
    fn every_decision_follows_the_common_rule() {
        use pypelinin_common::dag::{readiness, Readiness};
        const ALL: [JobState; 6] = [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Skipped,
            JobState::Cancelled,
        ];
        for rule in RULES {
            for p in ALL {
                for q in ALL {
                    let mut spec = PipelineSpec::default()
                        .job("p", "W", &[])
                        .job("q", "W", &[])
                        .job("x", "W", &["p", "q"]);
                    spec.jobs.get_mut("x").unwrap().trigger_rule = rule;
                    let mut w = Walk::new(PipelineSnapshot {
                        id: PipelineId::new(),
                        spec,
                        states: vec![p, q, JobState::Queued],
                    })
                    .unwrap();
                    let a = w.plan_all();
                    let decided = (
                        a.skip.contains(&2),
                        a.enqueue.contains(&2),
                        a.after.contains(&2),
                    );
                    let want = match readiness(rule, [p, q]) {
                        Readiness::Blocked { .. } => (true, false, false),
                        Readiness::Ready => (false, true, false),
                        Readiness::Waiting => (false, false, true),
                    };
                    assert_eq!(decided, want, "{} parents {p:?} {q:?}", rule.as_str());
                }
            }
        }
    }

    const RULES: [TriggerRule; 7] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllDone,
        TriggerRule::AllFailed,
        TriggerRule::OneFailed,
        TriggerRule::OneSuccess,
        TriggerRule::NoneFailed,
        TriggerRule::Always,
    ];

    /// `a`; `b` after `a` (all_success); `clean` after `a` with `rule`; `tail` after
    /// `b` and `clean` (all_done). Indices: a0 b1 clean2 tail3.
    fn with_cleanup(rule: TriggerRule, states: Vec<JobState>, allow_a: bool) -> Walk {
        let mut spec = PipelineSpec::default()
            .job("a", "W", &[])
            .job("b", "W", &["a"])
            .job("clean", "W", &["a"])
            .job("tail", "W", &["b", "clean"]);
        spec.jobs.get_mut("clean").unwrap().trigger_rule = rule;
        spec.jobs.get_mut("tail").unwrap().trigger_rule = TriggerRule::AllDone;
        spec.jobs.get_mut("a").unwrap().allow_failure = allow_a;
        Walk::new(PipelineSnapshot {
            id: PipelineId::new(),
            spec,
            states,
        })
        .unwrap()
    }

    #[test]
    fn a_failure_skips_only_what_its_rule_rules_out_and_the_cleanup_job_is_left_to_run() {
        let mut w = with_cleanup(TriggerRule::AllDone, vec![], false);
        let mut a = w.plan_all();
        a.after.sort();
        assert_eq!((a.enqueue, a.after), (vec![0], vec![1, 2, 3]));
        let mut a = Advance::default();
        w.on_change(0, JobState::Failed, &mut a);
        assert_eq!(a.skip, vec![1], "b skipped; clean and tail are not");
        assert!(
            a.enqueue.is_empty(),
            "clean was armed: the router starts it in the turn a fails"
        );
        assert!(!a.finish);
        let mut a = Advance::default();
        w.on_change(1, JobState::Skipped, &mut a); // our own skip, echoed back
        w.on_change(2, JobState::Running, &mut a);
        w.on_change(2, JobState::Succeeded, &mut a);
        assert!(a.skip.is_empty() && a.enqueue.is_empty() && !a.finish);
        w.on_change(3, JobState::Succeeded, &mut a);
        assert!(
            a.finish,
            "not every job succeeded: the pipeliner closes it, the router decides how"
        );
    }

    #[test]
    fn a_rebuilt_walk_enqueues_the_cleanup_job_a_failure_made_ready() {
        let q = JobState::Queued;
        let mut w = with_cleanup(TriggerRule::AllDone, vec![JobState::Failed, q, q, q], false);
        let a = w.plan_all();
        assert_eq!(a.skip, vec![1]);
        let mut enqueued = a.enqueue.clone();
        enqueued.sort();
        assert_eq!(enqueued, vec![2], "clean is ready; tail waits for it");
        assert_eq!(a.after, vec![3]);
    }

    #[test]
    fn a_skip_that_makes_a_job_ready_enqueues_it_with_the_skip() {
        // tail (all_done) under b: once b is skipped and clean is done, tail is ready.
        let q = JobState::Queued;
        let mut w = with_cleanup(
            TriggerRule::AllDone,
            vec![JobState::Running, q, JobState::Succeeded, q],
            false,
        );
        let mut a = w.plan_all();
        a.after.sort();
        assert_eq!(a.after, vec![1, 3]);
        let mut w = with_cleanup(
            TriggerRule::AllDone,
            vec![JobState::Running, q, JobState::Succeeded, q],
            false,
        );
        let mut a = Advance::default();
        w.on_change(0, JobState::Failed, &mut a);
        assert_eq!(a.skip, vec![1]);
        assert_eq!(a.enqueue, vec![3], "not armed in this walk: asked for now");
    }

    #[test]
    fn a_compensation_job_is_skipped_when_nothing_failed() {
        let mut w = with_cleanup(TriggerRule::OneFailed, vec![], false);
        w.plan_all();
        let mut a = Advance::default();
        w.on_change(0, JobState::Succeeded, &mut a);
        assert_eq!(a.skip, vec![2], "a succeeded: clean can never run");
        assert!(a.enqueue.is_empty(), "b armed, tail still waits for b");
        let mut a = Advance::default();
        w.on_change(1, JobState::Succeeded, &mut a);
        w.on_change(3, JobState::Succeeded, &mut a);
        assert!(a.finish, "a skip: the router will not close it on its own");
    }

    #[test]
    fn a_compensation_job_starts_while_a_sibling_still_runs() {
        // p and q roots, x one_failed after both: p fails while q runs.
        let mut spec = PipelineSpec::default()
            .job("p", "W", &[])
            .job("q", "W", &[])
            .job("x", "W", &["p", "q"]);
        spec.jobs.get_mut("x").unwrap().trigger_rule = TriggerRule::OneFailed;
        let snap = |states| PipelineSnapshot {
            id: PipelineId::new(),
            spec: spec.clone(),
            states,
        };
        let mut w = Walk::new(snap(vec![JobState::Running, JobState::Running])).unwrap();
        assert_eq!(w.plan_all().after, vec![2]);
        let mut a = Advance::default();
        w.on_change(0, JobState::Failed, &mut a);
        assert!(
            a.skip.is_empty() && a.enqueue.is_empty(),
            "armed: the router starts it"
        );
        let mut w = Walk::new(snap(vec![JobState::Failed, JobState::Running])).unwrap();
        assert_eq!(w.plan_all().enqueue, vec![2]);
    }

    #[test]
    fn an_allowed_failure_still_skips_its_all_success_children_and_is_finished_by_the_pipeliner() {
        let mut w = with_cleanup(TriggerRule::AllDone, vec![], true);
        w.plan_all();
        let mut a = Advance::default();
        w.on_change(0, JobState::Failed, &mut a);
        assert_eq!(a.skip, vec![1]);
        for j in [2, 3] {
            w.on_change(j, JobState::Succeeded, &mut a);
        }
        assert!(w.is_done() && a.finish);
    }

    #[test]
    fn a_cancelled_parent_skips_its_descendants_as_a_failed_one_does() {
        let mut w = walk(vec![
            JobState::Succeeded,
            JobState::Running,
            JobState::Running,
            JobState::Queued,
            JobState::Queued,
            JobState::Running,
        ]);
        w.plan_all();
        let mut a = Advance::default();
        w.on_change(2, JobState::Cancelled, &mut a);
        a.skip.sort();
        assert_eq!(a.skip, vec![3, 4]);
    }

    #[test]
    fn rebuilt_from_a_snapshot_it_resumes_where_the_last_one_stopped() {
        let mut w = walk(vec![
            JobState::Succeeded,
            JobState::Succeeded,
            JobState::Succeeded,
            JobState::Queued,
            JobState::Queued,
            JobState::Succeeded,
        ]);
        let a = w.plan_all();
        assert_eq!(a.enqueue, vec![3]);
        assert!(a.skip.is_empty() && !a.finish);
    }
}
