//! Fail points for crash tests: named places in the driver where a test can freeze the process.
//!
//! Compiled only with the `failpoints` cargo feature (the `tests/` crate turns it on for its
//! test binary); without it [`hit`] is an empty inline function. With it, the environment
//! variable `TWOPC_FAILPOINTS` lists `name=action` pairs separated by `;`. Actions:
//! - `pause`: log `failpoint <name> reached` at WARN and wait forever, so the test can kill the
//!   process with SIGKILL while it sits exactly there;
//! - `pause-once`: the same, only the first time it is reached.
//!
//! The names used by the driver are listed in [`names`].

/// The fail point names the coordinator defines.
pub mod names {
    /// After the prepares are answered, before the decision is written to the log.
    pub const BEFORE_DECISION: &str = "before_decision";
    /// After the commit decision is durable in the log, before any commit is sent.
    pub const AFTER_COMMIT_DECISION: &str = "after_commit_decision";
    /// After every commit was acknowledged, before the completion is logged.
    pub const BEFORE_COMPLETION: &str = "before_completion";
    /// After the only participant answered the one-phase commit, before its outcome is logged.
    pub const AFTER_ONE_PHASE_ANSWER: &str = "after_one_phase_answer";
}

#[cfg(feature = "failpoints")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Point {
        once: bool,
        fired: AtomicBool,
    }

    fn table() -> &'static HashMap<String, Point> {
        static TABLE: OnceLock<HashMap<String, Point>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let spec = std::env::var("TWOPC_FAILPOINTS").unwrap_or_default();
            spec.split(';')
                .filter_map(|pair| pair.split_once('='))
                .filter_map(|(name, action)| {
                    let once = match action.trim() {
                        "pause" => false,
                        "pause-once" => true,
                        other => {
                            tracing::error!(name, action = other, "unknown failpoint action");
                            return None;
                        }
                    };
                    Some((
                        name.trim().to_owned(),
                        Point {
                            once,
                            fired: AtomicBool::new(false),
                        },
                    ))
                })
                .collect()
        })
    }

    /// Pauses forever if the fail point `name` is configured.
    pub async fn hit(name: &str) {
        let Some(point) = table().get(name) else {
            return;
        };
        if point.once && point.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!("failpoint {name} reached");
        std::future::pending::<()>().await;
    }
}

/// Deliberately broken behaviours, to prove that the chaos test (`tests/chaos/`) can fail.
///
/// Compiled only with the `failpoints` feature, like the fail points: release builds and
/// `cargo build -p twopc-coordinator` contain none of this. With the feature, the environment
/// variable `TWOPC_BROKEN` lists names separated by `,`; a coordinator started so is WRONG on
/// purpose and must never serve real traffic (it logs that at ERROR when it first checks).
#[cfg(feature = "failpoints")]
pub mod broken {
    use std::sync::OnceLock;

    /// The driver sends the commits without logging the commit decision first; the decision
    /// reaches the log only with the completion. A crash in between leaves the transaction
    /// `preparing` in the log, so recovery aborts it while some participants have committed.
    pub const SKIP_DECISION_LOG: &str = "skip_decision_log";

    /// Whether the broken behaviour `name` is switched on by `TWOPC_BROKEN`.
    pub fn enabled(name: &str) -> bool {
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        NAMES
            .get_or_init(|| {
                let names: Vec<String> = std::env::var("TWOPC_BROKEN")
                    .unwrap_or_default()
                    .split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect();
                if !names.is_empty() {
                    tracing::error!(
                        broken = names.join(","),
                        "TWOPC_BROKEN is set: this coordinator is deliberately broken (a self-check \
                         of the chaos test); never use it for real transactions"
                    );
                }
                names
            })
            .iter()
            .any(|n| n == name)
    }
}

/// Pauses forever if the fail point `name` is configured (only with the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) {
    enabled::hit(name).await;
}

/// Does nothing: this build has no fail points.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) {}
