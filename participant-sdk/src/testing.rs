//! Test databases (feature `testing`): each test gets its own freshly created database on the
//! PostgreSQL or MariaDB/MySQL server named by an environment variable, and drops it at the end.
//!
//! - `TWOPC_TEST_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/postgres`
//! - `TWOPC_TEST_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`
//!
//! The URL names a server and a database to connect to for `CREATE DATABASE`; tests run in
//! `twopc_test_<uuid>`. When the variable is unset the test is skipped with a note on stderr,
//! except when `CI=true`, where it fails: CI must run every backend. A set but unreachable
//! server fails the test.

// Test support: failing loudly with a clear message is its whole job.
#![allow(clippy::expect_used, clippy::panic)]

use sqlx::{AssertSqlSafe, Connection};
use std::future::Future;

/// A database server kind the tests can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL, from `TWOPC_TEST_POSTGRES_URL`.
    Postgres,
    /// MySQL or MariaDB, from `TWOPC_TEST_MYSQL_URL`.
    MySql,
}

impl Server {
    /// The environment variable that names the server.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Postgres => "TWOPC_TEST_POSTGRES_URL",
            Self::MySql => "TWOPC_TEST_MYSQL_URL",
        }
    }

    /// The server's URL from the environment; `None` (after a note on stderr) when unset
    /// outside CI. Panics when unset in CI (`CI=true`).
    pub fn url_from_env(self) -> Option<String> {
        let var = self.env_var();
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{var} must be set in CI")
            }
            _ => {
                eprintln!("note: {var} is not set; skipping this test on {self:?}");
                None
            }
        }
    }
}

/// A database created for one test; drop it with [`TestDatabase::drop_database`].
#[derive(Debug)]
pub struct TestDatabase {
    /// Which server it lives on.
    server: Server,
    /// The URL from the environment (used to create and drop the database).
    admin_url: String,
    /// The database's name, `twopc_test_<uuid>`.
    name: String,
    /// The URL of the new database.
    url: String,
}

impl TestDatabase {
    /// Creates a uniquely named database on `server`; `None` when the test should be skipped
    /// (see the module documentation). Panics when the server cannot be reached.
    pub async fn create(server: Server) -> Option<Self> {
        let admin_url = server.url_from_env()?;
        let name = format!("twopc_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = reqwest::Url::parse(&admin_url)
            .unwrap_or_else(|e| panic!("{} is not a URL: {e}", server.env_var()));
        url.set_path(&format!("/{name}"));
        let create = match server {
            Server::Postgres => format!("CREATE DATABASE \"{name}\""),
            Server::MySql => format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        };
        execute(server, &admin_url, &[create]).await;
        Some(Self {
            server,
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    /// The URL of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, disconnecting whatever is still connected to it.
    pub async fn drop_database(self) {
        let name = &self.name;
        match self.server {
            Server::Postgres => {
                execute(
                    self.server,
                    &self.admin_url,
                    &[format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
                )
                .await;
            }
            Server::MySql => {
                let mut conn = sqlx::MySqlConnection::connect(&self.admin_url)
                    .await
                    .expect("connect to the MySQL test server to drop a test database");
                // Reading the process list can fail while connections come and go (seen once
                // on MariaDB under load): try again; the DROP below still waits for stragglers.
                let mut ids: Vec<u64> = Vec::new();
                for attempt in 1..=5 {
                    match sqlx::query_scalar(
                        "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                    )
                    .bind(name)
                    .fetch_all(&mut conn)
                    .await
                    {
                        Ok(found) => {
                            ids = found;
                            break;
                        }
                        Err(e) if attempt < 5 => {
                            tracing::warn!(error = %e, "listing connections failed; trying again");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("list connections to the test database: {e}"),
                    }
                }
                for id in ids {
                    // The connection may have gone by itself in between.
                    let _ = sqlx::query(AssertSqlSafe(format!("KILL {id}")))
                        .execute(&mut conn)
                        .await;
                }
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                    .execute(&mut conn)
                    .await
                    .expect("drop the test database");
                let _ = conn.close().await;
            }
        }
    }
}

/// Runs `body` with the URL of a fresh database on `server` and drops the database afterwards,
/// also when `body` panics (the panic is passed on). Returns without running `body` when the
/// test is skipped.
pub async fn with_database<F, Fut>(server: Server, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = TestDatabase::create(server).await else {
        return;
    };
    // Run on its own task so that a panic ends the body (and drops its pools) but not the cleanup.
    let outcome = tokio::spawn(body(db.url().to_owned())).await;
    db.drop_database().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// Runs statements on the server at `admin_url` over one connection.
async fn execute(server: Server, admin_url: &str, statements: &[String]) {
    let var = server.env_var();
    match server {
        Server::Postgres => {
            let mut conn = sqlx::PgConnection::connect(admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {var}={admin_url}: {e}"));
            for sql in statements {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql} failed on {var}: {e}"));
            }
            let _ = conn.close().await;
        }
        Server::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {var}={admin_url}: {e}"));
            for sql in statements {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql} failed on {var}: {e}"));
            }
            let _ = conn.close().await;
        }
    }
}
