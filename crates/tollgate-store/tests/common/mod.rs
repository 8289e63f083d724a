//! The same tests against both databases: a test body is written once,
//! taking a [`Db`], and `both!(name)` makes `name::sqlite` and
//! `name::postgres` of it. The PostgreSQL one runs in a fresh schema, and
//! skips (saying why) when no server answers; see `tollgate_store::testing`.

#![allow(dead_code)]

use tollgate_store::testing::PgSchema;
use tollgate_store::Store;

/// A database for one test: a SQLite file in a temporary directory, or a
/// PostgreSQL schema of its own.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgSchema),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    pub fn postgres(test: &str) -> Option<Db> {
        PgSchema::create(test).map(Db::Postgres)
    }

    /// The database's URL: every store opened from it sees the same data.
    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("t.db").display()),
            Db::Postgres(schema) => schema.url(),
        }
    }

    pub fn open(&self) -> Store {
        Store::open(&self.url()).unwrap()
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }
}

/// `both!(a, b)`: for each test body `fn a(db: &Db)`, the tests
/// `a::sqlite` and `a::postgres`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&$crate::common::Db::sqlite());
            }

            #[test]
            fn postgres() {
                let Some(db) = $crate::common::Db::postgres(module_path!()) else {
                    return;
                };
                super::$name(&db);
            }
        }
    )*};
}
