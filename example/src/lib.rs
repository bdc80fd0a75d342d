//! The pypelinin example: everything a real deployment writes for itself.
//!
//! A pypelinin cluster runs the user's code, so a user brings three things: documents
//! (or any other inputs) to work on, [`workers`] that do the work, and a store
//! ([`stores`]) that says where inputs come from and outputs go. This crate is a small
//! but complete instance of each, used by the `example` demo and `example-broker`
//! binaries and by the workspace's end-to-end tests.
//!
//! The sample documents are compiled into the binary, so that a broker on any machine
//! can read them without a shared file system: a pipeline names a document, and
//! [`sample_document`] returns its text.

#![warn(missing_docs)]

pub mod stores;
pub mod workers;

use pypelinin_broker::{Broker, BrokerConfig, BrokerError};
use pypelinin_common::Shutdown;

/// Runs the example broker until `shutdown`: every example and diagnostic worker, with
/// the store the router's cluster configuration names ([`stores::store_from_config`]).
/// `example-broker`, the demo and `bench` all run this one function, so that what is
/// measured is what users run. In process isolation it must be called early in `main`:
/// slot processes are this executable started again.
pub fn run_broker(config: BrokerConfig, shutdown: Shutdown) -> Result<(), BrokerError> {
    workers::register(Broker::new())
        .store_factory(stores::store_from_config)
        .run(config, shutdown)
}

/// The sample documents, sorted by file name; each is `(file name, text)`.
const SAMPLES: &[(&str, &str)] = &[
    ("bread.txt", include_str!("../samples/bread.txt")),
    (
        "distributed_systems.txt",
        include_str!("../samples/distributed_systems.txt"),
    ),
    (
        "lighthouses.txt",
        include_str!("../samples/lighthouses.txt"),
    ),
    ("pipelines.txt", include_str!("../samples/pipelines.txt")),
    ("rivers.txt", include_str!("../samples/rivers.txt")),
];

/// Every sample document as `(file name, text)`, sorted by name.
///
/// Exists so that the demo can submit one pipeline per document and tests can check
/// the workers against known inputs, without reading files at run time.
pub fn sample_documents() -> &'static [(&'static str, &'static str)] {
    SAMPLES
}

/// The text of the sample document called `name` (e.g. `"rivers.txt"`), if there is one.
///
/// Exists because pipelines carry document names, not texts: the `Reader` worker turns
/// the name in a job's data into the text, the same on every broker.
pub fn sample_document(name: &str) -> Option<&'static str> {
    SAMPLES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, text)| *text)
}

/// The names of all sample documents, comma separated, for error messages and help.
fn sample_names() -> String {
    SAMPLES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_sorted_unique_and_look_like_prose() {
        let docs = sample_documents();
        assert!((4..=5).contains(&docs.len()), "{} samples", docs.len());
        for pair in docs.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "not sorted: {} {}",
                pair[0].0,
                pair[1].0
            );
        }
        for (name, text) in docs {
            let lines = text.lines().count();
            assert!((10..=30).contains(&lines), "{name} has {lines} lines");
            assert!(name.ends_with(".txt"), "{name}");
        }
        let with_links = docs
            .iter()
            .filter(|(_, text)| text.contains("http://") || text.contains("https://"))
            .count();
        assert!(with_links >= 3, "only {with_links} samples have links");
    }

    #[test]
    fn sample_document_finds_by_exact_name() {
        let text = sample_document("rivers.txt").unwrap();
        assert!(text.starts_with("How Rivers Shape the Land"));
        assert_eq!(sample_document("rivers"), None);
        assert_eq!(sample_document("nope.txt"), None);
        assert!(sample_names().contains("bread.txt, distributed_systems.txt"));
    }
}
