//! Input checks at the API's edge: names, URLs, timeouts and limits.

use crate::record::ParticipantRecord;
use reqwest::Url;
use twopc::wire::ParticipantSpec;

/// Timeout used when a client gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The longest timeout a client may ask for (one hour): longer ones are almost surely mistakes.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The most participants one transaction may have.
pub const MAX_PARTICIPANTS: usize = 100;
/// The longest participant name.
pub const MAX_NAME_LEN: usize = 64;
/// The longest participant URL.
pub const MAX_URL_LEN: usize = 2048;

/// Why an input was refused; each maps to a 400 with its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// `timeout_ms` out of range.
    #[error("timeout_ms must be between 1 and {MAX_TIMEOUT_MS} (got {0})")]
    Timeout(u64),
    /// Participant name empty, too long or with characters outside `[A-Za-z0-9._-]`.
    #[error(
        "participant name '{0}' is invalid: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -"
    )]
    Name(String),
    /// Participant URL not an absolute http(s) URL.
    #[error("participant url '{url}' is invalid: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two participants with the same name.
    #[error("participant name '{0}' appears more than once")]
    DuplicateName(String),
    /// More participants than allowed.
    #[error("a transaction may have at most {MAX_PARTICIPANTS} participants")]
    TooManyParticipants,
    /// A payload string with a NUL character (PostgreSQL's JSONB cannot store it).
    #[error(
        "participant '{0}' has a payload with a NUL character (\\u0000), which cannot be stored"
    )]
    PayloadNul(String),
    /// One-shot commit with no participants.
    #[error("commit needs at least one participant")]
    NoParticipants,
}

impl InvalidInput {
    /// The stable error code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "invalid_timeout",
            Self::Name(_) => "invalid_participant_name",
            Self::Url { .. } => "invalid_participant_url",
            Self::DuplicateName(_) => "duplicate_participant",
            Self::TooManyParticipants => "too_many_participants",
            Self::PayloadNul(_) => "invalid_payload",
            Self::NoParticipants => "no_participants",
        }
    }
}

/// Checks a requested timeout, applying the default when absent.
pub fn timeout(ms: Option<u64>) -> Result<u64, InvalidInput> {
    match ms {
        None => Ok(DEFAULT_TIMEOUT_MS),
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Ok(ms),
        Some(ms) => Err(InvalidInput::Timeout(ms)),
    }
}

/// Checks a participant's name.
pub fn name(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::Name(name.to_owned()))
    }
}

/// Checks a participant's URL and returns it without a trailing slash.
pub fn url(raw: &str) -> Result<String, InvalidInput> {
    let bad = |why: &str| InvalidInput::Url {
        url: raw.chars().take(200).collect(),
        why: why.to_owned(),
    };
    if raw.len() > MAX_URL_LEN {
        return Err(bad("too long"));
    }
    let parsed = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("a host is required"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a base URL takes no query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("credentials in the URL are not allowed"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// Checks one participant and turns it into a record.
pub fn participant(spec: ParticipantSpec) -> Result<ParticipantRecord, InvalidInput> {
    name(&spec.name)?;
    let url = url(&spec.url)?;
    if has_nul(&spec.payload) {
        return Err(InvalidInput::PayloadNul(spec.name));
    }
    Ok(ParticipantRecord::new(spec.name, url, spec.payload))
}

fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks a list of participants (names unique, within the limit).
pub fn participants(specs: Vec<ParticipantSpec>) -> Result<Vec<ParticipantRecord>, InvalidInput> {
    if specs.len() > MAX_PARTICIPANTS {
        return Err(InvalidInput::TooManyParticipants);
    }
    let mut out: Vec<ParticipantRecord> = Vec::with_capacity(specs.len());
    for spec in specs {
        let rec = participant(spec)?;
        if out.iter().any(|p| p.name == rec.name) {
            return Err(InvalidInput::DuplicateName(rec.name));
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_and_bounded() {
        assert_eq!(timeout(None), Ok(DEFAULT_TIMEOUT_MS));
        assert_eq!(timeout(Some(1)), Ok(1));
        assert_eq!(timeout(Some(0)), Err(InvalidInput::Timeout(0)));
        assert!(timeout(Some(MAX_TIMEOUT_MS + 1)).is_err());
        assert!(timeout(Some(u64::MAX)).is_err());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert_eq!(
            url("http://127.0.0.1:7801/").unwrap(),
            "http://127.0.0.1:7801"
        );
        assert_eq!(
            url("https://bank.example/a/b").unwrap(),
            "https://bank.example/a/b"
        );
        for bad in [
            "ftp://x",
            "file:///etc/passwd",
            "127.0.0.1:80",
            "",
            "http://",
            "http://u:p@host/",
            "http://h/?q=1",
        ] {
            let err = url(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_participant_url", "{bad}");
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(name("bank-a.eu_1").is_ok());
        for bad in ["", "a b", "ä", &"x".repeat(65)] {
            assert!(name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payloads_with_nul_characters_are_refused() {
        let spec = ParticipantSpec {
            name: "a".into(),
            url: "http://h".into(),
            payload: serde_json::json!({"memo": ["ok", "bad\u{0}"]}),
        };
        assert_eq!(
            participant(spec).unwrap_err(),
            InvalidInput::PayloadNul("a".into())
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let p = |n: &str| ParticipantSpec {
            name: n.into(),
            url: "http://h".into(),
            payload: serde_json::Value::Null,
        };
        assert_eq!(
            participants(vec![p("a"), p("a")]),
            Err(InvalidInput::DuplicateName("a".into()))
        );
        assert_eq!(participants(vec![p("a"), p("b")]).unwrap().len(), 2);
    }
}
