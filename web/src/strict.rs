//! Strict request types. poem-openapi turns a JSON number or boolean into a `String`
//! silently; a request with the wrong type must get a 400 naming the field instead.

use std::borrow::Cow;

use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON string, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;

    type RawValueType = Self;

    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Ok(Text(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_strings_parse() {
        assert!(Text::parse_from_json(Some(Value::from("a"))).is_ok());
        assert!(Text::parse_from_json(Some(Value::from(5))).is_err());
        assert!(Text::parse_from_json(Some(Value::from(true))).is_err());
        assert!(Text::parse_from_json(None).is_err());
    }
}

/// A JSON request body parsed strictly by serde: wrong types, missing fields and unknown
/// fields are 400s whose `errors` name the field by its path (`metadata.owner`,
/// `items[2].quantity`). The schema in the spec is `T`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictJson<T>(pub T);

impl<T> std::ops::Deref for StrictJson<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Type> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        T::register(registry);
    }
}

impl<T: Type + serde::de::DeserializeOwned> poem_openapi::payload::ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(
        request: &poem::Request,
        body: &mut poem::RequestBody,
    ) -> poem::Result<Self> {
        use poem::FromRequest;
        let data = Vec::<u8>::from_request(request, body).await?;
        let value = parse_strict(&data)?;
        refuse_null_fields(&data)?;
        Ok(StrictJson(value))
    }
}

poem_openapi::impl_apirequest_for_payload!(StrictJson<T>, T: Type + serde::de::DeserializeOwned);

/// Refuses `null` for any top-level field: no field is documented as nullable, so an
/// optional one is omitted, never null. (poem-openapi's own validators are not run here:
/// its `pattern` check compiles the regex on every call, which cost most of a write's CPU;
/// the domain checks ids, texts and amounts itself, and the routes check the numeric
/// bounds the domain does not see.)
fn refuse_null_fields(data: &[u8]) -> Result<(), crate::ApiError> {
    // Most bodies hold no `null` at all: skip the second parse for them.
    if !data.windows(4).any(|window| window == b"null") {
        return Ok(());
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(data) else {
        return Ok(());
    };
    match fields.iter().find(|(_, value)| value.is_null()) {
        Some((field, _)) => Err(crate::ApiError::invalid(
            field,
            "must be omitted or given a value, not null",
        )),
        None => Ok(()),
    }
}

/// Parses a JSON body, naming the offending field on failure.
pub fn parse_strict<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, crate::ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let message = err.inner().to_string();
        let path = err.path().to_string();
        let field = if path == "." || path.is_empty() {
            named_in(&message).map(|name| name.to_string())
        } else {
            Some(path)
        };
        let detail = match &field {
            Some(field) => format!("invalid request body at `{field}`: {message}"),
            None => format!("invalid request body: {message}"),
        };
        crate::ApiError::BadRequest {
            detail,
            errors: field
                .map(|field| crate::FieldError {
                    field,
                    message: message.clone(),
                })
                .into_iter()
                .collect(),
        }
    })?;
    deserializer
        .end()
        .map_err(|err| crate::ApiError::BadRequest {
            detail: format!("invalid request body: {err}"),
            errors: vec![],
        })?;
    Ok(value)
}

/// The field serde names in "missing field `x`" or "unknown field `x`, expected ...".
fn named_in(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

#[cfg(test)]
mod strict_json_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: Option<u32>,
        meta: Option<std::collections::BTreeMap<String, u32>>,
    }

    fn field_of(json: &str) -> Option<String> {
        match parse_strict::<Body>(json.as_bytes()) {
            Err(crate::ApiError::BadRequest { errors, .. }) => {
                errors.first().map(|error| error.field.clone())
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"name": 5}"#).as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name": "a", "limit": "x"}"#).as_deref(),
            Some("limit")
        );
        assert_eq!(
            field_of(r#"{"name": "a", "meta": {"k": -1}}"#).as_deref(),
            Some("meta.k")
        );
        assert_eq!(field_of(r#"{}"#).as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name": "a", "extra": 1}"#).as_deref(),
            Some("extra")
        );
        assert_eq!(field_of(r#"{"name": "#).as_deref(), Some("name"));
        assert_eq!(field_of("not json"), None);
        assert!(parse_strict::<Body>(br#"{"name": "a"} trailing"#).is_err());
        assert!(parse_strict::<Body>(br#"{"name": "a"}"#).is_ok());
    }
}

#[cfg(test)]
mod null_field_tests {
    use super::*;

    fn check(json: &str) -> Result<(), crate::ApiError> {
        refuse_null_fields(json.as_bytes())
    }

    #[test]
    fn null_is_refused_and_names_the_field() {
        assert!(check(r#"{"limit": 5, "items": [{"x": null}]}"#).is_ok());
        match check(r#"{"limit": null}"#) {
            Err(crate::ApiError::Unprocessable { errors, .. }) => {
                assert_eq!(errors[0].field, "limit");
            }
            other => panic!("expected a 422 for null, got {other:?}"),
        }
        assert!(check("[1, null]").is_ok());
    }
}
