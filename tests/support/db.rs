//! A database of its own for every test: a SQLite file in a temporary directory, or a
//! uniquely named PostgreSQL / MariaDB database that is dropped afterwards.

use sqlx::Connection;

/// Which server a test database lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An embedded SQLite file.
    Sqlite,
    /// PostgreSQL at `TWOPC_TEST_POSTGRES_URL`.
    Postgres,
    /// MariaDB/MySQL at `TWOPC_TEST_MYSQL_URL`.
    MySql,
}

impl Kind {
    fn env(self) -> Option<&'static str> {
        match self {
            Kind::Sqlite => None,
            Kind::Postgres => Some("TWOPC_TEST_POSTGRES_URL"),
            Kind::MySql => Some("TWOPC_TEST_MYSQL_URL"),
        }
    }

    /// The server's admin URL, or `None` when it is not configured outside CI. In CI
    /// (`CI=true`) a missing setting is a failure, never a silent skip.
    pub fn admin_url(self) -> Option<String> {
        let var = self.env()?;
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{var} must be set in CI (see README: database-backed tests)")
            }
            _ => {
                eprintln!("skipping the {self:?} part: {var} is not set (see README)");
                None
            }
        }
    }
}

/// Whether a database server can be used, as [`Kind::probe`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Its URL variable is not set.
    NotConfigured,
    /// Its URL variable is set but connecting failed (the reason).
    Unreachable(String),
    /// It answered at this admin URL.
    Reachable(String),
}

impl Kind {
    /// Tries to connect to the server (within 5 s) without panicking, in CI or not: for tools
    /// that fall back to SQLite and say so (the chaos test). SQLite is always reachable.
    pub async fn probe(self) -> Probe {
        let Some(var) = self.env() else {
            return Probe::Reachable(String::new());
        };
        let url = match std::env::var(var) {
            Ok(url) if !url.is_empty() => url,
            _ => return Probe::NotConfigured,
        };
        let connect = async {
            match self {
                Kind::Postgres => sqlx::PgConnection::connect(&url).await?.close().await,
                Kind::MySql => sqlx::MySqlConnection::connect(&url).await?.close().await,
                Kind::Sqlite => Ok(()),
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
            Ok(Ok(())) => Probe::Reachable(url),
            Ok(Err(e)) => Probe::Unreachable(format!("{var}: {e}")),
            Err(_) => Probe::Unreachable(format!("{var}: no answer within 5 s")),
        }
    }

    /// Its name for people.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
            Kind::MySql => "MariaDB",
        }
    }
}

/// A database made for one test.
pub struct TestDb {
    /// Which server.
    pub kind: Kind,
    /// URL of the database itself.
    pub url: String,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Makes a new database of `kind`; `None` when that server is not configured (outside CI).
    pub async fn create(kind: Kind, label: &str) -> Option<TestDb> {
        let name = format!("twopc_test_{}", uuid::Uuid::new_v4().simple());
        if kind == Kind::Sqlite {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!(
                "sqlite://{}",
                dir.path().join(format!("{label}.db")).display()
            );
            return Some(TestDb {
                kind,
                url,
                admin_url: None,
                name,
                _dir: Some(dir),
            });
        }
        let admin = kind.admin_url()?;
        let url = replace_db(&admin, &name);
        match kind {
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} unreachable: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut c)
                    .await
                    .expect("create database");
            }
            Kind::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("MariaDB at {admin} unreachable: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut c)
                    .await
                    .expect("create database");
            }
            Kind::Sqlite => unreachable!(),
        }
        Some(TestDb {
            kind,
            url,
            admin_url: Some(admin),
            name,
            _dir: None,
        })
    }
}

impl TestDb {
    /// Leaves the database in place when this is dropped (for inspection after a failure);
    /// answers its URL.
    pub fn keep(mut self) -> String {
        self.admin_url = None;
        if let Some(dir) = self._dir.take() {
            let _ = dir.keep();
        }
        self.url.clone()
    }
}

fn replace_db(admin: &str, name: &str) -> String {
    let mut url = reqwest::Url::parse(admin).expect("database URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return;
        };
        let (kind, name) = (self.kind, self.name.clone());
        // Drop runs outside async context: use a private runtime on a helper thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let sql = match kind {
                    Kind::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                match kind {
                    Kind::Postgres => {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                .execute(&mut c)
                                .await;
                        }
                    }
                    Kind::MySql => {
                        if let Ok(mut c) = sqlx::MySqlConnection::connect(&admin).await {
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                .execute(&mut c)
                                .await;
                        }
                    }
                    Kind::Sqlite => {}
                }
            });
        })
        .join();
    }
}
