//! The seed's ten message kinds and the shape each kind's payload must have. A failing
//! payload is reported with the path of the offending field (`message.steps[1].name`).
//! Fields a kind does not declare are kept as they are.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::is_valid_id;
use crate::domain::DomainError;

/// Largest serialized message, in bytes (413 above it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest name, type, status or content inside a payload, in characters.
pub const MAX_PAYLOAD_TEXT_LEN: usize = 256;
/// Most steps of a workflow.
pub const MAX_WORKFLOW_STEPS: usize = 100;
/// Highest task priority.
pub const MAX_PRIORITY: i64 = 100;

/// What a message carries; each kind checks its payload's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A non-blank string.
    #[default]
    Message,
    /// `{type, data: object, source?}`.
    Event,
    /// `{type, data: object}`.
    Command,
    /// `{type, data: object}`.
    Query,
    /// `{type, content, recipient_id}`.
    Notification,
    /// `{name, steps: [{name, type}], 1 to 100 of them}`.
    Workflow,
    /// `{name, type, status}`.
    Service,
    /// `{name, type, capacity: integer >= 0, used: integer 0..=capacity}`.
    Resource,
    /// `{name, type, priority: integer 0..=100}`.
    Task,
    /// `{name, type, schedule: a 5-field cron expression}`.
    Job,
}

impl MessageKind {
    pub const ALL: [MessageKind; 10] = [
        MessageKind::Message,
        MessageKind::Event,
        MessageKind::Command,
        MessageKind::Query,
        MessageKind::Notification,
        MessageKind::Workflow,
        MessageKind::Service,
        MessageKind::Resource,
        MessageKind::Task,
        MessageKind::Job,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Event => "event",
            MessageKind::Command => "command",
            MessageKind::Query => "query",
            MessageKind::Notification => "notification",
            MessageKind::Workflow => "workflow",
            MessageKind::Service => "service",
            MessageKind::Resource => "resource",
            MessageKind::Task => "task",
            MessageKind::Job => "job",
        }
    }

    /// The kind named `name`, or a 422 on `kind` listing the ten.
    pub fn parse(name: &str) -> Result<MessageKind, DomainError> {
        MessageKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                let all: Vec<&str> = MessageKind::ALL.iter().map(|k| k.as_str()).collect();
                DomainError::invalid("kind", format!("kind must be one of {}", all.join(", ")))
            })
    }

    /// `None` means the default kind, `message`.
    pub fn parse_optional(name: Option<&str>) -> Result<MessageKind, DomainError> {
        name.map_or(Ok(MessageKind::default()), MessageKind::parse)
    }
}

/// Checks a message against its kind and the size limit; errors name `message` or a field
/// inside it.
pub fn validate_message(kind: MessageKind, message: &Value) -> Result<(), DomainError> {
    let size = serde_json::to_vec(message).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_MESSAGE_BYTES {
        return Err(DomainError::TooLarge(format!(
            "message is {size} bytes serialized; at most {MAX_MESSAGE_BYTES} are allowed"
        )));
    }
    let root = Payload {
        path: "message".to_string(),
        value: message,
    };
    match kind {
        MessageKind::Message => {
            root.text()?;
        }
        MessageKind::Event => {
            let obj = root.object()?;
            obj.field("type")?.text()?;
            obj.field("data")?.object()?;
            if let Some(source) = obj.optional("source") {
                source.text()?;
            }
        }
        MessageKind::Command | MessageKind::Query => {
            let obj = root.object()?;
            obj.field("type")?.text()?;
            obj.field("data")?.object()?;
        }
        MessageKind::Notification => {
            let obj = root.object()?;
            obj.field("type")?.text()?;
            obj.field("content")?.text()?;
            obj.field("recipient_id")?.id()?;
        }
        MessageKind::Workflow => {
            let obj = root.object()?;
            obj.field("name")?.text()?;
            let steps = obj.field("steps")?;
            let items = steps.array()?;
            if items.is_empty() || items.len() > MAX_WORKFLOW_STEPS {
                return Err(steps.invalid(format!("must hold 1 to {MAX_WORKFLOW_STEPS} steps")));
            }
            for index in 0..items.len() {
                let step = steps.at(index)?.object()?;
                step.field("name")?.text()?;
                step.field("type")?.text()?;
            }
        }
        MessageKind::Service => {
            let obj = root.object()?;
            obj.field("name")?.text()?;
            obj.field("type")?.text()?;
            obj.field("status")?.text()?;
        }
        MessageKind::Resource => {
            let obj = root.object()?;
            obj.field("name")?.text()?;
            obj.field("type")?.text()?;
            let capacity = obj.field("capacity")?.integer(0, i64::MAX)?;
            obj.field("used")?.integer(0, capacity)?;
        }
        MessageKind::Task => {
            let obj = root.object()?;
            obj.field("name")?.text()?;
            obj.field("type")?.text()?;
            obj.field("priority")?.integer(0, MAX_PRIORITY)?;
        }
        MessageKind::Job => {
            let obj = root.object()?;
            obj.field("name")?.text()?;
            obj.field("type")?.text()?;
            let schedule = obj.field("schedule")?;
            let text = schedule.text()?;
            validate_cron(text).map_err(|reason| schedule.invalid(reason))?;
        }
    }
    Ok(())
}

/// A value inside a message, with its path for error reports.
struct Payload<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> Payload<'a> {
    fn invalid(&self, message: impl std::fmt::Display) -> DomainError {
        DomainError::invalid(&self.path, format!("{} {message}", self.path))
    }

    fn object(self) -> Result<Object<'a>, DomainError> {
        match self.value {
            Value::Object(_) => Ok(Object(self)),
            _ => Err(self.invalid("must be an object")),
        }
    }

    fn array(&self) -> Result<&'a Vec<Value>, DomainError> {
        self.value
            .as_array()
            .ok_or_else(|| self.invalid("must be an array"))
    }

    fn at(&self, index: usize) -> Result<Payload<'a>, DomainError> {
        let items = self.array()?;
        Ok(Payload {
            path: format!("{}[{index}]", self.path),
            value: &items[index],
        })
    }

    /// A non-blank string of at most [`MAX_PAYLOAD_TEXT_LEN`] characters; a plain message
    /// (the whole payload) is bounded by the size limit only.
    fn text(&self) -> Result<&'a str, DomainError> {
        let Some(text) = self.value.as_str() else {
            return Err(self.invalid("must be a string"));
        };
        if text.trim().is_empty() {
            return Err(self.invalid("must not be blank"));
        }
        if self.path != "message" && text.chars().count() > MAX_PAYLOAD_TEXT_LEN {
            return Err(self.invalid(format!("must be at most {MAX_PAYLOAD_TEXT_LEN} characters")));
        }
        Ok(text)
    }

    fn id(&self) -> Result<&'a str, DomainError> {
        let text = self
            .value
            .as_str()
            .ok_or_else(|| self.invalid("must be a string"))?;
        if is_valid_id(text) {
            Ok(text)
        } else {
            Err(self.invalid("must be 1 to 128 characters of letters, digits, '.', '_' or '-'"))
        }
    }

    fn integer(&self, min: i64, max: i64) -> Result<i64, DomainError> {
        let Some(number) = self.value.as_i64() else {
            return Err(self.invalid("must be an integer"));
        };
        if number < min || number > max {
            return Err(if max == i64::MAX {
                self.invalid(format!("must be at least {min}"))
            } else {
                self.invalid(format!("must be between {min} and {max}"))
            });
        }
        Ok(number)
    }
}

/// A payload known to be an object.
struct Object<'a>(Payload<'a>);

impl<'a> Object<'a> {
    fn optional(&self, name: &str) -> Option<Payload<'a>> {
        self.0
            .value
            .get(name)
            .filter(|value| !value.is_null())
            .map(|value| Payload {
                path: format!("{}.{name}", self.0.path),
                value,
            })
    }

    fn field(&self, name: &str) -> Result<Payload<'a>, DomainError> {
        self.optional(name).ok_or_else(|| {
            let path = format!("{}.{name}", self.0.path);
            DomainError::invalid(&path, format!("{path} is required"))
        })
    }
}

/// The five cron fields: name, lowest and highest value, and the names it accepts.
const CRON_FIELDS: [(&str, u32, u32, &[&str]); 5] = [
    ("minute", 0, 59, &[]),
    ("hour", 0, 23, &[]),
    ("day of month", 1, 31, &[]),
    (
        "month",
        1,
        12,
        &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    ),
    (
        "day of week",
        0,
        7,
        &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    ),
];

/// A basic check of a 5-field cron expression: each field is `*` or a comma list of
/// values and ranges, each optionally with `/step`, within the field's bounds.
pub fn validate_cron(expression: &str) -> Result<(), String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != CRON_FIELDS.len() {
        return Err(format!(
            "must be a cron expression of 5 fields (minute hour day-of-month month \
             day-of-week); got {}",
            fields.len()
        ));
    }
    for (text, (name, low, high, names)) in fields.iter().zip(CRON_FIELDS) {
        for item in text.split(',') {
            cron_item(item, low, high, names)
                .map_err(|reason| format!("has a bad {name} field `{text}`: {reason}"))?;
        }
    }
    Ok(())
}

fn cron_item(item: &str, low: u32, high: u32, names: &[&str]) -> Result<(), String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(step) if step >= 1 && step <= high.max(1) => {}
            _ => return Err(format!("step `{step}` must be 1 to {}", high.max(1))),
        }
    }
    if range == "*" {
        return Ok(());
    }
    let value = |text: &str| -> Result<u32, String> {
        if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(low + index as u32);
        }
        match text.parse::<u32>() {
            Ok(v) if (low..=high).contains(&v) => Ok(v),
            _ => Err(format!("`{text}` must be {low} to {high}")),
        }
    };
    match range.split_once('-') {
        Some((from, to)) => {
            let (from, to) = (value(from)?, value(to)?);
            if from > to {
                return Err(format!("range `{range}` runs backwards"));
            }
        }
        None => {
            value(range)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(kind: MessageKind, message: Value) -> Option<String> {
        match validate_message(kind, &message) {
            Ok(()) => None,
            Err(DomainError::Invalid { field, .. }) => field,
            Err(other) => Some(format!("{other:?}")),
        }
    }

    #[test]
    fn mediator_kinds_parse() {
        assert_eq!(MessageKind::parse_optional(None), Ok(MessageKind::Message));
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::parse(kind.as_str()), Ok(kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(json!(kind.as_str())));
        }
        assert!(MessageKind::parse("telegram").is_err());
    }

    #[test]
    fn mediator_kinds_name_the_failing_field() {
        use MessageKind as K;
        assert_eq!(field_of(K::Message, json!("hi")), None);
        assert_eq!(field_of(K::Message, json!("  ")), Some("message".into()));
        assert_eq!(field_of(K::Message, json!(5)), Some("message".into()));
        let event = json!({"type": "user_created", "data": {"id": 1}, "source": "svc"});
        assert_eq!(field_of(K::Event, event), None);
        assert_eq!(
            field_of(K::Event, json!({"type": "t", "data": []})),
            Some("message.data".into())
        );
        assert_eq!(
            field_of(K::Event, json!({"type": "t", "data": {}, "source": 3})),
            Some("message.source".into())
        );
        assert_eq!(
            field_of(K::Query, json!({"data": {}})),
            Some("message.type".into())
        );
        assert_eq!(
            field_of(
                K::Notification,
                json!({"type": "email", "content": "hi", "recipient_id": "a b"})
            ),
            Some("message.recipient_id".into())
        );
        let steps = json!({"name": "w", "steps": [{"name": "a", "type": "t"}, {"type": "t"}]});
        assert_eq!(
            field_of(K::Workflow, steps),
            Some("message.steps[1].name".into())
        );
        assert_eq!(
            field_of(K::Workflow, json!({"name": "w", "steps": []})),
            Some("message.steps".into())
        );
        let resource = json!({"name": "db", "type": "c", "capacity": 10, "used": 11});
        assert_eq!(field_of(K::Resource, resource), Some("message.used".into()));
        let resource = json!({"name": "db", "type": "c", "capacity": 1.5, "used": 1});
        assert_eq!(
            field_of(K::Resource, resource),
            Some("message.capacity".into())
        );
        let task = json!({"name": "p", "type": "c", "priority": 101});
        assert_eq!(field_of(K::Task, task), Some("message.priority".into()));
        let job = json!({"name": "r", "type": "s", "schedule": "0 0 * * *"});
        assert_eq!(field_of(K::Job, job), None);
        let job = json!({"name": "r", "type": "s", "schedule": "0 0 * *"});
        assert_eq!(field_of(K::Job, job), Some("message.schedule".into()));
        assert_eq!(field_of(K::Service, json!("x")), Some("message".into()));
        let big = json!("x".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(
            validate_message(K::Message, &big),
            Err(DomainError::TooLarge(_))
        ));
    }

    #[test]
    fn mediator_cron_syntax() {
        for ok in [
            "* * * * *",
            "0 0 * * *",
            "*/15 9-17 * * mon-fri",
            "0,30 0 1 jan,jul 0",
            "59 23 31 12 7",
        ] {
            assert_eq!(validate_cron(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
        ] {
            assert!(validate_cron(bad).is_err(), "{bad}");
        }
    }
}
