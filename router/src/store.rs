//! Durable router state behind a small trait, so that sled can be swapped out.
//!
//! The router writes every change through a [`StateStore`] and calls
//! [`StateStore::commit`] once per event-loop turn, before it sends any reply: a change
//! is acknowledged only once it is durable, and concurrent changes share one flush.

use std::path::Path;

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{Attempt, JobState, PipelineState};
use pypelinin_common::{Data, PipelineSpec};
use serde::{Deserialize, Serialize};

/// A storage failure; the router stops rather than acknowledge what it could not keep.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode (a corrupt or foreign database).
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What failed.
        message: String,
    },
}

/// When the router makes changes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flush before every acknowledgement (batched per event-loop turn). The default.
    #[default]
    Flush,
    /// Leave flushing to sled's background thread (every 500 ms): faster, but a crash
    /// can lose the last half second of acknowledged changes.
    Background,
}

/// A pipeline as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// The pipeline.
    pub id: PipelineId,
    /// What was submitted; stored once, apart from the record, which changes often.
    #[serde(skip)]
    pub spec: PipelineSpec,
    /// Its state.
    pub state: PipelineState,
    /// Submission order, for listing.
    pub seq: u64,
    /// When accepted.
    pub submitted_ms: u64,
    /// When final.
    pub finished_ms: Option<u64>,
}

/// The spec inside a pipeline record, as databases of the first release stored it.
#[derive(Deserialize)]
struct InlineSpec {
    spec: PipelineSpec,
}

/// A job as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its state.
    pub state: JobState,
    /// In the run queue (or waiting out a retry delay): its parents all succeeded.
    pub enqueued: bool,
    /// Failed attempts so far (retries are counted against these).
    pub failures: u32,
    /// Earliest start of the next attempt (retry backoff), ms since the epoch.
    pub not_before_ms: u64,
    /// Last error.
    pub error: Option<String>,
    /// Every attempt; the last one is the current one while running.
    pub history: Vec<Attempt>,
}

impl JobRecord {
    /// A job that has not started.
    pub fn new() -> Self {
        JobRecord {
            state: JobState::Queued,
            enqueued: false,
            failures: 0,
            not_before_ms: 0,
            error: None,
            history: Vec::new(),
        }
    }

    /// Number of the latest attempt (0 before the first).
    pub fn attempt(&self) -> u32 {
        self.history.len() as u32
    }
}

impl Default for JobRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// A pipeline with its jobs, as loaded at start-up.
pub type Loaded = (PipelineRecord, Vec<JobRecord>);

/// Where the router keeps its state.
pub trait StateStore: Send {
    /// Everything stored, oldest pipeline first.
    fn load(&self) -> Result<Vec<Loaded>, StoreError>;
    /// Writes a pipeline record.
    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError>;
    /// Writes a job record.
    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError>;
    /// Writes a job's output.
    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError>;
    /// Reads a job's output.
    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError>;
    /// Makes every write so far durable (per the durability mode).
    fn commit(&mut self) -> Result<(), StoreError>;
}

/// The sled implementation.
pub struct SledStore {
    db: sled::Db,
    pipelines: sled::Tree,
    jobs: sled::Tree,
    outputs: sled::Tree,
    specs: sled::Tree,
    specs_written: std::collections::HashSet<PipelineId>,
    batch_specs: sled::Batch,
    durability: Durability,
    dirty: bool,
    batch_pipelines: sled::Batch,
    batch_jobs: sled::Batch,
    batch_outputs: sled::Batch,
    /// Outputs written since the last commit, readable before it.
    pending_outputs: std::collections::HashMap<[u8; 20], Vec<u8>>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(SledStore {
            pipelines: db.open_tree("pipelines")?,
            jobs: db.open_tree("jobs")?,
            outputs: db.open_tree("outputs")?,
            specs: db.open_tree("specs")?,
            specs_written: std::collections::HashSet::new(),
            batch_specs: sled::Batch::default(),
            db,
            durability,
            dirty: false,
            batch_pipelines: sled::Batch::default(),
            batch_jobs: sled::Batch::default(),
            batch_outputs: sled::Batch::default(),
            pending_outputs: std::collections::HashMap::new(),
        })
    }
}

fn job_key(id: PipelineId, job: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.0.as_bytes());
    k[16..].copy_from_slice(&job.to_be_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("records always encode")
}

fn dec<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("{key:02x?}"),
        message: e.to_string(),
    })
}

impl StateStore for SledStore {
    fn load(&self) -> Result<Vec<Loaded>, StoreError> {
        let mut out = Vec::new();
        for item in self.pipelines.iter() {
            let (k, v) = item?;
            let mut rec: PipelineRecord = dec(&k, &v)?;
            rec.spec = match self.specs.get(&k)? {
                Some(spec) => dec(&k, &spec)?,
                // Databases written before specs had their own tree kept it inline.
                None => dec::<InlineSpec>(&k, &v)?.spec,
            };
            let mut jobs = Vec::with_capacity(rec.spec.jobs.len());
            for j in self.jobs.scan_prefix(&k) {
                let (jk, jv) = j?;
                jobs.push(dec::<JobRecord>(&jk, &jv)?);
            }
            // Jobs are written in full at submission, so a short list means corruption.
            if jobs.len() != rec.spec.jobs.len() {
                return Err(StoreError::Corrupt {
                    key: rec.id.to_string(),
                    message: format!(
                        "{} job records for {} jobs",
                        jobs.len(),
                        rec.spec.jobs.len()
                    ),
                });
            }
            out.push((rec, jobs));
        }
        out.sort_by_key(|(p, _)| p.seq);
        Ok(out)
    }

    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError> {
        if self.specs_written.insert(rec.id) {
            self.batch_specs.insert(rec.id.0.as_bytes(), enc(&rec.spec));
        }
        self.batch_pipelines.insert(rec.id.0.as_bytes(), enc(rec));
        self.dirty = true;
        Ok(())
    }

    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError> {
        self.batch_jobs.insert(&job_key(id, job), enc(rec));
        self.dirty = true;
        Ok(())
    }

    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError> {
        let (k, v) = (job_key(id, job), enc(output));
        self.batch_outputs.insert(&k, v.clone());
        self.pending_outputs.insert(k, v);
        self.dirty = true;
        Ok(())
    }

    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError> {
        let k = job_key(id, job);
        if let Some(v) = self.pending_outputs.get(&k) {
            return Ok(Some(dec(&k, v)?));
        }
        match self.outputs.get(k)? {
            Some(v) => Ok(Some(dec(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        // Outputs first, then jobs, then pipelines: a crash between two batches leaves
        // at worst an output without its job record, which is harmless.
        self.outputs
            .apply_batch(std::mem::take(&mut self.batch_outputs))?;
        self.jobs
            .apply_batch(std::mem::take(&mut self.batch_jobs))?;
        self.specs
            .apply_batch(std::mem::take(&mut self.batch_specs))?;
        self.pipelines
            .apply_batch(std::mem::take(&mut self.batch_pipelines))?;
        self.pending_outputs.clear();
        if self.durability == Durability::Flush {
            self.db.flush()?;
        }
        self.dirty = false;
        Ok(())
    }
}
