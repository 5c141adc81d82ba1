//! Given/when/then tests of the command context's aggregates: the command's life (queued,
//! scheduled, executed, failed, cancelled, undone) and the handler's registry and circuit
//! breaker, one test per transition.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use serde_json::{json, Value};

use super::aggregate::{CommandFailure, CommandSource};
use super::handler::{Admission, AvailableReason, UnavailableReason};
use super::{
    Command, CommandEvent as CE, CommandHandler, CommandOp as CO, CommandType, HandlerEvent as HE,
    HandlerOp as HO,
};
use crate::domain::{Context, DomainError};

type CommandTest = TestFramework<Command>;
type HandlerTest = TestFramework<CommandHandler>;

const PAY: CommandType = CommandType::Payment;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
        + Duration::seconds(secs)
}

fn payload() -> Value {
    json!({ "user_id": "u1", "amount": 5 })
}

fn queued() -> CE {
    CE::Queued {
        command_id: "c1".into(),
        command_type: PAY,
        payload: payload(),
        source: CommandSource::Queue,
        queued_at: t(0),
    }
}

fn scheduled() -> CE {
    CE::Scheduled {
        command_id: "c1".into(),
        command_type: PAY,
        payload: payload(),
        execute_at: t(60),
        scheduled_at: t(0),
    }
}

fn executed(undoable: bool) -> CE {
    CE::Executed {
        command_id: "c1".into(),
        command_type: PAY,
        payload: payload(),
        source: CommandSource::Sync,
        result: json!({ "aggregate_id": "c1" }),
        undoable,
        undo: undoable.then(|| json!({ "payment_id": "c1" })),
        latency_us: 7,
        executed_at: t(1),
    }
}

fn record_executed(source: CommandSource) -> CO {
    CO::RecordExecuted {
        command_id: "c1".into(),
        command_type: PAY,
        payload: payload(),
        source,
        result: json!({ "aggregate_id": "c1" }),
        undoable: true,
        undo: Some(json!({ "payment_id": "c1" })),
        latency_us: 7,
        at: t(1),
    }
}

fn failure() -> CommandFailure {
    CommandFailure {
        status: 422,
        title: "Unprocessable Entity".into(),
        detail: "user_id: user u1 does not exist".into(),
        field: Some("user_id".into()),
    }
}

fn conflict_containing(text: &'static str) -> impl Fn(DomainError) {
    move |e| match e {
        DomainError::StateConflict(message) if message.contains(text) => {}
        other => panic!("expected a StateConflict containing {text:?}, got {other:?}"),
    }
}

#[test]
fn command_types_belong_to_the_command_context() {
    for t in super::AGGREGATE_TYPES {
        assert_eq!(Context::of_aggregate(t), Context::Command, "{t}");
        assert!(!crate::domain::repository::owns(t), "{t}");
    }
}

#[test]
fn command_queue_then_execute_from_the_queue() {
    CommandTest::with(())
        .given_no_previous_events()
        .when(CO::Queue {
            command_id: "c1".into(),
            command_type: PAY,
            payload: payload(),
            source: CommandSource::Queue,
            at: t(0),
        })
        .then_expect_events(vec![queued()]);
    let mut expected = executed(true);
    if let CE::Executed { source, .. } = &mut expected {
        *source = CommandSource::Queue;
    }
    CommandTest::with(())
        .given(vec![queued()])
        .when(record_executed(CommandSource::Queue))
        .then_expect_events(vec![expected]);
}

#[test]
fn command_queue_twice_is_refused() {
    CommandTest::with(())
        .given(vec![queued()])
        .when(CO::Queue {
            command_id: "c1".into(),
            command_type: PAY,
            payload: payload(),
            source: CommandSource::Async,
            at: t(1),
        })
        .then_expect_error(DomainError::AlreadyExists("command c1".into()));
}

#[test]
fn command_schedule_must_be_in_the_future() {
    CommandTest::with(())
        .given_no_previous_events()
        .when(CO::Schedule {
            command_id: "c1".into(),
            command_type: PAY,
            payload: payload(),
            execute_at: t(60),
            at: t(0),
        })
        .then_expect_events(vec![scheduled()]);
    CommandTest::with(())
        .given_no_previous_events()
        .when(CO::Schedule {
            command_id: "c1".into(),
            command_type: PAY,
            payload: payload(),
            execute_at: t(0),
            at: t(0),
        })
        .then_expect_error(DomainError::invalid(
            "execute_at",
            "execute_at must be in the future",
        ));
}

#[test]
fn command_executes_once() {
    CommandTest::with(())
        .given_no_previous_events()
        .when(record_executed(CommandSource::Sync))
        .then_expect_events(vec![executed(true)]);
    CommandTest::with(())
        .given(vec![executed(true)])
        .when(record_executed(CommandSource::Sync))
        .then_expect_error_message("command c1 is already executed");
}

#[test]
fn command_failure_is_recorded_for_a_new_or_pending_command() {
    for given in [vec![], vec![queued()], vec![scheduled()]] {
        let source = CommandSource::Sync;
        CommandTest::with(())
            .given(given)
            .when(CO::RecordFailed {
                command_id: "c1".into(),
                command_type: PAY,
                payload: payload(),
                source,
                error: failure(),
                latency_us: 3,
                at: t(2),
            })
            .then_expect_events(vec![CE::Failed {
                command_id: "c1".into(),
                command_type: PAY,
                payload: payload(),
                source,
                error: failure(),
                latency_us: 3,
                failed_at: t(2),
            }]);
    }
}

#[test]
fn command_cancel_only_while_pending() {
    for given in [queued(), scheduled()] {
        CommandTest::with(())
            .given(vec![given])
            .when(CO::Cancel {
                reason: "no longer needed".into(),
                at: t(5),
            })
            .then_expect_events(vec![CE::Cancelled {
                command_id: "c1".into(),
                command_type: PAY,
                reason: "no longer needed".into(),
                cancelled_at: t(5),
                user_id: Some("u1".into()),
            }]);
    }
    CommandTest::with(())
        .given(vec![executed(true)])
        .when(CO::Cancel {
            reason: "late".into(),
            at: t(5),
        })
        .then_expect_error_message(
            "command c1 is executed: only a queued or scheduled command can be cancelled",
        );
    CommandTest::with(())
        .given_no_previous_events()
        .when(CO::Cancel {
            reason: "x".into(),
            at: t(5),
        })
        .then_expect_error(DomainError::NotFound("command ".into()));
}

#[test]
fn command_undo_once_and_only_when_undoable() {
    let undo = || CO::RecordUndone {
        compensation: json!({ "action": "refund" }),
        at: t(9),
    };
    CommandTest::with(())
        .given(vec![executed(true)])
        .when(undo())
        .then_expect_events(vec![CE::Undone {
            command_id: "c1".into(),
            command_type: PAY,
            compensation: json!({ "action": "refund" }),
            undone_at: t(9),
            user_id: Some("u1".into()),
        }]);
    let undone = CE::Undone {
        command_id: "c1".into(),
        command_type: PAY,
        compensation: json!({}),
        undone_at: t(9),
        user_id: None,
    };
    let result = CommandTest::with(())
        .given(vec![executed(true), undone])
        .when(undo())
        .inspect_result();
    conflict_containing("already undone")(result.expect_err("refused"));
    let result = CommandTest::with(())
        .given(vec![executed(false)])
        .when(undo())
        .inspect_result();
    conflict_containing("cannot be undone")(result.expect_err("refused"));
    let result = CommandTest::with(())
        .given(vec![queued()])
        .when(undo())
        .inspect_result();
    conflict_containing("only an executed command can be undone")(result.expect_err("refused"));
}

#[test]
fn command_state_follows_its_events() {
    let mut command = Command::default();
    for event in [queued(), executed(true)] {
        cqrs_es::Aggregate::apply(&mut command, event);
    }
    assert_eq!(command.status(), Some(super::CommandStatus::Executed));
    assert_eq!(command.undo(), Some(&json!({ "payment_id": "c1" })));
    assert!(!command.is_pending());
    let mut pending = Command::default();
    cqrs_es::Aggregate::apply(&mut pending, scheduled());
    assert!(pending.is_pending());
    assert_eq!(pending.due_at(), Some(t(60)));
}

fn failure_op(at: i64) -> HO {
    HO::RecordFailure {
        name: PAY,
        failure_threshold: 2,
        open_timeout: Duration::seconds(30),
        at: t(at),
    }
}

fn failure_recorded(n: u32, at: i64) -> HE {
    HE::FailureRecorded {
        name: PAY,
        consecutive_failures: n,
        at: t(at),
    }
}

fn opened(at: i64) -> HE {
    HE::Unavailable {
        name: PAY,
        reason: UnavailableReason::CircuitOpen,
        opened_at: t(at),
        retry_at: Some(t(at + 30)),
    }
}

#[test]
fn handler_closed_counts_failures_and_opens_at_the_threshold() {
    HandlerTest::with(())
        .given_no_previous_events()
        .when(failure_op(1))
        .then_expect_events(vec![failure_recorded(1, 1)]);
    HandlerTest::with(())
        .given(vec![failure_recorded(1, 1)])
        .when(failure_op(2))
        .then_expect_events(vec![failure_recorded(2, 2), opened(2)]);
}

#[test]
fn handler_success_after_failures_recovers() {
    HandlerTest::with(())
        .given(vec![failure_recorded(1, 1)])
        .when(HO::RecordSuccess {
            name: PAY,
            at: t(3),
        })
        .then_expect_events(vec![HE::Recovered {
            name: PAY,
            at: t(3),
        }]);
    HandlerTest::with(())
        .given_no_previous_events()
        .when(HO::RecordSuccess {
            name: PAY,
            at: t(3),
        })
        .then_expect_events(vec![]);
}

#[test]
fn handler_open_refuses_until_retry_then_half_open() {
    let mut handler = CommandHandler::default();
    assert_eq!(handler.admission(t(0)), Admission::Closed);
    for event in [failure_recorded(1, 1), failure_recorded(2, 2), opened(2)] {
        cqrs_es::Aggregate::apply(&mut handler, event);
    }
    assert_eq!(
        handler.admission(t(10)),
        Admission::Open { retry_at: t(32) }
    );
    assert_eq!(handler.admission(t(32)), Admission::HalfOpen);
}

#[test]
fn handler_half_open_probe_success_closes() {
    HandlerTest::with(())
        .given(vec![
            failure_recorded(1, 1),
            failure_recorded(2, 2),
            opened(2),
        ])
        .when(HO::RecordSuccess {
            name: PAY,
            at: t(40),
        })
        .then_expect_events(vec![HE::Available {
            name: PAY,
            reason: AvailableReason::ProbeSucceeded,
            at: t(40),
        }]);
    let mut handler = CommandHandler::default();
    for event in [
        failure_recorded(1, 1),
        failure_recorded(2, 2),
        opened(2),
        HE::Available {
            name: PAY,
            reason: AvailableReason::ProbeSucceeded,
            at: t(40),
        },
    ] {
        cqrs_es::Aggregate::apply(&mut handler, event);
    }
    assert_eq!(handler.admission(t(41)), Admission::Closed);
    assert_eq!(handler.consecutive_failures(), 0);
}

#[test]
fn handler_half_open_probe_failure_opens_again() {
    HandlerTest::with(())
        .given(vec![
            failure_recorded(1, 1),
            failure_recorded(2, 2),
            opened(2),
        ])
        .when(failure_op(40))
        .then_expect_events(vec![failure_recorded(3, 40), opened(40)]);
    // A failure of a command admitted before the circuit opened does not reopen it.
    HandlerTest::with(())
        .given(vec![
            failure_recorded(1, 1),
            failure_recorded(2, 2),
            opened(2),
        ])
        .when(failure_op(5))
        .then_expect_events(vec![failure_recorded(3, 5)]);
}

#[test]
fn handler_reset_closes_and_forgets() {
    HandlerTest::with(())
        .given(vec![
            failure_recorded(1, 1),
            failure_recorded(2, 2),
            opened(2),
        ])
        .when(HO::Reset {
            name: PAY,
            at: t(3),
        })
        .then_expect_events(vec![HE::Available {
            name: PAY,
            reason: AvailableReason::Reset,
            at: t(3),
        }]);
    HandlerTest::with(())
        .given_no_previous_events()
        .when(HO::Reset {
            name: PAY,
            at: t(3),
        })
        .then_expect_events(vec![]);
}

#[test]
fn handler_registry_and_disabling() {
    let registered = |available| HO::Register {
        name: PAY,
        description: Some(" payments ".into()),
        available,
        at: t(1),
    };
    let registered_event = HE::Registered {
        name: PAY,
        description: Some("payments".into()),
        registered_at: t(1),
    };
    HandlerTest::with(())
        .given_no_previous_events()
        .when(registered(Some(false)))
        .then_expect_events(vec![
            registered_event.clone(),
            HE::Unavailable {
                name: PAY,
                reason: UnavailableReason::Disabled,
                opened_at: t(1),
                retry_at: None,
            },
        ]);
    let disabled = HE::Unavailable {
        name: PAY,
        reason: UnavailableReason::Disabled,
        opened_at: t(0),
        retry_at: None,
    };
    HandlerTest::with(())
        .given(vec![disabled.clone()])
        .when(registered(Some(true)))
        .then_expect_events(vec![
            registered_event,
            HE::Available {
                name: PAY,
                reason: AvailableReason::Enabled,
                at: t(1),
            },
        ]);
    let mut handler = CommandHandler::default();
    cqrs_es::Aggregate::apply(&mut handler, disabled);
    assert_eq!(handler.admission(t(2)), Admission::Disabled);

    let unregistered = HE::Unregistered {
        name: PAY,
        unregistered_at: t(2),
    };
    HandlerTest::with(())
        .given_no_previous_events()
        .when(HO::Unregister {
            name: PAY,
            at: t(2),
        })
        .then_expect_events(vec![unregistered.clone()]);
    HandlerTest::with(())
        .given(vec![unregistered.clone()])
        .when(HO::Unregister {
            name: PAY,
            at: t(3),
        })
        .then_expect_error_message("handler payment is not registered");
    let mut handler = CommandHandler::default();
    cqrs_es::Aggregate::apply(&mut handler, unregistered);
    assert_eq!(handler.admission(t(3)), Admission::Unregistered);
}
