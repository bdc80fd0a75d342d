//! The pypelinin pipeliner: walks pipeline DAGs and asks the router to run their jobs.
//!
//! The router holds the truth. It gives each pipeline to one pipeliner at a time
//! (`Take`, with the state of every job) and tells it as jobs end (`Changed`); the
//! pipeliner answers with decisions (`Advance`): which jobs are now ready, which to
//! start as soon as their parents have succeeded (asked ahead, so that the router starts
//! a child in the turn its last parent's result arrives, without a round trip here),
//! which can never run because an ancestor failed, and when the pipeline is complete
//! (asked ahead as well: the router closes a pipeline whose jobs all succeeded itself). Nothing a
//! pipeliner holds is lost when it dies: another one gets the same snapshot and goes on.

#![warn(missing_docs)]

pub mod walk;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{
    decode, encode, Advance, FromRouter, PipelineId, ProtocolError, Push, Reply, Request,
    HEARTBEAT_INTERVAL, PEER_LIVENESS,
};
use pypelinin_common::transport::dealer_with;
use pypelinin_common::Shutdown;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use walk::Walk;

/// Default number of pipelines one pipeliner walks at once.
pub const DEFAULT_CAPACITY: u32 = 100_000;

/// Where a pipeliner connects and how much it takes.
#[derive(Clone, Debug)]
pub struct PipelinerConfig {
    /// Router API address.
    pub api: String,
    /// Most pipelines walked at once.
    pub capacity: u32,
}

/// Why a pipeliner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelinerError {
    /// ZeroMQ failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
}

struct Conn {
    socket: zmq::Socket,
    next_id: u64,
    last_heard: Instant,
    last_beat: Instant,
    hello_sent: bool,
}

/// Walks pipelines until `shutdown` triggers.
pub fn run(config: PipelinerConfig, shutdown: Shutdown) -> Result<(), PipelinerError> {
    run_secured(config, &Security::None, shutdown)
}

/// [`run`] with CURVE keys on the connection to the router.
pub fn run_secured(
    config: PipelinerConfig,
    security: &Security,
    shutdown: Shutdown,
) -> Result<(), PipelinerError> {
    let ctx = zmq::Context::new();
    let me = Uuid::new_v4();
    let mut walks: HashMap<PipelineId, Walk> = HashMap::new();
    let mut conn = connect(&ctx, &config, security, me)?;
    info!(pipeliner = %me, api = %config.api, "pipeliner started");
    while !shutdown.is_triggered() {
        let now = Instant::now();
        if now.duration_since(conn.last_heard) > HEARTBEAT_INTERVAL * PEER_LIVENESS {
            warn!("router silent; reconnecting");
            walks.clear();
            conn = connect(&ctx, &config, security, me)?;
            continue;
        }
        let mut items = [conn.socket.as_poll_item(zmq::POLLIN)];
        let wait = if conn.hello_sent {
            HEARTBEAT_INTERVAL / 2
        } else {
            Duration::from_millis(20)
        };
        pypelinin_common::transport::poll(&mut items, wait.as_millis() as i64)?;
        let mut out: Vec<Advance> = Vec::new();
        while let Ok(bytes) = conn.socket.recv_bytes(zmq::DONTWAIT) {
            conn.last_heard = Instant::now();
            match decode::<FromRouter>(&bytes) {
                Ok((_, FromRouter::Push(Push::Take(snaps)))) => {
                    for snap in snaps {
                        let id = snap.id;
                        match Walk::new(snap) {
                            Ok(mut w) => {
                                debug!(pipeline = %id, "took pipeline");
                                out.push(w.plan_all());
                                walks.insert(id, w);
                            }
                            Err(e) => warn!(pipeline = %id, error = %e, "cannot walk pipeline"),
                        }
                    }
                }
                Ok((_, FromRouter::Push(Push::Changed(changes)))) => {
                    let mut touched: HashMap<PipelineId, Advance> = HashMap::new();
                    for c in changes {
                        if let Some(w) = walks.get_mut(&c.pipeline) {
                            let a = touched.entry(c.pipeline).or_insert_with(|| Advance {
                                pipeline: c.pipeline,
                                ..Advance::default()
                            });
                            w.on_change(c.job, c.state, a);
                        }
                    }
                    out.extend(touched.into_values());
                }
                Ok((_, FromRouter::Push(Push::Assign(_) | Push::Revoke(_)))) => {
                    warn!("got jobs meant for a broker; ignored");
                }
                Ok((_, FromRouter::Reply(reply))) => match reply {
                    Reply::Ok => {}
                    Reply::Error(ProtocolError::UnknownPeer) => {
                        info!("router does not know us (restarted?); saying hello again");
                        walks.clear();
                        conn.hello_sent = send(&mut conn, &hello(me, config.capacity))?;
                    }
                    Reply::Error(ProtocolError::Stale(msg)) => {
                        debug!(%msg, "decision refused as stale");
                    }
                    other => debug!(?other, "unexpected reply"),
                },
                Err(e) => warn!(error = %e.error, "undecodable frame from router"),
            }
        }
        if !conn.hello_sent {
            conn.hello_sent = send(&mut conn, &hello(me, config.capacity))?;
        }
        // Finished pipelines leave the walk set: the router closes them on `finish`, or
        // by itself when every job succeeded.
        out.retain(|a| {
            !a.enqueue.is_empty()
                || !a.skip.is_empty()
                || !a.after.is_empty()
                || a.finish
                || a.close_on_success
        });
        walks.retain(|_, w| !w.is_done());
        if !out.is_empty() && !send(&mut conn, &Request::Advance(out))? {
            // Lost with the connection: the router will hand the pipelines out again.
            walks.clear();
        }
        if conn.last_beat.elapsed() >= HEARTBEAT_INTERVAL {
            send(&mut conn, &Request::Heartbeat)?;
        }
    }
    info!(
        pipelines = walks.len(),
        "pipeliner stopping; giving its pipelines back"
    );
    let _ = send(&mut conn, &Request::Bye);
    // Let the bye leave before the socket closes.
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

fn hello(me: Uuid, capacity: u32) -> Request {
    Request::PipelinerHello {
        pipeliner: me,
        capacity,
    }
}

fn connect(
    ctx: &zmq::Context,
    config: &PipelinerConfig,
    security: &Security,
    me: Uuid,
) -> Result<Conn, PipelinerError> {
    let socket = dealer_with(ctx, &config.api, security)?;
    let mut conn = Conn {
        socket,
        next_id: 1,
        last_heard: Instant::now(),
        last_beat: Instant::now(),
        hello_sent: false,
    };
    conn.hello_sent = send(&mut conn, &hello(me, config.capacity))?;
    Ok(conn)
}

fn send(conn: &mut Conn, req: &Request) -> Result<bool, PipelinerError> {
    let id = conn.next_id;
    conn.next_id += 1;
    conn.last_beat = Instant::now();
    match conn.socket.send(encode(id, req), zmq::DONTWAIT) {
        Ok(()) => Ok(true),
        // No connection: decisions are rebuilt from the router's snapshot after hello.
        Err(zmq::Error::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
