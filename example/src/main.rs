//! `cargo run --release -p example`: a whole cluster on loopback, the sample pipelines
//! through it, and a table of every job.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use pypelinin_client::{render_table, PipelineManager};
use pypelinin_common::protocol::ClusterConfig;
use pypelinin_common::{PipelineSpec, Shutdown};
use serde_json::json;

/// Runs a demo cluster (router, pipeliner, two brokers) on free loopback ports with a
/// temporary database, sends it the sample pipelines and prints what happened.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where job outputs go: the router's sled database, or JSON files in a temp dir.
    #[arg(long, value_enum, default_value_t = StoreKind::Cluster)]
    store: StoreKind,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreKind {
    Cluster,
    Json,
}

/// The document pipeline of the README: read, then words and links side by side, then
/// a report that joins both.
fn document_pipeline(document: &str) -> PipelineSpec {
    let mut p = PipelineSpec::default()
        .with_data("document", json!(document))
        .job("read", "Reader", &[])
        .job("words", "WordCount", &["read"])
        .job("links", "Links", &["read"])
        // A command worker (a shell one-liner) beside the Rust ones.
        .job("size", "InputBytes", &["read"])
        .job("report", "Report", &["words", "links"]);
    p.jobs
        .get_mut("report")
        .unwrap()
        .data
        .insert("top".into(), json!(3));
    p
}

/// A pipeline with a failing job: its descendant is skipped, the other branch finishes.
fn failing_pipeline() -> PipelineSpec {
    let mut p = PipelineSpec::default()
        .job("start", "Noop", &[])
        .job("breaks", "Fail", &["start"])
        .job("never", "Noop", &["breaks"])
        .job("other_branch", "Sleep", &["start"]);
    p.jobs.get_mut("breaks").unwrap().data.insert(
        "message".into(),
        json!("this job fails on purpose, to show a failed pipeline"),
    );
    p.jobs
        .get_mut("other_branch")
        .unwrap()
        .data
        .insert("ms".into(), json!(20));
    p
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "error");
    }
    pypelinin_broker::init_tracing();
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let store = match args.store {
        StoreKind::Cluster => json!({"kind": "cluster"}),
        StoreKind::Json => json!({"kind": "json", "dir": tmp.path().join("outputs")}),
    };
    let shutdown = Shutdown::new();
    let router = pypelinin_router::BoundRouter::bind(pypelinin_router::RouterConfig {
        api: "tcp://127.0.0.1:0".into(),
        broadcast: "tcp://127.0.0.1:0".into(),
        db: tmp.path().join("router.db"),
        cluster: ClusterConfig {
            store,
            ..ClusterConfig::default()
        },
        durability: pypelinin_router::Durability::Flush,
    })?;
    let (api, broadcast) = (
        router.api_endpoint.clone(),
        router.broadcast_endpoint.clone(),
    );
    println!(
        "demo cluster: router api={api} broadcast={broadcast}, db in {}",
        tmp.path().display()
    );
    let mut threads: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let s = shutdown.clone();
    threads.push(std::thread::spawn(move || Ok(router.run(s)?)));
    let (a, s) = (api.clone(), shutdown.clone());
    threads.push(std::thread::spawn(move || {
        Ok(pypelinin_pipeliner::run(
            pypelinin_pipeliner::PipelinerConfig {
                api: a,
                capacity: pypelinin_pipeliner::DEFAULT_CAPACITY,
            },
            s,
        )?)
    }));
    for _ in 0..2 {
        let mut config = pypelinin_broker::BrokerConfig::new(&api);
        config.slots = 2;
        // The demo's brokers are threads of this process, which cannot re-run itself
        // as a slot child: no process isolation here (example-broker has it).
        config.isolation = pypelinin_broker::Isolation::Thread;
        let s = shutdown.clone();
        threads.push(std::thread::spawn(move || {
            Ok(example::run_broker(config, s)?)
        }));
    }

    let result = run_demo(&api, &broadcast);
    shutdown.trigger();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a daemon thread panicked"))??;
    }
    result
}

fn run_demo(api: &str, broadcast: &str) -> anyhow::Result<()> {
    let mut pm = PipelineManager::connect(api, broadcast)?;
    let mut ids = Vec::new();
    for (name, _) in example::sample_documents() {
        ids.push((name.to_string(), pm.start(&document_pipeline(name))?));
    }
    let failing = pm.start(&failing_pipeline())?;
    let all: Vec<_> = ids.iter().map(|(_, id)| *id).chain([failing]).collect();
    let statuses = pm
        .wait_all(&all, Duration::from_secs(60))
        .context("waiting for the demo pipelines")?;
    let mut ok = true;
    for ((doc, id), status) in ids.iter().zip(&statuses) {
        println!("\n{doc}");
        print!("{}", render_table(status));
        let outputs = pm.outputs(*id)?;
        match outputs.get("report").and_then(|r| r.get("summary")) {
            Some(summary) => println!("  report: {}", summary.as_str().unwrap_or_default()),
            None => ok = false,
        }
        match outputs.get("size").and_then(|s| s.get("input_bytes")) {
            Some(n) => println!("  size (a shell command worker): {n} bytes of JSON input"),
            None => ok = false,
        }
        ok &= status.state == pypelinin_common::PipelineState::Succeeded;
    }
    let f = statuses.last().unwrap();
    println!("\nA pipeline with a job that fails on purpose");
    print!("{}", render_table(f));
    ok &= f.state == pypelinin_common::PipelineState::Failed;
    if !ok {
        bail!("the demo pipelines did not end as expected");
    }
    println!(
        "\n{} document pipelines succeeded; the failing pipeline failed as it should.",
        ids.len()
    );
    Ok(())
}
