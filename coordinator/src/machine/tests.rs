use super::*;
use crate::record::{ParticipantRecord, TxRecord};
use twopc::wire::{TransactionId, TransactionState as S};

const NOW: Millis = 1_000_000;

fn tx(names: &[&str]) -> TxRecord {
    let mut rec = TxRecord::new(TransactionId::new(), 10_000, NOW);
    for n in names {
        rec.participants.push(ParticipantRecord::new(
            (*n).to_owned(),
            format!("http://127.0.0.1:1/{n}"),
            serde_json::Value::Null,
        ));
    }
    rec
}

fn step(rec: &TxRecord, ev: Event) -> Transition {
    apply(rec, ev, NOW + 1).unwrap()
}

fn voted(name: &str, vote: Vote) -> Event {
    Event::Voted {
        participant: name.to_owned(),
        vote,
    }
}

fn ack(name: &str) -> Event {
    Event::Acknowledged {
        participant: name.to_owned(),
    }
}

fn abort_vote() -> Vote {
    Vote::Abort {
        reason: "insufficient funds".into(),
    }
}

/// A record in `state`, reached through legal transitions.
fn in_state(state: S) -> TxRecord {
    let active = tx(&["a", "b"]);
    let preparing = step(&active, Event::CommitRequested).record;
    match state {
        S::Active => active,
        S::Preparing => preparing,
        S::Committing => {
            let t = step(&preparing, voted("a", Vote::Commit)).record;
            step(&t, voted("b", Vote::Commit)).record
        }
        S::Committed => {
            let t = in_state(S::Committing);
            let t = step(&t, ack("a")).record;
            step(&t, ack("b")).record
        }
        S::Aborting => step(&preparing, voted("a", abort_vote())).record,
        S::Aborted => {
            let t = in_state(S::Aborting);
            step(&t, ack("b")).record
        }
    }
}

#[test]
fn every_state_is_reachable_as_expected() {
    for st in S::ALL {
        assert_eq!(in_state(st).state, st);
    }
}

#[test]
fn enlist_only_while_active_and_names_are_unique() {
    let rec = tx(&["a"]);
    let p = |n: &str| ParticipantRecord::new(n.into(), "http://x".into(), serde_json::Value::Null);
    let t = step(&rec, Event::Enlist(p("b")));
    assert!(t.changed);
    assert_eq!(t.record.participants.len(), 2);
    assert_eq!(t.record.version, rec.version + 1);
    assert_eq!(
        apply(&rec, Event::Enlist(p("a")), NOW),
        Err(TransitionError::DuplicateParticipant("a".into()))
    );
    for st in [
        S::Preparing,
        S::Committing,
        S::Committed,
        S::Aborting,
        S::Aborted,
    ] {
        assert_eq!(
            apply(&in_state(st), Event::Enlist(p("z")), NOW),
            Err(TransitionError::NotActive(st))
        );
    }
}

#[test]
fn commit_sends_prepares_to_everyone() {
    let t = step(&tx(&["a", "b"]), Event::CommitRequested);
    assert_eq!(t.record.state, S::Preparing);
    assert_eq!(
        t.actions,
        vec![Action::Prepare(vec!["a".into(), "b".into()])]
    );
    assert_eq!(t.record.decision, None);
}

#[test]
fn commit_without_participants_is_refused() {
    assert_eq!(
        apply(&tx(&[]), Event::CommitRequested, NOW),
        Err(TransitionError::NoParticipants)
    );
}

#[test]
fn commit_after_the_deadline_aborts_without_contacting_anyone() {
    let rec = tx(&["a"]);
    let t = apply(&rec, Event::CommitRequested, rec.deadline + 1).unwrap();
    assert_eq!(t.record.state, S::Aborted);
    assert_eq!(t.record.decision, Some(Decision::Abort));
    assert!(t.actions.is_empty());
}

#[test]
fn repeated_commit_changes_nothing() {
    for st in [
        S::Preparing,
        S::Committing,
        S::Committed,
        S::Aborting,
        S::Aborted,
    ] {
        let rec = in_state(st);
        let t = step(&rec, Event::CommitRequested);
        assert!(!t.changed, "{st}");
        assert!(t.actions.is_empty());
        assert_eq!(t.record, rec);
    }
}

#[test]
fn all_commit_votes_decide_commit_and_send_commits() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::Commit));
    assert_eq!(t.record.state, S::Preparing);
    assert!(t.actions.is_empty());
    let t = step(&t.record, voted("b", Vote::Commit));
    assert_eq!(t.record.state, S::Committing);
    assert_eq!(t.record.decision, Some(Decision::Commit));
    assert_eq!(t.record.decided_at, Some(NOW + 1));
    assert_eq!(
        t.actions,
        vec![Action::Commit(vec!["a".into(), "b".into()])]
    );
}

#[test]
fn read_only_voters_get_no_second_phase() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::ReadOnly));
    let t = step(&t.record, voted("b", Vote::Commit));
    assert_eq!(t.actions, vec![Action::Commit(vec!["b".into()])]);
    let t = step(&t.record, ack("b"));
    assert_eq!(t.record.state, S::Committed);
}

#[test]
fn all_read_only_commits_at_once() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::ReadOnly));
    let t = step(&t.record, voted("b", Vote::ReadOnly));
    assert_eq!(t.record.state, S::Committed);
    assert_eq!(t.record.completed_at, Some(NOW + 1));
    assert!(t.actions.is_empty());
}

#[test]
fn one_abort_vote_decides_abort_for_the_others() {
    let t = step(&in_state(S::Preparing), voted("b", abort_vote()));
    assert_eq!(t.record.state, S::Aborting);
    assert_eq!(t.record.decision, Some(Decision::Abort));
    assert_eq!(
        t.record.reason.as_deref(),
        Some("participant b voted abort: insufficient funds")
    );
    assert_eq!(t.actions, vec![Action::Abort(vec!["a".into()])]);
}

#[test]
fn abort_votes_from_everyone_finish_at_once() {
    let t = step(&tx(&["a", "b"]), Event::CommitRequested);
    let t = step(&t.record, voted("a", abort_vote()));
    assert_eq!(t.actions, vec![Action::Abort(vec!["b".into()])]);
    let t = step(&t.record, voted("b", abort_vote()));
    assert_eq!(t.record.state, S::Aborting);
    let t = step(&t.record, ack("b"));
    assert_eq!(t.record.state, S::Aborted);
}

#[test]
fn prepared_participants_are_aborted_too() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::Commit));
    let t = step(&t.record, voted("b", abort_vote()));
    assert_eq!(t.actions, vec![Action::Abort(vec!["a".into()])]);
    let t = step(&t.record, ack("a"));
    assert_eq!(t.record.state, S::Aborted);
}

#[test]
fn duplicate_and_late_votes_change_nothing() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::Commit));
    let again = step(&t.record, voted("a", abort_vote()));
    assert!(!again.changed);
    for st in [S::Committing, S::Committed, S::Aborting, S::Aborted] {
        let t = step(&in_state(st), voted("b", Vote::Commit));
        assert!(!t.changed, "{st}");
    }
    assert!(matches!(
        apply(&in_state(S::Active), voted("a", Vote::Commit), NOW),
        Err(TransitionError::Invalid { .. })
    ));
    assert_eq!(
        apply(&in_state(S::Preparing), voted("zz", Vote::Commit), NOW),
        Err(TransitionError::UnknownParticipant("zz".into()))
    );
}

#[test]
fn abort_of_an_active_transaction_needs_no_messages() {
    let t = step(
        &in_state(S::Active),
        Event::AbortRequested {
            reason: "client".into(),
        },
    );
    assert_eq!(t.record.state, S::Aborted);
    assert!(t.actions.is_empty());
    assert_eq!(t.record.reason.as_deref(), Some("client"));
}

#[test]
fn abort_while_preparing_aborts_everyone_who_may_have_prepared() {
    let t = step(&in_state(S::Preparing), voted("a", Vote::ReadOnly));
    let t = step(
        &t.record,
        Event::AbortRequested {
            reason: "client".into(),
        },
    );
    assert_eq!(t.record.state, S::Aborting);
    assert_eq!(t.actions, vec![Action::Abort(vec!["b".into()])]);
}

#[test]
fn abort_after_the_commit_decision_is_refused() {
    for st in [S::Committing, S::Committed] {
        assert_eq!(
            apply(
                &in_state(st),
                Event::AbortRequested { reason: "x".into() },
                NOW
            ),
            Err(TransitionError::AlreadyCommitted)
        );
    }
    for st in [S::Aborting, S::Aborted] {
        let t = step(&in_state(st), Event::AbortRequested { reason: "x".into() });
        assert!(!t.changed);
    }
}

#[test]
fn acknowledgements_complete_the_transaction_once() {
    let t = step(&in_state(S::Committing), ack("a"));
    assert_eq!(t.record.state, S::Committing);
    let dup = step(&t.record, ack("a"));
    assert!(!dup.changed);
    let t = step(&t.record, ack("b"));
    assert_eq!(t.record.state, S::Committed);
    assert!(!step(&t.record, ack("b")).changed);
    for st in [S::Active, S::Preparing] {
        assert!(matches!(
            apply(&in_state(st), ack("a"), NOW),
            Err(TransitionError::Invalid { .. })
        ));
    }
}

#[test]
fn recovery_aborts_undecided_and_resumes_decided() {
    let t = step(&in_state(S::Preparing), Event::Recovered);
    assert_eq!(t.record.state, S::Aborting);
    assert_eq!(t.actions, vec![Action::Abort(vec!["a".into(), "b".into()])]);

    let committing = step(&in_state(S::Committing), ack("a")).record;
    let t = step(&committing, Event::Recovered);
    assert!(!t.changed);
    assert_eq!(t.actions, vec![Action::Commit(vec!["b".into()])]);

    let t = step(&in_state(S::Aborting), Event::Recovered);
    assert_eq!(t.actions, vec![Action::Abort(vec!["b".into()])]);

    for st in [S::Committed, S::Aborted] {
        let t = step(&in_state(st), Event::Recovered);
        assert!(!t.changed && t.actions.is_empty());
    }
}

#[test]
fn recovery_aborts_active_transactions_only_past_their_deadline() {
    let rec = in_state(S::Active);
    let t = apply(&rec, Event::Recovered, rec.deadline).unwrap();
    assert!(!t.changed);
    let t = apply(&rec, Event::Recovered, rec.deadline + 1).unwrap();
    assert_eq!(t.record.state, S::Aborted);
    assert!(t.actions.is_empty());
}

/// Drives every interleaving of votes and acks for three participants and checks the safety
/// property: never a commit decision with an abort vote, and every final state agrees with
/// the decision.
#[test]
fn no_interleaving_commits_with_an_abort_vote() {
    let votes = [Vote::Commit, Vote::ReadOnly, abort_vote()];
    let names = ["a", "b", "c"];
    for va in &votes {
        for vb in &votes {
            for vc in &votes {
                let chosen = [va, vb, vc];
                for order in [
                    [0, 1, 2],
                    [0, 2, 1],
                    [1, 0, 2],
                    [1, 2, 0],
                    [2, 0, 1],
                    [2, 1, 0],
                ] {
                    let mut rec = step(&tx(&names), Event::CommitRequested).record;
                    for i in order {
                        rec = step(&rec, voted(names[i], chosen[i].clone())).record;
                        if let Some(Decision::Commit) = rec.decision {
                            assert!(rec.participants.iter().all(|p| p.vote.is_some()));
                        }
                    }
                    let any_abort = chosen.iter().any(|v| matches!(v, Vote::Abort { .. }));
                    let expected = if any_abort {
                        Decision::Abort
                    } else {
                        Decision::Commit
                    };
                    assert_eq!(rec.decision, Some(expected));
                    for n in names {
                        rec = step(&rec, ack(n)).record;
                    }
                    let final_state = if any_abort { S::Aborted } else { S::Committed };
                    assert_eq!(rec.state, final_state);
                }
            }
        }
    }
}

fn one_phase(name: &str, answer: OnePhaseAnswer) -> Event {
    Event::OnePhaseAnswered {
        participant: name.to_owned(),
        answer,
    }
}

#[test]
fn a_single_participant_is_asked_to_commit_in_one_phase() {
    let t = step(&tx(&["a"]), Event::CommitRequested);
    assert_eq!(t.record.state, S::Preparing);
    assert_eq!(t.actions, vec![Action::OnePhase("a".into())]);
    assert!(one_phase_pending(&t.record));
    let done = step(&t.record, one_phase("a", OnePhaseAnswer::Committed));
    assert_eq!(done.record.state, S::Committed);
    assert_eq!(done.record.decision, Some(Decision::Commit));
    assert_eq!(
        done.record.participants[0].state,
        ParticipantState::Committed
    );
    assert!(done.record.completed_at.is_some());
    assert!(done.actions.is_empty());
    // A repeated answer changes nothing.
    assert!(!step(&done.record, one_phase("a", OnePhaseAnswer::Committed)).changed);
}

#[test]
fn a_one_phase_refusal_aborts_with_the_participants_reason() {
    let t = step(&tx(&["a"]), Event::CommitRequested);
    let reason = "insufficient funds".to_owned();
    let done = step(
        &t.record,
        one_phase("a", OnePhaseAnswer::Aborted { reason }),
    );
    assert_eq!(done.record.state, S::Aborted);
    assert_eq!(
        done.record.reason.as_deref(),
        Some("participant a aborted: insufficient funds")
    );
    assert!(done.actions.is_empty(), "nothing to undo anywhere");
}

#[test]
fn without_one_phase_support_the_two_phases_run() {
    let t = step(&tx(&["a"]), Event::CommitRequested);
    let t = step(&t.record, one_phase("a", OnePhaseAnswer::Unsupported));
    assert_eq!(t.actions, vec![Action::Prepare(vec!["a".into()])]);
    assert!(!one_phase_pending(&t.record));
    let t = step(&t.record, voted("a", Vote::Commit));
    assert_eq!(t.actions, vec![Action::Commit(vec!["a".into()])]);
    let t = step(&t.record, ack("a"));
    assert_eq!(t.record.state, S::Committed);
}

#[test]
fn a_one_phase_commit_cannot_be_aborted_and_recovery_asks_again() {
    let t = step(&tx(&["a"]), Event::CommitRequested);
    let abort = Event::AbortRequested {
        reason: "client".into(),
    };
    assert_eq!(
        apply(&t.record, abort, NOW + 1).unwrap_err(),
        TransitionError::Delegated
    );
    let r = step(&t.record, Event::Recovered);
    assert!(!r.changed);
    assert_eq!(r.actions, vec![Action::OnePhase("a".into())]);
    // A vote cannot arrive: no prepare was sent.
    assert!(apply(&t.record, voted("a", Vote::Commit), NOW + 1).is_err());
}

#[test]
fn two_participants_never_use_one_phase() {
    let t = step(&tx(&["a", "b"]), Event::CommitRequested);
    assert_eq!(
        t.actions,
        vec![Action::Prepare(vec!["a".into(), "b".into()])]
    );
    assert!(t.record.participants.iter().all(|p| !p.one_phase));
}
