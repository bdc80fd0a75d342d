//! Metrics: job-duration and request-latency histograms, throughput, and the
//! cluster-wide counts served by `Request::Metrics`.

use std::time::Duration;

use pypelinin_common::protocol::{ClusterMetrics, Histogram};

use super::peers::Role;
use super::RouterState;

/// Bounds of the job-duration histograms, in seconds.
const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
];
/// Bounds of the request-latency histogram, in seconds.
pub(super) const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
];
/// Seconds of throughput history kept for the dashboard's chart.
const THROUGHPUT_SECONDS: u64 = 300;

impl RouterState {
    /// Counts a finished attempt of `worker` that took `seconds`.
    pub(super) fn record_attempt(&mut self, worker: String, seconds: f64) {
        self.job_durations
            .entry(worker)
            .or_insert_with(|| Histogram::new(DURATION_BOUNDS))
            .observe(seconds);
        self.attempts_finished += 1;
        let sec = self.clock.wall_ms() / 1000;
        match self.throughput.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.throughput.push_back((sec, 1)),
        }
        while self
            .throughput
            .front()
            .is_some_and(|(s, _)| *s + THROUGHPUT_SECONDS < sec)
        {
            self.throughput.pop_front();
        }
    }

    /// Records how long a request took, arrival to reply.
    pub fn observe_latency(&mut self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    pub(super) fn metrics(&self) -> ClusterMetrics {
        let mut m = ClusterMetrics::default();
        for p in self.pipelines.values() {
            *m.pipelines.entry(p.rec.state.as_str().into()).or_default() += 1;
            for j in &p.jobs {
                *m.jobs.entry(j.state.as_str().into()).or_default() += 1;
            }
        }
        // Finished pipelines are not in memory: their counts are kept aside.
        for (s, n) in &self.tally.pipelines {
            *m.pipelines.entry(s.as_str().into()).or_default() += n;
        }
        for (s, n) in &self.tally.jobs {
            *m.jobs.entry(s.as_str().into()).or_default() += n;
        }
        m.queue_depth = (self.queues.values().map(|q| q.len()).sum::<usize>()
            + self.parked()
            + self.delayed.len()) as u64;
        for p in self.peers.values() {
            match p.role {
                Role::Broker(_) => m.brokers += 1,
                Role::Pipeliner(_) => m.pipeliners += 1,
            }
        }
        m.job_duration = self
            .job_durations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.request_latency = self.latency.clone();
        (m.refused_keys, m.refused_handshakes) = pypelinin_common::curve::refused_counts();
        m.attempts_finished = self.attempts_finished;
        m.job_reports = self.job_reports;
        m.report_messages = self.report_messages;
        m.throughput = self.throughput.iter().copied().collect();
        m
    }
}
