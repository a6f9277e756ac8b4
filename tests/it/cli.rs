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
