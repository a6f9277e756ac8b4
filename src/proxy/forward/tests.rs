//! The re-send rule, branch by branch, without a connection.

use super::*;

/// Every combination of the facts an attempt has.
fn all_tried() -> impl Iterator<Item = Tried> {
    (0..8).map(|bits| Tried {
        first: bits & 1 != 0,
        reused: bits & 2 != 0,
        replayable: bits & 4 != 0,
    })
}

fn judged(
    outcome: Outcome<&'static str, &'static str>,
    tried: Tried,
) -> Attempt<&'static str, &'static str> {
    judge(outcome, tried)
}

#[test]
fn a_response_is_passed_on_whatever_the_attempt() {
    for tried in all_tried() {
        assert_eq!(
            judged(Outcome::Answered("head"), tried),
            Attempt::Done("head")
        );
    }
}

#[test]
fn an_unsent_request_is_sent_once_more_whatever_its_method_or_connection() {
    for tried in all_tried() {
        let expected = if tried.first {
            Attempt::SendAgain(RetryReason::Unsent, "closed")
        } else {
            Attempt::Fail("closed")
        };
        assert_eq!(
            judged(Outcome::Unsent("closed"), tried),
            expected,
            "{tried:?}"
        );
    }
}

#[test]
fn only_a_bodiless_read_on_a_reused_connection_is_re_sent_when_it_broke() {
    for tried in all_tried() {
        let outcome = judged(Outcome::Broke("reset"), tried);
        if tried.first && tried.reused && tried.replayable {
            assert_eq!(
                outcome,
                Attempt::SendAgain(RetryReason::Idempotent, "reset")
            );
        } else {
            // A POST (or any request with a body) that may have been sent, a new
            // connection, or a second attempt.
            assert_eq!(outcome, Attempt::Fail("reset"), "{tried:?}");
        }
    }
}

#[test]
fn a_post_that_may_have_been_sent_is_never_sent_again() {
    let post = Tried {
        first: true,
        reused: true,
        replayable: false,
    };
    assert_eq!(
        judged(Outcome::Broke("reset"), post),
        Attempt::Fail("reset")
    );
    assert_eq!(
        judged(Outcome::Failed("garbage"), post),
        Attempt::Fail("garbage")
    );
    assert!(!post.may_replay(), "no copy of an order is kept");
}

#[test]
fn a_new_connection_that_breaks_is_not_re_sent() {
    let get_on_new = Tried {
        first: true,
        reused: false,
        replayable: true,
    };
    assert_eq!(
        judged(Outcome::Broke("reset"), get_on_new),
        Attempt::Fail("reset")
    );
    assert!(!get_on_new.may_replay());
}

#[test]
fn other_failures_are_never_re_sent() {
    for tried in all_tried() {
        assert_eq!(
            judged(Outcome::Failed("timeout"), tried),
            Attempt::Fail("timeout")
        );
    }
}

#[test]
fn there_is_at_most_one_re_send() {
    // Whatever the first attempt was, the second (not `first`) ends the exchange.
    for outcome in [
        Outcome::Unsent("x"),
        Outcome::Broke("x"),
        Outcome::Failed("x"),
    ] {
        let second = Tried {
            first: false,
            reused: true,
            replayable: true,
        };
        assert_eq!(judged(outcome, second), Attempt::Fail("x"));
    }
}

#[test]
fn only_bodiless_get_head_and_options_are_replayable() {
    let request = |method: Method| {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = method;
        req
    };
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        assert!(is_replayable(&request(method)));
    }
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert!(!is_replayable(&request(method)));
    }
}
