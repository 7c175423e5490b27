//! A bank as a twopc participant: accounts in the bank's own database, debits reserved at
//! prepare (`held`) and booked at commit, credits checked at prepare and booked at commit.
//!
//! Shows how a service implements [`twopc::Handler`] once per database backend and serves the
//! SDK's endpoints next to its own. Run it with the `bank-participant` binary:
//!
//! ```text
//! cargo run -p twopc-examples --bin bank-participant -- \
//!     --listen 127.0.0.1:7801 --database sqlite://bank-a.db --seed alice=100,bob=50
//! ```
//!
//! Money is conserved by construction: a debit's prepare moves nothing, it only raises `held`
//! (never above `balance`, a CHECK constraint says so too); commit lowers `balance` and `held`
//! together; abort lowers `held` again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::{MySql, Postgres, Row as _, Sqlite, Transaction};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use twopc::participant::{ApiError, WireJson};
use twopc::wire::{OutcomeRequest, PrepareRequest};
use twopc::{
    Applied, Handler, HandlerError, MySqlStore, Participant, ParticipantError, PostgresStore,
    ResolverConfig, SqliteStore, StateRow, StateStore, StoreError, TransactionId, Vote,
};

/// Longest account id (the column is `VARCHAR(64)`).
pub const MAX_ACCOUNT_ID: usize = 64;

/// What one participant does in a transfer: the payload of its prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankOp {
    /// Debit or credit.
    pub op: BankOpKind,
    /// The account.
    pub account: String,
    /// The amount, in the smallest unit; must be positive.
    pub amount: i64,
}

/// The two kinds of [`BankOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankOpKind {
    /// Take money out of the account.
    Debit,
    /// Put money into the account.
    Credit,
}

/// The payload of a debit of `amount` from `account`.
pub fn debit(account: &str, amount: i64) -> serde_json::Value {
    serde_json::json!({ "op": "debit", "account": account, "amount": amount })
}

/// The payload of a credit of `amount` to `account`.
pub fn credit(account: &str, amount: i64) -> serde_json::Value {
    serde_json::json!({ "op": "credit", "account": account, "amount": amount })
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account id.
    pub id: String,
    /// Its balance, including what is held.
    pub balance: i64,
    /// What prepared debits reserve until their outcome is known.
    pub held: i64,
}

/// Body of `GET /accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountList {
    /// Every account, by id.
    pub accounts: Vec<Account>,
}

/// Body of `POST /accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAccount {
    /// The account id.
    pub id: String,
    /// Its opening balance.
    pub balance: i64,
}

/// An error of the bank service.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The database URL names no backend the bank knows.
    #[error(
        "unsupported database URL '{0}': expected sqlite://…, postgres://… or mysql://… (see --database)"
    )]
    UnsupportedUrl(String),
    /// An account id or balance that cannot be stored.
    #[error("invalid account: {0}")]
    InvalidAccount(String),
    /// The participant state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A participant call failed.
    #[error(transparent)]
    Participant(#[from] ParticipantError),
    /// The accounts table failed.
    #[error("bank database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Serving HTTP failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The bank's participant handler (stateless: everything lives in the database).
#[derive(Debug, Clone, Copy, Default)]
pub struct BankHandler;

/// The SQL of one backend.
struct BankSql {
    create: &'static str,
    /// held += amount if enough is free: amount, id, amount.
    reserve: &'static str,
    /// id.
    exists: &'static str,
    /// balance -= amount, held -= amount: amount, amount, id.
    book_debit: &'static str,
    /// balance += amount: amount, id.
    book_credit: &'static str,
    /// held -= amount: amount, id.
    release: &'static str,
    /// id, balance; does nothing when the account exists.
    open: &'static str,
    /// id.
    account: &'static str,
    /// none.
    accounts: &'static str,
}

const SQLITE: BankSql = BankSql {
    create: "CREATE TABLE IF NOT EXISTS accounts (\
               id VARCHAR(64) PRIMARY KEY, \
               balance BIGINT NOT NULL, \
               held BIGINT NOT NULL DEFAULT 0, \
               CHECK (held >= 0 AND balance >= held))",
    reserve: "UPDATE accounts SET held = held + ? WHERE id = ? AND balance - held >= ?",
    exists: "SELECT 1 FROM accounts WHERE id = ?",
    book_debit: "UPDATE accounts SET balance = balance - ?, held = held - ? WHERE id = ?",
    book_credit: "UPDATE accounts SET balance = balance + ? WHERE id = ?",
    release: "UPDATE accounts SET held = held - ? WHERE id = ?",
    open: "INSERT INTO accounts (id, balance, held) VALUES (?, ?, 0) ON CONFLICT (id) DO NOTHING",
    account: "SELECT id, balance, held FROM accounts WHERE id = ?",
    accounts: "SELECT id, balance, held FROM accounts ORDER BY id",
};

const POSTGRES: BankSql = BankSql {
    create: "CREATE TABLE IF NOT EXISTS accounts (\
               id VARCHAR(64) PRIMARY KEY, \
               balance BIGINT NOT NULL, \
               held BIGINT NOT NULL DEFAULT 0, \
               CHECK (held >= 0 AND balance >= held))",
    reserve: "UPDATE accounts SET held = held + $1 WHERE id = $2 AND balance - held >= $3",
    exists: "SELECT 1 FROM accounts WHERE id = $1",
    book_debit: "UPDATE accounts SET balance = balance - $1, held = held - $2 WHERE id = $3",
    book_credit: "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
    release: "UPDATE accounts SET held = held - $1 WHERE id = $2",
    open: "INSERT INTO accounts (id, balance, held) VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING",
    account: "SELECT id, balance, held FROM accounts WHERE id = $1",
    accounts: "SELECT id, balance, held FROM accounts ORDER BY id",
};

const MYSQL: BankSql = BankSql {
    create: "CREATE TABLE IF NOT EXISTS accounts (\
               id VARCHAR(64) PRIMARY KEY, \
               balance BIGINT NOT NULL, \
               held BIGINT NOT NULL DEFAULT 0, \
               CHECK (held >= 0 AND balance >= held)\
             ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    reserve: "UPDATE accounts SET held = held + ? WHERE id = ? AND balance - held >= ?",
    exists: "SELECT 1 FROM accounts WHERE id = ?",
    book_debit: "UPDATE accounts SET balance = balance - ?, held = held - ? WHERE id = ?",
    book_credit: "UPDATE accounts SET balance = balance + ? WHERE id = ?",
    release: "UPDATE accounts SET held = held - ? WHERE id = ?",
    // A no-op update rather than INSERT IGNORE, which would also silence data errors.
    open: "INSERT INTO accounts (id, balance, held) VALUES (?, ?, 0) ON DUPLICATE KEY UPDATE id = id",
    account: "SELECT id, balance, held FROM accounts WHERE id = ?",
    accounts: "SELECT id, balance, held FROM accounts ORDER BY id",
};

/// Why prepare refuses `op` before touching the database, if it does.
fn invalid_op(op: &BankOp) -> Option<String> {
    (op.amount <= 0).then(|| format!("amount must be positive, got {}", op.amount))
}

/// Implements [`Handler`] and the accounts queries for one backend.
macro_rules! bank_backend {
    ($module:ident, $db:ty, $sql:expr) => {
        mod $module {
            use super::*;

            impl Handler<$db> for BankHandler {
                type Payload = BankOp;

                async fn prepare(
                    &self,
                    tx: &mut Transaction<'static, $db>,
                    _id: TransactionId,
                    op: &BankOp,
                ) -> Result<Vote, HandlerError> {
                    if let Some(reason) = invalid_op(op) {
                        return Ok(Vote::Abort { reason });
                    }
                    if op.op == BankOpKind::Debit {
                        let reserved = sqlx::query($sql.reserve)
                            .bind(op.amount)
                            .bind(&op.account)
                            .bind(op.amount)
                            .execute(&mut **tx)
                            .await?;
                        if reserved.rows_affected() == 1 {
                            return Ok(Vote::Commit);
                        }
                    }
                    let exists = sqlx::query($sql.exists)
                        .bind(&op.account)
                        .fetch_optional(&mut **tx)
                        .await?
                        .is_some();
                    Ok(match (exists, op.op) {
                        (false, _) => Vote::Abort {
                            reason: format!("unknown account {}", op.account),
                        },
                        (true, BankOpKind::Debit) => Vote::Abort {
                            reason: format!("insufficient funds in account {}", op.account),
                        },
                        (true, BankOpKind::Credit) => Vote::Commit,
                    })
                }

                async fn commit(
                    &self,
                    tx: &mut Transaction<'static, $db>,
                    id: TransactionId,
                    op: &BankOp,
                ) -> Result<(), HandlerError> {
                    let booked = match op.op {
                        BankOpKind::Debit => {
                            sqlx::query($sql.book_debit)
                                .bind(op.amount)
                                .bind(op.amount)
                                .bind(&op.account)
                                .execute(&mut **tx)
                                .await?
                        }
                        BankOpKind::Credit => {
                            sqlx::query($sql.book_credit)
                                .bind(op.amount)
                                .bind(&op.account)
                                .execute(&mut **tx)
                                .await?
                        }
                    };
                    expect_one_account(booked.rows_affected(), id, op)
                }

                async fn abort(
                    &self,
                    tx: &mut Transaction<'static, $db>,
                    id: TransactionId,
                    op: &BankOp,
                ) -> Result<(), HandlerError> {
                    match op.op {
                        BankOpKind::Debit => {
                            let released = sqlx::query($sql.release)
                                .bind(op.amount)
                                .bind(&op.account)
                                .execute(&mut **tx)
                                .await?;
                            expect_one_account(released.rows_affected(), id, op)
                        }
                        // A credit reserved nothing.
                        BankOpKind::Credit => Ok(()),
                    }
                }
            }

            pub(super) async fn create_accounts(pool: &sqlx::Pool<$db>) -> Result<(), sqlx::Error> {
                sqlx::query($sql.create).execute(pool).await?;
                Ok(())
            }

            pub(super) async fn open_account(
                pool: &sqlx::Pool<$db>,
                id: &str,
                balance: i64,
            ) -> Result<Account, BankError> {
                sqlx::query($sql.open)
                    .bind(id)
                    .bind(balance)
                    .execute(pool)
                    .await?;
                let row = sqlx::query($sql.account).bind(id).fetch_one(pool).await?;
                Ok(Account {
                    id: row.try_get("id")?,
                    balance: row.try_get("balance")?,
                    held: row.try_get("held")?,
                })
            }

            pub(super) async fn accounts(
                pool: &sqlx::Pool<$db>,
            ) -> Result<Vec<Account>, BankError> {
                let rows = sqlx::query($sql.accounts).fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(Account {
                            id: row.try_get("id")?,
                            balance: row.try_get("balance")?,
                            held: row.try_get("held")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

bank_backend!(on_sqlite, Sqlite, SQLITE);
bank_backend!(on_postgres, Postgres, POSTGRES);
bank_backend!(on_mysql, MySql, MYSQL);

/// A commit or abort must touch exactly the one account its prepare checked.
fn expect_one_account(rows: u64, id: TransactionId, op: &BankOp) -> Result<(), HandlerError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(HandlerError::msg(format!(
            "transaction {id}: account {} changed {rows} rows, expected 1 (was it deleted?)",
            op.account
        )))
    }
}

/// The bank's participant on whichever backend its database URL names.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Participant<SqliteStore, BankHandler>>),
    Postgres(Arc<Participant<PostgresStore, BankHandler>>),
    MySql(Arc<Participant<MySqlStore, BankHandler>>),
}

/// Runs `$body` with `$p` bound to the participant (and `$m` to the backend's module).
macro_rules! dispatch {
    ($bank:expr, $p:ident => $body:expr) => {
        match &$bank.backend {
            Backend::Sqlite($p) => $body,
            Backend::Postgres($p) => $body,
            Backend::MySql($p) => $body,
        }
    };
    ($bank:expr, $p:ident, $m:ident => $body:expr) => {
        match &$bank.backend {
            Backend::Sqlite($p) => {
                use on_sqlite as $m;
                $body
            }
            Backend::Postgres($p) => {
                use on_postgres as $m;
                $body
            }
            Backend::MySql($p) => {
                use on_mysql as $m;
                $body
            }
        }
    };
}

/// A bank service: its accounts, its participant endpoints and its in-doubt resolver.
#[derive(Clone)]
pub struct Bank {
    /// The participant on the chosen backend.
    backend: Backend,
    /// How [`serve`](Self::serve) runs the in-doubt resolver.
    resolver: ResolverConfig,
}

impl Bank {
    /// Opens the bank at `database_url` (`sqlite://…` creates the file if missing,
    /// `postgres://…`, `mysql://…`/`mariadb://…`), migrating the SDK's state table and creating
    /// the accounts table.
    pub async fn open(database_url: &str) -> Result<Bank, BankError> {
        let scheme = database_url.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "sqlite" => {
                let store = SqliteStore::connect(database_url).await?;
                store.migrate().await?;
                on_sqlite::create_accounts(store.pool()).await?;
                Backend::Sqlite(Arc::new(Participant::new(store, BankHandler)))
            }
            "postgres" | "postgresql" => {
                let store = PostgresStore::connect(database_url).await?;
                store.migrate().await?;
                on_postgres::create_accounts(store.pool()).await?;
                Backend::Postgres(Arc::new(Participant::new(store, BankHandler)))
            }
            "mysql" | "mariadb" => {
                let store = MySqlStore::connect(database_url).await?;
                store.migrate().await?;
                on_mysql::create_accounts(store.pool()).await?;
                Backend::MySql(Arc::new(Participant::new(store, BankHandler)))
            }
            _ => return Err(BankError::UnsupportedUrl(database_url.to_owned())),
        };
        Ok(Bank {
            backend,
            resolver: ResolverConfig::default(),
        })
    }

    /// The same bank with the resolver settings [`serve`](Self::serve) uses.
    pub fn with_resolver(mut self, config: ResolverConfig) -> Bank {
        self.resolver = config;
        self
    }

    /// Creates the account with `balance` unless it exists, and answers the account as stored.
    ///
    /// An existing account keeps its balance: seeding again (a restarted service with the same
    /// `--seed`) must not create or destroy money.
    pub async fn open_account(&self, id: &str, balance: i64) -> Result<Account, BankError> {
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_ACCOUNT_ID {
            return Err(BankError::InvalidAccount(format!(
                "account id must have 1 to {MAX_ACCOUNT_ID} characters, got {chars}"
            )));
        }
        if balance < 0 {
            return Err(BankError::InvalidAccount(format!(
                "opening balance of {id} must not be negative, got {balance}"
            )));
        }
        dispatch!(self, p, m => m::open_account(p.store().pool(), id, balance).await)
    }

    /// Every account, by id.
    pub async fn accounts(&self) -> Result<Vec<Account>, BankError> {
        dispatch!(self, p, m => m::accounts(p.store().pool()).await)
    }

    /// Every row of the SDK's state table, oldest first (for tests and inspection).
    pub async fn participant_rows(&self) -> Result<Vec<StateRow>, BankError> {
        Ok(dispatch!(self, p => p.store().list(i64::MAX).await)?)
    }

    /// Prepare, as `POST /prepare` runs it.
    pub async fn prepare(&self, req: &PrepareRequest) -> Result<Vote, BankError> {
        Ok(dispatch!(self, p => p.prepare(req).await)?)
    }

    /// Commit, as `POST /commit` runs it.
    pub async fn commit(&self, req: &OutcomeRequest) -> Result<Applied, BankError> {
        Ok(dispatch!(self, p => p.commit(req).await)?)
    }

    /// Abort, as `POST /abort` runs it.
    pub async fn abort(&self, req: &OutcomeRequest) -> Result<Applied, BankError> {
        Ok(dispatch!(self, p => p.abort(req).await)?)
    }

    /// The participant endpoints (`/prepare`, `/commit`, `/abort`) and `GET`/`POST /accounts`.
    pub fn router(&self) -> Router {
        let participant = dispatch!(self, p => Arc::clone(p).router());
        let accounts = Router::new()
            .route("/accounts", get(list_accounts).post(open_account))
            .with_state(self.clone());
        participant.merge(accounts)
    }

    /// Starts the in-doubt resolver; it runs until `shutdown` completes.
    pub fn spawn_resolver(
        &self,
        config: ResolverConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        dispatch!(self, p => Arc::clone(p).spawn_resolver(config, shutdown))
    }

    /// Serves [`router`](Self::router) on `listener` and runs the resolver (settings from
    /// [`with_resolver`](Self::with_resolver)) until `shutdown` completes; in-flight requests finish first.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BankError> {
        // The resolver stops when the server does, whatever stopped it: dropping the sender
        // completes `changed()`.
        let (stop, mut stopped) = tokio::sync::watch::channel(());
        let resolver = self.spawn_resolver(self.resolver, async move {
            let _ = stopped.changed().await;
        });
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        drop(stop);
        if let Err(e) = resolver.await {
            tracing::error!(error = %e, "the in-doubt resolver task failed");
        }
        Ok(served?)
    }
}

async fn list_accounts(State(bank): State<Bank>) -> Result<Json<AccountList>, ApiError> {
    let accounts = bank.accounts().await.map_err(internal)?;
    Ok(Json(AccountList { accounts }))
}

async fn open_account(
    State(bank): State<Bank>,
    WireJson(body): WireJson<OpenAccount>,
) -> Result<Json<Account>, ApiError> {
    match bank.open_account(&body.id, body.balance).await {
        Ok(account) => Ok(Json(account)),
        Err(BankError::InvalidAccount(message)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_account",
            message,
        )),
        Err(e) => Err(internal(e)),
    }
}

/// A 500 answer for `err`, which is logged.
fn internal(err: BankError) -> ApiError {
    tracing::error!(error = %err, "bank request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the bank failed internally; see its log",
    )
}
