//! The rules of each section, upstream urls, and the effective-config dump.
// `Jail::expect_with` closures must return `figment::Result`, whose error is large.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use figment::Jail;

use super::super::load::STRING_SOURCE;
use super::super::url::redact_url;
use super::super::*;
use super::{MINIMAL, load_jailed, one, problems, upstream};

#[test]
fn duplicate_host_port_names_both() {
    let ps = problems(
        "[upstreams.one]\nurl = \"https://API.example.com\"\n\
         [upstreams.two]\nurl = \"https://api.example.com:443/\"\n\
         [upstreams.three]\nurl = \"http://api.example.com\"\n",
    );
    let p = one(&ps, "upstreams.two.url");
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert!(
        p.message.contains("`one` and `two`") && p.message.contains("api.example.com:443"),
        "{p}"
    );
}

#[test]
fn duplicate_ipv6_with_explicit_port() {
    let ps = problems(
        "[upstreams.a]\nurl = \"https://[::1]:8443\"\n[upstreams.b]\nurl = \"https://[0::1]:8443\"\n",
    );
    assert!(
        one(&ps, "upstreams.b.url")
            .message
            .contains("`a` and `b` both point at [::1]:8443")
    );
}

#[test]
fn bad_urls_are_explained() {
    let ps = problems(
        "[upstreams.ftp]\nurl = \"ftp://files.example.com\"\n\
         [upstreams.query]\nurl = \"https://q.example.com?x=1\"\n\
         [upstreams.path]\nurl = \"https://p.example.com/v5\"\n\
         [upstreams.nohost]\nurl = \"http://:80\"\n\
         [upstreams.noscheme]\nurl = \"s.example.com\"\n\
         [upstreams.user]\nurl = \"https://bob:hunter2@u.example.com\"\n\
         [upstreams.garbage]\nurl = \"https://exa mple.com\"\n",
    );
    assert!(
        one(&ps, "upstreams.ftp.url")
            .message
            .contains("scheme `ftp`")
    );
    assert!(one(&ps, "upstreams.query.url").message.contains("query"));
    assert!(
        one(&ps, "upstreams.path.url")
            .message
            .contains("base path is not supported")
    );
    assert!(one(&ps, "upstreams.nohost.url").message.contains("no host"));
    assert!(
        one(&ps, "upstreams.noscheme.url")
            .message
            .contains("no scheme")
    );
    let p = one(&ps, "upstreams.user.url");
    assert!(
        p.message.contains("userinfo") && !p.message.contains("hunter2"),
        "{p}"
    );
    assert!(
        one(&ps, "upstreams.garbage.url")
            .message
            .contains("invalid url")
    );
}

#[test]
fn upstream_names_must_be_route_safe() {
    let ps = problems(
        "[upstreams.Bybit]\nurl = \"https://a.example\"\n[upstreams.\"a/b\"]\nurl = \"https://b.example\"\n",
    );
    assert!(
        one(&ps, "upstreams.Bybit")
            .message
            .contains("invalid upstream name")
    );
    assert!(
        one(&ps, "upstreams.\"a/b\"")
            .message
            .contains("invalid upstream name")
    );
    assert!(Config::from_toml_str("[upstreams.a-1_b]\nurl = \"https://a.example\"\n").is_ok());
}

#[test]
fn no_upstreams_is_a_problem() {
    let ps = problems("");
    assert!(
        one(&ps, "upstreams")
            .message
            .contains("no upstreams configured")
    );
}

#[test]
fn bad_static_ip() {
    let ps = problems(&format!(
        "[dns.static]\n\"api.example.com\" = \"10.0.0.300\"\n{MINIMAL}"
    ));
    let p = one(&ps, "dns.static.\"api.example.com\"");
    assert!(p.message.contains("invalid IP address `10.0.0.300`"), "{p}");
    assert_eq!(p.source, STRING_SOURCE);
}

#[test]
fn nameservers_take_an_ip_with_an_optional_port() {
    let c = Config::from_toml_str(&format!(
        "[dns]\nnameservers = [\"10.0.0.2\", \"127.0.0.1:5353\", \"[fd00::2]:54\", \"fd00::3\"]\n{MINIMAL}"
    ))
    .unwrap();
    let expected: Vec<SocketAddr> = [
        "10.0.0.2:53",
        "127.0.0.1:5353",
        "[fd00::2]:54",
        "[fd00::3]:53",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    assert_eq!(c.dns.nameservers, expected);
    assert!(
        c.to_toml().contains("nameservers = [\"10.0.0.2:53\""),
        "{}",
        c.to_toml()
    );
    let ps = problems(&format!("[dns]\nnameservers = [\"dns.google\"]\n{MINIMAL}"));
    let p = one(&ps, "dns.nameservers");
    assert!(
        p.message.contains("invalid name server `dns.google`"),
        "{p}"
    );
}

#[test]
fn max_waiting_is_unset_by_default_and_overridable_per_upstream() {
    let c = Config::from_toml_str(&format!(
        "[pool]\nmax_waiting = 50\n{MINIMAL}[upstreams.okx]\nurl = \"https://www.okx.com\"\nmax_waiting = 0\n"
    ))
    .unwrap();
    assert_eq!(upstream(&c, "bybit").limits.max_waiting, Some(50));
    assert_eq!(upstream(&c, "okx").limits.max_waiting, Some(0));
    let shown = c.to_toml();
    assert!(
        shown.contains("max_waiting = 50") && shown.contains("max_waiting = 0"),
        "{shown}"
    );
    let unset = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(upstream(&unset, "bybit").limits.max_waiting, None);
    assert!(!unset.to_toml().contains("max_waiting"));
}

#[test]
fn warm_keys_default_to_one_ready_connection_and_are_per_upstream() {
    let c = Config::from_toml_str(&format!(
        "[pool]\nwarm_connections = 2\nwarm_refresh = \"40s\"\n{MINIMAL}\
         [upstreams.okx]\nurl = \"https://www.okx.com\"\nwarm_connections = 0\n\
         prewarm = true\nwarm_probe = \"/api/v5/public/time?x=1\"\n"
    ))
    .expect("valid");
    let bybit = upstream(&c, "bybit");
    assert_eq!(bybit.limits.warm_connections, 2);
    assert_eq!(bybit.limits.warm_refresh, Duration::from_secs(40));
    assert!(!bybit.prewarm && bybit.warm_probe.is_none());
    let okx = upstream(&c, "okx");
    assert_eq!(okx.limits.warm_connections, 0);
    assert!(okx.prewarm);
    assert_eq!(okx.warm_probe.as_deref(), Some("/api/v5/public/time?x=1"));
    let shown = c.to_toml();
    assert!(
        shown.contains("prewarm = true")
            && shown.contains("warm_probe = \"/api/v5/public/time?x=1\"")
            && shown.contains("warm_refresh = \"40s\""),
        "{shown}"
    );
    let again = Config::from_toml_str(&shown).expect("the dump loads");
    assert_eq!(upstream(&again, "okx").warm_probe, okx.warm_probe);
}

#[test]
fn warm_connections_above_the_per_host_cap_are_clamped_with_a_note() {
    let c = Config::from_toml_str(&format!(
        "[pool]\nmax_connections_per_host = 3\nwarm_connections = 5\n{MINIMAL}"
    ))
    .expect("valid");
    assert_eq!(upstream(&c, "bybit").limits.warm_connections, 3);
    assert!(
        c.notes
            .iter()
            .any(|n| n.key == "upstreams.bybit.warm_connections"
                && n.message.contains("3 connections are kept warm")),
        "{:#?}",
        c.notes
    );
}

#[test]
fn a_bad_warm_probe_or_refresh_is_refused() {
    let ps = problems(&format!("[pool]\nwarm_refresh = \"0s\"\n{MINIMAL}"));
    one(&ps, "pool.warm_refresh");
    for bad in ["v5/time", "/a b", "/a#frag", "https://x/y"] {
        let ps = problems(&format!(
            "[upstreams.bybit]\nurl = \"https://api.bybit.com\"\nwarm_probe = \"{bad}\"\n"
        ));
        let p = one(&ps, "upstreams.bybit.warm_probe");
        assert!(p.message.contains("must be a path"), "{bad}: {p}");
    }
}

#[test]
fn busy_poll_is_a_window_up_to_one_second_and_zero_turns_it_off() {
    let on = Config::from_toml_str(&format!("[runtime]\nbusy_poll = \"250us\"\n{MINIMAL}"))
        .expect("valid");
    assert_eq!(on.runtime.busy_poll, Some(Duration::from_micros(250)));
    assert!(on.to_toml().contains("[runtime]\nbusy_poll = \"250us\""));
    let off =
        Config::from_toml_str(&format!("[runtime]\nbusy_poll = \"0s\"\n{MINIMAL}")).expect("valid");
    assert_eq!(off.runtime.busy_poll, None);
    let ps = problems(&format!("[runtime]\nbusy_poll = \"2s\"\n{MINIMAL}"));
    let p = one(&ps, "runtime.busy_poll");
    assert!(
        p.message.contains("longer than the 1s maximum"),
        "{}",
        p.message
    );
    let ps = problems(&format!("[runtime]\nbusy_wait = \"1ms\"\n{MINIMAL}"));
    assert!(
        one(&ps, "runtime.busy_wait")
            .message
            .contains("unknown field")
    );
}

#[test]
fn client_connection_cap_must_be_positive() {
    let ps = problems(&format!("[listen]\nmax_client_connections = 0\n{MINIMAL}"));
    assert!(
        one(&ps, "listen.max_client_connections")
            .message
            .contains("at least 1")
    );
}

#[test]
fn listen_addresses_must_parse_and_differ() {
    let ps = problems(&format!("[listen]\nproxy = \"localhost:8080\"\n{MINIMAL}"));
    assert!(
        one(&ps, "listen.proxy")
            .message
            .contains("expected IP:PORT")
    );
    let ps = problems(&format!(
        "[listen]\nproxy = \"0.0.0.0:9000\"\nadmin = \"127.0.0.1:9000\"\n{MINIMAL}"
    ));
    assert!(
        one(&ps, "listen.admin")
            .message
            .contains("collides with listen.proxy")
    );
    // Port 0 means "any free port": both may use it (tests do).
    let ok = Config::from_toml_str(&format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{MINIMAL}"
    ));
    assert!(ok.is_ok());
}

#[test]
fn log_settings_are_checked() {
    let ps = problems(&format!(
        "[log]\nlevel = \"sidepool=loud\"\nformat = \"xml\"\n{MINIMAL}"
    ));
    assert!(one(&ps, "log.level").message.contains("invalid log filter"));
    assert!(
        one(&ps, "log.format")
            .message
            .contains("use \"text\" or \"json\"")
    );
}

#[test]
fn ca_files_missing_empty_and_valid() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        jail.create_file("ca.pem", &cert.cert.pem())?;
        jail.create_file("empty.pem", "not a certificate\n")?;
        let toml =
            format!("[tls]\nca_files = [\"ca.pem\", \"missing.pem\", \"empty.pem\"]\n{MINIMAL}");
        let err = load_jailed(jail, &toml).unwrap_err();
        let msgs: Vec<_> = err
            .0
            .iter()
            .filter(|p| p.key == "tls.ca_files")
            .map(|p| &p.message)
            .collect();
        assert_eq!(msgs.len(), 2, "{err}");
        assert!(
            msgs[0].contains("cannot read CA file `missing.pem`"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("`empty.pem` holds no PEM certificate"),
            "{}",
            msgs[1]
        );

        let c = load_jailed(jail, &format!("[tls]\nca_files = [\"ca.pem\"]\n{MINIMAL}"))
            .expect("valid");
        assert_eq!(c.tls.ca_certs.len(), 1);
        assert_eq!(c.tls.ca_certs[0].as_ref(), cert.cert.der().as_ref());
        Ok(())
    });
}

#[test]
fn several_problems_are_reported_together_one_line_each() {
    let err = Config::from_toml_str(
        "[listen]\nadmin = \"nope\"\n[pool]\nmax_totl = 1\n[log]\nformat = \"xml\"\n\
         [dns.static]\nx = \"y\"\n[upstreams.a]\nurl = \"ftp://a\"\n",
    )
    .unwrap_err();
    for k in [
        "listen.admin",
        "pool.max_totl",
        "log.format",
        "dns.static.x",
        "upstreams.a.url",
    ] {
        one(&err.0, k);
    }
    let text = err.to_string();
    assert_eq!(text.lines().count(), err.0.len());
    assert!(text.lines().all(|l| l.starts_with("toml: ")), "{text}");
}

#[test]
fn toml_syntax_error_is_one_line() {
    let ps = problems("[pool\nmax_connections = 1\n");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].key, "config");
    assert!(
        ps[0].message.contains("line 1") && !ps[0].message.contains('\n'),
        "{}",
        ps[0]
    );
}

#[test]
fn missing_config_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_dir("sub")?;
        // Toml::file would have found this one in the parent directory.
        jail.create_file("sidepool.toml", MINIMAL)?;
        jail.change_dir("sub")?;
        let err = Config::load(Path::new("sidepool.toml")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "config");
        assert!(
            err.0[0].message.contains("`sidepool.toml` not found"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn authority_and_port_derivation() {
    let c = Config::from_toml_str(
        "[upstreams.a]\nurl = \"https://API.Example.com\"\n\
         [upstreams.b]\nurl = \"https://b.example.com:8443/\"\n\
         [upstreams.c]\nurl = \"http://c.example.com\"\n\
         [upstreams.d]\nurl = \"https://[2001:DB8::1]:9443\"\n\
         [upstreams.e]\nurl = \"http://[::1]\"\n",
    )
    .expect("valid");
    let got = |n: &str| {
        let u = upstream(&c, n);
        (u.tls, u.host.as_str(), u.port, u.authority.as_str())
    };
    assert_eq!(got("a"), (true, "api.example.com", 443, "api.example.com"));
    assert_eq!(
        got("b"),
        (true, "b.example.com", 8443, "b.example.com:8443")
    );
    assert_eq!(got("c"), (false, "c.example.com", 80, "c.example.com"));
    assert_eq!(got("d"), (true, "2001:db8::1", 9443, "[2001:db8::1]:9443"));
    assert_eq!(got("e"), (false, "::1", 80, "[::1]"));
}

#[test]
fn to_toml_is_complete_and_round_trips() {
    let c = Config::from_toml_str(&format!(
        "[pool]\nidle_timeout = \"1m\"\n[dns.static]\n\"a.example\" = \"::1\"\n\
         {MINIMAL}queue_timeout = \"250ms\"\n[upstreams.alt]\nurl = \"http://[::1]:81\"\n"
    ))
    .expect("valid");
    let text = c.to_toml();
    for needle in [
        "proxy = \"127.0.0.1:8080\"",
        "header_read_timeout = \"30s\"",
        "max_connections = 100",
        "\"a.example\" = \"::1\"",
        "format = \"text\"",
        "url = \"https://api.bybit.com\"",
        "idle_timeout = \"1m\"",
        "queue_timeout = \"250ms\"",
        "url = \"http://[::1]:81\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let again = Config::from_toml_str(&text).expect("the dump is a valid config");
    assert_eq!(again.to_toml(), text);
    assert_eq!(
        upstream(&again, "bybit").limits,
        upstream(&c, "bybit").limits
    );
}

#[test]
fn redact_url_hides_userinfo_only() {
    assert_eq!(
        redact_url("https://u:p@h.example:1/x@y"),
        "https://***@h.example:1/x@y"
    );
    assert_eq!(redact_url("https://h.example/a@b"), "https://h.example/a@b");
}

#[test]
fn intercept_is_off_by_default_and_shown_in_the_dump() {
    let default = Config::from_toml_str(MINIMAL).expect("valid");
    assert_eq!(
        default.intercept,
        InterceptConfig {
            enabled: false,
            ca_dir: "/var/lib/sidepool/ca".into(),
        }
    );
    assert!(
        default
            .to_toml()
            .contains("[intercept]\nenabled = false\nca_dir = \"/var/lib/sidepool/ca\"\n"),
        "{}",
        default.to_toml()
    );
    let on = Config::from_toml_str(&format!(
        "[intercept]\nenabled = true\nca_dir = \"ca-here\"\n{MINIMAL}"
    ))
    .expect("valid");
    assert!(on.intercept.enabled);
    assert_eq!(on.intercept.ca_dir, std::path::PathBuf::from("ca-here"));
    let again = Config::from_toml_str(&on.to_toml()).expect("the dump loads");
    assert_eq!(again.intercept, on.intercept);
    let ps = problems(&format!("[intercept]\nca_dir = \"\"\n{MINIMAL}"));
    assert!(
        one(&ps, "intercept.ca_dir")
            .message
            .contains("must not be empty")
    );
    let ps = problems(&format!("[intercept]\nenable = true\n{MINIMAL}"));
    assert!(
        one(&ps, "intercept.enable")
            .message
            .contains("unknown field")
    );
}

#[test]
fn rate_limit_section_and_upstream_keys_are_checked_and_dumped() {
    let ps = problems(&format!(
        "[rate_limit]\nstore = \"memcache://x\"\nkey = \"a b\"\ntimeout = \"5s\"\nfallback_share = 1.5\n\
         [upstreams.x]\nurl = \"https://x.example\"\nrate_limit = \"binanse\"\n\
         rate_limit_budget = \"10/soon\"\n{MINIMAL}"
    ));
    for key in [
        "rate_limit.store",
        "rate_limit.key",
        "rate_limit.timeout",
        "rate_limit.fallback_share",
        "upstreams.x.rate_limit",
        "upstreams.x.rate_limit_budget",
    ] {
        one(&ps, key);
    }
    let secret = "redis://:hunter2@10.0.0.5:6379/2";
    let config = Config::from_toml_str(&format!(
        "[rate_limit]\nstore = \"{secret}\"\nkey = \"desk-1\"\n\
         [upstreams.b]\nurl = \"https://api.binance.com\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(config.rate_limit.redis_url.as_deref(), Some(secret));
    let binance = config.upstreams.iter().find(|u| u.name == "b").unwrap();
    assert_eq!(
        binance.rate_limit.profile.name, "binance",
        "auto from the host"
    );
    let dump = config.to_toml();
    assert!(!dump.contains("hunter2"), "{dump}");
    assert!(dump.contains("rate_limit = \"binance\"\nrate_limit_budget = \"6000/1m\""));
    assert!(dump.contains("[rate_limit]\nstore = \"redis://***@10.0.0.5:6379/2\""));
}
