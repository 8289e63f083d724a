//! The day partitions of `access_records` (migration 8): one table per UTC
//! day, `access_records_YYYYMMDD`, holding the records whose `ts` (Unix
//! microseconds) falls in `[day start, next day start)`.
//!
//! There is no DEFAULT partition: the sink creates the partitions a batch
//! needs before writing it (so no record is refused for a missing one), and
//! a DEFAULT partition would make every later `CREATE TABLE … PARTITION OF`
//! scan it, and fail when it held rows of the new day. Retention drops whole
//! days (see [`super::PgStore::prune_access_records`]).

use std::collections::BTreeSet;

use postgres::error::SqlState;
use postgres::GenericClient;

/// Microseconds in a day.
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day (days since 1970-01-01) of `ts`, Unix microseconds.
pub(crate) fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_MICROS)
}

/// The first microsecond of `day` and of the day after: the partition's bounds.
pub(crate) fn bounds(day: i64) -> (i64, i64) {
    (
        day.saturating_mul(DAY_MICROS),
        day.saturating_add(1).saturating_mul(DAY_MICROS),
    )
}

/// `access_records_YYYYMMDD` for `day`.
pub(crate) fn name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("access_records_{y:04}{m:02}{d:02}")
}

/// The day a partition's name stands for, or `None` for another name.
pub(crate) fn day_of_name(name: &str) -> Option<i64> {
    let date = name.strip_prefix("access_records_")?;
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = date[..4].parse().ok()?;
    let m: u32 = date[4..6].parse().ok()?;
    let d: u32 = date[6..].parse().ok()?;
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The partitions that exist, by day, with their table names.
pub(crate) fn existing(
    client: &mut impl GenericClient,
) -> Result<Vec<(i64, String)>, postgres::Error> {
    let rows = client.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'access_records'::regclass",
        &[],
    )?;
    let mut days = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        if let Some(day) = day_of_name(&name) {
            days.push((day, name));
        }
    }
    days.sort();
    Ok(days)
}

/// Creates the partition of each of `days` unless it exists. Another node
/// creating the same one at the same moment is no error: each creation runs
/// in a savepoint, and a duplicate is rolled back and passed over.
pub(crate) fn create(
    tx: &mut postgres::Transaction<'_>,
    days: impl IntoIterator<Item = i64>,
) -> Result<(), postgres::Error> {
    for day in days {
        let (from, to) = bounds(day);
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF access_records
             FOR VALUES FROM ({from}) TO ({to})",
            name(day)
        );
        let mut savepoint = tx.savepoint("create_partition")?;
        match savepoint.batch_execute(&sql) {
            Ok(()) => savepoint.commit()?,
            Err(error)
                if matches!(
                    error.code(),
                    Some(&SqlState::DUPLICATE_TABLE) | Some(&SqlState::UNIQUE_VIOLATION)
                ) =>
            {
                // Dropping the savepoint rolls it back; the transaction goes on.
                drop(savepoint);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The days of the rows of a COPY text payload: its first column is `ts`.
pub(crate) fn days_in_payload(payload: &[u8]) -> BTreeSet<i64> {
    let mut days = BTreeSet::new();
    for line in payload.split(|b| *b == b'\n') {
        let ts = line.split(|b| *b == b'\t').next().unwrap_or_default();
        if let Some(ts) = std::str::from_utf8(ts).ok().and_then(|t| t.parse().ok()) {
            days.insert(day_of(ts));
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_named_by_their_utc_date() {
        assert_eq!(name(0), "access_records_19700101");
        assert_eq!(name(-1), "access_records_19691231");
        // 2024-05-01T12:00:00Z
        let day = day_of(1_714_564_800_000_000);
        assert_eq!(name(day), "access_records_20240501");
        assert_eq!(bounds(day), (1_714_521_600_000_000, 1_714_608_000_000_000));
        assert_eq!(
            name(day_of(1_714_608_000_000_000)),
            "access_records_20240502"
        );
        assert_eq!(
            name(day_of(1_714_607_999_999_999)),
            "access_records_20240501"
        );
        assert_eq!(name(day_of(951_782_400_000_000)), "access_records_20000229");
        for day in [-700_000, -1, 0, 1, 11_016, 19_844, 2_932_896] {
            assert_eq!(day_of_name(&name(day)), Some(day), "{}", name(day));
        }
        assert_eq!(day_of_name("access_records_20240230"), None);
        assert_eq!(day_of_name("access_records_unpartitioned"), None);
    }

    #[test]
    fn payload_days_come_from_the_first_column() {
        let payload = b"1714564800000000\ta\tb\n1714608000000001\tc\n\n-1\td\n";
        let days: Vec<i64> = days_in_payload(payload).into_iter().collect();
        assert_eq!(days, vec![-1, 19_844, 19_845]);
    }
}
