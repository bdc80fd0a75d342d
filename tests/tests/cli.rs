//! The `pypelinin` command line against a real cluster.

use pypelinin_tests::Cluster;
use serde_json::Value;

fn cli(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    c.cli(args)
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn submit_wait_json_status_and_exit_codes() {
    let c = Cluster::start(2, 2);
    // The README's pipeline file, verbatim but for the document name.
    let file = write(
        &c,
        "doc.json",
        r#"{ "data": {"document": "rivers.txt"},
  "jobs": { "read":   {"worker": "Reader"},
            "words":  {"worker": "WordCount", "after": ["read"]},
            "links":  {"worker": "Links",     "after": ["read"]},
            "report": {"worker": "Report",    "after": ["words", "links"], "data": {"top": 10}} } }"#,
    );
    let (code, out, err) = cli(&c, &["submit", &file, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["state"], "succeeded");
    for job in ["read", "words", "links", "report"] {
        let j = &v["jobs"][job];
        assert_eq!(j["state"], "succeeded", "{job}");
        assert_eq!(j["attempts"], 1);
        assert!(j["error"].is_null());
        assert!(j["worker"].is_string());
    }
    let id = v["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&c, &["status", &id, "--json"]);
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["id"], v["id"]);
    assert_eq!(s["jobs"]["report"]["worker"], "Report");
    let (code, out, _) = cli(&c, &["status", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("report") && out.contains("succeeded"), "{out}");
    let (code, out, _) = cli(&c, &["outputs", &id]);
    assert_eq!(code, 0);
    let o: Value = serde_json::from_str(&out).unwrap();
    assert!(o["report"]["summary"]
        .as_str()
        .unwrap()
        .contains("rivers.txt"));

    let failing = write(
        &c,
        "fail.json",
        r#"{"jobs": {"a": {"worker": "Fail", "data": {"message": "nope"}},
                                                    "b": {"worker": "Noop", "after": ["a"]}}}"#,
    );
    let (code, out, _) = cli(&c, &["submit", &failing, "--wait", "--json"]);
    assert_eq!(code, 1, "a failed pipeline exits non-zero");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["jobs"]["a"]["error"], "nope");
    assert_eq!(v["jobs"]["b"]["state"], "skipped");

    let (code, out, _) = cli(&c, &["submit", &file]);
    assert_eq!(code, 0);
    assert_eq!(out.trim().len(), 36, "prints the id: {out}");
}

#[test]
fn bad_pipeline_files_name_the_problem() {
    let c = Cluster::start(0, 1);
    let cyclic = write(
        &c,
        "cycle.json",
        r#"{"jobs": {"s": {"worker": "Noop"},
        "a": {"worker": "Noop", "after": ["s", "b"]}, "b": {"worker": "Noop", "after": ["a"]}}}"#,
    );
    let (code, _, err) = cli(&c, &["submit", &cyclic]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cycle") && err.contains("a -> b") || err.contains("b -> a"),
        "{err}"
    );
    let broken = write(
        &c,
        "broken.json",
        "{\"jobs\": {\n  \"a\": {\"worker\": \"Noop\",}\n}}",
    );
    let (code, _, err) = cli(&c, &["submit", &broken]);
    assert_eq!(code, 2);
    assert!(err.contains("line 2"), "{err}");
    let (code, out, _) = cli(
        &c,
        &[
            "dot",
            &write(
                &c,
                "ok.json",
                r#"{"jobs": {"a": {"worker": "Noop"}, "b": {"worker": "Noop", "after": ["a"]}}}"#,
            ),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"a\" -> \"b\""), "{out}");
}
