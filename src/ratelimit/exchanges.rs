//! The exchange profiles: each exchange's documented limits as data plus small functions.
//! Sources are listed per rule in docs/rate-limits.md.

use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::WallMs;
use super::budget::Budget;
use super::facts::{Cause, Effect, RequestFacts, ResponseFacts};
use super::profile::{
    Assessment, Profile, assess_by_table, is_listed, never, no_budget, retry_after_cooldown,
};
use super::signals::{self, MAX_COOLDOWN};

const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- Binance

/// Binance: weight per IP in the exchange's own minute windows, `X-MBX-USED-WEIGHT-1M` on every
/// answer, 418 = IP ban with "banned until <ms>" in the body.
pub static BINANCE: Profile = Profile {
    name: "binance",
    default_budget: binance_budget,
    assess: binance_assess,
    orders: BINANCE_ORDERS,
    request_body: never,
    response_body: |status| status == 418 || status == 429,
    signals: &[retry_after_cooldown, binance_ban, binance_used_weight],
};

const BINANCE_ORDERS: &[(&str, &str)] = &[
    ("POST", "/api/v3/order"),
    ("DELETE", "/api/v3/order"),
    ("DELETE", "/api/v3/openOrders"),
    ("POST", "/api/v3/order/cancelReplace"),
    ("POST", "/api/v3/orderList/oco"),
    ("POST", "/api/v3/orderList/oto"),
    ("POST", "/api/v3/orderList/otoco"),
    ("DELETE", "/api/v3/orderList"),
    ("POST", "/fapi/v1/order"),
    ("PUT", "/fapi/v1/order"),
    ("DELETE", "/fapi/v1/order"),
    ("POST", "/fapi/v1/batchOrders"),
    ("DELETE", "/fapi/v1/batchOrders"),
    ("DELETE", "/fapi/v1/allOpenOrders"),
    ("POST", "/fapi/v1/countdownCancelAll"),
];

/// Spot hosts count 6000 weight per minute; USDⓈ-M and COIN-M futures 2400.
fn binance_budget(host: &str) -> Option<Budget> {
    let host = host.to_ascii_lowercase();
    let limit = if host.starts_with("fapi.") || host.starts_with("dapi.") {
        2400
    } else {
        6000
    };
    Some(Budget::new(limit, MINUTE))
}

fn binance_assess(r: &RequestFacts<'_>) -> Assessment {
    Assessment {
        weight: binance_weight(r),
        order: is_listed(BINANCE_ORDERS, r),
    }
}

/// Documented request weights; endpoints not listed count 1 until the usage header corrects
/// the count.
fn binance_weight(r: &RequestFacts<'_>) -> u32 {
    let limit = || r.query_param("limit").and_then(|v| v.parse::<u32>().ok());
    let has = |name| r.query_param(name).is_some();
    match r.path {
        "/api/v3/depth" => match limit().unwrap_or(100) {
            0..=100 => 5,
            101..=500 => 25,
            501..=1000 => 50,
            _ => 250,
        },
        "/fapi/v1/depth" => match limit().unwrap_or(500) {
            0..=50 => 2,
            51..=100 => 5,
            101..=500 => 10,
            _ => 20,
        },
        "/api/v3/ticker/24hr" if has("symbol") => 2,
        "/api/v3/ticker/24hr" => 80,
        "/api/v3/exchangeInfo" => 20,
        "/api/v3/account" => 20,
        "/api/v3/openOrders" if r.method == Method::GET && has("symbol") => 6,
        "/api/v3/openOrders" if r.method == Method::GET => 80,
        "/api/v3/allOrders" | "/api/v3/myTrades" => 20,
        _ => 1,
    }
}

/// 418: the IP is banned until the body's epoch-ms time or `Retry-After`, whichever is later;
/// with neither, Binance's shortest ban (2 minutes).
fn binance_ban(r: &ResponseFacts<'_>, now: WallMs) -> Option<Effect> {
    if r.status != 418 {
        return None;
    }
    let from_body = r
        .body
        .and_then(signals::binance_banned_until)
        .map(|until| Duration::from_millis(until.saturating_sub(now)));
    let from_header = signals::retry_after(r.headers, now);
    let duration = from_body
        .max(from_header)
        .unwrap_or(Duration::from_secs(120))
        .min(MAX_COOLDOWN);
    Some(Effect::Cooldown {
        duration,
        cause: Cause::Banned,
    })
}

fn binance_used_weight(r: &ResponseFacts<'_>, _now: WallMs) -> Option<Effect> {
    signals::header_u64(r.headers, "x-mbx-used-weight-1m").map(Effect::UsedWeight)
}

// ---------------------------------------------------------------- Bybit

/// Bybit: 600 requests per 5 s per IP, 403 "access too frequent" (10 minutes), per-endpoint
/// limits per account with retCode 10006 and `X-Bapi-Limit-*` headers.
pub static BYBIT: Profile = Profile {
    name: "bybit",
    default_budget: |_| Some(Budget::new(600, Duration::from_secs(5))),
    assess: |r| assess_by_table(&BYBIT, r),
    orders: &[
        ("POST", "/v5/order/create"),
        ("POST", "/v5/order/amend"),
        ("POST", "/v5/order/cancel"),
        ("POST", "/v5/order/cancel-all"),
        ("POST", "/v5/order/create-batch"),
        ("POST", "/v5/order/amend-batch"),
        ("POST", "/v5/order/cancel-batch"),
        ("POST", "/v5/order/disconnected-cancel-all"),
    ],
    request_body: never,
    response_body: |status| status == 403 || status == 200,
    signals: &[retry_after_cooldown, bybit_ip_ban, bybit_endpoint_limit],
};

/// 403 "access too frequent": 10 minutes, or `Retry-After` when present. Any other 403
/// (a blocked region, the WAF) starts nothing.
fn bybit_ip_ban(r: &ResponseFacts<'_>, now: WallMs) -> Option<Effect> {
    if r.status != 403 || !signals::contains_ignore_case(r.body?, b"access too frequent") {
        return None;
    }
    let duration = signals::retry_after(r.headers, now).unwrap_or(Duration::from_secs(600));
    Some(Effect::Cooldown {
        duration,
        cause: Cause::AccessTooFrequent,
    })
}

/// retCode 10006, or `X-Bapi-Limit-Status: 0` (nothing left): hold the endpoint until
/// `X-Bapi-Limit-Reset-Timestamp` (epoch ms); 10006 without it holds 1 s.
fn bybit_endpoint_limit(r: &ResponseFacts<'_>, now: WallMs) -> Option<Effect> {
    let reset = signals::header_u64(r.headers, "x-bapi-limit-reset-timestamp")
        .map(|at| Duration::from_millis(at.saturating_sub(now)).min(MAX_COOLDOWN));
    let exceeded = r.body.and_then(|b| signals::json_code(b, "retCode")) == Some(10006);
    let empty = signals::header_u64(r.headers, "x-bapi-limit-status") == Some(0);
    let duration = match (exceeded, empty, reset) {
        (true, _, reset) => reset.unwrap_or(Duration::from_secs(1)),
        (false, true, Some(reset)) if !reset.is_zero() => reset,
        _ => return None,
    };
    Some(Effect::Hold {
        duration,
        cause: Cause::EndpointLimit,
    })
}

// ---------------------------------------------------------------- OKX

/// OKX: per-endpoint limits counted per 2 s; 429 with code 50011 when one is crossed.
pub static OKX: Profile = Profile {
    name: "okx",
    default_budget: no_budget,
    assess: |r| assess_by_table(&OKX, r),
    orders: &[
        ("POST", "/api/v5/trade/order"),
        ("POST", "/api/v5/trade/batch-orders"),
        ("POST", "/api/v5/trade/cancel-order"),
        ("POST", "/api/v5/trade/cancel-batch-orders"),
        ("POST", "/api/v5/trade/amend-order"),
        ("POST", "/api/v5/trade/amend-batch-orders"),
        ("POST", "/api/v5/trade/close-position"),
        ("POST", "/api/v5/trade/order-algo"),
        ("POST", "/api/v5/trade/cancel-algos"),
        ("POST", "/api/v5/trade/amend-algos"),
    ],
    request_body: never,
    response_body: |status| status == 429,
    signals: &[retry_after_cooldown, okx_endpoint_limit],
};

/// 429 + 50011 without `Retry-After`: hold the endpoint for one 2-second window.
fn okx_endpoint_limit(r: &ResponseFacts<'_>, _now: WallMs) -> Option<Effect> {
    if r.status != 429 || r.headers.contains_key(http::header::RETRY_AFTER) {
        return None;
    }
    (signals::json_code(r.body?, "code")? == 50011).then_some(Effect::Hold {
        duration: Duration::from_secs(2),
        cause: Cause::OkxTooManyRequests,
    })
}

// ---------------------------------------------------------------- Hyperliquid

/// Hyperliquid: 1200 weight per minute per IP, weight from the JSON body; per-address action
/// limits answered with 200 and an error body.
pub static HYPERLIQUID: Profile = Profile {
    name: "hyperliquid",
    default_budget: |_| Some(Budget::new(1200, MINUTE)),
    assess: hyperliquid_assess,
    orders: &[],
    request_body: |method, path| method == Method::POST && (path == "/info" || path == "/exchange"),
    response_body: |status| status == 200,
    signals: &[retry_after_cooldown, hyperliquid_address_limit],
};

#[derive(Deserialize)]
struct HlBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<HlAction>,
}

#[derive(Deserialize)]
struct HlAction {
    #[serde(rename = "type")]
    kind: Option<String>,
    orders: Option<Vec<IgnoredAny>>,
    cancels: Option<Vec<IgnoredAny>>,
    modifies: Option<Vec<IgnoredAny>>,
}

const HL_ORDER_ACTIONS: &[&str] = &[
    "order",
    "cancel",
    "cancelByCloid",
    "batchModify",
    "scheduleCancel",
];
const HL_LIGHT_INFO: &[&str] = &[
    "l2Book",
    "allMids",
    "clearinghouseState",
    "orderStatus",
    "spotClearinghouseState",
    "exchangeStatus",
];

fn hyperliquid_assess(r: &RequestFacts<'_>) -> Assessment {
    let parsed = r
        .body
        .and_then(|b| serde_json::from_slice::<HlBody>(b).ok());
    match (r.path, parsed) {
        (
            "/exchange",
            Some(HlBody {
                action: Some(a), ..
            }),
        ) => {
            let batch = [&a.orders, &a.cancels, &a.modifies]
                .iter()
                .filter_map(|v| v.as_ref().map(Vec::len))
                .max()
                .unwrap_or(1);
            Assessment {
                weight: 1 + (batch / 40) as u32,
                order: a
                    .kind
                    .as_deref()
                    .is_some_and(|k| HL_ORDER_ACTIONS.contains(&k)),
            }
        }
        (
            "/info",
            Some(HlBody {
                kind: Some(kind), ..
            }),
        ) => Assessment {
            weight: match kind.as_str() {
                k if HL_LIGHT_INFO.contains(&k) => 2,
                "userRole" => 60,
                _ => 20,
            },
            order: false,
        },
        // Unreadable or unbuffered (too large): the heaviest documented info weight, so the
        // budget errs on the safe side.
        ("/info", _) => Assessment {
            weight: 60,
            order: false,
        },
        _ => Assessment {
            weight: 1,
            order: false,
        },
    }
}

/// 200 with "Too many cumulative requests sent": the address may send one action per 10 s.
fn hyperliquid_address_limit(r: &ResponseFacts<'_>, _now: WallMs) -> Option<Effect> {
    (r.status == 200
        && signals::contains_ignore_case(r.body?, b"too many cumulative requests sent"))
    .then_some(Effect::Hold {
        duration: Duration::from_secs(10),
        cause: Cause::AddressLimit,
    })
}

// ---------------------------------------------------------------- Bitunix

/// Bitunix: per-endpoint limits per account (10 req/s for orders); HTTP 200 with code 10005
/// or 10006 when crossed.
pub static BITUNIX: Profile = Profile {
    name: "bitunix",
    default_budget: no_budget,
    assess: |r| assess_by_table(&BITUNIX, r),
    orders: &[
        ("POST", "/api/v1/futures/trade/place_order"),
        ("POST", "/api/v1/futures/trade/cancel_orders"),
        ("POST", "/api/v1/futures/trade/modify_order"),
    ],
    request_body: never,
    response_body: |status| status == 200,
    signals: &[retry_after_cooldown, bitunix_endpoint_limit],
};

/// Code 10005/10006: hold the endpoint for 1 s (its limits are per second).
fn bitunix_endpoint_limit(r: &ResponseFacts<'_>, _now: WallMs) -> Option<Effect> {
    matches!(signals::json_code(r.body?, "code")?, 10005 | 10006).then_some(Effect::Hold {
        duration: Duration::from_secs(1),
        cause: Cause::BitunixTooFrequent,
    })
}
