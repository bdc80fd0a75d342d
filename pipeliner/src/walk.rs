//! One pipeline's walk: which jobs are ready, which can never run, when it is done.

use petgraph::algo::toposort;
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
    finals: usize,
}

impl Walk {
    /// Starts walking from a router snapshot.
    pub fn new(snap: PipelineSnapshot) -> Result<Self, PipelineError> {
        let dag = Pipeline::new(snap.spec)?;
        let order = toposort(&dag.graph(), None)
            .expect("a valid pipeline has no cycle")
            .into_iter()
            .map(|n| n.index() as u32)
            .collect();
        let mut states = snap.states;
        states.resize(dag.len(), JobState::Queued);
        let finals = states.iter().filter(|s| s.is_final()).count();
        // Running jobs were asked for already; queued ones may be too, and asking again
        // is harmless (the router enqueues a job once).
        let requested = states.iter().map(|s| *s != JobState::Queued).collect();
        Ok(Walk {
            id: snap.id,
            dag,
            order,
            states,
            requested,
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
        a.finish = self.finals == self.states.len();
        a
    }

    /// Takes a job's new state into account and adds the decisions it leads to.
    pub fn on_change(&mut self, job: u32, state: JobState, a: &mut Advance) {
        let Some(cur) = self.states.get(job as usize).copied() else {
            return;
        };
        if cur.is_final() {
            // Already final here (a skip we decided ourselves, echoed back).
            a.finish |= self.finals == self.states.len();
            return;
        }
        self.set(job, state);
        if state.is_final() {
            self.cascade(job, a);
        }
        a.finish = self.finals == self.states.len();
    }

    fn set(&mut self, job: u32, state: JobState) {
        let was = self.states[job as usize];
        if !was.is_final() && state.is_final() {
            self.finals += 1;
        }
        self.states[job as usize] = state;
    }

    fn cascade(&mut self, from: u32, a: &mut Advance) {
        let mut stack: Vec<u32> = self.dag.children(from).to_vec();
        while let Some(c) = stack.pop() {
            if self.consider(c, a) == Some(JobState::Skipped) {
                stack.extend_from_slice(self.dag.children(c));
            }
        }
    }

    /// Enqueues job `i` if ready, skips it if it never can run; says which.
    fn consider(&mut self, i: u32, a: &mut Advance) -> Option<JobState> {
        if self.states[i as usize] != JobState::Queued || self.requested[i as usize] {
            return None;
        }
        let parents = self.dag.parents(i);
        if parents.iter().any(|&p| {
            matches!(
                self.states[p as usize],
                JobState::Failed | JobState::Skipped | JobState::Cancelled
            )
        }) {
            self.set(i, JobState::Skipped);
            a.skip.push(i);
            return Some(JobState::Skipped);
        }
        if parents
            .iter()
            .all(|&p| self.states[p as usize] == JobState::Succeeded)
        {
            self.requested[i as usize] = true;
            a.enqueue.push(i);
            return Some(JobState::Queued);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::PipelineSpec;

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
    fn roots_first_then_children_once_all_parents_succeed() {
        let mut w = walk(vec![]);
        let mut a = w.plan_all();
        a.enqueue.sort();
        assert_eq!(a.enqueue, vec![0, 5]);
        let mut a = Advance::default();
        w.on_change(0, JobState::Succeeded, &mut a);
        a.enqueue.sort();
        assert_eq!(a.enqueue, vec![1, 2]);
        let mut a = Advance::default();
        w.on_change(1, JobState::Succeeded, &mut a);
        assert!(a.enqueue.is_empty(), "d must wait for c");
        w.on_change(2, JobState::Succeeded, &mut a);
        assert_eq!(a.enqueue, vec![3]);
        assert!(!a.finish);
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
