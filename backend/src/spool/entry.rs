//! One spool entry on disk, and the file names of the spool directory.
//!
//! ```text
//!  <seq, 20 digits>.entry   [body: size bytes][record: JSON][record length: u32 LE]["NXSPOOL1"]
//!  <n>.tmp                  an entry being written: never acknowledged, removed at start
//!  <seq>.corrupt            an entry that failed its checks, kept for inspection
//! ```
//!
//! The record goes after the body because its size and MD5 are known only once the last chunk
//! is in. A file is renamed to `.entry` only after it is complete and fsynced, so an entry whose
//! trailer or length is wrong was damaged after the fact: it is set aside, not deleted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The last bytes of every entry.
pub const MAGIC: [u8; 8] = *b"NXSPOOL1";
/// Record length (u32) and magic.
const TRAILER_LEN: u64 = 12;
/// Longest record accepted back (bucket, key, content type, metadata: S3 caps each).
const MAX_RECORD_LEN: u32 = 1 << 20;

/// What an entry does to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Put,
    /// A tombstone: deletes the object.
    Delete,
}

/// The metadata record of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Acknowledgement order across the spool; the file is named after it.
    pub seq: u64,
    pub kind: Kind,
    pub bucket: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Body bytes, at the start of the file.
    pub size: u64,
    /// MD5 of the body, lowercase hex: the ETag S3 gives a single-part PUT.
    pub md5: String,
    /// When the entry was written (RFC 3339, milliseconds, UTC): its `LastModified` until it
    /// is uploaded.
    pub written_at: String,
}

/// Why an entry file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The file could not be read.
    #[error("Cannot read the entry")]
    Io(#[from] io::Error),
    /// The file does not end with a spool trailer.
    #[error("No spool trailer at the end")]
    Trailer,
    /// The record is not valid JSON of a record.
    #[error("Unreadable record")]
    Record(#[source] serde_json::Error),
    /// The body length in the record does not match the file.
    #[error("File of {actual} bytes, but the record says {expected}")]
    Length { expected: u64, actual: u64 },
    /// The sequence number in the name differs from the record's.
    #[error("Named {named} but the record says {recorded}")]
    Seq { named: u64, recorded: u64 },
}

/// File name of the complete entry `seq`.
pub fn entry_name(seq: u64) -> String {
    format!("{seq:020}.entry")
}

/// The sequence number of a complete entry's file name; `None` for any other file.
pub fn entry_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".entry")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// File name of temp file `n`.
pub fn temp_name(n: u64) -> String {
    format!("{n:020}.tmp")
}

/// Whether `name` is a temp file.
pub fn is_temp(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// Where a damaged entry is set aside.
pub fn corrupt_path(entry: &Path) -> PathBuf {
    entry.with_extension("corrupt")
}

/// Completes a file holding exactly the body: appends the record and trailer and fsyncs.
pub fn seal(file: &mut File, record: &Record) -> io::Result<()> {
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "spool record too large"))?;
    let mut tail = json;
    tail.extend_from_slice(&len.to_le_bytes());
    tail.extend_from_slice(&MAGIC);
    file.write_all(&tail)?;
    file.sync_all()
}

/// Reads and checks the record of a complete entry.
pub fn read_record(path: &Path) -> Result<Record, EntryError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < TRAILER_LEN {
        return Err(EntryError::Trailer);
    }
    let mut trailer = [0; TRAILER_LEN as usize];
    file.seek(SeekFrom::End(-(TRAILER_LEN as i64)))?;
    file.read_exact(&mut trailer)?;
    let (len, magic) = trailer.split_at(4);
    let record_len = u32::from_le_bytes(len.try_into().map_err(|_| EntryError::Trailer)?);
    if magic != MAGIC || record_len > MAX_RECORD_LEN {
        return Err(EntryError::Trailer);
    }
    let body_len =
        file_len.checked_sub(TRAILER_LEN + u64::from(record_len)).ok_or(EntryError::Trailer)?;
    let mut json = vec![0; record_len as usize];
    file.seek(SeekFrom::Start(body_len))?;
    file.read_exact(&mut json)?;
    let record: Record = serde_json::from_slice(&json).map_err(EntryError::Record)?;
    if record.size != body_len {
        return Err(EntryError::Length { expected: record.size, actual: body_len });
    }
    let named = path.file_name().and_then(|n| n.to_str()).and_then(entry_seq);
    match named {
        Some(named) if named != record.seq => Err(EntryError::Seq { named, recorded: record.seq }),
        _ => Ok(record),
    }
}

/// Fsyncs a directory, making the renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, size: u64) -> Record {
        Record {
            seq,
            kind: Kind::Put,
            bucket: "b".into(),
            key: "dir/k".into(),
            content_type: Some("text/plain".into()),
            metadata: [("owner".to_owned(), "tests".to_owned())].into(),
            size,
            md5: "5d41402abc4b2a76b9719d911017c592".into(),
            written_at: "2024-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_sealed_entry_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(entry_name(7));
        let mut file = File::create(&path).unwrap();
        file.write_all(b"hello").unwrap();
        seal(&mut file, &record(7, 5)).unwrap();
        assert_eq!(read_record(&path).unwrap(), record(7, 5));
        assert_eq!(&std::fs::read(&path).unwrap()[..5], b"hello");
    }

    #[test]
    fn damaged_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(entry_name(7));
        let mut file = File::create(&path).unwrap();
        file.write_all(b"hello").unwrap();
        seal(&mut file, &record(7, 6)).unwrap();
        assert!(matches!(read_record(&path), Err(EntryError::Length { expected: 6, actual: 5 })));

        let renamed = dir.path().join(entry_name(8));
        std::fs::rename(&path, &renamed).unwrap();
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(read_record(&path), Err(EntryError::Trailer)));
        let mut file = File::create(&path).unwrap();
        file.write_all(b"hello").unwrap();
        seal(&mut file, &record(7, 5)).unwrap();
        std::fs::rename(&path, &renamed).unwrap();
        assert!(matches!(read_record(&renamed), Err(EntryError::Seq { named: 8, recorded: 7 })));
    }

    #[test]
    fn names() {
        assert_eq!(entry_name(42), "00000000000000000042.entry");
        assert_eq!(entry_seq("00000000000000000042.entry"), Some(42));
        for other in ["42.entry", "00000000000000000042.tmp", "LOCK", "0000000000000000004x.entry"]
        {
            assert_eq!(entry_seq(other), None, "{other}");
        }
        assert!(is_temp(&temp_name(3)));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
