//! Admin tokens: stored by hash, looked up by hash, never held in plain.

mod common;

use common::Db;

use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_store::{AdminToken, StoreError};

/// Stands in for SHA-256 (the admin API's hash): the store only ever sees
/// 32 bytes, whatever made them.
fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ i as u64;
        for byte in token.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&hash.to_le_bytes());
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn tokens_are_stored_and_found_by_hash(db: &Db) {
    let store = db.open();
    assert_eq!(store.admin_token_count().unwrap(), 0);

    let before = now();
    let ops = store
        .insert_admin_token("ops", &digest("tga_ops"), "super_admin")
        .unwrap();
    let ci = store
        .insert_admin_token("ci", &digest("tga_ci"), "viewer")
        .unwrap();
    assert_eq!(store.admin_token_count().unwrap(), 2);
    assert_eq!(
        (ops.name.as_str(), ops.role.as_str()),
        ("ops", "super_admin")
    );
    assert!((before..=now()).contains(&ops.created_at), "{ops:?}");
    assert_eq!(ops.last_used_at, None);
    assert_ne!(ops.id, ci.id);

    assert_eq!(
        store.find_admin_token(&digest("tga_ops")).unwrap(),
        Some(ops)
    );
    assert_eq!(store.find_admin_token(&digest("tga_ci")).unwrap(), Some(ci));
    assert_eq!(store.find_admin_token(&digest("tga_other")).unwrap(), None);
    assert_eq!(store.find_admin_token(&[0; 32]).unwrap(), None);
}

fn names_and_tokens_are_unique(db: &Db) {
    let store = db.open();
    store
        .insert_admin_token("ops", &digest("tga_one"), "super_admin")
        .unwrap();
    match store.insert_admin_token("ops", &digest("tga_two"), "viewer") {
        Err(StoreError::AdminTokenNameTaken(name)) => assert_eq!(name, "ops"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.insert_admin_token("ops-2", &digest("tga_one"), "viewer"),
        Err(StoreError::AdminTokenHashTaken)
    ));
    assert_eq!(store.admin_token_count().unwrap(), 1);
    assert_eq!(
        store
            .find_admin_token(&digest("tga_one"))
            .unwrap()
            .unwrap()
            .role,
        "super_admin",
        "the first stays as it was"
    );
    // Names differing only in case are different names.
    store
        .insert_admin_token("OPS", &digest("tga_two"), "viewer")
        .unwrap();
    assert_eq!(store.admin_token_count().unwrap(), 2);
}

fn touching_records_the_latest_use(db: &Db) {
    let store = db.open();
    let hash = digest("tga_ops");
    let token = store
        .insert_admin_token("ops", &hash, "super_admin")
        .unwrap();
    let last_used = || store.find_admin_token(&hash).unwrap().unwrap().last_used_at;

    store.touch_admin_token(token.id, 1_800_000_000).unwrap();
    assert_eq!(last_used(), Some(1_800_000_000));
    store.touch_admin_token(token.id, 1_800_000_060).unwrap();
    assert_eq!(last_used(), Some(1_800_000_060));
    // Two requests' touches may land out of order.
    store.touch_admin_token(token.id, 1_800_000_030).unwrap();
    assert_eq!(last_used(), Some(1_800_000_060));
    // A token deleted meanwhile: nothing to record.
    store
        .touch_admin_token(token.id + 1, 1_800_000_090)
        .unwrap();
    assert_eq!(store.admin_token_count().unwrap(), 1);
}

/// The store's methods take a token's hash, never the token: whatever the
/// admin API does with them, the token cannot reach the database file.
#[test]
fn the_database_never_holds_a_token_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let url = format!("sqlite://{}", path.display());
    let token = "tga_Zm9vYmFyYmF6cXV4cXV1eHF1dXpxdXV6cXV1eHF1dXo";
    let hash = digest(token);
    {
        let store = tollgate_store::SqliteStore::open(&url).unwrap();
        let stored = store
            .insert_admin_token("bootstrap-admin", &hash, "super_admin")
            .unwrap();
        let found: AdminToken = store.find_admin_token(&hash).unwrap().unwrap();
        store.touch_admin_token(found.id, now()).unwrap();
        assert_eq!(found.id, stored.id);

        // While open, the latest writes may be in the WAL only.
        let files = ["t.db", "t.db-wal"].map(|name| std::fs::read(dir.path().join(name)));
        let bytes: Vec<u8> = files.into_iter().flatten().flatten().collect();
        assert!(contains(&bytes, b"bootstrap-admin"), "the right files");
        assert!(contains(&bytes, &hash));
        assert!(!contains(&bytes, token.as_bytes()));
    }
    // Closed: everything checkpointed into the database file.
    let bytes = std::fs::read(&path).unwrap();
    assert!(contains(&bytes, &hash));
    assert!(!contains(&bytes, token.as_bytes()));
    assert!(
        !contains(&bytes, &token.as_bytes()[4..]),
        "not even in part"
    );

    let store = tollgate_store::SqliteStore::open(&url).unwrap();
    assert_eq!(store.admin_token_count().unwrap(), 1);
    assert!(store
        .find_admin_token(&hash)
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

both!(
    tokens_are_stored_and_found_by_hash,
    names_and_tokens_are_unique,
    touching_records_the_latest_use,
);
