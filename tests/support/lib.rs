//! Support for the workspace crash tests: real processes started from the `twopc-testnode`
//! binary (the coordinator with fail points compiled in, and the bank participant), killed
//! with SIGKILL, and a database of its own for every test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod db;

/// A running child process whose output lines are collected (and echoed to stderr).
pub struct Proc {
    /// What to call it in logs.
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `exe args` with extra environment variables.
    pub fn spawn(name: &str, exe: &str, args: &[String], envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info,sqlx=warn,hyper=warn,reqwest=warn");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({exe}): {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let tag = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {line}");
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    /// Starts `exe args` with its stdout and stderr appended to the file `log` instead of
    /// echoed and collected: for long runs (the chaos test) whose output would fill memory.
    /// [`has_line`](Self::has_line) and [`wait_for_line`](Self::wait_for_line) see no lines
    /// of such a process.
    pub fn spawn_logged(
        name: &str,
        exe: &str,
        args: &[String],
        envs: &[(&str, String)],
        log: &std::path::Path,
    ) -> std::io::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("RUST_LOG", "info,sqlx=warn,hyper=warn,reqwest=warn");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// How the process ended, if it has (without waiting).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until an output line contains `needle`.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.has_line(needle) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{}: no output line containing '{needle}' within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether an output line contains `needle`.
    pub fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("[{}] killed with SIGKILL", self.name);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released, so a process can bind it again).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `url` until it answers 200.
pub async fn wait_until_up(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{url} did not come up within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The participant rows and accounts of a bank, read straight from its database.
pub struct BankSnapshot {
    /// Accounts by id.
    pub accounts: std::collections::BTreeMap<String, (i64, i64)>,
    /// State rows.
    pub rows: Vec<twopc::StateRow>,
}

impl BankSnapshot {
    /// Reads the bank whose database is at `url`.
    pub async fn read(url: &str) -> BankSnapshot {
        let bank = twopc_examples::bank::Bank::open(url)
            .await
            .unwrap_or_else(|e| panic!("open bank database {url}: {e}"));
        let accounts = bank
            .accounts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.id, (a.balance, a.held)))
            .collect();
        let rows = bank.participant_rows().await.unwrap();
        BankSnapshot { accounts, rows }
    }

    /// Reads an already opened bank (no new pool, no migration run): for repeated polling.
    pub async fn of(bank: &twopc_examples::bank::Bank) -> BankSnapshot {
        let accounts = bank
            .accounts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.id, (a.balance, a.held)))
            .collect();
        let rows = bank.participant_rows().await.unwrap();
        BankSnapshot { accounts, rows }
    }

    /// (balance, held) of an account.
    pub fn account(&self, id: &str) -> (i64, i64) {
        *self
            .accounts
            .get(id)
            .unwrap_or_else(|| panic!("no account {id}"))
    }

    /// The local state of a transaction here, if it has a row.
    pub fn state_of(&self, id: twopc::TransactionId) -> Option<twopc::LocalState> {
        self.rows
            .iter()
            .find(|r| r.transaction_id == id)
            .map(|r| r.state)
    }
}

/// Where the `twopc-testnode` binary is (the test passes `env!("CARGO_BIN_EXE_twopc-testnode")`).
#[derive(Clone)]
pub struct Harness {
    /// Path of the binary.
    pub exe: String,
}

/// A coordinator process.
pub struct CoordinatorNode {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    database: String,
    exe: String,
}

impl Harness {
    /// Starts a coordinator on a fresh port with its log at `database`, optionally with fail
    /// points (`TWOPC_FAILPOINTS`).
    pub async fn coordinator(&self, database: &str, failpoints: Option<&str>) -> CoordinatorNode {
        let port = free_port();
        let proc = spawn_coordinator(&self.exe, port, database, failpoints);
        let url = format!("http://127.0.0.1:{port}");
        wait_until_up(&format!("{url}/healthz"), Duration::from_secs(30)).await;
        CoordinatorNode {
            proc,
            url,
            port,
            database: database.to_owned(),
            exe: self.exe.clone(),
        }
    }

    /// Starts a bank participant with its accounts in `database`.
    pub async fn bank(
        &self,
        name: &str,
        database: &str,
        seed: &str,
        in_doubt_after_ms: u64,
    ) -> BankNode {
        let port = free_port();
        let mut node = BankNode {
            proc: None,
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            database: database.to_owned(),
            seed: seed.to_owned(),
            in_doubt_after_ms,
            exe: self.exe.clone(),
        };
        node.start().await;
        node
    }
}

fn spawn_coordinator(exe: &str, port: u16, database: &str, failpoints: Option<&str>) -> Proc {
    let args: Vec<String> = [
        "coordinator",
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--database",
        database,
        "--recovery-interval-ms",
        "200",
        "--ack-wait-ms",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let envs: Vec<(&str, String)> = failpoints
        .map(|f| vec![("TWOPC_FAILPOINTS", f.to_owned())])
        .unwrap_or_default();
    Proc::spawn("coordinator", exe, &args, &envs)
}

impl CoordinatorNode {
    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same port and log, optionally with other fail points.
    pub async fn restart(&mut self, failpoints: Option<&str>) {
        self.proc.kill9();
        self.proc = spawn_coordinator(&self.exe, self.port, &self.database, failpoints);
        wait_until_up(&format!("{}/healthz", self.url), Duration::from_secs(30)).await;
    }

    /// `GET /v1/transactions/{id}` as JSON.
    pub async fn get(&self, id: &str) -> serde_json::Value {
        reqwest::get(format!("{}/v1/transactions/{id}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the transaction reaches `state`.
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        eventually(&format!("transaction {id} {state}"), timeout, || async {
            let tx = self.get(id).await;
            (tx["state"] == state).then_some(tx)
        })
        .await
    }
}

/// A bank participant process.
pub struct BankNode {
    /// The process, while it runs.
    pub proc: Option<Proc>,
    /// Its name in transactions.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    /// Its database URL.
    pub database: String,
    seed: String,
    in_doubt_after_ms: u64,
    exe: String,
}

impl BankNode {
    /// Starts (or restarts) the process on its port.
    pub async fn start(&mut self) {
        let args: Vec<String> = [
            "bank",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--database",
            &self.database,
            "--seed",
            &self.seed,
            "--in-doubt-after-ms",
            &self.in_doubt_after_ms.to_string(),
            "--resolve-interval-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.proc = Some(Proc::spawn(&self.name, &self.exe, &args, &[]));
        wait_until_up(&format!("{}/accounts", self.url), Duration::from_secs(30)).await;
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Reads its database.
    pub async fn snapshot(&self) -> BankSnapshot {
        BankSnapshot::read(&self.database).await
    }

    /// A participant entry for a transfer.
    pub fn participant(&self, payload: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": self.name, "url": self.url, "payload": payload})
    }
}

/// POSTs JSON and returns (status, body).
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}
