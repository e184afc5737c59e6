//! Every answer opendify stops reading before Dify ended it is stopped in Dify too (the
//! adversarial test found Dify generating, and billing, for nobody): an idle stream, a
//! broken or oversized event, a request timeout, a response head that never comes, and of
//! course a client that leaves. Each is counted by reason in `/metrics`.

use std::time::{Duration, Instant};

use crate::common::*;
use mock_dify::MockDify;
use opendify::bridge::StopReason;

/// Waits (generously: the test's machine may be slow) until the mock has `count` stops.
async fn wait_for_stops(mock: &MockDify, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.stops().len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mock.stops()
}

#[tokio::test]
async fn answers_opendify_ends_itself_are_stopped_in_dify_with_the_same_user() {
    let mock = mock().await;
    // Short waits only where the case is about them; everything else keeps the defaults.
    let idle = gateway(&mock, &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let timed = gateway(&mock, &[("REQUEST_TIMEOUT", "2")]).await;
    let patient = gateway(&mock, &[]).await;
    let user = [("x-openwebui-user-id", "stop-me")];
    let cases: &[(&Gateway, &str, bool, StopReason)] = &[
        (&idle, "[[mock:hang]]", true, StopReason::IdleTimeout),
        (&idle, "[[mock:hang]]", false, StopReason::IdleTimeout),
        (&patient, "[[mock:garbage]]", true, StopReason::ProtocolError),
        (&patient, "[[mock:huge]]", true, StopReason::TooLarge),
        (&patient, "[[mock:huge]]", false, StopReason::TooLarge),
        (&timed, "[[mock:hang]]", false, StopReason::RequestTimeout),
    ];
    for (n, (gw, directive, stream, reason)) in cases.iter().enumerate() {
        let body = chat_body("chat", directive, *stream);
        if *stream {
            let result = stream_chat(gw, &body, &user).await;
            assert!(result.error().is_some() && result.done, "{directive}: {}", result.raw);
        } else {
            let (status, headers, body) = post_chat(gw, &body, &user).await;
            assert!(status >= 500, "{directive}: {status} {body}");
            assert_eq!(
                headers["x-should-retry"], "false",
                "{directive}: Dify had the request, a retry would repeat it"
            );
        }
        let stops = wait_for_stops(&mock, n + 1).await;
        assert_eq!(stops.len(), n + 1, "{directive} stream={stream}: Dify was not told to stop");
        assert_eq!(stops[n].1, "stop-me", "the stop is sent as the same user");
        let expected = cases[..=n].iter().filter(|c| c.0.addr == gw.addr && c.3 == *reason).count() as u64;
        assert_eq!(gw.state.metrics.dify_stops(*reason), expected, "{directive}: counted by reason");
    }
    // Dify ending the answer itself (an error event, a cut stream) needs no stop.
    let before = mock.stops().len();
    for directive in ["[[mock:error-mid]]", "[[mock:cut]]"] {
        let result = stream_chat(&patient, &chat_body("chat", directive, true), &user).await;
        assert!(result.error().is_some(), "{directive}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.stops().len(), before, "nothing to stop when Dify ended the answer");
}

/// A Dify that sends no response head: streams are cut after STREAM_IDLE_TIMEOUT with a
/// 504, not held for REQUEST_TIMEOUT, and the task is stopped once Dify names it.
#[tokio::test]
async fn a_response_head_that_does_not_come_is_a_504_after_the_idle_timeout_then_stopped() {
    let mock = mock().await;
    let gw = gateway(&mock, &[("STREAM_IDLE_TIMEOUT", "1"), ("REQUEST_TIMEOUT", "60")]).await;
    let started = Instant::now();
    let (status, headers, body) =
        post_chat(&gw, &chat_body("chat", "[[mock:slow-head]] anyone?", true), &[("x-openwebui-user-id", "late")])
            .await;
    // The mock sends its head after 2 s and then a whole answer: had opendify waited for it
    // (REQUEST_TIMEOUT is 60 s), this would be a 200.
    assert_eq!(status, 504, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "upstream_timeout");
    assert_eq!(headers["x-should-retry"], "false");
    assert!(started.elapsed() < Duration::from_secs(60), "held for REQUEST_TIMEOUT");
    // The mock answers after 2 s; opendify reads the task id and stops it.
    let stops = wait_for_stops(&mock, 1).await;
    assert_eq!(stops.len(), 1, "the late answer was not stopped");
    assert_eq!(stops[0].1, "late");
    assert_eq!(gw.state.metrics.dify_stops(StopReason::HeaderTimeout), 1);
    let metrics = client().get(gw.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("opendify_dify_stops_total{reason=\"header_timeout\"} 1"), "{metrics}");
}
