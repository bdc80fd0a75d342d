//! Host monitoring: CPU, memory and load, as pypelinin's brokers reported, sampled
//! by the monitor thread for the store and the router.

use std::time::{Duration, Instant};

use pypelinin_common::protocol::{MonitoringReport, SlotJob};
use pypelinin_common::{now_ms, Shutdown};
use sysinfo::System;
use tracing::warn;

use crate::api::Store;
use crate::table::{Internal, SlotTable};

/// Samples the host; CPU use is measured between two successive reports.
pub struct HostMonitor {
    sys: System,
    broker: String,
    host: String,
}

impl HostMonitor {
    /// A monitor for the broker `broker` on `host`.
    pub fn new(broker: String, host: String) -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        HostMonitor { sys, broker, host }
    }

    /// A report of the host now, with the given slots and finished-job count.
    pub fn report(&mut self, slots: Vec<Option<SlotJob>>, jobs_done: u64) -> MonitoringReport {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let load = System::load_average();
        MonitoringReport {
            broker: self.broker.clone(),
            host: self.host.clone(),
            at_ms: now_ms(),
            cpu_percent: self.sys.global_cpu_usage(),
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            load: [load.one, load.five, load.fifteen],
            slots,
            jobs_done,
        }
    }
}

/// Reports the host every `every` until `stop`, to the store and the router.
pub(crate) fn run(
    mut monitor: HostMonitor,
    every: Duration,
    table: &SlotTable,
    store: &dyn Store,
    push: &zmq::Socket,
    stop: &Shutdown,
) {
    let mut next = Instant::now() + every.min(Duration::from_secs(1));
    while !stop.is_triggered() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next = Instant::now() + every;
        let (slots, done) = table.snapshot();
        let report = monitor.report(slots, done);
        if let Err(e) = store.save_monitoring(&report) {
            warn!(error = %e, "store could not save monitoring");
        }
        match rmp_serde::to_vec_named(&Internal::Monitor(report)) {
            Ok(bytes) => {
                let _ = push.send(bytes, 0);
            }
            Err(e) => warn!(error = %e, "could not encode a monitoring report"),
        }
    }
}
