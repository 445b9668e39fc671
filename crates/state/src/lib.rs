//! berth's state: one SQLite database (`berth.db`) under the data directory, opened with
//! migrations applied. For now it holds the host-wide machine-id registry; instances and images
//! come with the VM and container work.
//!
//! Concurrency: several `berth` processes may run at once; SQLite's locking (WAL, a busy
//! timeout) serialises writers, and uniqueness is enforced by the schema, not by checks in code.

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors from the state database.
#[derive(Debug, Error)]
pub enum StateError {
    /// Opening or migrating the database failed.
    #[error("opening berth's state database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A query failed.
    #[error("berth's state database {}{}", path.display(), db_hint(source))]
    Db {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The machine-id is already registered to something else.
    #[error("machine-id {id} is already registered to {holder}")]
    DuplicateId {
        /// The id.
        id: String,
        /// Who has it ("vm/web1").
        holder: String,
    },
    /// The owner already has a machine-id.
    #[error("{owner} already has machine-id {id}")]
    OwnerHasId {
        /// "vm/web1".
        owner: String,
        /// Its id.
        id: String,
    },
    /// An instance of that name exists.
    #[error("an instance named {0:?} already exists")]
    NameTaken(String),
    /// No unique id could be drawn (never happens with a working random source).
    #[error("could not draw a machine-id that is not already registered")]
    Exhausted,
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE machine_ids (
            id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 32),
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (kind, name)
        );",
        ),
        M::up(
            "CREATE TABLE instances (
            name TEXT PRIMARY KEY NOT NULL,
            type TEXT NOT NULL,
            image TEXT NOT NULL,
            spec TEXT NOT NULL,
            desired TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            created_at INTEGER NOT NULL
        );",
        ),
    ])
}

/// A stored instance (VM or container). `spec` is the runtime's own JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Unique name.
    pub name: String,
    /// "vm" or "container".
    pub kind: String,
    /// Image it was made from.
    pub image: String,
    /// Runtime specification (JSON).
    pub spec: String,
    /// What the user last asked for: "running" or "stopped".
    pub desired: String,
    /// Why it is in its state, when berth knows (e.g. "guest powered off").
    pub note: String,
    /// Unix time of creation.
    pub created_at: i64,
}

/// One registered machine-id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The id (32 lowercase hex).
    pub id: String,
    /// What holds it: "vm", "container", "image", ...
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Unix time of registration.
    pub created_at: i64,
}

impl Registration {
    /// "kind/name".
    pub fn owner(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The opened state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Plain words for a full disk, which SQLite calls "database or disk is full".
fn db_hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            ": no space left on the device that holds berth's data dir"
        }
        _ => "",
    }
}

impl Store {
    /// Open (creating if needed) `berth.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join("berth.db");
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StateError::Open {
            path: path.clone(),
            source: e,
        };
        // A stat first: a mkdir that fails because the folder exists costs 50 us on ext4 here.
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| err(Box::new(e)))?;
        }
        let mut conn = Connection::open(&path).map_err(|e| err(Box::new(e)))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| err(Box::new(e)))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(Box::new(e)))?;
        // In WAL mode NORMAL keeps the database consistent across a crash and syncs only at
        // checkpoints; a power cut may lose the last commits, and with them nothing a running
        // guest or container still needs (they die with the power). It takes three fsyncs off
        // every `berth run`.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| err(Box::new(e)))?;
        // Short commands would otherwise checkpoint, sync and delete the WAL at every close,
        // and start and sync a new one at the next write (a millisecond each time). The WAL is
        // checkpointed as it grows instead; kept small, because the first connection to open
        // the database reads all of it to rebuild its index.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(|e| err(Box::new(e)))?;
        conn.pragma_update(None, "wal_autocheckpoint", 32)
            .map_err(|e| err(Box::new(e)))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| err(Box::new(e)))?;
        Ok(Store { conn, path })
    }

    /// A query's error, naming the database.
    fn db(&self, source: rusqlite::Error) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Store, StateError> {
        let mut conn = Connection::open_in_memory().map_err(|e| StateError::Db {
            path: ":memory:".into(),
            source: e,
        })?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| StateError::Open {
                path: ":memory:".into(),
                source: Box::new(e),
            })?;
        Ok(Store {
            conn,
            path: ":memory:".into(),
        })
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    /// Who holds `id`, if anyone.
    pub fn machine_id_holder(&self, id: &str) -> Result<Option<Registration>, StateError> {
        self.conn
            .query_row(
                "SELECT id, kind, name, created_at FROM machine_ids WHERE id = ?1",
                params![id],
                row_to_reg,
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// The id held by `kind/name`, if any.
    pub fn machine_id_of(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<Registration>, StateError> {
        self.conn
            .query_row(
                "SELECT id, kind, name, created_at FROM machine_ids WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                row_to_reg,
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Register `id` for `kind/name`; refuses an id held by anyone else, and a second id for
    /// the same owner.
    pub fn register_machine_id(&self, id: &str, kind: &str, name: &str) -> Result<(), StateError> {
        if let Some(h) = self.machine_id_holder(id)? {
            if h.kind == kind && h.name == name {
                return Ok(());
            }
            return Err(StateError::DuplicateId {
                id: id.into(),
                holder: h.owner(),
            });
        }
        if let Some(h) = self.machine_id_of(kind, name)? {
            return Err(StateError::OwnerHasId {
                owner: h.owner(),
                id: h.id,
            });
        }
        match self.conn.execute(
            "INSERT INTO machine_ids (id, kind, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, kind, name, Store::now()],
        ) {
            Ok(_) => Ok(()),
            // Lost a race with another berth process: report who won.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let holder = self
                    .machine_id_holder(id)?
                    .map(|h| h.owner())
                    .unwrap_or_else(|| format!("{kind}/{name}"));
                Err(StateError::DuplicateId {
                    id: id.into(),
                    holder,
                })
            }
            Err(e) => Err(self.db(e)),
        }
    }

    /// Draw ids from `generate` until one is free, and register it for `kind/name`.
    pub fn allocate_machine_id(
        &self,
        kind: &str,
        name: &str,
        mut generate: impl FnMut() -> String,
    ) -> Result<String, StateError> {
        if let Some(h) = self.machine_id_of(kind, name)? {
            return Err(StateError::OwnerHasId {
                owner: h.owner(),
                id: h.id,
            });
        }
        for _ in 0..16 {
            let id = generate();
            match self.register_machine_id(&id, kind, name) {
                Ok(()) => return Ok(id),
                Err(StateError::DuplicateId { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StateError::Exhausted)
    }

    /// Forget the id of `kind/name` (when the guest is deleted). Returns whether one existed.
    pub fn release_machine_id(&self, kind: &str, name: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .execute(
                "DELETE FROM machine_ids WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(|e| self.db(e))?
            > 0)
    }

    /// Every registration, oldest first.
    pub fn machine_ids(&self) -> Result<Vec<Registration>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT id, kind, name, created_at FROM machine_ids ORDER BY created_at, kind, name",
        )
            .map_err(|e| self.db(e))?;
        let rows = st.query_map([], row_to_reg).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }
}

impl Store {
    /// Record a new instance; refuses a name in use.
    pub fn insert_instance(&self, row: &InstanceRow) -> Result<(), StateError> {
        match self.conn.execute(
            "INSERT INTO instances (name, type, image, spec, desired, note, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![row.name, row.kind, row.image, row.spec, row.desired, row.note, Store::now()],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StateError::NameTaken(row.name.clone()))
            }
            Err(e) => Err(self.db(e)),
        }
    }

    /// One instance.
    pub fn instance(&self, name: &str) -> Result<Option<InstanceRow>, StateError> {
        self
            .conn
            .query_row(
                "SELECT name, type, image, spec, desired, note, created_at FROM instances WHERE name = ?1",
                params![name],
                row_to_instance,
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// All instances by name.
    pub fn instances(&self) -> Result<Vec<InstanceRow>, StateError> {
        let mut st = self.conn.prepare("SELECT name, type, image, spec, desired, note, created_at FROM instances ORDER BY name").map_err(|e| self.db(e))?;
        let rows = st.query_map([], row_to_instance).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    /// Change what the user wants and why.
    pub fn set_instance_state(
        &self,
        name: &str,
        desired: &str,
        note: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE instances SET desired = ?2, note = ?3 WHERE name = ?1",
                params![name, desired, note],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Replace an instance's stored runtime record.
    pub fn set_instance_spec(&self, name: &str, spec: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE instances SET spec = ?2 WHERE name = ?1",
                params![name, spec],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Forget an instance.
    pub fn delete_instance(&self, name: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .execute("DELETE FROM instances WHERE name = ?1", params![name])
            .map_err(|e| self.db(e))?
            > 0)
    }
}

fn row_to_instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        name: r.get(0)?,
        kind: r.get(1)?,
        image: r.get(2)?,
        spec: r.get(3)?,
        desired: r.get(4)?,
        note: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn row_to_reg(r: &rusqlite::Row<'_>) -> rusqlite::Result<Registration> {
    Ok(Registration {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        created_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn refuses_duplicates_and_second_ids() {
        let s = Store::in_memory().unwrap();
        s.register_machine_id(A, "vm", "web1").unwrap();
        s.register_machine_id(A, "vm", "web1").unwrap();
        assert!(
            matches!(s.register_machine_id(A, "vm", "web2"), Err(StateError::DuplicateId { holder, .. }) if holder == "vm/web1")
        );
        assert!(matches!(
            s.register_machine_id(B, "vm", "web1"),
            Err(StateError::OwnerHasId { .. })
        ));
        let mut draws = vec![B.to_string(), A.to_string()];
        let id = s
            .allocate_machine_id("container", "c1", || draws.pop().unwrap())
            .unwrap();
        assert_eq!(id, B, "the taken id is skipped");
        assert_eq!(s.machine_ids().unwrap().len(), 2);
        assert!(s.release_machine_id("vm", "web1").unwrap());
        assert!(!s.release_machine_id("vm", "web1").unwrap());
        s.register_machine_id(A, "vm", "web2").unwrap();
    }

    #[test]
    fn instances_round_trip_and_names_are_unique() {
        let s = Store::in_memory().unwrap();
        let row = InstanceRow {
            name: "web1".into(),
            kind: "vm".into(),
            image: "debian-12".into(),
            spec: "{}".into(),
            desired: "running".into(),
            note: String::new(),
            created_at: 0,
        };
        s.insert_instance(&row).unwrap();
        assert!(matches!(
            s.insert_instance(&row),
            Err(StateError::NameTaken(_))
        ));
        s.set_instance_state("web1", "stopped", "guest powered off")
            .unwrap();
        let got = s.instance("web1").unwrap().unwrap();
        assert_eq!(
            (got.desired.as_str(), got.note.as_str()),
            ("stopped", "guest powered off")
        );
        assert_eq!(s.instances().unwrap().len(), 1);
        assert!(s.delete_instance("web1").unwrap());
        assert!(s.instance("web1").unwrap().is_none());
    }

    #[test]
    fn persists_across_opens() {
        let d = tempfile::tempdir().unwrap();
        Store::open(d.path())
            .unwrap()
            .register_machine_id(A, "vm", "x")
            .unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.machine_id_of("vm", "x").unwrap().unwrap().id, A);
    }
}
