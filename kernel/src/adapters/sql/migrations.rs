//! The SQL migrations, embedded in the binaries with `include_str!`. sqlx's `migrate!` macro
//! would do the same, but its proc-macro crate compiles a host copy of every database driver
//! (SQLite's C source included): minutes of a cold release build.

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::error::{KernelError, KernelResult};

/// One migration: its file name (`<version>_<description>.sql`) and its SQL.
type Embedded = (&'static str, &'static str);

/// `migrations/mysql`: the event store on MySQL / MariaDB.
pub(crate) const MYSQL: &[Embedded] = &[
    (
        "0001_event_store.sql",
        include_str!("../../../../migrations/mysql/0001_event_store.sql"),
    ),
    (
        "0002_relay_checkpoints.sql",
        include_str!("../../../../migrations/mysql/0002_relay_checkpoints.sql"),
    ),
    (
        "0003_events_by_actor.sql",
        include_str!("../../../../migrations/mysql/0003_events_by_actor.sql"),
    ),
];

/// `migrations/sqlite`: the event store on SQLite.
pub(crate) const SQLITE: &[Embedded] = &[
    (
        "0001_event_store.sql",
        include_str!("../../../../migrations/sqlite/0001_event_store.sql"),
    ),
    (
        "0002_relay_checkpoints.sql",
        include_str!("../../../../migrations/sqlite/0002_relay_checkpoints.sql"),
    ),
    (
        "0003_events_by_actor.sql",
        include_str!("../../../../migrations/sqlite/0003_events_by_actor.sql"),
    ),
];

/// `migrations/read-sqlite`: the embedded read store.
pub(crate) const READ_SQLITE: &[Embedded] = &[
    (
        "0001_read_models.sql",
        include_str!("../../../../migrations/read-sqlite/0001_read_models.sql"),
    ),
    (
        "0002_parking_generations.sql",
        include_str!("../../../../migrations/read-sqlite/0002_parking_generations.sql"),
    ),
];

/// A set of embedded migrations as sqlx reads a migrations directory: version and
/// description from the file name, `-- no-transaction` on the first line to run outside a
/// transaction, the checksum of the SQL (so databases migrated by `migrate!` stay valid).
#[derive(Debug)]
struct Source(&'static [Embedded]);

impl<'s> MigrationSource<'s> for Source {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { self.0.iter().map(|m| migration(*m)).collect() })
    }
}

fn migration((file, sql): Embedded) -> Result<Migration, BoxDynError> {
    let (version, description) = file
        .trim_end_matches(".sql")
        .split_once('_')
        .ok_or_else(|| format!("migration {file}: not <version>_<description>.sql"))?;
    Ok(Migration::new(
        version.parse()?,
        description.replace('_', " ").into(),
        MigrationType::Simple,
        sql.into(),
        sql.starts_with("-- no-transaction"),
    ))
}

/// The migrator of one embedded set.
pub(crate) async fn migrator(set: &'static [Embedded]) -> KernelResult<Migrator> {
    Migrator::new(Source(set))
        .await
        .map_err(KernelError::storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of each migrations directory is embedded, in order, with its content.
    #[test]
    fn every_migration_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for (dir, set) in [
            ("mysql", MYSQL),
            ("sqlite", SQLITE),
            ("read-sqlite", READ_SQLITE),
        ] {
            let mut files: Vec<(String, String)> = std::fs::read_dir(root.join(dir))
                .expect("migrations dir")
                .map(|entry| {
                    let path = entry.expect("entry").path();
                    let name = path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned();
                    (name, std::fs::read_to_string(&path).expect("sql"))
                })
                .collect();
            files.sort();
            let embedded: Vec<(String, String)> = set
                .iter()
                .map(|(name, sql)| (name.to_string(), sql.to_string()))
                .collect();
            assert_eq!(embedded, files, "migrations/{dir}");
        }
    }

    #[test]
    fn versions_and_descriptions_come_from_file_names() {
        let m = migration(("0002_relay_checkpoints.sql", "SELECT 1;")).expect("migration");
        assert_eq!(m.version, 2);
        assert_eq!(m.description, "relay checkpoints");
        assert!(!m.no_tx);
        assert!(migration(("nounderscore.sql", "")).is_err());
    }
}
