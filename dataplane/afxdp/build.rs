//! Compiles the XDP program (`bpf/fwd_xdp.c`) with clang into OUT_DIR; `src/program.rs` embeds
//! the object with `include_bytes!`.
//!
//! Headers: `bpf_helpers.h` comes from the libbpf that libbpf-sys builds (the same libbpf we link,
//! exported to direct dependents as `DEP_BPF_INCLUDE`); `linux/*.h` from linux-libc-dev, whose
//! `asm/` headers sit in the multiarch directory that clang does not search for the BPF target.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = "bpf/fwd_xdp.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let libbpf_include = env::var("DEP_BPF_INCLUDE")
        .expect("DEP_BPF_INCLUDE not set: libbpf-sys must be a direct dependency of fwd-afxdp");
    let multiarch = multiarch_include(&clang);

    let object = out_dir.join("fwd_xdp.o");
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{libbpf_include}"))
        .arg(format!("-I{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&object);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `{clang}` to build {source}: {e}; install clang (tools/install-deps)")
    });
    assert!(status.success(), "`{cmd:?}` failed ({status}) building the XDP program {source}");
}

/// The directory holding `asm/types.h` for the host, e.g. `/usr/include/x86_64-linux-gnu`.
fn multiarch_include(clang: &str) -> String {
    let triple = Command::new(clang)
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
            format!("{arch}-linux-gnu")
        });
    let dir = format!("/usr/include/{triple}");
    assert!(
        PathBuf::from(&dir).join("asm/types.h").exists(),
        "{dir}/asm/types.h not found: install linux-libc-dev (tools/install-deps)"
    );
    dir
}
