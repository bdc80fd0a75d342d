//! Sensors: what a job may wait for before it runs ([`WaitFor`]), its defaults, its
//! validation, and the reserved output key a broker reports a condition not yet met
//! with ([`NOT_YET_KEY`]). The router and brokers share these rules; where each
//! condition is checked is theirs (file and command by a broker, schedule by the router).

use serde::{Deserialize, Serialize};

/// Default time between two checks of a condition.
pub const DEFAULT_POKE_INTERVAL_MS: u64 = 60_000;
/// Default longest wait for a condition before the job fails.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 24 * 3_600_000;
/// Longest a broker lets a command condition run before it kills it (met: exit 0).
pub const MAX_COMMAND_CHECK_MS: u64 = 30_000;
/// The one key of the output a broker reports for a job whose condition is not met yet
/// (the value: what was checked, placeholders filled). The router puts the job back to
/// `waiting` without counting a failure; the attempt ends, so no slot is held.
pub const NOT_YET_KEY: &str = "pypelinin.not_yet";

/// What a job waits for before it runs: exactly one of `file`, `schedule`, `command`,
/// checked every `poke_interval_ms` until it holds or `timeout_ms` has passed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    /// A path that must exist on the broker's machine; `{name}` is filled from the
    /// job's data (e.g. `/data/{logical_date}.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A schedule whose run for the same logical date must have succeeded (the job's
    /// pipeline must be a scheduled run). Checked by the router, no broker involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A program and its arguments, run by a broker: exit 0 means met. `{name}` in
    /// its arguments is filled from the job's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Time between checks (default [`DEFAULT_POKE_INTERVAL_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poke_interval_ms: Option<u64>,
    /// Longest wait before the job fails (default [`DEFAULT_WAIT_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The one condition of a [`WaitFor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition<'a> {
    /// A file exists.
    File(&'a str),
    /// A schedule's run for the same logical date succeeded.
    Schedule(&'a str),
    /// A command exits 0.
    Command(&'a [String]),
}

impl WaitFor {
    /// Checks that exactly one condition is given and that it and the intervals make
    /// sense; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let given = [
            self.file.is_some(),
            self.schedule.is_some(),
            self.command.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => return Err("wait_for needs one of file, schedule or command".into()),
            1 => {}
            _ => return Err("wait_for takes only one of file, schedule or command".into()),
        }
        match self.condition() {
            Condition::File("") => {
                return Err("wait_for.file is empty".into());
            }
            Condition::Schedule("") => {
                return Err("wait_for.schedule is empty".into());
            }
            Condition::Command(c) if c.first().is_none_or(|p| p.is_empty()) => {
                return Err("wait_for.command needs a program to run".into());
            }
            _ => {}
        }
        if self.poke_interval_ms == Some(0) {
            return Err("wait_for.poke_interval_ms must be at least 1".into());
        }
        if self.timeout_ms == Some(0) {
            return Err("wait_for.timeout_ms must be at least 1".into());
        }
        Ok(())
    }

    /// The condition (call on a validated value; an empty one reads as an empty file).
    pub fn condition(&self) -> Condition<'_> {
        if let Some(s) = &self.schedule {
            Condition::Schedule(s)
        } else if let Some(c) = &self.command {
            Condition::Command(c)
        } else {
            Condition::File(self.file.as_deref().unwrap_or(""))
        }
    }

    /// Whether the router checks it itself (a schedule) rather than a broker.
    pub fn checked_by_router(&self) -> bool {
        matches!(self.condition(), Condition::Schedule(_))
    }

    /// Time between checks.
    pub fn poke_interval_ms(&self) -> u64 {
        self.poke_interval_ms
            .unwrap_or(DEFAULT_POKE_INTERVAL_MS)
            .max(1)
    }

    /// Longest wait.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_WAIT_TIMEOUT_MS)
    }

    /// How long a broker lets a command check run: the poke interval, at most
    /// [`MAX_COMMAND_CHECK_MS`].
    pub fn command_bound_ms(&self) -> u64 {
        self.poke_interval_ms().min(MAX_COMMAND_CHECK_MS)
    }

    /// The condition as people read it (`file /data/{logical_date}.csv`, placeholders
    /// as written).
    pub fn describe(&self) -> String {
        match self.condition() {
            Condition::File(f) => format!("file {f}"),
            Condition::Schedule(s) => format!("schedule {s} (same logical date)"),
            Condition::Command(c) => format!("command {}", c.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WaitFor {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn one_condition_with_sane_intervals_is_valid() {
        let w = parse(r#"{"file": "/data/{logical_date}.csv", "poke_interval_ms": 100}"#);
        assert_eq!(w.validate(), Ok(()));
        assert_eq!(w.condition(), Condition::File("/data/{logical_date}.csv"));
        assert_eq!(w.poke_interval_ms(), 100);
        assert_eq!(w.timeout_ms(), DEFAULT_WAIT_TIMEOUT_MS);
        let c = parse(r#"{"command": ["test", "-e", "/x"], "poke_interval_ms": 600000}"#);
        assert_eq!(c.command_bound_ms(), MAX_COMMAND_CHECK_MS);
        assert!(parse(r#"{"schedule": "up"}"#).checked_by_router());
        assert!(!c.checked_by_router());
    }

    #[test]
    fn bad_conditions_are_refused_with_a_reason() {
        for (text, why) in [
            (r#"{}"#, "needs one of"),
            (r#"{"file": "/a", "schedule": "s"}"#, "only one"),
            (r#"{"command": []}"#, "program"),
            (r#"{"command": [""]}"#, "program"),
            (r#"{"file": ""}"#, "empty"),
            (
                r#"{"file": "/a", "poke_interval_ms": 0}"#,
                "poke_interval_ms",
            ),
            (r#"{"file": "/a", "timeout_ms": 0}"#, "timeout_ms"),
        ] {
            let e = parse(text).validate().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!(serde_json::from_str::<WaitFor>(r#"{"fiel": "/a"}"#).is_err());
    }
}
