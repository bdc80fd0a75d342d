//! The document workers: a small document-analysis pipeline and the text analysis
//! behind it.
//!
//! `Reader` loads a sample document, `WordCount` and `Links` analyse its text in
//! parallel, and `Report` joins their results. [`WordStats`] and [`extract_links`] are
//! the analysis itself, public so that a program gets exactly the cluster's numbers.

use std::collections::{HashMap, HashSet};

use pypelinin_broker::{BoxError, JobInfo, Worker};
use pypelinin_common::Data;
use serde_json::{json, Value};

use super::{count_setting, find_with, object, parent_outputs};

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

#[cfg(test)]
mod tests {
    use super::super::testing::{input, run};
    use super::*;

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
}
