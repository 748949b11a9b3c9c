//! `fwd which` and `fwd table` on the README's example config, through the built binary.

use std::process::Command;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/examples/lab.toml");

fn fwd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fwd")).args(args).output().expect("run fwd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn which_names_a_backend_of_the_service_and_always_the_same() {
    let mut seen = std::collections::BTreeSet::new();
    for port in 40000..40200 {
        let src = format!("198.18.0.10:{port}");
        let (code, out, err) =
            fwd(&["which", "--config", LAB, "--proto", "tcp", "--src", &src, "--dst", "198.18.100.1:80"]);
        assert_eq!(code, 0, "{err}");
        let backend = out.trim().to_string();
        assert!(
            ["198.18.2.11:80", "198.18.2.12:80", "198.18.2.13:80"].contains(&backend.as_str()),
            "{backend}"
        );
        let (_, again, _) =
            fwd(&["which", "--config", LAB, "--proto", "tcp", "--src", &src, "--dst", "198.18.100.1:80"]);
        assert_eq!(again.trim(), backend);
        seen.insert(backend);
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "flows spread over all three backends");
    let (code, out, err) = fwd(&[
        "which",
        "--config",
        LAB,
        "--proto",
        "tcp",
        "--src",
        "[fd00::10]:40000",
        "--dst",
        "[fd00:18:100::1]:80",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("[fd00:18:2::1"), "{out}");
}

#[test]
fn which_rejects_flows_no_service_takes() {
    let (code, _, err) = fwd(&[
        "which",
        "--config",
        LAB,
        "--proto",
        "udp",
        "--src",
        "198.18.0.10:1",
        "--dst",
        "198.18.100.1:80",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no service matches 198.18.100.1:80/udp"), "{err}");
    let (code, _, err) = fwd(&[
        "which",
        "--config",
        LAB,
        "--proto",
        "tcp",
        "--src",
        "198.18.0.10:1",
        "--dst",
        "[fd00:18:100::1]:80",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("different address families"), "{err}");
}

#[test]
fn table_shows_slots_shares_and_fingerprint() {
    let (code, out, err) = fwd(&["table", "--config", LAB, "--service", "198.18.100.1:80/tcp"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fingerprint"), "{out}");
    assert_eq!(out.matches("33.33%").count(), 3, "{out}");
    let (code, json, err) = fwd(&["table", "--config", LAB, "--service", "web-v6", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["size"], 65537);
    let slots: u64 = v["backends"].as_array().unwrap().iter().map(|b| b["slots"].as_u64().unwrap()).sum();
    assert_eq!(slots, 65537);
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 16);
    let (code, _, err) = fwd(&["table", "--config", LAB, "--service", "198.18.100.9:80/tcp"]);
    assert_eq!(code, 1);
    assert!(err.contains("no service") && err.contains("web-v4"), "{err}");
}
