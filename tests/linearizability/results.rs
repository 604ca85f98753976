//! The results file of a long run: bench-results/<UTC date>/ in the
//! repository, named after the run's length and kills.

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

const SECONDS_PER_DAY: u64 = 86_400;

/// Today's UTC date as YYYY-MM-DD (days-to-civil, proleptic Gregorian).
pub fn utc_date() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / SECONDS_PER_DAY) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Write `text` to bench-results/<date>/<name>-<secs>s-<kills>kills.md
/// (with `-<partitions>partitions` when there were any) and return the path.
pub fn write_results(name: &str, secs: u64, faults: (u64, u64), text: &str) -> PathBuf {
    let (kills, partitions) = faults;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench-results")
        .join(utc_date());
    fs::create_dir_all(&dir).expect("create bench-results dir");
    let partitions = match partitions {
        0 => String::new(),
        n => format!("-{n}partitions"),
    };
    let path = dir.join(format!("{name}-{secs}s-{kills}kills{partitions}.md"));
    fs::write(&path, text).expect("write results file");
    path
}
