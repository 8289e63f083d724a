//! Access-record retention: records older than `access_log.retention` are
//! deleted in the background (at start-up, then hourly); younger ones stay.

mod common;

use std::time::Duration;

use tollgate_testkit::{eventually, upstream};

#[tokio::test]
async fn records_older_than_the_retention_are_pruned_and_younger_ones_kept() {
    let up = upstream::echo("u");
    let mut gw = common::gateway()
        .config(&format!(
            "access_log: {{ retention: 1h }}\n{}",
            common::simple(&[up.url()], "", "")
        ))
        .start()
        .await;
    for _ in 0..2 {
        let res = gw.client().get(gw.url("/a")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }
    let db = gw.dir().join("tollgate.db");
    let count = |sql: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    };
    eventually(Duration::from_secs(10), || async {
        count("SELECT count(*) FROM access_records") == 2
    })
    .await;
    {
        // Three records from two hours ago and one from half an hour ago,
        // each in a span of its own, as the sink would write them.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        for age_minutes in [120, 121, 122, 30] {
            conn.execute_batch(&format!(
                "CREATE TEMP TABLE old AS SELECT * FROM access_records LIMIT 1;
                 UPDATE old SET id = NULL, ts = ts - {age_minutes} * 60000000;
                 INSERT INTO access_records SELECT * FROM old;
                 INSERT INTO access_record_spans (first_id, last_id, min_ts, max_ts, apis)
                     SELECT id, id, ts, ts, ',' || api || ',' FROM access_records
                     WHERE id = last_insert_rowid();
                 DROP TABLE old;"
            ))
            .unwrap();
        }
    }
    assert_eq!(count("SELECT count(*) FROM access_records"), 6);

    gw.restart(&[]).await;
    eventually(Duration::from_secs(10), || async {
        count("SELECT count(*) FROM access_records") == 3
    })
    .await;
    let hour_ago = "(SELECT max(ts) FROM access_records) - 3600000000";
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM access_records WHERE ts < {hour_ago}"
        )),
        0
    );
    assert!(gw.stderr().contains("pruned old access records"));
    // Their spans went with them.
    assert_eq!(
        count(
            "SELECT count(*) FROM access_record_spans
             WHERE NOT EXISTS (SELECT 1 FROM access_records WHERE id BETWEEN first_id AND last_id)"
        ),
        0
    );

    // A retention under an hour is refused with its field path.
    let refused = common::gateway()
        .config("access_log: { retention: 10m }\n")
        .spawn()
        .wait_exit(Duration::from_secs(10))
        .await;
    assert_eq!(refused.code(), Some(2));
}
