//! Who is asking: the administrator (bearer token from the config) or a user (HTTP basic
//! with the user's password). Parsing is pure; checking needs the store.
use base64::Engine as _;

/// Credentials as presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Bearer(String),
    Basic { user: String, password: String },
}

/// Parses an `Authorization` header value.
pub fn parse(header: &str) -> Option<Presented> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Presented::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    None
}

pub use crate::secret::same;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    User(String),
}

impl Caller {
    /// Whether this caller may see and change a tunnel owned by `owner`.
    pub fn may_use(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(u) => owner == Some(u.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        assert_eq!(parse("Bearer abc"), Some(Presented::Bearer("abc".into())));
        // "alice:pa:ss" — the password may contain colons.
        assert_eq!(
            parse("Basic YWxpY2U6cGE6c3M="),
            Some(Presented::Basic {
                user: "alice".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(parse("Basic !!!"), None);
        assert_eq!(parse("Digest x"), None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn comparison_and_ownership() {
        assert!(same("secret", "secret"));
        assert!(!same("secret", "secreT"));
        assert!(!same("secret", "secret1"));
        assert!(Caller::Admin.may_use(None));
        assert!(Caller::User("a".into()).may_use(Some("a")));
        assert!(!Caller::User("a".into()).may_use(Some("b")));
        assert!(!Caller::User("a".into()).may_use(None));
    }
}
