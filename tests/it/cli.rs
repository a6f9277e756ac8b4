use crate::support::harness::{binary, config_file, config_toml, https};

fn check(tag: &str, toml: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let path = config_file(&format!("{tag}.toml"), toml);
    let mut command = binary();
    command.arg("check").arg("--config").arg(&path);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("run sidepool check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn valid() -> String {
    config_toml("", &[https("ex", "exchange.test", 8443)])
}

#[test]
fn valid_config_passes_and_prints_the_effective_config() {
    let (code, stdout, stderr) = check("valid", &valid(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[upstreams.ex]"), "{stdout}");
    assert!(
        stdout.contains("max_connections_per_host = 30"),
        "defaults are resolved per upstream: {stdout}"
    );
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    let toml = valid().replace("[pool]", "[pool]\nmax_conections = 5");
    let (code, _, stderr) = check("unknown", &toml, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("pool.max_conections"), "{stderr}");
    assert!(stderr.contains("unknown.toml"), "names the file: {stderr}");
}

#[test]
fn bad_duration_exits_2_naming_the_key() {
    let toml = valid().replace("queue_timeout = \"3s\"", "queue_timeout = \"3 parsecs\"");
    let (code, _, stderr) = check("duration", &toml, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("pool.queue_timeout"), "{stderr}");
}

#[test]
fn bad_url_exits_2_naming_the_key() {
    let toml = valid().replace(
        "url = \"https://exchange.test:8443\"",
        "url = \"ftp://exchange.test/?x=1\"",
    );
    let (code, _, stderr) = check("url", &toml, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("upstreams.ex.url"), "{stderr}");
}

#[test]
fn environment_overrides_the_file() {
    let (code, stdout, stderr) = check(
        "env",
        &valid(),
        &[
            ("SIDEPOOL_LISTEN__PROXY", "127.0.0.1:18080"),
            ("SIDEPOOL_UPSTREAMS__EX__MAX_CONNECTIONS_PER_HOST", "5"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("proxy = \"127.0.0.1:18080\""), "{stdout}");
    assert!(stdout.contains("max_connections_per_host = 5"), "{stdout}");
    let (code, _, stderr) = check(
        "env-bad",
        &valid(),
        &[("SIDEPOOL_POOL__MAX_CONNECTIONS", "lots")],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("SIDEPOOL_POOL__MAX_CONNECTIONS")
            || stderr.contains("pool.max_connections"),
        "{stderr}"
    );
}

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sidepool.toml");
    let out = binary()
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_and_help() {
    let out = binary().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sidepool "));
    let out = binary().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("sidepool check"));
    let out = binary().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn health_subcommand_reports_readiness() {
    let upstream = crate::support::upstream::TestUpstream::builder()
        .start()
        .await;
    let sidepool = crate::support::harness::Sidepool::for_upstream(&upstream, "").await;
    let admin = sidepool.admin.to_string();
    let ready = tokio::task::spawn_blocking(move || {
        binary()
            .args(["health", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stdout)
    );
    let nobody = format!("127.0.0.1:{}", crate::support::harness::closed_port());
    let down = tokio::task::spawn_blocking(move || {
        binary()
            .args(["health", "--admin", &nobody])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(1));
}

#[test]
fn check_warns_when_the_proxy_listener_is_off_loopback() {
    let toml = valid().replace("proxy = \"127.0.0.1:0\"", "proxy = \"0.0.0.0:18080\"");
    let (code, stdout, stderr) = check("off-loopback", &toml, &[]);
    assert_eq!(code, 0, "a warning, not an error: {stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning line: {stderr}"));
    assert!(
        warning.contains("off-loopback.toml: listen.proxy:")
            && warning.contains("not a loopback address")
            && warning.contains("no authentication"),
        "{warning}"
    );
    assert!(stdout.contains("proxy = \"0.0.0.0:18080\""), "{stdout}");
    // On loopback: no warning.
    let (code, _, stderr) = check("on-loopback", &valid(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn check_prints_the_effective_per_host_cap_and_notes_the_lowering() {
    let toml = valid().replace("[pool]", "[pool]\nmax_connections = 20");
    let (code, stdout, stderr) = check("lowered", &toml, &[]);
    assert_eq!(
        code, 0,
        "a per-host cap above the global cap is accepted: {stderr}"
    );
    assert!(stdout.contains("max_connections = 20"), "{stdout}");
    assert!(
        stdout.contains("max_connections_per_host = 20"),
        "the dump shows the effective cap: {stdout}"
    );
    assert!(
        stderr.contains(
            "note: default: upstreams.ex.max_connections_per_host: 30 is above \
             pool.max_connections; the effective cap is 20"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_connections_limit_metric_is_the_effective_per_host_cap() {
    let upstream = crate::support::upstream::TestUpstream::builder()
        .start()
        .await;
    let sidepool =
        crate::support::harness::Sidepool::for_upstream(&upstream, "max_connections = 4\n").await;
    assert_eq!(
        sidepool
            .metric("http_pool_connections_limit", "upstream=\"ex\"")
            .await,
        Some(4.0),
        "min(per-host 30, global 4)"
    );
}

#[test]
fn start_warns_off_loopback_and_a_failed_bind_prints_its_cause() {
    // The port is taken on loopback, so binding every address on it fails: the test never
    // listens off loopback, and the failure shows the error's cause.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let toml = valid().replace(
        "proxy = \"127.0.0.1:0\"",
        &format!("proxy = \"0.0.0.0:{port}\""),
    );
    let path = config_file("start-off-loopback.toml", &toml);
    let out = binary()
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sidepool");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning logged at start: {stderr}"));
    assert!(
        warning.contains("listen.proxy") && warning.contains("not a loopback address"),
        "{warning}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    // The message, then its source (the OS error), on one line.
    let expected = format!("error: listen.proxy: cannot listen on 0.0.0.0:{port}: ");
    assert!(error.starts_with(&expected), "{error}");
    assert!(error.contains("os error"), "the cause is kept: {error}");
    drop(taken);
}

#[test]
fn ca_subcommand_makes_the_ca_once_and_prints_only_its_certificate() {
    let dir = crate::support::certs::temp_dir().join("cli-ca");
    let _ = std::fs::remove_dir_all(&dir);
    let toml = format!("{}\n[intercept]\nca_dir = \"{}\"\n", valid(), dir.display());
    let path = config_file("cli-ca.toml", &toml);
    let run = || {
        let out = binary()
            .arg("ca")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run sidepool ca");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(
        first.starts_with("-----BEGIN CERTIFICATE-----")
            && first.contains("-----END CERTIFICATE-----"),
        "{first}"
    );
    assert!(!first.contains("PRIVATE KEY"), "the key is never printed");
    // Interception is off in this config: the CA is made anyway, and kept.
    assert!(dir.join("ca.pem").exists() && dir.join("ca.key").exists());
    assert_eq!(run(), first, "a second run prints the same CA");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
