//! The example's workers: a small document-analysis pipeline plus diagnostic workers.
//!
//! The document workers form the classic pypelinin demo: `Reader` loads a sample
//! document, `WordCount` and `Links` analyse its text in parallel, and `Report` joins
//! their results. The diagnostic workers (`Noop`, `Echo`, `Sleep`, `Fail`, `Crash`) and
//! the benchmark workers (`Step`, `Join`) exist to exercise the cluster itself: timing,
//! failures, panics, retries and fan-in.
//!
//! # Input convention
//! A worker's input is what the store's `retrieve` built: the job's `data` plus a
//! `"parents"` key mapping each parent job's name to that parent's output. Workers never
//! look up a parent by name: they take the parent output that has the field they need
//! (for instance the one with `"text"`), so the same worker fits any pipeline shape.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pypelinin_broker::{BoxError, Broker, JobInfo, Worker};
use pypelinin_common::Data;
use serde_json::{json, Value};

/// The name of every worker [`register`] offers, in the order it registers them.
///
/// Exists so that binaries can print what a broker runs and tests can check that each
/// name resolves (see [`by_name`]).
pub const WORKER_NAMES: &[&str] = &[
    "Reader",
    "WordCount",
    "Links",
    "Report",
    "Noop",
    "Echo",
    "Sleep",
    "Fail",
    "Crash",
    "Flaky",
    "Step",
    "Join",
];

/// The worker registered under `name`, if it is one of [`WORKER_NAMES`].
///
/// Exists so that one table maps names to workers: [`register`] uses it for a broker,
/// and a program can also run a worker in-process (e.g. to try it without a cluster).
pub fn by_name(name: &str) -> Option<Arc<dyn Worker>> {
    let worker: Arc<dyn Worker> = match name {
        "Reader" => Arc::new(Reader),
        "WordCount" => Arc::new(WordCount),
        "Links" => Arc::new(Links),
        "Report" => Arc::new(Report),
        "Noop" => Arc::new(Noop),
        "Echo" => Arc::new(Echo),
        "Sleep" => Arc::new(Sleep),
        "Fail" => Arc::new(Fail),
        "Crash" => Arc::new(Crash),
        "Flaky" => Arc::new(Flaky),
        "Step" => Arc::new(Step),
        "Join" => Arc::new(Join),
        _ => return None,
    };
    Some(worker)
}

/// Offers every example worker to `b` under its name in [`WORKER_NAMES`].
///
/// Exists so that every broker binary (and test) runs the same set of workers with
/// one call: `register(Broker::new()).store_factory(...)`.
pub fn register(b: Broker) -> Broker {
    WORKER_NAMES.iter().fold(b, |b, &name| {
        let worker = by_name(name).expect("every name in WORKER_NAMES has a worker");
        b.worker(name, move |job: &JobInfo, input: Data| {
            worker.process(job, input)
        })
    })
}

// ---------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------

/// The parents' outputs in the input, in the order the store gave them.
fn parent_outputs(input: &Data) -> Vec<&Data> {
    match input.get("parents") {
        Some(Value::Object(parents)) => parents.values().filter_map(Value::as_object).collect(),
        _ => Vec::new(),
    }
}

/// The first parent output holding `field`; when no parent has it, the input itself if
/// it holds `field` (so a root job can be given, say, a `"text"` in its own data).
fn find_with<'a>(input: &'a Data, field: &str) -> Option<&'a Data> {
    parent_outputs(input)
        .into_iter()
        .find(|output| output.contains_key(field))
        .or_else(|| input.contains_key(field).then_some(input))
}

/// A non-negative integer setting from the job's data, or `default` when absent or null.
fn count_setting(input: &Data, key: &str, default: u64) -> Result<u64, BoxError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_u64().ok_or_else(|| {
            format!("data {key:?} must be a non-negative integer, not {value}").into()
        }),
    }
}

/// The text a text-analysing worker works on, from the output that holds `"text"`.
fn input_text<'a>(worker: &str, input: &'a Data) -> Result<&'a str, BoxError> {
    let holder = find_with(input, "text").ok_or_else(|| {
        format!("{worker} needs a parent output with a \"text\" field (e.g. from Reader); none of its parents has one")
    })?;
    holder["text"]
        .as_str()
        .ok_or_else(|| format!("{worker}: the \"text\" field is not a string").into())
}

// ---------------------------------------------------------------------------------
// Text analysis
// ---------------------------------------------------------------------------------

/// Word frequencies of a text, counted the way `WordCount` does.
///
/// Public so that a program (or a test) can get exactly the numbers the cluster would,
/// without running one. Words are maximal runs of alphanumeric characters, lowercased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WordStats {
    /// How many words the text has, repeats included.
    pub total: u64,
    /// How many times each distinct (lowercase) word occurs.
    pub counts: HashMap<String, u64>,
}

impl WordStats {
    /// Counts the words of `text`.
    pub fn of(text: &str) -> Self {
        let mut stats = WordStats::default();
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            stats.total += 1;
            *stats.counts.entry(word.to_lowercase()).or_insert(0) += 1;
        }
        stats
    }

    /// How many distinct words the text has.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The `n` most frequent words with their counts: by count descending, ties by word
    /// ascending, so that the answer is the same on every run and every machine.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(&String, &u64)> = self.counts.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter()
            .take(n)
            .map(|(word, count)| (word.clone(), *count))
            .collect()
    }
}

/// Characters that end a link besides whitespace: the usual delimiters around URLs.
const LINK_END: &[char] = &[')', ']', '>', '"', '\'', ','];
/// Punctuation that ends a sentence rather than a link, stripped from a link's end.
const LINK_TRAILING: &[char] = &['.', ';', ':', '!', '?'];

/// The `http://` and `https://` links of `text`, each once, in order of first appearance.
///
/// Public for the same reason as [`WordStats`]. A link runs until whitespace or one of
/// `` )]>"', ``; sentence punctuation at its end (`.`, `;`, `:`, `!`, `?`) is dropped.
pub fn extract_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut seen = HashSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find("http") {
        let candidate = &rest[pos..];
        let scheme = if candidate.starts_with("https://") {
            "https://".len()
        } else if candidate.starts_with("http://") {
            "http://".len()
        } else {
            rest = &candidate["http".len()..];
            continue;
        };
        let end = candidate
            .find(|c: char| c.is_whitespace() || LINK_END.contains(&c))
            .unwrap_or(candidate.len());
        let link = candidate[..end].trim_end_matches(LINK_TRAILING);
        if link.len() > scheme && seen.insert(link) {
            links.push(link.to_string());
        }
        rest = &candidate[end.max(scheme)..];
    }
    links
}

/// A `(word, count)` list as JSON pairs `[[word, count], ...]`.
fn pairs_to_json(pairs: &[(String, u64)]) -> Value {
    Value::Array(pairs.iter().map(|(w, c)| json!([w, c])).collect())
}

/// Turns a `json!` object literal into [`Data`].
fn object(value: Value) -> Data {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("object() is only called with json!({{...}})"),
    }
}

// ---------------------------------------------------------------------------------
// Document workers
// ---------------------------------------------------------------------------------

/// Loads a sample document: the first step of the document pipeline.
///
/// Input: `data["document"]`, a name from [`crate::sample_documents`]. Output:
/// `{"document", "text", "bytes", "lines"}`. Exists so that pipelines carry small
/// names and the text only enters the cluster as a job output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reader;

impl Worker for Reader {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let name = match input.get("document") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(
                    format!("Reader: data \"document\" must be a string, not {other}").into(),
                )
            }
            None => {
                return Err(format!(
                    "Reader needs data \"document\" naming a sample document (one of: {})",
                    crate::sample_names()
                )
                .into())
            }
        };
        let text = crate::sample_document(name).ok_or_else(|| {
            format!(
                "Reader: unknown sample document {name:?} (known documents: {})",
                crate::sample_names()
            )
        })?;
        Ok(object(json!({
            "document": name,
            "text": text,
            "bytes": text.len(),
            "lines": text.lines().count(),
        })))
    }
}

/// Counts the words of the text a parent produced.
///
/// Output: `{"words": total, "distinct": n, "top": [[word, count], ...]}` with the
/// `data["top"]` (default 10) most frequent words. Exists as one of the two parallel
/// branches of the document pipeline.
#[derive(Clone, Copy, Debug, Default)]
pub struct WordCount;

impl Worker for WordCount {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let text = input_text("WordCount", &input)?;
        let top = count_setting(&input, "top", 10)? as usize;
        let stats = WordStats::of(text);
        Ok(object(json!({
            "words": stats.total,
            "distinct": stats.distinct(),
            "top": pairs_to_json(&stats.top(top)),
        })))
    }
}

/// Extracts the links of the text a parent produced.
///
/// Output: `{"links": [url, ...], "count": n}`, see [`extract_links`]. Exists as the
/// other parallel branch of the document pipeline.
#[derive(Clone, Copy, Debug, Default)]
pub struct Links;

impl Worker for Links {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let text = input_text("Links", &input)?;
        let links = extract_links(text);
        Ok(object(json!({ "count": links.len(), "links": links })))
    }
}

/// Joins a `WordCount` and a `Links` output into one report: the fan-in step.
///
/// Output: `{"document", "words", "distinct", "top", "links", "summary"}` where `top`
/// keeps the first `data["top"]` (default 5) words and `links` is the number of links.
/// Exists to show a job that waits for several parents and combines their outputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report;

impl Worker for Report {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let words = find_with(&input, "words");
        let links = find_with(&input, "links");
        let (words, links) = match (words, links) {
            (Some(w), Some(l)) => (w, l),
            (w, l) => {
                let missing: Vec<&str> = [
                    w.is_none()
                        .then_some("a parent output with \"words\" (from WordCount)"),
                    l.is_none()
                        .then_some("a parent output with \"links\" (from Links)"),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(format!("Report is missing {}", missing.join(" and ")).into());
            }
        };
        let top_n = count_setting(&input, "top", 5)? as usize;
        let top: Vec<Value> = words
            .get("top")
            .and_then(Value::as_array)
            .map(|top| top.iter().take(top_n).cloned().collect())
            .unwrap_or_default();
        let link_count = links
            .get("count")
            .and_then(Value::as_u64)
            .or_else(|| links["links"].as_array().map(|l| l.len() as u64))
            .ok_or("Report: the \"links\" output has neither a count nor a list of links")?;
        let document = parent_outputs(&input)
            .into_iter()
            .find_map(|output| output.get("document"))
            .or_else(|| input.get("document"))
            .cloned()
            .unwrap_or(Value::Null);
        let total = words["words"].clone();
        let distinct = words.get("distinct").cloned().unwrap_or(Value::Null);

        let frequent: Vec<String> = top
            .iter()
            .filter_map(|pair| Some(format!("{} ({})", pair.get(0)?.as_str()?, pair.get(1)?)))
            .collect();
        let mut summary = format!(
            "{}: {} words ({} distinct), {} link{}",
            document.as_str().unwrap_or("(unnamed document)"),
            total,
            distinct,
            link_count,
            if link_count == 1 { "" } else { "s" },
        );
        if !frequent.is_empty() {
            summary.push_str("; most frequent: ");
            summary.push_str(&frequent.join(", "));
        }
        Ok(object(json!({
            "document": document,
            "words": total,
            "distinct": distinct,
            "top": top,
            "links": link_count,
            "summary": summary,
        })))
    }
}

// ---------------------------------------------------------------------------------
// Diagnostic workers
// ---------------------------------------------------------------------------------

/// Does nothing and returns `{}`.
///
/// Exists to measure the cluster's own overhead per job, with no work in the way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Worker for Noop {
    fn process(&self, _job: &JobInfo, _input: Data) -> Result<Data, BoxError> {
        Ok(Data::new())
    }
}

/// Returns its whole input (job data plus `"parents"`).
///
/// Exists to see exactly what a store's `retrieve` hands a worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Worker for Echo {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Ok(input)
    }
}

/// Sleeps `data["ms"]` milliseconds (default 100), then returns `{"slept_ms": ms}`.
///
/// Exists to make jobs that take a known time: for timeouts, slot usage, monitoring,
/// and to kill a broker in the middle of a job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sleep;

impl Worker for Sleep {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let ms = count_setting(&input, "ms", 100)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(object(json!({ "slept_ms": ms })))
    }
}

/// Fails with `data["message"]`, or a default message.
///
/// Exists to test failure handling: retries, skipped descendants, error reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fail;

impl Worker for Fail {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Err(message(&input, "Fail worker failed as asked").into())
    }
}

/// Misbehaves as `data["mode"]` says: `panic` (the default, with `data["message"]`),
/// `abort` (the process aborts), `segfault` (writes through a null pointer), `oom`
/// (allocates until memory runs out), `hang` (never returns), `exit` (exits the process).
///
/// Exists to check that no worker can take its broker down: with process isolation each
/// of these fails only its own attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Crash;

impl Worker for Crash {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let mode = input.get("mode").and_then(Value::as_str).unwrap_or("panic");
        match mode {
            "panic" => panic!("{}", message(&input, "Crash worker panicked as asked")),
            "abort" => std::process::abort(),
            "exit" => std::process::exit(3),
            "segfault" => {
                // SAFETY: none; crashing the process is the point of this mode.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                unreachable!()
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 64 << 20]);
                }
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => Err(format!("unknown Crash mode {other:?}").into()),
        }
    }
}

/// Fails its first `data["fail_attempts"]` attempts (default 1), then succeeds with
/// `{"attempt": n}`.
///
/// Exists to test retries: a job with `retries` at least `fail_attempts` succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flaky;

impl Worker for Flaky {
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let fail = count_setting(&input, "fail_attempts", 1)?;
        if u64::from(job.attempt) <= fail {
            return Err(format!("flaky failure on attempt {}", job.attempt).into());
        }
        Ok(object(json!({ "attempt": job.attempt })))
    }
}

/// `data["message"]` as text (a non-string value as its JSON), else `default`.
fn message(input: &Data, default: &str) -> String {
    match input.get("message") {
        None | Some(Value::Null) => default.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Benchmark workers
// ---------------------------------------------------------------------------------

/// One link of a benchmark chain: `{"i": i, "n": n + 1}`.
///
/// Reads `i` and `n` from its single parent's output, or for a root job from its data
/// (`i` defaults to 0, `n` to 0). So after a chain of `k` steps, `n` is `k`: a check that
/// every step ran once and saw its parent's output. It does no other work, so that a
/// benchmark measures the cluster. More than one parent is an error: that is `Join`'s job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step;

impl Worker for Step {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let parents = parent_outputs(&input);
        let source = match parents.as_slice() {
            [] => &input,
            [one] => *one,
            many => {
                return Err(format!(
                    "Step takes at most one parent, this job has {}; use Join for fan-in",
                    many.len()
                )
                .into())
            }
        };
        let i = source.get("i").cloned().unwrap_or(json!(0));
        let n = count_setting(source, "n", 0)?;
        Ok(object(json!({ "i": i, "n": n + 1 })))
    }
}

/// The fan-in of a benchmark: `{"i": i, "n": max(n) + 1, "k": parents}`.
///
/// `i` comes from any parent that has one (else the data, else 0), `n` is one more than
/// the largest parent `n` (so it is the longest path's length), `k` counts the parents
/// so that a benchmark can check that every branch arrived.
#[derive(Clone, Copy, Debug, Default)]
pub struct Join;

impl Worker for Join {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let parents = parent_outputs(&input);
        let i = parents
            .iter()
            .find_map(|p| p.get("i"))
            .or_else(|| input.get("i"))
            .cloned()
            .unwrap_or(json!(0));
        let mut n = 0;
        for parent in &parents {
            n = n.max(count_setting(parent, "n", 0)?);
        }
        if parents.is_empty() {
            n = count_setting(&input, "n", 0)?;
        }
        Ok(object(json!({ "i": i, "n": n + 1, "k": parents.len() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::PipelineId;
    use std::collections::BTreeMap;

    fn job(worker: &str) -> JobInfo {
        JobInfo {
            pipeline: PipelineId::new(),
            name: format!("{}-job", worker.to_lowercase()),
            worker: worker.to_string(),
            attempt: 1,
            data: Data::new(),
            parents: BTreeMap::new(),
            timeout_ms: None,
        }
    }

    /// An input as the stores build it: `data` plus `"parents"`.
    fn input(data: Value, parents: Value) -> Data {
        let mut input = object(data);
        input.insert("parents".into(), parents);
        input
    }

    fn run(worker: &dyn Worker, input: Data) -> Result<Data, BoxError> {
        worker.process(&job("test"), input)
    }

    const TEXT: &str = "The cat and the dog. THE END, the end!\n\
        See https://example.com/a?b=1, and (http://x.org/path). Again: https://example.com/a.\n\
        Also 'https://q.net/x'; <https://r.io/> and \"http://s.dev\" plus https:// alone.";

    #[test]
    fn word_stats_count_lowercase_words_and_order_ties_by_word() {
        let stats = WordStats::of("The cat and the dog. THE END, the end!");
        assert_eq!(stats.total, 9);
        assert_eq!(stats.distinct(), 5);
        assert_eq!(
            stats.top(3),
            vec![
                ("the".to_string(), 4),
                ("end".to_string(), 2),
                ("and".to_string(), 1)
            ]
        );
        assert_eq!(stats.top(100).len(), 5);
        assert_eq!(WordStats::of("  ,,  ").total, 0);
        assert_eq!(WordStats::of("x2y don't").top(10).len(), 3); // x2y, don, t
    }

    #[test]
    fn links_are_unique_in_order_and_lose_delimiters() {
        assert_eq!(
            extract_links(TEXT),
            vec![
                "https://example.com/a?b=1",
                "http://x.org/path",
                "https://example.com/a",
                "https://q.net/x",
                "https://r.io/",
                "http://s.dev",
            ]
        );
        assert!(extract_links("no links, just http and https words").is_empty());
        assert_eq!(extract_links("at end http://e.com"), vec!["http://e.com"]);
    }

    #[test]
    fn reader_reads_samples_and_names_unknown_ones() {
        let out = run(&Reader, object(json!({"document": "bread.txt"}))).unwrap();
        let text = crate::sample_document("bread.txt").unwrap();
        assert_eq!(out["document"], "bread.txt");
        assert_eq!(out["text"], text);
        assert_eq!(out["bytes"], text.len());
        assert_eq!(out["lines"], text.lines().count());

        let err = run(&Reader, object(json!({"document": "cake.txt"}))).unwrap_err();
        assert!(err.to_string().contains("\"cake.txt\""), "{err}");
        assert!(err.to_string().contains("rivers.txt"), "{err}");
        let err = run(&Reader, Data::new()).unwrap_err();
        assert!(err.to_string().contains("\"document\""), "{err}");
    }

    #[test]
    fn word_count_finds_the_text_parent_whatever_its_name() {
        let parents = json!({
            "zzz": {"unrelated": true},
            "loader": {"document": "t.txt", "text": "b a b c b a"},
        });
        let out = run(&WordCount, input(json!({"top": 2}), parents)).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"words": 6, "distinct": 3, "top": [["b", 3], ["a", 2]]})
        );

        let out = run(&WordCount, input(json!({}), json!({"r": {"text": TEXT}}))).unwrap();
        assert_eq!(out["top"].as_array().unwrap().len(), 10);
        // "https" appears five times (the bare "https://" counts as a word too).
        assert_eq!(out["top"][0], json!(["https", 5]));
        assert_eq!(out["top"][1], json!(["the", 4]));

        let err = run(&WordCount, input(json!({}), json!({"r": {"no": 1}}))).unwrap_err();
        assert!(err.to_string().contains("\"text\""), "{err}");
        let err = run(
            &WordCount,
            input(json!({"top": "x"}), json!({"r": {"text": ""}})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"top\""), "{err}");
    }

    #[test]
    fn links_worker_reports_list_and_count() {
        let parents = json!({"read": {"text": "a http://a.b/c. b http://a.b/c"}});
        let out = run(&Links, input(json!({}), parents)).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"links": ["http://a.b/c"], "count": 1})
        );
    }

    #[test]
    fn report_joins_word_and_link_outputs() {
        let words = json!({"words": 9, "distinct": 5,
            "top": [["the", 4], ["end", 2], ["and", 1], ["cat", 1], ["dog", 1], ["x", 1]]});
        let links = json!({"links": ["https://a.org", "http://b.org"], "count": 2});
        let parents = json!({"w": words, "l": links});
        let out = run(
            &Report,
            input(json!({"document": "d.txt", "top": 2}), parents.clone()),
        )
        .unwrap();
        assert_eq!(out["document"], "d.txt");
        assert_eq!(out["words"], 9);
        assert_eq!(out["distinct"], 5);
        assert_eq!(out["top"], json!([["the", 4], ["end", 2]]));
        assert_eq!(out["links"], 2);
        assert_eq!(
            out["summary"],
            "d.txt: 9 words (5 distinct), 2 links; most frequent: the (4), end (2)"
        );

        let out = run(&Report, input(json!({}), parents)).unwrap();
        assert_eq!(out["top"].as_array().unwrap().len(), 5);
        assert_eq!(out["document"], Value::Null);

        let err = run(&Report, input(json!({}), json!({"w": words}))).unwrap_err();
        assert!(err.to_string().contains("\"links\""), "{err}");
        assert!(!err.to_string().contains("\"words\""), "{err}");
        let err = run(&Report, input(json!({}), json!({}))).unwrap_err();
        assert!(err.to_string().contains("\"links\"") && err.to_string().contains("\"words\""));
    }

    #[test]
    fn document_pipeline_end_to_end_in_process() {
        let read = run(
            &Reader,
            object(json!({"document": "distributed_systems.txt"})),
        )
        .unwrap();
        let parents = json!({"read": read});
        let words = run(&WordCount, input(json!({}), parents.clone())).unwrap();
        let links = run(&Links, input(json!({}), parents)).unwrap();
        assert_eq!(links["count"], 3);
        let report = run(
            &Report,
            input(
                json!({"document": "distributed_systems.txt"}),
                json!({"words": words, "links": links}),
            ),
        )
        .unwrap();
        let summary = report["summary"].as_str().unwrap();
        assert!(
            summary.starts_with("distributed_systems.txt: "),
            "{summary}"
        );
        assert!(summary.contains("3 links"), "{summary}");
    }

    #[test]
    fn diagnostic_workers_do_what_they_say() {
        assert!(run(&Noop, object(json!({"x": 1}))).unwrap().is_empty());
        let inp = input(json!({"x": 1}), json!({"p": {"y": 2}}));
        assert_eq!(run(&Echo, inp.clone()).unwrap(), inp);

        let started = std::time::Instant::now();
        let out = run(&Sleep, object(json!({"ms": 30}))).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(out["slept_ms"], 30);

        let err = run(&Fail, Data::new()).unwrap_err();
        assert_eq!(err.to_string(), "Fail worker failed as asked");
        let err = run(&Fail, object(json!({"message": "boom"}))).unwrap_err();
        assert_eq!(err.to_string(), "boom");

        let panic = std::panic::catch_unwind(|| run(&Crash, object(json!({"message": "bang"}))))
            .unwrap_err();
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some("bang")
        );
    }

    #[test]
    fn step_and_join_count_the_longest_path() {
        let root = run(&Step, object(json!({"i": 7}))).unwrap();
        assert_eq!(Value::Object(root.clone()), json!({"i": 7, "n": 1}));
        let second = run(&Step, input(json!({"i": 99}), json!({"s0": root}))).unwrap();
        assert_eq!(Value::Object(second.clone()), json!({"i": 7, "n": 2}));

        let other = object(json!({"i": 7, "n": 5}));
        let joined = run(&Join, input(json!({}), json!({"a": second, "b": other}))).unwrap();
        assert_eq!(Value::Object(joined), json!({"i": 7, "n": 6, "k": 2}));

        let err = run(
            &Step,
            input(json!({}), json!({"a": {"n": 1}, "b": {"n": 2}})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("Join"), "{err}");
        assert_eq!(run(&Join, object(json!({"i": 3}))).unwrap()["k"], 0);
    }

    #[test]
    fn every_registered_name_resolves_to_a_worker() {
        let unique: HashSet<&str> = WORKER_NAMES.iter().copied().collect();
        assert_eq!(unique.len(), 12);
        for name in WORKER_NAMES {
            assert!(by_name(name).is_some(), "{name}");
        }
        assert!(by_name("Nope").is_none());
        let noop = by_name("Noop").unwrap();
        assert!(noop.process(&job("Noop"), Data::new()).unwrap().is_empty());
        let _broker = register(Broker::new());
    }
}
