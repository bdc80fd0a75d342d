//! The JSON shapes of pipelines as the API and the event stream show them: a summary
//! line of the list, and one pipeline with its edges and progress. One place, so that a
//! page sees the same object whether it asked or was pushed it.

use pypelinin_common::protocol::PipelineSummary;
use pypelinin_common::render::{self, Progress};
use pypelinin_common::{Pipeline, PipelineSpec, PipelineStatus};
use serde_json::{json, Value};

/// A line of the pipeline list as the API shows it: the summary plus `duration_ms`
/// (until now for a pipeline still going).
pub fn summary_json(p: &PipelineSummary, now: u64) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["duration_ms"] = p
        .finished_ms
        .unwrap_or(now)
        .saturating_sub(p.submitted_ms)
        .into();
    v
}

/// The status, each job with its `after`, its dispatch settings (`trigger_rule`,
/// effective `priority` with its `priority_weight` and `weight_rule`, `pool` and
/// `pool_slots`, `allow_failure`), the `edges`, the `progress` counts, the
/// `duration_ms` so far and `now_ms`.
pub fn pipeline_json(status: &PipelineStatus, spec: &PipelineSpec, now: u64) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    // The router accepted this spec, so it builds; were it not to, the settings that
    // need the DAG are left out rather than the page.
    let dag = Pipeline::new(spec.clone()).ok();
    for (name, job) in &spec.jobs {
        if let Some(j) = v["jobs"].get_mut(name) {
            j["after"] = json!(job.after);
            j["trigger_rule"] = json!(job.trigger_rule.as_str());
            j["weight_rule"] = json!(job.weight_rule.as_str());
            j["priority_weight"] = json!(job.weight());
            if let Some(i) = dag.as_ref().and_then(|d| d.index_of(name)) {
                j["priority"] = json!(dag.as_ref().map(|d| d.effective_priority(i)));
            }
            if let Some(pool) = &job.pool {
                j["pool"] = json!(pool);
                j["pool_slots"] = json!(job.slots());
            }
            if job.allow_failure {
                j["allow_failure"] = json!(true);
            }
        }
    }
    v["priority"] = json!(spec.priority);
    v["edges"] = json!(render::edges(spec));
    v["progress"] = json!(Progress::of(status));
    v["duration_ms"] = status
        .finished_ms
        .unwrap_or(now)
        .saturating_sub(status.submitted_ms)
        .into();
    v["now_ms"] = now.into();
    v
}
