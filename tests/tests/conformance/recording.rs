//! The recordings' format: `#` comments, then `transport udp|tcp|tic`, an optional
//! `client <address>`, and one line per message in order:
//!
//! ```text
//! C> [seq ts] "bytes"     the client sent (UDP: the 8-byte header as two hex words)
//! S< [seq ts] "bytes"     the server answered then (for reference)
//! tls                     the connection switched to TLS here (TIC `starttls`)
//! H> <address> "bytes"    a heartbeat datagram from that address
//! ```
//!
//! Bytes are written as in Rust strings: `\r`, `\n`, `\t`, `\0`, `\\`, `\"`, `\xNN`.
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Client {
        header: Option<[u8; 8]>,
        bytes: Vec<u8>,
    },
    Server {
        header: Option<[u8; 8]>,
        bytes: Vec<u8>,
    },
    Tls,
    Heartbeat {
        from: IpAddr,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct Recording {
    pub name: &'static str,
    pub transport: Transport,
    pub client: Option<IpAddr>,
    pub lines: Vec<Line>,
}

impl Recording {
    /// What the client sent, in order.
    pub fn sent(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.lines.iter().filter_map(|l| match l {
            Line::Client { bytes, .. } => Some(bytes),
            _ => None,
        })
    }

    /// What the server answered when the recording was made, in order.
    pub fn received(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.lines.iter().filter_map(|l| match l {
            Line::Server { bytes, .. } => Some(bytes),
            _ => None,
        })
    }
}

/// Reads a recording; panics with the line number on anything malformed (the files are
/// part of the tests).
pub fn parse(name: &'static str, text: &str) -> Recording {
    let mut transport = None;
    let mut client = None;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = |what: &str| -> ! { panic!("{name}:{}: {what}: {raw}", i + 1) };
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "transport" => {
                transport = Some(match rest {
                    "udp" => Transport::Udp,
                    "tcp" => Transport::Tcp,
                    "tic" => Transport::Tic,
                    _ => at("unknown transport"),
                })
            }
            "client" => client = Some(rest.parse().unwrap_or_else(|_| at("bad address"))),
            "tls" => lines.push(Line::Tls),
            "C>" | "S<" => {
                let (header, quoted) = if rest.starts_with('"') {
                    (None, rest)
                } else {
                    let mut parts = rest.splitn(3, ' ');
                    let seq = parts.next().unwrap_or_default();
                    let ts = parts.next().unwrap_or_default();
                    let h = hex8(&format!("{seq}{ts}")).unwrap_or_else(|| at("bad header"));
                    (Some(h), parts.next().unwrap_or_else(|| at("no bytes")))
                };
                let bytes = unquote(quoted).unwrap_or_else(|| at("bad quoting"));
                lines.push(if word == "C>" {
                    Line::Client { header, bytes }
                } else {
                    Line::Server { header, bytes }
                });
            }
            "H>" => {
                let (from, quoted) = rest.split_once(' ').unwrap_or_else(|| at("no bytes"));
                lines.push(Line::Heartbeat {
                    from: from.parse().unwrap_or_else(|_| at("bad address")),
                    bytes: unquote(quoted).unwrap_or_else(|| at("bad quoting")),
                });
            }
            _ => at("unknown line"),
        }
    }
    Recording {
        name,
        transport: transport.unwrap_or_else(|| panic!("{name}: no transport line")),
        client,
        lines,
    }
}

fn hex8(s: &str) -> Option<[u8; 8]> {
    if s.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unquote(s: &str) -> Option<Vec<u8>> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Vec::new();
    let mut chars = inner.bytes();
    while let Some(c) = chars.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            b'r' => b'\r',
            b'n' => b'\n',
            b't' => b'\t',
            b'0' => 0,
            b'\\' => b'\\',
            b'"' => b'"',
            b'x' => {
                let h = [chars.next()?, chars.next()?];
                u8::from_str_radix(std::str::from_utf8(&h).ok()?, 16).ok()?
            }
            _ => return None,
        });
    }
    Some(out)
}
