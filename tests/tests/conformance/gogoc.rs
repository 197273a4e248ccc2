//! What gogoc 1.2 reads of the server's answers, modelled from its sources (`tsp_cap.c`,
//! `tsp_net.c`, `tsp_client.c`, `xmlparse.c`, `xml_tun.c`, `tsp_setup.c`,
//! `platform/linux/tsp_local.c`): the framing it accepts, the codes it acts on, the XML
//! grammar its own parser takes, and the fields of the offer it uses without checking
//! that they came.

/// `tspGetStatusCode`: `atoi` of the reply.
pub fn status(reply: &[u8]) -> i64 {
    let s = String::from_utf8_lossy(reply);
    let t = s.trim_start();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// The answer to `VERSION=`: `CAPABILITY ` then `TOKEN=VALUE` pairs. gogoc takes a pair
/// only when a separator (space or CR/LF) follows it (`tspExtractCapability`).
pub fn capabilities(reply: &[u8]) -> Result<Vec<String>, String> {
    let s = std::str::from_utf8(reply).map_err(|_| "not text".to_string())?;
    let rest = s
        .strip_prefix("CAPABILITY ")
        .ok_or_else(|| format!("no `CAPABILITY ` prefix (gogoc takes it for a status): {s:?}"))?;
    if !rest.ends_with("\r\n") {
        return Err(format!("the last pair is not followed by CRLF: {s:?}"));
    }
    Ok(rest
        .split([' ', '\r', '\n'])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect())
}

/// A reply framed as `tspReceive` reads it (offers and errors to the tunnel request):
/// `Content-length: N`, a line end, then N bytes that hold the status line. Returns the
/// payload after the first line.
pub fn framed(reply: &[u8]) -> Result<&[u8], String> {
    if !reply.starts_with(b"Content-length:") {
        return Err("no `Content-length:` (tspReceive gives up)".into());
    }
    let nl = reply
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no line end after Content-length")?;
    let n: usize = std::str::from_utf8(&reply[15..nl])
        .ok()
        .map(str::trim)
        .and_then(|n| n.parse().ok())
        .ok_or("Content-length is not a number")?;
    let payload = &reply[nl + 1..];
    if n == 0 || payload.len() > n {
        return Err(format!(
            "Content-length {n} is less than the {} bytes that follow (invalid payload size)",
            payload.len()
        ));
    }
    if payload.len() < n {
        return Err(format!(
            "Content-length {n} promises more than the {} bytes sent: gogoc waits for them",
            payload.len()
        ));
    }
    Ok(payload)
}

/// The offer as gogoc's parser leaves it in its `tTunnel`: every value lower-cased, as
/// its `Assign` does; `None` where the element or attribute was absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub action: Option<String>,
    pub kind: Option<String>,
    pub lifetime: Option<String>,
    pub proxy: Option<String>,
    pub mtu: Option<String>,
    pub server_ipv4: Option<String>,
    pub server_ipv6: Option<String>,
    pub client_ipv4: Option<String>,
    pub client_ipv6: Option<String>,
    pub client_dns_name: Option<String>,
    pub client_dns_server_ipv6: Option<String>,
    pub router_protocol: Option<String>,
    pub prefix: Option<String>,
    pub prefix_length: Option<String>,
    pub keepalive_interval: Option<String>,
    pub keepalive_address: Option<String>,
    pub router_dns_servers: Vec<String>,
    pub broker_redirects: Vec<String>,
}

/// The payload of a framed 200 (`200 Success\r\n<tunnel ...>`) parsed as gogoc does:
/// `tspExtractPayload` starts at the first `<` after the first line end.
pub fn offer(payload: &[u8]) -> Result<Tunnel, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "offer is not text".to_string())?;
    let nl = text.find('\n').ok_or("no line end after the status")?;
    let lt = text[nl..].find('<').ok_or("no XML after the status")? + nl;
    let mut t = Tunnel::default();
    let mut p = Parser {
        t: &mut t,
        ctx: Ctx::default(),
    };
    parse(&text[lt..], Level::Root, &mut p)?;
    Ok(t)
}

/// What gogoc 1.2 on Linux uses of an offer without checking that it came (`setenv`,
/// `strcasecmp`, `atoi` of a NULL pointer end the process with SIGSEGV on today's glibc),
/// and what it refuses the tunnel for (`validate_tunnel_info`). Empty when the offer is
/// safe and usable.
pub fn unusable(t: &Tunnel) -> Vec<String> {
    let mut out = Vec::new();
    let mut need = |what: &str, v: &Option<String>, why: &str| {
        if v.is_none() {
            out.push(format!("{what} is missing: {why}"));
        }
    };
    need(
        "tunnel@type",
        &t.kind,
        "strcasecmp(NULL) in set_tsp_env_variables",
    );
    need(
        "client/dns_server/address[@type=ipv6]",
        &t.client_dns_server_ipv6,
        "setenv(TSP_CLIENT_DNS_ADDRESS_IPV6, NULL) in set_tsp_env_variables",
    );
    need(
        "client/address[@type=ipv4]",
        &t.client_ipv4,
        "validate_tunnel_info refuses the tunnel",
    );
    need(
        "client/address[@type=ipv6]",
        &t.client_ipv6,
        "validate_tunnel_info refuses the tunnel",
    );
    need(
        "server/address[@type=ipv4]",
        &t.server_ipv4,
        "validate_tunnel_info refuses the tunnel",
    );
    need(
        "server/address[@type=ipv6]",
        &t.server_ipv6,
        "validate_tunnel_info refuses the tunnel",
    );
    if t.prefix.is_some() {
        need(
            "client/router/prefix@length",
            &t.prefix_length,
            "atoi(NULL) in set_tsp_env_variables",
        );
    }
    let interval = t
        .keepalive_interval
        .as_deref()
        .map_or(0, |i| i.trim().parse::<i64>().unwrap_or(0));
    if interval > 0 {
        need(
            "client/keepalive/address",
            &t.keepalive_address,
            "the keepalive engine is started with a NULL destination",
        );
    }
    // `IsAll` character checks of validate_tunnel_info.
    const V4: &str = "0123456789.";
    const V6: &str = "ABCDEFabcdef:0123456789";
    const ANY: &str = "ABCDEFabcdef:0123456789.";
    let mut chars = |what: &str, v: &Option<String>, set: &str| {
        if let Some(v) = v {
            if v.is_empty() || !v.chars().all(|c| set.contains(c)) {
                out.push(format!(
                    "{what} {v:?} has characters validate_tunnel_info refuses"
                ));
            }
        }
    };
    chars("client ipv4", &t.client_ipv4, V4);
    chars("client ipv6", &t.client_ipv6, V6);
    chars("server ipv4", &t.server_ipv4, V4);
    chars("server ipv6", &t.server_ipv6, V6);
    chars("client dns server", &t.client_dns_server_ipv6, V6);
    chars("router prefix", &t.prefix, ANY);
    chars("router prefix length", &t.prefix_length, "0123456789");
    if let Some(k) = &t.kind {
        if !["v6v4", "v6udpv4", "v4v6"].contains(&k.as_str()) {
            out.push(format!("tunnel type {k:?} is none gogoc sets up"));
        }
    }
    out
}

/// The router prefix as gogoc hands it to its script (`TSP_PREFIX`): the first
/// `len/16` groups (rounded up) with their separators, cut from the text as sent.
pub fn script_prefix(t: &Tunnel) -> Option<String> {
    let prefix = t.prefix.as_deref()?;
    let len: usize = t.prefix_length.as_deref()?.parse().ok()?;
    let (chars, seps) = if !len.is_multiple_of(16) {
        ((len / 16 + 1) * 4, len / 16)
    } else {
        (len / 16 * 4, len / 16 - 1)
    };
    prefix.get(..chars + seps).map(str::to_string)
}

// ---- the XML grammar of xmlparse.c and the node tables of xml_tun.c ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Tunnel,
    Server,
    Client,
    Router,
    DnsServer,
    Broker,
    Keepalive,
}

/// Whether a level knows a tag (xml_tun.c's node tables); an element a level does not
/// know is skipped whole.
fn known(level: Level, tag: &str) -> bool {
    use Level::*;
    matches!(
        (level, tag),
        (Root, "tunnel")
            | (Tunnel, "server" | "client" | "broker")
            | (Server, "address" | "router")
            | (Client, "address" | "dns_server" | "router" | "keepalive")
            | (Router, "prefix" | "dns_server" | "as")
            | (DnsServer | Broker | Keepalive, "address")
    )
}

/// Where the parser is, as the handlers' global flags say.
#[derive(Debug, Default, Clone, Copy)]
struct Ctx {
    client: bool,
    server: bool,
    router: bool,
    dns_server: bool,
    broker: bool,
    keepalive: bool,
}

struct Parser<'a> {
    t: &'a mut Tunnel,
    ctx: Ctx,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// One level of `XMLParse`: a sequence of elements separated by blanks, nothing else.
fn parse(s: &str, level: Level, p: &mut Parser) -> Result<(), String> {
    let b = s.as_bytes();
    let blank = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut pos = 0;
    loop {
        while pos < b.len() && blank(b[pos]) {
            pos += 1;
        }
        if pos == b.len() {
            return Ok(());
        }
        let err = |what: &str, at: usize| Err(format!("{what} at {at} of {s:?}"));
        if b[pos] != b'<' {
            return err("text where gogoc expects an element", pos);
        }
        pos += 1;
        if pos == b.len() || !b[pos].is_ascii_alphabetic() {
            return err("a tag must start with a letter", pos);
        }
        let start = pos;
        while pos < b.len() && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
            pos += 1;
        }
        let tag = &s[start..pos];
        if pos == b.len() {
            return err("unterminated tag", pos);
        }
        let mut simple = false;
        let mut attrs: Vec<(&str, &str)> = Vec::new();
        let spec = known(level, tag);
        match b[pos] {
            b'/' => {
                if b.get(pos + 1) != Some(&b'>') {
                    return err("`/` not followed by `>`", pos);
                }
                simple = true;
                pos += 2;
            }
            b'>' => pos += 1,
            b' ' if !spec => {
                // An unknown element: skipped to its `>`; gogoc then looks for its end tag
                // even when it closed itself with `/>`.
                while pos < b.len() && b[pos] != b'>' {
                    pos += 1;
                }
                pos += 1;
            }
            b' ' => {
                pos += 1;
                while pos < b.len() && blank(b[pos]) {
                    pos += 1;
                }
                while pos < b.len() && b[pos].is_ascii_alphabetic() {
                    let n = pos;
                    while pos < b.len() && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
                        pos += 1;
                    }
                    let name = &s[n..pos];
                    if b.get(pos) != Some(&b'=') || b.get(pos + 1) != Some(&b'"') {
                        return err("an attribute must be name=\"value\"", pos);
                    }
                    pos += 2;
                    let v = pos;
                    while pos < b.len() && !matches!(b[pos], b'"' | b'\r' | b'\n' | b'>') {
                        pos += 1;
                    }
                    if b.get(pos) != Some(&b'"') {
                        return err("unterminated attribute value", pos);
                    }
                    attrs.push((name, &s[v..pos]));
                    pos += 1;
                    while pos < b.len() && blank(b[pos]) {
                        pos += 1;
                    }
                }
                if b.get(pos) == Some(&b'/') {
                    simple = true;
                    pos += 1;
                }
                if b.get(pos) != Some(&b'>') {
                    return err("tag not closed by `>`", pos);
                }
                pos += 1;
            }
            _ => return err("after a tag name gogoc takes only ` `, `/` or `>`", pos),
        }
        let content = if simple {
            ""
        } else {
            // The content runs to the first `</tag>`, whatever is nested in between.
            let end = format!("</{tag}>");
            let Some(e) = s[pos..].find(&end) else {
                return err(&format!("no {end}"), pos);
            };
            let c = &s[pos..pos + e];
            pos += e + end.len();
            c
        };
        if spec {
            // Attributes a handler does not read are ignored, as gogoc does.
            let attr = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| lower(v));
            handle(level, tag, &attr, content, p)?;
        }
    }
}

/// The handlers of xml_tun.c: what each element sets in the tunnel.
fn handle(
    level: Level,
    tag: &str,
    attr: &dyn Fn(&str) -> Option<String>,
    content: &str,
    p: &mut Parser,
) -> Result<(), String> {
    // Handlers read `attributes[0]` without checking it came: gogoc would read a value
    // left over from an earlier element (or NULL), so every such attribute must be sent.
    let typed = |what: &str| -> Result<String, String> {
        attr("type")
            .ok_or_else(|| format!("<{what}> without type: gogoc reads a stale or NULL attribute"))
    };
    match (level, tag) {
        (Level::Root, "tunnel") => {
            p.t.action = attr("action");
            p.t.kind = attr("type");
            p.t.lifetime = attr("lifetime");
            p.t.proxy = attr("proxy");
            p.t.mtu = attr("mtu");
            parse(content, Level::Tunnel, p)
        }
        (Level::Tunnel, "server") => nested(p, |c| c.server = true, content, Level::Server),
        (Level::Tunnel, "client") => nested(p, |c| c.client = true, content, Level::Client),
        (Level::Tunnel, "broker") => nested(p, |c| c.broker = true, content, Level::Broker),
        (_, "dns_server") => nested(p, |c| c.dns_server = true, content, Level::DnsServer),
        (_, "router") => {
            p.t.router_protocol = attr("protocol");
            nested(p, |c| c.router = true, content, Level::Router)
        }
        (_, "keepalive") => {
            p.t.keepalive_interval = attr("interval");
            nested(p, |c| c.keepalive = true, content, Level::Keepalive)
        }
        (_, "prefix") => {
            p.t.prefix_length = attr("length");
            p.t.prefix = Some(lower(content));
            Ok(())
        }
        (_, "as") => Ok(()),
        (_, "address") => {
            let ty = typed("address")?;
            let v = Some(lower(content));
            let c = p.ctx;
            if c.client {
                if c.keepalive {
                    if ty == "ipv6" || ty == "ipv4" {
                        p.t.keepalive_address = v;
                    }
                } else if c.router {
                    if c.dns_server {
                        p.t.router_dns_servers.push(lower(content));
                    }
                } else if c.dns_server {
                    if ty == "ipv6" {
                        p.t.client_dns_server_ipv6 = v;
                    }
                } else {
                    match ty.as_str() {
                        "ipv4" => p.t.client_ipv4 = v,
                        "ipv6" => p.t.client_ipv6 = v,
                        "dn" => p.t.client_dns_name = v,
                        _ => {}
                    }
                }
            } else if c.server {
                match ty.as_str() {
                    "ipv4" => p.t.server_ipv4 = v,
                    "ipv6" => p.t.server_ipv6 = v,
                    _ => {}
                }
            } else if c.broker {
                p.t.broker_redirects.push(lower(content));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn nested(
    p: &mut Parser,
    set: impl Fn(&mut Ctx),
    content: &str,
    level: Level,
) -> Result<(), String> {
    let saved = p.ctx;
    set(&mut p.ctx);
    let r = parse(content, level, p);
    p.ctx = saved;
    r
}
