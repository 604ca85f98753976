//! Fuzz the WAL readers: `decode_record` on arbitrary bytes, then the same
//! bytes as segment files (split in two segments by the first byte) through
//! start-up recovery (`scan`, with and without salvage) and the offset
//! reader. Never a panic; a decoded record never claims bytes it lacks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::wal::reader::LogReader;
use shards::wal::record::decode_record;
use shards::env::os::OsStorage;
use shards::wal::recovery::{scan, ScanPlan};
use shards::wal::segment::segment_path;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = decode_record(data) {
        assert!(header.total_len() <= data.len());
        assert_eq!(payload.len(), header.payload_len as usize);
    }
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // tmpfs when there is one: recovery syncs, and disk syncs would cap
    // the run at a few hundred inputs per second.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    };
    let Ok(dir) = dir else {
        return;
    };
    let split = if control & 0x80 != 0 && !rest.is_empty() {
        (control as usize * 97) % rest.len()
    } else {
        rest.len()
    };
    let _ = std::fs::write(segment_path(dir.path(), 1), &rest[..split]);
    if split < rest.len() {
        let _ = std::fs::write(segment_path(dir.path(), 2), &rest[split..]);
    }
    // The reader sees the files as written; recovery may then repair them.
    if let Ok(mut reader) = LogReader::open(std::sync::Arc::new(OsStorage), dir.path()) {
        let from = u64::from(control & 0x0f) << 6;
        let _ = reader.read_from(from, 1 + (control as usize & 0x70), 1 << 20);
        let _ = reader.oldest_offset();
    }
    let salvage = control & 1 == 1;
    let plan = |salvage| ScanPlan {
        salvage,
        ..ScanPlan::default()
    };
    let mut records = 0u64;
    if let Ok(out) = scan(&OsStorage, dir.path(), plan(salvage), |_, _| {
        records += 1;
        Ok(())
    }) {
        assert_eq!(out.records, records);
        // After a successful scan (and its repairs) the log is clean.
        let again = scan(&OsStorage, dir.path(), plan(false), |_, _| Ok(()))
            .expect("a repaired log scans cleanly");
        assert_eq!(again.records, records);
        assert!(again.torn_tail.is_none() && again.salvage.is_none());
    }
});
