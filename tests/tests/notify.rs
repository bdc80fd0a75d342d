//! Notifications over real processes: a router that POSTs to a real HTTP server and
//! mails a real SMTP server (both started by the test on 127.0.0.1), failed
//! deliveries recorded with clear errors, and delivery after a `kill -9`.

use std::time::{Duration, Instant};

use pypelinin_common::notify::{DeliveryState, NotificationStatus, NotifyEvent, NotifySpec};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::{PipelineId, PipelineSpec};
use pypelinin_tests::endpoints::{free_port, hanging_listener, HttpServer, SmtpServer};
use pypelinin_tests::{job, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one(worker: &str, data: serde_json::Value) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    spec.jobs.insert("a".into(), job(worker, &[], data));
    spec
}

fn notifying(
    mut spec: PipelineSpec,
    webhook: &[String],
    email: &[&str],
    events: &[NotifyEvent],
) -> PipelineSpec {
    spec.notify = Some(Box::new(NotifySpec {
        webhook: webhook.to_vec(),
        email: email.iter().map(|s| s.to_string()).collect(),
        events: Some(events.to_vec()),
    }));
    spec
}

/// The router's notifications, through the CLI's `--json`.
fn notifications(c: &Cluster) -> Vec<NotificationStatus> {
    let (code, out, err) = c.cli(&["notifications", "--json", "--limit", "100"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("notifications --json is a JSON array")
}

#[test]
fn pipeline_ends_are_posted_to_the_router_wide_webhook_with_an_idempotency_key() {
    let hook = HttpServer::start();
    let url = hook.url("/alerts");
    let c = Cluster::start_with_router(
        1,
        2,
        &[
            "--notify-webhook",
            &url,
            "--notify-events",
            "failed,succeeded,cancelled",
        ],
    );
    let mut pm = c.client();
    let failed = pm.start(&one("Fail", json!({}))).unwrap();
    let succeeded = pm.start(&one("Echo", json!({}))).unwrap();
    let cancelled = pm.start(&one("Sleep", json!({"ms": 60_000}))).unwrap();
    assert!(!pm.wait(failed, WAIT).unwrap().is_success());
    assert!(pm.wait(succeeded, WAIT).unwrap().is_success());
    pm.cancel(cancelled).unwrap();
    for (id, event) in [
        (failed, "failed"),
        (succeeded, "succeeded"),
        (cancelled, "cancelled"),
    ] {
        let r = hook
            .wait_for(WAIT, |r| r.json()["pipeline"] == id.to_string())
            .unwrap_or_else(|| panic!("no POST for {event}; router log:\n{}", c.log("router.log")));
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/alerts"));
        assert_eq!(r.headers["content-type"], "application/json");
        let body = r.json();
        assert_eq!(body["event"], event);
        assert_eq!(body["state"], event, "the pipeline's final state");
        assert_eq!(
            r.headers["idempotency-key"],
            body["id"].as_str().unwrap(),
            "the key is the notification's id"
        );
        if event == "failed" {
            let e = body["error"].as_str().unwrap_or_default();
            assert!(e.starts_with("job a:"), "{body}");
        }
    }
    wait_until("the log to show three deliveries", WAIT, || {
        notifications(&c)
            .iter()
            .filter(|n| n.delivery == DeliveryState::Delivered)
            .count()
            == 3
    });
    let (_, table, _) = c.cli(&["notifications"]);
    assert!(
        table.contains("delivered") && table.contains(&url),
        "{table}"
    );
}

#[test]
fn a_retried_job_and_a_late_job_are_told_to_the_pipeline_s_own_webhook() {
    let hook = HttpServer::start();
    let url = vec![hook.url("/p")];
    let http = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_with_router(1, 2, &["--http", &http]);
    let mut pm = c.client();
    let mut flaky = one("Flaky", json!({"fail_attempts": 1}));
    flaky.retries = Some(1);
    flaky.retry_delay_ms = Some(50);
    let flaky = pm
        .start(&notifying(flaky, &url, &[], &[NotifyEvent::Retrying]))
        .unwrap();
    let mut slow = one("Sleep", json!({"ms": 4_000}));
    slow.jobs.get_mut("a").unwrap().warn_after_ms = Some(300);
    let slow = pm
        .start(&notifying(
            slow,
            &url,
            &[],
            &[NotifyEvent::Late, NotifyEvent::Succeeded],
        ))
        .unwrap();
    let r = hook
        .wait_for(WAIT, |r| r.json()["event"] == "retrying")
        .expect("a retrying POST");
    let body = r.json();
    assert_eq!(
        (body["pipeline"].as_str(), body["job"].as_str()),
        (Some(&*flaky.to_string()), Some("a"))
    );
    assert!(
        body["error"].as_str().unwrap().contains("flaky failure"),
        "{body}"
    );
    assert!(pm.wait(flaky, WAIT).unwrap().is_success());

    let r = hook
        .wait_for(WAIT, |r| r.json()["event"] == "late")
        .expect("a late POST");
    assert_eq!(r.json()["pipeline"], slow.to_string());
    assert_eq!(r.json()["job"], "a");
    let s = pm.status(slow).unwrap();
    assert!(s.jobs["a"].late, "status shows it late");
    let page = get_json(&format!("http://{http}/api/pipelines/{slow}"));
    assert_eq!(page["jobs"]["a"]["late"], true, "and so does the dashboard");
    let outcome = pm.wait(slow, WAIT).unwrap();
    assert!(
        outcome.is_success(),
        "a late job is not stopped: {outcome:?}"
    );
    assert!(outcome.status().jobs["a"].late);
    assert_eq!(outcome.status().jobs["a"].state, JobState::Succeeded);
    hook.wait_for(WAIT, |r| {
        r.json()["event"] == "succeeded" && r.json()["pipeline"] == slow.to_string()
    })
    .expect("then its success");
    let lates = hook
        .requests()
        .iter()
        .filter(|r| r.json()["event"] == "late")
        .count();
    assert_eq!(lates, 1, "told once");
    let log = get_json(&format!("http://{http}/api/notifications"));
    let mut events: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"].as_str().unwrap())
        .collect();
    events.sort();
    assert_eq!(events, ["late", "retrying", "succeeded"], "{log}");
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["channel"] == url[0]));
}

/// A dashboard JSON answer (200 expected).
fn get_json(url: &str) -> serde_json::Value {
    let mut r = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let text = r.body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
}

#[test]
fn an_email_goes_through_the_smtp_server_with_the_event_in_subject_and_body() {
    let smtp = SmtpServer::start(&[]);
    let c = Cluster::start_with_router(
        1,
        1,
        &[
            "--smtp-server",
            &smtp.addr(),
            "--smtp-from",
            "router@example.com",
        ],
    );
    let mut pm = c.client();
    let id = pm
        .start(&notifying(
            one("Fail", json!({})),
            &[],
            &["ops@example.com"],
            &[NotifyEvent::Failed],
        ))
        .unwrap();
    assert!(!pm.wait(id, WAIT).unwrap().is_success());
    let m = smtp
        .wait_for(WAIT, |m| m.to == ["ops@example.com"])
        .unwrap_or_else(|| panic!("no e-mail; router log:\n{}", c.log("router.log")));
    assert_eq!(m.from, "router@example.com");
    let subject = m
        .data
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .expect("a subject");
    assert!(
        subject.contains(&id.to_string()) && subject.contains("failed"),
        "{subject}"
    );
    assert!(m.data.contains("\"event\": \"failed\""), "{}", m.data);
    wait_until("the delivery to be recorded", WAIT, || {
        notifications(&c).iter().any(|n| {
            n.channel == "mailto:ops@example.com" && n.delivery == DeliveryState::Delivered
        })
    });
}

#[test]
fn dead_endpoints_tls_errors_and_smtp_refusals_are_recorded_failed_and_nothing_else_suffers() {
    let plain = HttpServer::start();
    let smtp = SmtpServer::start(&["nobody@example.com"]);
    let unreachable = format!("http://127.0.0.1:{}/hook", free_port());
    let tls = format!("https://127.0.0.1:{}/hook", plain.port);
    let c = Cluster::start_with_router(
        1,
        2,
        &[
            "--smtp-server",
            &smtp.addr(),
            "--notify-attempts",
            "2",
            "--notify-backoff-ms",
            "100",
        ],
    );
    let mut pm = c.client();
    // Refused at submission, naming the bad channel.
    let err = pm
        .start(&notifying(
            one("Echo", json!({})),
            &["ftp://x".into()],
            &[],
            &[],
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("notify") && err.contains("ftp://x"), "{err}");

    let id = pm
        .start(&notifying(
            one("Fail", json!({})),
            &[unreachable.clone(), tls.clone()],
            &["nobody@example.com"],
            &[NotifyEvent::Failed],
        ))
        .unwrap();
    assert!(!pm.wait(id, WAIT).unwrap().is_success());
    // Meanwhile other pipelines run as ever.
    let others: Vec<PipelineId> = (0..5)
        .map(|_| pm.start(&one("Echo", json!({}))).unwrap())
        .collect();
    for o in others {
        assert!(pm.wait(o, WAIT).unwrap().is_success());
    }
    let mut last = Vec::new();
    wait_until("three failed deliveries", WAIT, || {
        last = notifications(&c);
        last.iter()
            .filter(|n| n.delivery == DeliveryState::Failed)
            .count()
            == 3
    });
    let by = |channel: &str| {
        last.iter()
            .find(|n| n.channel == channel)
            .unwrap_or_else(|| panic!("{channel} in {last:?}"))
            .clone()
    };
    for n in [by(&unreachable), by(&tls)] {
        assert_eq!(
            (n.pipeline, n.event, n.attempts),
            (id, NotifyEvent::Failed, 2),
            "{n:?}"
        );
        let e = n.last_error.unwrap();
        assert!(e.starts_with(&format!("webhook {}", n.channel)), "{e}");
    }
    let e = by(&tls).last_error.unwrap();
    assert!(e.contains("TLS error"), "{e}");
    let refused = by("mailto:nobody@example.com");
    assert_eq!(refused.attempts, 1, "a permanent refusal is not retried");
    let e = refused.last_error.unwrap();
    assert!(e.contains("nobody@example.com") && e.contains("550"), "{e}");
    assert!(smtp.mails().is_empty());
    let (_, table, _) = c.cli(&["notifications"]);
    assert!(table.contains("failed") && table.contains("550"), "{table}");
}

#[test]
fn a_notification_owed_when_the_router_is_killed_is_delivered_after_its_restart() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut c = Cluster::start_with_router(
        1,
        1,
        &["--notify-webhook", &url, "--notify-backoff-ms", "200"],
    );
    let mut pm = c.client();
    let id = pm.start(&one("Fail", json!({}))).unwrap();
    assert_eq!(
        pm.wait(id, WAIT).unwrap().status().state,
        PipelineState::Failed
    );
    wait_until("a failed try while the endpoint is down", WAIT, || {
        notifications(&c)
            .iter()
            .any(|n| n.pipeline == id && n.attempts >= 1 && n.delivery == DeliveryState::Pending)
    });
    c.kill_router();
    c.restart_router();
    let hook = HttpServer::start_on(port);
    let r = hook
        .wait_for(WAIT, |r| r.json()["pipeline"] == id.to_string())
        .unwrap_or_else(|| {
            panic!(
                "not delivered after the restart; log:\n{}",
                c.log("router-1.log")
            )
        });
    assert_eq!(r.json()["event"], "failed");
    wait_until("the delivery to be recorded", WAIT, || {
        notifications(&c)
            .iter()
            .any(|n| n.pipeline == id && n.delivery == DeliveryState::Delivered)
    });
}

#[test]
fn a_bad_notification_flag_stops_the_router_at_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    for (flag, value, said) in [
        ("--notify-webhook", "ftp://x", "ftp://x"),
        ("--notify-email", "nobody", "nobody"),
        ("--notify-events", "failed,exploded", "exploded"),
        ("--smtp-server", "localhost", "HOST:PORT"),
    ] {
        let out = std::process::Command::new(pypelinin_tests::bin("pypelinin-router"))
            .args([
                "--api",
                "tcp://127.0.0.1:0",
                "--broadcast",
                "tcp://127.0.0.1:0",
            ])
            .args(["--db", db.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(err.contains(flag) && err.contains(said), "{flag}: {err}");
    }
}

#[test]
fn an_endpoint_that_hangs_holds_up_no_pipeline_and_no_request() {
    let url = format!("http://127.0.0.1:{}/hook", hanging_listener());
    let c = Cluster::start_with_router(
        1,
        4,
        &["--notify-webhook", &url, "--notify-events", "succeeded"],
    );
    let mut pm = c.client();
    // More notifications than delivery threads: every thread waits on the endpoint.
    let ids: Vec<PipelineId> = (0..20)
        .map(|_| pm.start(&one("Echo", json!({}))).unwrap())
        .collect();
    for id in &ids {
        assert!(pm.wait(*id, WAIT).unwrap().is_success());
    }
    let more = pm.start(&one("Echo", json!({}))).unwrap();
    assert!(pm.wait(more, WAIT).unwrap().is_success());
    let n = notifications(&c);
    assert_eq!(n.len(), 21, "one per pipeline, owed");
    assert!(
        n.iter().all(|x| x.delivery == DeliveryState::Pending),
        "{n:?}"
    );
}
