//! The `broker` command line where it needs no kernel: config validation.
use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(broker_tests::broker_bin().unwrap())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_the_example_and_names_key_and_line_of_an_error() {
    let example = include_str!("../../docs/examples/broker.yaml");
    let (ok, stdout, stderr) = check(example);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok (instance pop1, 1 interfaces, 2 tunnels)"),
        "{stdout}"
    );

    let bad = example.replace("mtu: 1280", "mtu: 1500");
    let line = bad.lines().position(|l| l.contains("mtu: 1500")).unwrap() + 1;
    let (ok, _, stderr) = check(&bad);
    assert!(!ok, "an MTU of 1500 must be rejected");
    assert!(
        stderr.contains(&format!(
            "line {line}: tunnels[1].mtu: MTU 1500 is outside 1280-1480"
        )),
        "{stderr}"
    );
}
