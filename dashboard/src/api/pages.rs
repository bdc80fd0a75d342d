//! The page: `/` with the pipeline list rendered in, its script and style under
//! `/assets/`, and [`escape_html`] for what goes into it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use pypelinin_common::now_ms;
use pypelinin_common::protocol::PipelineSummary;
use pypelinin_common::render;

use super::{Answer, App, Signed, DEFAULT_LIMIT};
use crate::link::LinkError;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const SCHEDULES_JS: &str = include_str!("../../assets/schedules.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

pub(super) async fn app_js() -> Answer {
    Answer::text("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn schedules_js() -> Answer {
    Answer::text("text/javascript; charset=utf-8", SCHEDULES_JS)
}

pub(super) async fn app_css() -> Answer {
    Answer::text("text/css; charset=utf-8", APP_CSS)
}

/// The page, with the pipeline list rendered in (the script takes over and keeps it
/// live); without the token, when one is needed, the page comes empty and asks for it.
pub(super) async fn index(
    State(app): State<Arc<App>>,
    signed: Option<Extension<Signed>>,
) -> Answer {
    let rows = match signed {
        Some(Extension(Signed(false))) => String::new(),
        _ => index_rows(
            app.links.run(|l| l.list(DEFAULT_LIMIT, None)).await,
            now_ms(),
        ),
    };
    Answer::text(
        "text/html; charset=utf-8",
        INDEX_HTML.replace("{{rows}}", &rows),
    )
}

fn index_rows(list: Result<Vec<PipelineSummary>, LinkError>, now: u64) -> String {
    let list = match list {
        Ok(list) => list,
        Err(e) => {
            return format!(
                "<tr><td colspan=\"5\" class=\"error\">{}</td></tr>",
                escape_html(&e.to_string())
            )
        }
    };
    let mut rows = String::new();
    for p in &list {
        let pct = (p.done * 100).checked_div(p.jobs).unwrap_or(0);
        let _ = write!(
            rows,
            "<tr data-id=\"{id}\"><td><a class=\"mono\" href=\"#/pipeline/{id}\">{id}</a></td>\
             <td><span class=\"badge s-{state}\">{state}</span></td>\
             <td><div class=\"bar\"><span style=\"width:{pct}%\"></span></div> <small>{done}/{jobs}</small></td>\
             <td>{started} UTC</td><td>{took}</td></tr>",
            id = p.id,
            state = p.state.as_str(),
            done = p.done,
            jobs = p.jobs,
            started = render::utc_time(p.submitted_ms),
            took = render::duration(p.finished_ms.unwrap_or(now).saturating_sub(p.submitted_ms)),
        );
    }
    if list.is_empty() {
        rows.push_str("<tr><td colspan=\"5\" class=\"empty\">No pipeline yet.</td></tr>");
    }
    rows
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
