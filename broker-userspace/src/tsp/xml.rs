//! The XML of TSP's tunnel messages: the client's request (parsed with roxmltree), the
//! server's offer (laid out as tsps writes it, with the `mtu` attribute and the client's
//! `<dns_server>` added), and both again from the client's side for `broker client tsp`.
//!
//! gogoc's own XML parser is strict about the offer: double-quoted attributes, one space
//! after a tag name, no `<?xml` declaration, and a router prefix written as a fully
//! expanded address without its length (the client keeps the first characters of it).
//! gogoc 1.2 uses some elements without checking that they came: the offer always carries
//! them (`conformance.rs` tests this against a model of what gogoc reads).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::status::{frame, Status};

/// `<tunnel action=...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Accept,
    Delete,
    Other(String),
}

/// `<tunnel type=...>` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedType {
    V6V4,
    V6UdpV4,
    /// Either of the above: the server decides (v6udpv4 when the client is behind a NAT).
    V6AnyV4,
    V4V6,
}

impl RequestedType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "v6v4" => Some(Self::V6V4),
            "v6udpv4" => Some(Self::V6UdpV4),
            "v6anyv4" => Some(Self::V6AnyV4),
            "v4v6" => Some(Self::V4V6),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V6V4 => "v6v4",
            Self::V6UdpV4 => "v6udpv4",
            Self::V6AnyV4 => "v6anyv4",
            Self::V4V6 => "v4v6",
        }
    }
}

/// A client's tunnel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    pub action: Action,
    pub tunnel_type: Option<RequestedType>,
    pub proxy: bool,
    pub client_ipv4: Option<Ipv4Addr>,
    pub client_ipv6: Option<Ipv6Addr>,
    /// The keepalive interval the client asks for.
    pub keepalive: Option<u32>,
    /// Router mode, with the prefix length asked for (if any).
    pub router: Option<Option<u8>>,
}

/// Splits `Content-length: N\r\n` off a message; the rest must be N bytes.
pub fn unframe(msg: &[u8]) -> Option<&[u8]> {
    let eol = msg.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&msg[..eol]).ok()?;
    let (k, n) = line.split_once(':')?;
    if !k.trim().eq_ignore_ascii_case("content-length") {
        return None;
    }
    let n: usize = n.trim().parse().ok()?;
    let body = &msg[eol + 1..];
    (body.len() == n).then_some(body)
}

/// Parses a request body (after the `Content-length` line). Malformed XML is 500, bad
/// addresses are 501 and 502.
pub fn parse_request(body: &[u8]) -> Result<TunnelRequest, Status> {
    let text = std::str::from_utf8(body).map_err(|_| Status::InvalidRequest)?;
    let doc =
        roxmltree::Document::parse(text.trim_matches(|c: char| c.is_whitespace() || c == '\0'))
            .map_err(|_| Status::InvalidRequest)?;
    let tunnel = doc.root_element();
    if !tunnel.has_tag_name("tunnel") {
        return Err(Status::InvalidRequest);
    }
    let action = match tunnel.attribute("action").map(str::to_ascii_lowercase) {
        Some(a) if a == "create" => Action::Create,
        Some(a) if a == "accept" => Action::Accept,
        Some(a) if a == "delete" => Action::Delete,
        Some(a) => Action::Other(a),
        None => return Err(Status::InvalidRequest),
    };
    let tunnel_type = match tunnel.attribute("type") {
        Some(t) => Some(RequestedType::parse(t).ok_or(Status::UnsupportedTunnelMode)?),
        None => None,
    };
    let proxy = tunnel
        .attribute("proxy")
        .is_some_and(|p| p.eq_ignore_ascii_case("yes"));
    let mut req = TunnelRequest {
        action,
        tunnel_type,
        proxy,
        client_ipv4: None,
        client_ipv6: None,
        keepalive: None,
        router: None,
    };
    let Some(client) = tunnel.children().find(|n| n.has_tag_name("client")) else {
        return Ok(req);
    };
    for node in client.children().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "address" => {
                let text = node.text().unwrap_or("").trim();
                match node.attribute("type") {
                    Some("ipv4") => {
                        req.client_ipv4 = Some(text.parse().map_err(|_| Status::InvalidIpv4)?)
                    }
                    Some("ipv6") => {
                        req.client_ipv6 = Some(text.parse().map_err(|_| Status::InvalidIpv6)?)
                    }
                    _ => {}
                }
            }
            "keepalive" => {
                req.keepalive = node.attribute("interval").and_then(|i| i.parse().ok());
            }
            "router" => {
                let prefix = node.children().find(|n| n.has_tag_name("prefix"));
                let len = match prefix.and_then(|p| p.attribute("length")) {
                    Some(l) => Some(l.parse().map_err(|_| Status::UnsupportedPrefixLength)?),
                    None => None,
                };
                req.router = Some(len);
            }
            _ => {}
        }
    }
    Ok(req)
}

/// What the server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `v6v4`, `v6udpv4` or `v4v6`.
    pub tunnel_type: RequestedType,
    pub lifetime: u64,
    pub mtu: u16,
    pub server_ipv4: Ipv4Addr,
    pub server_ipv6: Ipv6Addr,
    pub client_ipv4: Ipv4Addr,
    pub client_ipv6: Ipv6Addr,
    /// The client's DNS server (`<client><dns_server>`): gogoc 1.2 passes it to
    /// `setenv` unchecked, so every offer carries one; `::` says there is none.
    pub dns_server: Ipv6Addr,
    /// Interval and the address to send echo requests to.
    pub keepalive: Option<(u32, IpAddr)>,
    pub router_prefix: Option<Ipv6Net>,
}

/// An address as gogoc wants a prefix: eight groups of four hex digits.
pub fn expanded(a: Ipv6Addr) -> String {
    a.segments()
        .iter()
        .map(|s| format!("{s:04x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The offer message: `Content-length`, the status line, the XML.
/// The redirection to the brokers that serve the client (status 1200, which gogoc acts on
/// as any code above 1000): a `<tunnel>` whose `<broker>` lists their addresses, read by
/// gogoc's `tspHandleRedirect`, which then connects to the first.
pub fn redirect_message(brokers: &[IpAddr]) -> String {
    let mut x = String::from(
        "1200 Redirect\r\n<tunnel action=\"info\" type=\"v6anyv4\">\r\n\t<broker>\r\n",
    );
    for b in brokers {
        let ty = if b.is_ipv4() { "ipv4" } else { "ipv6" };
        x += &format!("\t\t<address type=\"{ty}\">{b}</address>\r\n");
    }
    x += "\t</broker>\r\n</tunnel>\r\n";
    x
}

pub fn offer_message(o: &Offer) -> String {
    let addr = |a: IpAddr| {
        let ty = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        format!("<address type=\"{ty}\">{a}</address>")
    };
    let mut x = String::from("200 Success\r\n");
    x += &format!(
        "<tunnel action=\"info\" type=\"{}\" lifetime=\"{}\" mtu=\"{}\">\r\n",
        o.tunnel_type.as_str(),
        o.lifetime,
        o.mtu
    );
    x += &format!(
        "\t<server>\r\n\t\t{}\r\n\t\t{}\r\n\t</server>\r\n",
        addr(o.server_ipv4.into()),
        addr(o.server_ipv6.into())
    );
    x += &format!(
        "\t<client>\r\n\t\t{}\r\n\t\t{}\r\n",
        addr(o.client_ipv4.into()),
        addr(o.client_ipv6.into())
    );
    x += &format!(
        "\t\t<dns_server>\r\n\t\t\t{}\r\n\t\t</dns_server>\r\n",
        addr(o.dns_server.into())
    );
    if let Some(p) = o.router_prefix {
        x += &format!(
            "\t\t<router>\r\n\t\t\t<prefix length=\"{}\">{}</prefix>\r\n\t\t</router>\r\n",
            p.prefix_len(),
            expanded(p.network())
        );
    }
    if let Some((interval, a)) = o.keepalive {
        x += &format!(
            "\t\t<keepalive interval=\"{interval}\">\r\n\t\t\t{}\r\n\t\t</keepalive>\r\n",
            addr(a)
        );
    }
    x += "\t</client>\r\n</tunnel>\r\n";
    frame(&x)
}

/// The client's request, byte for byte as gogoc 1.2 writes it (`xml_req.c`).
pub fn request_message(
    tunnel_type: RequestedType,
    client: IpAddr,
    keepalive: Option<(u32, IpAddr)>,
    router_prefix_len: Option<u8>,
) -> String {
    let ty = if client.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut x = format!(
        "<tunnel action=\"create\" type=\"{}\" proxy=\"no\">\r\n <client>\r\n  <address type=\"{ty}\">{client}</address>\r\n",
        tunnel_type.as_str()
    );
    if let Some(len) = router_prefix_len {
        x += &format!("  <router>\r\n   <prefix length=\"{len}\"/>\r\n  </router>\r\n");
    }
    if let Some((interval, a)) = keepalive {
        let kty = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        x += &format!(
            "  <keepalive interval=\"{interval}\">\r\n    <address type=\"{kty}\">{a}</address>\r\n  </keepalive>\r\n"
        );
    }
    x += " </client>\r\n</tunnel>\r\n";
    frame(&x)
}

/// The client's accept.
pub const ACCEPT: &str = "Content-length: 35\r\n<tunnel action=\"accept\"></tunnel>\r\n";

/// Parses an offer as a client receives it (after the `Content-length` line): the status,
/// and the offer when it is 200.
/// The brokers a redirection (a status above 1000) sends the client to, in its order;
/// `None` if `body` is not a redirection.
pub fn parse_redirect(body: &[u8]) -> Option<Vec<IpAddr>> {
    let text = std::str::from_utf8(body).ok()?;
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    if digits.parse::<u32>().ok()? <= 1000 {
        return None;
    }
    let doc = roxmltree::Document::parse(&text[text.find('<')?..]).ok()?;
    let brokers = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("broker"))
        .flat_map(|b| b.children().filter(|c| c.has_tag_name("address")))
        .filter_map(|a| a.text()?.trim().parse().ok())
        .collect();
    Some(brokers)
}

pub fn parse_offer(body: &[u8]) -> Result<Offer, u16> {
    let text = std::str::from_utf8(body).map_err(|_| 0u16)?;
    let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code != Status::Success.code() {
        return Err(code);
    }
    let xml = &text[text.find('<').ok_or(0u16)?..];
    let doc = roxmltree::Document::parse(xml).map_err(|_| 0u16)?;
    let t = doc.root_element();
    let tunnel_type = t
        .attribute("type")
        .and_then(RequestedType::parse)
        .ok_or(0u16)?;
    let child = |name: &str| t.children().find(|n| n.has_tag_name(name));
    let addrs = |node: Option<roxmltree::Node>| -> Vec<IpAddr> {
        node.map(|n| {
            n.children()
                .filter(|c| c.has_tag_name("address"))
                .filter_map(|c| c.text()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
    };
    let v4 = |v: &[IpAddr]| {
        v.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            _ => None,
        })
    };
    let v6 = |v: &[IpAddr]| {
        v.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            _ => None,
        })
    };
    let server = addrs(child("server"));
    let client_node = child("client");
    let client = addrs(client_node);
    let keepalive = client_node
        .and_then(|c| c.children().find(|n| n.has_tag_name("keepalive")))
        .and_then(|k| {
            let interval = k.attribute("interval")?.parse().ok()?;
            let a = addrs(Some(k)).first().copied()?;
            Some((interval, a))
        });
    let dns_server = client_node
        .and_then(|c| c.children().find(|n| n.has_tag_name("dns_server")))
        .and_then(|d| v6(&addrs(Some(d))))
        .unwrap_or(Ipv6Addr::UNSPECIFIED);
    let router_prefix = client_node
        .and_then(|c| c.children().find(|n| n.has_tag_name("router")))
        .and_then(|r| r.children().find(|n| n.has_tag_name("prefix")))
        .and_then(|p| {
            let len = p.attribute("length")?.parse().ok()?;
            let a: Ipv6Addr = p.text()?.trim().parse().ok()?;
            Ipv6Net::new(a, len).ok()
        });
    Ok(Offer {
        tunnel_type,
        lifetime: t
            .attribute("lifetime")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
        mtu: t
            .attribute("mtu")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1280),
        server_ipv4: v4(&server).ok_or(0u16)?,
        server_ipv6: v6(&server).ok_or(0u16)?,
        client_ipv4: v4(&client).ok_or(0u16)?,
        client_ipv6: v6(&client).ok_or(0u16)?,
        dns_server,
        keepalive,
        router_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirection_is_written_as_gogoc_reads_it_and_read_back() {
        let brokers: Vec<IpAddr> = vec![[192, 0, 2, 2].into(), "2001:db8::2".parse().unwrap()];
        let m = redirect_message(&brokers);
        // gogoc: `atoi` of the status (above 1000: a redirection), then the XML from the
        // first '<' after the first line (`tspExtractPayload`), `<broker><address>`.
        assert_eq!(
            m,
            "1200 Redirect\r\n<tunnel action=\"info\" type=\"v6anyv4\">\r\n\t<broker>\r\n\
             \t\t<address type=\"ipv4\">192.0.2.2</address>\r\n\
             \t\t<address type=\"ipv6\">2001:db8::2</address>\r\n\t</broker>\r\n</tunnel>\r\n"
        );
        assert_eq!(parse_redirect(m.as_bytes()), Some(brokers));
        assert_eq!(parse_redirect(b"200 Success\r\n<tunnel/>"), None);
        assert_eq!(parse_redirect(b"530 Server too busy\r\n"), None);
    }

    /// gogoc's create request of PROTOCOLS.md, 215 bytes of XML.
    const GOGOC_REQUEST: &str = "Content-length: 215\r\n<tunnel action=\"create\" type=\"v6anyv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.10</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

    #[test]
    fn the_gogoc_request_is_parsed_and_reproduced() {
        let body = unframe(GOGOC_REQUEST.as_bytes()).unwrap();
        assert_eq!(body.len(), 215);
        let r = parse_request(body).unwrap();
        assert_eq!(r.action, Action::Create);
        assert_eq!(r.tunnel_type, Some(RequestedType::V6AnyV4));
        assert!(!r.proxy);
        assert_eq!(r.client_ipv4, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(r.keepalive, Some(30));
        assert_eq!(r.router, None);
        assert_eq!(
            request_message(
                RequestedType::V6AnyV4,
                "192.0.2.10".parse().unwrap(),
                Some((30, "::".parse().unwrap())),
                None
            ),
            GOGOC_REQUEST
        );
    }

    #[test]
    fn router_mode_and_accept() {
        let msg = request_message(
            RequestedType::V6V4,
            "192.0.2.10".parse().unwrap(),
            None,
            Some(56),
        );
        assert!(msg.contains("  <router>\r\n   <prefix length=\"56\"/>\r\n  </router>\r\n"));
        let r = parse_request(unframe(msg.as_bytes()).unwrap()).unwrap();
        assert_eq!(r.router, Some(Some(56)));
        let a = parse_request(unframe(ACCEPT.as_bytes()).unwrap()).unwrap();
        assert_eq!(a.action, Action::Accept);
        assert_eq!(unframe(ACCEPT.as_bytes()).unwrap().len(), 35);
    }

    #[test]
    fn bad_requests_get_their_codes() {
        let bad = |x: &str| parse_request(x.as_bytes()).unwrap_err();
        assert_eq!(bad("<tunnel"), Status::InvalidRequest);
        assert_eq!(
            bad("<nottunnel action=\"create\"/>"),
            Status::InvalidRequest
        );
        assert_eq!(bad("<tunnel type=\"v6v4\"/>"), Status::InvalidRequest);
        assert_eq!(
            bad("<tunnel action=\"create\" type=\"v6gre\"/>"),
            Status::UnsupportedTunnelMode
        );
        assert_eq!(
            bad("<tunnel action=\"create\" type=\"v6v4\"><client><address type=\"ipv4\">300.1.1.1</address></client></tunnel>"),
            Status::InvalidIpv4
        );
        assert_eq!(
            bad("<tunnel action=\"create\" type=\"v4v6\"><client><address type=\"ipv6\">2001:db8::g</address></client></tunnel>"),
            Status::InvalidIpv6
        );
        assert_eq!(
            bad("<tunnel action=\"create\" type=\"v6v4\"><client><router><prefix length=\"x\"/></router></client></tunnel>"),
            Status::UnsupportedPrefixLength
        );
        // Framing that lies about the length is not a message.
        assert_eq!(unframe(b"Content-length: 5\r\nabc"), None);
        assert_eq!(unframe(b"Content-type: 3\r\nabc"), None);
    }

    fn offer() -> Offer {
        Offer {
            tunnel_type: RequestedType::V6UdpV4,
            lifetime: 604800,
            mtu: 1280,
            server_ipv4: "198.51.100.1".parse().unwrap(),
            server_ipv6: "2001:db8::1".parse().unwrap(),
            client_ipv4: "192.0.2.10".parse().unwrap(),
            client_ipv6: "2001:db8::2".parse().unwrap(),
            dns_server: "2001:db8:53::53".parse().unwrap(),
            keepalive: Some((30, "2001:db8::1".parse().unwrap())),
            router_prefix: None,
        }
    }

    #[test]
    fn the_offer_is_written_as_tsps_writes_it_and_counted_exactly() {
        let m = offer_message(&offer());
        let body = unframe(m.as_bytes()).expect("Content-length covers the status line too");
        let want = "200 Success\r\n<tunnel action=\"info\" type=\"v6udpv4\" lifetime=\"604800\" mtu=\"1280\">\r\n\t<server>\r\n\t\t<address type=\"ipv4\">198.51.100.1</address>\r\n\t\t<address type=\"ipv6\">2001:db8::1</address>\r\n\t</server>\r\n\t<client>\r\n\t\t<address type=\"ipv4\">192.0.2.10</address>\r\n\t\t<address type=\"ipv6\">2001:db8::2</address>\r\n\t\t<dns_server>\r\n\t\t\t<address type=\"ipv6\">2001:db8:53::53</address>\r\n\t\t</dns_server>\r\n\t\t<keepalive interval=\"30\">\r\n\t\t\t<address type=\"ipv6\">2001:db8::1</address>\r\n\t\t</keepalive>\r\n\t</client>\r\n</tunnel>\r\n";
        assert_eq!(std::str::from_utf8(body).unwrap(), want);
        // tsps's own offer for these addresses is 403 bytes; ours adds ` mtu="1280"` and
        // the DNS server.
        let dns = "\t\t<dns_server>\r\n\t\t\t<address type=\"ipv6\">2001:db8:53::53</address>\r\n\t\t</dns_server>\r\n";
        assert_eq!(body.len(), 403 + " mtu=\"1280\"".len() + dns.len());
        assert!(!m.contains("<?xml"));
        assert_eq!(parse_offer(body), Ok(offer()));
    }

    #[test]
    fn router_prefixes_are_written_fully_expanded() {
        let o = Offer {
            router_prefix: Some("2001:db8:1234:5600::/56".parse().unwrap()),
            ..offer()
        };
        let m = offer_message(&o);
        assert!(
            m.contains("<prefix length=\"56\">2001:0db8:1234:5600:0000:0000:0000:0000</prefix>")
        );
        assert_eq!(parse_offer(unframe(m.as_bytes()).unwrap()), Ok(o));
        assert_eq!(
            parse_offer(unframe(Status::ServerTooBusy.framed().as_bytes()).unwrap()),
            Err(530)
        );
    }
}
