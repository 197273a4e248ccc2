//! Forms into the API's requests, and the notices pages show after an action.
use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::api::{body, ApiError};

/// The form's fields `take` as the API's JSON body of type `T`, where `numeric` fields
/// are numbers: the API's own parsing and errors, which name the field.
pub fn as_request<T: DeserializeOwned>(
    fields: &HashMap<String, String>,
    take: &[&str],
    numeric: &[&str],
) -> Result<T, ApiError> {
    let mut obj = serde_json::Map::new();
    for k in take {
        let Some(v) = fields.get(*k) else { continue };
        let v = v.trim();
        let value = match v.parse::<u64>() {
            Ok(n) if numeric.contains(k) => serde_json::Value::from(n),
            // Not a number: the API's parser says so, at the field.
            _ => serde_json::Value::from(v),
        };
        obj.insert(k.to_string(), value);
    }
    body::parse(&serde_json::to_vec(&obj).unwrap_or_default())
}

/// What a page says after a redirect (`?done=...`): fixed words, never the query's.
pub fn notice(q: &HashMap<String, String>) -> Option<String> {
    let words = match q.get("done")?.as_str() {
        "logout" => "You are logged out.",
        "welcome" => "Your account is ready. Create your first tunnel.",
        "password" => "Your password is changed; other sessions of your account have ended.",
        "created" => "The tunnel is created. Configure your end as below.",
        "changed" => "The tunnel is changed.",
        "deleted" => "The tunnel is deleted.",
        "tunnel-password" => {
            "The tunnel has a new password: your client must fetch the tunnel again."
        }
        "disabled" => "Disabled.",
        "enabled" => "Enabled.",
        "user-deleted" => "The account is deleted.",
        _ => return None,
    };
    Some(words.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        #[serde(default)]
        mtu: Option<u16>,
        #[serde(default)]
        remote_ipv4: Option<crate::config::Ipv4Field>,
    }

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn form_fields_become_the_apis_request_and_errors_name_them() {
        let ok: T = as_request(
            &fields(&[("mtu", "1400"), ("remote_ipv4", "198.51.100.7"), ("x", "y")]),
            &["mtu", "remote_ipv4"],
            &["mtu"],
        )
        .unwrap();
        assert_eq!(ok.mtu, Some(1400));
        for (k, v) in [("mtu", "big"), ("mtu", "70000"), ("remote_ipv4", "1.2.3")] {
            let e =
                as_request::<T>(&fields(&[(k, v)]), &["mtu", "remote_ipv4"], &["mtu"]).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(k), "{k}={v}: {e:?}");
        }
    }

    #[test]
    fn notices_are_fixed_words() {
        assert_eq!(notice(&fields(&[("done", "<script>")])), None);
        assert!(notice(&fields(&[("done", "deleted")])).is_some());
    }
}
