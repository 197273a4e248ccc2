//! Framing of TSP messages on both transports.
//!
//! UDP ("RUDP" in gogoc): every datagram is an 8-byte header, `seq | timestamp`, then text.
//! The sequence number's top nibble is 0xF; old HexOS servers read it little-endian, so
//! the signature may be in the first or the fourth byte. The server echoes the header in
//! its reply; the client matches replies by the sequence bytes alone.
//!
//! TCP: a byte stream. gogoc writes each message in one `send` and reads each reply with
//! one `recv`, so messages are told apart by their shape: a line ending in `\n`, or a
//! `Content-length: N` line followed by N bytes. `AUTHENTICATE` lines carry a trailing NUL
//! (gogoc sends `sizeof` the string), which lands in front of the next message: leading
//! NULs are skipped.

/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// The UDP header as received: echoed verbatim in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpHeader(pub [u8; UDP_HEADER_LEN]);

impl UdpHeader {
    /// The sequence number's bytes, which identify a request (retransmissions repeat them).
    pub fn seq(&self) -> [u8; 4] {
        [self.0[0], self.0[1], self.0[2], self.0[3]]
    }
}

/// Why a datagram is not a TSP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    /// Shorter than the header.
    Short,
    /// No 0xF signature in either byte order.
    NotControl,
}

/// Splits a datagram into its header and payload.
pub fn parse_datagram(d: &[u8]) -> Result<(UdpHeader, &[u8]), DatagramError> {
    if d.len() < UDP_HEADER_LEN {
        return Err(DatagramError::Short);
    }
    if d[0] & 0xf0 != 0xf0 && d[3] & 0xf0 != 0xf0 {
        return Err(DatagramError::NotControl);
    }
    let mut h = [0u8; UDP_HEADER_LEN];
    h.copy_from_slice(&d[..UDP_HEADER_LEN]);
    Ok((UdpHeader(h), &d[UDP_HEADER_LEN..]))
}

/// A reply datagram: the request's header, then `payload`.
pub fn datagram(h: &UdpHeader, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(UDP_HEADER_LEN + payload.len());
    v.extend_from_slice(&h.0);
    v.extend_from_slice(payload);
    v
}

/// A client's request header: `seq | 0xF0000000` and milliseconds, network order.
pub fn client_header(seq: u32, millis: u32) -> UdpHeader {
    let mut h = [0u8; UDP_HEADER_LEN];
    h[..4].copy_from_slice(&(seq | 0xf000_0000).to_be_bytes());
    h[4..].copy_from_slice(&millis.to_be_bytes());
    UdpHeader(h)
}

/// The TCP stream cut into messages.
#[derive(Debug, Default)]
pub struct TcpFramer {
    buf: Vec<u8>,
}

/// A TCP message too long to be one (the peer is not a TSP client, or is abusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

const CONTENT_LENGTH: &[u8] = b"content-length:";

impl TcpFramer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived; `max` bounds both a line and a body.
    pub fn next(&mut self, max: usize) -> Result<Option<Vec<u8>>, TooLong> {
        let skip = self.buf.iter().take_while(|b| **b == 0).count();
        self.buf.drain(..skip);
        let Some(eol) = self.buf.iter().position(|b| *b == b'\n') else {
            return if self.buf.len() > max {
                Err(TooLong)
            } else {
                Ok(None)
            };
        };
        let line = &self.buf[..eol];
        let is_framed = line.len() >= CONTENT_LENGTH.len()
            && line[..CONTENT_LENGTH.len()].eq_ignore_ascii_case(CONTENT_LENGTH);
        let end = if is_framed {
            let n: usize = std::str::from_utf8(&line[CONTENT_LENGTH.len()..])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(TooLong)?;
            if n > max {
                return Err(TooLong);
            }
            let end = eol + 1 + n;
            if self.buf.len() < end {
                return Ok(None);
            }
            end
        } else {
            if eol > max {
                return Err(TooLong);
            }
            eol + 1
        };
        Ok(Some(self.buf.drain(..end).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_carry_the_signature_in_either_byte_order() {
        let d = b"\xf0\x00\x00\xf0\x00\x00\x01\x00VERSION=2.0.2\r\n";
        let (h, p) = parse_datagram(d).unwrap();
        assert_eq!(h.seq(), [0xf0, 0, 0, 0xf0]);
        assert_eq!(p, b"VERSION=2.0.2\r\n");
        assert_eq!(
            &datagram(&h, b"x")[..],
            b"\xf0\x00\x00\xf0\x00\x00\x01\x00x"
        );
        // Little-endian senders: signature in the fourth byte.
        assert!(parse_datagram(b"\x01\x01\x00\xf0\x00\x00\x00\x00").is_ok());
        assert_eq!(
            parse_datagram(b"\x60\x00\x00\x00\x00\x00\x00\x00"),
            Err(DatagramError::NotControl)
        );
        assert_eq!(parse_datagram(b"\xf0\x00"), Err(DatagramError::Short));
        // A poll is a header and nothing else.
        assert_eq!(parse_datagram(&[0xf0; 8]).unwrap().1, b"");
        assert_eq!(client_header(240, 5).0, [0xf0, 0, 0, 0xf0, 0, 0, 0, 5]);
    }

    #[test]
    fn tcp_messages_are_lines_or_framed_bodies() {
        let mut f = TcpFramer::default();
        f.push(b"VERSION=2.0.2\r\nAUTHENTICATE PLAIN\r\n\0");
        assert_eq!(f.next(4096).unwrap().unwrap(), b"VERSION=2.0.2\r\n");
        assert_eq!(f.next(4096).unwrap().unwrap(), b"AUTHENTICATE PLAIN\r\n");
        assert_eq!(f.next(4096).unwrap(), None);
        // The NUL left over is skipped; PLAIN credentials start with one too.
        f.push(b"\0user\0pass\r\n");
        assert_eq!(f.next(4096).unwrap().unwrap(), b"user\0pass\r\n");
        let body = "<tunnel action=\"accept\"></tunnel>\r\n";
        let msg = format!("Content-length: {}\r\n{body}", body.len());
        f.push(&msg.as_bytes()[..30]);
        assert_eq!(f.next(4096).unwrap(), None, "body incomplete");
        f.push(&msg.as_bytes()[30..]);
        assert_eq!(f.next(4096).unwrap().unwrap(), msg.as_bytes());
    }

    #[test]
    fn oversized_or_malformed_tcp_messages_are_refused() {
        let mut f = TcpFramer::default();
        f.push(&[b'a'; 100]);
        assert_eq!(f.next(64), Err(TooLong));
        let mut f = TcpFramer::default();
        f.push(b"Content-length: 100000\r\n");
        assert_eq!(f.next(4096), Err(TooLong));
        let mut f = TcpFramer::default();
        f.push(b"Content-length: lots\r\n");
        assert_eq!(f.next(4096), Err(TooLong));
    }
}
