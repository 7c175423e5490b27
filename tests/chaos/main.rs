//! `twopc-chaos`: the chaos bank test.
//!
//! Starts the coordinator and bank participants as real processes (`twopc-testnode`, built next
//! to this binary), with the banks' databases mixed (PostgreSQL, MariaDB, SQLite when the
//! servers are reachable), and runs concurrent transfers for a while. Meanwhile it kills the
//! coordinator and the participants with SIGKILL at random moments and restarts them, and
//! routes all coordinator-to-participant traffic through a fault-injecting proxy of its own.
//! Then it stops the faults, waits until everything is final, and checks the bank invariants
//! (ARCHITECTURE.md section 5). Its report is on stdout; the last line starts `chaos: OK` or
//! `chaos: FAIL`, and the exit status follows (0, 1; 2 when the harness itself failed).
//!
//! Run it through `scripts/chaos`, which builds it first: `scripts/chaos --help`.

#![allow(
    clippy::print_stdout,
    reason = "stdout is the chaos test's interface: its report"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod client;
mod cluster;
mod proxy;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use cluster::{Incidents, KillSchedule, Node, SharedNode};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use twopc_tests::db::{Kind, Probe, TestDb};

/// The chaos bank test: transfers between bank participants while the coordinator and the
/// participants are killed with SIGKILL and their traffic goes through a faulty proxy; then
/// the bank invariants are checked. Rates are probabilities per proxied request.
#[derive(Debug, Clone, Parser)]
#[command(name = "twopc-chaos", version)]
struct Options {
    /// Seed of every random choice: transfers, kill times, victims, downtimes, fault draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long transfers run, with kills and faults, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent transfer clients.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Bank participants (at least 3), each with its own database.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=20))]
    participants: u16,
    /// Accounts per bank.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    accounts: u16,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000)]
    balance: i64,
    /// Transfer amounts are drawn from 1 to this.
    #[arg(long, default_value_t = 100)]
    max_amount: i64,
    /// `timeout_ms` of every transfer (bounds phase one).
    #[arg(long, default_value_t = 2000)]
    tx_timeout_ms: u64,
    /// Databases of the banks: `auto` rotates PostgreSQL, MariaDB and SQLite, using a server
    /// only when its TWOPC_TEST_POSTGRES_URL / TWOPC_TEST_MYSQL_URL is set and it answers;
    /// `sqlite` uses SQLite for all.
    #[arg(long, value_enum, default_value_t = Databases::Auto)]
    databases: Databases,
    /// The coordinator's decision log: `sqlite` (a file in the run directory) or `postgres`
    /// (a database of its own at TWOPC_TEST_POSTGRES_URL; SQLite when that does not answer).
    #[arg(long, value_enum, default_value_t = LogStore::Sqlite)]
    coordinator_log: LogStore,
    /// Mean milliseconds between two SIGKILLs of the coordinator (each wait is uniform in
    /// [mean/2, 3·mean/2]); 0: never.
    #[arg(long, default_value_t = 5000)]
    coordinator_kill_every_ms: u64,
    /// Mean milliseconds between two SIGKILLs of a participant (chosen at random); 0: never.
    #[arg(long, default_value_t = 4000)]
    participant_kill_every_ms: u64,
    /// Longest time a killed process stays down before it is restarted (uniform from 0).
    #[arg(long, default_value_t = 1000)]
    max_downtime_ms: u64,
    /// Rate of delays: the request is held up to --max-delay-ms (independent of the rest).
    #[arg(long, default_value_t = 0.05)]
    delay_rate: f64,
    /// Longest delay; above the transfer's timeout a delayed prepare misses its deadline.
    #[arg(long, default_value_t = 3000)]
    max_delay_ms: u64,
    /// Rate of dropped requests: the participant never sees it; the connection closes unanswered.
    #[arg(long, default_value_t = 0.02)]
    drop_request_rate: f64,
    /// Rate of dropped responses: the participant acts, its answer is lost.
    #[arg(long, default_value_t = 0.02)]
    drop_response_rate: f64,
    /// Rate of duplicated requests: sent twice, at once or the copy up to 2 s later.
    #[arg(long, default_value_t = 0.03)]
    duplicate_rate: f64,
    /// Rate of 500 answers (half instead of forwarding, half after the participant acted).
    #[arg(long = "http-500-rate", default_value_t = 0.02)]
    http_500_rate: f64,
    /// Rate of connection resets instead of forwarding.
    #[arg(long, default_value_t = 0.02)]
    reset_rate: f64,
    /// Seconds to wait, after the faults stop, for every transaction to be final and nothing held.
    #[arg(long, default_value_t = 120)]
    quiesce_timeout_secs: u64,
    /// Run the coordinator deliberately broken (TWOPC_BROKEN=NAME, e.g. skip_decision_log): a
    /// self-check that this test can fail. Such a run must end `chaos: FAIL`.
    #[arg(long, value_name = "NAME")]
    broken: Option<String>,
    /// Directory for the processes' logs and the SQLite files [default: a new one in the temp
    /// dir, removed after a passing run].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the run directory and the server databases after a passing run too (a failing run
    /// always keeps the directory).
    #[arg(long)]
    keep: bool,
    /// The `twopc-testnode` binary [default: next to this one].
    #[arg(long)]
    testnode: Option<PathBuf>,
}

/// See [`Options::databases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Databases {
    Auto,
    Sqlite,
}

/// See [`Options::coordinator_log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogStore {
    Sqlite,
    Postgres,
}

impl Options {
    fn faults(&self) -> proxy::Faults {
        proxy::Faults {
            delay: self.delay_rate,
            max_delay: Duration::from_millis(self.max_delay_ms),
            drop_request: self.drop_request_rate,
            drop_response: self.drop_response_rate,
            duplicate: self.duplicate_rate,
            http_500: self.http_500_rate,
            reset: self.reset_rate,
        }
    }
}

/// An RNG of its own for every consumer, derived from the seed and a name, so that one
/// consumer drawing more does not shift another's choices.
fn rng_stream(seed: u64, name: &str) -> StdRng {
    // FNV-1a of the name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    StdRng::seed_from_u64(seed ^ h)
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("chaos: FAIL: harness error: no tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = Box::pin(run(opts)) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Children are killed as their handles drop; give the database drops time to finish.
    runtime.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("chaos: FAIL: harness error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A bank: its node, its database and its proxy.
struct BankSetup {
    name: String,
    kind: Kind,
    db_url: String,
    /// The server database (dropped at the end unless kept); `None` for SQLite files.
    server_db: Option<TestDb>,
    accounts: BTreeMap<String, i64>,
    node: SharedNode,
}

/// The whole test; `Ok(true)` when every invariant held.
async fn run(opts: Options) -> anyhow::Result<bool> {
    let faults = opts.faults();
    faults.validate().map_err(anyhow::Error::msg)?;
    if opts.balance <= 0 || opts.max_amount <= 0 {
        bail!("--balance and --max-amount must be positive");
    }
    let exe = match &opts.testnode {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("twopc-testnode"),
    };
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build -p twopc-tests --bins` (scripts/chaos does)",
            exe.display()
        );
    }
    let exe = exe.to_string_lossy().into_owned();
    let (dir, made_dir) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "twopc-chaos-seed{}-{}",
                opts.seed,
                std::process::id()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    // Databases: rotate the servers that answer, and SQLite.
    let mut rotation = Vec::new();
    if opts.databases == Databases::Auto {
        for kind in [Kind::Postgres, Kind::MySql] {
            match kind.probe().await {
                Probe::Reachable(_) => rotation.push(kind),
                Probe::NotConfigured => println!(
                    "chaos: {} not used: its URL variable is not set (see README); SQLite instead",
                    kind.label()
                ),
                Probe::Unreachable(why) => {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        bail!(
                            "{} is configured but unreachable in CI: {why}",
                            kind.label()
                        );
                    }
                    println!(
                        "chaos: {} not used: unreachable ({why}); SQLite instead",
                        kind.label()
                    );
                }
            }
        }
    } else {
        println!("chaos: --databases sqlite: every bank on SQLite");
    }
    rotation.push(Kind::Sqlite);

    let faults_on = Arc::new(AtomicBool::new(true));
    let coordinator_port = cluster::pick_port()?;
    let coordinator_url = format!("http://127.0.0.1:{coordinator_port}");
    let mut banks = Vec::new();
    let mut proxies = Vec::new();
    let mut used_ports = vec![coordinator_port];
    for i in 0..usize::from(opts.participants) {
        let name = format!("bank-{i}");
        let kind = rotation[i % rotation.len()];
        let (db_url, server_db) = if kind == Kind::Sqlite {
            (
                format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
                None,
            )
        } else {
            let db = TestDb::create(kind, &name)
                .await
                .with_context(|| format!("creating the {} database of {name}", kind.label()))?;
            (db.url.clone(), Some(db))
        };
        let port = loop {
            let p = cluster::pick_port()?;
            if !used_ports.contains(&p) {
                used_ports.push(p);
                break p;
            }
        };
        let accounts: BTreeMap<String, i64> = (0..opts.accounts)
            .map(|a| (format!("acct-{a}"), opts.balance))
            .collect();
        let seed_arg = accounts
            .iter()
            .map(|(a, b)| format!("{a}={b}"))
            .collect::<Vec<_>>()
            .join(",");
        let args = [
            "bank",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &db_url,
            "--seed",
            &seed_arg,
            "--in-doubt-after-ms",
            "1000",
            "--resolve-interval-ms",
            "200",
        ]
        .map(str::to_owned)
        .to_vec();
        let node = Node::new(
            &name,
            &exe,
            args,
            Vec::new(),
            dir.join(format!("{name}.log")),
            format!("http://127.0.0.1:{port}/accounts"),
        );
        let proxy = proxy::start(
            format!("http://127.0.0.1:{port}"),
            faults,
            faults_on.clone(),
            rng_stream(opts.seed, &format!("proxy-{name}")),
        )
        .await?;
        proxies.push(proxy);
        banks.push(BankSetup {
            name,
            kind,
            db_url,
            server_db,
            accounts,
            node: Arc::new(Mutex::new(node)),
        });
    }
    let (log_url, log_db) = if opts.coordinator_log == LogStore::Postgres
        && rotation.contains(&Kind::Postgres)
    {
        let db = TestDb::create(Kind::Postgres, "coordinator")
            .await
            .context("creating the coordinator's PostgreSQL database")?;
        (db.url.clone(), Some(db))
    } else {
        if opts.coordinator_log == LogStore::Postgres {
            println!("chaos: PostgreSQL unavailable: the coordinator's log is on SQLite instead");
        }
        (
            format!("sqlite://{}", dir.join("coordinator.db").display()),
            None,
        )
    };
    let log_label = if log_db.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let mut coordinator_envs = Vec::new();
    if let Some(b) = &opts.broken {
        coordinator_envs.push(("TWOPC_BROKEN", b.clone()));
    }
    let coordinator: SharedNode = Arc::new(Mutex::new(Node::new(
        "coordinator",
        &exe,
        [
            "coordinator",
            "serve",
            "--listen",
            &format!("127.0.0.1:{coordinator_port}"),
            "--database",
            &log_url,
            "--recovery-interval-ms",
            "200",
            "--ack-wait-ms",
            "1000",
        ]
        .map(str::to_owned)
        .to_vec(),
        coordinator_envs,
        dir.join("coordinator.log"),
        format!("{coordinator_url}/healthz"),
    )));

    println!(
        "chaos: seed {}, {} s, {} clients; coordinator (log on {log_label}) and {} participants: {}",
        opts.seed,
        opts.seconds,
        opts.concurrency,
        banks.len(),
        banks
            .iter()
            .map(|b| format!("{} on {}", b.name, b.kind.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "chaos: faults per proxied request: delay {} (up to {} ms), drop-request {}, \
         drop-response {}, duplicate {}, http-500 {}, reset {}",
        faults.delay,
        opts.max_delay_ms,
        faults.drop_request,
        faults.drop_response,
        faults.duplicate,
        faults.http_500,
        faults.reset
    );
    println!(
        "chaos: SIGKILL: coordinator every ~{} ms, a participant every ~{} ms (0: never), each \
         down up to {} ms",
        opts.coordinator_kill_every_ms, opts.participant_kill_every_ms, opts.max_downtime_ms
    );
    if let Some(b) = &opts.broken {
        println!(
            "chaos: the coordinator is DELIBERATELY BROKEN (TWOPC_BROKEN={b}): this run must FAIL"
        );
    }
    println!("chaos: logs and SQLite files in {}", dir.display());

    for b in &banks {
        b.node.lock().await.start(&http).await?;
    }
    coordinator.lock().await.start(&http).await?;

    // The run: clients, killers, watchdog, progress.
    let (stop_tx, stop_rx) = watch::channel(false);
    let incidents = Arc::new(Incidents::default());
    let clients = Arc::new(client::Clients::new(
        coordinator_url.clone(),
        banks
            .iter()
            .zip(&proxies)
            .map(|(b, p)| client::BankRef {
                name: b.name.clone(),
                url: p.url.clone(),
                accounts: b.accounts.keys().cloned().collect(),
            })
            .collect(),
        opts.max_amount,
        opts.tx_timeout_ms,
        format!("s{}-p{}", opts.seed, std::process::id()),
    )?);
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|w| {
            tokio::spawn(client::worker(
                clients.clone(),
                w,
                rng_stream(opts.seed, &format!("client-{w}")),
                stop_rx.clone(),
            ))
        })
        .collect();
    let bank_nodes: Vec<SharedNode> = banks.iter().map(|b| b.node.clone()).collect();
    let mut all_nodes = bank_nodes.clone();
    all_nodes.push(coordinator.clone());
    let downtime = Duration::from_millis(opts.max_downtime_ms);
    let process_tasks = vec![
        tokio::spawn(cluster::killer(
            vec![coordinator.clone()],
            true,
            KillSchedule {
                every: Duration::from_millis(opts.coordinator_kill_every_ms),
                max_downtime: downtime,
            },
            rng_stream(opts.seed, "kill-coordinator"),
            stop_rx.clone(),
            incidents.clone(),
            http.clone(),
        )),
        tokio::spawn(cluster::killer(
            bank_nodes.clone(),
            false,
            KillSchedule {
                every: Duration::from_millis(opts.participant_kill_every_ms),
                max_downtime: downtime,
            },
            rng_stream(opts.seed, "kill-participants"),
            stop_rx.clone(),
            incidents.clone(),
            http.clone(),
        )),
        tokio::spawn(cluster::watchdog(
            all_nodes.clone(),
            stop_rx.clone(),
            incidents.clone(),
            http.clone(),
        )),
    ];
    let started = Instant::now();
    let progress = tokio::spawn(progress(
        clients.clone(),
        incidents.clone(),
        proxies.iter().map(|p| p.stats.clone()).collect(),
        started,
        stop_rx.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;

    // Stop: no new transfers, no more kills, then no more faults.
    let _ = stop_tx.send(true);
    for t in process_tasks {
        let _ = t.await;
    }
    faults_on.store(false, Ordering::SeqCst);
    let _ = progress.await;
    let mut v = check::Violations::default();
    for shared in &all_nodes {
        let mut node = shared.lock().await;
        if let Some(status) = node.exited_by_itself() {
            v.add(
                "process exit",
                format!(
                    "{} exited by itself ({status}); see {}",
                    node.name,
                    node.log.display()
                ),
            );
        }
        if !node.is_up() {
            node.start(&http).await?;
        }
    }
    let faults_off_at = Instant::now();
    let wait_clients = tokio::time::timeout(Duration::from_secs(120), async {
        for w in workers {
            let _ = w.await;
        }
    })
    .await;
    if wait_clients.is_err() {
        v.add(
            "not quiescent",
            "transfer clients still waiting for answers 120 s after the faults stopped".into(),
        );
    }
    let ran = started.elapsed();

    // Report what was done.
    let stats = &clients.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let total = proxy::ProxyStats::default();
    for p in &proxies {
        total.add(&p.stats);
    }
    println!(
        "chaos: ran {:.0} s: {} transfers tried by {} clients: {} answered committed, {} \
         aborted, {} undecided (asked again after a coordinator restart), {} never answered",
        ran.as_secs_f64(),
        load(&stats.tried),
        opts.concurrency,
        load(&stats.committed),
        load(&stats.aborted),
        load(&stats.undecided),
        load(&stats.gave_up)
    );
    println!(
        "chaos: client errors: {} transport errors, {} HTTP 5xx; {} calls repeated with the same \
         Idempotency-Key; {} transfers sent without a key (first logged with the decision); {} \
         single-bank deposits or withdrawals (one-phase commit)",
        load(&stats.transport_errors),
        load(&stats.server_errors),
        load(&stats.retries),
        load(&stats.unkeyed),
        load(&stats.single)
    );
    let mut kills_by_node = Vec::new();
    let mut failed_starts = 0;
    for shared in &all_nodes {
        let node = shared.lock().await;
        kills_by_node.push(format!("{} {}", node.name, node.kills));
        failed_starts += node.failed_starts;
    }
    println!(
        "chaos: SIGKILLs: coordinator {}, participants {} ({}); restarts that exited at once and \
         were retried: {failed_starts}",
        load(&incidents.coordinator_kills),
        load(&incidents.participant_kills),
        kills_by_node[..kills_by_node.len() - 1].join(", ")
    );
    println!(
        "chaos: proxy: {} requests, {} forwarded, {} found the participant down; faults: delay \
         {}, drop-request {}, drop-response {}, duplicate {}, http-500 {}, reset {}",
        load(&total.requests),
        load(&total.forwarded),
        load(&total.unreachable),
        load(&total.delay),
        load(&total.drop_request),
        load(&total.drop_response),
        load(&total.duplicate),
        load(&total.http_500),
        load(&total.reset)
    );

    // Quiescence, then the invariants.
    let mut dbs = Vec::new();
    for b in &banks {
        dbs.push(check::BankDb {
            name: b.name.clone(),
            opening: b.accounts.clone(),
            bank: twopc_examples::bank::Bank::open(&b.db_url)
                .await
                .with_context(|| format!("opening the database of {}", b.name))?,
        });
    }
    let remaining =
        Duration::from_secs(opts.quiesce_timeout_secs).saturating_sub(faults_off_at.elapsed());
    match check::quiesce(&http, &coordinator_url, &proxies, &dbs, remaining).await {
        Ok(_) => println!(
            "chaos: quiescent {:.1} s after the faults stopped",
            faults_off_at.elapsed().as_secs_f64()
        ),
        Err(pending) => {
            for p in pending {
                v.add(
                    "not quiescent",
                    format!(
                        "{} s after the faults stopped: {p}",
                        opts.quiesce_timeout_secs
                    ),
                );
            }
        }
    }
    for e in incidents
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        v.add("process exit", e.clone());
    }
    for e in clients
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        v.add("client answer", e.clone());
    }
    let outcomes = clients
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let summary = check::check(&http, &coordinator_url, &log_url, &dbs, &outcomes, &mut v).await?;
    println!(
        "chaos: coordinator log: {} transactions, {} committed, {} aborted ({}); {} aborted \
         participant rows of transactions never logged (presumed abort)",
        summary.total,
        summary.committed,
        summary.aborted,
        summary
            .abort_reasons
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        summary.unlogged_aborted_rows
    );
    println!(
        "chaos: money: {} expected ({} at the start, {:+} in committed one-bank deposits and \
         withdrawals), {} at the end, over {} accounts; every transaction checked against {} \
         participants' state rows",
        summary.money.0,
        summary.money.0 - summary.deposits,
        summary.deposits,
        summary.money.1,
        summary.accounts,
        dbs.len()
    );
    let harness_errors = incidents
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();

    // Stop everything before the databases are dropped.
    drop(dbs);
    for shared in &all_nodes {
        shared.lock().await.stop();
    }
    drop(proxies);
    let ok = v.count() == 0;
    let keep_all = opts.keep || (!ok && opts.broken.is_none());
    let server_dbs = banks
        .into_iter()
        .filter_map(|b| b.server_db.map(|db| (b.name, b.kind, db)))
        .chain(log_db.map(|db| ("coordinator".to_owned(), Kind::Postgres, db)));
    for (name, kind, db) in server_dbs {
        if keep_all {
            println!(
                "chaos: kept the {} database of {name}: {}",
                kind.label(),
                db.keep()
            );
        } else {
            drop(db);
        }
    }
    if ok && made_dir && !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("chaos: logs and SQLite files kept in {}", dir.display());
    }
    if !harness_errors.is_empty() {
        bail!("{}", harness_errors.join("; "));
    }
    if ok {
        println!(
            "chaos: OK: {} transfers, {} committed, {} aborted; money {} = {}; every transaction \
             committed everywhere or nowhere, none applied twice, nothing held; coordinator and \
             participants agree",
            summary.total, summary.committed, summary.aborted, summary.money.0, summary.money.1
        );
    } else {
        v.print();
        println!("chaos: FAIL: {} violations ({})", v.count(), v.summary());
    }
    Ok(ok)
}

/// Prints a progress line every 10 s until `stop`.
async fn progress(
    clients: Arc<client::Clients>,
    incidents: Arc<Incidents>,
    proxies: Vec<Arc<proxy::ProxyStats>>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        let s = &clients.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let faults: u64 = proxies.iter().map(|p| p.faults()).sum();
        println!(
            "chaos: t={:>4} s  transfers {} (committed {}, aborted {})  client errors {}  \
             SIGKILLs coordinator {} participants {}  faults {}",
            started.elapsed().as_secs(),
            load(&s.tried),
            load(&s.committed),
            load(&s.aborted),
            load(&s.retries),
            load(&incidents.coordinator_kills),
            load(&incidents.participant_kills),
            faults
        );
    }
}
