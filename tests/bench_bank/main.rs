//! `twopc-bench-bank`: the bank transfer three ways on the same PostgreSQL cluster.
//!
//! - `twopc`: one global transaction per transfer through the coordinator (`commit: true`, a
//!   debit at bank A and a credit at bank B, both bank participants on PostgreSQL);
//! - `native`: the same transfer as native PostgreSQL 2PC driven from here: on A `BEGIN`, the
//!   debit, `PREPARE TRANSACTION`; on B the same with the credit (both branches concurrently);
//!   then `COMMIT PREPARED` on both (concurrently); a branch waits at most 1 s for a row lock (a
//!   deadlock across the two databases is invisible to PostgreSQL). No log of its own: a crash of this program
//!   between the prepares and the commits leaves prepared transactions nobody resolves;
//! - `local`: both accounts in one database, one local transaction doing debit and credit.
//!
//! Subcommands:
//!
//! - `setup --database URL --accounts N --balance B --prefix P [--prefix Q]`: (re)creates the
//!   bank example's `accounts` table with accounts `P0 … P{N-1}` (and `Q…`);
//! - `participant --listen ADDR --database URL`: a bank participant as shipped
//!   (`twopc_examples::bank::Bank`, the SDK's default pool, the in-doubt resolver running);
//! - `run twopc|native|local …`: the load for `--duration` seconds at `--concurrency`, then the
//!   money check; prints one JSON line on stdout.
//!
//! `scripts/bench-bank` runs the whole comparison.

#![allow(clippy::print_stdout, reason = "stdout is the bench's interface")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection as _, Row as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use twopc::wire::{CreateTransaction, ParticipantSpec, TransactionState, TransactionView};
use twopc_examples::bank::Bank;

/// The bank example's accounts table (examples/src/bank.rs, PostgreSQL).
const CREATE_ACCOUNTS: &str = "CREATE TABLE IF NOT EXISTS accounts (\
    id VARCHAR(64) PRIMARY KEY, \
    balance BIGINT NOT NULL, \
    held BIGINT NOT NULL DEFAULT 0, \
    CHECK (held >= 0 AND balance >= held))";

const DEBIT: &str = "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1";
const CREDIT: &str = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";

/// The bank transfer benchmark: twopc vs native PostgreSQL 2PC vs one local transaction.
#[derive(Debug, Parser)]
#[command(name = "twopc-bench-bank")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (Re)create the accounts table and open the accounts.
    Setup {
        /// postgres://… of the bank's database.
        #[arg(long)]
        database: String,
        /// Accounts per prefix.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Opening balance of each account.
        #[arg(long, default_value_t = 1_000_000_000)]
        balance: i64,
        /// Account id prefix (repeat for several sets in one database).
        #[arg(long, required = true)]
        prefix: Vec<String>,
    },
    /// Serve a bank participant.
    Participant {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// postgres://… of the bank's database.
        #[arg(long)]
        database: String,
    },
    /// Run the load and check the money.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Variant {
    /// Through the coordinator.
    Twopc,
    /// PREPARE TRANSACTION / COMMIT PREPARED driven from here.
    Native,
    /// One local transaction in one database.
    Local,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Which way to transfer.
    variant: Variant,
    /// Transfers in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Accounts per bank (ids a0… at A, b0… at B).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Amounts are 1..=this.
    #[arg(long, default_value_t = 100)]
    max_amount: i64,
    /// twopc: the coordinator's base URL.
    #[arg(long)]
    coordinator: Option<String>,
    /// twopc: bank A's participant URL.
    #[arg(long)]
    bank_a: Option<String>,
    /// twopc: bank B's participant URL.
    #[arg(long)]
    bank_b: Option<String>,
    /// twopc, native: bank A's database (postgres://…).
    #[arg(long)]
    db_a: Option<String>,
    /// twopc, native: bank B's database.
    #[arg(long)]
    db_b: Option<String>,
    /// local: the one database holding both sets of accounts.
    #[arg(long)]
    db: Option<String>,
}

/// What `run` prints.
#[derive(Debug, Serialize)]
struct Report {
    variant: Variant,
    concurrency: usize,
    seconds: f64,
    throughput_tps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    committed: u64,
    aborted: u64,
    errors: u64,
    balance_before: i64,
    balance_after: i64,
    held_after: i64,
    prepared_after: i64,
    conserved: bool,
    /// CPU seconds this process (the load generator) used, from /proc/self/stat.
    client_cpu_s: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    twopc_coordinator::cli::init_tracing("warn");
    match Cli::parse().command {
        Command::Setup {
            database,
            accounts,
            balance,
            prefix,
        } => setup(&database, accounts, balance, &prefix).await,
        Command::Participant { listen, database } => participant(&listen, &database).await,
        Command::Run(args) => {
            let report = run(args).await?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.conserved {
                bail!("money not conserved or not settled: {report:?}");
            }
            Ok(())
        }
    }
}

async fn setup(
    database: &str,
    accounts: usize,
    balance: i64,
    prefixes: &[String],
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(database)
        .await
        .with_context(|| format!("connecting to {database}"))?;
    sqlx::raw_sql("DROP TABLE IF EXISTS accounts")
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(CREATE_ACCOUNTS).execute(&mut conn).await?;
    for prefix in prefixes {
        sqlx::query(
            "INSERT INTO accounts (id, balance, held) \
             SELECT $1 || g, $2, 0 FROM generate_series(0, $3 - 1) AS g",
        )
        .bind(prefix)
        .bind(balance)
        .bind(i64::try_from(accounts)?)
        .execute(&mut conn)
        .await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE accounts")
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn participant(listen: &str, database: &str) -> anyhow::Result<()> {
    let bank = Bank::open(database)
        .await
        .with_context(|| format!("opening {database}"))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    bank.serve(listener, std::future::pending()).await?;
    Ok(())
}

#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    aborted: AtomicU64,
    errors: AtomicU64,
}

/// One worker's connections.
enum Worker {
    Twopc {
        http: reqwest::Client,
        coordinator: String,
        bank_a: String,
        bank_b: String,
    },
    Native {
        a: PgConnection,
        b: PgConnection,
    },
    Local {
        conn: PgConnection,
    },
}

fn need(v: &Option<String>, name: &str) -> anyhow::Result<String> {
    v.clone()
        .with_context(|| format!("--{name} is required for this variant"))
}

/// The databases whose money is counted.
fn databases(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    Ok(match args.variant {
        Variant::Twopc | Variant::Native => {
            vec![need(&args.db_a, "db-a")?, need(&args.db_b, "db-b")?]
        }
        Variant::Local => vec![need(&args.db, "db")?],
    })
}

async fn run(args: RunArgs) -> anyhow::Result<Report> {
    if args.concurrency == 0 || args.accounts == 0 || args.max_amount < 1 {
        bail!("concurrency, accounts and max-amount must be positive");
    }
    let dbs = databases(&args)?;
    let before = totals(&dbs).await?;
    if before.held != 0 || before.prepared != 0 {
        bail!("the banks are not settled before the run: {before:?}");
    }

    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency.max(16))
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        workers.push(match args.variant {
            Variant::Twopc => Worker::Twopc {
                http: http.clone(),
                coordinator: need(&args.coordinator, "coordinator")?,
                bank_a: need(&args.bank_a, "bank-a")?,
                bank_b: need(&args.bank_b, "bank-b")?,
            },
            Variant::Native => Worker::Native {
                a: native_connection(&dbs[0]).await?,
                b: native_connection(&dbs[1]).await?,
            },
            Variant::Local => Worker::Local {
                conn: PgConnection::connect(&dbs[0]).await?,
            },
        });
    }

    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(workers.len());
    for (i, mut worker) in workers.into_iter().enumerate() {
        let counts = counts.clone();
        let (accounts, max_amount) = (args.accounts, args.max_amount);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(i as u64 + 1);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let from = format!("a{}", rng.random_range(0..accounts));
                let to = format!("b{}", rng.random_range(0..accounts));
                let amount = rng.random_range(1..=max_amount);
                let began = Instant::now();
                let outcome = worker.transfer(&from, &to, amount).await;
                let micros = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
                match outcome {
                    Ok(true) => {
                        latencies.push(micros);
                        counts.committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        latencies.push(micros);
                        counts.aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if counts.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("bench-bank: transfer failed: {e:#}");
                        }
                        worker.recover().await;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ms = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };
    let mean_ms = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&m| f64::from(m)).sum::<f64>() / latencies.len() as f64 / 1000.0
    };

    // Outstanding commit deliveries (a `committing` answer) settle within a few seconds.
    let settle_by = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let t = totals(&dbs).await?;
        if (t.held == 0 && t.prepared == 0) || Instant::now() > settle_by {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let committed = counts.committed.load(Ordering::Relaxed);
    let aborted = counts.aborted.load(Ordering::Relaxed);
    Ok(Report {
        variant: args.variant,
        concurrency: args.concurrency,
        seconds,
        throughput_tps: committed as f64 / seconds,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        mean_ms,
        committed,
        aborted,
        errors: counts.errors.load(Ordering::Relaxed),
        balance_before: before.balance,
        balance_after: after.balance,
        held_after: after.held,
        prepared_after: after.prepared,
        conserved: before.balance == after.balance && after.held == 0 && after.prepared == 0,
        client_cpu_s: own_cpu_seconds(),
    })
}

impl Worker {
    /// One transfer; `Ok(false)` when it was refused (insufficient funds).
    async fn transfer(&mut self, from: &str, to: &str, amount: i64) -> anyhow::Result<bool> {
        match self {
            Worker::Twopc {
                http,
                coordinator,
                bank_a,
                bank_b,
            } => {
                let request = CreateTransaction {
                    timeout_ms: Some(10_000),
                    commit: Some(true),
                    participants: Some(vec![
                        ParticipantSpec {
                            name: "bank-a".into(),
                            url: bank_a.clone(),
                            payload: twopc_examples::bank::debit(from, amount),
                        },
                        ParticipantSpec {
                            name: "bank-b".into(),
                            url: bank_b.clone(),
                            payload: twopc_examples::bank::credit(to, amount),
                        },
                    ]),
                };
                let response = http
                    .post(format!("{coordinator}/v1/transactions"))
                    .json(&request)
                    .send()
                    .await?;
                let status = response.status();
                if status != reqwest::StatusCode::CREATED {
                    bail!("coordinator answered {status}: {}", response.text().await?);
                }
                let tx: TransactionView = response.json().await?;
                match tx.state {
                    TransactionState::Committed | TransactionState::Committing => Ok(true),
                    TransactionState::Aborted | TransactionState::Aborting => Ok(false),
                    other => bail!("transaction {} answered in state {other:?}", tx.id),
                }
            }
            Worker::Native { a, b } => {
                let gid = uuid::Uuid::new_v4().simple().to_string();
                let (ga, gb) = (format!("{gid}-a"), format!("{gid}-b"));
                let (pa, pb) = tokio::join!(
                    prepare_branch(a, DEBIT, from, amount, &ga),
                    prepare_branch(b, CREDIT, to, amount, &gb)
                );
                let (pa, pb) = (pa?, pb?);
                let verb = if pa && pb { "COMMIT" } else { "ROLLBACK" };
                let (fa, fb) = tokio::join!(
                    finish_branch(a, pa, verb, &ga),
                    finish_branch(b, pb, verb, &gb)
                );
                fa?;
                fb?;
                Ok(pa && pb)
            }
            Worker::Local { conn } => {
                let mut tx = conn.begin().await?;
                let debited = sqlx::query(DEBIT)
                    .bind(amount)
                    .bind(from)
                    .execute(&mut *tx)
                    .await?;
                if debited.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let credited = sqlx::query(CREDIT)
                    .bind(amount)
                    .bind(to)
                    .execute(&mut *tx)
                    .await?;
                if credited.rows_affected() != 1 {
                    bail!("account {to} missing");
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// After a failed transfer: leave no session inside a transaction.
    async fn recover(&mut self) {
        let conns: Vec<&mut PgConnection> = match self {
            Worker::Twopc { .. } => vec![],
            Worker::Native { a, b } => vec![a, b],
            Worker::Local { conn } => vec![conn],
        };
        for c in conns {
            let _ = sqlx::raw_sql("ROLLBACK").execute(c).await;
        }
    }
}

/// How long a native branch waits for a row lock. Two transfers whose branches lock the same
/// accounts in opposite order at the two banks wait for each other's *prepared* branch: a
/// deadlock across two databases that PostgreSQL cannot see (an earlier version of this bench
/// hung on one). The branch that times out rolls back and the transfer is counted as aborted.
const NATIVE_LOCK_TIMEOUT: &str = "1s";

/// A connection for a native 2PC branch, with [`NATIVE_LOCK_TIMEOUT`].
async fn native_connection(url: &str) -> anyhow::Result<PgConnection> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET lock_timeout = '{NATIVE_LOCK_TIMEOUT}'"
    )))
    .execute(&mut conn)
    .await?;
    Ok(conn)
}

/// One branch of native 2PC: `BEGIN`, the update, `PREPARE TRANSACTION gid`; `Ok(false)` (and
/// rolled back) when the update matched no row or waited too long for a lock.
async fn prepare_branch(
    conn: &mut PgConnection,
    update: &'static str,
    account: &str,
    amount: i64,
    gid: &str,
) -> anyhow::Result<bool> {
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let changed = match sqlx::query(update)
        .bind(amount)
        .bind(account)
        .execute(&mut *conn)
        .await
    {
        Ok(done) => done,
        // 55P03 lock_not_available: the lock timeout (a cross-database deadlock, or a long wait).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    if changed.rows_affected() != 1 {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        return Ok(false);
    }
    sqlx::raw_sql(AssertSqlSafe(format!("PREPARE TRANSACTION '{gid}'")))
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED` of a branch that prepared.
async fn finish_branch(
    conn: &mut PgConnection,
    prepared: bool,
    verb: &str,
    gid: &str,
) -> anyhow::Result<()> {
    if prepared {
        sqlx::raw_sql(AssertSqlSafe(format!("{verb} PREPARED '{gid}'")))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Money in a set of bank databases.
#[derive(Debug, Default)]
struct Totals {
    balance: i64,
    held: i64,
    /// Native prepared transactions plus SDK state rows still `prepared`.
    prepared: i64,
}

async fn totals(dbs: &[String]) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    for db in dbs {
        let mut conn = PgConnection::connect(db).await?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(balance), 0)::BIGINT AS balance, \
                    COALESCE(SUM(held), 0)::BIGINT AS held FROM accounts",
        )
        .fetch_one(&mut conn)
        .await?;
        t.balance += row.try_get::<i64, _>("balance")?;
        t.held += row.try_get::<i64, _>("held")?;
        let native: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_prepared_xacts WHERE database = current_database()",
        )
        .fetch_one(&mut conn)
        .await?;
        let has_state: bool =
            sqlx::query_scalar("SELECT to_regclass('twopc_participant_state') IS NOT NULL")
                .fetch_one(&mut conn)
                .await?;
        let sdk: i64 = if has_state {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM twopc_participant_state WHERE state = 'prepared'",
            )
            .fetch_one(&mut conn)
            .await?
        } else {
            0
        };
        t.prepared += native + sdk;
        conn.close().await?;
    }
    Ok(t)
}

/// User plus system CPU of this process in seconds (0 where /proc is missing); assumes the
/// usual 100 clock ticks per second.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
