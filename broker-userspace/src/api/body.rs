//! JSON request bodies whose errors name the field: serde_path_to_error over serde_json,
//! unknown fields refused by the types.
use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
};
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON body of type `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(None, e.to_string()))?;
        parse(&bytes).map(Body)
    }
}

/// Parses `bytes`: syntax errors are 400, errors at a field 422 naming it.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = strip_position(&inner.to_string());
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad_request(
                    None,
                    format!("malformed JSON: {message}"),
                ))
            } else if path == "." {
                // Missing or unknown fields are reported on the object itself.
                Err(ApiError::unprocessable(field_in(&message), message))
            } else {
                Err(ApiError::unprocessable(Some(path), message))
            }
        }
    }
}

/// serde_json ends messages with " at line 1 column 30".
fn strip_position(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// The field named in "missing field `x`" / "unknown field `x`, expected ...".
fn field_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ipv4Field, Mtu};

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        remote_ipv4: Ipv4Field,
        #[serde(default)]
        mtu: Option<Mtu>,
    }

    fn err(body: &str) -> ApiError {
        parse::<T>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"remote_ipv4": "2001:db8::1"}"#);
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("remote_ipv4"))
        );
        assert!(
            e.message.contains("expected an IPv4 address"),
            "{}",
            e.message
        );
        let e = err(r#"{"remote_ipv4": "198.51.100.1", "mtu": 9000}"#);
        assert_eq!(e.field.as_deref(), Some("mtu"));
        assert_eq!(e.message, "MTU 9000 is outside 1280-1480");
        let e = err(r#"{"remote_ipv4": "198.51.100.1", "mtu": "big"}"#);
        assert_eq!(e.field.as_deref(), Some("mtu"));
        let e = err(r#"{"remote_ipv4": "198.51.100.1", "colour": 1}"#);
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("colour"))
        );
        let e = err(r#"{}"#);
        assert_eq!(e.field.as_deref(), Some("remote_ipv4"));
        let e = err(r#"{"remote_ipv4": "#);
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (400, None));
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }
}
