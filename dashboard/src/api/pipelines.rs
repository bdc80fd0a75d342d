//! The pipeline handlers: the list (with [`ListQuery`] and its query-string parsing),
//! one pipeline, its outputs, its DOT graph, a job's captured log, cancel and retry.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use pypelinin_common::protocol::{LogPage, PipelineId};
use pypelinin_common::render;
use pypelinin_common::{now_ms, PipelineState};
use serde_json::{json, Value};
use tracing::info;

use super::{Answer, App, DEFAULT_LIMIT, MAX_LIMIT};
use crate::shapes::{pipeline_json, summary_json};

pub(super) fn parse_id(id: &str) -> Result<PipelineId, Answer> {
    id.parse::<PipelineId>()
        .map_err(|_| Answer::error(400, &format!("{id:?} is not a pipeline id")))
}

pub(super) async fn list(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Answer {
    let q = match ListQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return Answer::error(400, &e),
    };
    // A search looks further back than the page it returns.
    let fetch = if q.q.is_empty() { q.limit } else { MAX_LIMIT };
    let (state, before) = (q.state, q.before);
    let list = match app
        .links
        .run(move |l| l.list_page(fetch, state, before))
        .await
    {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let now = now_ms();
    let page: Vec<_> = list
        .iter()
        .filter(|p| {
            q.q.is_empty()
                || p.id.to_string().contains(&q.q)
                || p.state.as_str().contains(q.q.as_str())
        })
        .take(q.limit as usize)
        .collect();
    // A full page may have older pipelines behind it: the cursor for the next one.
    let next_before = (page.len() == q.limit as usize)
        .then(|| page.last().map(|p| p.seq))
        .flatten();
    let rows: Vec<Value> = page.iter().map(|p| summary_json(p, now)).collect();
    Answer::json(
        200,
        &json!({ "pipelines": rows, "now_ms": now, "next_before": next_before }),
    )
}

pub(super) async fn pipeline(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    match app
        .links
        .run(move |l| Ok((l.status(id)?, l.spec(id)?)))
        .await
    {
        Ok((status, spec)) => Answer::json(200, &pipeline_json(&status, &spec, now_ms())),
        Err(e) => e.into(),
    }
}

pub(super) async fn outputs(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    match parse_id(&id) {
        Ok(id) => Answer::of(app.links.run(move |l| l.outputs(id)).await),
        Err(bad) => bad,
    }
}

pub(super) async fn dot(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    match app
        .links
        .run(move |l| Ok((l.spec(id)?, l.status(id)?)))
        .await
    {
        Ok((spec, status)) => match render::dot(&spec, &status) {
            Ok(text) => Answer::text("text/vnd.graphviz; charset=utf-8", text),
            Err(e) => Answer::error(500, &e.to_string()),
        },
        Err(e) => e.into(),
    }
}

/// `GET /api/pipelines/{id}/jobs/{job}/logs?attempt=N&after=SEQ`: the lines of one
/// attempt's captured log (default: the latest) numbered after `after`, as text
/// decoded lossily (bytes that are not UTF-8 become `�`), with their number, time and
/// stream. The job panel asks again with the last number while `finished` is false.
pub(super) async fn logs(
    State(app): State<Arc<App>>,
    Path((id, job)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    let (mut attempt, mut after) = (None, 0u64);
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        let bad = || Answer::error(400, &format!("{key} {value:?} is not a number"));
        match key.as_str() {
            "attempt" if value.is_empty() || value == "latest" => attempt = None,
            "attempt" => match value.parse::<u32>() {
                Ok(n) => attempt = Some(n),
                Err(_) => return bad(),
            },
            "after" => match value.parse::<u64>() {
                Ok(n) => after = n,
                Err(_) => return bad(),
            },
            _ => {}
        }
    }
    match app
        .links
        .run(move |l| l.logs(id, &job, attempt, after))
        .await
    {
        Ok(page) => Answer::json(200, &log_page_json(&page)),
        Err(e) => e.into(),
    }
}

/// A log page as the dashboard sends it.
pub fn log_page_json(p: &LogPage) -> Value {
    let lines: Vec<Value> = p
        .lines
        .iter()
        .map(|l| {
            json!({
                "seq": l.seq,
                "at_ms": l.at_ms,
                "time": render::rfc3339_ms(l.at_ms),
                "stream": l.stream.name(),
                "text": String::from_utf8_lossy(&l.bytes),
                "dropped": l.dropped,
            })
        })
        .collect();
    json!({
        "attempt": p.attempt,
        "attempts": p.attempts,
        "finished": p.finished,
        "job_final": p.job_final,
        "dropped_bytes": p.dropped_bytes,
        "last_seq": p.lines.last().map(|l| l.seq),
        "lines": lines,
    })
}

pub(super) async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    info!(pipeline = %id, "cancel asked from the dashboard");
    let answer = Answer::of(app.links.run(move |l| l.cancel(id)).await);
    app.hub.wake();
    answer
}

pub(super) async fn retry(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RetryBody {
        #[serde(default)]
        jobs: Vec<String>,
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    let jobs = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        match serde_json::from_slice::<RetryBody>(&body) {
            Ok(b) => b.jobs,
            Err(e) => return Answer::error(400, &format!("body: {e}")),
        }
    };
    info!(pipeline = %id, ?jobs, "retry asked from the dashboard");
    let answer = Answer::of(app.links.run(move |l| l.retry(id, &jobs)).await);
    app.hub.wake();
    answer
}

/// The query parameters of the pipeline list.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<PipelineState>,
    /// At most this many.
    pub limit: u32,
    /// Case-insensitive text to find in the id or the state.
    pub q: String,
    /// Only pipelines older than the one with this `seq` (the previous page's
    /// `next_before`).
    pub before: Option<u64>,
}

impl ListQuery {
    /// Parses `state=&limit=&q=&before=`; unknown keys are ignored, bad values refused.
    pub fn parse(query: &str) -> Result<ListQuery, String> {
        let mut out = ListQuery {
            limit: DEFAULT_LIMIT,
            ..ListQuery::default()
        };
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "state" => {
                    out.state = match value.as_str() {
                        "" | "all" => None,
                        other => Some(
                            serde_json::from_value(Value::String(other.to_string()))
                                .map_err(|_| format!("unknown state {other:?}"))?,
                        ),
                    }
                }
                "limit" => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| format!("limit {value:?} is not a number"))?;
                    out.limit = n.clamp(1, MAX_LIMIT);
                }
                "q" => out.q = value.trim().to_lowercase(),
                "before" => {
                    out.before = Some(
                        value
                            .parse()
                            .map_err(|_| format!("before {value:?} is not a number"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `a=1&b=x%20y` → `[("a", "1"), ("b", "x y")]`, percent and `+` decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_and_refuse_bad_values() {
        let q = ListQuery::parse("state=failed&limit=5&q=AB%20c+d").unwrap();
        assert_eq!(q.state, Some(PipelineState::Failed));
        assert_eq!(q.limit, 5);
        assert_eq!(q.q, "ab c d");
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(ListQuery::parse("state=all").unwrap().state, None);
        assert_eq!(ListQuery::parse("limit=999999").unwrap().limit, MAX_LIMIT);
        assert!(ListQuery::parse("state=sleeping").is_err());
        assert!(ListQuery::parse("limit=many").is_err());
        assert_eq!(ListQuery::parse("before=17").unwrap().before, Some(17));
        assert!(ListQuery::parse("before=yesterday").is_err());
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
