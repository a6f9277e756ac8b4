//! Readers for the signals exchanges send: `Retry-After`, HTTP dates, Binance's "banned until"
//! body, the IETF `RateLimit` field, and JSON status codes. Each reads the exact bytes it is
//! given and never re-encodes anything.

use std::time::Duration;

use http::HeaderMap;

use crate::ratelimit::WallMs;

/// Longest cooldown sidepool believes from one answer (Binance bans last up to 3 days); a
/// larger value is clamped so a garbled header cannot stop an upstream for years.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3 * 86_400);

/// `Retry-After` as a duration from `now`: delay-seconds or an IMF-fixdate (RFC 9110 10.2.3).
/// A date in the past gives zero; anything unreadable gives `None`.
pub fn retry_after(headers: &HeaderMap, now: WallMs) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_COOLDOWN));
    }
    let at = parse_http_date(value)?;
    Some(Duration::from_millis(at.saturating_sub(now)).min(MAX_COOLDOWN))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix milliseconds. The two
/// obsolete forms of RFC 9110 are not accepted (no exchange sends them).
pub fn parse_http_date(text: &str) -> Option<WallMs> {
    let b = text.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = &text[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let day = num(5..7)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == &text[8..11])? as u64 + 1;
    let year = num(12..16)?;
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400) + hour * 3600 + min * 60 + sec) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The epoch-milliseconds time in Binance's ban message: `... IP banned until 1529256050872.`
pub fn binance_banned_until(body: &[u8]) -> Option<WallMs> {
    let needle = b"banned until ";
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// True when `haystack` contains `needle`, ASCII case-insensitively.
pub fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A header as an unsigned number (`X-MBX-USED-WEIGHT-1M`, `X-Bapi-Limit-Status`, ...).
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The IETF `RateLimit` field (draft-ietf-httpapi-ratelimit-headers): the remaining quota `r`
/// and seconds until more `t` of the first item that has both, e.g. `"default";r=0;t=30`.
/// Malformed items are ignored, as the draft asks.
pub fn ietf_ratelimit(headers: &HeaderMap) -> Option<(u64, u64)> {
    for value in headers.get_all("ratelimit") {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let (mut r, mut t) = (None, None);
            for param in item.split(';').skip(1) {
                match param.trim().split_once('=') {
                    Some(("r", v)) => r = v.trim().parse().ok(),
                    Some(("t", v)) => t = v.trim().parse().ok(),
                    _ => {}
                }
            }
            if let (Some(r), Some(t)) = (r, t) {
                return Some((r, t));
            }
        }
    }
    None
}

/// The IETF `RateLimit-Policy` field: quota `q` per window `w` seconds of the first item with
/// both, e.g. `"burst";q=100;w=60`.
pub fn ietf_policy(headers: &HeaderMap) -> Option<(u64, u64)> {
    let value = headers.get("ratelimit-policy")?.to_str().ok()?;
    value.split(',').find_map(|item| {
        let (mut q, mut w) = (None, None);
        for param in item.split(';').skip(1) {
            match param.trim().split_once('=') {
                Some(("q", v)) => q = v.trim().parse().ok(),
                Some(("w", v)) => w = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some((q?, w?))
    })
}

/// A JSON body's top-level integer field `key` (`retCode` on Bybit, `code` on OKX and Bitunix,
/// which OKX sends as a string). Reads the bytes; an unparseable body gives `None`.
pub fn json_code(body: &[u8], key: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get(key)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(now, 784_111_777_000);
        let h = headers(&[("retry-after", "120")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = headers(&[("retry-after", "99999999999999999999")]);
        assert_eq!(retry_after(&h, now), Some(MAX_COOLDOWN));
        for bad in ["soon", "-5", "1.5", "Sun, 06 Nov 1994 08:49:37 UTC", ""] {
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(retry_after(&h, now), None, "{bad}");
        }
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599_000)
        );
    }

    #[test]
    fn binance_ban_body() {
        let body = br#"{"code":-1003,"msg":"Way too many requests; IP banned until 1529256050872. Please use the websocket for live updates to avoid bans."}"#;
        assert_eq!(binance_banned_until(body), Some(1_529_256_050_872));
        assert_eq!(binance_banned_until(b"banned until soon"), None);
    }

    #[test]
    fn ietf_fields() {
        let h = headers(&[
            ("ratelimit", "\"default\";r=0;t=30"),
            (
                "ratelimit-policy",
                "\"burst\";q=100;w=60,\"daily\";q=1000;w=86400",
            ),
        ]);
        assert_eq!(ietf_ratelimit(&h), Some((0, 30)));
        assert_eq!(ietf_policy(&h), Some((100, 60)));
        let h = headers(&[("ratelimit", "garbage;r=x")]);
        assert_eq!(ietf_ratelimit(&h), None);
    }

    #[test]
    fn json_codes() {
        assert_eq!(
            json_code(br#"{"retCode":10006,"retMsg":"x"}"#, "retCode"),
            Some(10006)
        );
        assert_eq!(
            json_code(br#"{"msg":"Too Many Requests","code":"50011"}"#, "code"),
            Some(50011)
        );
        assert_eq!(json_code(b"not json", "code"), None);
    }
}
