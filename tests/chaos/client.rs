//! The transfer clients: each one loops making transfers (one global transaction, `commit:
//! true`, debit at one bank and credit at another). Even-numbered clients send an
//! `Idempotency-Key` and retry with the same key while the coordinator is down or answers 5xx
//! (their transactions are logged before the prepares); odd-numbered ones send none, so their
//! transactions are first logged with the decision, and a failed call leaves the outcome
//! unknown to them (a retry would be a second transfer): they give up on it, and the final
//! check finds its outcome in the log and the banks. Every fifth transaction of a client is a
//! deposit or a withdrawal at one bank: a single participant, committed in one phase.

use rand::Rng as _;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use twopc::wire::{TransactionId, TransactionState, TransactionView};

/// Bound on one create call: the coordinator answers within the transaction's deadline plus
/// 5 s plus its acknowledgement wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A transfer whose call never got a final answer is given up after this long (its outcome is
/// still checked at the end, from the coordinator's log).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A bank as the clients see it.
#[derive(Debug, Clone)]
pub struct BankRef {
    /// Participant name.
    pub name: String,
    /// The proxy's URL in front of it: what the coordinator is given.
    pub url: String,
    /// Its accounts.
    pub accounts: Vec<String>,
}

/// What the clients did.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Transfers started.
    pub tried: AtomicU64,
    /// Answered `committed` or `committing` (decided commit).
    pub committed: AtomicU64,
    /// Answered `aborted` or `aborting`.
    pub aborted: AtomicU64,
    /// Answered but not decided yet (`preparing`, after a coordinator restart).
    pub undecided: AtomicU64,
    /// Never answered within the bound (keyed), or a failed call (no key).
    pub gave_up: AtomicU64,
    /// Transfers sent without an `Idempotency-Key`.
    pub unkeyed: AtomicU64,
    /// Deposits and withdrawals at one bank (one participant: one-phase commit).
    pub single: AtomicU64,
    /// Calls that failed and were repeated with the same key: no connection, reset, timeout.
    pub transport_errors: AtomicU64,
    /// Calls answered 5xx and repeated with the same key.
    pub server_errors: AtomicU64,
    /// Repeated calls (all causes).
    pub retries: AtomicU64,
}

/// One transfer as the client knows it, for the final check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The transfer's tag (also its Idempotency-Key and a field of both payloads).
    pub tag: String,
    /// The transaction id the coordinator answered, if it answered.
    pub id: Option<TransactionId>,
    /// The state it answered.
    pub state: Option<TransactionState>,
}

/// Everything the clients share.
pub struct Clients {
    /// Base URL of the coordinator.
    pub coordinator: String,
    /// The banks.
    pub banks: Vec<BankRef>,
    /// Amounts are 1..=this.
    pub max_amount: i64,
    /// `timeout_ms` of every transfer.
    pub timeout_ms: u64,
    /// Prefix of the tags, unique per run.
    pub run: String,
    /// Counters.
    pub stats: ClientStats,
    /// Every transfer made.
    pub outcomes: Mutex<Vec<Outcome>>,
    /// Answers the contract forbids (e.g. `idempotency_key_reused` for a faithful retry).
    pub violations: Mutex<Vec<String>>,
    http: reqwest::Client,
}

impl Clients {
    /// Clients of the coordinator at `coordinator`.
    pub fn new(
        coordinator: String,
        banks: Vec<BankRef>,
        max_amount: i64,
        timeout_ms: u64,
        run: String,
    ) -> anyhow::Result<Clients> {
        Ok(Clients {
            coordinator,
            banks,
            max_amount,
            timeout_ms,
            run,
            stats: ClientStats::default(),
            outcomes: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            http: reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?,
        })
    }

    fn violation(&self, what: String) {
        println!("chaos: seen: {what}");
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
}

/// Makes transfers one after the other until `stop`.
pub async fn worker(
    clients: Arc<Clients>,
    worker: usize,
    mut rng: StdRng,
    stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let tag = format!("{}-w{worker}-{n}", clients.run);
        let from = rng.random_range(0..clients.banks.len());
        let to = (from + rng.random_range(1..clients.banks.len())) % clients.banks.len();
        let (a, b) = (&clients.banks[from], &clients.banks[to]);
        let debit = &a.accounts[rng.random_range(0..a.accounts.len())];
        let credit = &b.accounts[rng.random_range(0..b.accounts.len())];
        let amount = rng.random_range(1..=clients.max_amount);
        let body = if n.is_multiple_of(5) {
            clients.stats.single.fetch_add(1, Ordering::Relaxed);
            let op = if rng.random_bool(0.5) {
                "debit"
            } else {
                "credit"
            };
            json!({
                "commit": true,
                "timeout_ms": clients.timeout_ms,
                "participants": [
                    {"name": a.name, "url": a.url,
                     "payload": {"op": op, "account": debit, "amount": amount, "transfer": tag}},
                ]
            })
        } else {
            json!({
                "commit": true,
                "timeout_ms": clients.timeout_ms,
                "participants": [
                    {"name": a.name, "url": a.url,
                     "payload": {"op": "debit", "account": debit, "amount": amount, "transfer": tag}},
                    {"name": b.name, "url": b.url,
                     "payload": {"op": "credit", "account": credit, "amount": amount, "transfer": tag}},
                ]
            })
        };
        clients.stats.tried.fetch_add(1, Ordering::Relaxed);
        let keyed = worker.is_multiple_of(2);
        if !keyed {
            clients.stats.unkeyed.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = transfer(&clients, &tag, &body, keyed).await;
        let counter = match outcome.state {
            Some(s) if s.decision() == Some(twopc::wire::Decision::Commit) => {
                &clients.stats.committed
            }
            Some(s) if s.decision() == Some(twopc::wire::Decision::Abort) => &clients.stats.aborted,
            Some(_) => &clients.stats.undecided,
            None => &clients.stats.gave_up,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if outcome.state.is_none() {
            // The coordinator is down or did not answer: pause before the next transfer.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        clients
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(outcome);
    }
}

/// One transfer: the create call; with a key, repeated with the same key until it is answered.
async fn transfer(clients: &Clients, tag: &str, body: &Value, keyed: bool) -> Outcome {
    let url = format!("{}/v1/transactions", clients.coordinator);
    let since = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut first = true;
    let unanswered = Outcome {
        tag: tag.to_owned(),
        id: None,
        state: None,
    };
    loop {
        if !first && !keyed {
            return unanswered;
        }
        if !first {
            clients.stats.retries.fetch_add(1, Ordering::Relaxed);
            if since.elapsed() > GIVE_UP_AFTER {
                return unanswered;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        first = false;
        let mut request = clients.http.post(&url).json(body);
        if keyed {
            request = request.header("Idempotency-Key", tag);
        }
        let sent = request.send().await;
        let response = match sent {
            Ok(r) => r,
            Err(_) => {
                clients
                    .stats
                    .transport_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let status = response.status();
        if status.is_server_error() {
            clients.stats.server_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let text = match response.text().await {
            Ok(t) => t,
            Err(_) => {
                // The coordinator died while answering.
                clients
                    .stats
                    .transport_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if status.as_u16() == 200 || status.as_u16() == 201 {
            match serde_json::from_str::<TransactionView>(&text) {
                Ok(view) => {
                    return Outcome {
                        tag: tag.to_owned(),
                        id: Some(view.id),
                        state: Some(view.state),
                    };
                }
                Err(e) => {
                    clients.violation(format!(
                        "transfer {tag}: the coordinator answered {status} with a body that is \
                         not a transaction ({e}): {text}"
                    ));
                    return unanswered;
                }
            }
        }
        clients.violation(format!(
            "transfer {tag}: the coordinator refused a valid create (retry with the same \
             Idempotency-Key and body) with {status}: {text}"
        ));
        return unanswered;
    }
}
