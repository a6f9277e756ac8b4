//! Loading: layering, every source a problem can name, unknown keys, and the caps; the rules
//! of each section and the dump are in `sections`.
// `Jail::expect_with` closures must return `figment::Result`, whose error is large.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use figment::{
    Figment, Jail,
    providers::{Env, Format, Serialized, Toml},
};

use super::load::{ENV_PREFIX, Loader, STRING_SOURCE, key};
use super::*;

pub(super) const MINIMAL: &str = "[upstreams.bybit]\nurl = \"https://api.bybit.com\"\n";

pub(super) fn problems(toml: &str) -> Vec<ConfigProblem> {
    match Config::from_toml_str(toml) {
        Ok(c) => panic!("expected problems, got {c:?}"),
        Err(e) => e.0,
    }
}

/// The single problem reported for `key`, failing if there is none or several.
pub(super) fn one<'a>(problems: &'a [ConfigProblem], key: &str) -> &'a ConfigProblem {
    let found: Vec<_> = problems.iter().filter(|p| p.key == key).collect();
    assert_eq!(found.len(), 1, "one problem for {key} in {problems:#?}");
    found[0]
}

pub(super) fn upstream<'a>(c: &'a Config, name: &str) -> &'a UpstreamConfig {
    c.upstreams
        .iter()
        .find(|u| u.name == name)
        .expect("upstream present")
}

pub(super) fn load_jailed(jail: &mut Jail, toml: &str) -> Result<Config, ConfigErrors> {
    jail.create_file("sidepool.toml", toml)
        .expect("write config");
    Config::load(Path::new("sidepool.toml"))
}

#[test]
fn minimal_file_gets_every_default() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("SIDEPOOL_CONFIG", "elsewhere.toml"); // names the file; not a key
        let c = load_jailed(jail, MINIMAL).expect("valid");
        assert_eq!(c.listen.proxy, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.listen.admin, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.listen.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.listen.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, 100);
        assert_eq!(c.dns.max_ttl, Duration::from_secs(300));
        assert!(c.dns.static_hosts.is_empty());
        assert!(c.tls.ca_files.is_empty() && c.tls.ca_certs.is_empty());
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        let u = upstream(&c, "bybit");
        let expected = Limits {
            max_connections_per_host: 30,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(5),
            max_waiting: None,
            warm_connections: 1,
            warm_refresh: Duration::from_secs(50),
        };
        assert_eq!(u.limits, expected);
        assert!(c.dns.nameservers.is_empty());
        assert_eq!(c.listen.max_client_connections, 1024);
        assert_eq!(c.runtime.busy_poll, None, "busy polling is off by default");
        assert_eq!(c.min_idle_timeout(), Duration::from_secs(30));
        Ok(())
    });
}

#[test]
fn file_values_and_overrides_apply_and_upstreams_are_sorted() {
    let c = Config::from_toml_str(
        r#"
        [listen]
        proxy = "0.0.0.0:18080"
        header_read_timeout = "2s"
        [pool]
        max_connections = 50
        idle_timeout = "20s"
        [dns.static]
        "API.Bybit.com" = "127.0.0.1"
        [log]
        level = "sidepool=debug,info"
        format = "json"
        [upstreams.okx]
        url = "https://www.okx.com"
        idle_timeout = "250ms"
        max_connections_per_host = 7
        [upstreams.bybit]
        url = "https://api.bybit.com"
        "#,
    )
    .expect("valid");
    let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["bybit", "okx"]);
    assert_eq!(c.listen.proxy.port(), 18080);
    assert_eq!(c.listen.header_read_timeout, Duration::from_secs(2));
    assert_eq!(c.max_connections, 50);
    assert_eq!(
        upstream(&c, "bybit").limits.idle_timeout,
        Duration::from_secs(20)
    );
    let okx = upstream(&c, "okx").limits;
    assert_eq!(
        (okx.idle_timeout, okx.max_connections_per_host),
        (Duration::from_millis(250), 7)
    );
    assert_eq!(
        okx.connect_timeout,
        Duration::from_secs(10),
        "not overridden: inherited"
    );
    assert_eq!(c.min_idle_timeout(), Duration::from_millis(250));
    assert_eq!(
        c.dns.static_hosts["api.bybit.com"],
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn unknown_key_in_file_names_key_and_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let err = load_jailed(jail, &format!("[pool]\nmax_totl = 3\n{MINIMAL}")).unwrap_err();
        let p = one(&err.0, "pool.max_totl");
        assert_eq!(p.source, "sidepool.toml");
        assert!(p.message.contains("unknown field: found `max_totl`"), "{p}");
        assert!(
            p.to_string()
                .starts_with("sidepool.toml: pool.max_totl: unknown field")
        );
        Ok(())
    });
}

#[test]
fn unknown_top_level_key_is_reported() {
    let ps = problems(&format!("[pol]\nmax_connections = 3\n{MINIMAL}"));
    assert!(
        one(&ps, "pol")
            .message
            .contains("unknown field: found `pol`")
    );
}

#[test]
fn unknown_key_in_upstream_and_global_cap_hint() {
    let ps = problems(
        "[upstreams.a]\nurl = \"https://a.example\"\nurll = 1\n\
         [upstreams.b]\nurl = \"https://b.example\"\nmax_connections = 5\n",
    );
    assert!(
        one(&ps, "upstreams.a.urll")
            .message
            .contains("unknown field: found `urll`")
    );
    let p = one(&ps, "upstreams.b.max_connections");
    assert!(
        p.message
            .contains("max_connections is global; use max_connections_per_host"),
        "{p}"
    );
    assert_eq!(p.source, STRING_SOURCE);
}

#[test]
fn bad_duration_names_the_key() {
    let ps = problems(&format!("[pool]\nidle_timeout = \"30 parsecs\"\n{MINIMAL}"));
    let p = one(&ps, "pool.idle_timeout");
    assert!(p.message.contains("expected a duration"), "{p}");
    assert_eq!(ps.len(), 1);
}

#[test]
fn zero_durations_and_caps_are_rejected() {
    let ps = problems(
        "[listen]\ndrain_timeout = \"0s\"\n[pool]\nmax_connections = 0\nqueue_timeout = \"0ms\"\n\
         [dns]\nmax_ttl = \"0s\"\n\
         [upstreams.a]\nurl = \"https://a.example\"\nread_timeout = \"0s\"\nmax_connections_per_host = 0\n",
    );
    for k in [
        "listen.drain_timeout",
        "pool.max_connections",
        "pool.queue_timeout",
        "dns.max_ttl",
        "upstreams.a.read_timeout",
        "upstreams.a.max_connections_per_host",
    ] {
        assert!(!one(&ps, k).message.is_empty());
    }
}

#[test]
fn missing_url_names_the_url_key() {
    let ps = problems("[upstreams.a]\nidle_timeout = \"1s\"\n");
    assert!(
        one(&ps, "upstreams.a.url")
            .message
            .contains("missing field `url`")
    );
}

#[test]
fn env_overrides_file_and_env_problems_name_the_variable() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("SIDEPOOL_LISTEN__PROXY", "127.0.0.1:18080");
        jail.set_env("SIDEPOOL_UPSTREAMS__BYBIT__MAX_CONNECTIONS_PER_HOST", "5");
        let toml = format!(
            "[listen]\nproxy = \"127.0.0.1:7000\"\n{MINIMAL}max_connections_per_host = 9\n"
        );
        let c = load_jailed(jail, &toml).expect("valid");
        assert_eq!(c.listen.proxy, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(upstream(&c, "bybit").limits.max_connections_per_host, 5);

        jail.set_env("SIDEPOOL_POOL__MAX_CONNECTIONS", "0");
        jail.set_env("SIDEPOOL_DNS__MAX_TTL", "forever");
        let err = load_jailed(jail, &toml).unwrap_err();
        let p = one(&err.0, "pool.max_connections");
        assert_eq!(p.source, "env SIDEPOOL_POOL__MAX_CONNECTIONS");
        assert_eq!(
            p.to_string(),
            "env SIDEPOOL_POOL__MAX_CONNECTIONS: pool.max_connections: must be at least 1"
        );
        assert_eq!(
            one(&err.0, "dns.max_ttl").source,
            "env SIDEPOOL_DNS__MAX_TTL"
        );
        // Env and file problems side by side, each naming its own source.
        jail.set_env("SIDEPOOL_POOL__MAX_CONNECTIONS", "3");
        jail.set_env("SIDEPOOL_UPSTREAMS__BYBIT__IDLE_TIMEOUT", "0s");
        let err = load_jailed(jail, &format!("{toml}[log]\nformat = \"xml\"\n")).unwrap_err();
        let p = one(&err.0, "upstreams.bybit.idle_timeout");
        assert_eq!(p.source, "env SIDEPOOL_UPSTREAMS__BYBIT__IDLE_TIMEOUT");
        // The env cap (5) above the env global cap (3) is lowered, not refused.
        jail.set_env("SIDEPOOL_UPSTREAMS__BYBIT__IDLE_TIMEOUT", "1s");
        jail.set_env("SIDEPOOL_DNS__MAX_TTL", "1m");
        let c = load_jailed(jail, &toml).expect("valid");
        assert_eq!(upstream(&c, "bybit").limits.max_connections_per_host, 3);
        assert_eq!(
            one(&c.notes, "upstreams.bybit.max_connections_per_host").source,
            "env SIDEPOOL_UPSTREAMS__BYBIT__MAX_CONNECTIONS_PER_HOST"
        );
        assert_eq!(one(&err.0, "log.format").source, "sidepool.toml");
        Ok(())
    });
}

#[test]
fn unset_override_takes_the_source_of_the_pool_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("SIDEPOOL_POOL__IDLE_TIMEOUT", "5s");
        jail.create_file("sidepool.toml", MINIMAL)?;
        let figment = Figment::from(Serialized::defaults(raw::defaults()))
            .merge(Toml::file_exact("sidepool.toml"))
            .merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut loader = Loader::new(figment, "sidepool.toml".into());
        loader.root = loader.figment.find_value("")?;
        let source = |k: &[&str]| loader.source(&key(k));
        assert_eq!(
            source(&["upstreams", "bybit", "idle_timeout"]),
            "env SIDEPOOL_POOL__IDLE_TIMEOUT"
        );
        assert_eq!(source(&["upstreams", "bybit", "read_timeout"]), "default");
        assert_eq!(source(&["upstreams", "bybit", "url"]), "sidepool.toml");
        assert_eq!(source(&["upstreams", "bybit", "nope"]), "sidepool.toml");
        Ok(())
    });
}

#[test]
fn stray_env_variable_is_an_unknown_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("SIDEPOOL_POOL__MAX_TOTAL", "5");
        let err = load_jailed(jail, MINIMAL).unwrap_err();
        assert_eq!(
            one(&err.0, "pool.max_total").source,
            "env SIDEPOOL_POOL__MAX_TOTAL"
        );
        Ok(())
    });
}

#[test]
fn per_host_cap_above_max_connections_is_lowered_to_it() {
    // Explicit override above the global cap: accepted, lowered, and a note names the key.
    let c = Config::from_toml_str(&format!(
        "[pool]\nmax_connections = 10\n{MINIMAL}max_connections_per_host = 11\n\
         [upstreams.okx]\nurl = \"https://www.okx.com\"\nmax_connections_per_host = 4\n"
    ))
    .expect("valid: the caps are independent bounds");
    assert_eq!(upstream(&c, "bybit").limits.max_connections_per_host, 10);
    assert_eq!(upstream(&c, "okx").limits.max_connections_per_host, 4);
    assert_eq!(c.notes.len(), 1, "{:#?}", c.notes);
    assert_eq!(
        c.notes[0].to_string(),
        "toml: upstreams.bybit.max_connections_per_host: 11 is above pool.max_connections; \
         the effective cap is 10"
    );
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let dump = c.to_toml();
    assert!(dump.contains("max_connections_per_host = 10"), "{dump}");
    assert!(!dump.contains("max_connections_per_host = 11"), "{dump}");
    // Inherited default (30 > 10): lowered for the upstream; the note's source is the default.
    let c = Config::from_toml_str(&format!("[pool]\nmax_connections = 10\n{MINIMAL}")).unwrap();
    assert_eq!(upstream(&c, "bybit").limits.max_connections_per_host, 10);
    assert_eq!(
        one(&c.notes, "upstreams.bybit.max_connections_per_host").source,
        "default"
    );
    // The dump loads to the same effective values, without a note.
    let again = Config::from_toml_str(&c.to_toml()).unwrap();
    assert!(again.notes.is_empty(), "{:#?}", again.notes);
    assert_eq!(again.upstreams[0].limits, c.upstreams[0].limits);
}

#[test]
fn proxy_listener_off_loopback_is_a_warning() {
    for (addr, warned) in [
        ("127.0.0.1:8080", false),
        ("[::1]:8080", false),
        ("0.0.0.0:8080", true),
        ("[::]:8080", true),
        ("10.1.2.3:8080", true),
    ] {
        let c = Config::from_toml_str(&format!("[listen]\nproxy = \"{addr}\"\n{MINIMAL}"))
            .expect("valid: a warning, not an error");
        if warned {
            let w = one(&c.warnings, "listen.proxy");
            assert!(
                w.message.contains("not a loopback address")
                    && w.message.contains("no authentication"),
                "{w}"
            );
            assert_eq!(w.source, STRING_SOURCE);
        } else {
            assert!(c.warnings.is_empty(), "{addr}: {:#?}", c.warnings);
        }
    }
    // The admin listener serves only metrics and health: no warning for it.
    let c =
        Config::from_toml_str(&format!("[listen]\nadmin = \"0.0.0.0:9901\"\n{MINIMAL}")).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
}

#[test]
fn key_lists_come_from_the_structs() {
    assert_eq!(
        Limits::keys(),
        [
            "max_connections_per_host",
            "idle_timeout",
            "connect_timeout",
            "read_timeout",
            "request_timeout",
            "queue_timeout",
            "max_waiting",
            "warm_connections",
            "warm_refresh"
        ]
    );
    assert_eq!(raw::pool_keys()[0], "max_connections");
    assert_eq!(raw::upstream_keys()[0], "url");
    assert_eq!(raw::upstream_keys().len(), Limits::keys().len() + 6);
}

mod sections;
