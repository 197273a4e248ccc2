//! What aiccu 2007.01.15 reads of a TIC server, modelled from its sources (`common/tic.c`,
//! `common/aiccu_linux.c`, `common/ayiya.c`, `common/heartbeat.c`,
//! `unix-console/main.c`): every answer is one line whose first character says yes
//! (`2`) or no; lists are framed by `201` and `202`; `tunnel show` is `Key: value` lines
//! of which some are used without checking that they came.
use std::collections::BTreeMap;

/// aiccu's check of most answers: the first character is `2`.
pub fn ok(line: &str) -> Result<(), String> {
    if line.starts_with('2') {
        Ok(())
    } else {
        Err(format!("aiccu gives up on {line:?}"))
    }
}

/// `get unixtime`: `200 <epoch>`, and aiccu aborts when its clock is off by more than
/// 120 s (`tic_checktime`).
pub fn unixtime(line: &str, now: u64) -> Result<u64, String> {
    ok(line)?;
    let t: u64 = line
        .get(4..)
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no epoch in {line:?} (atoi gives 0: clock off)"))?;
    if t.abs_diff(now) > 120 {
        return Err(format!(
            "epoch {t} is {} s from now: aiccu aborts",
            t.abs_diff(now)
        ));
    }
    Ok(t)
}

/// `challenge md5`: `200 <challenge>`; aiccu answers MD5(challenge + MD5hex(password)),
/// taking everything after the first four characters as the challenge.
pub fn challenge(line: &str) -> Result<String, String> {
    ok(line)?;
    line.get(4..)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("no challenge in {line:?}"))
}

/// One `tunnel list` line: exactly four space-separated fields (`countfields`), the id,
/// the IPv6 and IPv4 endpoints and the PoP.
pub fn list_entry(line: &str) -> Result<[String; 4], String> {
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        [id, v6, v4, pop] if [id, v6, v4, pop].iter().all(|f| !f.is_empty()) => Ok([
            id.to_string(),
            v6.to_string(),
            v4.to_string(),
            pop.to_string(),
        ]),
        _ => Err(format!(
            "{line:?} is not 4 fields: aiccu stops listing (Wrong field format)"
        )),
    }
}

/// Whether a line ends a list (`202`); starts one: `201`.
pub fn list_start(line: &str) -> Result<(), String> {
    if line.starts_with("201") {
        Ok(())
    } else {
        Err(format!("{line:?} is not 201: aiccu gives up"))
    }
}

pub fn is_list_end(line: &str) -> bool {
    line.starts_with("202")
}

/// A `tunnel show` body as aiccu's `parseline` takes it: `Key: value`, split at the
/// first `": "`. Keys it does not know are ignored.
pub fn show(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What aiccu on Linux uses of `tunnel show` without checking it came, for a tunnel of
/// that `Type`, and the values it needs to go on. Empty when the tunnel is usable.
pub fn unusable(keys: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let get = |k: &str| keys.get(k).map(String::as_str);
    let mut need = |k: &str, why: &str| {
        if get(k).is_none() {
            out.push(format!("`{k}` is missing: {why}"));
        }
    };
    need("Type", "strcmp(NULL) in tic_GetTunnel and aiccu_setup");
    need("IPv6 Endpoint", "inet_pton(NULL) in tic_GetTunnel");
    need(
        "IPv6 POP",
        "the default route and AYIYA's identity of the PoP",
    );
    need("IPv6 PrefixLength", "`ip -6 addr add` gets prefix length 0");
    need(
        "IPv4 POP",
        "the tunnel's remote end (sit, AYIYA and heartbeat)",
    );
    need(
        "IPv4 Endpoint",
        "strcmp(NULL) when setting up the interface",
    );
    need("UserState", "strcmp(NULL) in main.c");
    need("AdminState", "strcmp(NULL) in main.c");
    need("Tunnel MTU", "`ip link set mtu 0`");
    need("POP Id", "printed with %s");
    let ty = get("Type").unwrap_or_default().to_string();
    if ty == "ayiya" || ty == "6in4-heartbeat" {
        need("Password", "the AYIYA key and the heartbeat's MD5");
        need(
            "Heartbeat_Interval",
            "how often it beats (0: without pause)",
        );
    }
    for k in ["UserState", "AdminState"] {
        if let Some(v) = get(k) {
            if v != "enabled" {
                out.push(format!("{k} is {v:?}: aiccu refuses to start the tunnel"));
            }
        }
    }
    for k in ["IPv6 PrefixLength", "Tunnel MTU", "Heartbeat_Interval"] {
        if let Some(v) = get(k) {
            if v.parse::<u32>().map_or(true, |n| n == 0) {
                out.push(format!("{k} {v:?} is not a positive integer"));
            }
        }
    }
    for k in ["IPv6 Endpoint", "IPv6 POP"] {
        if let Some(v) = get(k) {
            if v.parse::<std::net::Ipv6Addr>().is_err() {
                out.push(format!("{k} {v:?} is not an IPv6 address"));
            }
        }
    }
    if !["ayiya", "6in4", "6in4-heartbeat"].contains(&ty.as_str()) && !ty.is_empty() {
        out.push(format!("Type {ty:?} is none aiccu sets up on Linux"));
    }
    out
}
