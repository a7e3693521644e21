//! The database side: sqlx connections to PostgreSQL or SQLite, the `_sqlx_migrations`
//! table (sqlx's layout), the migration lock, and applying one migration.
//!
//! Locking (sqlx's own Migrator is not used for it):
//! - PostgreSQL: `pg_try_advisory_lock` on a dedicated connection, polled until the lock
//!   timeout, with sqlx's lock id for the database (so sqlx-cli and dp exclude each
//!   other). It is released explicitly, and by the server when the connection closes
//!   (a crash or Ctrl-C cannot leave it behind).
//! - SQLite: the whole run is one `BEGIN IMMEDIATE` transaction (the database's write
//!   lock, waited for up to the lock timeout); each migration is a savepoint inside it,
//!   so a failure rolls back that migration only, and everything commits once.

use crate::source::Migration;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Version.
    pub version: i64,
    /// Description.
    pub description: String,
    /// When it was applied (as the database prints it).
    pub installed_on: String,
    /// False for a dirty row (a no-transaction migration that failed).
    pub success: bool,
    /// SHA-384 recorded when applied.
    pub checksum: Vec<u8>,
    /// Nanoseconds it took.
    pub execution_time: i64,
}

/// A database error, with the secret parts of the URL never included.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError(describe(&e))
    }
}

/// The database's own message for an error (never the URL).
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Configuration(_) => "invalid database URL".to_string(),
        other => other.to_string(),
    }
}

/// The URL without user, password or query (where options such as a password may be),
/// for messages: `postgres://host:port/db`. One that does not parse is `<database>`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            // (A URL without a host has no user or password to remove.)
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.into()
        }
        Err(_) => "<database>".to_string(),
    }
}

/// An open, locked database.
pub enum Db {
    /// PostgreSQL: the connection holding the advisory lock (which also reads the
    /// table), and the one that runs migrations, opened only when there is one to run
    /// (a no-op run, paid on every deploy, then costs one connection).
    Pg {
        /// Runs the migrations; opened on first use.
        conn: Option<PgConnection>,
        /// Where to open it.
        opts: Box<PgConnectOptions>,
        /// Holds the advisory lock; reads the table.
        lock: PgConnection,
        /// sqlx's lock id for this database.
        lock_id: i64,
    },
    /// SQLite; `true` while inside its `BEGIN IMMEDIATE` (the lock); the execution times
    /// (version, nanoseconds) still to be written, all at once before the commit.
    Sqlite(SqliteConnection, bool, Vec<(i64, i64)>),
}

fn is_pg(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn unsupported(url: &str) -> DbError {
    DbError(format!(
        "unsupported database URL {} (expected postgres:// or sqlite:)",
        redact(url)
    ))
}

/// CRC-32 (IEEE), as sqlx uses for its lock id.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// sqlx's advisory lock id for a PostgreSQL database name.
pub fn lock_id(database: &str) -> i64 {
    0x3d32ad9e * crc32(database.as_bytes()) as i64
}

impl Db {
    /// Connects read-only: no lock, no table created, no SQLite file created.
    pub async fn open_read_only(url: &str) -> Result<Db, DbError> {
        if is_pg(url) {
            let opts = PgConnectOptions::from_str(url)?;
            let lock = PgConnection::connect_with(&opts).await?;
            Ok(Db::Pg {
                conn: None,
                opts: Box::new(opts),
                lock,
                lock_id: 0,
            })
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?.read_only(true);
            Ok(Db::Sqlite(
                SqliteConnection::connect_with(&opts).await?,
                false,
                Vec::new(),
            ))
        } else {
            Err(unsupported(url))
        }
    }

    /// True when `_sqlx_migrations` exists.
    pub async fn has_table(&mut self) -> Result<bool, DbError> {
        Ok(match self {
            Db::Pg { lock: conn, .. } => sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(conn)
                .await?,
            Db::Sqlite(conn, _, _) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(conn)
            .await? > 0,
        })
    }

    /// Connects and takes the migration lock, waiting up to `timeout`, and makes sure the
    /// table exists. Returns how long it waited for the lock.
    pub async fn open(url: &str, timeout: Duration) -> Result<(Db, Duration), DbError> {
        let started = Instant::now();
        if is_pg(url) {
            let opts = PgConnectOptions::from_str(url)?;
            let mut lock = PgConnection::connect_with(&opts).await?;
            let database: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut lock)
                .await?;
            let id = lock_id(&database);
            loop {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(id)
                    .fetch_one(&mut lock)
                    .await?;
                if got {
                    break;
                }
                if started.elapsed() >= timeout {
                    return Err(DbError(format!(
                        "another migration holds the lock on database {database:?}; gave up after {}s",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let waited = started.elapsed();
            let mut db = Db::Pg {
                conn: None,
                opts: Box::new(opts),
                lock,
                lock_id: id,
            };
            if let Db::Pg { lock: conn, .. } = &mut db {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);",
                )
                .execute(conn)
                .await?;
            }
            Ok((db, waited))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .busy_timeout(timeout);
            let mut conn = SqliteConnection::connect_with(&opts).await?;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.map_err(|e| {
                if matches!(&e, sqlx::Error::Database(d) if d.message().contains("locked")) {
                    DbError(format!(
                        "another migration holds the lock on the SQLite database; gave up after {}s",
                        timeout.as_secs()
                    ))
                } else {
                    DbError::from(e)
                }
            })?;
            let waited = started.elapsed();
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);",
            )
            .execute(&mut conn)
            .await?;
            Ok((Db::Sqlite(conn, true, Vec::new()), waited))
        } else {
            Err(unsupported(url))
        }
    }

    /// Every row of `_sqlx_migrations`, by version.
    pub async fn applied(&mut self) -> Result<Vec<Applied>, DbError> {
        let sql = match self {
            Db::Pg { .. } => "SELECT version, description, installed_on::text AS installed_on, success, checksum, execution_time FROM _sqlx_migrations ORDER BY version",
            Db::Sqlite(..) => "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, success, checksum, execution_time FROM _sqlx_migrations ORDER BY version",
        };
        let rows = match self {
            Db::Pg { lock: conn, .. } => sqlx::query(sql)
                .fetch_all(conn)
                .await?
                .into_iter()
                .map(row)
                .collect(),
            Db::Sqlite(conn, _, _) => sqlx::query(sql)
                .fetch_all(conn)
                .await?
                .into_iter()
                .map(row)
                .collect(),
        };
        rows
    }

    /// Applies one migration and records it; returns its execution time.
    pub async fn apply(&mut self, m: &Migration) -> Result<Duration, DbError> {
        if let Db::Pg {
            conn: conn @ None,
            opts,
            ..
        } = self
        {
            *conn = Some(PgConnection::connect_with(opts).await?);
        }
        let started = Instant::now();
        match self {
            Db::Pg {
                conn: Some(conn), ..
            } if m.no_tx => {
                insert_pg(conn, m, false, 0).await?;
                sqlx::raw_sql(&m.sql).execute(&mut *conn).await?;
                let elapsed = started.elapsed();
                sqlx::query("UPDATE _sqlx_migrations SET success = TRUE, execution_time = $1 WHERE version = $2")
                    .bind(elapsed.as_nanos() as i64)
                    .bind(m.version)
                    .execute(conn)
                    .await?;
                Ok(elapsed)
            }
            Db::Pg { conn: None, .. } => Err(DbError("no connection".into())),
            Db::Pg {
                conn: Some(conn), ..
            } => {
                let mut tx = conn.begin().await?;
                sqlx::raw_sql(&m.sql).execute(&mut *tx).await?;
                let elapsed = started.elapsed();
                insert_pg(&mut tx, m, true, elapsed.as_nanos() as i64).await?;
                tx.commit().await?;
                Ok(elapsed)
            }
            Db::Sqlite(conn, _, _) if m.no_tx => {
                // Outside any transaction: commit what came before, run it, lock again.
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                insert_sqlite(conn, m, false, 0).await?;
                let result = sqlx::raw_sql(&m.sql).execute(&mut *conn).await;
                let elapsed = started.elapsed();
                if let Err(e) = result {
                    let _ = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await;
                    return Err(e.into());
                }
                sqlx::query("UPDATE _sqlx_migrations SET success = TRUE, execution_time = ?1 WHERE version = ?2")
                    .bind(elapsed.as_nanos() as i64)
                    .bind(m.version)
                    .execute(&mut *conn)
                    .await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(conn).await?;
                Ok(elapsed)
            }
            Db::Sqlite(conn, _, times) => {
                // One call into SQLite per migration (each call is a hop to sqlx's
                // worker thread): savepoint, the migration, its row, release. The
                // execution time is written for all of them just before the commit.
                let batch = format!(
                    "SAVEPOINT dp_migration;\n{}\n;\nINSERT INTO _sqlx_migrations \
                     (version, description, success, checksum, execution_time) \
                     VALUES ({}, '{}', TRUE, X'{}', 0);\nRELEASE dp_migration;",
                    m.sql,
                    m.version,
                    m.description.replace('\'', "''"),
                    hex::encode(&m.checksum),
                );
                match sqlx::raw_sql(&batch).execute(&mut *conn).await {
                    Ok(_) => {
                        let elapsed = started.elapsed();
                        times.push((m.version, elapsed.as_nanos() as i64));
                        Ok(elapsed)
                    }
                    Err(e) => {
                        let _ = sqlx::raw_sql("ROLLBACK TO dp_migration; RELEASE dp_migration")
                            .execute(conn)
                            .await;
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Commits (SQLite) and releases the lock.
    pub async fn close(self) -> Result<(), DbError> {
        match self {
            Db::Pg {
                conn,
                mut lock,
                lock_id,
                ..
            } => {
                if let Some(conn) = conn {
                    let _ = conn.close().await;
                }
                if lock_id != 0 {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(lock_id)
                        .execute(&mut lock)
                        .await?;
                }
                let _ = lock.close().await;
            }
            Db::Sqlite(mut conn, locked, times) => {
                if !locked {
                    let _ = conn.close().await;
                    return Ok(());
                }
                if !times.is_empty() {
                    let cases: String = times
                        .iter()
                        .map(|(v, ns)| format!(" WHEN {v} THEN {ns}"))
                        .collect();
                    let versions: Vec<String> = times.iter().map(|(v, _)| v.to_string()).collect();
                    sqlx::raw_sql(&format!(
                        "UPDATE _sqlx_migrations SET execution_time = CASE version{cases} END WHERE version IN ({})",
                        versions.join(",")
                    ))
                    .execute(&mut conn)
                    .await?;
                }
                sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
                let _ = conn.close().await;
            }
        }
        Ok(())
    }
}

/// Inserts a migration's row (`$n` placeholders work in both PostgreSQL and SQLite).
macro_rules! insert_row {
    ($conn:expr, $m:expr, $success:expr, $nanos:expr) => {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($m.version)
        .bind(&$m.description)
        .bind($success)
        .bind(&$m.checksum)
        .bind($nanos)
        .execute($conn)
        .await
        .map(drop)
        .map_err(DbError::from)
    };
}

async fn insert_pg(
    conn: &mut PgConnection,
    m: &Migration,
    success: bool,
    nanos: i64,
) -> Result<(), DbError> {
    insert_row!(conn, m, success, nanos)
}

async fn insert_sqlite(
    conn: &mut SqliteConnection,
    m: &Migration,
    success: bool,
    nanos: i64,
) -> Result<(), DbError> {
    insert_row!(conn, m, success, nanos)
}

/// Decodes a `_sqlx_migrations` row, from either database.
fn row<R>(r: R) -> Result<Applied, DbError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Applied {
        version: r.try_get("version")?,
        description: r.try_get("description")?,
        installed_on: r.try_get("installed_on")?,
        success: r.try_get("success")?,
        checksum: r.try_get("checksum")?,
        execution_time: r.try_get("execution_time")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc_and_redaction() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            super::redact("postgres://u:secret@db:5432/app?sslmode=require"),
            "postgres://db:5432/app"
        );
        assert_eq!(
            super::redact("sqlite:///srv/app.db"),
            "sqlite:///srv/app.db"
        );
        assert_eq!(
            super::redact("postgresql://app:p@ss:w@[::1]/app?password=x"),
            "postgresql://[::1]/app"
        );
        assert_eq!(super::redact("not a url"), "<database>");
    }
}
