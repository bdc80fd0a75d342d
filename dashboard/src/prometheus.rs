//! The cluster metrics in Prometheus' text exposition format (version 0.0.4), served
//! at `GET /metrics` so that a Prometheus server can scrape the router's dashboard port.

use std::fmt::Write as _;

use pypelinin_common::protocol::{ClusterMetrics, Histogram};

/// Every state, so that a series exists (at 0) before anything reaches it.
const PIPELINE_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
const JOB_STATES: [&str; 8] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
    "skipped_done",
    "waiting",
];

/// The metrics in Prometheus' text exposition format (version 0.0.4).
pub fn prometheus(m: &ClusterMetrics) -> String {
    let mut out = String::new();
    section(
        &mut out,
        "pypelinin_pipelines",
        "gauge",
        "Pipelines the router knows, by state.",
    );
    out.push_str(&by_state(
        "pypelinin_pipelines",
        &PIPELINE_STATES,
        &m.pipelines,
    ));
    section(
        &mut out,
        "pypelinin_jobs",
        "gauge",
        "Jobs of every pipeline the router knows, by state.",
    );
    out.push_str(&by_state("pypelinin_jobs", &JOB_STATES, &m.jobs));
    section(
        &mut out,
        "pypelinin_job_duration_seconds",
        "histogram",
        "Duration of finished job attempts, by worker.",
    );
    for (worker, h) in &m.job_duration {
        histogram(
            &mut out,
            "pypelinin_job_duration_seconds",
            &format!("worker=\"{}\"", escape_label(worker)),
            h,
        );
    }
    section(
        &mut out,
        "pypelinin_queue_depth",
        "gauge",
        "Jobs ready to run, waiting for a broker slot or a retry delay.",
    );
    let _ = writeln!(out, "pypelinin_queue_depth {}", m.queue_depth);
    section(
        &mut out,
        "pypelinin_brokers_alive",
        "gauge",
        "Brokers connected to the router.",
    );
    let _ = writeln!(out, "pypelinin_brokers_alive {}", m.brokers);
    section(
        &mut out,
        "pypelinin_pipeliners_alive",
        "gauge",
        "Pipeliners connected to the router.",
    );
    let _ = writeln!(out, "pypelinin_pipeliners_alive {}", m.pipeliners);
    section(
        &mut out,
        "pypelinin_attempts_finished_total",
        "counter",
        "Job attempts finished since the router started.",
    );
    let _ = writeln!(
        out,
        "pypelinin_attempts_finished_total {}",
        m.attempts_finished
    );
    section(
        &mut out,
        "pypelinin_job_reports_total",
        "counter",
        "Job reports brokers sent (a report sent again counts again).",
    );
    let _ = writeln!(out, "pypelinin_job_reports_total {}", m.job_reports);
    section(
        &mut out,
        "pypelinin_report_messages_total",
        "counter",
        "Messages that carried the job reports: brokers batch reports while their queue is full.",
    );
    let _ = writeln!(out, "pypelinin_report_messages_total {}", m.report_messages);
    section(
        &mut out,
        "pypelinin_refused_keys_total",
        "counter",
        "Distinct client keys the router's CURVE check refused since it started.",
    );
    let _ = writeln!(out, "pypelinin_refused_keys_total {}", m.refused_keys);
    section(
        &mut out,
        "pypelinin_refused_handshakes_total",
        "counter",
        "Connection handshakes the router's CURVE check refused since it started.",
    );
    let _ = writeln!(
        out,
        "pypelinin_refused_handshakes_total {}",
        m.refused_handshakes
    );
    section(
        &mut out,
        "pypelinin_request_latency_seconds",
        "histogram",
        "Time from a request's arrival at the router to its reply leaving it.",
    );
    histogram(
        &mut out,
        "pypelinin_request_latency_seconds",
        "",
        &m.request_latency,
    );
    out
}

fn section(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn by_state(
    name: &str,
    states: &[&str],
    counts: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut out = String::new();
    for s in states {
        let n = counts.get(*s).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}{{state=\"{s}\"}} {n}");
    }
    // States this dashboard does not know yet (a newer router) are still exported.
    for (s, n) in counts {
        if !states.contains(&s.as_str()) {
            let _ = writeln!(out, "{name}{{state=\"{}\"}} {n}", escape_label(s));
        }
    }
    out
}

/// `_bucket` lines (cumulative, `+Inf` last), `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (k, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
            float(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", float(h.sum));
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

fn float(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{x}")
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_every_state() {
        let mut m = ClusterMetrics::default();
        m.pipelines.insert("failed".into(), 2);
        m.jobs.insert("succeeded".into(), 7);
        let mut h = Histogram::new(&[0.01, 0.1, 1.0]);
        for s in [0.005, 0.05, 0.05, 5.0] {
            h.observe(s);
        }
        m.job_duration.insert("Wo\"rk".into(), h.clone());
        m.request_latency = h;
        m.queue_depth = 3;
        m.brokers = 2;
        let text = prometheus(&m);
        for line in [
            "# TYPE pypelinin_pipelines gauge",
            "pypelinin_pipelines{state=\"failed\"} 2",
            "pypelinin_pipelines{state=\"running\"} 0",
            "pypelinin_jobs{state=\"succeeded\"} 7",
            "# TYPE pypelinin_job_duration_seconds histogram",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"0.01\"} 1",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"0.1\"} 3",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"1\"} 3",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"+Inf\"} 4",
            "pypelinin_job_duration_seconds_count{worker=\"Wo\\\"rk\"} 4",
            "pypelinin_queue_depth 3",
            "pypelinin_brokers_alive 2",
            "pypelinin_request_latency_seconds_bucket{le=\"0.1\"} 3",
            "pypelinin_request_latency_seconds_bucket{le=\"+Inf\"} 4",
            "pypelinin_request_latency_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n---\n{text}");
        }
        assert!(text.contains("pypelinin_request_latency_seconds_sum 5.105"));
    }
}
