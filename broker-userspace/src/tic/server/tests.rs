use super::*;
use crate::{
    broker::tests::broker,
    model::{Endpoint, Kind},
    store::NewTunnel,
};
use tokio::io::AsyncBufReadExt;

/// A server on 127.0.0.1 over a broker where alice owns one heartbeat tunnel.
async fn server(config: TicConfig) -> (SocketAddr, u32, String) {
    let mut b = broker();
    b.create_user("alice", Some("wonderland")).unwrap();
    let t = b
        .create_tunnel(&NewTunnel::api(
            Some("alice"),
            Kind::Heartbeat,
            Endpoint::unspecified(Kind::Heartbeat),
        ))
        .await
        .unwrap();
    let pop = PopFacts {
        pop_id: "pop1".into(),
        ipv4: "192.0.2.1".parse().unwrap(),
        ipv6: None,
        heartbeat_interval: 60,
        heartbeat: true,
    };
    let shared = Shared::new(
        Arc::new(Mutex::new(b)),
        config,
        pop,
        Arc::new(Metrics::new(false)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(accept(Arc::new(shared), listener));
    (at, t.spec.id, t.password)
}

#[tokio::test]
async fn the_client_fetches_over_tcp() {
    let (at, id, password) = server(TicConfig::default()).await;
    let t = crate::client::tic::fetch(at, "alice", "wonderland", None)
        .await
        .unwrap();
    assert_eq!(t.id, id);
    assert_eq!(t.kind, "6in4-heartbeat");
    assert_eq!(t.password, password);
    assert_eq!(
        t.ipv4_pop,
        "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    let e = crate::client::tic::fetch(at, "alice", "wrong", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused the login"), "{e}");
}

#[tokio::test]
async fn an_overlong_line_is_refused_and_closes() {
    let (at, _, _) = server(TicConfig {
        max_line: 128,
        ..TicConfig::default()
    })
    .await;
    let stream = TcpStream::connect(at).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    assert!(lines
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .starts_with("200 "));
    w.write_all(&[b'a'; 200]).await.unwrap();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("400 Line too long")
    );
    assert_eq!(lines.next_line().await.unwrap(), None, "closed");
}

/// A TIC server with a throwaway certificate, and a connection to it that has sent
/// `starttls` and read its `200`: the next bytes are the TLS handshake.
async fn upgraded() -> (TcpStream, rcgen::CertifiedKey) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "broker-tic-starttls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (at, _, _) = server(TicConfig {
        certificate: Some(cert_path),
        key: Some(key_path),
        ..TicConfig::default()
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let mut stream = TcpStream::connect(at).await.unwrap();
    assert!(line(&mut stream).await.starts_with("200 "));
    stream.write_all(b"starttls\n").await.unwrap();
    let answer = line(&mut stream).await;
    assert!(answer.starts_with("200 "), "{answer}");
    (stream, cert)
}

/// One line, byte by byte, so that nothing of a TLS stream behind it is read ahead.
async fn line(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

fn client_config(cert: &rcgen::CertifiedKey) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn starttls_upgrades_and_the_dialogue_goes_on_inside() {
    use tokio_rustls::rustls::pki_types::ServerName;
    let (stream, cert) = upgraded().await;
    let connector = tokio_rustls::TlsConnector::from(client_config(&cert));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("the TLS handshake");
    tls.write_all(b"get unixtime\n").await.unwrap();
    let answer = line(&mut tls).await;
    assert!(answer.starts_with("200 "), "inside TLS: {answer}");
    tls.write_all(b"starttls\n").await.unwrap();
    let answer = line(&mut tls).await;
    assert!(answer.starts_with('4'), "no TLS inside TLS: {answer}");
}

/// aiccu 2007.01.15 linked with GnuTLS reads each reply with one `gnutls_record_recv`
/// of one record. A record that carries no application data (a TLS 1.3 session ticket)
/// makes that call return `GNUTLS_E_AGAIN`, which aiccu takes for a huge length and
/// gives up. This client reads as GnuTLS does, one record at a time, and requires the
/// first record after the handshake to be the reply.
#[tokio::test]
async fn after_starttls_the_first_record_is_the_reply_as_gnutls_reads_it() {
    use std::io::{Read, Write};
    use tokio_rustls::rustls::{pki_types::ServerName, ClientConnection};

    /// One TLS record: the 5-byte header and its body.
    async fn record(s: &mut TcpStream) -> Vec<u8> {
        let mut r = vec![0u8; 5];
        s.read_exact(&mut r).await.unwrap();
        let len = u16::from_be_bytes([r[3], r[4]]) as usize;
        r.resize(5 + len, 0);
        s.read_exact(&mut r[5..]).await.unwrap();
        r
    }
    async fn flush(conn: &mut ClientConnection, s: &mut TcpStream) {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        s.write_all(&out).await.unwrap();
    }

    let (mut stream, cert) = upgraded().await;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(client_config(&cert), name).unwrap();
    while conn.is_handshaking() {
        flush(&mut conn, &mut stream).await;
        if !conn.is_handshaking() {
            break;
        }
        let r = record(&mut stream).await;
        conn.read_tls(&mut &r[..]).unwrap();
        conn.process_new_packets().expect("the handshake");
    }
    assert_eq!(
        conn.protocol_version(),
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3),
        "GnuTLS 3.7 negotiates TLS 1.3 with this server: the case to test"
    );
    conn.writer().write_all(b"get unixtime\n").unwrap();
    flush(&mut conn, &mut stream).await;

    let r = record(&mut stream).await;
    conn.read_tls(&mut &r[..]).unwrap();
    let state = conn.process_new_packets().unwrap();
    assert!(
        state.plaintext_bytes_to_read() > 0,
        "the first record after the handshake carried no data (a session ticket?): \
         aiccu's GnuTLS read would return GNUTLS_E_AGAIN"
    );
    let mut answer = vec![0u8; state.plaintext_bytes_to_read()];
    conn.reader().read_exact(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("200 ") && answer.ends_with('\n'),
        "{answer:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let (at, _, _) = server(TicConfig {
        idle_timeout_secs: 1,
        ..TicConfig::default()
    })
    .await;
    let stream = TcpStream::connect(at).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    assert!(lines.next_line().await.unwrap().is_some());
    let end = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
}

#[test]
fn lines_are_cut_at_lf_and_crlf_and_limited() {
    let mut b = b"get unixtime\r\nusername x\nrest".to_vec();
    assert_eq!(take_line(&mut b, 64), Line::Complete("get unixtime".into()));
    assert_eq!(take_line(&mut b, 64), Line::Complete("username x".into()));
    assert_eq!(take_line(&mut b, 64), Line::Partial);
    assert_eq!(b, b"rest");
    // Exactly max bytes before the newline is fine, one more is not.
    let mut b = [vec![b'a'; 8], b"\n".to_vec()].concat();
    assert_eq!(take_line(&mut b, 8), Line::Complete("a".repeat(8)));
    let mut b = [vec![b'a'; 9], b"\n".to_vec()].concat();
    assert_eq!(take_line(&mut b, 8), Line::TooLong);
    // Without a newline at all, too.
    let mut b = vec![b'a'; 9];
    assert_eq!(take_line(&mut b, 8), Line::TooLong);
}

#[test]
fn outcome_labels() {
    let mut p = Progress::default();
    assert_eq!(p.label("closed"), "closed");
    assert_eq!(p.label("quit"), "closed");
    assert_eq!(p.label("timeout"), "timeout");
    p.failed = true;
    assert_eq!(p.label("closed"), "auth_failed");
    p.logged_in = true;
    assert_eq!(p.label("quit"), "ok");
    assert_eq!(p.label("invalid"), "invalid");
}

#[tokio::test(start_paused = true)]
async fn a_byte_now_and_then_does_not_keep_a_session() {
    let (at, _, _) = server(TicConfig {
        idle_timeout_secs: 2,
        ..TicConfig::default()
    })
    .await;
    let stream = TcpStream::connect(at).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    assert!(lines.next_line().await.unwrap().is_some(), "banner");
    // One byte a second, never a line: idle used to mean "no byte", so this held the
    // connection for as long as the sender liked.
    let drip = tokio::spawn(async move {
        for _ in 0..60 {
            if w.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let end = lines.next_line().await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    let held = started.elapsed();
    assert!(held < Duration::from_secs(5), "held {held:?}");
    drip.abort();
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_sessions() {
    let (at, _, _) = server(TicConfig::default()).await;
    let mut held = Vec::new();
    for _ in 0..SESSIONS_PER_SOURCE {
        let stream = TcpStream::connect(at).await.unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let banner = lines.next_line().await.unwrap().unwrap();
        assert!(banner.starts_with("200 "), "{banner}");
        held.push(lines);
    }
    let stream = TcpStream::connect(at).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let answer = lines.next_line().await.unwrap().unwrap();
    assert!(answer.starts_with("400 Too many sessions"), "{answer}");
    let end = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "closed: {end:?}");
    // A session that ends gives its place back.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let stream = TcpStream::connect(at).await.unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        if line.starts_with("200 ") {
            again = Some(line);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the place came back");
}
