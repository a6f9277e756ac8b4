//! The ARCHITECTURE.md invariants that are about where code may do something, checked over the
//! source tree: a new file that dials, or a verifier that skips checks, fails here. (That only
//! the pool writes the pool gauges is the type system's job: they are rendered from pool state.)

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (file relative to the crate, line) for every line of `src/` that contains one of `needles`.
fn occurrences(needles: &[&str]) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let name = file.strip_prefix(root).unwrap().display().to_string();
        for line in text.lines() {
            if needles.iter().any(|n| line.contains(n)) {
                found.push((name.clone(), line.trim().to_owned()));
            }
        }
    }
    found
}

#[test]
fn nothing_dials_outside_connect() {
    let dialers = occurrences(&["TcpStream::connect", "TcpSocket", "UdpSocket", "UnixStream"]);
    let outside: Vec<_> = dialers
        .iter()
        .filter(|(file, _)| !file.starts_with("src/connect/"))
        // `sidepool health` asks the admin listener's /readyz: not an upstream.
        .filter(|(file, line)| !(file == "src/cli.rs" && line.contains("TcpStream::connect(addr)")))
        // A unit test's loopback client for the tunnel stream.
        .filter(|(file, line)| {
            !(file == "src/proxy/quick_ack.rs" && line.contains("TcpStream::connect(addr)"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "sockets opened outside src/connect: {outside:#?}"
    );
    assert!(
        dialers
            .iter()
            .any(|(file, _)| file.starts_with("src/connect/")),
        "the check looks in the right place"
    );
}

#[test]
fn no_code_path_skips_certificate_checks() {
    let found = occurrences(&[
        "dangerous()",
        "impl ServerCertVerifier",
        "impl rustls::client::danger::ServerCertVerifier",
        "danger_accept_invalid",
        "NoCertificateVerification",
    ]);
    assert!(
        found.is_empty(),
        "a way around certificate checks: {found:#?}"
    );
}
