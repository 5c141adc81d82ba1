//! The command envelope, `{type, command_id?, ...the type's fields}`, parsed from a JSON value
//! with errors that name the field (`amount`, or `commands[2].amount` inside a batch). A
//! malformed envelope is refused before anything is written.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use kernel::domain::command::spec::{validate_command_id, CommandSpec, CommandType};
use web::{ApiError, ApiResult, FieldError};

use crate::write::new_id;

/// A checked command.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub command_id: String,
    pub spec: CommandSpec,
    /// The envelope's fields besides `type` and `command_id`, as sent.
    pub payload: Value,
}

impl Envelope {
    pub fn command_type(&self) -> CommandType {
        self.spec.command_type()
    }
}

/// Parses one envelope; `prefix` (such as `commands[2]`) goes before every field name.
pub fn parse(value: &Value, prefix: Option<&str>) -> ApiResult<Envelope> {
    parse_unprefixed(value).map_err(|err| match prefix {
        Some(prefix) => prefixed(err, prefix),
        None => err,
    })
}

/// Rebuilds the envelope of a stored command (its type and payload) and checks it again.
pub fn from_stored(
    command_id: &str,
    command_type: CommandType,
    payload: &Value,
) -> ApiResult<Envelope> {
    let spec = parse_spec(command_type, payload)?;
    Ok(Envelope {
        command_id: command_id.to_string(),
        spec,
        payload: payload.clone(),
    })
}

fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::BadRequest {
        detail: format!("invalid request body at `{field}`: {message}"),
        errors: vec![FieldError {
            field: field.to_string(),
            message,
        }],
    }
}

fn parse_unprefixed(value: &Value) -> ApiResult<Envelope> {
    let Value::Object(object) = value else {
        return Err(ApiError::BadRequest {
            detail: "a command must be a JSON object with a `type`".into(),
            errors: vec![],
        });
    };
    let command_type = match object.get("type") {
        None => return Err(bad_request("type", "missing field `type`")),
        Some(Value::String(name)) => CommandType::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "type",
                format!(
                    "unknown command type `{name}`; one of {}",
                    CommandType::names()
                ),
            )
        })?,
        Some(_) => return Err(bad_request("type", "expected a string")),
    };
    let command_id = match object.get("command_id") {
        None | Some(Value::Null) => new_id(),
        Some(Value::String(id)) => {
            validate_command_id("command_id", id)?;
            id.clone()
        }
        Some(_) => return Err(bad_request("command_id", "expected a string")),
    };
    let payload: Map<String, Value> = object
        .iter()
        .filter(|(key, _)| key.as_str() != "type" && key.as_str() != "command_id")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let payload = Value::Object(payload);
    let spec = parse_spec(command_type, &payload)?;
    Ok(Envelope {
        command_id,
        spec,
        payload,
    })
}

fn strict<T: DeserializeOwned>(payload: &Value) -> ApiResult<T> {
    let bytes = serde_json::to_vec(payload).map_err(|err| ApiError::Internal(err.to_string()))?;
    web::strict::parse_strict(&bytes)
}

fn parse_spec(command_type: CommandType, payload: &Value) -> ApiResult<CommandSpec> {
    let spec = match command_type {
        CommandType::Payment => CommandSpec::Payment(strict(payload)?),
        CommandType::User => CommandSpec::User(strict(payload)?),
        CommandType::Order => CommandSpec::Order(strict(payload)?),
        CommandType::Notification => CommandSpec::Notification(strict(payload)?),
        CommandType::Inventory => CommandSpec::Inventory(strict(payload)?),
        CommandType::Refund => CommandSpec::Refund(strict(payload)?),
        CommandType::Audit => CommandSpec::Audit(strict(payload)?),
        CommandType::System => CommandSpec::System(strict(payload)?),
    };
    spec.validate()?;
    Ok(spec)
}

/// The same error about `prefix.field` instead of `field`.
pub fn prefixed(err: ApiError, prefix: &str) -> ApiError {
    let rename = |errors: Vec<FieldError>| -> Vec<FieldError> {
        errors
            .into_iter()
            .map(|e| FieldError {
                field: format!("{prefix}.{}", e.field),
                message: e.message,
            })
            .collect()
    };
    match err {
        ApiError::BadRequest { detail, errors } => ApiError::BadRequest {
            detail: format!("{prefix}: {detail}"),
            errors: if errors.is_empty() {
                vec![FieldError {
                    field: prefix.to_string(),
                    message: detail,
                }]
            } else {
                rename(errors)
            },
        },
        ApiError::Unprocessable { detail, errors } => ApiError::Unprocessable {
            detail: format!("{prefix}.{detail}"),
            errors: if errors.is_empty() {
                vec![FieldError {
                    field: prefix.to_string(),
                    message: detail,
                }]
            } else {
                rename(errors)
            },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::BadRequest { errors, .. } | ApiError::Unprocessable { errors, .. } => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn command_envelope_errors_name_the_field() {
        let payment = json!({"type": "payment", "user_id": "u1", "amount": 5, "currency": "USD",
            "payment_method": "card", "gateway": "stripe"});
        let parsed = parse(&payment, None).expect("valid");
        assert_eq!(parsed.command_type(), CommandType::Payment);
        assert!(parsed.payload.get("type").is_none());
        assert!(!parsed.command_id.is_empty());

        let mut wrong = payment.clone();
        wrong["amount"] = json!("five");
        assert_eq!(fields(parse(&wrong, None).unwrap_err()), vec!["amount"]);
        let mut missing = payment.clone();
        missing.as_object_mut().unwrap().remove("gateway");
        assert_eq!(fields(parse(&missing, None).unwrap_err()), vec!["gateway"]);
        let mut unknown = payment.clone();
        unknown["type"] = json!("teleport");
        assert_eq!(fields(parse(&unknown, None).unwrap_err()), vec!["type"]);
        let mut bad_id = payment.clone();
        bad_id["command_id"] = json!("a b");
        assert_eq!(
            fields(parse(&bad_id, Some("commands[2]")).unwrap_err()),
            vec!["commands[2].command_id"]
        );
        let mut negative = payment;
        negative["amount"] = json!(-1);
        assert_eq!(
            fields(parse(&negative, Some("commands[0]")).unwrap_err()),
            vec!["commands[0].amount"]
        );
    }
}
