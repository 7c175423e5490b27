//! The conformance kit behind `twopc check-participant URL`: drives a running participant, in
//! any language, through the rules of the participant protocol (docs/protocol.md section 2) and
//! reports each rule as a named check with its evidence: every request sent and the status and
//! body received.
//!
//! Every check uses fresh transaction ids (UUID v7) under the participant name `conformance`,
//! and ends what it prepared with a commit or an abort, so a conforming participant holds
//! nothing afterwards. Checks that commit do apply the payload (two commits per run): use a
//! small amount.

mod checks;
pub mod schema;

use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

pub use checks::CHECKS;

/// The participant name the kit's requests carry.
pub const DEFAULT_PARTICIPANT_NAME: &str = "conformance";
/// Default base URL sent as `coordinator` in prepares (for in-doubt inquiries): the default
/// address of `twopc serve`, which answers 404 (presumed abort) for the kit's transactions.
pub const DEFAULT_COORDINATOR_URL: &str = "http://127.0.0.1:7800";
/// Longest body kept per answer (bodies of the protocol are far smaller).
const MAX_KEPT_BODY: usize = 64 * 1024;

/// Options of `twopc check-participant`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Base URL of the participant (the URL a client would enlist; /prepare, /commit and /abort
    /// are appended).
    pub url: String,
    /// JSON payload the participant votes commit on, e.g. '{"op":"credit","account":"alice","amount":1}'.
    #[arg(long, value_parser = parse_json, default_value = "{}")]
    pub payload: Value,
    /// JSON payload the participant must refuse (vote abort with a reason), e.g. a debit larger
    /// than the balance. Without it that check is skipped.
    #[arg(long, value_parser = parse_json)]
    pub abort_payload: Option<Value>,
    /// Print the report as JSON (for CI) instead of one line per check.
    #[arg(long)]
    pub json: bool,
    /// Coordinator base URL sent in prepares, where the participant's in-doubt inquiries go.
    #[arg(long, default_value = DEFAULT_COORDINATOR_URL)]
    pub coordinator: String,
    /// Milliseconds to wait for each answer (also sent as deadline_ms).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// Parses a command-line argument as JSON.
fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Settings of one run of the kit.
#[derive(Debug, Clone)]
pub struct KitConfig {
    /// Base URL of the participant, without a trailing slash.
    pub url: String,
    /// A payload the participant votes commit on.
    pub payload: Value,
    /// A payload the participant must refuse, if the caller has one.
    pub abort_payload: Option<Value>,
    /// Sent as `coordinator` in every prepare.
    pub coordinator: String,
    /// Sent as `participant` in every request.
    pub participant: String,
    /// Time limit of each request.
    pub timeout: Duration,
}

impl KitConfig {
    /// Settings for the participant at `url` with `payload`, everything else by default.
    pub fn new(url: &str, payload: Value) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            payload,
            abort_payload: None,
            coordinator: DEFAULT_COORDINATOR_URL.to_owned(),
            participant: DEFAULT_PARTICIPANT_NAME.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Errors of the kit itself (a failing check is not one, except in [`command`]).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The participant URL is not an absolute http(s) URL.
    #[error("'{url}' is not a participant base URL: {why}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The participant protocol's OpenAPI document did not parse (a build defect).
    #[error(transparent)]
    Document(#[from] schema::SchemaError),
    /// Writing the report failed.
    #[error("writing the report failed: {0}")]
    Io(#[from] std::io::Error),
    /// Serializing the report failed.
    #[error("serializing the report failed: {0}")]
    Json(#[from] serde_json::Error),
    /// At least one check failed.
    #[error("{failed} of {total} conformance checks failed for {url}")]
    ChecksFailed {
        /// The participant's URL.
        url: String,
        /// Checks that failed.
        failed: usize,
        /// Checks run.
        total: usize,
    },
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The participant keeps the rule.
    Pass,
    /// The participant broke the rule (see the detail and the exchanges).
    Fail,
    /// Not run (e.g. no `--abort-payload`).
    Skip,
}

/// One request the kit sent and what came back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    /// The HTTP method.
    pub method: &'static str,
    /// The path under the participant's base URL (`/prepare`, `/commit`, `/abort`).
    pub path: &'static str,
    /// The body sent, as sent.
    pub request: String,
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// The answer's Content-Type.
    pub content_type: Option<String>,
    /// The answer's body (cut after 64 KiB).
    pub response: Option<String>,
    /// Why no answer came (connection refused, timeout…).
    pub error: Option<String>,
}

impl Exchange {
    /// The answer's body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        self.response
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }

    /// One line: `POST /prepare {…} -> 200 {…}` (bodies shortened).
    pub fn summary(&self) -> String {
        let answer = match (self.status, &self.error) {
            (Some(status), _) => format!(
                "{status} {}",
                shorten(self.response.as_deref().unwrap_or(""), 300)
            ),
            (None, Some(error)) => format!("no answer: {error}"),
            (None, None) => "no answer".to_owned(),
        };
        format!(
            "{} {} {} -> {answer}",
            self.method,
            self.path,
            shorten(&self.request, 300)
        )
    }
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Stable name, e.g. `prepare_idempotent`.
    pub name: &'static str,
    /// The rule it checks, in words.
    pub rule: &'static str,
    /// Pass, fail or skip.
    pub verdict: Verdict,
    /// Why it failed or was skipped (empty when it passed).
    pub detail: String,
    /// The requests it sent and the answers (for `answers_documented`: the offending ones).
    pub exchanges: Vec<Exchange>,
}

impl CheckResult {
    /// The human line: `PASS name`, `FAIL name: detail [evidence]` or `SKIP name: detail`.
    pub fn line(&self) -> String {
        match self.verdict {
            Verdict::Pass => format!("PASS {}", self.name),
            Verdict::Skip => format!("SKIP {}: {}", self.name, self.detail),
            Verdict::Fail => {
                let evidence: Vec<String> = self.exchanges.iter().map(Exchange::summary).collect();
                if evidence.is_empty() {
                    format!("FAIL {}: {}", self.name, self.detail)
                } else {
                    format!(
                        "FAIL {}: {} [evidence: {}]",
                        self.name,
                        self.detail,
                        evidence.join("; ")
                    )
                }
            }
        }
    }
}

/// Counts of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
    /// Checks skipped.
    pub skipped: usize,
}

/// What one run of the kit found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The participant's base URL.
    pub participant: String,
    /// True when no check failed.
    pub passed: bool,
    /// How many checks passed, failed and were skipped.
    pub counts: Counts,
    /// Every check, in the order run.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Builds a report from the checks run.
    fn new(participant: &str, checks: Vec<CheckResult>) -> Self {
        let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
        let counts = Counts {
            passed: count(Verdict::Pass),
            failed: count(Verdict::Fail),
            skipped: count(Verdict::Skip),
        };
        Self {
            participant: participant.to_owned(),
            passed: counts.failed == 0,
            counts,
            checks,
        }
    }

    /// The check with this name, if it ran.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Names of the failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name)
            .collect()
    }

    /// One line per check, then a summary line.
    pub fn write_human(&self, out: &mut impl Write) -> std::io::Result<()> {
        for check in &self.checks {
            writeln!(out, "{}", check.line())?;
        }
        writeln!(
            out,
            "check-participant {}: {} of {} checks passed, {} failed, {} skipped",
            self.participant,
            self.counts.passed,
            self.checks.len(),
            self.counts.failed,
            self.counts.skipped
        )
    }
}

/// Runs every check against the participant in `config`.
pub async fn run(config: &KitConfig) -> Result<Report, ConformanceError> {
    let url = reqwest::Url::parse(&config.url).map_err(|e| ConformanceError::InvalidUrl {
        url: config.url.clone(),
        why: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConformanceError::InvalidUrl {
            url: config.url.clone(),
            why: "expected an absolute http or https URL".to_owned(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConformanceError::InvalidUrl {
            url: config.url.clone(),
            why: "a base URL takes no query or fragment".to_owned(),
        });
    }
    let http = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .build()?;
    let document = schema::OpenApiDoc::parse(crate::api::openapi::PARTICIPANT_DOCUMENT)?;
    let results = checks::run_all(&http, config, &document).await;
    Ok(Report::new(&config.url, results))
}

/// `twopc check-participant`: runs the kit, writes the report to `out` and fails with
/// [`ConformanceError::ChecksFailed`] when a check failed.
pub async fn command(args: CheckArgs, out: &mut impl Write) -> Result<(), ConformanceError> {
    let mut config = KitConfig::new(&args.url, args.payload);
    config.abort_payload = args.abort_payload;
    config.coordinator = args.coordinator.trim_end_matches('/').to_owned();
    config.timeout = Duration::from_millis(args.timeout_ms);
    let report = run(&config).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        report.write_human(out)?;
    }
    out.flush()?;
    if report.passed {
        Ok(())
    } else {
        Err(ConformanceError::ChecksFailed {
            url: report.participant,
            failed: report.counts.failed,
            total: report.checks.len(),
        })
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests;
