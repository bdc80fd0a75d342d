//! The schedule handlers: the list, one schedule with its grid (rows are the latest
//! runs' logical dates, columns the template's jobs, each cell a job's state), and the
//! actions: pause, resume, trigger, and clear (retry) one run.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use pypelinin_common::protocol::{PipelineId, ProtocolError, ScheduleRequest};
use pypelinin_common::render;
use pypelinin_common::schedule::{format_in, parse_zone, ScheduleStatus, TickRecord};
use pypelinin_common::transport::TransportError;
use pypelinin_common::{now_ms, PipelineStatus};
use serde_json::{json, Value};
use tracing::info;

use super::pipelines::query_pairs;
use super::{Answer, App};
use crate::link::{Link, LinkError};

/// Grid rows (runs) shown when the request names no limit.
pub const DEFAULT_GRID_ROWS: u32 = 25;
/// Most grid rows one request returns (each costs the router a status lookup).
pub const MAX_GRID_ROWS: u32 = 100;
/// Latest ticks listed per schedule in `last_runs`.
pub const LAST_RUNS: usize = 5;
/// How far back (in runs of the schedule, newest first) a clear looks for the run it
/// names: further back, `pypelinin retry ID` still works.
pub const CLEAR_WINDOW: u32 = 1000;

/// `t_ms` as RFC 3339 in the schedule's zone (UTC when it names none or a bad one).
fn time_in(status: &ScheduleStatus, t_ms: u64) -> String {
    match status.spec.timezone.as_deref().map(parse_zone) {
        Some(Ok(zone)) => format_in(t_ms, zone),
        _ => render::rfc3339_ms(t_ms),
    }
}

/// `active`, `paused`, or `ended` (no tick left: its `end` is past).
pub fn schedule_state(status: &ScheduleStatus) -> &'static str {
    if status.paused {
        "paused"
    } else if status.next_ticks.is_empty() {
        "ended"
    } else {
        "active"
    }
}

fn tick_json(status: &ScheduleStatus, t: &TickRecord) -> Value {
    json!({
        "logical_date": time_in(status, t.logical_date),
        "logical_date_ms": t.logical_date,
        "pipeline": t.pipeline,
        "state": t.state,
        "note": t.note,
    })
}

/// A schedule as the API shows it: its settings, state, counts, next ticks (RFC 3339
/// in its zone) and the latest ticks with what became of them.
pub fn schedule_json(s: &ScheduleStatus) -> Value {
    let spec = &s.spec;
    let next: Vec<String> = s.next_ticks.iter().map(|t| time_in(s, *t)).collect();
    json!({
        "name": spec.name,
        "state": schedule_state(s),
        "paused": s.paused,
        "cron": spec.cron,
        "timezone": spec.timezone.as_deref().unwrap_or("UTC"),
        "overrun": spec.overrun.as_str(),
        "catchup": spec.catchup,
        "max_running": spec.max_running,
        "running": s.running.len(),
        "running_ids": s.running,
        "pending": s.pending.len(),
        "created_ms": s.created_ms,
        "start": spec.start_ms.map(|t| time_in(s, t)),
        "end": spec.end_ms.map(|t| time_in(s, t)),
        "next_tick": next.first(),
        "next_tick_ms": s.next_ticks.first(),
        "next_ticks": next,
        "jobs": spec.pipeline.jobs.keys().collect::<Vec<_>>(),
        "last_runs": s.recent.iter().take(LAST_RUNS).map(|t| tick_json(s, t)).collect::<Vec<_>>(),
    })
}

/// The grid: the latest `limit` runs of the schedule, newest first, each with its
/// jobs' states; the columns are the template's jobs, then any other a run had.
fn grid(l: &mut Link, s: &ScheduleStatus, limit: u32) -> Result<Value, LinkError> {
    let runs = l.runs_of(&s.spec.name, limit)?;
    let mut columns: Vec<String> = s.spec.pipeline.jobs.keys().cloned().collect();
    let mut known: BTreeSet<String> = columns.iter().cloned().collect();
    let mut rows = Vec::with_capacity(runs.len());
    for run in runs {
        let status: PipelineStatus = match l.status(run.id) {
            Ok(status) => status,
            // Forgotten between the list and this lookup: leave it out.
            Err(LinkError::Transport(TransportError::Refused(ProtocolError::UnknownPipeline(
                _,
            )))) => continue,
            Err(e) => return Err(e),
        };
        let mut jobs = serde_json::Map::new();
        for (name, job) in &status.jobs {
            if known.insert(name.clone()) {
                columns.push(name.clone());
            }
            jobs.insert(name.clone(), json!(job.state));
        }
        let origin = run.origin.as_ref();
        rows.push(json!({
            "logical_date": origin.map(|o| time_in(s, o.logical_date)),
            "logical_date_ms": origin.map(|o| o.logical_date),
            "kind": origin.map(|o| o.kind),
            "pipeline": run.id,
            "state": status.state,
            "jobs": jobs,
        }));
    }
    Ok(json!({ "columns": columns, "rows": rows }))
}

fn show(l: &mut Link, name: &str) -> Result<ScheduleStatus, LinkError> {
    let shown = l.schedules(ScheduleRequest::Show {
        name: name.to_string(),
    })?;
    shown
        .into_iter()
        .next()
        .ok_or_else(|| LinkError::Unexpected(format!("no schedule in the answer for {name:?}")))
}

/// `GET /api/schedules`: every schedule, by name.
pub(super) async fn list_schedules(State(app): State<Arc<App>>) -> Answer {
    match app.links.run(|l| l.schedules(ScheduleRequest::List)).await {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(schedule_json).collect();
            Answer::json(200, &json!({ "schedules": items, "now_ms": now_ms() }))
        }
        Err(e) => e.into(),
    }
}

/// `GET /api/schedules/{name}?limit=N`: one schedule with its `grid`.
pub(super) async fn schedule(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let mut limit = DEFAULT_GRID_ROWS;
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        if key == "limit" {
            match value.parse::<u32>() {
                Ok(n) => limit = n.clamp(1, MAX_GRID_ROWS),
                Err(_) => return Answer::error(400, &format!("limit {value:?} is not a number")),
            }
        }
    }
    let answer = app
        .links
        .run(move |l| {
            let s = show(l, &name)?;
            let grid = grid(l, &s, limit)?;
            Ok((s, grid))
        })
        .await;
    match answer {
        Ok((s, grid)) => {
            let mut v = schedule_json(&s);
            v["grid"] = grid;
            v["now_ms"] = now_ms().into();
            Answer::json(200, &v)
        }
        Err(e) => e.into(),
    }
}

async fn change(app: &App, name: String, paused: bool) -> Answer {
    info!(schedule = %name, paused, "pause or resume asked from the dashboard");
    let req = if paused {
        ScheduleRequest::Pause { name }
    } else {
        ScheduleRequest::Resume { name }
    };
    let answer = match app.links.run(move |l| l.schedules(req)).await {
        Ok(list) => match list.first() {
            Some(s) => Answer::json(200, &schedule_json(s)),
            None => Answer::error(502, "the router answered with no schedule"),
        },
        Err(e) => e.into(),
    };
    app.hub.wake();
    answer
}

/// `POST /api/schedules/{name}/pause`: the schedule, paused.
pub(super) async fn pause(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer {
    change(&app, name, true).await
}

/// `POST /api/schedules/{name}/resume`: the schedule, ticking again.
pub(super) async fn resume(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer {
    change(&app, name, false).await
}

/// `POST /api/schedules/{name}/trigger`: `{"pipeline": id}` of the run made now.
pub(super) async fn trigger(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer {
    info!(schedule = %name, "trigger asked from the dashboard");
    let answer = match app.links.run(move |l| l.trigger(&name)).await {
        Ok(id) => Answer::json(200, &json!({ "pipeline": id })),
        Err(e) => e.into(),
    };
    app.hub.wake();
    answer
}

/// `POST /api/schedules/{name}/clear` with `{"pipeline": id}`: runs again the jobs of
/// that run that did not succeed (Airflow's "clear"); the run's status after. A
/// pipeline that is not among the schedule's latest [`CLEAR_WINDOW`] runs is a 404.
pub(super) async fn clear(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ClearBody {
        pipeline: PipelineId,
    }
    let id = match serde_json::from_slice::<ClearBody>(&body) {
        Ok(b) => b.pipeline,
        Err(e) => return Answer::error(400, &format!("body: {e}")),
    };
    info!(schedule = %name, pipeline = %id, "clear asked from the dashboard");
    let answer = Answer::of(
        app.links
            .run(move |l| {
                show(l, &name)?;
                if !l.runs_of(&name, CLEAR_WINDOW)?.iter().any(|r| r.id == id) {
                    return Err(LinkError::Transport(TransportError::Refused(
                        ProtocolError::UnknownPipeline(id),
                    )));
                }
                l.retry(id, &[])
            })
            .await,
    );
    app.hub.wake();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(paused: bool, next_ticks: Vec<u64>) -> ScheduleStatus {
        let spec = serde_json::from_value(json!({
            "name": "nightly",
            "cron": "0 0 * * *",
            "timezone": "Europe/Paris",
            "pipeline": {"jobs": {"a": {"worker": "Noop"}}},
        }))
        .unwrap();
        ScheduleStatus {
            spec,
            paused,
            created_ms: 0,
            next_ticks,
            running: Vec::new(),
            pending: vec![1],
            waiting_for: None,
            recent: vec![TickRecord {
                logical_date: 0,
                pipeline: None,
                state: None,
                note: Some("skipped".into()),
            }],
        }
    }

    #[test]
    fn schedules_show_their_state_and_times_in_their_zone() {
        assert_eq!(schedule_state(&status(false, vec![0])), "active");
        assert_eq!(schedule_state(&status(true, vec![0])), "paused");
        assert_eq!(schedule_state(&status(false, Vec::new())), "ended");
        let v = schedule_json(&status(false, vec![0]));
        assert_eq!(v["next_tick"], "1970-01-01T01:00:00+01:00");
        assert_eq!(v["timezone"], "Europe/Paris");
        assert_eq!(v["overrun"], "skip");
        assert_eq!(v["max_running"], 1);
        assert_eq!(v["pending"], 1);
        assert_eq!(v["jobs"], json!(["a"]));
        assert_eq!(v["last_runs"][0]["note"], "skipped");
        assert_eq!(
            v["last_runs"][0]["logical_date"],
            "1970-01-01T01:00:00+01:00"
        );
    }
}
