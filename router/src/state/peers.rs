//! Peers and their leases: brokers and pipeliners saying hello, what each holds,
//! and what happens to that when one leaves or falls silent.

use foldhash::{HashSet, HashSetExt};
use std::time::Instant;

use pypelinin_common::protocol::{
    BrokerHello, BrokerStatus, JobRef, JobReport, MonitoringReport, PipelineId, ProtocolError,
    Reply, SlotJob,
};
use tracing::info;
use uuid::Uuid;

use super::{PeerId, Result, RouterState};

pub(super) struct BrokerPeer {
    pub(super) name: String,
    pub(super) host: String,
    pub(super) slots: u32,
    pub(super) workers: Vec<String>,
    /// Most jobs it accepts queued beyond its slots.
    pub(super) prefetch: u32,
    /// How long its jobs take, in ms (a moving average of what it reports).
    pub(super) job_ms: Option<f64>,
    pub(super) draining: bool,
    /// Attempts assigned and not yet reported: running, or queued at the broker.
    pub(super) running: HashSet<JobRef>,
    pub(super) monitor: Option<MonitoringReport>,
}

/// A broker is sent jobs to queue beyond its slots only as far as their work lasts
/// this long: many for jobs of microseconds, where a round trip per job would be most
/// of the cost, none for jobs longer than this, which must not wait behind one
/// another at one broker while a slot elsewhere is free.
pub const PREFETCH_HORIZON_MS: f64 = 20.0;
/// Weight of the latest job in a broker's moving average of job durations.
pub(super) const JOB_MS_WEIGHT: f64 = 0.1;

impl BrokerPeer {
    /// Jobs beyond its slots it may hold now.
    pub(super) fn extra(&self) -> u32 {
        match self.job_ms {
            // Until it has reported a job, nothing is known of their length.
            None => 0,
            Some(ms) => {
                let per_slot = (PREFETCH_HORIZON_MS / ms.max(1e-3)).floor();
                (per_slot * self.slots as f64).min(self.prefetch as f64) as u32
            }
        }
    }

    /// Jobs it may be sent now.
    pub(super) fn credit(&self) -> u32 {
        if self.draining {
            return 0;
        }
        (self.slots + self.extra()).saturating_sub(self.running.len() as u32)
    }

    pub(super) fn observe(&mut self, r: &JobReport) {
        self.job_ms = Some(pypelinin_common::moving_average(
            self.job_ms,
            r.ran_ms() as f64,
            JOB_MS_WEIGHT,
        ));
    }
}

pub(super) struct PipelinerPeer {
    pub(super) id: Uuid,
    pub(super) capacity: u32,
    pub(super) owned: HashSet<PipelineId>,
}

pub(super) enum Role {
    Broker(Box<BrokerPeer>),
    Pipeliner(PipelinerPeer),
}

pub(super) struct Peer {
    pub(super) role: Role,
    pub(super) last_seen: Instant,
}

impl RouterState {
    pub(super) fn broker_mut(&mut self, peer: &PeerId) -> Option<&mut BrokerPeer> {
        match self.peers.get_mut(peer) {
            Some(Peer {
                role: Role::Broker(b),
                ..
            }) => Some(b),
            _ => None,
        }
    }

    pub(super) fn broker_hello(
        &mut self,
        peer: &PeerId,
        h: BrokerHello,
        now: Instant,
    ) -> Result<Reply> {
        // The same broker again (a new socket, or a hello after a lost one): forget its
        // old registration, but not the attempts it says it still holds.
        let keep: HashSet<JobRef> = h.running.iter().chain(&h.unreported).copied().collect();
        let old: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(k, p)| *k == peer || matches!(&p.role, Role::Broker(b) if b.name == h.name))
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.forget_peer(&k, "said hello again", &keep)?;
        }
        let mut running = HashSet::new();
        for r in h.running.iter().chain(&h.unreported) {
            if self.is_current(r, &h.name) {
                self.orphans.remove(&(r.pipeline, r.job));
                if h.running.contains(r) {
                    running.insert(*r);
                }
            }
        }
        info!(broker = %h.name, host = %h.host, slots = h.slots, workers = ?h.workers, adopted = running.len(), "broker joined");
        self.peers.insert(
            peer.clone(),
            Peer {
                role: Role::Broker(Box::new(BrokerPeer {
                    name: h.name,
                    host: h.host,
                    slots: h.slots,
                    workers: h.workers,
                    prefetch: h.prefetch,
                    job_ms: None,
                    draining: false,
                    running,
                    monitor: None,
                })),
                last_seen: now,
            },
        );
        Ok(Reply::Welcome(self.config.clone()))
    }

    pub(super) fn pipeliner_hello(
        &mut self,
        peer: &PeerId,
        id: Uuid,
        capacity: u32,
        now: Instant,
    ) -> Reply {
        // A pipeliner that says hello again lost its state: give its pipelines back whole.
        let owned = match self.peers.remove(peer) {
            Some(Peer {
                role: Role::Pipeliner(p),
                ..
            }) => p.owned,
            Some(Peer {
                role: Role::Broker(_),
                ..
            }) => {
                return Reply::Error(ProtocolError::Refused("this connection is a broker".into()))
            }
            None => HashSet::new(),
        };
        for pid in &owned {
            if let Some(snap) = self.snapshot(*pid) {
                self.takes.entry(peer.clone()).or_default().push(snap);
            }
        }
        info!(pipeliner = %id, capacity, "pipeliner joined");
        self.peers.insert(
            peer.clone(),
            Peer {
                role: Role::Pipeliner(PipelinerPeer {
                    id,
                    capacity: capacity.max(1),
                    owned,
                }),
                last_seen: now,
            },
        );
        Reply::Ok
    }

    /// Forgets a peer: its running jobs go back to the queue, its pipelines to others.
    pub fn drop_peer(&mut self, peer: &PeerId, why: &str) -> Result<()> {
        self.forget_peer(peer, why, &HashSet::new())
    }

    /// [`RouterState::drop_peer`], keeping the attempts in `keep` running.
    pub(super) fn forget_peer(
        &mut self,
        peer: &PeerId,
        why: &str,
        keep: &HashSet<JobRef>,
    ) -> Result<()> {
        let Some(p) = self.peers.remove(peer) else {
            return Ok(());
        };
        self.assigns.remove(peer);
        self.takes.remove(peer);
        self.changes.remove(peer);
        match p.role {
            Role::Broker(b) => {
                info!(broker = %b.name, why, running = b.running.len(), "broker gone");
                for r in b.running.difference(keep) {
                    self.requeue(r.pipeline, r.job, &format!("broker {} {why}", b.name))?;
                }
            }
            Role::Pipeliner(pl) => {
                info!(pipeliner = %pl.id, why, pipelines = pl.owned.len(), "pipeliner gone");
                for id in pl.owned {
                    if let Some(e) = self.pipelines.get_mut(&id) {
                        e.owner = None;
                        self.unowned.push_back(id);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn brokers(&self, now: Instant) -> Vec<BrokerStatus> {
        let mut out: Vec<BrokerStatus> = self
            .peers
            .values()
            .filter_map(|p| match &p.role {
                Role::Broker(b) => Some(BrokerStatus {
                    name: b.name.clone(),
                    host: b.host.clone(),
                    workers: b.workers.clone(),
                    slots: b.slots,
                    busy: (b.running.len() as u32).min(b.slots),
                    draining: b.draining,
                    last_seen_ms_ago: now.duration_since(p.last_seen).as_millis() as u64,
                    monitor: b.monitor.clone(),
                    assigned: self.assigned_to(b),
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// What broker `b` holds, oldest attempt first, as the router knows it.
    fn assigned_to(&self, b: &BrokerPeer) -> Vec<SlotJob> {
        let mut out: Vec<SlotJob> = b
            .running
            .iter()
            .filter_map(|r| {
                let p = self.pipelines.get(&r.pipeline)?;
                let started_ms = p.jobs.get(r.job as usize)?.history.last()?.started_ms;
                Some(SlotJob {
                    job: *r,
                    name: p.dag.name(r.job).to_string(),
                    worker: p.dag.job(r.job).worker.clone(),
                    started_ms,
                })
            })
            .collect();
        out.sort_by_key(|s| (s.started_ms, s.job.pipeline, s.job.job));
        out
    }
}
