//! What the broker holds for the router, as a plain state machine the event loop
//! drives: the attempts assigned to it and not yet finished, the reports of finished
//! ones until the router acknowledges them, and the drain on shutdown. No I/O and no
//! clock: the loop passes time in.
//!
//! A report is the broker's way of asking for more work: the router answers a
//! `JobDone` with more `Assign`s, as many as the broker's slots and prefetch (told in
//! its hello) leave room for. A report is kept until acknowledged (the router
//! acknowledges only once the result is durable); one not acknowledged in time is sent
//! again, and a duplicate changes nothing at the router.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{JobRef, JobReport, PipelineId, REQUEST_TIMEOUT};

/// Default longest time a finished job's report waits for others to share its
/// message, while the broker holds queued work (see [`Ledger::linger`]): the broker's
/// `--report-linger-ms`.
pub const REPORT_LINGER: Duration = Duration::from_millis(4);
/// Reports that leave at once however young: one message stays small.
pub const REPORT_BATCH: usize = 256;
/// A report lingers at most this share of the time the queued jobs keep the slots
/// busy, so that the answer (the router's next jobs) comes long before they run dry.
const LINGER_SHARE_OF_QUEUE: f64 = 0.25;
/// A shorter linger is not worth it: the loop's poll counts whole milliseconds, so it
/// could not be kept, and a queue that lasts under four milliseconds is one of jobs so
/// short that a late answer would soon leave the slots idle.
const MIN_LINGER: Duration = Duration::from_millis(1);
/// A linger is worth its delay only if this many more jobs are expected to end during
/// it: with jobs of 10 ms on four slots, one ends every 2.5 ms, and waiting for company
/// would mostly delay the report (measured: about a point of throughput lost with slot
/// processes) for little saved at the router.
const LINGER_MIN_COMPANY: f64 = 2.0;
/// Weight of the latest job in the moving average of job durations.
const JOB_MS_WEIGHT: f64 = 0.1;

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DrainEnd {
    /// Every job finished and its report is acknowledged.
    Idle,
    /// The drain timeout passed first: what is left goes back to the router.
    TimedOut,
}

/// The broker's book of jobs and reports.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Assigned and not finished (queued or running), by job.
    running: HashMap<(PipelineId, u32), JobRef>,
    /// Finished, not sent yet.
    unsent: Vec<JobReport>,
    /// When the oldest of `unsent` was added (for the linger).
    unsent_since: Option<Instant>,
    /// How long jobs take here, in ms (a moving average of the reports' start and end,
    /// whole milliseconds): with the slots, how fast the queue empties. Jobs under a
    /// millisecond average near zero, and their reports do not linger.
    job_ms: Option<f64>,
    /// Sent, by request id, with when.
    inflight: HashMap<u64, (Instant, Vec<JobReport>)>,
    /// When the drain gives up, once shutting down.
    drain_until: Option<Instant>,
}

impl Ledger {
    /// The router assigned `job`.
    pub(crate) fn assigned(&mut self, job: JobRef) {
        self.running.insert((job.pipeline, job.job), job);
    }

    /// A slot finished a job: its report waits to be sent.
    pub(crate) fn finished(&mut self, report: JobReport, now: Instant) {
        self.running.remove(&(report.job.pipeline, report.job.job));
        self.job_ms = Some(pypelinin_common::moving_average(
            self.job_ms,
            report.ran_ms() as f64,
            JOB_MS_WEIGHT,
        ));
        if self.unsent.is_empty() {
            self.unsent_since = Some(now);
        }
        self.unsent.push(report);
    }

    /// When the waiting reports must leave, or `None` if they may leave now (or there
    /// are none).
    ///
    /// A report is the router's cue to send more work, and each one costs the router a
    /// turn, a reply and a push. While the broker holds jobs queued beyond its `slots`,
    /// every slot has its next job already: the report may wait (up to `max`, and while
    /// fewer than [`REPORT_BATCH`] wait) for others to share its message, so that the
    /// router handles them in one turn. It waits at most a quarter of the time the
    /// queued jobs last at the recent job length, so the slots never run dry for want
    /// of the answer; under [`MIN_LINGER`], or too short for two more jobs to end in it
    /// ([`LINGER_MIN_COMPANY`]), not at all. With a free slot, a drain,
    /// a resent report or `max` zero, it leaves at once: a quiet cluster sees no added
    /// latency.
    pub(crate) fn linger(&self, slots: usize, max: Duration, now: Instant) -> Option<Instant> {
        // Set when a first report waits, cleared when they leave or others join to
        // be sent again: some wait, and none of them is a report sent before.
        let since = self.unsent_since?;
        let queued = self.running.len().saturating_sub(slots);
        if self.unsent.len() >= REPORT_BATCH
            || queued == 0
            || slots == 0
            || self.drain_until.is_some()
        {
            return None;
        }
        // One job ends every `every_ms`, all slots together.
        let every_ms = self.job_ms? / slots as f64;
        let lasts_ms = queued as f64 * every_ms;
        let wait = max.min(Duration::from_secs_f64(
            lasts_ms * LINGER_SHARE_OF_QUEUE / 1000.0,
        ));
        if wait < MIN_LINGER || wait.as_secs_f64() * 1000.0 < LINGER_MIN_COMPANY * every_ms {
            return None;
        }
        let due = since + wait;
        (due > now).then_some(due)
    }

    /// Jobs assigned and not finished.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }

    /// Reports not acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.unsent.len() + self.inflight.values().map(|(_, r)| r.len()).sum::<usize>()
    }

    /// The reports to send now, if any: hand them back with [`Ledger::sent`] or
    /// [`Ledger::not_sent`].
    pub(crate) fn take_unsent(&mut self) -> Option<Vec<JobReport>> {
        self.unsent_since = None;
        (!self.unsent.is_empty()).then(|| std::mem::take(&mut self.unsent))
    }

    /// `reports` left at `now` as request `id`.
    pub(crate) fn sent(&mut self, id: u64, reports: Vec<JobReport>, now: Instant) {
        self.inflight.insert(id, (now, reports));
    }

    /// `reports` could not leave: they go with the next try.
    pub(crate) fn not_sent(&mut self, mut reports: Vec<JobReport>) {
        reports.append(&mut self.unsent);
        self.unsent = reports;
        self.unsent_since = None;
    }

    /// `reports` go out again with the next message, at once: they waited long enough.
    fn send_again(&mut self, reports: Vec<JobReport>) {
        self.unsent.extend(reports);
        self.unsent_since = None;
    }

    /// The router answered request `id`: the reports it carried, if any, are done with.
    pub(crate) fn answered(&mut self, id: u64) -> Option<Vec<JobReport>> {
        self.inflight.remove(&id).map(|(_, r)| r)
    }

    /// `reports` were refused because the router does not know the broker (it
    /// restarted): they are sent again after the next hello.
    pub(crate) fn refused(&mut self, reports: Vec<JobReport>) {
        self.send_again(reports);
    }

    /// Reports unacknowledged for longer than [`REQUEST_TIMEOUT`] at `now` are sent
    /// again.
    pub(crate) fn resend_overdue(&mut self, now: Instant) {
        let overdue = |at: &Instant| now.saturating_duration_since(*at) > REQUEST_TIMEOUT;
        if !self.inflight.values().any(|(at, _)| overdue(at)) {
            return;
        }
        let ids: Vec<u64> = (self.inflight.iter())
            .filter(|(_, (at, _))| overdue(at))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, reports)) = self.inflight.remove(&id) {
                self.send_again(reports);
            }
        }
    }

    /// For a new hello: every unacknowledged report is sent again after it. The jobs
    /// running, and those whose reports it announces.
    pub(crate) fn for_hello(&mut self) -> (Vec<JobRef>, Vec<JobRef>) {
        let inflight: Vec<_> = self.inflight.drain().collect();
        for (_, (_, reports)) in inflight {
            self.send_again(reports);
        }
        let running = self.running.values().copied().collect();
        let unreported = self.unsent.iter().map(|r| r.job).collect();
        (running, unreported)
    }

    /// Shutting down at `now`: the drain gives up after `timeout`.
    pub(crate) fn start_drain(&mut self, now: Instant, timeout: Duration) {
        self.drain_until.get_or_insert(now + timeout);
    }

    /// Whether a drain has started.
    pub(crate) fn draining(&self) -> bool {
        self.drain_until.is_some()
    }

    /// Whether the drain is over at `now`, and how.
    pub(crate) fn drain_over(&self, now: Instant) -> Option<DrainEnd> {
        let until = self.drain_until?;
        if self.running.is_empty() && self.unsent.is_empty() && self.inflight.is_empty() {
            Some(DrainEnd::Idle)
        } else if now >= until {
            Some(DrainEnd::TimedOut)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::Data;

    fn job(n: u32) -> JobRef {
        JobRef {
            pipeline: pypelinin_common::protocol::PipelineId(uuid::Uuid::nil()),
            job: n,
            attempt: 1,
        }
    }

    fn report(n: u32) -> JobReport {
        JobReport {
            job: job(n),
            started_ms: 1,
            finished_ms: 2,
            result: Ok(Data::new()),
        }
    }

    fn jobs(reports: &[JobReport]) -> Vec<u32> {
        reports.iter().map(|r| r.job.job).collect()
    }

    #[test]
    fn an_assigned_job_is_running_until_it_finishes_then_its_report_asks_for_more() {
        let mut l = Ledger::default();
        assert!(
            l.take_unsent().is_none(),
            "nothing to report, nothing asked"
        );
        l.assigned(job(1));
        l.assigned(job(2));
        assert_eq!(l.running(), 2);
        l.finished(report(1), Instant::now());
        assert_eq!(l.running(), 1);
        let (running, unreported) = l.for_hello();
        assert_eq!((running, unreported), (vec![job(2)], vec![job(1)]));
        let sent = l.take_unsent().expect("the freed slot's report goes out");
        assert_eq!(jobs(&sent), [1]);
        assert!(l.take_unsent().is_none(), "sent once");
    }

    #[test]
    fn a_report_is_kept_until_acknowledged() {
        let mut l = Ledger::default();
        l.assigned(job(1));
        l.finished(report(1), Instant::now());
        let t0 = Instant::now();
        let r = l.take_unsent().unwrap();
        l.sent(7, r, t0);
        assert_eq!(l.unacked(), 1);
        assert!(l.answered(8).is_none(), "another request's answer");
        assert_eq!(l.unacked(), 1);
        assert_eq!(l.answered(7).map(|r| jobs(&r)), Some(vec![1]));
        assert_eq!(l.unacked(), 0);
    }

    #[test]
    fn a_report_that_could_not_leave_goes_first_next_time() {
        let mut l = Ledger::default();
        l.finished(report(1), Instant::now());
        let r = l.take_unsent().unwrap();
        l.finished(report(2), Instant::now());
        l.not_sent(r);
        assert_eq!(jobs(&l.take_unsent().unwrap()), [1, 2]);
    }

    #[test]
    fn an_unacknowledged_report_is_sent_again_after_the_request_timeout_only() {
        let mut l = Ledger::default();
        l.finished(report(1), Instant::now());
        let t0 = Instant::now();
        let r = l.take_unsent().unwrap();
        l.sent(1, r, t0);
        l.resend_overdue(t0 + REQUEST_TIMEOUT);
        assert!(l.take_unsent().is_none(), "not overdue yet");
        l.resend_overdue(t0 + REQUEST_TIMEOUT + Duration::from_millis(1));
        assert_eq!(jobs(&l.take_unsent().unwrap()), [1]);
        assert!(
            l.answered(1).is_none(),
            "the old request no longer carries it"
        );
    }

    #[test]
    fn a_hello_announces_and_resends_every_unacknowledged_report() {
        let mut l = Ledger::default();
        l.finished(report(1), Instant::now());
        let r = l.take_unsent().unwrap();
        l.sent(1, r, Instant::now());
        l.finished(report(2), Instant::now());
        let (_, unreported) = l.for_hello();
        let mut unreported: Vec<u32> = unreported.iter().map(|j| j.job).collect();
        unreported.sort();
        assert_eq!(unreported, [1, 2]);
        let mut resent = jobs(&l.take_unsent().unwrap());
        resent.sort();
        assert_eq!(resent, [1, 2]);
    }

    #[test]
    fn reports_refused_by_a_restarted_router_are_sent_again() {
        let mut l = Ledger::default();
        l.finished(report(1), Instant::now());
        let r = l.take_unsent().unwrap();
        l.sent(3, r, Instant::now());
        let refused = l.answered(3).unwrap();
        l.refused(refused);
        assert_eq!(jobs(&l.take_unsent().unwrap()), [1]);
    }

    #[test]
    fn a_drain_waits_for_running_jobs_and_their_acknowledgements() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        assert!(l.drain_over(t0).is_none(), "not draining");
        l.assigned(job(1));
        l.start_drain(t0, Duration::from_secs(30));
        assert!(l.draining());
        assert_eq!(l.drain_over(t0), None, "a job runs");
        l.finished(report(1), Instant::now());
        assert_eq!(l.drain_over(t0), None, "its report is not sent");
        let r = l.take_unsent().unwrap();
        l.sent(1, r, t0);
        assert_eq!(l.drain_over(t0), None, "its report is not acknowledged");
        l.answered(1);
        assert_eq!(l.drain_over(t0), Some(DrainEnd::Idle));
    }

    #[test]
    fn a_drain_gives_jobs_back_at_its_timeout() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        l.assigned(job(1));
        l.start_drain(t0, Duration::from_secs(30));
        // A second shutdown signal does not move the deadline.
        l.start_drain(t0 + Duration::from_secs(20), Duration::from_secs(30));
        assert_eq!(l.drain_over(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            l.drain_over(t0 + Duration::from_secs(30)),
            Some(DrainEnd::TimedOut)
        );
    }

    /// A report of job `n` that ran `ms` milliseconds.
    fn took(n: u32, ms: u64) -> JobReport {
        JobReport {
            finished_ms: 1 + ms,
            ..report(n)
        }
    }

    /// A ledger of `held` jobs assigned whose first two took `ms` each and are reported:
    /// the job length is known, nothing waits.
    fn busy(held: u32, ms: u64, t0: Instant) -> Ledger {
        let mut l = Ledger::default();
        for n in 0..held {
            l.assigned(job(n));
        }
        l.finished(took(0, ms), t0);
        l.finished(took(1, ms), t0);
        l.take_unsent();
        l
    }

    /// [`busy`], then one more job of `ms` ends at `t0`.
    fn one_more(held: u32, ms: u64, t0: Instant) -> Ledger {
        let mut l = busy(held, ms, t0);
        l.finished(took(2, ms), t0);
        l
    }

    const MAX: Duration = Duration::from_millis(4);

    #[test]
    fn a_report_lingers_only_while_every_slot_has_its_next_job() {
        let t0 = Instant::now();
        // Two slots, 100 jobs held: 97 once a third ends, 95 of them queued, which last
        // 47.5 ms at 1 ms a job on two slots: a quarter of that is over the 4 ms cap.
        let mut l = busy(100, 1, t0);
        let t1 = t0 + Duration::from_micros(300);
        l.finished(took(2, 1), t1);
        assert_eq!(
            l.linger(2, MAX, t1),
            Some(t1 + MAX),
            "queued work: it waits"
        );
        let t2 = t1 + Duration::from_millis(1);
        l.finished(took(3, 1), t2);
        assert_eq!(
            l.linger(2, MAX, t2),
            Some(t1 + MAX),
            "the oldest report sets the time"
        );
        assert_eq!(l.linger(2, MAX, t1 + MAX), None, "its time is up");
        assert_eq!(jobs(&l.take_unsent().unwrap()), [2, 3]);
        assert_eq!(l.linger(2, MAX, t1 + MAX), None, "nothing waits");
        // With only what the slots run left, a report goes at once.
        let l = one_more(4, 1, t1);
        assert_eq!(l.linger(2, MAX, t1), None, "a slot is about to be free");
    }

    #[test]
    fn a_short_queue_lingers_a_quarter_of_what_it_lasts_a_tiny_one_and_a_zero_cap_not_at_all() {
        let t0 = Instant::now();
        // One slot, 14 held; once a third ends, 11 left, 10 queued: 10 ms of work.
        let l = one_more(14, 1, t0);
        let due = l.linger(1, MAX, t0).expect("queued work: it waits");
        let waits = due - t0;
        assert!(
            waits > Duration::from_micros(2400) && waits < Duration::from_micros(2600),
            "a quarter of 10 ms, not the 4 ms cap: {waits:?}"
        );
        assert_eq!(l.linger(1, Duration::ZERO, t0), None, "lingering off");
        // Three queued jobs of 1 ms: a linger of 750 µs is not worth it.
        let l = one_more(6, 1, t0);
        assert_eq!(l.linger(1, MAX, t0), None, "too short to linger");
        // Jobs of 10 ms on four slots, eight queued (20 ms): a linger of 4 ms would see
        // one or two more end; not worth delaying the report.
        let l = one_more(15, 10, t0);
        assert_eq!(
            (l.running(), l.linger(4, MAX, t0)),
            (12, None),
            "little company"
        );
        // Jobs of 5 ms, the same queue length: one ends every 1.25 ms, worth 4 ms.
        let l = one_more(23, 5, t0);
        assert!(l.linger(4, MAX, t0).is_some(), "company enough");
        // Jobs under a millisecond: however many are queued, no linger.
        let l = one_more(1_000, 0, t0);
        assert_eq!(l.linger(1, MAX, t0), None, "jobs of microseconds");
    }

    #[test]
    fn a_full_batch_leaves_at_once() {
        let t0 = Instant::now();
        let mut l = busy(REPORT_BATCH as u32 + 100, 1, t0);
        for n in 2..(REPORT_BATCH as u32 + 1) {
            l.finished(took(n, 1), t0);
            assert!(l.linger(1, MAX, t0).is_some());
        }
        l.finished(took(REPORT_BATCH as u32 + 1, 1), t0);
        assert_eq!(l.linger(1, MAX, t0), None, "a full batch leaves at once");
        assert_eq!(l.take_unsent().unwrap().len(), REPORT_BATCH);
    }

    #[test]
    fn resent_reports_and_a_drain_do_not_linger() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        for n in 0..50 {
            l.assigned(job(n));
        }
        assert_eq!(l.linger(1, MAX, t0), None, "nothing to report");
        let mut l = busy(50, 2, t0);
        l.finished(took(2, 2), t0);
        let r = l.take_unsent().unwrap();
        l.not_sent(r);
        assert_eq!(
            l.linger(1, MAX, t0),
            None,
            "a report that could not leave goes next"
        );
        l.take_unsent().unwrap();
        l.finished(took(3, 2), t0);
        assert!(l.linger(1, MAX, t0).is_some());
        // A report overdue for its answer joins them: all leave at once.
        l.sent(5, vec![took(4, 2)], t0);
        l.resend_overdue(t0 + REQUEST_TIMEOUT * 2);
        assert_eq!(l.linger(1, MAX, t0), None, "one is being sent again");
        assert_eq!(jobs(&l.take_unsent().unwrap()), [3, 4]);
        l.finished(took(5, 2), t0);
        assert!(l.linger(1, MAX, t0).is_some());
        l.start_drain(t0, Duration::from_secs(1));
        assert_eq!(l.linger(1, MAX, t0), None, "stopping: report at once");
    }
}
