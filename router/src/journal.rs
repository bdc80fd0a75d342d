//! The router's write-ahead journal: every committed turn as one appended, checksummed
//! frame, so that the hot path costs one `write` (and, when flushing, one `fdatasync`)
//! per event-loop turn instead of a B-tree update per record.
//!
//! A file `journal.<n>` in the database directory holds frames
//! `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`; a payload is a run of
//! entries `[table: u8][key length: u8][key][value length: u32 LE][value]`, each the
//! full new value of one record. Replaying a journal therefore needs no order beyond
//! "later wins", and a frame torn by a crash fails its checksum and ends the replay.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Which kind of record an entry holds (each is a database table of its own once
/// checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Table {
    /// Pipeline records, by pipeline id.
    Pipeline = 0,
    /// Pipeline specs, by pipeline id.
    Spec = 1,
    /// Job records, by pipeline id and job index.
    Job = 2,
    /// Job outputs, by pipeline id and job index.
    Output = 3,
    /// Schedules, by name.
    Schedule = 4,
    /// Backfills, by number (big-endian).
    Backfill = 5,
    /// Pools' capacities, by name (a removal is a tombstone).
    Pool = 6,
    /// The notification outbox, by sequence number (big-endian); an empty value
    /// removes the record.
    Notification = 7,
    /// Submission order: `seq` (big-endian) to pipeline id, for listing history.
    Seq = 8,
    /// Captured log lines, by attempt and line number (line 0: what is known of the
    /// attempt's log besides its lines).
    Log = 9,
}

impl Table {
    fn from_u8(b: u8) -> Option<Table> {
        Some(match b {
            0 => Table::Pipeline,
            1 => Table::Spec,
            2 => Table::Job,
            3 => Table::Output,
            4 => Table::Schedule,
            5 => Table::Backfill,
            6 => Table::Pool,
            7 => Table::Notification,
            8 => Table::Seq,
            9 => Table::Log,
            _ => return None,
        })
    }
}

/// The latest value of every record written since a checkpoint.
pub type Changes = HashMap<(Table, Vec<u8>), Vec<u8>>;

const HEADER: usize = 8;

/// The journal file being appended to.
pub struct Journal {
    file: File,
    number: u64,
    len: u64,
    frame: Vec<u8>,
}

/// The path of journal number `n` in `dir`.
pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("journal.{n}"))
}

/// The numbers of the journals in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_prefix("journal.")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl Journal {
    /// Creates journal number `n` in `dir`, empty.
    pub fn create(dir: &Path, n: u64) -> io::Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path(dir, n))?;
        // The new name must survive a crash before anything is written under it.
        File::open(dir)?.sync_all()?;
        Ok(Journal {
            file,
            number: n,
            len: 0,
            frame: vec![0; HEADER],
        })
    }

    /// This journal's number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Another handle on the file (to sync it from another thread).
    pub fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one record to the frame being built.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        debug_assert!(key.len() <= u8::MAX as usize);
        self.frame.push(table as u8);
        self.frame.push(key.len() as u8);
        self.frame.extend_from_slice(key);
        self.frame
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(value);
    }

    /// Appends the frame built since the last call with one `write`; with `sync`,
    /// returns only once it is on disk.
    pub fn append(&mut self, sync: bool) -> io::Result<()> {
        if self.frame.len() == HEADER {
            return Ok(());
        }
        let payload = &self.frame[HEADER..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        self.frame[..4].copy_from_slice(&len);
        self.frame[4..HEADER].copy_from_slice(&crc);
        self.file.write_all(&self.frame)?;
        self.len += self.frame.len() as u64;
        self.frame.truncate(HEADER);
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// What replaying a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Whole frames applied.
    pub frames: u64,
    /// Bytes after the last whole frame (a write torn by a crash), ignored.
    pub torn_bytes: u64,
}

/// Reads journal `n` in `dir` into `into`, later values replacing earlier ones.
pub fn replay(dir: &Path, n: u64, into: &mut Changes) -> io::Result<Replay> {
    let mut bytes = Vec::new();
    File::open(path(dir, n))?.read_to_end(&mut bytes)?;
    let mut at = 0;
    let mut out = Replay::default();
    while let Some(payload) = frame_at(&bytes, at) {
        if !parse_payload(payload, into) {
            break;
        }
        at += HEADER + payload.len();
        out.frames += 1;
    }
    out.torn_bytes = (bytes.len() - at) as u64;
    Ok(out)
}

fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + HEADER)?;
    let len = le_u32(&header[..4])? as usize;
    let crc = le_u32(&header[4..])?;
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// The little-endian `u32` at the start of `b`, if it holds four bytes.
fn le_u32(b: &[u8]) -> Option<u32> {
    let four: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(four))
}

/// Applies one frame's entries; false (and nothing applied) if it does not parse,
/// which a checksummed frame of ours never fails to do.
fn parse_payload(mut p: &[u8], into: &mut Changes) -> bool {
    let mut entries = Vec::new();
    while !p.is_empty() {
        let Some((&t, rest)) = p.split_first() else {
            return false;
        };
        let (Some(table), Some((&klen, rest))) = (Table::from_u8(t), rest.split_first()) else {
            return false;
        };
        let Some(key) = rest.get(..klen as usize) else {
            return false;
        };
        let rest = &rest[klen as usize..];
        let Some(vlen) = rest.get(..4).and_then(le_u32) else {
            return false;
        };
        let vlen = vlen as usize;
        let Some(value) = rest.get(4..4 + vlen) else {
            return false;
        };
        entries.push(((table, key.to_vec()), value.to_vec()));
        p = &rest[4 + vlen..];
    }
    into.extend(entries);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry<'a> = (Table, &'a [u8], &'a [u8]);

    fn write(dir: &Path, frames: &[&[Entry]]) -> Journal {
        let mut j = Journal::create(dir, 1).unwrap();
        for f in frames {
            for (t, k, v) in *f {
                j.put(*t, k, v);
            }
            j.append(true).unwrap();
        }
        j
    }

    #[test]
    fn later_values_win_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                &[(Table::Job, b"k1", b"old"), (Table::Output, b"k1", b"out")],
                &[(Table::Job, b"k1", b"new"), (Table::Pipeline, b"p", b"")],
            ],
        );
        let mut c = Changes::new();
        let r = replay(dir.path(), 1, &mut c).unwrap();
        assert_eq!((r.frames, r.torn_bytes), (2, 0));
        assert_eq!(c[&(Table::Job, b"k1".to_vec())], b"new");
        assert_eq!(c[&(Table::Output, b"k1".to_vec())], b"out");
        assert_eq!(c[&(Table::Pipeline, b"p".to_vec())], b"");
        assert_eq!(c.len(), 3);
        assert_eq!(list(dir.path()).unwrap(), vec![1]);
    }

    #[test]
    fn a_torn_last_frame_is_ignored_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = write(
            dir.path(),
            &[&[(Table::Job, b"a", b"1")], &[(Table::Job, b"a", b"2")]],
        );
        // Cut the file inside the second frame, as a crash mid-write would.
        let full = j.len();
        drop(j);
        let f = OpenOptions::new()
            .write(true)
            .open(path(dir.path(), 1))
            .unwrap();
        f.set_len(full - 3).unwrap();
        let mut c = Changes::new();
        let r = replay(dir.path(), 1, &mut c).unwrap();
        assert_eq!(r.frames, 1);
        assert!(r.torn_bytes > 0);
        assert_eq!(c[&(Table::Job, b"a".to_vec())], b"1");
    }

    #[test]
    fn a_corrupted_frame_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        drop(write(
            dir.path(),
            &[
                &[(Table::Job, b"a", b"1")],
                &[(Table::Job, b"a", b"2")],
                &[(Table::Job, b"b", b"3")],
            ],
        ));
        let p = path(dir.path(), 1);
        let mut bytes = std::fs::read(&p).unwrap();
        // Flip the value byte of the second frame: its checksum no longer matches.
        let second = HEADER + (1 + 1 + 1 + 4 + 1);
        let last = bytes.len();
        bytes[second + HEADER + 7] ^= 0xff;
        assert!(second + HEADER + 7 < last);
        std::fs::write(&p, &bytes).unwrap();
        let mut c = Changes::new();
        let r = replay(dir.path(), 1, &mut c).unwrap();
        assert_eq!(r.frames, 1);
        assert_eq!(c[&(Table::Job, b"a".to_vec())], b"1");
        assert!(!c.contains_key(&(Table::Job, b"b".to_vec())));
    }
}
