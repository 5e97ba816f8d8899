//! The write-ahead log: what makes a group commit durable. Each commit appends one
//! checksummed frame of key writes to the current segment file and syncs it; sled
//! applies the same writes afterwards and is flushed only at checkpoints, when a full
//! segment is rotated out. At open, the segments still present are replayed into sled.
//!
//! A segment is `wal/{seq:016}.log`: an 8-byte magic, then frames of
//! `[payload length u32 LE][crc32 of payload u32 LE][payload]`. A payload is a list of
//! writes: `[key length u32][key][0 = remove | 1 = put]([value length u32][value])`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NSWAL001";
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
        let seq = previous + 1;
        let mut file = OpenOptions::new().create_new(true).append(true).open(segment_path(dir, seq))?;
        file.write_all(MAGIC)?;
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
        let rotated = if self.len >= self.segment_bytes { Some(self.rotate()?) } else { None };
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
        let payload = &self.frame[8..];
        let length = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("one commit holds more than 4 GiB of changes"))?;
        let crc = crc32fast::hash(payload);
        self.frame[..4].copy_from_slice(&length.to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&self.frame)?;
        self.len += self.frame.len() as u64;
        self.unsynced = true;
        if sync {
            self.sync()?;
        }
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

    /// Syncs the full segment and starts the next; returns the one that ended.
    fn rotate(&mut self) -> std::io::Result<u64> {
        // A torn frame may only ever be at the end of the newest segment.
        self.sync()?;
        let ended = self.seq;
        *self = Wal::create(&self.dir, ended, self.segment_bytes)?;
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

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
            found.push(seq);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Removes every segment up to and including `through`: sled holds their writes.
pub fn remove_through(dir: &Path, through: u64) -> std::io::Result<()> {
    let old: Vec<u64> = segments(dir)?.into_iter().filter(|seq| *seq <= through).collect();
    if old.is_empty() {
        return Ok(());
    }
    for seq in old {
        std::fs::remove_file(segment_path(dir, seq))?;
    }
    sync_dir(dir)
}

/// What replay found.
#[derive(Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The newest segment number (0 when there was none).
    pub newest: u64,
    /// Bytes of a torn frame dropped from the end of the newest segment.
    pub dropped: usize,
}

/// Why replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// A segment is damaged: not something a crash leaves behind.
    Damaged { file: PathBuf, cause: String },
    /// Reading a segment or applying its writes failed.
    Failed(String),
}

/// Reads every segment in order and hands each frame's writes to `apply`. The last
/// frame of the newest segment may be torn (its sync had not returned, so it was never
/// acknowledged) and is dropped; damage anywhere else is an error.
pub fn replay(dir: &Path, mut apply: impl FnMut(Vec<KeyWrite>) -> Result<(), String>) -> Result<Replayed, ReplayError> {
    let found = segments(dir).map_err(|e| ReplayError::Failed(format!("cannot list {}: {e}", dir.display())))?;
    let mut dropped = 0;
    for (index, seq) in found.iter().enumerate() {
        let path = segment_path(dir, *seq);
        let newest = index + 1 == found.len();
        let damaged = |cause: String| ReplayError::Damaged { file: path.clone(), cause };
        let bytes =
            std::fs::read(&path).map_err(|e| ReplayError::Failed(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() < MAGIC.len() {
            if newest {
                dropped = bytes.len();
                continue;
            }
            return Err(damaged("the segment ends inside its header".into()));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(damaged("not a nightshift write-ahead log segment".into()));
        }
        let mut at = MAGIC.len();
        while at < bytes.len() {
            match read_frame(&bytes[at..]) {
                Ok((writes, used)) => {
                    apply(writes).map_err(ReplayError::Failed)?;
                    at += used;
                }
                Err(FrameError::Torn) if newest => {
                    dropped = bytes.len() - at;
                    break;
                }
                Err(FrameError::Torn) => return Err(damaged(format!("a frame is cut short at byte {at}"))),
                Err(FrameError::Bad { why, ends_at_eof }) => {
                    if newest && ends_at_eof {
                        dropped = bytes.len() - at;
                        break;
                    }
                    return Err(damaged(format!("{why} at byte {at}")));
                }
            }
        }
    }
    Ok(Replayed { newest: found.last().copied().unwrap_or(0), dropped })
}

/// Why a frame could not be read.
enum FrameError {
    /// It runs past the end of the file.
    Torn,
    /// It is whole but wrong; `ends_at_eof` when it is the file's last frame.
    Bad { why: String, ends_at_eof: bool },
}

/// One frame from the start of `bytes`, and how many bytes it took.
fn read_frame(bytes: &[u8]) -> Result<(Vec<KeyWrite>, usize), FrameError> {
    let header = bytes.get(..8).ok_or(FrameError::Torn)?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(8..8 + length).ok_or(FrameError::Torn)?;
    let bad = |why: &str| FrameError::Bad { why: why.to_string(), ends_at_eof: bytes.len() == 8 + length };
    if crc32fast::hash(payload) != crc {
        return Err(bad("a frame's checksum does not match"));
    }
    let mut reader = Reader { bytes: payload };
    let mut writes = Vec::new();
    while !reader.bytes.is_empty() {
        let key = reader.bytes_field().map_err(|why| bad(&why))?.to_vec();
        let value = match reader.take(1).map_err(|why| bad(&why))?[0] {
            0 => None,
            1 => Some(reader.bytes_field().map_err(|why| bad(&why))?.to_vec()),
            _ => return Err(bad("a write of unknown kind")),
        };
        writes.push((key, value));
    }
    Ok((writes, 8 + length))
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
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let Err(ReplayError::Damaged { file, cause }) = replayed(dir.path()) else { panic!("not damage") };
        assert_eq!(file, path);
        assert!(cause.contains("checksum") && cause.contains("byte"), "{cause}");
    }

    #[test]
    fn damage_inside_the_newest_segment_is_not_taken_for_a_torn_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("first", "1")]);
        append(&mut wal, &[put("acknowledged", "2")]);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        // The last byte of the first frame's payload.
        let first_frame_end = MAGIC.len() + 8 + 4 + 5 + 1 + 4 + 1;
        bytes[first_frame_end - 1] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(replayed(dir.path()), Err(ReplayError::Damaged { .. })));

        // The same damage in the last frame is a torn write, and is dropped.
        bytes[first_frame_end - 1] ^= 0xff;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(replayed(dir.path()).expect("replay"), vec![put("first", "1")]);
    }

    #[test]
    fn removed_segments_are_not_replayed() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::create(dir.path(), 0, SEGMENT_BYTES).expect("create");
        append(&mut wal, &[put("old", "1")]);
        let ended = wal.rotate().expect("rotate");
        append(&mut wal, &[put("new", "2")]);
        remove_through(dir.path(), ended).expect("remove");
        assert_eq!(replayed(dir.path()).expect("replay"), vec![put("new", "2")]);
        assert_eq!(wal.current(), 2);
    }
}
