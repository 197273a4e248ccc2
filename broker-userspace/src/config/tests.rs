use super::*;

const GOOD: &str = "\
instance: pop1
interfaces:
  - { name: eth0, mode: driver }
  - name: eth1
pop:
  ipv4: 192.0.2.1
tunnels:
  - id: 1
    kind: proto41
    state: up
    remote_ipv4: 198.51.100.10
    link_prefix: 2001:db8:10:1::/64
    routed_prefixes: [2001:db8:1100::/48]
    mtu: 1480
  - id: 2
    kind: proto41
    remote_ipv4: 198.51.100.20
    link_prefix: 2001:db8:10:2::/64
";

fn err(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be rejected")
}

/// GOOD with one line replaced (1-based), to put a fault at a known line.
fn with_line(n: usize, replacement: &str) -> String {
    GOOD.lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == n { replacement } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn parses_the_documented_example_with_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.instance, "pop1");
    assert_eq!(c.interfaces[0].mode, AttachMode::Driver);
    assert_eq!(c.interfaces[1].mode, AttachMode::Driver);
    assert_eq!(c.pop.ipv4.0.to_string(), "192.0.2.1");
    assert_eq!(c.tunnels.len(), 2);
    assert_eq!(c.tunnels[1].state, TunnelState::Up);
    assert_eq!(c.tunnels[1].mtu, Mtu(1480));
    assert!(c.tunnels[1].routed_prefixes.is_empty());
    assert_eq!(
        c.tunnels[0].routed_prefixes[0].0.to_string(),
        "2001:db8:1100::/48"
    );
    assert_eq!(c.dataplane, DataplaneLimits::default());
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../../docs/examples/broker.yaml");
    Config::parse(text).unwrap();
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("instance: pop1\ninterfaces: [\n");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = err(&with_line(14, "    mtuu: 1480"));
    assert_eq!(e.key, "tunnels[0].mtuu");
    assert!(e.message.contains("unknown field `mtuu`"), "{e}");
    assert_eq!(e.line, Some(14), "{e}");
}

#[test]
fn missing_key_is_named() {
    let e = err(&with_line(12, ""));
    assert!(e.message.contains("missing field `link_prefix`"), "{e}");
    assert_eq!(e.key, "tunnels[0]", "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = err(&with_line(8, "  - id: one"));
    assert_eq!(e.key, "tunnels[0].id", "{e}");
    assert_eq!(e.line, Some(8), "{e}");
}

#[test]
fn mtu_out_of_range_is_rejected_with_key_and_line() {
    for bad in ["1279", "1481", "0", "9000"] {
        let e = err(&with_line(14, &format!("    mtu: {bad}")));
        assert_eq!(e.key, "tunnels[0].mtu", "{e}");
        assert_eq!(e.line, Some(14), "{e}");
        assert_eq!(e.message, format!("MTU {bad} is outside 1280-1480"), "{e}");
    }
    for good in ["1280", "1480"] {
        Config::parse(&with_line(14, &format!("    mtu: {good}"))).unwrap();
    }
}

#[test]
fn wrong_address_family_is_rejected() {
    let e = err(&with_line(6, "  ipv4: 2001:db8::1"));
    assert_eq!(e.key, "pop.ipv4");
    assert_eq!(e.line, Some(6));
    assert!(e.message.contains("expected an IPv4 address"), "{e}");

    let e = err(&with_line(11, "    remote_ipv4: 2001:db8::10"));
    assert_eq!(e.key, "tunnels[0].remote_ipv4");
    assert_eq!(e.line, Some(11));

    let e = err(&with_line(12, "    link_prefix: 10.0.0.0/24"));
    assert_eq!(e.key, "tunnels[0].link_prefix");
    assert!(e.message.contains("expected an IPv6 prefix"), "{e}");

    let e = err(&with_line(13, "    routed_prefixes: [192.0.2.0/24]"));
    assert_eq!(e.key, "tunnels[0].routed_prefixes[0]", "{e}");
    assert_eq!(e.line, Some(13));
}

#[test]
fn link_prefix_must_be_a_64_without_host_bits() {
    let e = err(&with_line(12, "    link_prefix: 2001:db8:10::/48"));
    assert!(e.message.contains("/64"), "{e}");
    let e = err(&with_line(12, "    link_prefix: 2001:db8:10:1::5/64"));
    assert!(e.message.contains("host bits"), "{e}");
}

#[test]
fn duplicate_ids_are_rejected_at_the_second() {
    let e = err(&with_line(15, "  - id: 1"));
    assert_eq!(e.key, "tunnels[1].id");
    assert_eq!(e.line, Some(15));
    assert!(e.message.contains("already used by tunnels[0]"), "{e}");
}

#[test]
fn zero_id_is_rejected() {
    let e = err(&with_line(8, "  - id: 0"));
    assert_eq!(e.key, "tunnels[0].id");
    assert_eq!(e.line, Some(8));
}

#[test]
fn overlapping_prefixes_are_rejected() {
    // Tunnel 2's link /64 inside tunnel 1's routed /48.
    let e = err(&with_line(18, "    link_prefix: 2001:db8:1100:5::/64"));
    assert_eq!(e.key, "tunnels[1].link_prefix", "{e}");
    assert_eq!(e.line, Some(18));
    assert!(
        e.message
            .contains("overlaps 2001:db8:1100::/48 of tunnel 1"),
        "{e}"
    );

    // The same /64 twice.
    let e = err(&with_line(18, "    link_prefix: 2001:db8:10:1::/64"));
    assert!(e.message.contains("overlaps"), "{e}");

    // A routed prefix containing the tunnel's own link prefix.
    let e = err(&with_line(13, "    routed_prefixes: [2001:db8:10::/48]"));
    assert!(e.message.contains("overlaps"), "{e}");
    assert!(matches!(e.line, Some(12 | 13)), "{e}");
}

#[test]
fn adjacent_prefixes_do_not_overlap() {
    let text = with_line(
        13,
        "    routed_prefixes: [2001:db8:1100::/48, 2001:db8:1101::/48]",
    );
    Config::parse(&text).unwrap();
}

#[test]
fn duplicate_endpoint_and_pop_endpoint_are_rejected() {
    let e = err(&with_line(17, "    remote_ipv4: 198.51.100.10"));
    assert_eq!(e.key, "tunnels[1].remote_ipv4");
    assert_eq!(e.line, Some(17));
    let e = err(&with_line(17, "    remote_ipv4: 192.0.2.1"));
    assert!(e.message.contains("PoP's own address"), "{e}");
}

#[test]
fn interfaces_are_checked() {
    let e = err(&with_line(4, "  - name: eth0"));
    assert_eq!(e.key, "interfaces[1].name");
    assert_eq!(e.line, Some(4));
    let e = err(&with_line(4, "  - name: averyveryverylongname"));
    assert_eq!(e.key, "interfaces[1].name");
    let e = err(&with_line(3, "  - { name: eth0, mode: turbo }"));
    assert_eq!(e.key, "interfaces[0].mode", "{e}");
}

#[test]
fn bad_state_and_kind_are_named() {
    let e = err(&with_line(10, "    state: maybe"));
    assert_eq!(e.key, "tunnels[0].state");
    let e = err(&with_line(9, "    kind: gre"));
    assert_eq!(e.key, "tunnels[0].kind");
}

#[test]
fn instance_name_is_checked() {
    let e = err(&with_line(1, "instance: Pop/1"));
    assert_eq!(e.key, "instance");
    assert_eq!(e.line, Some(1));
}

#[test]
fn limits_are_checked() {
    let text = format!("{GOOD}dataplane:\n  max_tunnels: 1\n");
    let e = err(&text);
    assert_eq!(e.key, "tunnels");
    let text = format!("{GOOD}dataplane:\n  max_tunnels: 10\n  max_prefixes: 5\n");
    let e = err(&text);
    assert_eq!(e.key, "dataplane.max_prefixes");
    assert_eq!(e.line, Some(21));
    for (value, key) in [("v4v6: 0", "v4v6"), ("ayiya: 100", "ayiya")] {
        let text = format!(
            "{GOOD}dataplane:\n  max_tunnels: 64\n  max_endpoints:\n    proto41: 64\n    {value}\n"
        );
        assert_eq!(err(&text).key, format!("dataplane.max_endpoints.{key}"));
    }
    let text = format!("{GOOD}dataplane:\n  max_tunnels: 64\n  max_endpoints: {{proto41: 8}}\n");
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.dataplane.max_endpoints.proto41, Some(8));
    assert_eq!(c.dataplane.max_endpoints.v6udpv4, None);
}

#[test]
fn display_names_line_and_key() {
    let e = err(&with_line(14, "    mtu: 9000"));
    assert!(
        e.to_string().starts_with("line 14: tunnels[0].mtu: "),
        "{e}"
    );
}

#[test]
fn routed_prefixes_are_limited_in_length_and_number() {
    let e = err(&with_line(13, "    routed_prefixes: [2001:db8:1100::/80]"));
    assert_eq!(e.key, "tunnels[0].routed_prefixes[0]");
    assert_eq!(e.line, Some(13));
    assert!(e.message.contains("longer than /64"), "{e}");

    let five = "    routed_prefixes: [2001:db8:1100::/48, 2001:db8:1101::/48, 2001:db8:1102::/48, 2001:db8:1103::/48, 2001:db8:1104::/48]";
    let e = err(&with_line(13, five));
    assert_eq!(e.key, "tunnels[0].routed_prefixes");
    assert!(e.message.contains("at most 4"), "{e}");

    // Nine distinct lengths across the config.
    let nine = "    routed_prefixes: [2001:db8:1100::/40, 2001:db8:2000::/41, 2001:db8:3000::/42, 2001:db8:4000::/43]";
    let text = with_line(13, nine).replace(
        "    link_prefix: 2001:db8:10:2::/64",
        "    link_prefix: 2001:db8:10:2::/64\n    routed_prefixes: [2001:db8:5000::/44, 2001:db8:6000::/45, 2001:db8:7000::/46, 2001:db8:8000::/47]",
    );
    let e = err(&text);
    assert!(e.message.contains("distinct prefix length"), "{e}");
    assert_eq!(e.key, "tunnels[1].routed_prefixes[3]");
}

#[test]
fn nexthop_age_is_checked() {
    let e = err(&format!("{GOOD}dataplane:\n  nexthop_max_age_ms: 0\n"));
    assert_eq!(e.key, "dataplane.nexthop_max_age_ms");
    assert_eq!(e.line, Some(20));
}

const TSP: &str = "\
instance: pop1
interfaces: [{ name: eth0 }]
pop:
  ipv4: 192.0.2.1
  ipv6: 2001:db8:ffff::1
pools:
  link: [2001:db8:20::/48]
  v4v6: 203.0.113.128/25
tsp:
  auth: [digest-md5, anonymous]
  tunnel_types: [v6v4, v6udpv4, v4v6]
";

#[test]
fn tsp_defaults_and_what_the_data_plane_gets() {
    let c = Config::parse(TSP).unwrap();
    let t = c.tsp.as_ref().unwrap();
    assert_eq!(t.port, 3653);
    assert_eq!(t.keepalive_secs, 30);
    assert_eq!(t.mtu, Mtu(1280));
    assert_eq!(t.dns_server, std::net::Ipv6Addr::UNSPECIFIED);
    assert_eq!(t.anonymous_per_source, 4);
    let pop = c.pop();
    assert_eq!(pop.tsp_port, Some(3653));
    assert_eq!(pop.v4v6_gateway(), Some("203.0.113.129".parse().unwrap()));
    // Off without the section.
    assert_eq!(Config::parse(GOOD).unwrap().pop().tsp_port, None);
    assert!(Config::parse(&format!(
        "{GOOD}tsp: {{}}\npools:\n  link: [2001:db8:20::/48]\n"
    ))
    .is_ok());
}

#[test]
fn tsp_rejections_name_the_key() {
    let cases = [
        (TSP.replace("  ipv6: 2001:db8:ffff::1\n", ""), "pools.v4v6"),
        (
            TSP.replace("  v4v6: 203.0.113.128/25\n", ""),
            "tsp.tunnel_types",
        ),
        (
            TSP.replace("  link: [2001:db8:20::/48]\n", ""),
            "tsp.tunnel_types",
        ),
        (
            TSP.replace("v4v6: 203.0.113.128/25", "v4v6: 203.0.113.128/31"),
            "pools.v4v6",
        ),
        (
            TSP.replace("v4v6: 203.0.113.128/25", "v4v6: 2001:db8::/64"),
            "pools.v4v6",
        ),
        (format!("{TSP}  keepalive_secs: 2\n"), "tsp.keepalive_secs"),
        (format!("{TSP}  realm: 'a,b'\n"), "tsp.realm"),
        (format!("{TSP}  port: 0\n"), "tsp.port"),
        (format!("{TSP}  max_message: 10\n"), "tsp.max_message"),
        (format!("{TSP}  dns_server: 'ff02::1'\n"), "tsp.dns_server"),
        (format!("{TSP}  dns_server: '::1'\n"), "tsp.dns_server"),
        (format!("{TSP}  dns_server: 192.0.2.53\n"), "tsp.dns_server"),
        (
            format!("{TSP}  anonymous_per_source: 0\n"),
            "tsp.anonymous_per_source",
        ),
        (
            TSP.replace("auth: [digest-md5, anonymous]", "auth: []"),
            "tsp.auth",
        ),
        (
            TSP.replace("auth: [digest-md5, anonymous]", "auth: [kerberos]"),
            "tsp.auth[0]",
        ),
        (
            GOOD.replace(
                "kind: proto41\n    state: up",
                "kind: v6udpv4\n    state: up",
            ),
            "tunnels[0].kind",
        ),
    ];
    for (text, key) in cases {
        let e = err(&text);
        assert_eq!(e.key, key, "{e}");
        assert!(e.line.is_some(), "{e}: no line");
    }
}

#[test]
fn tic_and_heartbeat_defaults() {
    let c = Config::parse(&format!("{GOOD}tic: {{}}\nheartbeat: {{}}\n")).unwrap();
    let t = c.tic.as_ref().unwrap();
    assert_eq!(t.port, 3874);
    assert_eq!(t.max_line, 1024);
    assert_eq!(t.idle_timeout_secs, 60);
    assert_eq!(t.auth_failures_before_delay, 3);
    assert_eq!(t.certificate, None);
    // The POP Id defaults to the instance name.
    assert_eq!(c.tic_pop_id(), "pop1");
    let h = c.heartbeat.as_ref().unwrap();
    assert_eq!((h.port, h.timeout_secs, h.interval_secs), (3740, 120, 60));
    assert_eq!(c.heartbeat_interval(), 60);
    // Off without the sections; TIC alone still hands out an interval.
    let off = Config::parse(GOOD).unwrap();
    assert!(off.tic.is_none() && off.heartbeat.is_none());
    let c = Config::parse(&format!(
        "{GOOD}tic:\n  pop_id: nlams01\nheartbeat:\n  interval_secs: 30\n"
    ))
    .unwrap();
    assert_eq!(c.tic_pop_id(), "nlams01");
    assert_eq!(c.heartbeat_interval(), 30);
}

#[test]
fn tic_and_heartbeat_rejections_name_the_key() {
    let cases = [
        (format!("{GOOD}tic:\n  port: 0\n"), "tic.port"),
        (format!("{GOOD}tic:\n  pop_id: 'two words'\n"), "tic.pop_id"),
        (format!("{GOOD}tic:\n  pop_id: ''\n"), "tic.pop_id"),
        (format!("{GOOD}tic:\n  max_line: 10\n"), "tic.max_line"),
        (
            format!("{GOOD}tic:\n  idle_timeout_secs: 0\n"),
            "tic.idle_timeout_secs",
        ),
        (
            format!("{GOOD}tic:\n  certificate: /nonexistent/cert.pem\n"),
            "tic.key",
        ),
        (
            format!("{GOOD}tic:\n  key: /nonexistent/key.pem\n"),
            "tic.certificate",
        ),
        (
            format!(
                "{GOOD}tic:\n  certificate: /nonexistent/cert.pem\n  key: /nonexistent/key.pem\n"
            ),
            "tic.certificate",
        ),
        (format!("{GOOD}tic:\n  colour: blue\n"), "tic.colour"),
        (format!("{GOOD}heartbeat:\n  port: 0\n"), "heartbeat.port"),
        (
            format!("{GOOD}heartbeat:\n  interval_secs: 5\n"),
            "heartbeat.interval_secs",
        ),
        (
            format!("{GOOD}heartbeat:\n  timeout_secs: 60\n"),
            "heartbeat.timeout_secs",
        ),
        (
            format!("{GOOD}heartbeat:\n  timeout_secs: -1\n"),
            "heartbeat.timeout_secs",
        ),
    ];
    for (text, key) in cases {
        let e = err(&text);
        assert_eq!(e.key, key, "{e}");
        assert!(e.line.is_some(), "{e}: no line");
    }
}

#[test]
fn services_on_one_port_are_refused() {
    let tsp = "tsp: {}\npools:\n  link: [2001:db8:20::/48]\n";
    let cases = [
        (
            format!("{GOOD}{tsp}tic:\n  port: 3653\n"),
            "tic.port",
            "TCP port 3653",
        ),
        (
            format!("{GOOD}ayiya: {{}}\nheartbeat:\n  port: 5072\n"),
            "ayiya.port",
            "UDP port 5072",
        ),
        (
            format!("{GOOD}{tsp}ayiya:\n  port: 3653\n"),
            "ayiya.port",
            "UDP port 3653",
        ),
        (
            format!("{GOOD}{tsp}api:\n  listen: 0.0.0.0:3653\n"),
            "tsp.port",
            "TCP port 3653",
        ),
        (
            format!("{GOOD}api:\n  listen: 127.0.0.1:8080\n  public_listen: 0.0.0.0:8080\n"),
            "api.public_listen",
            "TCP port 8080",
        ),
    ];
    for (text, key, what) in cases {
        let e = err(&text);
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(what), "{e}");
    }
    // TCP and UDP of one number, or one port on two addresses, are fine.
    assert!(Config::parse(&format!(
        "{GOOD}{tsp}heartbeat:\n  port: 3654\ntic:\n  port: 3740\n"
    ))
    .is_ok());
    assert!(Config::parse(&format!(
        "{GOOD}api:\n  listen: 127.0.0.1:3874\ntic: {{}}\n"
    ))
    .is_ok());
}

#[test]
fn the_portals_keys_are_checked_by_name() {
    let c = Config::parse(GOOD).unwrap();
    assert!(c.portal.enabled && c.portal.listen.is_none());
    assert_eq!(c.portal.signup, crate::config::Signup::Closed);
    let c = Config::parse(&format!(
        "{GOOD}portal:\n  signup: invite\n  invite_codes: [abcdefghijkl0123]\n  operators: [olga]\n  listen: 0.0.0.0:8443\n"
    ))
    .unwrap();
    assert_eq!(c.portal.operators, vec!["olga".to_string()]);
    for (yaml, key, what) in [
        (
            "portal:\n  signup: invite\n",
            "portal.invite_codes",
            "at least one",
        ),
        (
            "portal:\n  invite_codes: [short]\n",
            "portal.invite_codes[0]",
            "12-128",
        ),
        (
            "portal:\n  operators: [\"a b\"]\n",
            "portal.operators[0]",
            "not a user name",
        ),
        (
            "portal:\n  session_hours: 0\n",
            "portal.session_hours",
            "1-720",
        ),
        (
            "portal:\n  history_hours: 49\n",
            "portal.history_hours",
            "48",
        ),
        (
            "portal:\n  listen: 127.0.0.1:8080\n",
            "portal.listen",
            "TCP port 8080",
        ),
        ("portal:\n  signup: sometimes\n", "portal.signup", ""),
        ("portal:\n  colour: red\n", "portal", "colour"),
    ] {
        let e = err(&format!("{GOOD}{yaml}"));
        assert!(e.key.starts_with(key), "{yaml}: {e}");
        assert!(e.message.contains(what), "{yaml}: {e}");
    }
    // Off, its listener is no clash.
    assert!(Config::parse(&format!(
        "{GOOD}portal:\n  enabled: false\n  listen: 127.0.0.1:8080\n"
    ))
    .is_ok());
}

#[test]
fn a_token_of_one_repeated_character_is_refused() {
    let e = err(&format!(
        "{GOOD}api:\n  admin_token: aaaaaaaaaaaaaaaaaaaaaaaa\n"
    ));
    assert_eq!(e.key, "api.admin_token");
    assert!(Config::parse(&format!("{GOOD}api:\n  admin_token: 3f8a1c9e4b7d2a6f\n")).is_ok());
}

#[test]
fn deep_nesting_is_refused_at_once_with_its_line() {
    // 40 000 levels took 20 s (and a SIGHUP with it froze the API).
    let deep = format!(
        "{GOOD}extra: {}{}\n",
        "[".repeat(40_000),
        "]".repeat(40_000)
    );
    let start = std::time::Instant::now();
    let e = err(&deep);
    assert!(e.message.contains("nested deeper"), "{e}");
    assert_eq!(e.line, Some(GOOD.lines().count() + 1));
    // Not a timing assertion: a guard against the quadratic path coming back, with a
    // bound a thousand times above what this takes.
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let nested_ok = format!("{GOOD}extra: {}{}\n", "[".repeat(20), "]".repeat(20));
    assert!(!err(&nested_ok).message.contains("nested deeper"));
}

#[test]
fn the_debug_object_is_named_with_an_optional_level() {
    let c = Config::parse(&format!(
        "{GOOD}dataplane:\n  ebpf_log:\n    object: /usr/local/lib/broker/broker-log\n"
    ))
    .unwrap();
    assert_eq!(
        c.dataplane.ebpf_log,
        Some(EbpfLog {
            object: "/usr/local/lib/broker/broker-log".into(),
            level: EbpfLogLevel::Info,
        })
    );
    let c = Config::parse(&format!(
        "{GOOD}dataplane:\n  ebpf_log: {{ object: broker-log, level: trace }}\n"
    ))
    .unwrap();
    assert_eq!(c.dataplane.ebpf_log.unwrap().level, EbpfLogLevel::Trace);
    for (yaml, key) in [
        (
            "ebpf_log:\n    object: x\n    level: loud\n",
            "dataplane.ebpf_log.level",
        ),
        ("ebpf_log:\n    level: info\n", "dataplane.ebpf_log"),
        (
            "ebpf_log:\n    object: x\n    colour: red\n",
            "dataplane.ebpf_log.colour",
        ),
    ] {
        let e = err(&format!("{GOOD}dataplane:\n  {yaml}"));
        assert_eq!(e.key, key, "{yaml}: {e}");
    }
}

#[test]
fn a_postgresql_store_is_one_store_and_keeps_its_password_out() {
    let with = |store: &str| format!("{GOOD}store:\n{store}");
    let c = Config::parse(&with(
        "  url: postgresql://broker@db1.example.net,db2.example.net/broker?target_session_attrs=read-write\n  password_file: /etc/broker/db-password\n",
    ))
    .unwrap();
    assert_eq!(
        c.store_location(),
        StoreLocation::Postgres {
            url: "postgresql://broker@db1.example.net,db2.example.net/broker?target_session_attrs=read-write".into(),
            password_file: Some("/etc/broker/db-password".into()),
            tls_ca_file: None,
        }
    );
    assert_eq!(
        Config::parse(GOOD).unwrap().store_location(),
        StoreLocation::Sqlite("/var/lib/broker/pop1.db".into())
    );
    for (store, key, says) in [
        (
            "  path: /tmp/x.db\n  url: host=/tmp dbname=broker\n",
            "store.url",
            "exclude each other",
        ),
        (
            "  url: postgresql://broker:hunter2@db.example.net/broker\n",
            "store.url",
            "holds a password",
        ),
        (
            "  url: host=/tmp dbname=broker password=hunter2\n",
            "store.url",
            "holds a password",
        ),
        (
            "  url: host=/tmp user=broker\n",
            "store.url",
            "names no database",
        ),
        (
            "  url: \"postgresql://[\"\n",
            "store.url",
            "not a PostgreSQL URL",
        ),
        (
            "  password_file: /etc/broker/db-password\n",
            "store.password_file",
            "not set",
        ),
        (
            "  url: host=db.example.net dbname=broker sslmode=require\n",
            "store.tls_ca_file",
            "verify the server",
        ),
        (
            "  url: host=db.example.net dbname=broker\n  tls_ca_file: /nonexistent/ca.pem\n",
            "store.tls_ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            "  tls_ca_file: /etc/broker/ca.pem\n",
            "store.tls_ca_file",
            "not set",
        ),
        (
            "  url: host=/tmp dbname=broker\n  reconcile_interval_secs: 0\n",
            "store.reconcile_interval_secs",
            "1-3600",
        ),
    ] {
        let e = err(&with(store));
        assert_eq!(e.key, key, "{store}: {e}");
        assert!(e.to_string().contains(says), "{store}: {e}");
    }
}

#[test]
fn the_pops_name_and_its_announce_table_are_checked() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(
        (c.pop_name(), c.tic_pop_id()),
        ("pop1".into(), "pop1".into())
    );
    let named = GOOD.replace("pop:\n", "pop:\n  name: fra-1\n");
    let c = Config::parse(&named).unwrap();
    assert_eq!(
        (c.pop_name(), c.tic_pop_id()),
        ("fra-1".into(), "fra-1".into())
    );
    let e = err(&GOOD.replace("pop:\n", "pop:\n  name: 'two words'\n"));
    assert_eq!(e.key, "pop.name", "{e}");
    for table in ["254", "0", "255"] {
        let e = err(&format!("{GOOD}routes:\n  announce_table: {table}\n"));
        assert_eq!(e.key, "routes.announce_table", "{table}: {e}");
    }
    let c = Config::parse(&format!("{GOOD}routes:\n  announce_table: 100\n")).unwrap();
    assert_eq!(c.routes.announce_table, Some(100));
}
