//! A pipeline's job records (or outputs) as one database value: a list indexed by job.
//!
//! A checkpoint used to insert one database entry per job record and one per output.
//! redb keeps a leaf's entries behind a table of offsets, and each insert into a leaf
//! rewrites the offsets of every entry already in it: at 16 brokers of 1 ms jobs that
//! was most of the checkpoint thread, itself about a third of the router's CPU. A list
//! per pipeline makes a checkpoint one insert per pipeline and table, and reading a
//! whole pipeline back (its status, its outputs) one read.
//!
//! Layout, little-endian: a version byte ([`VERSION`]), the number of slots `n` (u32),
//! then `n` end offsets (u32) into the data that follows: slot `i` is
//! `data[end[i-1]..end[i]]` (from 0 for the first). An empty slot is an absent record:
//! a record is never empty (an empty value is how the store marks a deletion).

/// The layout's version, first byte of every list.
pub const VERSION: u8 = 1;
/// Bytes before the offsets: the version and the slot count.
const HEAD: usize = 5;

/// A list read in place.
#[derive(Clone, Copy, Debug)]
pub struct List<'a> {
    ends: &'a [u8],
    data: &'a [u8],
}

/// Bytes that are not a list, or a slot whose offsets are out of order or past the data.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl<'a> List<'a> {
    /// Reads a list's head (its version, its slot count, that the offsets are there
    /// and the last one ends the data); each slot's offsets are checked when it is read,
    /// so that reading one slot of a long list costs no walk over the others.
    pub fn parse(bytes: &'a [u8]) -> Result<List<'a>, Malformed> {
        if bytes.len() < HEAD || bytes[0] != VERSION {
            return Err(Malformed);
        }
        let n = u32::from_le_bytes(bytes[1..HEAD].try_into().map_err(|_| Malformed)?) as usize;
        let data_at = n
            .checked_mul(4)
            .and_then(|b| b.checked_add(HEAD))
            .ok_or(Malformed)?;
        let ends = bytes.get(HEAD..data_at).ok_or(Malformed)?;
        let list = List {
            ends,
            data: &bytes[data_at..],
        };
        let last = if n == 0 { 0 } else { list.end(n - 1) };
        if last == list.data.len() {
            Ok(list)
        } else {
            Err(Malformed)
        }
    }

    fn end(&self, i: usize) -> usize {
        u32::from_le_bytes(self.ends[i * 4..i * 4 + 4].try_into().unwrap()) as usize
    }

    /// How many slots it has (the last one present).
    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    /// The record in slot `i`, if there is one.
    pub fn get(&self, i: usize) -> Result<Option<&'a [u8]>, Malformed> {
        if i >= self.len() {
            return Ok(None);
        }
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        let slot = self.data.get(start..self.end(i)).ok_or(Malformed)?;
        Ok((!slot.is_empty()).then_some(slot))
    }
}

/// A list of `slots` (`None` or empty: absent), trailing absent slots left out; `None`
/// when no slot is present (the list is then removed rather than written).
pub fn build(slots: &[Option<&[u8]>]) -> Option<Vec<u8>> {
    let n = slots
        .iter()
        .rposition(|s| s.is_some_and(|v| !v.is_empty()))?
        + 1;
    let data: usize = slots[..n].iter().map(|s| s.map_or(0, <[u8]>::len)).sum();
    let mut out = Vec::with_capacity(HEAD + 4 * n + data);
    out.push(VERSION);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    let mut end = 0u32;
    for s in &slots[..n] {
        end += s.map_or(0, <[u8]>::len) as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    for s in slots[..n].iter().flatten() {
        out.extend_from_slice(s);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_read_back_absent_ones_included() {
        let slots: Vec<Option<&[u8]>> = vec![
            Some(b"first"),
            None,
            Some(b""),
            Some(b"x"),
            Some(b"a longer record"),
            None,
            None,
        ];
        let bytes = build(&slots).unwrap();
        let list = List::parse(&bytes).unwrap();
        assert_eq!(list.len(), 5, "trailing absent slots are left out");
        assert_eq!(list.get(0), Ok(Some(&b"first"[..])));
        assert_eq!(list.get(1), Ok(None));
        assert_eq!(list.get(2), Ok(None), "an empty slot is absent");
        assert_eq!(list.get(3), Ok(Some(&b"x"[..])));
        assert_eq!(list.get(4), Ok(Some(&b"a longer record"[..])));
        assert_eq!(list.get(5), Ok(None));
        assert_eq!(list.get(usize::MAX), Ok(None));
        assert!(build(&[None, Some(b""), None]).is_none(), "nothing present");
    }

    #[test]
    fn what_is_not_a_list_is_refused() {
        let good = build(&[Some(b"ab"), Some(b"cde")]).unwrap();
        assert!(List::parse(&good).is_ok());
        assert_eq!(List::parse(&[]).unwrap_err(), Malformed);
        let mut version = good.clone();
        version[0] = 2;
        assert!(List::parse(&version).is_err(), "another version");
        for cut in 1..good.len() {
            assert!(List::parse(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(List::parse(&longer).is_err(), "data past the last slot");
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(List::parse(&huge).is_err(), "more slots than bytes");
        // Offsets out of order: the head reads, the slot does not.
        let mut backwards = good;
        backwards[5..9].copy_from_slice(&9u32.to_le_bytes());
        let list = List::parse(&backwards).unwrap();
        assert_eq!(list.get(0), Err(Malformed), "past the data");
        assert_eq!(list.get(1), Err(Malformed), "ends before it starts");
    }
}
