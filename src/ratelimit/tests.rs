//! Profile tests: each rule against the answers and requests its exchange documents.

use std::time::Duration;

use http::{HeaderMap, Method};

use super::*;

fn req<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    body: Option<&'a [u8]>,
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        query,
        body,
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

fn answer(profile: &Profile, status: u16, h: &HeaderMap, body: &[u8], now: WallMs) -> Vec<Effect> {
    let body = profile.wants_response_body(status).then_some(body);
    profile.read_answer(
        &ResponseFacts {
            status,
            headers: h,
            body,
        },
        now,
    )
}

const NOW: WallMs = 1_700_000_000_000;

#[test]
fn auto_picks_by_host_suffix() {
    let name = |h| auto_profile(h).name;
    assert_eq!(name("api.binance.com"), "binance");
    assert_eq!(name("FAPI.Binance.com."), "binance");
    assert_eq!(name("api.bybit.com"), "bybit");
    assert_eq!(name("api.bytick.com"), "bybit");
    assert_eq!(name("www.okx.com"), "okx");
    assert_eq!(name("api.hyperliquid.xyz"), "hyperliquid");
    assert_eq!(name("fapi.bitunix.com"), "bitunix");
    assert_eq!(name("notbinance.com"), "generic");
    assert_eq!(name("example.org"), "generic");
    assert_eq!(profile_for("auto", "api.okx.com").unwrap().name, "okx");
    assert_eq!(profile_for("none", "api.binance.com").unwrap().name, "none");
    assert!(profile_for("kraken", "x").is_none());
    for n in PROFILE_NAMES {
        assert!(profile_for(n, "x").is_some(), "{n}");
    }
}

#[test]
fn every_profile_but_none_honours_retry_after() {
    let h = headers(&[("retry-after", "30")]);
    for name in [
        "binance",
        "bybit",
        "okx",
        "hyperliquid",
        "bitunix",
        "generic",
    ] {
        let p = profile_for(name, "x").unwrap();
        let effects = answer(p, 429, &h, b"", NOW);
        assert!(
            effects.contains(&Effect::Cooldown {
                duration: Duration::from_secs(30),
                cause: Cause::TooManyRequests
            }),
            "{name}: {effects:?}"
        );
    }
    let none = profile_for("none", "x").unwrap();
    assert!(none.is_off());
    assert!(answer(none, 429, &h, b"", NOW).is_empty());
    assert_eq!(none.assess(&req(&Method::GET, "/", None, None)).weight, 0);
}

#[test]
fn binance_budget_weights_and_ban() {
    let p = &exchanges::BINANCE;
    assert_eq!((p.default_budget)("api.binance.com").unwrap().limit, 6000);
    assert_eq!((p.default_budget)("fapi.binance.com").unwrap().limit, 2400);
    let w = |path, q| p.assess(&req(&Method::GET, path, q, None)).weight;
    assert_eq!(w("/api/v3/depth", None), 5);
    assert_eq!(w("/api/v3/depth", Some("symbol=BTCUSDT&limit=500")), 25);
    assert_eq!(w("/api/v3/depth", Some("limit=1000&symbol=BTCUSDT")), 50);
    assert_eq!(w("/api/v3/depth", Some("symbol=BTCUSDT&limit=5000")), 250);
    assert_eq!(w("/api/v3/ticker/24hr", Some("symbol=BTCUSDT")), 2);
    assert_eq!(w("/api/v3/ticker/24hr", None), 80);
    assert!(
        p.assess(&req(&Method::POST, "/api/v3/order", Some("a=1"), None))
            .order
    );
    assert!(
        !p.assess(&req(&Method::GET, "/api/v3/order", Some("a=1"), None))
            .order
    );

    let body = format!(
        "{{\"code\":-1003,\"msg\":\"Way too many requests; IP banned until {}. Please use websocket.\"}}",
        NOW + 300_000
    );
    let h = headers(&[("retry-after", "60")]);
    let effects = answer(p, 418, &h, body.as_bytes(), NOW);
    assert!(
        effects.contains(&Effect::Cooldown {
            duration: Duration::from_secs(300),
            cause: Cause::Banned
        }),
        "{effects:?}"
    );
    let effects = answer(p, 418, &HeaderMap::new(), b"", NOW);
    assert_eq!(
        effects,
        vec![Effect::Cooldown {
            duration: Duration::from_secs(120),
            cause: Cause::Banned
        }]
    );
    let h = headers(&[("x-mbx-used-weight-1m", "1234")]);
    assert_eq!(answer(p, 200, &h, b"", NOW), vec![Effect::UsedWeight(1234)]);
}

#[test]
fn bybit_403_and_10006() {
    let p = &exchanges::BYBIT;
    let effects = answer(p, 403, &HeaderMap::new(), b"access too frequent", NOW);
    assert_eq!(
        effects,
        vec![Effect::Cooldown {
            duration: Duration::from_secs(600),
            cause: Cause::AccessTooFrequent
        }]
    );
    let h = headers(&[("retry-after", "900")]);
    let effects = answer(p, 403, &h, b"Access Too Frequent.", NOW);
    assert_eq!(
        effects,
        vec![Effect::Cooldown {
            duration: Duration::from_secs(900),
            cause: Cause::AccessTooFrequent
        }]
    );
    assert!(answer(p, 403, &HeaderMap::new(), b"The country is blocked", NOW).is_empty());

    let reset = (NOW + 1500).to_string();
    let h = headers(&[
        ("x-bapi-limit-status", "0"),
        ("x-bapi-limit-reset-timestamp", &reset),
    ]);
    let body = br#"{"retCode":10006,"retMsg":"Too many visits!"}"#;
    let hold = Effect::Hold {
        duration: Duration::from_millis(1500),
        cause: Cause::EndpointLimit,
    };
    assert_eq!(answer(p, 200, &h, body, NOW), vec![hold]);
    // Nothing left on this endpoint: hold it before the exchange has to say 10006.
    assert_eq!(answer(p, 200, &h, br#"{"retCode":0}"#, NOW), vec![hold]);
    let h = headers(&[
        ("x-bapi-limit-status", "5"),
        ("x-bapi-limit-reset-timestamp", &NOW.to_string()),
    ]);
    assert!(answer(p, 200, &h, br#"{"retCode":0}"#, NOW).is_empty());
    assert!(
        p.assess(&req(&Method::POST, "/v5/order/create", None, None))
            .order
    );
}

#[test]
fn okx_hyperliquid_bitunix_generic() {
    let okx = &exchanges::OKX;
    let body = br#"{"msg":"Too Many Requests","code":"50011"}"#;
    assert_eq!(
        answer(okx, 429, &HeaderMap::new(), body, NOW),
        vec![Effect::Hold {
            duration: Duration::from_secs(2),
            cause: Cause::OkxTooManyRequests
        }]
    );
    assert!(
        okx.assess(&req(&Method::POST, "/api/v5/trade/order", None, None))
            .order
    );

    let hl = &exchanges::HYPERLIQUID;
    assert!(hl.needs_request_body(&Method::POST, "/info"));
    assert!(!hl.needs_request_body(&Method::GET, "/info"));
    let a = |path, body: &[u8]| hl.assess(&req(&Method::POST, path, None, Some(body)));
    assert_eq!(a("/info", br#"{"type":"l2Book","coin":"BTC"}"#).weight, 2);
    assert_eq!(
        a("/info", br#"{"type":"userRole","user":"0x0"}"#).weight,
        60
    );
    assert_eq!(a("/info", br#"{"type":"meta"}"#).weight, 20);
    assert_eq!(a("/info", b"{bad").weight, 60);
    let orders: Vec<String> = (0..85).map(|_| "{}".into()).collect();
    let body = format!(
        r#"{{"action":{{"type":"order","orders":[{}],"grouping":"na"}},"nonce":1}}"#,
        orders.join(",")
    );
    assert_eq!(
        a("/exchange", body.as_bytes()),
        Assessment {
            weight: 3,
            order: true
        }
    );
    assert_eq!(
        a("/exchange", br#"{"action":{"type":"usdSend"}}"#),
        Assessment {
            weight: 1,
            order: false
        }
    );
    let limited = br#"{"status":"err","response":"Too many cumulative requests sent (12000) for cumulative volume traded $1000."}"#;
    assert_eq!(
        answer(hl, 200, &HeaderMap::new(), limited, NOW),
        vec![Effect::Hold {
            duration: Duration::from_secs(10),
            cause: Cause::AddressLimit
        }]
    );

    let bx = &exchanges::BITUNIX;
    for code in ["10005", "10006"] {
        let body = format!(r#"{{"code":{code},"msg":"Request too frequently"}}"#);
        assert_eq!(
            answer(bx, 200, &HeaderMap::new(), body.as_bytes(), NOW).len(),
            1
        );
    }
    assert!(answer(bx, 200, &HeaderMap::new(), br#"{"code":0}"#, NOW).is_empty());

    let g = &profile::GENERIC;
    let h = headers(&[("ratelimit", "\"default\";r=0;t=7")]);
    assert_eq!(
        answer(g, 200, &h, b"", NOW),
        vec![Effect::Cooldown {
            duration: Duration::from_secs(7),
            cause: Cause::QuotaExhausted
        }]
    );
    assert!(answer(g, 500, &headers(&[("retry-after", "5")]), b"", NOW).is_empty());
}
