//! The write-ahead log: what makes a group commit durable. Each commit writes one
//! checksummed frame of key writes to the current segment file and syncs it; sled
//! applies the same writes afterwards and is flushed only at checkpoints, when a full
//! segment is rotated out. At open, the segments still present are replayed into sled.
//!
//! A segment is `wal/{seq:016}.log`: an 8-byte magic, then frames of
//! `[payload length u32 LE][crc32 of seq and payload u32 LE][payload]`, then, once it is
//! rotated out, an end marker (length `u32::MAX`). A payload is a list of writes:
//! `[key length u32][key][0 = remove | 1 = put]([value length u32][value])`.
//!
//! Checkpointed segments are kept as spares (`{seq}.spare`) and reused by later ones:
//! overwriting blocks a file already has lets a sync skip the file system's journal,
//! which an append (the file grows) cannot, and that sync is most of a commit's wait.
//! A reused file still holds frames of its earlier life after the new ones; their
//! checksum covers the old segment number, so they end replay instead of joining it.
//! So the newest segment ends at its first frame that does not check out (a torn write,
//! or stale frames); every older one must reach its end marker, or it is damaged.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NSWAL002";
/// The length field of a segment's end marker.
const END: u32 = u32::MAX;
/// Checkpointed segments kept for reuse; more are deleted.
const SPARES: usize = 2;
/// A segment this big is rotated out at the next commit, which starts a checkpoint.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One key write: a put with its value, or a remove.
pub type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// The open log: the segment commits append to.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    seq: u64,
    /// The size at which the segment is rotated out.
    segment_bytes: u64,
    file: File,
    len: u64,
    /// Frames appended since the last sync.
    unsynced: bool,
    frame: Vec<u8>,
}

impl Wal {
    /// Starts a new segment after `previous` (the newest segment replayed, or 0).
    pub fn create(dir: &Path, previous: u64, segment_bytes: u64) -> std::io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        Self::start(dir, previous + 1, segment_bytes)
    }

    /// Opens segment `seq` in a spare file when there is one, else in a new file.
    fn start(dir: &Path, seq: u64, segment_bytes: u64) -> std::io::Result<Wal> {
        let path = segment_path(dir, seq);
        let reused = spares(dir)?.into_iter().find(|spare| std::fs::rename(spare, &path).is_ok());
        let file = match reused {
            Some(_) => OpenOptions::new().write(true).open(&path)?,
            // Not `create_new`: an earlier try at this segment that failed (a full disk)
            // may have left the file, holding nothing of this segment yet.
            None => OpenOptions::new().create(true).truncate(false).write(true).open(&path)?,
        };
        file.write_all_at(MAGIC, 0)?;
        file.sync_data()?;
        sync_dir(dir)?;
        let len = MAGIC.len() as u64;
        Ok(Wal { dir: dir.to_path_buf(), seq, segment_bytes, file, len, unsynced: false, frame: Vec::new() })
    }

    /// Appends one frame holding `writes`, and syncs the segment when `sync`. Returns
    /// the segment that ended, when this append had to start a new one first: once
    /// everything before this frame is in sled and flushed, segments up to that one
    /// may be removed.
    pub fn append<'a>(
        &mut self,
        writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        sync: bool,
    ) -> std::io::Result<Option<u64>> {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 8]);
        for (key, value) in writes {
            push_bytes(&mut self.frame, key);
            match value {
                Some(value) => {
                    self.frame.push(1);
                    push_bytes(&mut self.frame, value);
                }
                None => self.frame.push(0),
            }
        }
        if self.frame.len() == 8 {
            return Ok(None);
        }
        let rotated = if self.len >= self.segment_bytes { Some(self.rotate()?) } else { None };
        let payload = &self.frame[8..];
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|length| *length != END)
            .ok_or_else(|| std::io::Error::other("one commit holds more than 4 GiB of changes"))?;
        let crc = checksum(self.seq, payload);
        self.frame[..4].copy_from_slice(&length.to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        // A failed write or sync leaves `len` where it was, so the writer's next try
        // writes the frame over whatever part of it reached the file.
        self.file.write_all_at(&self.frame, self.len)?;
        self.unsynced = true;
        if sync {
            self.sync()?;
        }
        self.len += self.frame.len() as u64;
        if self.frame.capacity() > 4 * 1024 * 1024 {
            self.frame = Vec::new();
        }
        Ok(rotated)
    }

    /// Makes every frame appended so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Ends the full segment with its marker, syncs it and starts the next; returns the
    /// one that ended.
    fn rotate(&mut self) -> std::io::Result<u64> {
        let mut marker = END.to_le_bytes().to_vec();
        marker.extend_from_slice(&checksum(self.seq, b"end").to_le_bytes());
        self.file.write_all_at(&marker, self.len)?;
        self.unsynced = true;
        self.sync()?;
        let ended = self.seq;
        let frame = std::mem::take(&mut self.frame);
        *self = Wal::start(&self.dir, ended + 1, self.segment_bytes)?;
        self.frame = frame;
        Ok(ended)
    }

    /// The segment commits append to now.
    pub fn current(&self) -> u64 {
        self.seq
    }
}

fn push_bytes(frame: &mut Vec<u8>, bytes: &[u8]) {
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(bytes);
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.log"))
}

/// A frame's checksum: over the segment number too, so frames a reused file still holds
/// from its earlier life never check out.
fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.spare"))
}

/// The files `{seq}.{extension}` in `dir`, oldest first; none when `dir` is missing.
fn numbered(dir: &Path, extension: &str) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|found| found == extension)
            && let Some(seq) = path.file_stem().and_then(|stem| stem.to_str()?.parse().ok())
        {
            found.push((seq, path));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The spare files in `dir`.
fn spares(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(numbered(dir, "spare")?.into_iter().map(|(_, path)| path).collect())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    Ok(numbered(dir, "log")?.into_iter().map(|(seq, _)| seq).collect())
}

/// Retires every segment up to and including `through`, which sled now holds: up to
/// `SPARES` are kept for reuse, the rest deleted.
pub fn retire_through(dir: &Path, through: u64) -> std::io::Result<()> {
    let old: Vec<u64> = segments(dir)?.into_iter().filter(|seq| *seq <= through).collect();
    if old.is_empty() {
        return Ok(());
    }
    let mut spare_count = spares(dir)?.len();
    for seq in old {
        if spare_count < SPARES {
            std::fs::rename(segment_path(dir, seq), spare_path(dir, seq))?;
            spare_count += 1;
        } else {
            std::fs::remove_file(segment_path(dir, seq))?;
        }
    }
    sync_dir(dir)
}

/// Deletes the spare segments: a store that stops cleanly leaves no log behind (the
/// next open starts its segments afresh).
pub fn remove_spares(dir: &Path) -> std::io::Result<()> {
    for spare in spares(dir)? {
        std::fs::remove_file(spare)?;
    }
    sync_dir(dir)
}

/// Why replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// A segment is damaged: not something a crash leaves behind.
    Damaged { file: PathBuf, cause: String },
    /// Reading a segment or applying its writes failed.
    Failed(String),
}

/// Reads every segment in order and hands each frame's writes to `apply`; returns the
/// newest segment number (0 when there was none). The newest segment ends at its first
/// frame that does not check out: a torn write (its sync had not returned, so it was
/// never acknowledged) or frames of a reused file's earlier life. An older segment
/// that does not reach its end marker is damaged.
pub fn replay(dir: &Path, mut apply: impl FnMut(Vec<KeyWrite>) -> Result<(), String>) -> Result<u64, ReplayError> {
    let found = segments(dir).map_err(|e| ReplayError::Failed(format!("cannot list {}: {e}", dir.display())))?;
    for (index, seq) in found.iter().enumerate() {
        let path = segment_path(dir, *seq);
        let newest = index + 1 == found.len();
        let damaged = |cause: String| ReplayError::Damaged { file: path.clone(), cause };
        let bytes =
            std::fs::read(&path).map_err(|e| ReplayError::Failed(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() < MAGIC.len() {
            if newest {
                continue;
            }
            return Err(damaged("the segment ends inside its header".into()));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            let what = if bytes.starts_with(b"NSWAL") {
                "a write-ahead log segment of another nightshift version"
            } else {
                "not a nightshift write-ahead log segment"
            };
            return Err(damaged(what.into()));
        }
        let mut at = MAGIC.len();
        loop {
            match read_frame(*seq, &bytes[at..]) {
                Ok(Frame::Writes(writes, used)) => {
                    apply(writes).map_err(ReplayError::Failed)?;
                    at += used;
                }
                Ok(Frame::End) => break,
                Err(_) if newest => break,
                Err(why) => return Err(damaged(format!("{why} at byte {at}, before the segment's end marker"))),
            }
        }
    }
    Ok(found.last().copied().unwrap_or(0))
}

/// What a segment holds at some position.
enum Frame {
    /// A commit's writes, and the bytes the frame took.
    Writes(Vec<KeyWrite>, usize),
    /// The marker that ends a rotated-out segment.
    End,
}

/// The frame at the start of `bytes`, in segment `seq`, or why there is none.
fn read_frame(seq: u64, bytes: &[u8]) -> Result<Frame, String> {
    let header = bytes.get(..8).ok_or("the segment ends")?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if length == END {
        return if crc == checksum(seq, b"end") {
            Ok(Frame::End)
        } else {
            Err("an end marker's checksum does not match".into())
        };
    }
    let length = length as usize;
    let payload = bytes.get(8..8 + length).ok_or("a frame is cut short")?;
    if checksum(seq, payload) != crc {
        return Err("a frame's checksum does not match".into());
    }
    let mut reader = Reader { bytes: payload };
    let mut writes = Vec::new();
    while !reader.bytes.is_empty() {
        let key = reader.bytes_field()?.to_vec();
        let value = match reader.take(1)?[0] {
            0 => None,
            1 => Some(reader.bytes_field()?.to_vec()),
            other => return Err(format!("a write of unknown kind {other}")),
        };
        writes.push((key, value));
    }
    Ok(Frame::Writes(writes, 8 + length))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < count {
            return Err("a write inside a frame is cut short".into());
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn bytes_field(&mut self) -> Result<&'a [u8], String> {
        let length = self.take(4)?;
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
    }

    fn append(wal: &mut Wal, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Option<u64> {
        wal.append(writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())), true).expect("append")
    }

    fn replayed(dir: &Path) -> Result<Vec<KeyWrite>, ReplayError> {
        let mut all = Vec::new();
        replay(dir, |writes| {
            all.extend(writes);
            Ok(())
        })?;
        Ok(all)
    }

    #[test]
    fn frames_replay_in_order_across_segments() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("a", "1"), (b"b".to_vec(), None)]);
        wal.rotate().expect("rotate");
        append(&mut wal, &[put("a", "2")]);
        assert_eq!(segments(dir.path()).expect("list"), vec![1, 2]);
        let all = replayed(dir.path()).expect("replay");
        assert_eq!(all, vec![put("a", "1"), (b"b".to_vec(), None), put("a", "2")]);
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("kept", "1")]);
        append(&mut wal, &[put("torn", "2")]);
        let path = segment_path(dir.path(), 1);
        let length = std::fs::metadata(&path).expect("meta").len();
        OpenOptions::new().write(true).open(&path).expect("open").set_len(length - 3).expect("cut");
        assert_eq!(replayed(dir.path()).expect("replay"), vec![put("kept", "1")]);
    }

    #[test]
    fn damage_before_the_newest_segment_names_the_file_and_byte() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("a", "1")]);
        append(&mut wal, &[put("b", "2")]);
        wal.rotate().expect("rotate");
        append(&mut wal, &[put("c", "3")]);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        // The last byte of the second frame, just before the end marker.
        let at = bytes.len() - 9;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let Err(ReplayError::Damaged { file, cause }) = replayed(dir.path()) else { panic!("not damage") };
        assert_eq!(file, path);
        assert!(cause.contains("checksum") && cause.contains("byte"), "{cause}");
    }

    #[test]
    fn an_older_segment_cut_short_is_damaged() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("a", "1")]);
        wal.rotate().expect("rotate");
        append(&mut wal, &[put("b", "2")]);
        let path = segment_path(dir.path(), 1);
        let length = std::fs::metadata(&path).expect("meta").len();
        OpenOptions::new().write(true).open(&path).expect("open").set_len(length - 8).expect("cut the end marker");
        assert!(matches!(replayed(dir.path()), Err(ReplayError::Damaged { .. })));
    }

    #[test]
    fn reused_segments_never_replay_frames_of_their_earlier_life() {
        let dir = tempfile::tempdir().expect("dir");
        // 1 KiB segments: every few frames rotate, and checkpoints make spares.
        let mut wal = Wal::create(dir.path(), 0, 1024).expect("create");
        let mut since_checkpoint = Vec::new();
        let mut reused = 0;
        for n in 0..200 {
            // One size for all: stale frames line up exactly where new ones end.
            let write = put(&format!("k{n:03}"), &"v".repeat(100));
            if let Some(ended) = append(&mut wal, std::slice::from_ref(&write)) {
                // What the store does once sled holds everything before this frame.
                retire_through(dir.path(), ended).expect("retire");
                since_checkpoint.clear();
            }
            since_checkpoint.push(write);
            let current = std::fs::metadata(segment_path(dir.path(), wal.current())).expect("meta").len();
            reused += usize::from(current > wal.len);
        }
        assert!(reused > 50, "segments were reused only {reused} times");
        assert_eq!(replayed(dir.path()).expect("replay"), since_checkpoint);
    }

    #[test]
    fn retired_segments_are_not_replayed() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("old", "1")]);
        let ended = wal.rotate().expect("rotate");
        append(&mut wal, &[put("new", "2")]);
        retire_through(dir.path(), ended).expect("retire");
        assert_eq!(replayed(dir.path()).expect("replay"), vec![put("new", "2")]);
        assert_eq!(wal.current(), 2);
    }
}
