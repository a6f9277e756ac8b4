//! Addressing: route, absolute and prefix forms, tunnels, and what each refuses.

use super::*;
use crate::config::Limits;
use std::time::Duration;

fn upstream(name: &str, host: &str, port: u16) -> UpstreamConfig {
    let d = Duration::from_secs(1);
    UpstreamConfig {
        name: name.into(),
        tls: true,
        host: host.into(),
        port,
        authority: host.into(),
        limits: Limits {
            max_connections_per_host: 1,
            idle_timeout: d,
            connect_timeout: d,
            read_timeout: d,
            request_timeout: d,
            queue_timeout: d,
            max_waiting: None,
            warm_connections: 0,
            warm_refresh: d,
        },
        prewarm: false,
        warm_probe: None,
        rate_limit: crate::config::RateLimitConfig {
            profile: &crate::ratelimit::profile::NONE,
            budget: None,
            rules: Vec::new(),
        },
    }
}

fn routes() -> Routes {
    Routes::new(&[
        upstream("bybit", "api.bybit.com", 443),
        upstream("local", "exchange.test", 8443),
        upstream("local2", "exchange.test", 9443),
    ])
}

fn resolve(target: &str) -> Result<(usize, String), ErrorKind> {
    routes()
        .resolve(&target.parse().unwrap())
        .map(|r| (r.upstream, r.path_and_query.as_str().to_owned()))
        .map_err(|e| e.kind)
}

#[test]
fn route_mode_strips_the_name_and_keeps_the_query() {
    assert_eq!(
        resolve("/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT"),
        Ok((0, "/v5/market/tickers?category=spot&symbol=BTCUSDT".into()))
    );
    assert_eq!(resolve("/bybit"), Ok((0, "/".into())));
    assert_eq!(resolve("/bybit?x=1"), Ok((0, "/?x=1".into())));
    assert_eq!(resolve("/unknown/x"), Err(ErrorKind::NotAllowed));
    assert_eq!(resolve("/"), Err(ErrorKind::NotAllowed));
    assert_eq!(resolve("/bybitx/v5"), Err(ErrorKind::NotAllowed));
}

/// What goes on the wire: an origin-form `Uri` built from the route's path.
fn wire_target(target: &str) -> String {
    let route = routes().resolve(&target.parse().unwrap()).unwrap();
    Uri::from(route.path_and_query).to_string()
}

#[test]
fn absolute_form_without_a_path_is_sent_as_the_root() {
    assert_eq!(wire_target("http://api.bybit.com"), "/");
    assert_eq!(wire_target("http://api.bybit.com#frag"), "/");
    assert_eq!(wire_target("http://api.bybit.com?x=1"), "/?x=1");
    assert_eq!(wire_target("http://api.bybit.com/v5?x=1"), "/v5?x=1");
}

#[test]
fn a_port_that_does_not_parse_is_refused_not_ignored() {
    assert_eq!(
        resolve("http://api.bybit.com:99999/x"),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(
        resolve("http://api.bybit.com:66979/x"),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(resolve("http://api.bybit.com:443/x"), Ok((0, "/x".into())));
}

#[test]
fn absolute_form_matches_host_and_port() {
    assert_eq!(
        resolve("http://API.BYBIT.COM/v5/x?a=b"),
        Ok((0, "/v5/x?a=b".into()))
    );
    assert_eq!(resolve("http://exchange.test:9443/p"), Ok((2, "/p".into())));
    assert_eq!(
        resolve("http://exchange.test:1234/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("http://exchange.test/p"),
        Err(ErrorKind::NotAllowed),
        "ambiguous without a port"
    );
    assert_eq!(resolve("http://evil.example/p"), Err(ErrorKind::NotAllowed));
    assert_eq!(
        resolve("http://api.bybit.com.evil.example/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(resolve("http://127.0.0.1/p"), Err(ErrorKind::NotAllowed));
    assert_eq!(
        resolve("http://user:pw@api.bybit.com/p"),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(resolve("http://api.bybit.com"), Ok((0, "/".into())));
    assert_eq!(resolve("https://api.bybit.com/x"), Ok((0, "/x".into())));
    assert_eq!(resolve("ftp://api.bybit.com/x"), Err(ErrorKind::BadRequest));
}

#[test]
fn prefix_form_matches_host_and_port_and_ignores_the_scheme() {
    assert_eq!(
        resolve("/https://api.bybit.com/v5/market/time"),
        Ok((0, "/v5/market/time".into()))
    );
    assert_eq!(
        resolve("/http://API.Bybit.com:443/v5?a=b"),
        Ok((0, "/v5?a=b".into()))
    );
    assert_eq!(resolve("/HTTPS://api.bybit.com"), Ok((0, "/".into())));
    assert_eq!(
        resolve("/https://api.bybit.com?x=1"),
        Ok((0, "/?x=1".into()))
    );
    assert_eq!(
        resolve("/https://exchange.test:9443/p"),
        Ok((2, "/p".into()))
    );
    assert_eq!(
        resolve("/https://exchange.test:1234/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("/https://exchange.test/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("/https://evil.example/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("/https://api.bybit.com.evil.example/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(resolve("/https://127.0.0.1/p"), Err(ErrorKind::NotAllowed));
    assert_eq!(
        resolve("/https://api.bybit.com:99999/p"),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(
        resolve("/https://u:p@api.bybit.com/p"),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(resolve("/https:///p"), Err(ErrorKind::BadRequest));
    // Not prefix form: route form, which names no such upstream.
    assert_eq!(
        resolve("/https:/api.bybit.com/p"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("/ftp://api.bybit.com/p"),
        Err(ErrorKind::NotAllowed)
    );
}

#[test]
fn prefix_form_keeps_the_query_byte_for_byte() {
    let query = "/v5/x?category=spot&symbol=BTC%2FUSDT&x=a+b&&empty=&sig=AbC%3D";
    assert_eq!(
        resolve(&format!("/https://api.bybit.com{query}")),
        Ok((0, query.into()))
    );
}

#[test]
fn encoded_prefix_form_is_decoded_exactly_once() {
    assert_eq!(
        resolve("/https%3A%2F%2Fapi.bybit.com%2Fv5%2Fmarket%2Ftickers%3Fcategory%3Dspot"),
        Ok((0, "/v5/market/tickers?category=spot".into()))
    );
    // ccxt encodes the bot's own escapes again (`%2F` as `%252F`, `+` as `%2B`): one
    // decoding gives back the URL the bot built and signed, never a second.
    assert_eq!(
        resolve(
            "/https%3a%2f%2fAPI.BYBIT.COM%3A443%2Fv5%2Fx%3Fsymbol%3DBTC%252FUSDT%26q%3Da%2Bb%2520c%26signature%3DAbC%253D"
        ),
        Ok((
            0,
            "/v5/x?symbol=BTC%2FUSDT&q=a+b%20c&signature=AbC%3D".into()
        ))
    );
    assert_eq!(
        resolve("/http%3A%2F%2Fexchange.test%3A9443%3Fa%3D1"),
        Ok((2, "/?a=1".into()))
    );
    assert_eq!(
        resolve("/https%3A%2F%2Fevil.example%2Fx%3Fa%3D1"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(
        resolve("/https%3A%2F%2Fexchange.test%3A1234%2Fx%3Fa%3D1"),
        Err(ErrorKind::NotAllowed)
    );
    for malformed in [
        "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%4",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%zz",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%+1",
        // Characters no request target carries: CR LF (header injection), space, fragment.
        "/https%3A%2F%2Fapi.bybit.com%2Fx%0D%0AHost:%20evil",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%20y",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%23frag",
        "/https%3A%2F%2Fapi.bybit.com%2Fx%C3%A9",
        "/https%3A%2F%2F%2Fx",
    ] {
        assert_eq!(
            resolve(malformed),
            Err(ErrorKind::BadRequest),
            "{malformed}"
        );
    }
    // Encoded twice is not the encoded form: route form, naming no upstream.
    assert_eq!(
        resolve("/https%3A%252F%252Fapi.bybit.com%2Fx"),
        Err(ErrorKind::NotAllowed)
    );
}

#[test]
fn the_encoded_query_is_cut_from_logs() {
    assert_eq!(
        loggable_target("/https%3A%2F%2Fapi.bybit.com%2Fv5%3Fsignature%3Dsecret"),
        "/https%3A%2F%2Fapi.bybit.com%2Fv5"
    );
    assert_eq!(
        loggable_target("/http%3a%2f%2fh%2Fv5%3fsignature%3Dsecret"),
        "/http%3a%2f%2fh%2Fv5"
    );
    assert_eq!(
        loggable_target("/https%3A%2F%2Fh?sig=1"),
        "/https%3A%2F%2Fh"
    );
    assert_eq!(loggable_target("/bybit/v5?sig%3F=1"), "/bybit/v5?sig%3F=1");
}

#[test]
fn tunnels_resolve_to_the_host_and_keep_paths_as_they_are() {
    let routes = routes();
    let authority = |a: &str| a.parse::<Authority>().unwrap();
    assert_eq!(
        routes.plain_tunnel(&authority("api.bybit.com:80")).ok(),
        Some(0)
    );
    assert_eq!(
        routes.plain_tunnel(&authority("exchange.test:80")).ok(),
        None
    );
    assert_eq!(
        routes.plain_tunnel(&authority("evil.example:80")).ok(),
        None
    );
    assert_eq!(routes.exact(&authority("exchange.test:9443")), Some(2));
    assert_eq!(routes.exact(&authority("api.bybit.com:80")), None);
    let inside = |target: &str| {
        routes
            .in_tunnel(&target.parse().unwrap(), 0)
            .map(|r| (r.upstream, r.path_and_query.as_str().to_owned()))
            .map_err(|e| e.kind)
    };
    // Inside a tunnel, `/bybit/...` is a path on the exchange, not route form.
    assert_eq!(inside("/bybit/v5?a=b"), Ok((0, "/bybit/v5?a=b".into())));
    assert_eq!(inside("http://api.bybit.com/v5"), Ok((0, "/v5".into())));
    assert_eq!(
        inside("http://exchange.test:8443/v5"),
        Err(ErrorKind::NotAllowed)
    );
    assert_eq!(inside("*"), Err(ErrorKind::BadRequest));
    assert!(routes.host_matches("api.bybit.com", 0, 80));
    assert!(routes.host_matches("API.bybit.com:80", 0, 80));
    assert!(!routes.host_matches("api.bybit.com:8080", 0, 80));
    assert!(!routes.host_matches("exchange.test", 0, 80));
    assert!(!routes.host_matches("evil.example", 0, 80));
}
