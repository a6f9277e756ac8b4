//! The command line: `sidepool [--config FILE]`, `sidepool check`, `sidepool health`.
//!
//! Parses arguments, sets up logging, loads the config and maps outcomes to exit codes:
//! 0 success, 1 a runtime failure (a port in use, not ready), 2 a usage or config error.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// Default config path (the container image passes `/etc/sidepool/sidepool.toml`).
pub const DEFAULT_CONFIG: &str = "config/sidepool.toml";
/// Default admin address for `sidepool health`.
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

const USAGE: &str = "\
sidepool: HTTP connection-pooling sidecar

USAGE:
    sidepool [--config FILE]            run the sidecar (default FILE: config/sidepool.toml)
    sidepool check [--config FILE]      validate the config (with SIDEPOOL_* overrides) and print it
    sidepool health [--admin ADDR]      exit 0 if the admin listener's /readyz says ready, else 1
    sidepool ca [--config FILE]         print the interception CA certificate (PEM), making the CA
                                        in intercept.ca_dir first when there is none
    sidepool --version | --help

Every config key can be overridden from the environment: SIDEPOOL_<SECTION>__<KEY>,
e.g. SIDEPOOL_LISTEN__PROXY=127.0.0.1:18080. RUST_LOG, when set, wins over log.level.
";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Ca(PathBuf),
    Health(Option<String>),
    Version,
    Help,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut rest = args;
    let sub = match rest.first().map(String::as_str) {
        Some("run") => {
            rest = &rest[1..];
            "run"
        }
        Some("check") => {
            rest = &rest[1..];
            "check"
        }
        Some("health") => {
            rest = &rest[1..];
            "health"
        }
        Some("ca") => {
            rest = &rest[1..];
            "ca"
        }
        _ => "run",
    };
    let mut config = None;
    let mut admin = None;
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i].as_str();
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            rest.get(i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" if sub != "health" => {
                config = Some(PathBuf::from(value("--config")?))
            }
            "--admin" if sub == "health" => admin = Some(value("--admin")?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
        i += 1;
    }
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(match sub {
        "check" => Command::Check(config),
        "ca" => Command::Ca(config),
        "health" => Command::Health(admin),
        _ => Command::Run(config),
    })
}

/// Runs the command line given `args` (without the program name).
pub fn main(args: &[String]) -> ExitCode {
    let command = match parse(args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("sidepool {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(path) => match Config::load(&path) {
            Ok(config) => {
                print!("{}", config.to_toml());
                for note in &config.notes {
                    eprintln!("note: {note}");
                }
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                eprintln!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{}", error_lines(&errors.to_string()));
                ExitCode::from(2)
            }
        },
        Command::Health(admin) => health(admin),
        Command::Ca(path) => ca(&path),
        Command::Run(path) => run(&path),
    }
}

fn error_lines(text: &str) -> String {
    text.lines()
        .map(|line| format!("error: {line}\n"))
        .collect()
}

/// Prints the interception CA's certificate, making the CA when there is none yet, whether or
/// not interception is enabled, so that clients can trust it before it is turned on. Never
/// prints the key.
fn ca(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{}", error_lines(&errors.to_string()));
            return ExitCode::from(2);
        }
    };
    let hosts: Vec<String> = config.upstreams.iter().map(|u| u.host.clone()).collect();
    match crate::intercept::Interceptor::open(&config.intercept.ca_dir, &hosts) {
        Ok(interceptor) => {
            print!("{}", interceptor.ca_pem());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{}", error_lines(&errors.to_string()));
            return ExitCode::from(2);
        }
    };
    let _log_writer = crate::logging::init(&config.log);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    for note in &config.notes {
        tracing::info!("{note}");
    }
    let runtime = match crate::runtime::build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match crate::Server::bind(config).await {
            Ok(server) => server,
            Err(err) => {
                let text = err.chain();
                tracing::error!("{text}");
                eprintln!("error: {text}");
                return ExitCode::FAILURE;
            }
        };
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!("SIGINT received"),
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn health(admin: Option<String>) -> ExitCode {
    let addr = match admin.or_else(|| std::env::var("SIDEPOOL_LISTEN__ADMIN").ok()) {
        Some(text) => match text.trim_matches('"').parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(err) => {
                eprintln!("error: --admin {text:?} is not an address like 127.0.0.1:9901: {err}");
                return ExitCode::from(2);
            }
        },
        None => DEFAULT_ADMIN,
    };
    // A listener on 0.0.0.0 or [::] is reached through loopback.
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            },
            addr.port(),
        )
    } else {
        addr
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(3), readyz(addr)).await })
    {
        Ok(Ok(200)) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("not ready: /readyz on {addr} answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            println!("not ready: {addr}: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("not ready: {addr} did not answer within 3s");
            ExitCode::FAILURE
        }
    }
}

async fn readyz(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: sidepool\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    // The status line fits in the first few dozen bytes; read until it is complete.
    for _ in 0..16 {
        let n = stream.read(&mut buf).await?;
        head.extend_from_slice(&buf[..n]);
        if n == 0 || head.contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_contract_commands() {
        assert!(
            matches!(parse(&args(&[])), Ok(Command::Run(p)) if p == std::path::Path::new(DEFAULT_CONFIG))
        );
        assert!(
            matches!(parse(&args(&["--config", "x.toml"])), Ok(Command::Run(p)) if p == std::path::Path::new("x.toml"))
        );
        assert!(
            matches!(parse(&args(&["check", "--config=y.toml"])), Ok(Command::Check(p)) if p == std::path::Path::new("y.toml"))
        );
        assert!(
            matches!(parse(&args(&["health", "--admin", "127.0.0.1:1"])), Ok(Command::Health(Some(a))) if a == "127.0.0.1:1")
        );
        assert!(matches!(parse(&args(&["--version"])), Ok(Command::Version)));
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(parse(&args(&["--config"])).is_err());
    }
}
