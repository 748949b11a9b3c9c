//! `fwd check-config` as operators run it: the built binary, its output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fwd")).arg("check-config").arg(file).output().expect("run fwd")
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/examples").join(name)
}

/// A file of this test's own in the target directory's temporary area.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check_config");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

#[test]
fn valid_file_prints_the_summary_and_exits_0() {
    let out = check_config(&example("lab.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "ok: 3 services (2 IPv4, 1 IPv6), 9 backends, modes l2");
    assert!(out.stderr.is_empty());
}

#[test]
fn warnings_are_printed_and_still_exit_0() {
    let text =
        "maglev_table_size = 251\n[[services]]\nvip = \"198.18.100.1\"\nprotocol = \"tcp\"\nport = 80\n\
                mode = \"l2\"\n[[services.backends]]\naddress = \"198.18.2.11\"\n[[services.backends]]\n\
                address = \"198.18.2.12\"\n[[services.backends]]\naddress = \"198.18.2.13\"\n";
    let path = scratch_file("small-table.toml", text);
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("warning: ") && stderr.contains("maglev_table_size") && stderr.contains("1%"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 1 service"));
}

#[test]
fn invalid_file_prints_the_error_and_exits_2() {
    let text = "[[services]]\nvip = \"198.18.100.1\"\nprotocol = \"tcp\"\nport = 80\nmode = \"l2\"\n\
                [[services.backends]]\naddress = \"198.18.2.11\"\nweight = 70000\n";
    let path = scratch_file("bad-weight.toml", text);
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    let want =
        format!("error: {}:8:10: services[0].backends[0].weight: 70000 is out of range", path.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(stderr.contains("0..=65535"), "{stderr}");
}

#[test]
fn missing_file_exits_2() {
    let out = check_config(Path::new("/nonexistent/fwd.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fwd.toml: cannot read"));
}
