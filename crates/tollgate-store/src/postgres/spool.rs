//! The access-record spool: where the PostgreSQL sink keeps batches while
//! the database is unreachable, to write them once it answers.
//!
//! A directory of segment files, `00000000000000000001.seg` and up, written
//! in order and replayed oldest first. A segment holds frames, appended up
//! to about [`SEGMENT_BYTES`]; a frame is one batch: its payload's length
//! (u32), the smallest and largest `ts` of its records (i64, Unix
//! microseconds; which partitions a replay needs), all little-endian, then
//! the batch's COPY text (see `copy_text`). A frame cut short by a crash is
//! the end of its segment: the records in it are lost, the others replayed.
//!
//! Frames are not synced to disk one by one: a process crash loses none
//! (they are in the page cache), a machine crash may lose the last ones.
//!
//! The spool never grows past its bound (`storage.spool.max_size`): of a
//! batch that would take it there, the records that fit are kept and the
//! rest dropped and counted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A segment stops taking frames once it holds this much (a frame larger
/// than this gets a segment of its own).
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;

/// A frame's header: payload length (u32), min ts (i64), max ts (i64).
const HEADER_BYTES: usize = 4 + 8 + 8;

/// One spooled batch, read back.
pub(crate) struct Frame {
    pub min_ts: i64,
    pub max_ts: i64,
    pub payload: Vec<u8>,
}

struct Segment {
    seq: u64,
    bytes: u64,
}

/// The spool directory, its segments oldest first, and the one open for
/// appending (the newest, once this run has appended to it).
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    total: u64,
    appending: Option<File>,
    next_seq: u64,
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), finding the segments
    /// a previous run left there. It never holds more than `max_bytes`.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push(Segment {
                seq,
                bytes: entry.metadata()?.len(),
            });
        }
        segments.sort_by_key(|s| s.seq);
        let total = segments.iter().map(|s| s.bytes).sum();
        let next_seq = segments.last().map_or(1, |s| s.seq + 1);
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segments: segments.into(),
            total,
            appending: None,
            next_seq,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes on disk, over every segment.
    pub(crate) fn bytes(&self) -> u64 {
        self.total
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.seg"))
    }

    /// Appends a batch's COPY text as one frame. `Ok(false)`, writing
    /// nothing, when it would take the spool past its bound.
    pub(crate) fn append(&mut self, min_ts: i64, max_ts: i64, payload: &[u8]) -> io::Result<bool> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "batch too large"))?;
        let frame_bytes = (HEADER_BYTES + payload.len()) as u64;
        if self.total.saturating_add(frame_bytes) > self.max_bytes {
            return Ok(false);
        }
        let current = match (&self.appending, self.segments.back()) {
            (Some(_), Some(last))
                if last.bytes == 0 || last.bytes + frame_bytes <= SEGMENT_BYTES =>
            {
                last.seq
            }
            _ => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(self.path(seq))?;
                self.appending = Some(file);
                self.segments.push_back(Segment { seq, bytes: 0 });
                seq
            }
        };
        let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&min_ts.to_le_bytes());
        frame.extend_from_slice(&max_ts.to_le_bytes());
        frame.extend_from_slice(payload);
        let file = self.appending.as_mut().expect("opened above");
        if let Err(error) = file.write_all(&frame) {
            // The segment may now end in part of this frame: take no more
            // frames into it (a replay stops at the partial frame).
            self.appending = None;
            self.resize(current)?;
            return Err(error);
        }
        let last = self.segments.back_mut().expect("pushed or found above");
        last.bytes += frame_bytes;
        self.total += frame_bytes;
        Ok(true)
    }

    /// Appends as many of a batch's records (its COPY text's lines) as fit
    /// within the bound, from the first; how many it took. A batch gathered
    /// while the sink waited on an unreachable database can be larger than
    /// the room left, even in an empty spool: dropping it whole would keep
    /// nothing of the outage.
    pub(crate) fn append_within_bound(
        &mut self,
        min_ts: i64,
        max_ts: i64,
        payload: &[u8],
    ) -> io::Result<u64> {
        let records = |text: &[u8]| text.iter().filter(|&&b| b == b'\n').count() as u64;
        if self.append(min_ts, max_ts, payload)? {
            return Ok(records(payload));
        }
        let room = self
            .max_bytes
            .saturating_sub(self.total)
            .saturating_sub(HEADER_BYTES as u64);
        let room = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(payload.len());
        let Some(last_line_end) = payload[..room].iter().rposition(|&b| b == b'\n') else {
            return Ok(0);
        };
        let fitting = &payload[..=last_line_end];
        // The batch's ts range holds the part's: a replay may create a
        // partition more than it needs, never one less.
        if self.append(min_ts, max_ts, fitting)? {
            Ok(records(fitting))
        } else {
            Ok(0)
        }
    }

    /// Reads the size of segment `seq` from disk again, after a failed write.
    fn resize(&mut self, seq: u64) -> io::Result<()> {
        let bytes = fs::metadata(self.path(seq))?.len();
        if let Some(segment) = self.segments.iter_mut().find(|s| s.seq == seq) {
            self.total = self.total - segment.bytes + bytes;
            segment.bytes = bytes;
        }
        Ok(())
    }

    /// The oldest segment and its frames, or `None` when the spool is empty.
    /// Appending moves on to a new segment if it was this one.
    pub(crate) fn oldest(&mut self) -> io::Result<Option<(u64, Vec<Frame>)>> {
        let Some(oldest) = self.segments.front() else {
            return Ok(None);
        };
        let seq = oldest.seq;
        if self.segments.len() == 1 {
            self.appending = None;
        }
        let bytes = fs::read(self.path(seq))?;
        Ok(Some((seq, frames(&bytes, &self.path(seq)))))
    }

    /// Deletes segment `seq` (replayed, or set aside).
    pub(crate) fn remove(&mut self, seq: u64) -> io::Result<()> {
        match fs::remove_file(self.path(seq)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        if let Some(at) = self.segments.iter().position(|s| s.seq == seq) {
            let segment = self.segments.remove(at).expect("found above");
            self.total -= segment.bytes;
        }
        Ok(())
    }

    /// Renames segment `seq` to `….seg.rejected`, out of the spool: the
    /// database refused its records (not an outage), so replaying it again
    /// would fail again. Kept for an operator to look at.
    pub(crate) fn set_aside(&mut self, seq: u64) -> io::Result<PathBuf> {
        let path = self.path(seq);
        let aside = path.with_extension("seg.rejected");
        fs::rename(&path, &aside)?;
        if let Some(at) = self.segments.iter().position(|s| s.seq == seq) {
            let segment = self.segments.remove(at).expect("found above");
            self.total -= segment.bytes;
        }
        if self.segments.is_empty() {
            self.appending = None;
        }
        Ok(aside)
    }
}

/// The whole frames of a segment's bytes, in order.
fn frames(mut bytes: &[u8], path: &Path) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let Some((header, rest)) = bytes.split_at_checked(HEADER_BYTES) else {
            break;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let min_ts = i64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let max_ts = i64::from_le_bytes(header[12..].try_into().expect("8 bytes"));
        let Some((payload, rest)) = rest.split_at_checked(len) else {
            break;
        };
        frames.push(Frame {
            min_ts,
            max_ts,
            payload: payload.to_vec(),
        });
        bytes = rest;
    }
    if !bytes.is_empty() {
        tracing::warn!(
            segment = %path.display(),
            bytes = bytes.len(),
            "the access-record spool segment ends in a partial batch (a crash while writing it); its records are lost"
        );
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_to_segments_in_order_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert!(spool.is_empty());
        assert!(spool.append(1, 2, b"one\n").unwrap());
        assert!(spool.append(3, 4, b"two\n").unwrap());
        assert_eq!(spool.bytes(), 2 * (HEADER_BYTES as u64 + 4));
        let big = vec![b'x'; SEGMENT_BYTES as usize];
        assert!(spool.append(5, 6, &big).unwrap());
        assert!(spool.append(7, 8, b"three\n").unwrap());
        assert_eq!(spool.segments.len(), 3);

        // A new run finds the segments and appends to a new one.
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.segments.len(), 3);
        assert!(spool.append(9, 9, b"four\n").unwrap());
        let (seq, frames) = spool.oldest().unwrap().unwrap();
        assert_eq!(seq, 1);
        let read: Vec<_> = frames
            .iter()
            .map(|f| (f.min_ts, f.max_ts, f.payload.as_slice()))
            .collect();
        assert_eq!(read, vec![(1, 2, &b"one\n"[..]), (3, 4, &b"two\n"[..])]);
        spool.remove(seq).unwrap();
        let (_, frames) = spool.oldest().unwrap().unwrap();
        assert_eq!(frames[0].payload.len(), big.len());
    }

    #[test]
    fn the_bound_refuses_frames_and_a_partial_frame_ends_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        assert!(spool.append(1, 1, &[b'a'; 60]).unwrap());
        assert!(!spool.append(1, 1, &[b'b'; 60]).unwrap());
        assert_eq!(spool.bytes(), 80);
        drop(spool);

        let path = dir.path().join(format!("{:020}.seg", 1));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[9, 0, 0]).unwrap();
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        let (seq, frames) = spool.oldest().unwrap().unwrap();
        assert_eq!(frames.len(), 1);
        let aside = spool.set_aside(seq).unwrap();
        assert!(aside.exists() && !path.exists() && spool.is_empty());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn of_a_batch_past_the_bound_the_records_that_fit_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one 20-byte header and 30 bytes of records.
        let mut spool = Spool::open(dir.path(), 50).unwrap();
        let batch = b"record-0001\nrecord-0002\nrecord-0003\nrecord-0004\n";
        assert_eq!(spool.append_within_bound(1, 9, batch).unwrap(), 2);
        assert_eq!(spool.bytes(), 20 + 24);
        // No room for a whole record more.
        assert_eq!(
            spool.append_within_bound(1, 9, b"record-0005\n").unwrap(),
            0
        );
        assert_eq!(spool.append_within_bound(1, 9, b"r\n").unwrap(), 0);
        let (_, frames) = spool.oldest().unwrap().unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload, b"record-0001\nrecord-0002\n");
        assert_eq!((frames[0].min_ts, frames[0].max_ts), (1, 9));

        // A batch that fits is taken whole.
        let mut roomy = Spool::open(&dir.path().join("roomy"), 1 << 20).unwrap();
        assert_eq!(roomy.append_within_bound(1, 2, batch).unwrap(), 4);
    }
}
