//! The portal in a real browser: Debian's chromium, driven through WebDriver
//! (fantoccini), in a lab client's namespace, against the real `broker run` in the PoP.
//! A user signs up, logs in, makes a tunnel, runs the Linux configuration its page shows
//! in that client's namespace until it pings through the tunnel, moves its endpoint,
//! watches its counters, and deletes it; an operator disables a user's tunnel, which the
//! user then sees and cannot enable; a form without its CSRF token is refused; another
//! user's tunnel is not found by its URL. The pages are photographed on the way
//! (docs/PORTAL.md shows them).
use std::path::Path;

use broker_tests::{
    broker_bin,
    browser::{screenshot_dir, WebDriver},
    lab::{Lab, INET6_HOST, LAB_OPERATOR, POP_V4},
};
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};

const PASSWORD: &str = "correct-horse-battery";

fn portal() -> String {
    format!("http://{POP_V4}:{}", broker_tests::lab::API_PORT)
}

async fn browser(wd: &WebDriver) -> Client {
    // Several crypto providers are linked in; the WebDriver client's TLS (unused: it
    // speaks plain HTTP to the relay) still needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("a TLS setup for the WebDriver client")
        .capabilities(wd.capabilities())
        .connect(&wd.url)
        .await
        .unwrap_or_else(|e| panic!("a chromium session: {e}; chromedriver's log:\n{}", wd.log()))
}

async fn go(c: &Client, path: &str) {
    c.goto(&format!("{}{path}", portal())).await.expect(path);
}

async fn find(c: &Client, css: &str) -> Element {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => panic!(
            "no {css} ({e}) on {}:\n{}",
            c.current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            c.source().await.unwrap_or_default()
        ),
    }
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = find(c, css).await;
    e.clear().await.expect("clearing a field");
    e.send_keys(value).await.expect("typing");
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.expect(css);
}

/// Clicks a form's button and waits for the page it leads to (the old one goes stale).
async fn submit(c: &Client, css: &str) {
    let old = find(c, "html").await;
    click(c, css).await;
    for _ in 0..100 {
        if old.tag_name().await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no new page after clicking {css}");
}

/// The text of an element, also where it is not displayed (a closed `<details>`).
async fn text(c: &Client, css: &str) -> String {
    find(c, css)
        .await
        .prop("textContent")
        .await
        .expect("textContent")
        .unwrap_or_default()
}

async fn body(c: &Client) -> String {
    text(c, "body").await
}

async fn path(c: &Client) -> String {
    let u = c.current_url().await.expect("url");
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

async fn shot(c: &Client, dir: &Path, name: &str, height: u32) {
    c.set_window_size(1280, height).await.expect("window size");
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("writing a screenshot");
}

async fn signup(c: &Client, name: &str) {
    go(c, "/signup").await;
    fill(c, "#f-name", name).await;
    fill(c, "#f-password", PASSWORD).await;
    fill(c, "#f-password2", PASSWORD).await;
    submit(c, "form[action='/signup'] button[type=submit]").await;
    assert_eq!(path(c).await, "/tunnels?done=welcome", "{}", body(c).await);
}

/// Runs the tunnel page's Linux configuration in client 1's namespace: the `ip` lines
/// as written; where the kernel has no `sit`, the `broker client proto41` line the page
/// gives for that case instead. Returns the client's process, if one was started.
fn run_linux_config(lab: &mut Lab, config: &str) -> Option<usize> {
    let commands: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        commands[0].starts_with("ip tunnel add "),
        "the first command makes the tunnel: {config}"
    );
    let ns = &lab.clients[0].ns;
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let first = words(commands[0]);
    let refs: Vec<&str> = first[1..].iter().map(String::as_str).collect();
    if ns.exec("ip", &refs).is_ok() {
        for line in &commands[1..] {
            let w = words(line);
            let refs: Vec<&str> = w[1..].iter().map(String::as_str).collect();
            ns.exec(&w[0], &refs)
                .unwrap_or_else(|e| panic!("{line}: {e:#}"));
        }
        return None;
    }
    // No sit module here: the page's own line for this case.
    let line = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("# broker client proto41 "))
        .unwrap_or_else(|| panic!("no broker client line in {config}"));
    let bin = broker_bin().expect("the broker binary");
    let mut args = vec!["client", "proto41"];
    args.extend(line.split_whitespace());
    Some(
        lab.spawn_in_client(1, "portal client", bin.to_str().expect("path"), &args)
            .expect("starting the client"),
    )
}

/// The packets "From you" the tunnel's page counts.
async fn from_you(c: &Client) -> u64 {
    c.refresh().await.expect("reload");
    let t = text(c, "#counters").await;
    let from = t.split("From you").nth(1).unwrap_or_default();
    from.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counters in {t}"))
}

fn tunnel_state(lab: &Lab, id: u32) -> (u16, String) {
    lab.admin_request("GET", &format!("/api/v1/tunnels/{id}"), None)
        .expect("the API answers")
}

#[test]
fn a_user_and_an_operator_in_a_real_browser() {
    broker_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bp{}", std::process::id());
    let mut lab = Lab::create(&prefix, 2, dir.path()).expect("the lab");
    // The lab's portal (open sign-up, LAB_OPERATOR the operator), and no static
    // tunnels: this test's are made in the browser.
    let config = lab.config_yaml(&prefix);
    let config = format!(
        "{}tunnels: []\n",
        config.split("tunnels:\n").next().unwrap()
    );
    lab.start_broker(&prefix, &config).expect("broker run");
    let wd =
        WebDriver::start(&lab.clients[0].ns, &dir.path().join("browser")).expect("chromedriver");
    let shots = screenshot_dir(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ann = browser(&wd).await;

        // Sign up, log out, log in.
        go(&ann, "/login").await;
        signup(&ann, "ann").await;
        submit(&ann, "form.logout button").await;
        assert_eq!(path(&ann).await, "/login?done=logout");
        fill(&ann, "#f-name", "ann").await;
        fill(&ann, "#f-password", "not-the-password").await;
        submit(&ann, "form[action='/login'] button[type=submit]").await;
        assert!(text(&ann, "#e-password")
            .await
            .contains("Wrong user name or password"));
        fill(&ann, "#f-password", PASSWORD).await;
        shot(&ann, &shots, "login", 700).await;
        submit(&ann, "form[action='/login'] button[type=submit]").await;
        assert_eq!(path(&ann).await, "/tunnels");

        // A tunnel: first with an MTU too large, said at its field.
        go(&ann, "/tunnels/new").await;
        let prefilled = find(&ann, "#f-remote_ipv4")
            .await
            .prop("value")
            .await
            .unwrap();
        assert_eq!(
            prefilled.as_deref(),
            Some("198.51.100.10"),
            "the address the portal sees"
        );
        click(&ann, "#f-routed_prefix_length option[value='56']").await;
        fill(&ann, "#f-mtu", "9000").await;
        submit(&ann, "form[action='/tunnels/new'] button[type=submit]").await;
        assert!(
            text(&ann, "#e-mtu").await.contains("1480"),
            "{}",
            body(&ann).await
        );
        shot(&ann, &shots, "tunnel-new-error", 1100).await;
        fill(&ann, "#f-mtu", "").await;
        submit(&ann, "form[action='/tunnels/new'] button[type=submit]").await;
        let at = path(&ann).await;
        let id: u32 = at
            .strip_prefix("/tunnels/")
            .and_then(|r| r.strip_suffix("?done=created"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("not a new tunnel's page: {at}"));

        // Its Linux configuration, run as written, forwards.
        let linux = text(&ann, "#config-linux").await;
        let client = run_linux_config(&mut lab, &linux);
        lab.wait_reachable(1, INET6_HOST)
            .expect("pinging through the portal's tunnel");
        let before = from_you(&ann).await;
        assert!(before >= 1, "the pings were counted");
        // Large enough for the graph, which counts whole KiB.
        lab.clients[0]
            .ns
            .exec(
                "ping",
                &[
                    "-6",
                    "-n",
                    "-c",
                    "5",
                    "-i",
                    "0.2",
                    "-s",
                    "1200",
                    "-W",
                    "2",
                    &INET6_HOST.to_string(),
                ],
            )
            .expect("pings");
        let after = from_you(&ann).await;
        assert!(after >= before + 5, "counters move: {before} -> {after}");
        assert!(
            text(&ann, "figcaption").await.contains("peak"),
            "the graph shows the pings"
        );
        assert!(
            body(&ann).await.contains("within the last minute"),
            "the client was heard"
        );

        // The endpoint moves to the client's second address; the page's new config runs.
        fill(&ann, "#f-remote_ipv4", "198.51.100.11").await;
        submit(
            &ann,
            &format!("form[action='/tunnels/{id}'] button[type=submit]"),
        )
        .await;
        assert_eq!(path(&ann).await, format!("/tunnels/{id}?done=changed"));
        assert_eq!(text(&ann, "#tunnel-endpoint").await, "198.51.100.11");
        if let Some(idx) = client {
            lab.stop_proc(idx);
        }
        let linux = text(&ann, "#config-linux").await;
        assert!(linux.contains("local 198.51.100.11"), "{linux}");
        let client = run_linux_config(&mut lab, &linux);
        lab.wait_reachable(1, INET6_HOST)
            .expect("pinging from the new endpoint");
        shot(&ann, &shots, "tunnel", 2600).await;
        ann.set_window_size(412, 2400).await.unwrap();
        shot_narrow(&ann, &shots, "tunnel-phone").await;
        go(&ann, "/tunnels").await;
        shot(&ann, &shots, "tunnels", 1300).await;

        // A form whose CSRF token was taken out is refused, and changes nothing.
        go(&ann, &format!("/tunnels/{id}")).await;
        ann.execute(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove());",
            vec![],
        )
        .await
        .unwrap();
        fill(&ann, "#f-mtu", "1300").await;
        submit(
            &ann,
            &format!("form[action='/tunnels/{id}'] button[type=submit]"),
        )
        .await;
        assert!(body(&ann).await.contains("did not come from this portal"));
        assert!(tunnel_state(&lab, id).1.contains("\"mtu\":1480"));

        // The operator disables the tunnel; its user sees it and cannot enable it.
        // The operator's account is the administrator's to make (sign-up refuses an
        // operator's name).
        let made = lab.admin_request(
            "POST",
            "/api/v1/users",
            Some(&format!(
                r#"{{"name":"{LAB_OPERATOR}","password":"{PASSWORD}"}}"#
            )),
        );
        assert_eq!(made.map(|m| m.0), Some(201));
        let olga = browser(&wd).await;
        go(&olga, "/login").await;
        fill(&olga, "#f-name", LAB_OPERATOR).await;
        fill(&olga, "#f-password", PASSWORD).await;
        submit(&olga, "form[action='/login'] button[type=submit]").await;
        assert_eq!(path(&olga).await, "/tunnels");
        go(&olga, "/operator/tunnels?owner=ann").await;
        shot(&olga, &shots, "operator-tunnels", 700).await;
        submit(&olga, &format!("#tunnel-{id} button")).await;
        assert_eq!(
            path(&olga).await,
            "/operator/tunnels?owner=ann&done=disabled"
        );
        assert!(tunnel_state(&lab, id).1.contains("\"state\":\"disabled\""));
        lab.ping(1, INET6_HOST, 2, "0.2")
            .expect_err("a disabled tunnel carries nothing");
        go(&ann, &format!("/tunnels/{id}")).await;
        assert_eq!(text(&ann, "#tunnel-state").await, "disabled");
        click(&ann, "#f-state option[value='up']").await;
        submit(
            &ann,
            &format!("form[action='/tunnels/{id}'] button[type=submit]"),
        )
        .await;
        assert!(text(&ann, "#e-state").await.contains("only the operator"));
        shot(&ann, &shots, "tunnel-disabled", 1000).await;
        assert!(tunnel_state(&lab, id).1.contains("\"state\":\"disabled\""));
        for (page, name) in [
            ("/operator/users", "operator-users"),
            ("/operator/counters", "operator-counters"),
            ("/operator/pops", "operator-pops"),
        ] {
            go(&olga, page).await;
            shot(&olga, &shots, name, 1000).await;
        }
        assert!(body(&olga).await.contains("healthy"));
        go(&olga, "/operator/tunnels?owner=ann").await;
        submit(&olga, &format!("#tunnel-{id} button")).await;
        lab.wait_reachable(1, INET6_HOST)
            .expect("enabled again, it forwards");

        // Another user guessing the tunnel's URL finds nothing.
        submit(&olga, "form.logout button").await;
        signup(&olga, "bob").await;
        go(&olga, &format!("/tunnels/{id}")).await;
        assert!(
            body(&olga).await.contains("no tunnel"),
            "{}",
            body(&olga).await
        );
        assert!(!body(&olga).await.contains("198.51.100.11"));

        // Deleted, it is gone from the list, the store and the data plane.
        go(&ann, &format!("/tunnels/{id}")).await;
        click(&ann, "#f-confirm").await;
        submit(&ann, &format!("form[action='/tunnels/{id}/delete'] button")).await;
        assert_eq!(path(&ann).await, "/tunnels?done=deleted");
        assert!(!body(&ann).await.contains(&format!("T{id}")));
        assert_eq!(tunnel_state(&lab, id).0, 404);
        lab.ping(1, INET6_HOST, 2, "0.2")
            .expect_err("a deleted tunnel carries nothing");
        if let Some(idx) = client {
            lab.stop_proc(idx);
        }
        for c in [ann, olga] {
            c.close().await.expect("ending the browser session");
        }
    });
    drop(wd);
}

/// A screenshot at the window's present (phone) width.
async fn shot_narrow(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("writing a screenshot");
}
