//! The error contract of `proto/tokenbroker/v1`, row by row, through real RPCs: Google's
//! answers (injected into the emulator) and the broker's own checks become the documented
//! status, ErrorInfo reason and metadata, BadRequest and RetryInfo. Also: deadlines end
//! with DEADLINE_EXCEEDED or UNAVAILABLE, never CANCELLED.

use std::time::{Duration, Instant};

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use tonic::Code;
use tonic_types::StatusExt as _;

/// A request for `scope` (each row uses its own, so no row sees another's cached token).
fn scoped(scope: &str) -> pb::GetAccessTokenRequest {
    request(&[&format!(
        "https://www.googleapis.com/auth/devstorage.{scope}"
    )])
}

/// A boundary on one bucket.
fn boundary(rules: usize, condition_len: usize) -> pb::CredentialAccessBoundary {
    pb::CredentialAccessBoundary {
        access_boundary_rules: (0..rules)
            .map(|i| pb::AccessBoundaryRule {
                available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
                availability_condition: (condition_len > 0).then(|| pb::AvailabilityCondition {
                    expression: format!(
                        "resource.name.startsWith('projects/_/buckets/b/objects/{i}{}')",
                        "x".repeat(condition_len)
                    ),
                    ..Default::default()
                }),
            })
            .collect(),
    }
}

struct Row {
    name: &'static str,
    fault: Option<serde_json::Value>,
    request: pb::GetAccessTokenRequest,
    code: Code,
    reason: &'static str,
    metadata: Vec<(&'static str, String)>,
    retry: bool,
    bad_request: Option<&'static str>,
}

#[tokio::test]
async fn every_row_of_the_error_table() {
    let harness = Harness::start(Options {
        cache: "[cache]\nnegative_ttl = \"0s\"\n".into(),
        ..Options::default()
    })
    .await;
    let token_host = harness.emulator.addr().to_string();
    let sts_host = token_host.replacen("127.0.0.1", "localhost", 1);
    let delegated = |scope: &str| pb::GetAccessTokenRequest {
        subject: "Alice@Example.com".into(),
        ..scoped(scope)
    };
    let oauth_fault = |status: u16, error: &str, description: &str| {
        Some(
            serde_json::json!({"endpoint": "oauth2.token", "status": status, "error": error,
            "error_description": description, "times": 1}),
        )
    };
    let m = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let rows = vec![
        Row {
            name: "the broker's own key was deleted: invalid_grant is the credential's fault",
            fault: oauth_fault(400, "invalid_grant", "Invalid JWT Signature."),
            request: scoped("a"),
            code: Code::FailedPrecondition,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[
                ("upstream", &token_host),
                ("upstream_status", "400"),
                ("upstream_error", "invalid_grant"),
                ("credential", "sa"),
            ]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "clock skew: invalid_grant is the credential's fault",
            fault: oauth_fault(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
            ),
            request: scoped("b"),
            code: Code::FailedPrecondition,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[("upstream_error", "invalid_grant")]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "an unknown Workspace user: invalid_grant is the request's fault",
            fault: oauth_fault(400, "invalid_grant", "Invalid email or User ID"),
            request: delegated("c"),
            code: Code::InvalidArgument,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[("field", "subject"), ("upstream_error", "invalid_grant")]),
            retry: false,
            bad_request: Some("subject"),
        },
        Row {
            name: "domain-wide delegation the admin has not authorized",
            fault: oauth_fault(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
            ),
            request: delegated("d"),
            code: Code::PermissionDenied,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[
                ("upstream_status", "401"),
                ("upstream_error", "unauthorized_client"),
            ]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "access_denied",
            fault: oauth_fault(403, "access_denied", "Requested client not authorized."),
            request: scoped("e"),
            code: Code::PermissionDenied,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[
                ("upstream_status", "403"),
                ("upstream_error", "access_denied"),
            ]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "invalid_scope",
            fault: oauth_fault(400, "invalid_scope", "Invalid OAuth scope."),
            request: scoped("f"),
            code: Code::InvalidArgument,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[("field", "scopes"), ("upstream_error", "invalid_scope")]),
            retry: false,
            bad_request: Some("scopes"),
        },
        Row {
            name: "invalid_client",
            fault: oauth_fault(401, "invalid_client", "The OAuth client was not found."),
            request: scoped("g"),
            code: Code::FailedPrecondition,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[("upstream_error", "invalid_client")]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "an error code that is not plain is not passed on",
            fault: oauth_fault(400, "invalid_grant\n<script>", "x"),
            request: scoped("h"),
            code: Code::FailedPrecondition,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[("upstream_error", "unknown")]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "Google keeps failing: UNAVAILABLE with the last status",
            fault: Some(serde_json::json!({"endpoint": "oauth2.token", "status": 503, "times": 3})),
            request: scoped("i"),
            code: Code::Unavailable,
            reason: "UPSTREAM_UNAVAILABLE",
            metadata: m(&[("upstream", &token_host), ("upstream_status", "503")]),
            retry: true,
            bad_request: None,
        },
        Row {
            name: "a body that is not a token answer",
            fault: Some(
                serde_json::json!({"endpoint": "oauth2.token", "malformed_body": true, "times": 3}),
            ),
            request: scoped("j"),
            code: Code::Unavailable,
            reason: "UPSTREAM_UNAVAILABLE",
            metadata: m(&[("upstream_status", "malformed")]),
            retry: true,
            bad_request: None,
        },
        Row {
            name: "STS refuses the boundary: its host, not the token endpoint's",
            fault: Some(
                serde_json::json!({"endpoint": "sts.token", "status": 400, "error": "invalid_request",
                "error_description": "The access boundary is invalid.", "times": 1}),
            ),
            request: pb::GetAccessTokenRequest {
                access_boundary: Some(boundary(1, 0)),
                ..scoped("k")
            },
            code: Code::InvalidArgument,
            reason: "UPSTREAM_REJECTED",
            metadata: m(&[
                ("upstream", &sts_host),
                ("upstream_error", "invalid_request"),
                ("field", "access_boundary"),
            ]),
            retry: false,
            bad_request: Some("access_boundary"),
        },
        Row {
            name: "a boundary longer than STS accepts is a local check, not UPSTREAM_REJECTED",
            fault: None,
            request: pb::GetAccessTokenRequest {
                access_boundary: Some(boundary(3, 1900)),
                ..scoped("l")
            },
            code: Code::InvalidArgument,
            reason: "INVALID_ACCESS_BOUNDARY",
            metadata: m(&[("field", "access_boundary")]),
            retry: false,
            bad_request: Some("access_boundary"),
        },
        Row {
            name: "a credential that does not exist is not revealed to a caller without a grant",
            fault: None,
            request: pb::GetAccessTokenRequest {
                credential: "nope".into(),
                ..scoped("m")
            },
            code: Code::PermissionDenied,
            reason: "POLICY_DENIED",
            metadata: m(&[("rule", "no_grant"), ("value", "nope")]),
            retry: false,
            bad_request: None,
        },
        Row {
            name: "a lifetime the credential cannot give, to a caller with a grant",
            fault: None,
            request: pb::GetAccessTokenRequest {
                lifetime: Some(prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                }),
                ..scoped("n")
            },
            code: Code::FailedPrecondition,
            reason: "CREDENTIAL_FLOW_UNSUPPORTED",
            metadata: m(&[
                ("credential", "sa"),
                ("credential_type", "service_account"),
                ("flow", "extended_lifetime"),
            ]),
            retry: false,
            bad_request: None,
        },
    ];

    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    for row in rows {
        harness.emulator.clear_faults();
        if let Some(json) = row.fault {
            harness.emulator.inject_fault(fault(json)).expect("fault");
        }
        let status = client
            .get_access_token(row.request)
            .await
            .expect_err(row.name);
        let (reason, metadata) = error_info(&status);
        assert_eq!(
            (status.code(), reason.as_str()),
            (row.code, row.reason),
            "{}: {status:?}",
            row.name
        );
        for (key, value) in &row.metadata {
            assert_eq!(
                metadata.get(*key),
                Some(value),
                "{}: {key} in {metadata:?}",
                row.name
            );
        }
        assert_eq!(
            retry_delay(&status).is_some(),
            row.retry,
            "{}: RetryInfo",
            row.name
        );
        let details = status.get_error_details();
        assert_eq!(
            details
                .bad_request()
                .map(|b| b.field_violations[0].field.clone())
                .as_deref(),
            row.bad_request,
            "{}: BadRequest",
            row.name
        );
        assert!(
            !status.message().chars().any(char::is_control),
            "{}: {:?}",
            row.name,
            status.message()
        );
    }

    // Google's text is sanitized before it reaches the caller: control characters escaped,
    // length capped.
    harness.emulator.clear_faults();
    harness
        .emulator
        .inject_fault(fault(serde_json::json!({"endpoint": "oauth2.token", "status": 400,
            "error": "invalid_grant", "error_description": format!("line one\n\u{1b}[31mred{}", "z".repeat(5000)),
            "times": 1})))
        .expect("fault");
    let status = client
        .get_access_token(scoped("o"))
        .await
        .expect_err("rejected");
    assert!(
        !status.message().chars().any(char::is_control),
        "{:?}",
        status.message()
    );
    assert!(
        status.message().contains("line one\\n"),
        "{:?}",
        status.message()
    );
    assert!(status.message().len() < 600, "{}", status.message().len());

    // Google's Retry-After is capped (default 60 s) before it becomes RetryInfo.
    harness.emulator.clear_faults();
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 429,
            "retry_after_secs": 86400}),
        ))
        .expect("fault");
    let status = client
        .get_access_token(scoped("p"))
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(60)));

    // A feature of a later release (ExchangeToken's intermediate tokens of client-side
    // boundaries), and Google gone altogether.
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            requested_token_type:
                "urn:ietf:params:oauth:token-type:access_boundary_intermediate_token".into(),
            ..exchange("a-token", JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("not yet");
    assert_eq!(status.code(), Code::Unimplemented);
    let (reason, metadata) = error_info(&status);
    assert_eq!(
        (reason.as_str(), metadata["feature"].as_str()),
        (
            "FEATURE_NOT_IMPLEMENTED",
            "requested_token_type=urn:ietf:params:oauth:token-type:access_boundary_intermediate_token"
        )
    );
    let Harness {
        emulator,
        broker,
        dir,
        ..
    } = harness;
    emulator.shutdown().await;
    let status = client
        .get_access_token(scoped("q"))
        .await
        .expect_err("no Google");
    assert_eq!(status.code(), Code::Unavailable);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream_status"], "connect", "{metadata:?}");
    broker.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_slow_google_ends_the_call_with_deadline_exceeded_or_unavailable_never_cancelled() {
    let harness = Harness::start(Options {
        rpc_timeout: "2s",
        http: "[http]\nrequest_timeout = \"1500ms\"\n[http.retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 3\n[cache]\nbackground_deadline = \"2s\"\n".into(),
        ..Options::default()
    })
    .await;
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 10000}),
        ))
        .expect("fault");
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");

    // With the caller's own deadline: DEADLINE_EXCEEDED, with details, at that deadline.
    let mut with_deadline = tonic::Request::new(request(&[CLOUD_PLATFORM]));
    with_deadline.set_timeout(Duration::from_millis(1000));
    let started = Instant::now();
    let status = client
        .get_access_token(with_deadline)
        .await
        .expect_err("too slow");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "UPSTREAM_DEADLINE_EXCEEDED");
    assert_eq!(metadata["upstream"], harness.emulator.addr().to_string());
    // The broker answers a tenth early, so that the answer beats the client's own timer.
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(1000),
        "{took:?}"
    );

    // Without one (and with one longer than the broker allows): the broker's maximum ends the
    // call, as UNAVAILABLE with RetryInfo.
    for (scope, timeout) in [
        (STORAGE_READ, None),
        (DIRECTORY_READ, Some(Duration::from_secs(30))),
    ] {
        let mut request = tonic::Request::new(request(&[scope]));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let started = Instant::now();
        let status = client
            .get_access_token(request)
            .await
            .expect_err("too slow");
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{timeout:?}: {status:?}");
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "UPSTREAM_UNAVAILABLE");
        assert_eq!(metadata["upstream_status"], "timeout");
        assert!(retry_delay(&status).is_some());
        assert!(
            took >= Duration::from_millis(1700) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn an_impatient_caller_does_not_fail_the_fetch_others_wait_on() {
    let harness = Harness::start(Options::default()).await;
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 600, "times": 1}),
        ))
        .expect("fault");
    let mut impatient = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let mut patient = harness
        .client(Some(&harness.identity(OTHER_APP)))
        .await
        .expect("connect");
    let mut hurried = tonic::Request::new(request(&[CLOUD_PLATFORM]));
    hurried.set_timeout(Duration::from_millis(100));
    let first = tokio::spawn(async move { impatient.get_access_token(hurried).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let response = patient
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("the shared fetch outlived the impatient caller's deadline")
        .into_inner();
    let status = first.await.expect("join").expect_err("too impatient");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(!response.cache_hit);
    assert_eq!(
        harness.emulator.count(gcp_emulator::Endpoint::OAuth2Token),
        1,
        "one fetch, shared"
    );
    harness.stop().await;
}
