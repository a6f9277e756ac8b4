//! The rate-limit keys: the `[rate_limit]` section (where budgets live) and each upstream's
//! `rate_limit`, `rate_limit_budget` and `priority_rules`.

use super::load::{Loader, key};
use super::raw::{RawPriorityRule, RawRateLimit, RawUpstream};
use super::url::redact_url;
use super::{MAX_STORE_TIMEOUT, RateLimitConfig, SharedRateLimit};
use crate::ratelimit;

impl Loader {
    /// `[rate_limit]`: `store` is `memory` or a `redis://` URL, `key` a plain name, `timeout`
    /// short, `fallback_share` in (0, 1].
    pub(super) fn rate_limit_section(&mut self, raw: RawRateLimit) -> Option<SharedRateLimit> {
        let k = |field: &str| key(&["rate_limit", field]);
        let mut ok = true;
        let redis_url = match raw.store.trim() {
            "memory" => None,
            url if url.starts_with("redis://") => match redis::Client::open(url) {
                Ok(_) => Some(url.to_string()),
                Err(err) => {
                    let message = format!("`{}` is not a usable Redis URL: {err}", redact_url(url));
                    self.problem(k("store"), message);
                    ok = false;
                    None
                }
            },
            other => {
                let message = format!(
                    "`{}` is not a store; use \"memory\" or \"redis://HOST:PORT/DB\"",
                    redact_url(other)
                );
                self.problem(k("store"), message);
                ok = false;
                None
            }
        };
        let key_ok = !raw.key.is_empty()
            && raw.key.len() <= 64
            && raw
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !key_ok {
            self.problem(
                k("key"),
                "must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' or '.', e.g. \"binance-main\"",
            );
            ok = false;
        }
        if raw.timeout.is_zero() || raw.timeout > MAX_STORE_TIMEOUT {
            self.problem(
                k("timeout"),
                "must be more than 0 and at most 2s: every request that asks the store may wait this long",
            );
            ok = false;
        }
        if !(raw.fallback_share > 0.0 && raw.fallback_share <= 1.0) {
            self.problem(
                k("fallback_share"),
                "must be more than 0 and at most 1, e.g. 0.5 for one of two sidecars sharing a budget",
            );
            ok = false;
        }
        ok.then_some(SharedRateLimit {
            redis_url,
            key: raw.key,
            timeout: raw.timeout,
            fallback_share: raw.fallback_share,
        })
    }

    /// `rate_limit`, `rate_limit_budget` and `priority_rules`: each problem reported on its key.
    pub(super) fn rate_limit(
        &mut self,
        name: &str,
        own: &RawUpstream,
        host: &str,
    ) -> Option<RateLimitConfig> {
        let k = |field: &str| key(&["upstreams", name, field]);
        let mut ok = true;
        let profile = ratelimit::profile_for(&own.rate_limit, host);
        if profile.is_none() {
            let message = format!(
                "`{}` is not a rate-limit profile; use one of {}",
                own.rate_limit,
                ratelimit::PROFILE_NAMES.join(", ")
            );
            self.problem(k("rate_limit"), message);
            ok = false;
        }
        let budget = match own.rate_limit_budget.trim() {
            "" => None,
            text => match ratelimit::parse_budget(text) {
                Ok(b) => Some(b),
                Err(message) => {
                    self.problem(k("rate_limit_budget"), message);
                    ok = false;
                    None
                }
            },
        };
        if budget.is_some() && profile.is_some_and(|p| p.is_off()) {
            let message = "has no effect with rate_limit = \"none\"; remove it or choose a profile"
                .to_string();
            self.problem(k("rate_limit_budget"), message);
            ok = false;
        }
        let mut rules = Vec::new();
        for (i, rule) in own.priority_rules.iter().enumerate() {
            match priority_rule(rule) {
                Ok(r) => rules.push(r),
                Err(message) => {
                    self.problem(
                        key(&["upstreams", name, "priority_rules", &i.to_string()]),
                        message,
                    );
                    ok = false;
                }
            }
        }
        let profile = profile?;
        ok.then(|| RateLimitConfig {
            profile,
            budget: budget.or_else(|| (profile.default_budget)(host)),
            rules,
        })
    }
}

/// One `priority_rules` entry: a method of capital letters (or none), a path prefix, a class.
fn priority_rule(rule: &RawPriorityRule) -> Result<ratelimit::ClassRule, String> {
    let method = match rule.method.trim() {
        "" => None,
        m if m.bytes().all(|b| b.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase()),
        m => {
            return Err(format!(
                "method `{m}` is not an HTTP method such as GET or POST"
            ));
        }
    };
    if !rule.prefix.starts_with('/') {
        return Err(format!(
            "prefix `{}` must be a path starting with '/', e.g. \"/api/v3/depth\"",
            rule.prefix
        ));
    }
    let class = ratelimit::parse_priority(rule.class.as_bytes())
        .map_err(|_| format!("class `{}` must be high, normal or low", rule.class))?;
    Ok(ratelimit::ClassRule {
        method,
        prefix: rule.prefix.clone(),
        class,
    })
}
