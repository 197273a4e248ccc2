//! SASL as TSP clients speak it (gogoc `tsp_auth.c`): PLAIN and DIGEST-MD5 (RFC 2831,
//! `md5-sess`, `qop=auth`, digest-uri `tsp/<server as the client was configured>`).
//!
//! The server needs each user's plaintext password for DIGEST-MD5 (as ddtb and tsps do);
//! the store keeps it.
use std::collections::HashMap;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use md5::{Digest, Md5};

/// `\0user\0password` (the leading NUL may have been stripped already), trailing CR/LF and
/// NULs ignored.
pub fn parse_plain(msg: &[u8]) -> Option<(String, String)> {
    let msg = trim(msg);
    let msg = msg.strip_prefix(b"\0").unwrap_or(msg);
    let mut parts = msg.splitn(2, |b| *b == 0);
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    (!user.is_empty()).then(|| (user.to_string(), pass.to_string()))
}

/// Strips trailing CR, LF and NUL.
pub fn trim(msg: &[u8]) -> &[u8] {
    let end = msg
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | 0))
        .map_or(0, |i| i + 1);
    &msg[..end]
}

/// The server's challenge, base64 and CRLF, as tsps sends it. gogoc needs `realm`, `nonce`,
/// `qop` and `charset`, in any order but with no spaces after the commas.
pub fn digest_challenge(realm: &str, nonce: &str) -> String {
    let text =
        format!("realm=\"{realm}\",nonce=\"{nonce}\",qop=auth,algorithm=md5-sess,charset=utf8");
    format!("{}\r\n", B64.encode(text))
}

/// Why a DIGEST-MD5 response is refused (all answered with 300).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not base64, not `key=value` pairs, or a required key is missing.
    Malformed(&'static str),
    /// The nonce, realm or nonce count is not the one of this exchange.
    Mismatch(&'static str),
    /// The response hash does not match the user's password.
    WrongPassword,
}

/// A client's DIGEST-MD5 response, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse {
    pub username: String,
    realm: String,
    nonce: String,
    cnonce: String,
    nc: String,
    qop: String,
    digest_uri: String,
    response: String,
}

/// Decodes the base64 line and checks it belongs to this exchange (`realm`, `nonce`).
pub fn parse_digest_response(
    line: &[u8],
    realm: &str,
    nonce: &str,
) -> Result<DigestResponse, DigestError> {
    let raw = B64
        .decode(trim(line))
        .map_err(|_| DigestError::Malformed("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| DigestError::Malformed("not text"))?;
    let fields = directives(&text);
    let get = |k: &'static str| fields.get(k).cloned().ok_or(DigestError::Malformed(k));
    let r = DigestResponse {
        username: get("username")?,
        realm: get("realm")?,
        nonce: get("nonce")?,
        cnonce: get("cnonce")?,
        nc: get("nc")?,
        qop: fields.get("qop").cloned().unwrap_or_else(|| "auth".into()),
        digest_uri: get("digest-uri")?,
        response: get("response")?,
    };
    if r.nonce != nonce {
        return Err(DigestError::Mismatch("nonce"));
    }
    if r.realm != realm {
        return Err(DigestError::Mismatch("realm"));
    }
    if r.nc != "00000001" {
        return Err(DigestError::Mismatch("nc"));
    }
    if r.qop != "auth" {
        return Err(DigestError::Mismatch("qop"));
    }
    if !r.digest_uri.starts_with("tsp/") {
        return Err(DigestError::Mismatch("digest-uri"));
    }
    Ok(r)
}

/// `key=value` and `key="value"` pairs separated by commas (values here never contain
/// commas: gogoc's own parser would not cope either).
fn directives(text: &str) -> HashMap<String, String> {
    text.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((
                k.trim().to_string(),
                v.replace("\\\"", "\"").replace("\\\\", "\\"),
            ))
        })
        .collect()
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HEX(H(A1)) of `md5-sess`. Clients before TSP 2.0.1 compute it differently when the raw
/// H(user:realm:password) contains a zero byte (gogoc `SUPPORT_MD5_BUG1455`): MD5 of the
/// bytes before it only, without nonce and cnonce.
/// `inner` is H(user:realm:password), all the server keeps of the password.
fn ha1(r: &DigestResponse, inner: [u8; 16], old_client: bool) -> String {
    if old_client {
        if let Some(zero) = inner.iter().position(|b| *b == 0) {
            return hex(md5(&[&inner[..zero]]));
        }
    }
    hex(md5(&[
        &inner,
        b":",
        r.nonce.as_bytes(),
        b":",
        r.cnonce.as_bytes(),
    ]))
}

fn kd(ha1: &str, r: &DigestResponse, a2: &str) -> String {
    let ha2 = hex(md5(&[a2.as_bytes()]));
    hex(md5(&[format!(
        "{ha1}:{}:{}:{}:{}:{ha2}",
        r.nonce, r.nc, r.cnonce, r.qop
    )
    .as_bytes()]))
}

/// Checks the response against `inner`, H(user:realm:password) of the user's password in
/// this realm; on success returns the server's answer, the base64 `rspauth=...` line the
/// client verifies. `old_client`: TSP version 2.0.0 or older.
pub fn verify_digest(
    r: &DigestResponse,
    inner: [u8; 16],
    old_client: bool,
) -> Result<String, DigestError> {
    let ha1 = ha1(r, inner, old_client);
    let expected = kd(&ha1, r, &format!("AUTHENTICATE:{}", r.digest_uri));
    if !crate::secret::same(&expected, &r.response.to_ascii_lowercase()) {
        return Err(DigestError::WrongPassword);
    }
    let rspauth = kd(&ha1, r, &format!(":{}", r.digest_uri));
    Ok(format!("{}\r\n", B64.encode(format!("rspauth={rspauth}"))))
}

/// The client's side: the response line to a challenge (for `broker client tsp`).
pub fn digest_client_response(
    challenge_line: &[u8],
    user: &str,
    password: &str,
    server: &str,
    cnonce: &str,
) -> Result<(String, String), DigestError> {
    let raw = B64
        .decode(trim(challenge_line))
        .map_err(|_| DigestError::Malformed("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| DigestError::Malformed("not text"))?;
    let c = directives(&text);
    let realm = c.get("realm").ok_or(DigestError::Malformed("realm"))?;
    let nonce = c.get("nonce").ok_or(DigestError::Malformed("nonce"))?;
    let charset = c.get("charset").map_or("utf8", |s| s.as_str());
    let r = DigestResponse {
        username: user.into(),
        realm: realm.clone(),
        nonce: nonce.clone(),
        cnonce: cnonce.into(),
        nc: "00000001".into(),
        qop: "auth".into(),
        digest_uri: format!("tsp/{server}"),
        response: String::new(),
    };
    let inner = crate::secret::digest_inner(user, realm, password);
    let ha1 = ha1(&r, inner, false);
    let response = kd(&ha1, &r, &format!("AUTHENTICATE:{}", r.digest_uri));
    let rspauth = kd(&ha1, &r, &format!(":{}", r.digest_uri));
    let text = format!(
        "charset={charset},username=\"{user}\",realm=\"{realm}\",nonce=\"{nonce}\",nc=00000001,cnonce=\"{cnonce}\",digest-uri=\"tsp/{server}\",response={response},qop=auth"
    );
    Ok((format!("{}\r\n", B64.encode(text)), rspauth))
}

/// The `rspauth` value of the server's answer line (client side).
pub fn parse_rspauth(line: &[u8]) -> Option<String> {
    let raw = B64.decode(trim(line)).ok()?;
    directives(std::str::from_utf8(&raw).ok()?)
        .get("rspauth")
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server keeps of `password` for the response's user and realm.
    fn inner(r: &DigestResponse, password: &str) -> [u8; 16] {
        crate::secret::digest_inner(&r.username, &r.realm, password)
    }

    // The worked example in docs/TSP.md: alice/secret,
    // realm tsp.example, nonce 0123ABCD, cnonce 1700000000, server broker.example.net.
    const CHALLENGE_B64: &str = "cmVhbG09InRzcC5leGFtcGxlIixub25jZT0iMDEyM0FCQ0QiLHFvcD1hdXRoLGFsZ29yaXRobT1tZDUtc2VzcyxjaGFyc2V0PXV0Zjg=";
    const CLIENT_TEXT: &str = "charset=utf8,username=\"alice\",realm=\"tsp.example\",nonce=\"0123ABCD\",nc=00000001,cnonce=\"1700000000\",digest-uri=\"tsp/broker.example.net\",response=7d50c46a4f2cacb27bd4355dc74322e7,qop=auth";
    const RSPAUTH_LINE: &str = "cnNwYXV0aD1mNzdkODZhZTgxNjg0MzFjM2M1NzgzYzQ5MDJmOTAyZg==\r\n";

    #[test]
    fn challenge_matches_the_fixed_vector() {
        assert_eq!(
            digest_challenge("tsp.example", "0123ABCD"),
            format!("{CHALLENGE_B64}\r\n")
        );
    }

    #[test]
    fn digest_exchange_with_a_fixed_nonce() {
        let line = format!("{}\r\n", B64.encode(CLIENT_TEXT));
        let r = parse_digest_response(line.as_bytes(), "tsp.example", "0123ABCD").unwrap();
        assert_eq!(r.username, "alice");
        assert_eq!(
            verify_digest(&r, inner(&r, "secret"), false).unwrap(),
            RSPAUTH_LINE
        );
        assert_eq!(
            verify_digest(&r, inner(&r, "Secret"), false),
            Err(DigestError::WrongPassword)
        );
        // Our client computes the same bytes the deployed one sends.
        let (resp, rspauth) = digest_client_response(
            CHALLENGE_B64.as_bytes(),
            "alice",
            "secret",
            "broker.example.net",
            "1700000000",
        )
        .unwrap();
        assert_eq!(resp, line);
        assert_eq!(
            parse_rspauth(RSPAUTH_LINE.as_bytes()).as_deref(),
            Some(rspauth.as_str())
        );
    }

    #[test]
    fn the_rfc_2831_example_verifies() {
        // RFC 2831 section 4, with digest-uri imap/elwood... replaced by our check's
        // "tsp/" prefix: the hash itself is protocol-agnostic, so compute it for the RFC's
        // values and compare with the RFC's response.
        let r = DigestResponse {
            username: "chris".into(),
            realm: "elwood.innosoft.com".into(),
            nonce: "OA6MG9tEQGm2hh".into(),
            cnonce: "OA6MHXh6VqTrRk".into(),
            nc: "00000001".into(),
            qop: "auth".into(),
            digest_uri: "imap/elwood.innosoft.com".into(),
            response: "d388dad90d4bbd760a152321f2143af7".into(),
        };
        let rsp = verify_digest(&r, inner(&r, "secret"), false).unwrap();
        assert_eq!(
            parse_rspauth(rsp.as_bytes()).unwrap(),
            "ea40f60335c427b5527b84dbabcdfffd"
        );
    }

    #[test]
    fn responses_of_another_exchange_or_malformed_are_refused() {
        let line = format!("{}\r\n", B64.encode(CLIENT_TEXT));
        assert_eq!(
            parse_digest_response(line.as_bytes(), "tsp.example", "FFFF"),
            Err(DigestError::Mismatch("nonce"))
        );
        assert_eq!(
            parse_digest_response(line.as_bytes(), "other", "0123ABCD"),
            Err(DigestError::Mismatch("realm"))
        );
        assert_eq!(
            parse_digest_response(b"!!!\r\n", "r", "n"),
            Err(DigestError::Malformed("not base64"))
        );
        let no_user = B64.encode("realm=\"r\",nonce=\"n\"");
        assert_eq!(
            parse_digest_response(no_user.as_bytes(), "r", "n"),
            Err(DigestError::Malformed("username"))
        );
    }

    #[test]
    fn old_clients_hash_a1_differently_when_it_holds_a_zero_byte() {
        let mut r = parse_digest_response(
            format!("{}\r\n", B64.encode(CLIENT_TEXT)).as_bytes(),
            "tsp.example",
            "0123ABCD",
        )
        .unwrap();
        // Find a password whose H(user:realm:pass) has a zero byte.
        let pw = (0..10_000)
            .map(|i| format!("pw{i}"))
            .find(|p| md5(&[b"alice:tsp.example:", p.as_bytes()]).contains(&0))
            .unwrap();
        let inner = md5(&[b"alice:tsp.example:", pw.as_bytes()]);
        let zero = inner.iter().position(|b| *b == 0).unwrap();
        let quirk_ha1 = hex(md5(&[&inner[..zero]]));
        r.response = kd(&quirk_ha1, &r, "AUTHENTICATE:tsp/broker.example.net");
        assert!(verify_digest(&r, inner, true).is_ok());
        assert_eq!(
            verify_digest(&r, inner, false),
            Err(DigestError::WrongPassword)
        );
    }

    #[test]
    fn plain_credentials() {
        assert_eq!(
            parse_plain(b"\0bob\0pa ss\r\n"),
            Some(("bob".into(), "pa ss".into()))
        );
        assert_eq!(
            parse_plain(b"bob\0pw\r\n\0"),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\r\n"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
    }
}
