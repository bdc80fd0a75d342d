//! The workers file of `pypelinin-broker`: which command workers a broker offers, in
//! TOML. Parsed and checked whole at start-up, so that a broker with a bad file refuses
//! to start (saying file, line and reason) instead of failing jobs later.
//!
//! ```toml
//! [workers.wordcount]
//! command = ["python3", "wc.py", "--lang", "en"]   # argv, no shell
//! mode = "oneshot"            # the default: one process per attempt; or
//!                             # "persistent": long-lived processes (module persistent)
//! env = { LANG = "C.UTF-8" }  # optional
//! cwd = "/srv/jobs"           # optional
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::command::CommandWorker;
use crate::persistent::PersistentWorker;

/// How a command worker runs its jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One process per attempt: nothing survives from one job to the next.
    #[default]
    Oneshot,
    /// One long-lived process per slot serving many jobs, speaking the protocol of
    /// module `persistent`: for programs whose start costs more than a job.
    Persistent,
}

/// One `[workers.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
    /// How jobs run (default one-shot).
    #[serde(default)]
    pub mode: Mode,
    /// Variables added to the broker's environment for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The command's working directory (default: the broker's).
    pub cwd: Option<PathBuf>,
}

impl WorkerSpec {
    /// The [`CommandWorker`] that runs this spec's jobs.
    pub fn worker(&self) -> CommandWorker {
        let mut w = CommandWorker::new(self.command.clone());
        for (k, v) in &self.env {
            w = w.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            w = w.cwd(cwd);
        }
        w
    }

    /// The [`PersistentWorker`] that serves this spec's jobs (for `mode = "persistent"`).
    pub fn persistent_worker(&self) -> PersistentWorker {
        let mut w = PersistentWorker::new(self.command.clone());
        for (k, v) in &self.env {
            w = w.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            w = w.cwd(cwd);
        }
        w
    }
}

/// The whole file: the workers by name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersFile {
    /// The workers offered, by the name jobs give.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerSpec>,
}

/// Why a workers file was refused: where, and why, so the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum WorkersFileError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, at a line if known.
    #[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The line (from 1) the problem is on, when the parser knows it.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

impl WorkersFile {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<WorkersFile, WorkersFileError> {
        let text = std::fs::read_to_string(file).map_err(|source| WorkersFileError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        WorkersFile::parse(&text, file)
    }

    /// Parses and checks `text`, read from `file` (named in errors).
    pub fn parse(text: &str, file: &Path) -> Result<WorkersFile, WorkersFileError> {
        let invalid = |line: Option<usize>, reason: String| WorkersFileError::Invalid {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let parsed: WorkersFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            invalid(line, e.message().to_string())
        })?;
        if parsed.workers.is_empty() {
            return Err(invalid(
                None,
                "no workers: declare at least one [workers.NAME] table".into(),
            ));
        }
        for (name, spec) in &parsed.workers {
            let line = header_line(text, name);
            if spec.command.first().is_none_or(|p| p.is_empty()) {
                return Err(invalid(
                    line,
                    format!("worker {name:?}: command is empty; give the program and its arguments, e.g. [\"python3\", \"job.py\"]"),
                ));
            }
        }
        Ok(parsed)
    }
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of worker `name`'s table header (`[workers.name]`, possibly quoted), for
/// errors found after parsing, which carry no span.
fn header_line(text: &str, name: &str) -> Option<usize> {
    let wanted = [format!("workers.{name}"), format!("workers.\"{name}\"")];
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .is_some_and(|h| {
                    let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
                    wanted.contains(&h)
                })
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkersFile, WorkersFileError> {
        WorkersFile::parse(text, Path::new("w.toml"))
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_file_gives_every_worker_with_its_settings() {
        let f = parse(
            r#"
[workers.wordcount]
command = ["python3", "wc.py", "--lang", "en"]
mode = "oneshot"
env = { LANG = "C.UTF-8" }
cwd = "/srv/jobs"

[workers.echo]
command = ["cat"]
"#,
        )
        .unwrap();
        let wc = &f.workers["wordcount"];
        assert_eq!(wc.command, ["python3", "wc.py", "--lang", "en"]);
        assert_eq!(wc.mode, Mode::Oneshot);
        assert_eq!(wc.env["LANG"], "C.UTF-8");
        assert_eq!(wc.cwd.as_deref(), Some(Path::new("/srv/jobs")));
        let echo = &f.workers["echo"];
        assert_eq!(
            (echo.mode, echo.env.len(), echo.cwd.is_none()),
            (Mode::Oneshot, 0, true)
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let e = error("[workers.a]\ncommand = [\"true\"]\ncomand = [\"x\"]\n");
        assert!(e.starts_with("w.toml:3: "), "{e}");
        assert!(e.contains("comand"), "{e}");
    }

    #[test]
    fn a_syntax_error_is_refused_with_its_line() {
        let e = error("[workers.a]\ncommand = [\"true\"\n\n[workers.b]\n");
        assert!(e.starts_with("w.toml:"), "{e}");
        let line: usize = e["w.toml:".len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((2..=4).contains(&line), "{e}");
    }

    #[test]
    fn a_wrong_type_is_refused_with_its_line() {
        let e = error("[workers.a]\n\ncommand = \"python3 job.py\"\n");
        assert!(e.starts_with("w.toml:3: "), "{e}");
    }

    #[test]
    fn an_unknown_mode_is_refused_with_its_line() {
        let e = error("[workers.a]\ncommand = [\"true\"]\nmode = \"forever\"\n");
        assert!(e.starts_with("w.toml:3: "), "{e}");
    }

    #[test]
    fn an_empty_command_is_refused_with_its_worker_and_line() {
        let e = error("[workers.a]\ncommand = [\"true\"]\n\n[workers.b]\ncommand = []\n");
        assert!(e.starts_with("w.toml:4: "), "{e}");
        assert!(e.contains("\"b\": command is empty"), "{e}");
        let e = error("[workers.a]\ncommand = [\"\"]\n");
        assert!(e.starts_with("w.toml:1: "), "{e}");
    }

    #[test]
    fn a_persistent_worker_is_accepted() {
        let f =
            parse("[workers.a]\ncommand = [\"cat\"]\nmode = \"persistent\"\nenv = { X = \"1\" }\n")
                .unwrap();
        let a = &f.workers["a"];
        assert_eq!(a.mode, Mode::Persistent);
        assert_eq!(a.persistent_worker().idle_processes(), 0);
    }

    #[test]
    fn a_file_without_workers_is_refused() {
        assert!(error("").contains("no workers"));
        assert!(error("[workers]\n").contains("no workers"));
    }

    #[test]
    fn a_missing_file_is_refused_with_its_name() {
        let e = WorkersFile::load(Path::new("/nonexistent/w.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/w.toml: "), "{e}");
    }
}
