//! The real processes (the coordinator and the banks, all `twopc-testnode`), their restarts on
//! the same port, and the tasks that kill them with SIGKILL at random moments.

use anyhow::{Context as _, bail};
use rand::Rng as _;
use rand::rngs::StdRng;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use twopc_tests::Proc;

/// How long a (re)started process may take to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a start is tried before giving up (a start fails when the process exits at once,
/// e.g. because its port is taken for a moment).
const START_ATTEMPTS: u32 = 5;

/// A port on 127.0.0.1 that is free now, below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection borrows it while its process is down between a kill
/// and the restart.
pub fn pick_port() -> anyhow::Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found in 20000..32000")
}

/// One process the chaos test runs and kills: its command line stays the same across restarts.
pub struct Node {
    /// `coordinator` or the bank's participant name.
    pub name: String,
    exe: String,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    /// Where its output goes (appended across restarts).
    pub log: PathBuf,
    /// What answers 200 once it serves.
    health_url: String,
    proc: Option<Proc>,
    /// Successful starts.
    pub starts: u32,
    /// Starts that failed (the process exited before answering) and were tried again.
    pub failed_starts: u32,
    /// SIGKILLs sent by the chaos test.
    pub kills: u32,
}

impl Node {
    /// A node that is not started yet.
    pub fn new(
        name: &str,
        exe: &str,
        args: Vec<String>,
        envs: Vec<(&'static str, String)>,
        log: PathBuf,
        health_url: String,
    ) -> Node {
        Node {
            name: name.to_owned(),
            exe: exe.to_owned(),
            args,
            envs,
            log,
            health_url,
            proc: None,
            starts: 0,
            failed_starts: 0,
            kills: 0,
        }
    }

    /// Starts the process and waits until it answers its health check.
    pub async fn start(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        for _ in 0..START_ATTEMPTS {
            self.mark(&format!("start #{}", self.starts + 1));
            let envs: Vec<(&str, String)> =
                self.envs.iter().map(|(k, v)| (*k, v.clone())).collect();
            let proc = Proc::spawn_logged(&self.name, &self.exe, &self.args, &envs, &self.log)
                .with_context(|| format!("starting {} ({})", self.name, self.exe))?;
            let proc = self.proc.insert(proc);
            let since = Instant::now();
            loop {
                if let Some(status) = proc.exit_status() {
                    self.failed_starts += 1;
                    self.proc = None;
                    self.mark(&format!("exited during start: {status}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                if let Ok(r) = http.get(&self.health_url).send().await
                    && r.status().is_success()
                {
                    self.starts += 1;
                    return Ok(());
                }
                if since.elapsed() > START_TIMEOUT {
                    bail!(
                        "{} did not answer {} within {START_TIMEOUT:?}; see {}",
                        self.name,
                        self.health_url,
                        self.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        bail!(
            "{} exited during start {START_ATTEMPTS} times; see {}",
            self.name,
            self.log.display()
        )
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(proc) = self.proc.take() {
            // Dropping a `Proc` sends SIGKILL and waits for the process.
            drop(proc);
            self.kills += 1;
            self.mark("killed with SIGKILL by twopc-chaos");
        }
    }

    /// Stops the process for good at the end of the run (SIGKILL too: nothing is left to save).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// If the process ended without being killed by the chaos test: how.
    pub fn exited_by_itself(&mut self) -> Option<String> {
        let status = self.proc.as_mut()?.exit_status()?;
        self.proc = None;
        self.mark(&format!("exited by itself: {status}"));
        Some(status.to_string())
    }

    /// Whether it is running.
    pub fn is_up(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Writes a marker line into its log, so restarts are easy to find there.
    fn mark(&self, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "===== twopc-chaos: {} {what} =====", self.name);
        }
    }
}

/// A node shared between the killers, the watchdog and the final phase.
pub type SharedNode = Arc<Mutex<Node>>;

/// Problems the process tasks found: processes that died by themselves, starts that failed.
#[derive(Debug, Default)]
pub struct Incidents {
    /// Violations of the product (a process exited without being killed).
    pub violations: StdMutex<Vec<String>>,
    /// Harness trouble (a restart that never came up).
    pub errors: StdMutex<Vec<String>>,
    /// SIGKILLs of the coordinator.
    pub coordinator_kills: AtomicU64,
    /// SIGKILLs of participants.
    pub participant_kills: AtomicU64,
}

impl Incidents {
    fn violation(&self, what: String) {
        println!("chaos: seen: {what}");
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    fn error(&self, what: String) {
        println!("chaos: harness error: {what}");
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
}

/// How a killer chooses its moments.
#[derive(Debug, Clone, Copy)]
pub struct KillSchedule {
    /// Mean time between kills; each wait is uniform in [mean/2, 3·mean/2]. Zero: no kills.
    pub every: Duration,
    /// Longest time the victim stays down (uniform in [0, this]).
    pub max_downtime: Duration,
}

/// Sleeps `d`, or less if `stop` turns true; answers whether to go on.
async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Kills one of `victims` (chosen at random) with SIGKILL at random moments and restarts it
/// after a random downtime, until `stop`. `coordinator` tells which counter to bump.
pub async fn killer(
    victims: Vec<SharedNode>,
    coordinator: bool,
    schedule: KillSchedule,
    mut rng: StdRng,
    mut stop: watch::Receiver<bool>,
    incidents: Arc<Incidents>,
    http: reqwest::Client,
) {
    if schedule.every.is_zero() || victims.is_empty() {
        return;
    }
    let mean = millis(schedule.every).max(2);
    loop {
        let wait = Duration::from_millis(rng.random_range(mean / 2..=mean * 3 / 2));
        let which = rng.random_range(0..victims.len());
        let downtime = Duration::from_millis(rng.random_range(0..=millis(schedule.max_downtime)));
        if !sleep_unless_stopped(wait, &mut stop).await {
            return;
        }
        let mut node = victims[which].lock().await;
        if let Some(status) = node.exited_by_itself() {
            incidents.violation(format!(
                "{} exited by itself ({status}) before the chaos test killed it; see {}",
                node.name,
                node.log.display()
            ));
        }
        node.kill9();
        let counter = if coordinator {
            &incidents.coordinator_kills
        } else {
            &incidents.participant_kills
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(downtime).await;
        if let Err(e) = node.start(&http).await {
            incidents.error(format!("{e:#}"));
            return;
        }
    }
}

/// Every half second: restarts any process that ended without being killed, and reports it.
pub async fn watchdog(
    nodes: Vec<SharedNode>,
    mut stop: watch::Receiver<bool>,
    incidents: Arc<Incidents>,
    http: reqwest::Client,
) {
    while sleep_unless_stopped(Duration::from_millis(500), &mut stop).await {
        for shared in &nodes {
            // A node that a killer holds is being restarted: not the watchdog's business.
            let Ok(mut node) = shared.try_lock() else {
                continue;
            };
            if let Some(status) = node.exited_by_itself() {
                incidents.violation(format!(
                    "{} exited by itself ({status}); see {}",
                    node.name,
                    node.log.display()
                ));
                if let Err(e) = node.start(&http).await {
                    incidents.error(format!("{e:#}"));
                }
            }
        }
    }
}
