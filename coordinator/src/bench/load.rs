//! The load generator: one-shot transactions at a fixed concurrency for a fixed time, with
//! latency percentiles (HdrHistogram) and outcome counts.

use futures_util::future::join_all;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use twopc::wire::{
    CreateTransaction, OutcomeRequest, ParticipantSpec, PrepareRequest, TransactionId,
    TransactionState, TransactionView,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Coordinator base URL (ignored with `direct`).
    pub coordinator: String,
    /// Participant base URLs; each transaction enlists all of them.
    pub participants: Vec<String>,
    /// Transactions in flight at once.
    pub concurrency: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Send prepare and commit straight to the participants (the baseline, no coordinator).
    pub direct: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// `coordinator` or `direct`.
    pub mode: &'static str,
    /// Transactions in flight at once.
    pub concurrency: usize,
    /// Participants per transaction.
    pub participants: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Completed transactions per second (committed + aborted).
    pub throughput_tps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Transactions answered `committed`.
    pub committed: u64,
    /// Answered `committing` (decided, acknowledgements outstanding).
    pub committing: u64,
    /// Answered `aborted`.
    pub aborted: u64,
    /// Failed calls (transport errors, unexpected status codes).
    pub errors: u64,
}

impl LoadReport {
    /// Writes the human-readable summary.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} mode, {} participants, concurrency {}, {:.1} s",
            self.mode, self.participants, self.concurrency, self.seconds
        )?;
        writeln!(out, "throughput: {:.0} transactions/s", self.throughput_tps)?;
        writeln!(
            out,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  mean {:.3}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.mean_ms
        )?;
        writeln!(
            out,
            "outcomes: committed {}  committing {}  aborted {}  errors {}",
            self.committed, self.committing, self.aborted, self.errors
        )
    }
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The histogram could not be made.
    #[error("histogram: {0}")]
    Histogram(String),
}

#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    committing: AtomicU64,
    aborted: AtomicU64,
    errors: AtomicU64,
}

enum Outcome {
    Committed,
    Committing,
    Aborted,
}

/// Runs the load and returns the report.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    if config.participants.is_empty() {
        return Err(LoadError::Config(
            "give at least one participant URL".into(),
        ));
    }
    if config.concurrency == 0 {
        return Err(LoadError::Config("concurrency must be at least 1".into()));
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(config.concurrency.max(16))
        .timeout(Duration::from_secs(30))
        .build()?;
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    let histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    let histogram = Arc::new(Mutex::new(histogram));
    let counts = Arc::new(Counts::default());
    let config = Arc::new(config);
    let bar = progress_bar(&config);
    let start = Instant::now();
    let deadline = start + config.duration;

    let mut workers = Vec::with_capacity(config.concurrency);
    for _ in 0..config.concurrency {
        let (http, config, counts, histogram, bar) = (
            http.clone(),
            config.clone(),
            counts.clone(),
            histogram.clone(),
            bar.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_from(&*histogram.lock().await);
            while Instant::now() < deadline {
                let began = Instant::now();
                let outcome = if config.direct {
                    direct_transaction(&http, &config.participants).await
                } else {
                    coordinated_transaction(&http, &config.coordinator, &config.participants).await
                };
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                match outcome {
                    Ok(o) => {
                        let _ = local.record(micros.max(1));
                        let counter = match o {
                            Outcome::Committed => &counts.committed,
                            Outcome::Committing => &counts.committing,
                            Outcome::Aborted => &counts.aborted,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        // Do not spin on a dead endpoint.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                bar.inc(1);
            }
            let _ = histogram.lock().await.add(&local);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let h = histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let committed = counts.committed.load(Ordering::Relaxed);
    let committing = counts.committing.load(Ordering::Relaxed);
    let aborted = counts.aborted.load(Ordering::Relaxed);
    Ok(LoadReport {
        mode: if config.direct {
            "direct"
        } else {
            "coordinator"
        },
        concurrency: config.concurrency,
        participants: config.participants.len(),
        seconds,
        throughput_tps: (committed + committing + aborted) as f64 / seconds,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        mean_ms: h.mean() / 1000.0,
        committed,
        committing,
        aborted,
        errors: counts.errors.load(Ordering::Relaxed),
    })
}

fn progress_bar(config: &LoadConfig) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {elapsed} {pos} transactions ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn coordinated_transaction(
    http: &reqwest::Client,
    coordinator: &str,
    participants: &[String],
) -> Result<Outcome, ()> {
    let request = CreateTransaction {
        timeout_ms: Some(10_000),
        commit: Some(true),
        participants: Some(
            participants
                .iter()
                .enumerate()
                .map(|(i, url)| ParticipantSpec {
                    name: format!("p{i}"),
                    url: url.clone(),
                    payload: serde_json::Value::Null,
                })
                .collect(),
        ),
    };
    let response = http
        .post(format!("{coordinator}/v1/transactions"))
        .json(&request)
        .send()
        .await
        .map_err(|_| ())?;
    if response.status() != StatusCode::CREATED {
        return Err(());
    }
    let tx: TransactionView = response.json().await.map_err(|_| ())?;
    match tx.state {
        TransactionState::Committed => Ok(Outcome::Committed),
        TransactionState::Committing => Ok(Outcome::Committing),
        TransactionState::Aborted | TransactionState::Aborting => Ok(Outcome::Aborted),
        _ => Err(()),
    }
}

/// The baseline: the same prepare and commit calls, concurrently, without a coordinator.
async fn direct_transaction(
    http: &reqwest::Client,
    participants: &[String],
) -> Result<Outcome, ()> {
    let id = TransactionId::new();
    let prepares = participants.iter().enumerate().map(|(i, url)| {
        let body = PrepareRequest {
            transaction_id: id,
            participant: format!("p{i}"),
            payload: serde_json::Value::Null,
            coordinator: "http://127.0.0.1:9".into(),
            deadline_ms: 10_000,
        };
        let http = http.clone();
        let url = format!("{url}/prepare");
        async move {
            let r = http.post(url).json(&body).send().await.map_err(|_| ())?;
            let v: serde_json::Value = r.json().await.map_err(|_| ())?;
            if v["vote"] == "commit" {
                Ok(())
            } else {
                Err(())
            }
        }
    });
    let all_prepared = join_all(prepares).await.into_iter().all(|r| r.is_ok());
    let verb = if all_prepared { "commit" } else { "abort" };
    let outcomes = participants.iter().enumerate().map(|(i, url)| {
        let body = OutcomeRequest {
            transaction_id: id,
            participant: format!("p{i}"),
        };
        let http = http.clone();
        let url = format!("{url}/{verb}");
        async move {
            let r = http.post(url).json(&body).send().await.map_err(|_| ())?;
            if r.status() == StatusCode::OK {
                Ok(())
            } else {
                Err(())
            }
        }
    });
    if join_all(outcomes).await.into_iter().any(|r| r.is_err()) {
        return Err(());
    }
    Ok(if all_prepared {
        Outcome::Committed
    } else {
        Outcome::Aborted
    })
}
