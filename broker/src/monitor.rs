//! Host monitoring: CPU, memory and load, as pypelinin's brokers reported.

use pypelinin_common::now_ms;
use pypelinin_common::protocol::{MonitoringReport, SlotJob};
use sysinfo::System;

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
