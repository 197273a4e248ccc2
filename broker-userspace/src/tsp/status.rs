//! TSP status codes (HexOS `hex_tsp_protocol.h`, as gogoc's `gogoc_status.h` copies them).
//! Clients look only at the number (`atoi`); the text is for people reading logs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success = 200,
    AuthenticationFailed = 300,
    NoTunnels = 301,
    UnsupportedVersion = 302,
    UnsupportedTunnelMode = 303,
    ServerError = 310,
    InvalidRequest = 500,
    InvalidIpv4 = 501,
    InvalidIpv6 = 502,
    Ipv4AlreadyUsed = 506,
    PrefixLengthUnavailable = 507,
    DnsDelegationError = 509,
    UnsupportedPrefixLength = 518,
    MissingPrefixLength = 520,
    RequestInProgress = 521,
    PrefixForAnonymous = 522,
    ServerTooBusy = 530,
}

impl Status {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn text(self) -> &'static str {
        match self {
            Status::Success => "Success",
            Status::AuthenticationFailed => "Authentication failed",
            Status::NoTunnels => "No more tunnels available",
            Status::UnsupportedVersion => "Unsupported client version",
            Status::UnsupportedTunnelMode => "Unsupported tunnel mode",
            Status::ServerError => "Server side error",
            Status::InvalidRequest => "Invalid request",
            Status::InvalidIpv4 => "Invalid IPv4 address",
            Status::InvalidIpv6 => "Invalid IPv6 address",
            Status::Ipv4AlreadyUsed => "IPv4 address already used",
            Status::PrefixLengthUnavailable => "Requested prefix length unavailable",
            Status::DnsDelegationError => "DNS delegation error",
            Status::UnsupportedPrefixLength => "Unsupported prefix length",
            Status::MissingPrefixLength => "Missing prefix length",
            Status::RequestInProgress => "Request in progress",
            Status::PrefixForAnonymous => "Prefix requested by anonymous user",
            Status::ServerTooBusy => "Server too busy",
        }
    }

    /// The status line, `200 Success\r\n`.
    pub fn line(self) -> String {
        format!("{} {}\r\n", self.code(), self.text())
    }

    /// The status line framed as the tunnel stage needs it: `Content-length` first, so
    /// the client reads the code and stops rather than treating it as a broken socket.
    pub fn framed(self) -> String {
        frame(&self.line())
    }
}

/// `Content-length: N\r\n` and `body`, N being the bytes of `body`.
pub fn frame(body: &str) -> String {
    format!("Content-length: {}\r\n{body}", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_frames() {
        assert_eq!(Status::Success.line(), "200 Success\r\n");
        assert_eq!(
            Status::UnsupportedVersion.line(),
            "302 Unsupported client version\r\n"
        );
        assert_eq!(
            Status::PrefixForAnonymous.framed(),
            "Content-length: 40\r\n522 Prefix requested by anonymous user\r\n"
        );
    }
}
