//! After the run: waiting for quiescence, then checking the bank invariants of ARCHITECTURE.md
//! section 5 against the coordinator's log and every participant's database.

use crate::client::Outcome;
use crate::proxy::Proxy;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use twopc::LocalState;
use twopc::wire::{Decision, TransactionId, TransactionState, TransactionView};
use twopc_coordinator::log::{AnyLog, DecisionLog as _};
use twopc_coordinator::record::TxRecord;
use twopc_examples::bank::Bank;
use twopc_tests::BankSnapshot;

/// How many violations of one kind are printed one by one (all are counted).
const PRINT_PER_KIND: usize = 10;

/// A bank as the checker sees it: its database, opened once.
pub struct BankDb {
    /// Participant name.
    pub name: String,
    /// Its accounts and their opening balance.
    pub opening: BTreeMap<String, i64>,
    /// The open database.
    pub bank: Bank,
}

/// Violations, by kind.
#[derive(Debug, Default)]
pub struct Violations {
    by_kind: BTreeMap<&'static str, Vec<String>>,
}

impl Violations {
    /// Records one.
    pub fn add(&mut self, kind: &'static str, what: String) {
        self.by_kind.entry(kind).or_default().push(what);
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.by_kind.values().map(Vec::len).sum()
    }

    /// Prints them (at most [`PRINT_PER_KIND`] of each kind).
    pub fn print(&self) {
        for (kind, list) in &self.by_kind {
            for v in list.iter().take(PRINT_PER_KIND) {
                println!("chaos: violation [{kind}]: {v}");
            }
            if list.len() > PRINT_PER_KIND {
                println!(
                    "chaos: violation [{kind}]: … and {} more of this kind",
                    list.len() - PRINT_PER_KIND
                );
            }
        }
    }

    /// `kind N, kind M` for the last line.
    pub fn summary(&self) -> String {
        self.by_kind
            .iter()
            .map(|(k, l)| format!("{k} {}", l.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What is not finished yet.
#[derive(Debug, Default)]
struct Pending {
    what: Vec<String>,
}

/// Waits until every proxy is idle, the coordinator has no unfinished transaction and no bank
/// holds anything; answers how long it took, or what is still pending at `timeout`.
pub async fn quiesce(
    http: &reqwest::Client,
    coordinator: &str,
    proxies: &[Proxy],
    banks: &[BankDb],
    timeout: Duration,
) -> Result<Duration, Vec<String>> {
    let since = Instant::now();
    loop {
        let pending = pending(http, coordinator, proxies, banks).await;
        if pending.what.is_empty() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            return Err(pending.what);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pending(
    http: &reqwest::Client,
    coordinator: &str,
    proxies: &[Proxy],
    banks: &[BankDb],
) -> Pending {
    let mut p = Pending::default();
    let busy: i64 = proxies
        .iter()
        .map(|x| x.stats.busy.load(Ordering::SeqCst))
        .sum();
    if busy > 0 {
        p.what.push(format!("{busy} requests still in the proxies"));
    }
    for state in ["active", "preparing", "committing", "aborting"] {
        let url = format!("{coordinator}/v1/transactions?state={state}&limit=1000");
        let listed = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.json::<twopc::wire::TransactionList>().await.ok(),
            _ => None,
        };
        match listed {
            Some(l) if l.transactions.is_empty() => {}
            Some(l) => p.what.push(format!(
                "{} transactions {state} at the coordinator (e.g. {})",
                l.transactions.len(),
                l.transactions[0].id
            )),
            None => p.what.push(format!("coordinator did not answer {url}")),
        }
    }
    for b in banks {
        let snap = BankSnapshot::of(&b.bank).await;
        let prepared = snap
            .rows
            .iter()
            .filter(|r| r.state == LocalState::Prepared)
            .count();
        let held: i64 = snap.accounts.values().map(|(_, h)| h).sum();
        if prepared > 0 || held != 0 {
            p.what
                .push(format!("{}: {prepared} prepared rows, {held} held", b.name));
        }
    }
    p
}

/// One leg of a transfer, from a participant's payload in the log.
#[derive(Debug)]
struct Leg {
    bank: String,
    debit: bool,
    account: String,
    amount: i64,
    tag: Option<String>,
}

fn legs(record: &TxRecord) -> Result<Vec<Leg>, String> {
    record
        .participants
        .iter()
        .map(|p| {
            let op = p.payload["op"].as_str().unwrap_or_default();
            let account = p.payload["account"].as_str();
            let amount = p.payload["amount"].as_i64();
            match (op, account, amount) {
                ("debit" | "credit", Some(account), Some(amount)) => Ok(Leg {
                    bank: p.name.clone(),
                    debit: op == "debit",
                    account: account.to_owned(),
                    amount,
                    tag: p.payload["transfer"].as_str().map(str::to_owned),
                }),
                _ => Err(format!("unexpected payload {}", p.payload)),
            }
        })
        .collect()
}

/// Why transfers aborted, in a few families (from the reasons the coordinator logged).
fn abort_family(reason: &str) -> &'static str {
    if reason.contains("insufficient funds") {
        "insufficient funds"
    } else if reason.contains("presumed abort") {
        "undecided at a coordinator crash (presumed abort)"
    } else if reason.contains("within the deadline") || reason.contains("deadline passed") {
        "prepare not answered before the deadline"
    } else if reason.contains("prepare call failed") {
        "prepare call failed (transport)"
    } else if reason.contains("prepare answered") {
        "prepare answered an error status"
    } else if reason.contains("aborted before prepare") {
        "abort arrived before the prepare (tombstone)"
    } else {
        "other"
    }
}

/// What the coordinator's log holds at the end, for the report.
#[derive(Debug, Default)]
pub struct LogSummary {
    /// Transactions in the log.
    pub total: usize,
    /// Committed.
    pub committed: usize,
    /// Aborted.
    pub aborted: usize,
    /// Aborted, by family of reason.
    pub abort_reasons: BTreeMap<&'static str, usize>,
    /// Money expected at the end (at the start plus committed deposits and withdrawals) and
    /// found at the end.
    pub money: (i64, i64),
    /// Net sum of the committed one-bank deposits and withdrawals.
    pub deposits: i64,
    /// Accounts compared.
    pub accounts: usize,
    /// Aborted participant rows of transactions the log never had (presumed abort).
    pub unlogged_aborted_rows: usize,
}

/// Checks every invariant; adds what is broken to `v`.
pub async fn check(
    http: &reqwest::Client,
    coordinator: &str,
    log_url: &str,
    banks: &[BankDb],
    outcomes: &[Outcome],
    v: &mut Violations,
) -> anyhow::Result<LogSummary> {
    let log = AnyLog::connect(log_url).await?;
    let records = log.list(None, u32::MAX).await?;
    let mut summary = LogSummary {
        total: records.len(),
        ..LogSummary::default()
    };
    let snaps: Vec<(String, BankSnapshot)> = {
        let mut s = Vec::new();
        for b in banks {
            s.push((b.name.clone(), BankSnapshot::of(&b.bank).await));
        }
        s
    };
    let rows: HashMap<(String, TransactionId), LocalState> = snaps
        .iter()
        .flat_map(|(bank, snap)| {
            snap.rows
                .iter()
                .filter(move |r| &r.participant == bank)
                .map(move |r| ((bank.clone(), r.transaction_id), r.state))
        })
        .collect();
    let by_id: HashMap<TransactionId, &TxRecord> = records.iter().map(|r| (r.id, r)).collect();

    // Expected balances, built from the opening balances and the committed transfers.
    let mut expected: BTreeMap<(String, String), i64> = banks
        .iter()
        .flat_map(|b| {
            b.opening
                .iter()
                .map(|(a, bal)| ((b.name.clone(), a.clone()), *bal))
        })
        .collect();
    let mut by_tag: HashMap<String, Vec<TransactionId>> = HashMap::new();

    for r in &records {
        let id = r.id;
        match r.state {
            TransactionState::Committed => summary.committed += 1,
            TransactionState::Aborted => {
                summary.aborted += 1;
                *summary
                    .abort_reasons
                    .entry(abort_family(r.reason.as_deref().unwrap_or("")))
                    .or_default() += 1;
            }
            other => v.add(
                "not final",
                format!("transaction {id} is still {other} at the coordinator"),
            ),
        }
        let legs = match legs(r) {
            Ok(l) => l,
            Err(e) => {
                v.add("foreign transaction", format!("transaction {id}: {e}"));
                continue;
            }
        };
        let tags: Vec<&Option<String>> = legs.iter().map(|l| &l.tag).collect();
        match tags.first() {
            Some(Some(tag)) if tags.iter().all(|t| t.as_deref() == Some(tag)) => {
                by_tag.entry(tag.clone()).or_default().push(id);
            }
            _ => v.add(
                "foreign transaction",
                format!("transaction {id} has no single transfer tag: {tags:?}"),
            ),
        }
        // Atomicity and agreement with the participants' state rows.
        for leg in &legs {
            let local = rows.get(&(leg.bank.clone(), id)).copied();
            match r.state {
                TransactionState::Committed if local != Some(LocalState::Committed) => v.add(
                    "atomicity",
                    format!(
                        "transaction {id} is committed at the coordinator but {} has {}",
                        leg.bank,
                        local.map_or("no row".to_owned(), |s| format!("a {s} row"))
                    ),
                ),
                TransactionState::Aborted | TransactionState::Aborting
                    if matches!(local, Some(LocalState::Committed | LocalState::ReadOnly)) =>
                {
                    v.add(
                        "atomicity",
                        format!(
                            "transaction {id} is {} at the coordinator but committed at {}",
                            r.state, leg.bank
                        ),
                    )
                }
                _ => {}
            }
        }
        // A participant the transaction does not name must have nothing about it.
        for (bank, _) in &snaps {
            if !legs.iter().any(|l| &l.bank == bank) && rows.contains_key(&(bank.clone(), id)) {
                v.add(
                    "atomicity",
                    format!("{bank} has a row for transaction {id}, which does not name it"),
                );
            }
        }
        if r.state == TransactionState::Committed {
            for leg in &legs {
                let delta = if leg.debit { -leg.amount } else { leg.amount };
                *expected
                    .entry((leg.bank.clone(), leg.account.clone()))
                    .or_default() += delta;
            }
        }
    }

    // Rows the coordinator knows nothing about: a transaction never logged (a one-shot commit
    // without a key whose coordinator died before the decision) is aborted by presumed abort,
    // so such a row may only be aborted.
    for (bank, snap) in &snaps {
        for row in &snap.rows {
            if !by_id.contains_key(&row.transaction_id) {
                if row.state == LocalState::Aborted {
                    summary.unlogged_aborted_rows += 1;
                    continue;
                }
                v.add(
                    "unknown row",
                    format!(
                        "{bank} has a {} row for transaction {}, which the coordinator's log \
                         does not have (presumed abort allows only aborted rows)",
                        row.state, row.transaction_id
                    ),
                );
            }
        }
    }

    // None applied twice: one transaction per transfer, and exact balances.
    for (tag, ids) in &by_tag {
        if ids.len() > 1 {
            v.add(
                "duplicate transfer",
                format!("transfer {tag} made {} transactions: {ids:?}", ids.len()),
            );
        }
    }
    let mut opening_total = 0;
    let mut final_total = 0;
    for b in banks {
        opening_total += b.opening.values().sum::<i64>();
    }
    for (bank, snap) in &snaps {
        for (account, (balance, held)) in &snap.accounts {
            final_total += balance;
            summary.accounts += 1;
            if *held != 0 {
                v.add("held", format!("{bank}/{account} still holds {held}"));
            }
            let want = expected.get(&(bank.clone(), account.clone())).copied();
            if want != Some(*balance) {
                v.add(
                    "balance",
                    format!(
                        "{bank}/{account} has {balance}, but its opening balance plus the \
                         transfers the coordinator committed make {}",
                        want.map_or("no such account".to_owned(), |w| w.to_string())
                    ),
                );
            }
        }
        let prepared = snap
            .rows
            .iter()
            .filter(|r| r.state == LocalState::Prepared)
            .count();
        if prepared > 0 {
            v.add("held", format!("{bank} has {prepared} prepared rows left"));
        }
    }
    // Transfers move money; committed one-bank deposits and withdrawals add or take some.
    let expected_total: i64 = expected.values().sum();
    summary.deposits = expected_total - opening_total;
    summary.money = (expected_total, final_total);
    if expected_total != final_total {
        v.add(
            "money",
            format!(
                "total money {final_total}, expected {expected_total} ({opening_total} at the \
                 start, {:+} in committed deposits and withdrawals)",
                summary.deposits
            ),
        );
    }

    // What the clients were told agrees with the log.
    for o in outcomes {
        let Some(id) = o.id else { continue };
        let logged = by_tag.get(&o.tag);
        if logged.is_none_or(|ids| !ids.contains(&id)) {
            v.add(
                "client answer",
                format!(
                    "transfer {} was answered transaction {id}, but the log has {:?} for it",
                    o.tag, logged
                ),
            );
            continue;
        }
        let told = o.state.and_then(TransactionState::decision);
        let fin = by_id.get(&id).and_then(|r| r.decision);
        if told.is_some() && told != fin {
            v.add(
                "client answer",
                format!(
                    "transfer {} (transaction {id}) was answered {:?} but the log says {:?}",
                    o.tag, o.state, fin
                ),
            );
        }
    }

    // The API serves what the log holds.
    check_api(http, coordinator, &records, v).await;
    Ok(summary)
}

/// Every transaction read back through `GET /v1/transactions/{id}` agrees with the log.
async fn check_api(
    http: &reqwest::Client,
    coordinator: &str,
    records: &[TxRecord],
    v: &mut Violations,
) {
    let mut set = tokio::task::JoinSet::new();
    for chunk in records.chunks(records.len().div_ceil(8).max(1)) {
        let ids: Vec<(TransactionId, TransactionState, Option<Decision>)> =
            chunk.iter().map(|r| (r.id, r.state, r.decision)).collect();
        let http = http.clone();
        let base = coordinator.to_owned();
        set.spawn(async move {
            let mut bad = Vec::new();
            for (id, state, decision) in ids {
                let url = format!("{base}/v1/transactions/{id}");
                let view = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.json::<TransactionView>().await.ok(),
                    _ => None,
                };
                match view {
                    Some(t) if t.state == state && t.decision == decision => {}
                    Some(t) => bad.push(format!(
                        "GET {id} answers {} / {:?}, the log has {state} / {decision:?}",
                        t.state, t.decision
                    )),
                    None => bad.push(format!("GET {id} did not answer a transaction")),
                }
            }
            bad
        });
    }
    while let Some(done) = set.join_next().await {
        for b in done.unwrap_or_default() {
            v.add("api", b);
        }
    }
}
