//! The configuration's resources, the audit log, users, sessions and quota
//! counters, through [`Store`], on both databases. (The SQLite-only unit
//! tests beside the code check what only SQLite has: its file, its WAL.)

mod common;

use common::Db;
use serde_json::{json, Value};
use tollgate_store::sealing::{MasterKey, Sealer};
use tollgate_store::{
    AuditEntry, AuditQuery, Expect, Membership, Origin, ResourceWrite, Store, StoreError,
    UserUpdate, USER_TOKEN_ROLE,
};

fn put(kind: &str, name: &str, body: Value, expect: Expect) -> ResourceWrite {
    ResourceWrite {
        kind: kind.into(),
        name: name.into(),
        team: None,
        origin: Origin::Admin,
        body: Some(body),
        expect,
    }
}

fn audit(action: &str, kind: &str, name: &str) -> AuditEntry {
    AuditEntry {
        actor: "tester".into(),
        client_ip: Some("127.0.0.1".into()),
        action: action.into(),
        kind: kind.into(),
        name: name.into(),
        diff: json!({"after": {"name": name}}),
    }
}

fn member(team: &str, role: &str) -> Membership {
    Membership {
        team: team.into(),
        role: role.into(),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn commits_bump_the_revision_and_check_expectations(db: &Db) {
    let store = db.open();
    let sealer = Sealer::new(MasterKey::generate());
    assert_eq!(store.config_revision().unwrap(), 0);
    let body = json!({"name": "orders", "upstream": {"targets": [{"url": "http://a"}]}});
    let r1 = store
        .commit(
            &sealer,
            None,
            &[put("services", "orders", body.clone(), Expect::Absent)],
            &[audit("create", "services", "orders")],
        )
        .unwrap();
    assert_eq!(r1, 1);
    let state = store.load_resources(&sealer).unwrap();
    assert_eq!((state.revision, state.resources.len()), (1, 1));
    assert_eq!(state.resources[0].body, body);
    assert_eq!(
        store.resource_revision("services", "orders").unwrap(),
        Some(1)
    );

    let again = store.commit(
        &sealer,
        None,
        &[put("services", "orders", body.clone(), Expect::Absent)],
        &[],
    );
    assert!(matches!(again, Err(StoreError::Exists { .. })), "{again:?}");
    let stale = store.commit(
        &sealer,
        None,
        &[put("services", "orders", body.clone(), Expect::Revision(7))],
        &[],
    );
    assert!(
        matches!(stale, Err(StoreError::Conflict { found: 1, .. })),
        "{stale:?}"
    );
    let based = store.commit(&sealer, Some(0), &[], &[]);
    assert!(
        matches!(
            based,
            Err(StoreError::Stale {
                based_on: 0,
                current: 1
            })
        ),
        "{based:?}"
    );
    // A failed commit changes nothing, not even the revision.
    assert_eq!(store.config_revision().unwrap(), 1);
    let r2 = store
        .commit(
            &sealer,
            Some(1),
            &[ResourceWrite {
                body: None,
                ..put("services", "orders", Value::Null, Expect::Revision(1))
            }],
            &[audit("delete", "services", "orders")],
        )
        .unwrap();
    assert_eq!(r2, 2);
    assert!(store.load_resources(&sealer).unwrap().resources.is_empty());
    let log = store
        .query_audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|e| (e.action.as_str(), e.revision))
        .collect();
    assert_eq!(actions, [("delete", 2), ("create", 1)]);
    assert_eq!(log[1].diff, json!({"after": {"name": "orders"}}));
    let older = store
        .query_audit(&AuditQuery {
            before_id: Some(log[0].id),
            action: Some("create".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(older.len(), 1);
}

/// Nodes writing together: each commit based on revision 0 races the
/// others; exactly one wins, the others are told the configuration moved.
fn concurrent_commits_on_one_revision_let_exactly_one_win(db: &Db) {
    let stores: Vec<Store> = (0..4).map(|_| db.open()).collect();
    let sealer = Sealer::new(MasterKey::generate());
    let results: Vec<Result<i64, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let sealer = &sealer;
                scope.spawn(move || {
                    let name = format!("t{i}");
                    store.commit(
                        sealer,
                        Some(0),
                        &[put("teams", &name, json!({"name": name}), Expect::Absent)],
                        &[audit("create", "teams", &name)],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for result in &results {
        assert!(
            matches!(result, Ok(1) | Err(StoreError::Stale { .. })),
            "{result:?}"
        );
    }
    assert_eq!(stores[0].config_revision().unwrap(), 1);
    assert_eq!(
        stores[0].load_resources(&sealer).unwrap().resources.len(),
        1
    );
}

fn bodies_reseal_under_a_new_key(db: &Db) {
    let store = db.open();
    let old = Sealer::new(MasterKey::generate());
    let body = json!({"name": "llm", "upstream": {"auth": "sk-live-SECRET"}});
    store
        .commit(
            &old,
            None,
            &[put("services", "llm", body.clone(), Expect::Absent)],
            &[],
        )
        .unwrap();
    let new = Sealer::new(MasterKey::generate());
    assert_eq!(store.reseal_resources(&old, &new).unwrap(), 1);
    assert!(store.load_resources(&old).is_err());
    assert_eq!(store.load_resources(&new).unwrap().resources[0].body, body);
}

fn the_audit_log_is_append_only(db: &Db) {
    let store = db.open();
    let sealer = Sealer::new(MasterKey::generate());
    store
        .commit(&sealer, Some(0), &[], &[audit("create", "teams", "a")])
        .unwrap();
    match db {
        Db::Sqlite(_) => {
            let conn = rusqlite::Connection::open(store.path().unwrap()).unwrap();
            assert!(conn.execute("DELETE FROM audit_log", []).is_err());
            assert!(conn
                .execute("UPDATE audit_log SET actor = 'x'", [])
                .is_err());
        }
        Db::Postgres(schema) => {
            let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
            assert!(client.execute("DELETE FROM audit_log", &[]).is_err());
            assert!(client
                .execute("UPDATE audit_log SET actor = 'x'", &[])
                .is_err());
            assert!(client.execute("TRUNCATE audit_log", &[]).is_err());
        }
    }
    assert_eq!(
        store
            .query_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap()
            .len(),
        1
    );
}

fn users_are_created_changed_and_deleted_with_their_audit_entries(db: &Db) {
    let store = db.open();
    let memberships = [member("shop", "team_admin"), member("*", "auditor")];
    let ann = store
        .create_user(
            "ann",
            "$argon2id$one",
            &memberships,
            &[audit("create", "users", "ann")],
        )
        .unwrap();
    assert_eq!(
        ann.memberships,
        [member("*", "auditor"), member("shop", "team_admin")]
    );
    assert!(matches!(
        store.create_user("ann", "$argon2id$two", &[], &[]),
        Err(StoreError::Exists { .. })
    ));
    // A membership the schema refuses fails the whole write.
    assert!(store
        .create_user(
            "bob",
            "h",
            &[member("*", "developer")],
            &[audit("create", "users", "bob")]
        )
        .is_err());
    assert!(store.find_user("bob").unwrap().is_none());

    let changed = store
        .update_user(
            "ann",
            &UserUpdate {
                password_hash: Some("$argon2id$new"),
                memberships: Some(&[member("ops", "developer")]),
            },
            &[audit("update", "users", "ann")],
        )
        .unwrap();
    assert_eq!(changed.password_hash, "$argon2id$new");
    assert_eq!(changed.memberships, [member("ops", "developer")]);
    assert_eq!(store.find_user_by_id(ann.id).unwrap(), Some(changed));
    assert!(matches!(
        store.update_user("nobody", &UserUpdate::default(), &[]),
        Err(StoreError::Missing { .. })
    ));
    assert_eq!(store.list_users().unwrap().len(), 1);

    store
        .delete_user("ann", &[audit("delete", "users", "ann")])
        .unwrap();
    assert!(store.find_user("ann").unwrap().is_none());
    assert!(matches!(
        store.delete_user("ann", &[]),
        Err(StoreError::Missing { .. })
    ));
    let log = store
        .query_audit(&AuditQuery {
            kind: Some("users".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["delete", "update", "create"]);
}

fn tokens_and_sessions_belong_to_their_user_and_go_with_it(db: &Db) {
    let store = db.open();
    let ann = store
        .create_user("ann", "h1", &[member("shop", "developer")], &[])
        .unwrap();
    let token = store
        .insert_user_token(
            "ann",
            "ann/1",
            &[1; 32],
            &[audit("create_token", "users", "ann")],
        )
        .unwrap();
    assert_eq!(token.user_id, Some(ann.id));
    assert_eq!(token.role, USER_TOKEN_ROLE);
    assert_eq!(
        store.find_admin_token(&[1; 32]).unwrap().unwrap().user_id,
        Some(ann.id)
    );
    assert!(matches!(
        store.insert_user_token("ann", "ann/1", &[2; 32], &[]),
        Err(StoreError::AdminTokenNameTaken(_))
    ));

    // Listed without the token, oldest first; deleted with an audit entry.
    let other = store
        .insert_admin_token("ops", &[5; 32], "super_admin")
        .unwrap();
    let listed: Vec<(i64, String)> = store
        .list_admin_tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    assert_eq!(
        listed,
        [(token.id, "ann/1".into()), (other.id, "ops".into())]
    );
    let before = store.query_audit(&all_audit()).unwrap().len();
    assert!(store
        .delete_admin_token(other.id, &[audit("delete_token", "tokens", "ops")])
        .unwrap());
    assert!(!store.delete_admin_token(other.id, &[]).unwrap());
    assert!(store.find_admin_token(&[5; 32]).unwrap().is_none());
    assert_eq!(store.query_audit(&all_audit()).unwrap().len(), before + 1);

    let now = now_secs();
    store.create_session(ann.id, &[3; 32], now + 60).unwrap();
    store.create_session(ann.id, &[4; 32], now - 1).unwrap();
    assert_eq!(
        store
            .find_session_user(&[3; 32], now)
            .unwrap()
            .unwrap()
            .name,
        "ann"
    );
    assert!(
        store.find_session_user(&[4; 32], now).unwrap().is_none(),
        "ended"
    );
    assert!(store.delete_session(&[3; 32]).unwrap());
    assert!(!store.delete_session(&[3; 32]).unwrap());
    // Everywhere: every session of the user ends, another user's stays.
    store.create_session(ann.id, &[6; 32], now + 60).unwrap();
    store.create_session(ann.id, &[7; 32], now + 60).unwrap();
    // ([4], found ended above, is gone already.)
    assert_eq!(store.delete_sessions_of_user(&[6; 32]).unwrap(), 2);
    assert!(store.find_session_user(&[7; 32], now).unwrap().is_none());
    assert_eq!(store.delete_sessions_of_user(&[6; 32]).unwrap(), 0);

    // A new password ends the sessions; deleting the user, its tokens.
    store.create_session(ann.id, &[5; 32], now + 60).unwrap();
    store
        .update_user(
            "ann",
            &UserUpdate {
                password_hash: Some("h2"),
                memberships: None,
            },
            &[],
        )
        .unwrap();
    assert!(store.find_session_user(&[5; 32], now).unwrap().is_none());
    store.create_session(ann.id, &[6; 32], now + 60).unwrap();
    store.delete_user("ann", &[]).unwrap();
    assert!(store.find_admin_token(&[1; 32]).unwrap().is_none());
    assert!(store.find_session_user(&[6; 32], now).unwrap().is_none());
}

fn quota_counters_survive_reopening_the_database(db: &Db) {
    let now = 1_741_910_400; // 2025-03-14T00:00:00Z
    let tomorrow = now + 86_400;
    {
        let store = db.open();
        store
            .save_quota_counters(
                [
                    ("q|global|d2025-03-14|consumer:alice", tomorrow, 3),
                    ("q|global|d2025-03-14|ip:192.0.2.7", tomorrow, 1),
                    ("q|global|d2025-03-13|consumer:alice", now, 9),
                ],
                now - 1,
            )
            .unwrap();
        // A later save replaces the count, never with a lower one.
        store
            .save_quota_counters(
                [
                    ("q|global|d2025-03-14|consumer:alice", tomorrow, 5),
                    ("q|global|d2025-03-14|ip:192.0.2.7", tomorrow, 0),
                ],
                now - 1,
            )
            .unwrap();
    }
    let store = db.open();
    let mut loaded = store.load_quota_counters(now).unwrap();
    loaded.sort();
    assert_eq!(
        loaded,
        [
            (
                "q|global|d2025-03-14|consumer:alice".to_owned(),
                tomorrow,
                5
            ),
            ("q|global|d2025-03-14|ip:192.0.2.7".to_owned(), tomorrow, 1),
        ]
    );
    assert_eq!(store.load_quota_counters(now - 1).unwrap().len(), 3);
    store.save_quota_counters([], now).unwrap();
    assert_eq!(store.load_quota_counters(now - 1).unwrap().len(), 2);
    assert!(store.load_quota_counters(tomorrow).unwrap().is_empty());
}

both!(
    commits_bump_the_revision_and_check_expectations,
    concurrent_commits_on_one_revision_let_exactly_one_win,
    bodies_reseal_under_a_new_key,
    the_audit_log_is_append_only,
    users_are_created_changed_and_deleted_with_their_audit_entries,
    tokens_and_sessions_belong_to_their_user_and_go_with_it,
    quota_counters_survive_reopening_the_database,
);

fn all_audit() -> tollgate_store::AuditQuery {
    tollgate_store::AuditQuery {
        limit: 1000,
        ..tollgate_store::AuditQuery::default()
    }
}
