//! aiccu 2007.01.15's own lines against `broker run`'s TIC and heartbeat servers: every
//! recorded dialogue is replayed from the host it was recorded on (behind the NAT), and
//! every answer is read as aiccu reads it ([`conformance::aiccu`]). After `starttls`
//! the replay reads TLS as aiccu's GnuTLS does, one record per read, so a record
//! without data (a TLS 1.3 session ticket) fails it as it failed aiccu. Only what aiccu
//! computes from the server's answers is recomputed: the challenge's answer, the tunnel
//! id it was listed, and the heartbeat's epoch and MD5.
use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    sync::Arc,
    time::Duration,
};

use broker_tests::{
    io::uninterrupted,
    lab::{Lab, NAT_PUBLIC, POP_V4},
};
use conformance::{
    aiccu,
    recording::{self, Line, Recording},
};
use md5::{Digest, Md5};
use serde_json::Value;

mod conformance;

fn recorded(name: &'static str) -> Recording {
    let text = match name {
        "aiccu-2007.01.15-tic-clear" => {
            include_str!("../recordings/aiccu-2007.01.15-tic-clear.txt")
        }
        "aiccu-2007.01.15-tic-starttls" => {
            include_str!("../recordings/aiccu-2007.01.15-tic-starttls.txt")
        }
        "aiccu-2007.01.15-tic-heartbeat" => {
            include_str!("../recordings/aiccu-2007.01.15-tic-heartbeat.txt")
        }
        _ => unreachable!(),
    };
    recording::parse(name, text)
}

/// The recorded users: (login, password, tunnel kind for `broker tunnel add`).
const USERS: &[(&str, &str, &str)] = &[
    ("ayiya-demo", "ayiya-password", "ayiya"),
    ("hb-demo", "hb-password", "heartbeat"),
];

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TIC connection as aiccu has it: lines in clear, or after `starttls` TLS read one
/// record per read.
enum Conn {
    Clear(TcpStream),
    Tls(Box<rustls::ClientConnection>, TcpStream),
}

struct Tic {
    conn: Conn,
    /// Read but not yet taken as lines.
    pending: Vec<u8>,
}

impl Tic {
    fn connect() -> Self {
        let s = TcpStream::connect((POP_V4, 3874)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            conn: Conn::Clear(s),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Clear(s) => s.write_all(bytes).unwrap(),
            Conn::Tls(c, s) => {
                c.writer().write_all(bytes).unwrap();
                flush(c, s);
            }
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let mut l: Vec<u8> = self.pending.drain(..=i).collect();
                l.pop();
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return String::from_utf8(l).unwrap();
            }
            match &mut self.conn {
                Conn::Clear(s) => {
                    let mut buf = [0u8; 1024];
                    let n = uninterrupted(|| s.read(&mut buf)).expect("an answer");
                    assert!(n > 0, "the server closed the connection");
                    self.pending.extend_from_slice(&buf[..n]);
                }
                Conn::Tls(c, s) => {
                    // gnutls_record_recv: one record. One without data returns
                    // GNUTLS_E_AGAIN, which aiccu 2007.01.15 cannot handle.
                    let r = record(s);
                    c.read_tls(&mut &r[..]).unwrap();
                    let state = c.process_new_packets().expect("TLS");
                    let n = state.plaintext_bytes_to_read();
                    assert!(
                        n > 0,
                        "a TLS record without data where aiccu reads an answer \
                         (a session ticket?): GnuTLS returns GNUTLS_E_AGAIN and aiccu gives up"
                    );
                    let mut buf = vec![0u8; n];
                    c.reader().read_exact(&mut buf).unwrap();
                    self.pending.extend_from_slice(&buf);
                }
            }
        }
    }

    /// `starttls` was answered 200: the handshake, as a GnuTLS client.
    fn start_tls(&mut self, roots: &rustls::RootCertStore) {
        assert!(self.pending.is_empty(), "bytes after the 200 before TLS");
        let Conn::Clear(s) = &self.conn else {
            panic!("TLS twice")
        };
        let mut s = s.try_clone().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        while c.is_handshaking() {
            flush(&mut c, &mut s);
            if !c.is_handshaking() {
                break;
            }
            let r = record(&mut s);
            c.read_tls(&mut &r[..]).unwrap();
            c.process_new_packets().expect("the TLS handshake");
        }
        flush(&mut c, &mut s);
        self.conn = Conn::Tls(Box::new(c), s);
    }
}

fn flush(c: &mut rustls::ClientConnection, s: &mut TcpStream) {
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    s.write_all(&out).unwrap();
}

/// One TLS record off the wire.
fn record(s: &mut TcpStream) -> Vec<u8> {
    let mut r = vec![0u8; 5];
    s.read_exact(&mut r).expect("a TLS record");
    let len = u16::from_be_bytes([r[3], r[4]]) as usize;
    r.resize(5 + len, 0);
    s.read_exact(&mut r[5..]).expect("the record's body");
    r
}

/// What the replay learnt of the tunnel aiccu fetched.
#[derive(Debug)]
struct Fetched {
    show: std::collections::BTreeMap<String, String>,
}

/// Replays a TIC recording as aiccu runs it; checks every answer as aiccu reads it.
fn replay_tic(r: &Recording, password: &str, roots: &rustls::RootCertStore) -> Fetched {
    let name = r.name;
    let mut tic = Tic::connect();
    aiccu::ok(&tic.line()).unwrap_or_else(|e| panic!("{name}: banner: {e}"));
    let mut challenge = None;
    let mut listed = None;
    let mut show = None;
    let wants_tls = r.lines.contains(&Line::Tls);
    for sent in r.sent() {
        let text = String::from_utf8(sent.clone()).unwrap();
        let line = text.trim_end();
        let word = |w: &str| line.starts_with(w);
        // What aiccu computes from the answers.
        let out = if word("authenticate md5 ") {
            let c: &String = challenge.as_ref().expect("challenge first");
            format!(
                "authenticate md5 {}\n",
                md5_hex(format!("{c}{}", md5_hex(password.as_bytes())).as_bytes())
            )
        } else if word("tunnel show ") {
            format!(
                "tunnel show {}\n",
                listed.as_ref().expect("tunnel list first")
            )
        } else {
            text.clone()
        };
        tic.send(out.as_bytes());
        if word("QUIT") {
            break;
        }
        let answer = tic.line();
        let fail = |e: String| -> ! { panic!("{name}: after {line:?}: {e}") };
        if word("get unixtime") {
            aiccu::unixtime(&answer, now()).unwrap_or_else(|e| fail(e));
        } else if word("starttls") {
            if wants_tls {
                aiccu::ok(&answer).unwrap_or_else(|e| fail(e));
                tic.start_tls(roots);
            } else {
                assert!(!answer.starts_with('2'), "{name}: TLS offered: {answer}");
            }
        } else if word("challenge md5") {
            challenge = Some(aiccu::challenge(&answer).unwrap_or_else(|e| fail(e)));
        } else if word("tunnel list") {
            aiccu::list_start(&answer).unwrap_or_else(|e| fail(e));
            loop {
                let l = tic.line();
                if aiccu::is_list_end(&l) {
                    break;
                }
                let [id, ..] = aiccu::list_entry(&l).unwrap_or_else(|e| fail(e));
                // aiccu takes the first tunnel when none is configured.
                listed.get_or_insert(id);
            }
            assert!(listed.is_some(), "{name}: no tunnel listed");
        } else if word("tunnel show") {
            aiccu::list_start(&answer).unwrap_or_else(|e| fail(e));
            let mut lines = Vec::new();
            loop {
                let l = tic.line();
                if aiccu::is_list_end(&l) {
                    break;
                }
                lines.push(l);
            }
            let keys = aiccu::show(&lines);
            let problems = aiccu::unusable(&keys);
            assert!(problems.is_empty(), "{name}: {problems:?}\n{lines:#?}");
            show = Some(keys);
        } else {
            aiccu::ok(&answer).unwrap_or_else(|e| fail(e));
        }
    }
    Fetched {
        show: show.unwrap_or_else(|| panic!("{name}: no tunnel shown")),
    }
}

/// The `Key: value` lines the server answered with when the recording was made.
fn recorded_fields(r: &Recording) -> Vec<String> {
    r.received()
        .map(|b| String::from_utf8(b.clone()).unwrap())
        .filter(|l| l.contains(": "))
        .collect()
}

/// The `Type` the recording's `tunnel show` gave.
fn recorded_type(r: &Recording) -> String {
    r.received()
        .find_map(|b| {
            std::str::from_utf8(b)
                .ok()?
                .strip_prefix("Type: ")
                .map(str::to_string)
        })
        .unwrap()
}

/// The lab with the recorded users and their tunnels; `tls`: `tic.certificate` set (a
/// throwaway one for "localhost"), whose root is returned.
fn lab(tag: &str, dir: &tempfile::TempDir, tls: bool) -> (Lab, rustls::RootCertStore) {
    broker_tests::require_root();
    let prefix = format!("ca{}{tag}", std::process::id());
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    let mut config = lab.config_yaml(&prefix);
    let mut roots = rustls::RootCertStore::empty();
    if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("tic.pem"), dir.path().join("tic.key"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        roots.add(cert.cert.der().clone()).unwrap();
        let tic = format!(
            "tic:\n  certificate: {}\n  key: {}\n",
            c.display(),
            k.display()
        );
        assert!(config.contains("tic: {}\n"));
        config = config.replace("tic: {}\n", &tic);
    }
    lab.start_broker(&prefix, &config).expect("broker run");
    lab.add_tsp_hosts().expect("the NAT");
    lab.add_sixxs_hosts().expect("the SixXS hosts");
    for (user, password, kind) in USERS {
        lab.cli(&["user", "add", user, "--password", password])
            .unwrap();
        lab.cli(&["tunnel", "add", "--kind", kind, "--owner", user])
            .unwrap();
    }
    (lab, roots)
}

fn password_of(r: &Recording) -> &'static str {
    let user = r
        .sent()
        .find_map(|m| std::str::from_utf8(m).ok()?.strip_prefix("username "))
        .unwrap()
        .trim_end()
        .to_string();
    USERS.iter().find(|(u, ..)| *u == user).unwrap().1
}

#[test]
fn the_recordings_hold_aiccus_whole_dialogue() {
    for name in [
        "aiccu-2007.01.15-tic-clear",
        "aiccu-2007.01.15-tic-starttls",
        "aiccu-2007.01.15-tic-heartbeat",
    ] {
        let r = recorded(name);
        let sent: Vec<String> = r
            .sent()
            .map(|m| String::from_utf8(m.clone()).unwrap())
            .collect();
        let firsts: Vec<&str> = sent
            .iter()
            .map(|l| l.split(' ').next().unwrap().trim_end())
            .collect();
        assert_eq!(
            firsts,
            [
                "client",
                "get",
                "starttls",
                "username",
                "challenge",
                "authenticate",
                "tunnel",
                "tunnel",
                "QUIT"
            ],
            "{name}"
        );
        assert!(sent.iter().all(|l| l.ends_with('\n')), "{name}");
        // What the server said then passes the model too.
        let lines = recorded_fields(&r);
        assert_eq!(aiccu::unusable(&aiccu::show(&lines)), Vec::<String>::new());
    }
}

#[test]
fn the_model_sees_what_would_stop_aiccu() {
    let lines = recorded_fields(&recorded("aiccu-2007.01.15-tic-starttls"));
    for key in [
        "Type",
        "IPv6 Endpoint",
        "Password",
        "Tunnel MTU",
        "IPv4 POP",
    ] {
        let without: Vec<String> = lines
            .iter()
            .filter(|l| !l.starts_with(&format!("{key}: ")))
            .cloned()
            .collect();
        let problems = aiccu::unusable(&aiccu::show(&without));
        assert!(
            problems.iter().any(|p| p.contains(key)),
            "{key}: {problems:?}"
        );
    }
    let disabled: Vec<String> = lines
        .iter()
        .map(|l| l.replace("AdminState: enabled", "AdminState: disabled"))
        .collect();
    assert!(!aiccu::unusable(&aiccu::show(&disabled)).is_empty());
    assert!(aiccu::list_entry("T5 2001:db8:20:1::2 ayiya").is_err());
    assert!(aiccu::unixtime("200 1000", 1000 + 121).is_err());
    assert!(aiccu::unixtime("200 1000", 1000 + 120).is_ok());
    assert!(aiccu::ok("400 no").is_err());
}

#[test]
fn aiccu_in_clear_fetches_its_ayiya_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, roots) = lab("clr", &dir, false);
    let r = recorded("aiccu-2007.01.15-tic-clear");
    let want = recorded_type(&r);
    let got = lab
        .host("a1")
        .within(move || replay_tic(&r, password_of(&r), &roots));
    assert_eq!(got.show["Type"], want);
}

#[test]
fn aiccu_with_starttls_fetches_its_tunnels_and_beats() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, roots) = lab("tls", &dir, true);
    let mut beats = 0;
    for name in [
        "aiccu-2007.01.15-tic-starttls",
        "aiccu-2007.01.15-tic-heartbeat",
    ] {
        let r = recorded(name);
        let want = recorded_type(&r);
        let rec = r.clone();
        let roots = roots.clone();
        let got = lab
            .host("a1")
            .within(move || replay_tic(&rec, password_of(&rec), &roots));
        assert_eq!(got.show["Type"], want, "{name}");
        let Some(Line::Heartbeat { bytes, .. }) =
            r.lines.iter().find(|l| matches!(l, Line::Heartbeat { .. }))
        else {
            continue;
        };
        // aiccu's beat, in its layout, for this tunnel and this second.
        let recorded = String::from_utf8(bytes.clone()).unwrap();
        let f: Vec<&str> = recorded.split(' ').collect();
        assert_eq!(f.len(), 6, "{recorded}");
        assert_eq!((f[0], f[1], f[3]), ("HEARTBEAT", "TUNNEL", "sender"));
        let signed = format!(
            "{} {} {} {} {} ",
            f[0],
            f[1],
            got.show["IPv6 Endpoint"],
            f[3],
            now()
        );
        let beat = format!(
            "{signed}{}",
            md5_hex(format!("{signed}{}", got.show["Password"]).as_bytes())
        );
        assert!(!beat.ends_with('\n'), "aiccu sends no newline");
        let id: u32 = got.show["TunnelId"]
            .trim_start_matches('T')
            .parse()
            .unwrap();
        lab.host("a1").within(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(beat.as_bytes(), (POP_V4, 3740)).unwrap();
        });
        // The heartbeat server took it: the tunnel's endpoint is the NAT's address.
        let mut seen = String::new();
        let taken = (0..50).any(|_| {
            let out = lab.cli(&["tunnel", "list", "--json"]).unwrap();
            let ts: Vec<Value> = serde_json::from_str(&out).unwrap();
            let t = ts.iter().find(|t| t["id"] == id).unwrap();
            seen = t.to_string();
            let ok = t["remote_ipv4"] == NAT_PUBLIC.to_string();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        assert!(taken, "{name}: the beat was not taken: {seen}");
        beats += 1;
    }
    assert_eq!(beats, 1, "the heartbeat recording holds a beat");
}
