//! Policy loading and authorization, through the public API.

use std::time::Duration;

use broker_authz::{
    AccessRequest, CallerIdentity, Decision, Denial, DenialRule, GrantOutcome, JwtClaims, Policy,
    Rpc, ServiceAccountPattern, SpiffeId,
};
use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeSet,
};

const CP: &str = "https://www.googleapis.com/auth/cloud-platform";
const GCS_RO: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const GCS_RW: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const BQ: &str = "https://www.googleapis.com/auth/bigquery";
const BQ_RO: &str = "https://www.googleapis.com/auth/bigquery.readonly";
const BUCKET: &str = "//storage.googleapis.com/projects/_/buckets/artifacts";
const VIEWER: &str = "inRole:roles/storage.objectViewer";
const CREATOR: &str = "inRole:roles/storage.objectCreator";

fn spiffe(id: &str) -> CallerIdentity {
    CallerIdentity {
        spiffe_id: Some(SpiffeId::parse(id).expect("spiffe id")),
        dns_names: vec![],
        common_name: None,
        fingerprint: "00".repeat(32),
        not_after: std::time::SystemTime::UNIX_EPOCH,
    }
}

fn dns(names: &[&str]) -> CallerIdentity {
    CallerIdentity {
        spiffe_id: None,
        dns_names: names.iter().map(|s| (*s).to_owned()).collect(),
        common_name: None,
        fingerprint: "00".repeat(32),
        not_after: std::time::SystemTime::UNIX_EPOCH,
    }
}

fn cn(name: &str) -> CallerIdentity {
    CallerIdentity {
        spiffe_id: None,
        dns_names: vec![],
        common_name: Some(name.to_owned()),
        fingerprint: "00".repeat(32),
        not_after: std::time::SystemTime::UNIX_EPOCH,
    }
}

fn name(s: &str) -> CredentialName {
    CredentialName::new(s).expect("credential name")
}

fn scopes(list: &[&str]) -> ScopeSet {
    ScopeSet::parse(list).expect("scopes")
}

fn load(text: &str) -> Policy {
    Policy::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn rule(resource: &str, roles: &[&str], condition: Option<&str>) -> AccessBoundaryRule {
    AccessBoundaryRule {
        available_resource: resource.to_owned(),
        available_permissions: roles.iter().map(|r| (*r).to_owned()).collect(),
        availability_condition: condition.map(|expression| AvailabilityCondition {
            expression: expression.to_owned(),
            title: None,
            description: None,
        }),
    }
}

fn boundary(rules: Vec<AccessBoundaryRule>) -> AccessBoundary {
    AccessBoundary { rules }
}

#[test]
fn every_caller_matcher() {
    let deployer = spiffe("spiffe://example.org/ci/deployer");
    let cases: Vec<(&str, CallerIdentity, bool)> = vec![
        // exact SPIFFE ID
        (
            r#"{ spiffe_id = "spiffe://example.org/ci/deployer" }"#,
            deployer.clone(),
            true,
        ),
        (
            r#"{ spiffe_id = "spiffe://example.org/ci/deployer" }"#,
            spiffe("spiffe://example.org/ci/deployer2"),
            false,
        ),
        (
            r#"{ spiffe_id = "spiffe://example.org/ci/deployer" }"#,
            spiffe("spiffe://example.org/ci/deployer/x"),
            false,
        ),
        (
            r#"{ spiffe_id = "spiffe://example.org/ci/deployer" }"#,
            spiffe("spiffe://other.org/ci/deployer"),
            false,
        ),
        // prefix: only below the path, never siblings that share its letters
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            deployer.clone(),
            true,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            spiffe("spiffe://example.org/ci/a/b"),
            true,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            spiffe("spiffe://example.org/ci"),
            false,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            spiffe("spiffe://example.org/cia"),
            false,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            spiffe("spiffe://example.org/cia/x"),
            false,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/ci/" }"#,
            spiffe("spiffe://example.org.evil/ci/x"),
            false,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/" }"#,
            spiffe("spiffe://example.org/x"),
            true,
        ),
        (
            r#"{ spiffe_prefix = "spiffe://example.org/" }"#,
            spiffe("spiffe://example.org"),
            false,
        ),
        // trust domain
        (
            r#"{ trust_domain = "example.org" }"#,
            deployer.clone(),
            true,
        ),
        (
            r#"{ trust_domain = "example.org" }"#,
            spiffe("spiffe://example.org"),
            true,
        ),
        (
            r#"{ trust_domain = "example.org" }"#,
            spiffe("spiffe://sub.example.org/x"),
            false,
        ),
        (
            r#"{ trust_domain = "example.org" }"#,
            spiffe("spiffe://example.org.evil/x"),
            false,
        ),
        (
            r#"{ trust_domain = "example.org" }"#,
            dns(&["example.org"]),
            false,
        ),
        // DNS: any SAN, case-insensitive, exact
        (
            r#"{ dns = "App.Internal.example.org" }"#,
            dns(&["other.example.org", "app.internal.example.org"]),
            true,
        ),
        (
            r#"{ dns = "app.internal.example.org" }"#,
            dns(&["APP.Internal.Example.Org"]),
            true,
        ),
        (
            r#"{ dns = "app.internal.example.org" }"#,
            dns(&["app.internal.example.org.evil"]),
            false,
        ),
        (
            r#"{ dns = "app.internal.example.org" }"#,
            dns(&["x.app.internal.example.org"]),
            false,
        ),
        // CN: exact
        (r#"{ cn = "legacy-batch" }"#, cn("legacy-batch"), true),
        (r#"{ cn = "legacy-batch" }"#, cn("Legacy-Batch"), false),
        (r#"{ cn = "legacy-batch" }"#, cn("legacy-batch2"), false),
        (r#"{ cn = "legacy-batch" }"#, deployer.clone(), false),
    ];
    for (matcher, caller, expected) in cases {
        let policy = load(&format!(
            "[[grants]]\nname = \"g\"\ncredential = \"c\"\ncallers = [{matcher}]\nscopes = [\"{CP}\"]"
        ));
        let scopes = scopes(&[CP]);
        let request = AccessRequest {
            credential: Some(&name("c")),
            ..AccessRequest::new(Rpc::GetAccessToken, &scopes)
        };
        let result = policy.authorize(&caller, &request);
        assert_eq!(
            result.is_ok(),
            expected,
            "{matcher} vs {caller}: {result:?}"
        );
        if !expected {
            assert_eq!(
                result.expect_err("denied").rule,
                DenialRule::NoGrantForCaller,
                "{matcher} vs {caller}"
            );
        }
    }
}

#[test]
fn weaker_names_do_not_match_a_caller_that_has_a_stronger_one() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "by-dns"
        credential = "c"
        callers = [{{ dns = "app.example.org" }}]
        scopes = ["{CP}"]
        [[grants]]
        name = "by-cn"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}"]
        "#
    ));
    let scopes = scopes(&[CP]);
    let request = AccessRequest {
        credential: Some(&name("c")),
        ..AccessRequest::new(Rpc::GetAccessToken, &scopes)
    };
    let both = CallerIdentity {
        spiffe_id: Some(SpiffeId::parse("spiffe://example.org/app").expect("id")),
        dns_names: vec!["app.example.org".into()],
        common_name: Some("app".into()),
        fingerprint: String::new(),
        not_after: std::time::SystemTime::UNIX_EPOCH,
    };
    assert_eq!(
        policy.authorize(&both, &request).expect_err("denied").rule,
        DenialRule::NoGrantForCaller
    );
    let dns_and_cn = CallerIdentity {
        spiffe_id: None,
        ..both.clone()
    };
    assert_eq!(
        policy
            .authorize(&dns_and_cn, &request)
            .expect("allowed")
            .grant,
        "by-dns"
    );
    let dns_and_other_cn = CallerIdentity {
        dns_names: vec!["other.example.org".into()],
        ..dns_and_cn
    };
    assert_eq!(
        policy
            .authorize(&dns_and_other_cn, &request)
            .expect_err("denied")
            .rule,
        DenialRule::NoGrantForCaller
    );
}

fn shop_policy() -> Policy {
    load(&format!(
        r#"
        [[grants]]
        name = "ci-deployer"
        credential = "prod-deployer"
        default = true
        callers = [{{ spiffe_prefix = "spiffe://example.org/ci/" }}]
        scopes = ["{CP}"]
        scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
        max_lifetime = "30m"

        [[grants]]
        name = "mailer"
        credential = "workspace"
        callers = [{{ spiffe_id = "spiffe://example.org/ci/deployer" }}, {{ cn = "mailer" }}]
        scopes = ["https://www.googleapis.com/auth/gmail.send"]
        subjects = ["Alice@Example.com"]
        subject_domains = ["example.com"]

        [[grants]]
        name = "artifacts"
        credential = "artifacts"
        callers = [{{ trust_domain = "example.org" }}]
        scopes = ["{GCS_RO}", "{GCS_RW}"]
        [[grants.access_boundary.rules]]
        available_resource = "{BUCKET}"
        available_permissions = ["{VIEWER}", "{CREATOR}"]
        [[grants.access_boundary.rules]]
        available_resource = "//storage.googleapis.com/projects/_/buckets/logs"
        available_permissions = ["{VIEWER}"]
        availability_condition = {{ expression = "resource.name.startsWith('projects/_/buckets/logs/objects/ci/')" }}
        "#
    ))
}

#[derive(Clone)]
struct Case<'a> {
    what: &'a str,
    caller: CallerIdentity,
    credential: Option<&'a str>,
    scopes: &'a [&'a str],
    subject: Option<&'a str>,
    boundary: Option<AccessBoundary>,
    expected: Result<&'a str, (Option<&'a str>, &'a str, Option<&'a str>)>,
}

#[test]
fn every_way_to_pass_and_fail() {
    let policy = shop_policy();
    let deployer = spiffe("spiffe://example.org/ci/deployer");
    let base = Case {
        what: "",
        caller: deployer.clone(),
        credential: None,
        scopes: &[CP],
        subject: None,
        boundary: None,
        expected: Ok("ci-deployer"),
    };
    let cases = vec![
        Case {
            what: "default grant, exact scope",
            ..base.clone()
        },
        Case {
            what: "named credential equals default",
            credential: Some("prod-deployer"),
            ..base.clone()
        },
        Case {
            what: "prefix scope",
            scopes: &[GCS_RO, CP],
            ..base.clone()
        },
        Case {
            what: "no grant for the caller",
            caller: spiffe("spiffe://other.org/ci/deployer"),
            expected: Err((None, "no_grant", None)),
            ..base.clone()
        },
        Case {
            what: "no default grant for the caller",
            caller: cn("mailer"),
            expected: Err((None, "default_grant", None)),
            ..base.clone()
        },
        Case {
            what: "credential not granted",
            credential: Some("billing"),
            expected: Err((None, "no_grant", Some("billing"))),
            ..base.clone()
        },
        Case {
            what: "credential granted to others only",
            caller: cn("mailer"),
            credential: Some("prod-deployer"),
            expected: Err((None, "no_grant", Some("prod-deployer"))),
            ..base.clone()
        },
        Case {
            what: "scope not allowed (exact list)",
            scopes: &[CP, BQ],
            expected: Err((Some("ci-deployer"), "scopes", Some(BQ))),
            ..base.clone()
        },
        Case {
            what: "scope not allowed (prefix needs the delimiter)",
            scopes: &["https://www.googleapis.com/auth/devstorage"],
            expected: Err((
                Some("ci-deployer"),
                "scopes",
                Some("https://www.googleapis.com/auth/devstorage"),
            )),
            ..base.clone()
        },
        Case {
            what: "exact scope is not a prefix",
            scopes: &["https://www.googleapis.com/auth/cloud-platform.read-only"],
            expected: Err((
                Some("ci-deployer"),
                "scopes",
                Some("https://www.googleapis.com/auth/cloud-platform.read-only"),
            )),
            ..base.clone()
        },
        Case {
            what: "subject on a grant without subjects",
            subject: Some("alice@example.com"),
            expected: Err((Some("ci-deployer"), "subjects", Some("alice@example.com"))),
            ..base.clone()
        },
        Case {
            what: "subject exact, case-insensitive",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("ALICE@example.COM"),
            expected: Ok("mailer"),
            ..base.clone()
        },
        Case {
            what: "subject by domain",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("bob@EXAMPLE.com"),
            expected: Ok("mailer"),
            ..base.clone()
        },
        Case {
            what: "subject of a look-alike domain",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("alice@evil-example.com"),
            expected: Err((Some("mailer"), "subjects", Some("alice@evil-example.com"))),
            ..base.clone()
        },
        Case {
            what: "subject of a subdomain",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("alice@mail.example.com"),
            expected: Err((Some("mailer"), "subjects", Some("alice@mail.example.com"))),
            ..base.clone()
        },
        Case {
            what: "subject with a second @",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("eve@evil.org@example.com"),
            expected: Err((Some("mailer"), "subjects", Some("eve@evil.org@example.com"))),
            ..base.clone()
        },
        Case {
            what: "subject without a local part",
            credential: Some("workspace"),
            scopes: &["https://www.googleapis.com/auth/gmail.send"],
            subject: Some("@example.com"),
            expected: Err((Some("mailer"), "subjects", Some("@example.com"))),
            ..base.clone()
        },
        Case {
            what: "boundary narrower than the grant's",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![rule(BUCKET, &[VIEWER], Some("true"))])),
            expected: Ok("artifacts"),
            ..base.clone()
        },
        Case {
            what: "boundary on another resource",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![
                rule(BUCKET, &[VIEWER], None),
                rule(
                    "//storage.googleapis.com/projects/_/buckets/secrets",
                    &[VIEWER],
                    None,
                ),
            ])),
            expected: Err((
                Some("artifacts"),
                "access_boundary",
                Some("//storage.googleapis.com/projects/_/buckets/secrets"),
            )),
            ..base.clone()
        },
        Case {
            what: "boundary with more roles",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![rule(
                BUCKET,
                &[VIEWER, "inRole:roles/storage.admin"],
                None,
            )])),
            expected: Err((Some("artifacts"), "access_boundary", Some(BUCKET))),
            ..base.clone()
        },
        Case {
            what: "boundary dropping the grant's condition",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![rule(
                "//storage.googleapis.com/projects/_/buckets/logs",
                &[VIEWER],
                None,
            )])),
            expected: Err((
                Some("artifacts"),
                "access_boundary",
                Some("//storage.googleapis.com/projects/_/buckets/logs"),
            )),
            ..base.clone()
        },
        Case {
            what: "boundary changing the grant's condition",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![rule(
                "//storage.googleapis.com/projects/_/buckets/logs",
                &[VIEWER],
                Some("true"),
            )])),
            expected: Err((
                Some("artifacts"),
                "access_boundary",
                Some("//storage.googleapis.com/projects/_/buckets/logs"),
            )),
            ..base.clone()
        },
        Case {
            what: "boundary keeping the grant's condition",
            credential: Some("artifacts"),
            scopes: &[GCS_RO],
            boundary: Some(boundary(vec![rule(
                "//storage.googleapis.com/projects/_/buckets/logs",
                &[VIEWER],
                Some("resource.name.startsWith('projects/_/buckets/logs/objects/ci/')"),
            )])),
            expected: Ok("artifacts"),
            ..base.clone()
        },
    ];
    for case in cases {
        let credential = case.credential.map(name);
        let scopes = scopes(case.scopes);
        let request = AccessRequest {
            rpc: Rpc::GetAccessToken,
            credential: credential.as_ref(),
            scopes: &scopes,
            subject: case.subject,
            lifetime: None,
            boundary: case.boundary.as_ref(),
            service_account: None,
            delegates: &[],
            audience: None,
            subject_token_type: None,
            jwt_claims: None,
        };
        let result = policy.authorize(&case.caller, &request);
        match (case.expected, result) {
            (Ok(grant), Ok(decision)) => assert_eq!(decision.grant, grant, "{}", case.what),
            (Err((grant, rule, value)), Err(denial)) => {
                assert_eq!(denial.grant.as_deref(), grant, "{}: {denial}", case.what);
                assert_eq!(denial.rule_name(), rule, "{}: {denial}", case.what);
                assert_eq!(denial.value(), value, "{}: {denial}", case.what);
                assert_eq!(denial.caller, case.caller.to_string(), "{}", case.what);
            }
            (expected, result) => panic!("{}: expected {expected:?}, got {result:?}", case.what),
        }
    }
}

#[test]
fn decisions_carry_the_effective_request() {
    let policy = shop_policy();
    let deployer = spiffe("spiffe://example.org/ci/deployer");
    let cp = scopes(&[CP]);
    let authorize = |lifetime: Option<Duration>| {
        policy.authorize(
            &deployer,
            &AccessRequest {
                lifetime,
                ..AccessRequest::new(Rpc::GetAccessToken, &cp)
            },
        )
    };
    let decision = authorize(Some(Duration::from_secs(3600))).expect("allowed");
    assert_eq!(
        decision,
        Decision {
            grant: "ci-deployer".into(),
            credential: name("prod-deployer"),
            lifetime: Some(Duration::from_secs(1800)),
            max_lifetime: Some(Duration::from_secs(1800)),
            boundary: None,
            rate_limit: None,
            distinct_keys: None,
        }
    );
    assert_eq!(
        authorize(Some(Duration::from_secs(600)))
            .expect("allowed")
            .lifetime,
        Some(Duration::from_secs(600))
    );
    let unspecified = authorize(None).expect("allowed");
    assert_eq!(unspecified.lifetime, None);
    assert_eq!(
        unspecified.lifetime_or(Duration::from_secs(3600)),
        Duration::from_secs(1800)
    );
    let fixed = unspecified.check_fixed_lifetime(&deployer, Duration::from_secs(3600));
    let denial = fixed.expect_err("the fixed hour exceeds the 30 minute cap");
    assert_eq!(denial.rule_name(), "max_lifetime");
    assert_eq!(denial.grant.as_deref(), Some("ci-deployer"));
    assert!(
        unspecified
            .check_fixed_lifetime(&deployer, Duration::from_secs(1800))
            .is_ok()
    );

    // Without max_lifetime a lifetime passes unchanged.
    let gcs = scopes(&[GCS_RO]);
    let artifacts = name("artifacts");
    let decision = policy
        .authorize(
            &deployer,
            &AccessRequest {
                credential: Some(&artifacts),
                lifetime: Some(Duration::from_secs(43200)),
                ..AccessRequest::new(Rpc::GetAccessToken, &gcs)
            },
        )
        .expect("allowed");
    assert_eq!(decision.lifetime, Some(Duration::from_secs(43200)));
    assert_eq!(
        decision.lifetime_or(Duration::from_secs(3600)),
        Duration::from_secs(43200)
    );
    // The grant's boundary applies when the request has none...
    let imposed = policy
        .grant("artifacts")
        .and_then(|g| g.access_boundary())
        .cloned();
    assert!(imposed.is_some());
    assert_eq!(decision.boundary, imposed);
    // ...and a narrower request boundary replaces it.
    let narrow = boundary(vec![rule(BUCKET, &[VIEWER], None)]);
    let decision = policy
        .authorize(
            &deployer,
            &AccessRequest {
                credential: Some(&artifacts),
                boundary: Some(&narrow),
                ..AccessRequest::new(Rpc::GetAccessToken, &gcs)
            },
        )
        .expect("allowed");
    assert_eq!(decision.boundary, Some(narrow.clone()));
    // Without a grant boundary the request's is used, or none.
    let decision = policy
        .authorize(
            &deployer,
            &AccessRequest {
                boundary: Some(&narrow),
                ..AccessRequest::new(Rpc::GetAccessToken, &cp)
            },
        )
        .expect("allowed");
    assert_eq!(decision.boundary, Some(narrow));
}

#[test]
fn the_closest_grant_is_named() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "other-credential"
        credential = "other"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}", "{BQ}", "{GCS_RO}"]
        subjects = ["alice@example.com"]

        [[grants]]
        name = "two-scopes-missing"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}"]

        [[grants]]
        name = "one-scope-missing"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}", "{BQ}"]

        [[grants]]
        name = "one-scope-missing-too"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}", "{GCS_RO}"]

        [[grants]]
        name = "wrong-subject"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}", "{BQ}", "{GCS_RO}"]
        subjects = ["bob@example.com"]

        [[grants]]
        name = "not-this-caller"
        credential = "c"
        callers = [{{ cn = "someone-else" }}]
        scopes = ["{CP}", "{BQ}", "{GCS_RO}"]
        subjects = ["alice@example.com"]
        "#
    ));
    let caller = cn("app");
    let c = name("c");
    let ask = |list: &[&str], subject: Option<&str>| {
        let scopes = scopes(list);
        policy
            .authorize(
                &caller,
                &AccessRequest {
                    credential: Some(&c),
                    subject,
                    ..AccessRequest::new(Rpc::GetAccessToken, &scopes)
                },
            )
            .expect_err("denied")
    };
    // A later stage wins over fewer missing scopes and over file order.
    let denial = ask(&[CP, BQ, GCS_RO], Some("alice@example.com"));
    assert_eq!(denial.grant.as_deref(), Some("wrong-subject"));
    assert_eq!(denial.rule_name(), "subjects");
    // Among scope failures, the fewest missing scopes (one-scope-missing and wrong-subject
    // miss one, the others two), then file order.
    let denial = ask(&[CP, BQ, BQ_RO], None);
    assert_eq!(denial.grant.as_deref(), Some("one-scope-missing"));
    assert_eq!(
        denial.rule,
        DenialRule::ScopeNotAllowed {
            scopes: vec![BQ_RO.to_owned()]
        }
    );
    let message = denial.to_string();
    assert!(message.contains("one-scope-missing"), "{message}");
    assert!(message.contains("caller app"), "{message}");
    assert!(message.contains(&format!("scope {BQ_RO}")), "{message}");
    // Every scope missing everywhere: the first grant for the credential.
    let denial = ask(&[CP, BQ, GCS_RO, BQ_RO], None);
    assert_eq!(denial.grant.as_deref(), Some("wrong-subject"));
    let denial = ask(&["https://x/a"], None);
    assert_eq!(denial.grant.as_deref(), Some("two-scopes-missing"));
}

#[test]
fn a_request_without_credential_is_one_naming_the_default_grants_credential() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "not-default"
        credential = "a"
        callers = [{{ trust_domain = "example.org" }}]
        scopes = ["{CP}"]

        [[grants]]
        name = "default-a"
        credential = "a"
        default = true
        callers = [{{ spiffe_prefix = "spiffe://example.org/team/" }}]
        scopes = ["{GCS_RO}"]

        [[grants]]
        name = "default-b"
        credential = "b"
        default = true
        callers = [{{ trust_domain = "example.org" }}]
        scopes = ["{BQ}"]
        "#
    ));
    let team = spiffe("spiffe://example.org/team/app");
    let other = spiffe("spiffe://example.org/other/app");
    assert_eq!(
        policy.default_grant(&team).map(|g| g.name()),
        Some("default-a")
    );
    assert_eq!(
        policy.default_grant(&other).map(|g| g.name()),
        Some("default-b")
    );
    assert_eq!(policy.default_grant(&cn("x")).map(|g| g.name()), None);

    let cp = scopes(&[CP]);
    // The first matching default picks credential `a`; every grant for `a` then counts,
    // including the non-default one that allows this scope.
    let decision = policy
        .authorize(&team, &AccessRequest::new(Rpc::GetAccessToken, &cp))
        .expect("allowed");
    assert_eq!(
        (decision.grant.as_str(), decision.credential.as_str()),
        ("not-default", "a")
    );
    // The second default grant is never the team's default, even for its own scopes.
    let bq = scopes(&[BQ]);
    let denial = policy
        .authorize(&team, &AccessRequest::new(Rpc::GetAccessToken, &bq))
        .expect_err("denied");
    assert_eq!(denial.rule_name(), "scopes");
    assert_eq!(denial.grant.as_deref(), Some("not-default"));
    // Others get `b` by default.
    let decision = policy
        .authorize(&other, &AccessRequest::new(Rpc::GetAccessToken, &bq))
        .expect("allowed");
    assert_eq!(decision.credential.as_str(), "b");
}

#[test]
fn explain_reports_every_grant() {
    let policy = shop_policy();
    let deployer = spiffe("spiffe://example.org/ci/deployer");
    let bq = scopes(&[BQ]);
    let explanation = policy.explain(&deployer, &AccessRequest::new(Rpc::GetAccessToken, &bq));
    let outcomes: Vec<(&str, &GrantOutcome)> = explanation
        .grants
        .iter()
        .map(|check| (check.grant.as_str(), &check.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "ci-deployer",
                &GrantOutcome::Denied(DenialRule::ScopeNotAllowed {
                    scopes: vec![BQ.to_owned()]
                })
            ),
            ("mailer", &GrantOutcome::CredentialNotMatched),
            ("artifacts", &GrantOutcome::CredentialNotMatched),
        ]
    );
    assert_eq!(
        explanation.result,
        policy.authorize(&deployer, &AccessRequest::new(Rpc::GetAccessToken, &bq))
    );

    let cp = scopes(&[CP]);
    let explanation = policy.explain(&cn("nobody"), &AccessRequest::new(Rpc::GetAccessToken, &cp));
    assert!(
        explanation
            .grants
            .iter()
            .all(|check| check.outcome == GrantOutcome::CallerNotMatched)
    );
    let explanation = policy.explain(&deployer, &AccessRequest::new(Rpc::GetAccessToken, &cp));
    assert_eq!(explanation.grants[0].outcome, GrantOutcome::Allowed);
    assert_eq!(explanation.grants.len(), 3);
}

#[test]
fn an_empty_policy_denies_everything() {
    for text in ["", "grants = []"] {
        let policy = load(text);
        let cp = scopes(&[CP]);
        let denial = policy
            .authorize(
                &spiffe("spiffe://example.org/a"),
                &AccessRequest::new(Rpc::GetAccessToken, &cp),
            )
            .expect_err("denied");
        assert_eq!(denial.rule, DenialRule::NoGrantForCaller);
        assert_eq!(denial.grant, None);
    }
    assert_eq!(Policy::default(), load(""));
}

#[test]
fn denial_messages_name_what_failed() {
    let deny = |grant: Option<&str>, rule| Denial {
        caller: "spiffe://example.org/a".into(),
        grant: grant.map(str::to_owned),
        rule,
    };
    let cases = [
        (
            deny(None, DenialRule::NoGrantForCaller),
            "no_grant",
            "no grant for caller spiffe://example.org/a",
        ),
        (
            deny(None, DenialRule::NoDefaultGrant),
            "default_grant",
            "name a credential",
        ),
        (
            deny(
                None,
                DenialRule::CredentialNotGranted {
                    credential: name("prod"),
                },
            ),
            "no_grant",
            "use credential prod",
        ),
        (
            deny(
                Some("g"),
                DenialRule::ScopeNotAllowed {
                    scopes: (0..7).map(|i| format!("https://x/{i}")).collect(),
                },
            ),
            "scopes",
            "grant g (the closest for caller spiffe://example.org/a) does not allow scopes https://x/0, https://x/1, https://x/2, https://x/3, https://x/4 and 2 more",
        ),
        (
            deny(
                Some("g"),
                DenialRule::SubjectNotAllowed {
                    subject: "eve@evil.org".into(),
                },
            ),
            "subjects",
            "domain-wide delegation to eve@evil.org",
        ),
        (
            deny(
                Some("g"),
                DenialRule::BoundaryWider {
                    rule: 1,
                    resource: BUCKET.into(),
                },
            ),
            "access_boundary",
            "rule 1 of the requested boundary",
        ),
        (
            deny(
                Some("g"),
                DenialRule::LifetimeAboveMax {
                    lifetime: Duration::from_secs(3600),
                    max: Duration::from_secs(900),
                },
            ),
            "max_lifetime",
            "limits tokens to 900 s",
        ),
        (
            deny(
                Some("g"),
                DenialRule::ServiceAccountNotAllowed {
                    service_account: "x@p-123456.iam.gserviceaccount.com".into(),
                },
            ),
            "service_accounts",
            "does not allow acting as service account x@p-123456.iam.gserviceaccount.com",
        ),
        (
            deny(
                Some("g"),
                DenialRule::DelegatesNotAllowed {
                    chain: "a@p-123456.iam.gserviceaccount.com,b@p-123456.iam.gserviceaccount.com"
                        .into(),
                },
            ),
            "delegates",
            "delegation chain a@p-123456.iam.gserviceaccount.com,b@p-123456.iam.gserviceaccount.com",
        ),
        (
            deny(
                Some("g"),
                DenialRule::AudienceNotAllowed {
                    audience: "https://x.example.com".into(),
                },
            ),
            "audiences",
            "does not allow audience https://x.example.com",
        ),
        (
            deny(Some("g"), DenialRule::JwtAudienceNotAllowed),
            "jwt_claims",
            "sign_jwt.required_audiences",
        ),
        (
            deny(
                Some("g"),
                DenialRule::JwtExpiryNotAllowed {
                    max_expiry: Duration::from_secs(900),
                    missing: true,
                },
            ),
            "jwt_claims",
            "at most 900 s from now, and the payload has no exp",
        ),
        (
            deny(
                Some("g"),
                DenialRule::JwtExpiryNotAllowed {
                    max_expiry: Duration::from_secs(900),
                    missing: false,
                },
            ),
            "jwt_claims",
            "the payload expires later",
        ),
    ];
    for (denial, rule, text) in cases {
        assert_eq!(denial.rule_name(), rule);
        let message = denial.to_string();
        assert!(message.contains(text), "{message}");
    }
}

#[test]
fn load_errors_name_their_place() {
    let grant = |extra: &str| {
        format!(
            "[[grants]]\nname = \"g\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\n{extra}\n"
        )
    };
    let two = |a: &str, b: &str| format!("{}{}", grant(a), grant(b).replace("\"g\"", "\"h\""));
    let cases: Vec<(String, &str, &str)> = vec![
        ("[[grants]\n".into(), "", "unclosed array table"),
        ("grant = []".into(), "grant", "unknown field `grant`"),
        (grant("colour = \"red\""), "grants[0].colour", "unknown field `colour`"),
        (
            grant("[grants.access_boundary]\nrules = [{ available_resource = \"//s/b\", available_permissions = [\"inRole:roles/x\"], role = \"x\" }]"),
            "grants[0].access_boundary.rules[0].role",
            "unknown field `role`",
        ),
        (
            "[[grants]]\nname = \"g\"\ncredential = \"c\"\ncallers = [{ cn = \"x\", colour = \"red\" }]".into(),
            "grants[0].callers[0].colour",
            "unknown field `colour`",
        ),
        ("[[grants]]\nname = \"g\"\ncredential = \"c\"".into(), "grants[0]", "missing field `callers`"),
        (grant("scopes = \"https://x/y\""), "grants[0].scopes", "invalid type"),
        (two("", "scopes = [\"https://x/a\", 7]"), "grants[1].scopes[1]", "invalid type"),
        (grant("default = \"yes\""), "grants[0].default", "invalid type"),
        (grant("scopes = [\"https://x/a\", \"cloud-platform\"]"), "grants[0].scopes[1]", "not an OAuth scope"),
        (grant("scopes = [\"\"]"), "grants[0].scopes[0]", "must not be empty"),
        (grant(&format!("scopes = [\"https://x/{}\"]", "a".repeat(300))), "grants[0].scopes[0]", "longer than 256"),
        (grant("scope_prefixes = [\"https://www.googleapis.com/auth/cloud\"]"), "grants[0].scope_prefixes[0]", "ending with '/' or '.'"),
        (grant("scope_prefixes = [\"https://www.googleapis.com.\"]"), "grants[0].scope_prefixes[0]", "with a path"),
        (grant("scope_prefixes = [\"https://www.googleapis.com/\"]"), "grants[0].scope_prefixes[0]", "below the host"),
        (grant("scope_prefixes = [\"https://www.googleapis.com/auth/\"]"), "grants[0].scope_prefixes[0]", "would match https://www.googleapis.com/auth/cloud-platform"),
        (grant("scope_prefixes = [\"https://www.googleapis.com/auth/cloud-platform.\"]"), "grants[0].scope_prefixes[0]", "would match https://www.googleapis.com/auth/cloud-platform.read-only"),
        (grant("rpcs = []"), "grants[0].rpcs", "at least one RPC"),
        (grant("rpcs = [\"GetAccessToken\", \"getIdToken\"]"), "grants[0].rpcs[1]", "not an RPC"),
        (grant("rate_limit = { per_second = 0, burst = 5 }"), "grants[0].rate_limit", "per_second must be"),
        (grant("rate_limit = { per_second = 5, burst = 0 }"), "grants[0].rate_limit", "burst at least 1"),
        (grant("rate_limit = { per_second = 5 }"), "grants[0].rate_limit", "missing field `burst`"),
        (grant("distinct_keys = 0"), "grants[0].distinct_keys", "from 1 to"),
        (grant("scope_prefixes = [\"http://x/\"]"), "grants[0].scope_prefixes[0]", "not an OAuth scope"),
        (grant("max_lifetime = \"1 fortnight\""), "grants[0].max_lifetime", "unknown time unit"),
        (grant("max_lifetime = 3600"), "grants[0].max_lifetime", "invalid type"),
        (grant("max_lifetime = \"30s\""), "grants[0].max_lifetime", "from 60s to 12h"),
        (grant("max_lifetime = \"13h\""), "grants[0].max_lifetime", "from 60s to 12h"),
        (grant("max_lifetime = \"90s 500ms\""), "grants[0].max_lifetime", "whole seconds"),
        (grant("subjects = [\"alice\"]"), "grants[0].subjects[0]", "not an e-mail address"),
        (grant("subjects = [\"alice@\"]"), "grants[0].subjects[0]", "not an e-mail address"),
        (grant("subject_domains = [\"@example.com\"]"), "grants[0].subject_domains[0]", "not a domain name"),
        (
            grant("[grants.access_boundary]\nrules = []"),
            "grants[0].access_boundary.rules",
            "between 1 and 10 rules",
        ),
        (
            grant("[[grants.access_boundary.rules]]\navailable_resource = \"storage.googleapis.com/b\"\navailable_permissions = [\"inRole:roles/x\"]"),
            "grants[0].access_boundary.rules[0].available_resource",
            "full resource name",
        ),
        (
            grant("[[grants.access_boundary.rules]]\navailable_resource = \"//s/b\"\navailable_permissions = [\"inRole:roles/x\", \"roles/y\"]"),
            "grants[0].access_boundary.rules[0].available_permissions[1]",
            "inRole:roles/NAME",
        ),
        (
            grant("[[grants.access_boundary.rules]]\navailable_resource = \"//s/b\"\navailable_permissions = [\"inRole:roles/x\"]\navailability_condition = { expression = \" \" }"),
            "grants[0].access_boundary.rules[0].availability_condition.expression",
            "CEL expression",
        ),
        (format!("{}{}", grant(""), grant("")), "grants[1].name", "duplicate grant name \"g\" (also grants[0])"),
        (grant("").replace("\"g\"", "\"G\""), "grants[0].name", "invalid grant name"),
        (grant("").replace("\"g\"", "\"\""), "grants[0].name", "invalid grant name"),
        (grant("").replace("\"c\"", "\"Prod\""), "grants[0].credential", "invalid credential name"),
        (grant("").replace("[{ cn = \"x\" }]", "[]"), "grants[0].callers", "at least one caller"),
        (grant("").replace("{ cn = \"x\" }", "{ cn = \"x\" }, {}"), "grants[0].callers[1]", "exactly one of"),
        (
            grant("").replace("{ cn = \"x\" }", "{ cn = \"x\", dns = \"x.example.org\" }"),
            "grants[0].callers[0]",
            "exactly one of",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ spiffe_prefix = \"spiffe://example.org/ci\" }"),
            "grants[0].callers[0].spiffe_prefix",
            "must end with '/'",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ spiffe_prefix = \"spiffe://example.org//\" }"),
            "grants[0].callers[0].spiffe_prefix",
            "empty",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ spiffe_id = \"spiffe://Example.org/a\" }"),
            "grants[0].callers[0].spiffe_id",
            "lowercase",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ spiffe_id = \"spiffe://example.org/a/../b\" }"),
            "grants[0].callers[0].spiffe_id",
            "'.' or '..'",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ trust_domain = \"example.org:443\" }"),
            "grants[0].callers[0].trust_domain",
            "lowercase",
        ),
        (
            grant("").replace("{ cn = \"x\" }", "{ dns = \"*.example.org\" }"),
            "grants[0].callers[0].dns",
            "no wildcard",
        ),
        (grant("").replace("{ cn = \"x\" }", "{ cn = \"\" }"), "grants[0].callers[0].cn", "non-empty"),
        (
            two("default = true", "default = true").replace("callers = [{ cn = \"x\" }]", "callers = [{ cn = \"x\" }, { cn = \"y\" }]")
                .replacen("[{ cn = \"x\" }, { cn = \"y\" }]", "[{ cn = \"y\" }, { cn = \"x\" }, { cn = \"y\" }]", 1),
            "grants[1].default",
            "same callers as grant \"g\" (grants[0])",
        ),
    ];
    for (text, path, message) in cases {
        let error = Policy::from_toml_str(&text).expect_err(&text);
        assert_eq!(error.path(), path, "{text}\n=> {error}");
        assert!(error.message().contains(message), "{text}\n=> {error}");
        assert!(error.to_string().starts_with("policy: "), "{error}");
    }
    // Serde and syntax errors also carry the line.
    let error = Policy::from_toml_str(&grant("colour = \"red\"")).expect_err("unknown field");
    assert_eq!(error.line(), Some(5));
    assert!(error.to_string().ends_with("(line 5)"), "{error}");
    // Default grants for different callers may overlap: not an error.
    let overlapping = two("default = true", "default = true").replacen(
        "{ cn = \"x\" }",
        "{ cn = \"x\" }, { cn = \"y\" }",
        1,
    );
    assert!(Policy::from_toml_str(&overlapping).is_ok());
    // A non-default grant may repeat a default grant's callers.
    assert!(Policy::from_toml_str(&two("default = true", "")).is_ok());
}

#[test]
fn loaded_grants_are_normalized() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "g"
        credential = "c"
        callers = [{{ dns = "B.example.org" }}, {{ cn = "a" }}, {{ dns = "b.example.org" }}]
        scopes = ["{GCS_RO}", "{CP}", "{CP}"]
        subjects = ["Alice@Example.com"]
        subject_domains = ["Example.COM"]
        max_lifetime = "1h 30m"
        "#
    ));
    let grant = policy.grant("g").expect("grant");
    assert_eq!(grant.callers().len(), 2);
    assert_eq!(grant.scopes(), [CP, GCS_RO]);
    assert_eq!(grant.subjects(), ["alice@example.com"]);
    assert_eq!(grant.subject_domains(), ["example.com"]);
    assert_eq!(grant.max_lifetime(), Some(Duration::from_secs(5400)));
    assert!(!grant.is_default());
    assert_eq!(grant.credential().map(CredentialName::as_str), Some("c"));
    assert!(!grant.is_plain_exchange());
    assert!(grant.subject_token_types().is_empty());
    assert!(grant.access_boundary().is_none());
    assert!(grant.scope_prefixes().is_empty());
    assert_eq!(grant.rpcs(), [Rpc::GetAccessToken], "the default");
    assert_eq!(grant.rate_limit(), None);
    assert_eq!(grant.distinct_keys(), None);
}

#[test]
fn grants_name_the_rpcs_they_allow() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "tokens-only"
        credential = "c"
        callers = [{{ spiffe_id = "spiffe://example.org/a" }}]
        scopes = ["{CP}"]

        [[grants]]
        name = "signer"
        credential = "c"
        callers = [{{ spiffe_id = "spiffe://example.org/a" }}]
        rpcs = ["SignBlob", "SignJwt", "SignBlob"]
        rate_limit = {{ per_second = 0.5, burst = 3 }}
        distinct_keys = 8
        "#
    ));
    let caller = spiffe("spiffe://example.org/a");
    let cp = scopes(&[CP]);
    let c = name("c");
    let with_credential = |rpc| AccessRequest {
        credential: Some(&c),
        ..AccessRequest::new(rpc, &cp)
    };
    assert_eq!(
        policy
            .authorize(&caller, &with_credential(Rpc::GetAccessToken))
            .expect("allowed")
            .grant,
        "tokens-only"
    );

    // A grant without `rpcs` allows GetAccessToken only; the closest grant is named.
    let denial = policy
        .authorize(&caller, &with_credential(Rpc::ImpersonateServiceAccount))
        .expect_err("denied");
    assert_eq!(denial.rule_name(), "rpc");
    assert_eq!(denial.value(), Some("ImpersonateServiceAccount"));
    assert!(
        denial
            .to_string()
            .contains("does not allow ImpersonateServiceAccount"),
        "{denial}"
    );

    // The signer grant allows SignJwt (no scopes asked) and carries its limits.
    let none = ScopeSet::parse(Vec::<String>::new()).expect("empty");
    let decision = policy
        .authorize(
            &caller,
            &AccessRequest {
                credential: Some(&c),
                ..AccessRequest::new(Rpc::SignJwt, &none)
            },
        )
        .expect("allowed");
    assert_eq!(decision.grant, "signer");
    let limit = decision.rate_limit.expect("rate limit");
    assert_eq!(limit.burst(), 3);
    assert_eq!(limit.interval(), Duration::from_secs(2));
    assert_eq!(decision.distinct_keys, Some(8));
    assert_eq!(
        policy.grant("signer").expect("grant").rpcs(),
        [Rpc::SignJwt, Rpc::SignBlob]
    );
}

#[test]
fn a_real_certificate_through_the_policy() {
    use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};

    let mut params =
        CertificateParams::new(vec!["Deployer.Example.org".to_owned()]).expect("params");
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from("spiffe://example.org/ci/deployer").expect("ia5"),
    ));
    let key = KeyPair::generate().expect("key");
    let der = params.self_signed(&key).expect("cert").der().to_vec();
    let caller = CallerIdentity::from_certificate_der(&der).expect("identity");
    assert_eq!(caller.dns_names, ["deployer.example.org"]);

    let policy = shop_policy();
    let gcs = scopes(&[GCS_RW]);
    let decision = policy
        .authorize(&caller, &AccessRequest::new(Rpc::GetAccessToken, &gcs))
        .expect("allowed");
    assert_eq!(decision.credential.as_str(), "prod-deployer");
}

// ---------------------------------------------------------------------------------------------
// Service accounts, delegation chains, ID-token audiences and SignJwt claims.

const READER: &str = "reader@dev-project.iam.gserviceaccount.com";
const WRITER: &str = "writer@dev-project.iam.gserviceaccount.com";
const HOP: &str = "hop@dev-project.iam.gserviceaccount.com";
const SIGNER: &str = "signer@dev-project.iam.gserviceaccount.com";
const BATCH_A: &str = "a@batch-project.iam.gserviceaccount.com";
const BATCH_B: &str = "b@batch-project.iam.gserviceaccount.com";
const HELLO: &str = "https://hello-abc-uc.a.run.app";
const API: &str = "https://api.example.com";
const OTHER_API: &str = "https://other.example.com";

fn service_account_policy() -> Policy {
    load(&format!(
        r#"
        [[grants]]
        name = "impersonate"
        credential = "broker"
        default = true
        callers = [{{ spiffe_id = "spiffe://example.org/app" }}]
        rpcs = ["ImpersonateServiceAccount", "GenerateIdToken"]
        scopes = ["{CP}"]
        service_accounts = ["Reader@Dev-Project.iam.gserviceaccount.com", "*@batch-project.iam.gserviceaccount.com"]
        delegates = [
          ["{HOP}"],
          ["{HOP}", "*@batch-project.iam.gserviceaccount.com"],
        ]
        audiences = ["{HELLO}"]
        audience_prefixes = ["{API}/"]
        max_lifetime = "30m"

        [[grants]]
        name = "signer"
        credential = "broker"
        callers = [{{ spiffe_id = "spiffe://example.org/app" }}]
        rpcs = ["SignJwt"]
        service_accounts = ["{SIGNER}"]
        [grants.sign_jwt]
        required_audiences = ["{API}", "{OTHER_API}"]
        max_expiry = "15m"

        [[grants]]
        name = "blob-signer"
        credential = "broker"
        callers = [{{ spiffe_id = "spiffe://example.org/app" }}]
        rpcs = ["SignBlob"]
        service_accounts = ["{SIGNER}"]

        [[grants]]
        name = "any-https-id-token"
        credential = "broker"
        default = true
        callers = [{{ spiffe_id = "spiffe://example.org/web" }}]
        rpcs = ["GenerateIdToken"]
        audience_prefixes = ["https://"]
        "#
    ))
}

#[derive(Clone)]
struct SaCase<'a> {
    what: &'a str,
    caller: &'a str,
    rpc: Rpc,
    scopes: &'a [&'a str],
    service_account: Option<&'a str>,
    delegates: &'a [&'a str],
    audience: Option<&'a str>,
    /// `aud` values and `exp` seconds from now.
    jwt: Option<(&'a [&'a str], Option<u64>)>,
    expected: Result<&'a str, (&'a str, &'a str, Option<&'a str>)>,
}

fn run_sa_case(policy: &Policy, case: &SaCase<'_>) -> Result<Decision, Denial> {
    let scopes = scopes(case.scopes);
    let delegates: Vec<String> = case.delegates.iter().map(|d| (*d).to_owned()).collect();
    let aud: Vec<String> = case
        .jwt
        .map(|(aud, _)| aud.iter().map(|a| (*a).to_owned()).collect())
        .unwrap_or_default();
    let request = AccessRequest {
        service_account: case.service_account,
        delegates: &delegates,
        audience: case.audience,
        jwt_claims: case.jwt.map(|(_, exp)| JwtClaims {
            aud: &aud,
            expires_in: exp.map(Duration::from_secs),
        }),
        ..AccessRequest::new(case.rpc, &scopes)
    };
    policy.authorize(&spiffe(case.caller), &request)
}

fn check_sa_cases(policy: &Policy, cases: &[SaCase<'_>]) {
    for case in cases {
        match (case.expected, run_sa_case(policy, case)) {
            (Ok(grant), Ok(decision)) => {
                assert_eq!(decision.grant, grant, "{}", case.what);
                assert_eq!(decision.credential.as_str(), "broker", "{}", case.what);
            }
            (Err((grant, rule, value)), Err(denial)) => {
                assert_eq!(
                    denial.grant.as_deref(),
                    Some(grant),
                    "{}: {denial}",
                    case.what
                );
                assert_eq!(denial.rule_name(), rule, "{}: {denial}", case.what);
                assert_eq!(denial.value(), value, "{}: {denial}", case.what);
                if let Some(value) = value {
                    assert!(
                        denial.to_string().contains(value),
                        "{}: {denial}",
                        case.what
                    );
                }
            }
            (expected, result) => panic!("{}: expected {expected:?}, got {result:?}", case.what),
        }
    }
}

#[test]
fn service_accounts_pass_and_fail() {
    let policy = service_account_policy();
    let base = SaCase {
        what: "",
        caller: "spiffe://example.org/app",
        rpc: Rpc::ImpersonateServiceAccount,
        scopes: &[CP],
        service_account: Some(READER),
        delegates: &[],
        audience: None,
        jwt: None,
        expected: Ok("impersonate"),
    };
    check_sa_cases(
        &policy,
        &[
            SaCase {
                what: "exact email",
                ..base.clone()
            },
            SaCase {
                what: "exact email, any case",
                service_account: Some("READER@dev-project.IAM.gserviceaccount.com"),
                ..base.clone()
            },
            SaCase {
                what: "every account of a project",
                service_account: Some(BATCH_A),
                ..base.clone()
            },
            SaCase {
                what: "another account of the same project as an exact entry",
                service_account: Some(WRITER),
                expected: Err(("impersonate", "service_accounts", Some(WRITER))),
                ..base.clone()
            },
            SaCase {
                what: "the value is the email as requested",
                service_account: Some("Writer@dev-project.iam.gserviceaccount.com"),
                expected: Err((
                    "impersonate",
                    "service_accounts",
                    Some("Writer@dev-project.iam.gserviceaccount.com"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "a scope the grant does not allow, for an allowed account",
                scopes: &[BQ],
                expected: Err(("impersonate", "scopes", Some(BQ))),
                ..base.clone()
            },
            SaCase {
                what: "ID token for an allowed target",
                rpc: Rpc::GenerateIdToken,
                scopes: &[],
                audience: Some(HELLO),
                ..base.clone()
            },
            SaCase {
                what: "ID token for a target not allowed",
                rpc: Rpc::GenerateIdToken,
                scopes: &[],
                service_account: Some(WRITER),
                audience: Some(HELLO),
                expected: Err(("impersonate", "service_accounts", Some(WRITER))),
                ..base.clone()
            },
            SaCase {
                what: "ID token of the credential's own identity",
                rpc: Rpc::GenerateIdToken,
                scopes: &[],
                service_account: None,
                audience: Some(HELLO),
                ..base.clone()
            },
            SaCase {
                what: "SignBlob as the signer",
                rpc: Rpc::SignBlob,
                scopes: &[],
                service_account: Some(SIGNER),
                expected: Ok("blob-signer"),
                ..base.clone()
            },
            SaCase {
                what: "SignBlob as an account only impersonation is allowed for: the signing grant is closer",
                rpc: Rpc::SignBlob,
                scopes: &[],
                service_account: Some(READER),
                expected: Err(("blob-signer", "service_accounts", Some(READER))),
                ..base.clone()
            },
            SaCase {
                what: "impersonating the signer: the impersonation grant is closer",
                service_account: Some(SIGNER),
                expected: Err(("impersonate", "service_accounts", Some(SIGNER))),
                ..base.clone()
            },
            SaCase {
                what: "GetAccessToken is not among the grants' rpcs",
                rpc: Rpc::GetAccessToken,
                service_account: None,
                expected: Err(("impersonate", "rpc", Some("GetAccessToken"))),
                ..base.clone()
            },
            SaCase {
                what: "a grant without service_accounts allows none",
                caller: "spiffe://example.org/web",
                rpc: Rpc::GenerateIdToken,
                scopes: &[],
                audience: Some(HELLO),
                expected: Err(("any-https-id-token", "service_accounts", Some(READER))),
                ..base.clone()
            },
        ],
    );
}

#[test]
fn project_wildcards_match_only_that_project() {
    let policy = service_account_policy();
    let caller = spiffe("spiffe://example.org/app");
    let cp = scopes(&[CP]);
    let ask = |email: &str| {
        policy.authorize(
            &caller,
            &AccessRequest {
                service_account: Some(email),
                ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
            },
        )
    };
    for allowed in [
        BATCH_A,
        BATCH_B,
        "Deployer@Batch-Project.iam.gserviceaccount.com",
    ] {
        assert!(ask(allowed).is_ok(), "{allowed}");
    }
    for denied in [
        "a@batch-project2.iam.gserviceaccount.com",
        "a@xbatch-project.iam.gserviceaccount.com",
        "a@evil.batch-project.iam.gserviceaccount.com",
        "a@batch-project.iam.gserviceaccount.com.evil.net",
        "a@batch-project.iam.gserviceaccount.co",
        "batch-project@appspot.gserviceaccount.com",
        "@batch-project.iam.gserviceaccount.com",
        "x@y@batch-project.iam.gserviceaccount.com",
        "a@batch-project",
    ] {
        let denial = ask(denied).expect_err(denied);
        assert_eq!(denial.rule_name(), "service_accounts", "{denied}");
        assert_eq!(denial.value(), Some(denied));
    }
    let grant = policy.grant("impersonate").expect("grant");
    assert!(grant.allows_service_account(BATCH_A));
    assert!(!grant.allows_service_account("a@batch-project-2.iam.gserviceaccount.com"));
}

#[test]
fn delegation_chains_are_order_sensitive() {
    let policy = service_account_policy();
    let base = SaCase {
        what: "",
        caller: "spiffe://example.org/app",
        rpc: Rpc::ImpersonateServiceAccount,
        scopes: &[CP],
        service_account: Some(READER),
        delegates: &[],
        audience: None,
        jwt: None,
        expected: Ok("impersonate"),
    };
    let reversed = format!("{BATCH_A},{HOP}");
    let foreign = format!("{HOP},a@other-project.iam.gserviceaccount.com");
    let longer = format!("{HOP},{BATCH_A},{BATCH_B}");
    check_sa_cases(
        &policy,
        &[
            SaCase {
                what: "direct impersonation is always allowed",
                ..base.clone()
            },
            SaCase {
                what: "one hop",
                delegates: &[HOP],
                ..base.clone()
            },
            SaCase {
                what: "one hop, any case",
                delegates: &["HOP@dev-project.iam.gserviceaccount.com"],
                ..base.clone()
            },
            SaCase {
                what: "two hops, the second by project",
                delegates: &[HOP, BATCH_A],
                ..base.clone()
            },
            SaCase {
                what: "the same two hops in the other order",
                delegates: &[BATCH_A, HOP],
                expected: Err(("impersonate", "delegates", Some(&reversed))),
                ..base.clone()
            },
            SaCase {
                what: "the second hop in another project",
                delegates: &[HOP, "a@other-project.iam.gserviceaccount.com"],
                expected: Err(("impersonate", "delegates", Some(&foreign))),
                ..base.clone()
            },
            SaCase {
                what: "a prefix of an allowed chain is not allowed",
                delegates: &[BATCH_A],
                expected: Err(("impersonate", "delegates", Some(BATCH_A))),
                ..base.clone()
            },
            SaCase {
                what: "an allowed chain with one more hop",
                delegates: &[HOP, BATCH_A, BATCH_B],
                expected: Err(("impersonate", "delegates", Some(&longer))),
                ..base.clone()
            },
            SaCase {
                what: "a chain for a target that is not allowed: the target is named",
                service_account: Some(WRITER),
                delegates: &[BATCH_A, HOP],
                expected: Err(("impersonate", "service_accounts", Some(WRITER))),
                ..base.clone()
            },
            SaCase {
                what: "a chain on a grant without delegates",
                rpc: Rpc::SignBlob,
                scopes: &[],
                service_account: Some(SIGNER),
                delegates: &[HOP],
                expected: Err(("blob-signer", "delegates", Some(HOP))),
                ..base.clone()
            },
            SaCase {
                what: "a chain for an ID token",
                rpc: Rpc::GenerateIdToken,
                scopes: &[],
                delegates: &[HOP, BATCH_B],
                audience: Some(HELLO),
                ..base.clone()
            },
        ],
    );
    let grant = policy.grant("impersonate").expect("grant");
    assert!(grant.allows_delegates::<&str>(&[]));
    assert!(grant.allows_delegates(&[HOP, BATCH_B]));
    assert!(!grant.allows_delegates(&[BATCH_B, HOP]));
}

#[test]
fn id_token_audiences_pass_and_fail() {
    let policy = service_account_policy();
    let base = SaCase {
        what: "",
        caller: "spiffe://example.org/app",
        rpc: Rpc::GenerateIdToken,
        scopes: &[],
        service_account: None,
        delegates: &[],
        audience: Some(HELLO),
        jwt: None,
        expected: Ok("impersonate"),
    };
    let evil = "https://api.example.com.evil.net/x";
    check_sa_cases(
        &policy,
        &[
            SaCase {
                what: "exact audience",
                ..base.clone()
            },
            SaCase {
                what: "exact is byte for byte: a trailing slash",
                audience: Some("https://hello-abc-uc.a.run.app/"),
                expected: Err((
                    "impersonate",
                    "audiences",
                    Some("https://hello-abc-uc.a.run.app/"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "exact is byte for byte: case",
                audience: Some("https://Hello-abc-uc.a.run.app"),
                expected: Err((
                    "impersonate",
                    "audiences",
                    Some("https://Hello-abc-uc.a.run.app"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "exact is not a prefix",
                audience: Some("https://hello-abc-uc.a.run.app.evil.net"),
                expected: Err((
                    "impersonate",
                    "audiences",
                    Some("https://hello-abc-uc.a.run.app.evil.net"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "under the prefix",
                audience: Some("https://api.example.com/v1/orders"),
                ..base.clone()
            },
            SaCase {
                what: "the prefix's host without its slash",
                audience: Some(API),
                expected: Err(("impersonate", "audiences", Some(API))),
                ..base.clone()
            },
            SaCase {
                what: "a look-alike host",
                audience: Some(evil),
                expected: Err(("impersonate", "audiences", Some(evil))),
                ..base.clone()
            },
            SaCase {
                what: "userinfo trick",
                audience: Some("https://api.example.com@evil.net/"),
                expected: Err((
                    "impersonate",
                    "audiences",
                    Some("https://api.example.com@evil.net/"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "a scheme prefix allows every audience of that scheme",
                caller: "spiffe://example.org/web",
                audience: Some(evil),
                expected: Ok("any-https-id-token"),
                ..base.clone()
            },
            SaCase {
                what: "...and no other scheme",
                caller: "spiffe://example.org/web",
                audience: Some("http://hello.example.com"),
                expected: Err((
                    "any-https-id-token",
                    "audiences",
                    Some("http://hello.example.com"),
                )),
                ..base.clone()
            },
            SaCase {
                what: "an OAuth client ID needs an exact entry",
                caller: "spiffe://example.org/web",
                audience: Some("123-abc.apps.googleusercontent.com"),
                expected: Err((
                    "any-https-id-token",
                    "audiences",
                    Some("123-abc.apps.googleusercontent.com"),
                )),
                ..base.clone()
            },
        ],
    );
}

#[test]
fn sign_jwt_claim_constraints() {
    let policy = service_account_policy();
    let base = SaCase {
        what: "",
        caller: "spiffe://example.org/app",
        rpc: Rpc::SignJwt,
        scopes: &[],
        service_account: Some(SIGNER),
        delegates: &[],
        audience: None,
        jwt: Some((&[API], Some(600))),
        expected: Ok("signer"),
    };
    let aud = Err(("signer", "jwt_claims", Some("aud")));
    let exp = Err(("signer", "jwt_claims", Some("exp")));
    check_sa_cases(
        &policy,
        &[
            SaCase {
                what: "one allowed audience, exp within the horizon",
                ..base.clone()
            },
            SaCase {
                what: "every audience allowed, exp exactly at the horizon",
                jwt: Some((&[OTHER_API, API], Some(900))),
                ..base.clone()
            },
            SaCase {
                what: "an allowed audience next to another",
                jwt: Some((&[API, "https://victim.example.com"], Some(600))),
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "only another audience",
                jwt: Some((&["https://victim.example.com"], Some(600))),
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "audiences are exact",
                jwt: Some((&["https://api.example.com/"], Some(600))),
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "no aud",
                jwt: Some((&[], Some(600))),
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "exp a second past the horizon",
                jwt: Some((&[API], Some(901))),
                expected: exp,
                ..base.clone()
            },
            SaCase {
                what: "no exp",
                jwt: Some((&[API], None)),
                expected: exp,
                ..base.clone()
            },
            SaCase {
                what: "both wrong: aud is checked first",
                jwt: Some((&["https://victim.example.com"], None)),
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "no claims given at all",
                jwt: None,
                expected: aud,
                ..base.clone()
            },
            SaCase {
                what: "the claims are not looked at for SignBlob",
                rpc: Rpc::SignBlob,
                expected: Ok("blob-signer"),
                jwt: None,
                ..base.clone()
            },
            SaCase {
                what: "the signer comes before the claims",
                service_account: Some(READER),
                jwt: None,
                expected: Err(("signer", "service_accounts", Some(READER))),
                ..base.clone()
            },
        ],
    );

    // Without a sign_jwt table, any payload the server accepted is signed; the denial messages
    // name the claim and the limit, never the payload.
    let open = load(&format!(
        r#"
        [[grants]]
        name = "open-signer"
        credential = "broker"
        callers = [{{ cn = "app" }}]
        rpcs = ["SignJwt"]
        service_accounts = ["{SIGNER}"]

        [[grants]]
        name = "exp-only"
        credential = "other"
        callers = [{{ cn = "app" }}]
        rpcs = ["SignJwt"]
        service_accounts = ["{SIGNER}"]
        sign_jwt = {{ max_expiry = "5m" }}
        "#
    ));
    let none = ScopeSet::parse(Vec::<String>::new()).expect("empty");
    let broker = name("broker");
    let other = name("other");
    let secret_aud = vec!["https://secret-audience.example.com".to_owned()];
    let sign = |credential, expires_in| {
        open.authorize(
            &cn("app"),
            &AccessRequest {
                credential: Some(credential),
                service_account: Some(SIGNER),
                jwt_claims: Some(JwtClaims {
                    aud: &secret_aud,
                    expires_in,
                }),
                ..AccessRequest::new(Rpc::SignJwt, &none)
            },
        )
    };
    assert_eq!(sign(&broker, None).expect("allowed").grant, "open-signer");
    assert_eq!(
        sign(&broker, Some(Duration::from_secs(43200)))
            .expect("allowed")
            .grant,
        "open-signer"
    );
    assert!(sign(&other, Some(Duration::from_secs(300))).is_ok());
    let denial = sign(&other, Some(Duration::from_secs(301))).expect_err("too late");
    assert_eq!(
        denial.rule,
        DenialRule::JwtExpiryNotAllowed {
            max_expiry: Duration::from_secs(300),
            missing: false
        }
    );
    assert_eq!(denial.value(), Some("exp"));
    let message = denial.to_string();
    assert!(message.contains("at most 300 s"), "{message}");
    assert!(!message.contains("secret-audience"), "{message}");
    let denial = sign(&other, None).expect_err("no exp");
    assert!(denial.to_string().contains("has no exp"), "{denial}");

    let constraints = policy
        .grant("signer")
        .and_then(|g| g.sign_jwt())
        .expect("constraints");
    assert_eq!(constraints.required_audiences(), [API, OTHER_API]);
    assert_eq!(constraints.max_expiry(), Some(Duration::from_secs(900)));
    let constraints = open
        .grant("exp-only")
        .and_then(|g| g.sign_jwt())
        .expect("constraints");
    assert!(constraints.required_audiences().is_empty());
}

#[test]
fn max_lifetime_caps_impersonated_tokens() {
    let policy = service_account_policy();
    let caller = spiffe("spiffe://example.org/app");
    let cp = scopes(&[CP]);
    let impersonate = |lifetime| {
        policy
            .authorize(
                &caller,
                &AccessRequest {
                    service_account: Some(READER),
                    lifetime,
                    ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
                },
            )
            .expect("allowed")
    };
    let long = impersonate(Some(Duration::from_secs(12 * 3600)));
    assert_eq!(long.lifetime, Some(Duration::from_secs(1800)));
    assert_eq!(
        long.lifetime_or(Duration::from_secs(3600)),
        Duration::from_secs(1800)
    );
    let default = impersonate(None);
    assert_eq!(default.lifetime, None);
    assert_eq!(
        default.lifetime_or(Duration::from_secs(3600)),
        Duration::from_secs(1800)
    );
    let short = impersonate(Some(Duration::from_secs(600)));
    assert_eq!(
        short.lifetime_or(Duration::from_secs(3600)),
        Duration::from_secs(600)
    );
}

#[test]
fn requests_for_no_scope_pass_every_grant() {
    // ID tokens and signing ask for no scope: an empty set passes grants with exact scopes,
    // with prefixes only, and with neither.
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "exact"
        credential = "a"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}"]

        [[grants]]
        name = "prefixes"
        credential = "b"
        callers = [{{ cn = "app" }}]
        scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]

        [[grants]]
        name = "none"
        credential = "c"
        callers = [{{ cn = "app" }}]
        "#
    ));
    let none = ScopeSet::parse(Vec::<String>::new()).expect("empty");
    for credential in ["a", "b", "c"] {
        let credential = name(credential);
        let decision = policy
            .authorize(
                &cn("app"),
                &AccessRequest {
                    credential: Some(&credential),
                    ..AccessRequest::new(Rpc::GetAccessToken, &none)
                },
            )
            .expect("allowed");
        assert_eq!(decision.credential, credential);
    }
}

#[test]
fn the_closest_grant_is_named_across_the_new_stages() {
    // Grants in the reverse order of how close they come, so that the stage, not the file
    // order, decides.
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "wrong-rpc"
        credential = "c"
        callers = [{{ cn = "app" }}]
        scopes = ["{CP}"]

        [[grants]]
        name = "wrong-account"
        credential = "c"
        callers = [{{ cn = "app" }}]
        rpcs = ["ImpersonateServiceAccount", "GenerateIdToken", "SignJwt"]
        scopes = ["{CP}"]
        service_accounts = ["{WRITER}"]
        delegates = [["{HOP}"]]
        audiences = ["{HELLO}"]

        [[grants]]
        name = "wrong-chain"
        credential = "c"
        callers = [{{ cn = "app" }}]
        rpcs = ["ImpersonateServiceAccount", "GenerateIdToken", "SignJwt"]
        scopes = ["{CP}"]
        service_accounts = ["{READER}"]
        audiences = ["{HELLO}"]

        [[grants]]
        name = "wrong-scope"
        credential = "c"
        callers = [{{ cn = "app" }}]
        rpcs = ["ImpersonateServiceAccount"]
        scopes = ["{BQ}"]
        service_accounts = ["{READER}"]
        delegates = [["{HOP}"]]

        [[grants]]
        name = "wrong-audience"
        credential = "c"
        callers = [{{ cn = "app" }}]
        rpcs = ["GenerateIdToken"]
        service_accounts = ["{READER}"]
        delegates = [["{HOP}"]]
        audience_prefixes = ["{API}/"]

        [[grants]]
        name = "wrong-claims"
        credential = "c"
        callers = [{{ cn = "app" }}]
        rpcs = ["SignJwt"]
        service_accounts = ["{READER}"]
        delegates = [["{HOP}"]]
        sign_jwt = {{ required_audiences = ["{API}"] }}
        "#
    ));
    let c = name("c");
    let hop = vec![HOP.to_owned()];
    let cp = scopes(&[CP]);
    let none = ScopeSet::parse(Vec::<String>::new()).expect("empty");
    let victim = vec!["https://victim.example.com".to_owned()];
    let ask = |request: AccessRequest<'_>| {
        policy
            .authorize(
                &cn("app"),
                &AccessRequest {
                    credential: Some(&c),
                    ..request
                },
            )
            .expect_err("denied")
    };
    // The account, the chain and the scope of a grant that refuses the scope: scopes.
    let denial = ask(AccessRequest {
        service_account: Some(READER),
        delegates: &hop,
        ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
    });
    assert_eq!(
        (denial.grant.as_deref(), denial.rule_name()),
        (Some("wrong-scope"), "scopes")
    );
    // Without the chain, wrong-chain (the account, direct impersonation, the scope) allows it.
    assert!(
        policy
            .authorize(
                &cn("app"),
                &AccessRequest {
                    credential: Some(&c),
                    service_account: Some(READER),
                    ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
                },
            )
            .is_ok()
    );
    // An unknown account: every grant that allows the RPC fails at the account; the first.
    let denial = ask(AccessRequest {
        service_account: Some(BATCH_A),
        ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
    });
    assert_eq!(
        (denial.grant.as_deref(), denial.rule_name(), denial.value()),
        (Some("wrong-account"), "service_accounts", Some(BATCH_A))
    );
    // A chain no grant allows for this account: wrong-chain and wrong-scope fail at the chain
    // (later than wrong-account at the account); the first of them.
    let other_chain = vec![BATCH_A.to_owned()];
    let denial = ask(AccessRequest {
        service_account: Some(READER),
        delegates: &other_chain,
        ..AccessRequest::new(Rpc::ImpersonateServiceAccount, &cp)
    });
    assert_eq!(
        (denial.grant.as_deref(), denial.rule_name(), denial.value()),
        (Some("wrong-chain"), "delegates", Some(BATCH_A))
    );
    // An ID token through the chain for an audience nobody allows: the audience stage.
    let denial = ask(AccessRequest {
        service_account: Some(READER),
        delegates: &hop,
        audience: Some(HELLO),
        ..AccessRequest::new(Rpc::GenerateIdToken, &none)
    });
    assert_eq!(
        (denial.grant.as_deref(), denial.rule_name(), denial.value()),
        (Some("wrong-audience"), "audiences", Some(HELLO))
    );
    // Signing through the chain with a foreign aud: the claims stage, the latest.
    let denial = ask(AccessRequest {
        service_account: Some(READER),
        delegates: &hop,
        jwt_claims: Some(JwtClaims {
            aud: &victim,
            expires_in: Some(Duration::from_secs(60)),
        }),
        ..AccessRequest::new(Rpc::SignJwt, &none)
    });
    assert_eq!(
        (denial.grant.as_deref(), denial.rule_name(), denial.value()),
        (Some("wrong-claims"), "jwt_claims", Some("aud"))
    );

    // explain reports each grant's own failure.
    let explanation = policy.explain(
        &cn("app"),
        &AccessRequest {
            credential: Some(&c),
            service_account: Some(READER),
            delegates: &hop,
            jwt_claims: Some(JwtClaims {
                aud: &victim,
                expires_in: None,
            }),
            ..AccessRequest::new(Rpc::SignJwt, &none)
        },
    );
    let outcomes: Vec<(&str, &GrantOutcome)> = explanation
        .grants
        .iter()
        .map(|check| (check.grant.as_str(), &check.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "wrong-rpc",
                &GrantOutcome::Denied(DenialRule::RpcNotAllowed { rpc: Rpc::SignJwt })
            ),
            (
                "wrong-account",
                &GrantOutcome::Denied(DenialRule::ServiceAccountNotAllowed {
                    service_account: READER.to_owned()
                })
            ),
            (
                "wrong-chain",
                &GrantOutcome::Denied(DenialRule::DelegatesNotAllowed {
                    chain: HOP.to_owned()
                })
            ),
            (
                "wrong-scope",
                &GrantOutcome::Denied(DenialRule::RpcNotAllowed { rpc: Rpc::SignJwt })
            ),
            (
                "wrong-audience",
                &GrantOutcome::Denied(DenialRule::RpcNotAllowed { rpc: Rpc::SignJwt })
            ),
            (
                "wrong-claims",
                &GrantOutcome::Denied(DenialRule::JwtAudienceNotAllowed)
            ),
        ]
    );
    let denial = explanation.result.expect_err("denied");
    assert_eq!(denial.grant.as_deref(), Some("wrong-claims"));
    assert_eq!(denial.rule, DenialRule::JwtAudienceNotAllowed);

    // A grant without a sign_jwt table signs whatever the server accepted.
    let open = load(&format!(
        "[[grants]]\nname = \"open\"\ncredential = \"c\"\ncallers = [{{ cn = \"app\" }}]\nrpcs = [\"SignJwt\"]\nservice_accounts = [\"{READER}\"]\ndelegates = [[\"{HOP}\"]]"
    ));
    let explanation = open.explain(
        &cn("app"),
        &AccessRequest {
            credential: Some(&c),
            service_account: Some(READER),
            delegates: &hop,
            jwt_claims: Some(JwtClaims {
                aud: &victim,
                expires_in: None,
            }),
            ..AccessRequest::new(Rpc::SignJwt, &none)
        },
    );
    assert_eq!(explanation.grants[0].outcome, GrantOutcome::Allowed);
    assert_eq!(explanation.result.expect("allowed").grant, "open");
}

#[test]
fn load_errors_name_their_place_for_the_new_keys() {
    let grant = |extra: &str| {
        format!(
            "[[grants]]\nname = \"g\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\nrpcs = [\"ImpersonateServiceAccount\", \"GenerateIdToken\", \"SignJwt\"]\n{extra}\n"
        )
    };
    let plain = |extra: &str| {
        format!(
            "[[grants]]\nname = \"p\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\n{extra}\n"
        )
    };
    let sa = "a@my-project.iam.gserviceaccount.com";
    let chain11 = (0..11)
        .map(|i| format!("\"a{i}@my-project.iam.gserviceaccount.com\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cases: Vec<(String, &str, &str)> = vec![
        // service_accounts
        (
            grant("service_accounts = [\"deployer\"]"),
            "grants[0].service_accounts[0]",
            "not a service-account email",
        ),
        (
            grant(&format!(
                "service_accounts = [\"{sa}\", \"a b@my-project.iam.gserviceaccount.com\"]"
            )),
            "grants[0].service_accounts[1]",
            "not a service-account email",
        ),
        (
            grant("service_accounts = [\"a@\"]"),
            "grants[0].service_accounts[0]",
            "not a service-account email",
        ),
        (
            grant("service_accounts = [\"a@localhost\"]"),
            "grants[0].service_accounts[0]",
            "not a service-account email",
        ),
        (
            grant("service_accounts = [\"*@gmail.com\"]"),
            "grants[0].service_accounts[0]",
            "the only wildcard allowed is every service account of one project",
        ),
        (
            grant("service_accounts = [\"a*@my-project.iam.gserviceaccount.com\"]"),
            "grants[0].service_accounts[0]",
            "the only wildcard allowed",
        ),
        (
            grant("service_accounts = [\"*\"]"),
            "grants[0].service_accounts[0]",
            "the only wildcard allowed",
        ),
        (
            grant("service_accounts = [\"*@*.iam.gserviceaccount.com\"]"),
            "grants[0].service_accounts[0]",
            "not a project id",
        ),
        (
            grant("service_accounts = [\"*@proj.iam.gserviceaccount.com\"]"),
            "grants[0].service_accounts[0]",
            "not a project id",
        ),
        (
            grant("service_accounts = [\"*@1project.iam.gserviceaccount.com\"]"),
            "grants[0].service_accounts[0]",
            "not a project id",
        ),
        (
            grant("service_accounts = [\"*@my_project.iam.gserviceaccount.com\"]"),
            "grants[0].service_accounts[0]",
            "not a project id",
        ),
        (
            grant(&format!(
                "service_accounts = [\"*@a{}.iam.gserviceaccount.com\"]",
                "b".repeat(30)
            )),
            "grants[0].service_accounts[0]",
            "not a project id",
        ),
        (
            grant("service_accounts = \"a@my-project.iam.gserviceaccount.com\""),
            "grants[0].service_accounts",
            "invalid type",
        ),
        (
            format!("{}{}", plain(""), grant("service_accounts = [\"nope\"]")),
            "grants[1].service_accounts[0]",
            "not a service-account email",
        ),
        // delegates
        (
            grant(&format!("delegates = [[\"{sa}\"], []]")),
            "grants[0].delegates[1]",
            "an empty chain",
        ),
        (
            grant(&format!("delegates = [[\"{sa}\", \"\"]]")),
            "grants[0].delegates[0][1]",
            "not a service-account email",
        ),
        (
            grant(&format!(
                "delegates = [[\"{sa}\"], [\"{sa}\", \"*@example.com\"]]"
            )),
            "grants[0].delegates[1][1]",
            "the only wildcard allowed",
        ),
        (
            grant("delegates = [[\"deployer\"]]"),
            "grants[0].delegates[0][0]",
            "not a service-account email",
        ),
        (
            grant(&format!(
                "delegates = [[\"{sa}\", \"A@My-Project.iam.gserviceaccount.com\"]]"
            )),
            "grants[0].delegates[0][1]",
            "is already delegates[0][0]",
        ),
        (
            grant(&format!("delegates = [[{chain11}]]")),
            "grants[0].delegates[0]",
            "at most 10 delegates",
        ),
        (
            grant(&format!("delegates = [\"{sa}\"]")),
            "grants[0].delegates[0]",
            "invalid type",
        ),
        (
            grant(&format!("delegates = [[\"{sa}\", 7]]")),
            "grants[0].delegates[0][1]",
            "invalid type",
        ),
        // audiences and prefixes
        (
            grant("audiences = [\"\"]"),
            "grants[0].audiences[0]",
            "not an audience",
        ),
        (
            grant("audiences = [\"https://a.example.com\", \"https://b.example.com/a b\"]"),
            "grants[0].audiences[1]",
            "not an audience",
        ),
        (
            grant(&format!("audiences = [\"https://x/{}\"]", "a".repeat(2048))),
            "grants[0].audiences[0]",
            "not an audience",
        ),
        (
            grant("audience_prefixes = [\"https://example.com\"]"),
            "grants[0].audience_prefixes[0]",
            "would also match https://example.com.evil.net",
        ),
        (
            grant("audience_prefixes = [\"https://example.com/api\"]"),
            "grants[0].audience_prefixes[0]",
            "ending with '/'",
        ),
        (
            grant("audience_prefixes = [\"https://\", \"https:/\"]"),
            "grants[0].audience_prefixes[1]",
            "audience prefix must be",
        ),
        (
            grant("audience_prefixes = [\"/\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            grant("audience_prefixes = [\"example.com/\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            grant("audience_prefixes = [\"HTTPS://\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            grant("audience_prefixes = [\"https:///\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            grant("audience_prefixes = [\"https ://x/\"]"),
            "grants[0].audience_prefixes[0]",
            "not an audience",
        ),
        // sign_jwt
        (
            grant("[grants.sign_jwt]"),
            "grants[0].sign_jwt",
            "set required_audiences, max_expiry or both",
        ),
        (
            grant("[grants.sign_jwt]\nrequired_audiences = []"),
            "grants[0].sign_jwt.required_audiences",
            "at least one audience",
        ),
        (
            grant("[grants.sign_jwt]\nrequired_audiences = [\"https://a\", \"a b\"]"),
            "grants[0].sign_jwt.required_audiences[1]",
            "not an audience",
        ),
        (
            grant("[grants.sign_jwt]\nmax_expiry = \"a fortnight\""),
            "grants[0].sign_jwt.max_expiry",
            "not a duration",
        ),
        (
            grant("[grants.sign_jwt]\nmax_expiry = \"13h\""),
            "grants[0].sign_jwt.max_expiry",
            "from 1s to 12h",
        ),
        (
            grant("[grants.sign_jwt]\nmax_expiry = \"0s\""),
            "grants[0].sign_jwt.max_expiry",
            "from 1s to 12h",
        ),
        (
            grant("[grants.sign_jwt]\nmax_expiry = \"1500ms\""),
            "grants[0].sign_jwt.max_expiry",
            "whole seconds",
        ),
        (
            grant("[grants.sign_jwt]\nmax_expiry = 900"),
            "grants[0].sign_jwt.max_expiry",
            "invalid type",
        ),
        (
            grant("[grants.sign_jwt]\nmax_exp = \"15m\""),
            "grants[0].sign_jwt.max_exp",
            "unknown field `max_exp`",
        ),
        // keys no allowed RPC reads
        (
            plain(&format!("service_accounts = [\"{sa}\"]")),
            "grants[0].service_accounts",
            "has no effect",
        ),
        (
            plain(&format!("delegates = [[\"{sa}\"]]")),
            "grants[0].delegates",
            "has no effect",
        ),
        (
            plain("rpcs = [\"SignJwt\"]\naudiences = [\"https://a.example.com\"]"),
            "grants[0].audiences",
            "GenerateIdToken",
        ),
        (
            plain("rpcs = [\"SignJwt\"]\naudience_prefixes = [\"https://\"]"),
            "grants[0].audience_prefixes",
            "GenerateIdToken",
        ),
        (
            plain("rpcs = [\"SignBlob\"]\nsign_jwt = { max_expiry = \"5m\" }"),
            "grants[0].sign_jwt",
            "has no effect",
        ),
        (
            plain(
                "rpcs = [\"SignJwt\", \"SignBlob\"]\nservice_accounts = [\"s@p.iam.gserviceaccount.com\"]\nsign_jwt = { max_expiry = \"5m\" }",
            ),
            "grants[0].sign_jwt",
            "SignBlob",
        ),
        (
            plain(
                "rpcs = [\"GetAccessToken\", \"GenerateIdToken\"]\naudience_prefixes = [\"https://\"]\naccess_boundary = { rules = [{ available_resource = \"//storage.googleapis.com/projects/_/buckets/b\", available_permissions = [\"inRole:roles/storage.objectViewer\"] }] }",
            ),
            "grants[0].access_boundary",
            "GenerateIdToken",
        ),
    ];
    for (text, path, message) in cases {
        let error = Policy::from_toml_str(&text).expect_err(&text);
        assert_eq!(error.path(), path, "{text}\n=> {error}");
        assert!(error.message().contains(message), "{text}\n=> {error}");
        assert!(error.to_string().starts_with("policy: "), "{error}");
    }
    // The good forms load.
    for good in [
        "audience_prefixes = [\"https://\", \"https://api.example.com/\", \"https://api.example.com:8443/v1/\", \"grpc+tls://svc/\"]",
        "service_accounts = [\"*@abcdef.iam.gserviceaccount.com\", \"p-123@appspot.gserviceaccount.com\", \"123-compute@developer.gserviceaccount.com\"]",
        "delegates = [[\"*@my-project.iam.gserviceaccount.com\", \"*@my-project.iam.gserviceaccount.com\"]]",
        "[grants.sign_jwt]\nmax_expiry = \"1s\"",
        "[grants.sign_jwt]\nmax_expiry = \"12h\"",
    ] {
        if let Err(error) = Policy::from_toml_str(&grant(good)) {
            panic!("{good}: {error}");
        }
    }
}

#[test]
fn new_keys_are_normalized() {
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "g"
        credential = "c"
        callers = [{{ cn = "a" }}]
        rpcs = ["GenerateIdToken"]
        service_accounts = ["Writer@Dev-Project.iam.gserviceaccount.com", "*@Batch-Project.iam.gserviceaccount.com", "{READER}", "writer@dev-project.iam.gserviceaccount.com"]
        delegates = [["{HOP}"], ["HOP@dev-project.iam.gserviceaccount.com"], ["{HOP}", "{READER}"]]
        audiences = ["{OTHER_API}", "{API}", "{OTHER_API}"]
        audience_prefixes = ["https://"]
        "#
    ));
    let grant = policy.grant("g").expect("grant");
    assert_eq!(
        grant.service_accounts(),
        [
            ServiceAccountPattern::Email(READER.to_owned()),
            ServiceAccountPattern::Email(WRITER.to_owned()),
            ServiceAccountPattern::Project("batch-project".to_owned()),
        ]
    );
    assert_eq!(
        grant.service_accounts()[2].to_string(),
        "*@batch-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        grant.delegates(),
        [
            vec![ServiceAccountPattern::Email(HOP.to_owned())],
            vec![
                ServiceAccountPattern::Email(HOP.to_owned()),
                ServiceAccountPattern::Email(READER.to_owned())
            ],
        ]
    );
    assert_eq!(grant.audiences(), [API, OTHER_API]);
    assert_eq!(grant.audience_prefixes(), ["https://"]);
    assert_eq!(grant.sign_jwt(), None);
    // A grant without the new keys allows none of them.
    let plain = load("[[grants]]\nname = \"p\"\ncredential = \"c\"\ncallers = [{ cn = \"a\" }]");
    let plain = plain.grant("p").expect("grant");
    assert!(plain.service_accounts().is_empty());
    assert!(plain.delegates().is_empty());
    assert!(plain.audiences().is_empty() && plain.audience_prefixes().is_empty());
    assert!(!plain.allows_service_account(READER));
    assert!(!plain.allows_audience(API));
}

// ---------------------------------------------------------------------------------------------
// ExchangeToken: exchanges with a credential, plain exchanges (federation and downscoping),
// plain-exchange grants and subject-token types.

const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const SAML: &str = "urn:ietf:params:oauth:token-type:saml2";
const AWS: &str = "urn:ietf:params:aws:token-type:aws4_request";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const POOL: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/";
const GITHUB: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github";
const OTHER_POOL: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci-2/providers/github";
const WORKFORCE: &str = "//iam.googleapis.com/locations/global/workforcePools/staff/providers/okta";
const AWS_PROVIDER: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/aws/providers/aws";
const RUNNER: &str = "spiffe://example.org/ci/runner";
const DEPLOYER: &str = "spiffe://example.org/ci/deployer";
const APP_DNS: &str = "app.example.org";

fn exchange_policy() -> Policy {
    load(&format!(
        r#"
        # The default grant of ci/ callers also allows ExchangeToken with its credential: a plain
        # exchange must never use it.
        [[grants]]
        name = "tokens"
        credential = "prod"
        default = true
        callers = [{{ spiffe_prefix = "spiffe://example.org/ci/" }}, {{ dns = "{APP_DNS}" }}]
        rpcs = ["GetAccessToken", "ExchangeToken"]
        scopes = ["{CP}"]
        subject_token_types = ["{JWT}"]
        audiences = ["{GITHUB}"]

        [[grants]]
        name = "federation"
        callers = [{{ spiffe_prefix = "spiffe://example.org/ci/" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{WORKFORCE}"]
        audience_prefixes = ["{POOL}"]
        subject_token_types = ["{SAML}", "{JWT}", "{SAML}"]
        scopes = ["{CP}", "{GCS_RO}"]

        [[grants]]
        name = "downscope"
        callers = [{{ spiffe_id = "{DEPLOYER}" }}]
        rpcs = ["ExchangeToken"]
        subject_token_types = ["{ACCESS_TOKEN}"]
        [[grants.access_boundary.rules]]
        available_resource = "{BUCKET}"
        available_permissions = ["{VIEWER}", "{CREATOR}"]

        [[grants]]
        name = "wif"
        credential = "wif-github"
        callers = [{{ spiffe_prefix = "spiffe://example.org/ci/" }}]
        rpcs = ["ExchangeToken"]
        subject_token_types = ["{ID_TOKEN}"]
        scopes = ["{CP}"]
        max_lifetime = "30m"

        [[grants]]
        name = "aws"
        callers = [{{ cn = "batch" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{AWS_PROVIDER}"]
        subject_token_types = ["{AWS}"]
        scopes = ["{CP}"]
        rate_limit = {{ per_second = 2, burst = 4 }}
        distinct_keys = 3
        "#
    ))
}

/// An ExchangeToken request, and what [`Policy::authorize_exchange`] should answer: the grant
/// and credential, or the closest grant, the rule and its value.
#[derive(Clone)]
struct ExchangeCase<'a> {
    what: &'a str,
    caller: CallerIdentity,
    credential: Option<&'a str>,
    subject_token_type: Option<&'a str>,
    audience: Option<&'a str>,
    scopes: &'a [&'a str],
    boundary: Option<AccessBoundary>,
    expected: Result<ExchangeAllowed<'a>, ExchangeDenied<'a>>,
}

/// The grant and the credential.
type ExchangeAllowed<'a> = (&'a str, Option<&'a str>);
/// The closest grant, the rule and its value.
type ExchangeDenied<'a> = (Option<&'a str>, &'a str, Option<&'a str>);

fn exchange_request<'a>(
    credential: Option<&'a CredentialName>,
    scopes: &'a ScopeSet,
    subject_token_type: Option<&'a str>,
    audience: Option<&'a str>,
    boundary: Option<&'a AccessBoundary>,
) -> AccessRequest<'a> {
    AccessRequest {
        credential,
        subject_token_type,
        audience,
        boundary,
        ..AccessRequest::new(Rpc::ExchangeToken, scopes)
    }
}

fn check_exchange_cases(policy: &Policy, cases: &[ExchangeCase<'_>]) {
    for case in cases {
        let credential = case.credential.map(name);
        let scopes = scopes(case.scopes);
        let request = exchange_request(
            credential.as_ref(),
            &scopes,
            case.subject_token_type,
            case.audience,
            case.boundary.as_ref(),
        );
        let what = case.what;
        match (
            case.expected,
            policy.authorize_exchange(&case.caller, &request),
        ) {
            (Ok((grant, credential)), Ok(decision)) => {
                assert_eq!(decision.grant, grant, "{what}");
                assert_eq!(
                    decision.credential.as_ref().map(CredentialName::as_str),
                    credential,
                    "{what}"
                );
            }
            (Err((grant, rule, value)), Err(denial)) => {
                assert_eq!(denial.grant.as_deref(), grant, "{what}: {denial}");
                assert_eq!(denial.rule_name(), rule, "{what}: {denial}");
                assert_eq!(denial.value(), value, "{what}: {denial}");
                if let Some(value) = value {
                    assert!(denial.to_string().contains(value), "{what}: {denial}");
                }
            }
            (expected, result) => panic!("{what}: expected {expected:?}, got {result:?}"),
        }
        // `authorize` agrees on every exchange naming a credential, and never allows a plain
        // one.
        let authorized = policy.authorize(&case.caller, &request);
        if request.is_plain_exchange() {
            let denial = authorized.expect_err(what);
            assert_eq!(denial.rule_name(), "no_grant", "{what}: {denial}");
        } else {
            assert_eq!(
                authorized.map(|d| (d.grant, d.credential.as_str().to_owned())),
                policy.authorize_exchange(&case.caller, &request).map(|d| (
                    d.grant,
                    d.credential.expect("credential").as_str().to_owned()
                )),
                "{what}"
            );
        }
    }
}

#[test]
fn plain_exchanges_pass_and_fail() {
    let policy = exchange_policy();
    let base = ExchangeCase {
        what: "",
        caller: spiffe(RUNNER),
        credential: None,
        subject_token_type: Some(JWT),
        audience: Some(GITHUB),
        scopes: &[CP],
        boundary: None,
        expected: Ok(("federation", None)),
    };
    let cases = [
        ExchangeCase {
            what: "a provider below the pool prefix, a JWT",
            ..base.clone()
        },
        ExchangeCase {
            what: "a SAML assertion, two scopes",
            subject_token_type: Some(SAML),
            scopes: &[CP, GCS_RO],
            ..base.clone()
        },
        ExchangeCase {
            what: "an exact workforce provider",
            audience: Some(WORKFORCE),
            ..base.clone()
        },
        ExchangeCase {
            what: "a boundary, without a grant boundary, is the request's",
            boundary: Some(boundary(vec![rule(BUCKET, &[VIEWER], None)])),
            ..base.clone()
        },
        ExchangeCase {
            what: "a provider of another pool that shares the pool's name as a prefix",
            audience: Some(OTHER_POOL),
            expected: Err((Some("federation"), "audiences", Some(OTHER_POOL))),
            ..base.clone()
        },
        ExchangeCase {
            what: "the pool itself is not below the prefix",
            audience: Some(POOL.trim_end_matches('/')),
            expected: Err((
                Some("federation"),
                "audiences",
                Some(POOL.trim_end_matches('/')),
            )),
            ..base.clone()
        },
        ExchangeCase {
            what: "a type the grant does not list",
            subject_token_type: Some(ID_TOKEN),
            expected: Err((Some("federation"), "subject_token_types", Some(ID_TOKEN))),
            ..base.clone()
        },
        ExchangeCase {
            what: "no type at all",
            subject_token_type: None,
            expected: Err((Some("federation"), "subject_token_types", None)),
            ..base.clone()
        },
        ExchangeCase {
            what: "a scope the grant does not list",
            scopes: &[CP, BQ],
            expected: Err((Some("federation"), "scopes", Some(BQ))),
            ..base.clone()
        },
        ExchangeCase {
            what: "a caller no grant matches",
            caller: spiffe("spiffe://example.org/web"),
            expected: Err((None, "no_grant", None)),
            ..base.clone()
        },
        ExchangeCase {
            what: "a caller whose only grants have credentials (its default grant would allow it)",
            caller: dns(&[APP_DNS]),
            expected: Err((None, "no_grant", None)),
            ..base.clone()
        },
        ExchangeCase {
            what: "AWS for the plain-exchange grant of a CN caller",
            caller: cn("batch"),
            subject_token_type: Some(AWS),
            audience: Some(AWS_PROVIDER),
            expected: Ok(("aws", None)),
            ..base.clone()
        },
        ExchangeCase {
            what: "AWS elsewhere",
            caller: cn("batch"),
            subject_token_type: Some(AWS),
            audience: Some(GITHUB),
            expected: Err((Some("aws"), "audiences", Some(GITHUB))),
            ..base.clone()
        },
    ];
    check_exchange_cases(&policy, &cases);
}

#[test]
fn downscoping_is_a_plain_exchange_within_the_grants_boundary() {
    let policy = exchange_policy();
    let narrow = boundary(vec![rule(
        BUCKET,
        &[VIEWER],
        Some("resource.name.startsWith('x')"),
    )]);
    let base = ExchangeCase {
        what: "",
        caller: spiffe(DEPLOYER),
        credential: None,
        subject_token_type: Some(ACCESS_TOKEN),
        audience: None,
        scopes: &[],
        boundary: Some(narrow.clone()),
        expected: Ok(("downscope", None)),
    };
    let cases = [
        ExchangeCase {
            what: "a narrower boundary",
            ..base.clone()
        },
        ExchangeCase {
            what: "the grant's own boundary",
            boundary: Some(boundary(vec![rule(BUCKET, &[CREATOR, VIEWER], None)])),
            ..base.clone()
        },
        ExchangeCase {
            what: "a role the grant's boundary does not give",
            boundary: Some(boundary(vec![rule(
                BUCKET,
                &[VIEWER, "inRole:roles/storage.admin"],
                None,
            )])),
            expected: Err((Some("downscope"), "access_boundary", Some(BUCKET))),
            ..base.clone()
        },
        ExchangeCase {
            what: "another bucket (the second rule)",
            boundary: Some(boundary(vec![
                rule(BUCKET, &[VIEWER], None),
                rule(
                    "//storage.googleapis.com/projects/_/buckets/other",
                    &[VIEWER],
                    None,
                ),
            ])),
            expected: Err((
                Some("downscope"),
                "access_boundary",
                Some("//storage.googleapis.com/projects/_/buckets/other"),
            )),
            ..base.clone()
        },
        ExchangeCase {
            what: "a caller without the downscoping grant: federation names the type",
            caller: spiffe(RUNNER),
            expected: Err((
                Some("federation"),
                "subject_token_types",
                Some(ACCESS_TOKEN),
            )),
            ..base.clone()
        },
        ExchangeCase {
            what: "downscoping with a scope the downscoping grant does not allow",
            scopes: &[CP],
            expected: Err((Some("downscope"), "scopes", Some(CP))),
            ..base.clone()
        },
    ];
    check_exchange_cases(&policy, &cases);

    // The decision carries the boundary to apply: the request's if it is narrower, or else the
    // grant's.
    let none = scopes(&[]);
    let caller = spiffe(DEPLOYER);
    let decision = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &none, Some(ACCESS_TOKEN), None, Some(&narrow)),
        )
        .expect("allowed");
    assert_eq!(decision.boundary.as_ref(), Some(&narrow));
    assert_eq!(decision.credential, None);
    let decision = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &none, Some(ACCESS_TOKEN), None, None),
        )
        .expect("allowed");
    assert_eq!(
        decision.boundary,
        Some(boundary(vec![rule(BUCKET, &[VIEWER, CREATOR], None)]))
    );
}

#[test]
fn exchanges_with_a_credential_use_the_grants_for_it() {
    let policy = exchange_policy();
    let base = ExchangeCase {
        what: "",
        caller: spiffe(RUNNER),
        credential: Some("wif-github"),
        subject_token_type: Some(ID_TOKEN),
        audience: None,
        scopes: &[CP],
        boundary: None,
        expected: Ok(("wif", Some("wif-github"))),
    };
    let cases = [
        ExchangeCase {
            what: "an ID token with the credential",
            ..base.clone()
        },
        ExchangeCase {
            what: "a type the credential's grant does not list",
            subject_token_type: Some(JWT),
            expected: Err((Some("wif"), "subject_token_types", Some(JWT))),
            ..base.clone()
        },
        ExchangeCase {
            what: "an audience the credential's grant does not list (plain-exchange grants are no candidates)",
            subject_token_type: Some(SAML),
            audience: Some(GITHUB),
            expected: Err((Some("wif"), "audiences", Some(GITHUB))),
            ..base.clone()
        },
        ExchangeCase {
            what: "the default grant's credential, named, allows ExchangeToken",
            credential: Some("prod"),
            subject_token_type: Some(JWT),
            expected: Ok(("tokens", Some("prod"))),
            ..base.clone()
        },
        ExchangeCase {
            what: "an audience on the default grant's credential",
            credential: Some("prod"),
            subject_token_type: Some(JWT),
            audience: Some(GITHUB),
            expected: Ok(("tokens", Some("prod"))),
            ..base.clone()
        },
        ExchangeCase {
            what: "the DNS caller names its credential",
            caller: dns(&[APP_DNS]),
            credential: Some("prod"),
            subject_token_type: Some(JWT),
            expected: Ok(("tokens", Some("prod"))),
            ..base.clone()
        },
        ExchangeCase {
            what: "a credential no grant names",
            credential: Some("nope"),
            expected: Err((None, "no_grant", Some("nope"))),
            ..base.clone()
        },
        ExchangeCase {
            what: "a caller with only a plain-exchange grant names a credential",
            caller: cn("batch"),
            credential: Some("prod"),
            subject_token_type: Some(AWS),
            audience: Some(AWS_PROVIDER),
            expected: Err((None, "no_grant", Some("prod"))),
            ..base.clone()
        },
    ];
    check_exchange_cases(&policy, &cases);

    // The decision carries the grant's limits.
    let caller = spiffe(RUNNER);
    let cp = scopes(&[CP]);
    let wif = name("wif-github");
    let decision = policy
        .authorize_exchange(
            &caller,
            &exchange_request(Some(&wif), &cp, Some(ID_TOKEN), None, None),
        )
        .expect("allowed");
    assert_eq!(decision.max_lifetime, Some(Duration::from_secs(1800)));
    let denial = decision
        .check_fixed_lifetime(&caller, Duration::from_secs(3600))
        .expect_err("Google's hour is longer");
    assert_eq!(denial.rule_name(), "max_lifetime");
    assert_eq!(denial.grant.as_deref(), Some("wif"));
    assert!(
        decision
            .check_fixed_lifetime(&caller, Duration::from_secs(1800))
            .is_ok()
    );
    let batch = cn("batch");
    let decision = policy
        .authorize_exchange(
            &batch,
            &exchange_request(None, &cp, Some(AWS), Some(AWS_PROVIDER), None),
        )
        .expect("allowed");
    assert_eq!(decision.rate_limit.map(|l| l.burst()), Some(4));
    assert_eq!(decision.distinct_keys, Some(3));
    assert_eq!(decision.max_lifetime, None);
    assert!(
        decision
            .check_fixed_lifetime(&batch, Duration::from_secs(3600))
            .is_ok()
    );
}

#[test]
fn a_plain_exchange_never_falls_back_to_the_default_grant() {
    let policy = exchange_policy();
    let cp = scopes(&[CP]);
    // The DNS caller's default grant is for `prod`, lists ExchangeToken and allows this
    // audience and type: with the credential named, it allows the exchange.
    let caller = dns(&[APP_DNS]);
    assert_eq!(
        policy.default_grant(&caller).map(|g| g.name()),
        Some("tokens")
    );
    let prod = name("prod");
    let named = exchange_request(Some(&prod), &cp, Some(JWT), Some(GITHUB), None);
    assert!(!named.is_plain_exchange());
    assert_eq!(
        policy
            .authorize_exchange(&caller, &named)
            .expect("allowed")
            .grant,
        "tokens"
    );
    // Without it, a plain exchange: no plain-exchange grant matches the caller.
    let plain = exchange_request(None, &cp, Some(JWT), Some(GITHUB), None);
    assert!(plain.is_plain_exchange());
    for denial in [
        policy
            .authorize_exchange(&caller, &plain)
            .expect_err("plain"),
        policy.authorize(&caller, &plain).expect_err("plain"),
    ] {
        assert_eq!(denial.rule, DenialRule::NoPlainExchangeGrant);
        assert_eq!(denial.rule_name(), "no_grant");
        assert_eq!(denial.grant, None);
        assert_eq!(denial.value(), None);
        assert_eq!(
            denial.to_string(),
            "no policy grant lets caller app.example.org exchange tokens without a credential (a plain exchange)"
        );
    }
    // A ci/ caller has both: the plain exchange goes to the plain-exchange grant, not to its
    // default grant (which is before it in the file and would also allow it).
    let runner = spiffe(RUNNER);
    let decision = policy.authorize_exchange(&runner, &plain).expect("allowed");
    assert_eq!(decision.grant, "federation");
    assert_eq!(decision.credential, None);
    // `authorize` has no decision without a credential: it denies plain exchanges.
    let denial = policy
        .authorize(&runner, &plain)
        .expect_err("no credential");
    assert_eq!(denial.rule, DenialRule::NoPlainExchangeGrant);
    let explanation = policy.explain(&runner, &plain);
    assert_eq!(explanation.result, Err(denial));
    assert!(
        explanation
            .grants
            .iter()
            .all(|check| check.outcome != GrantOutcome::Allowed)
    );
}

#[test]
fn plain_exchange_grants_serve_no_other_rpc() {
    let policy = exchange_policy();
    let batch = cn("batch");
    let prod = name("prod");
    let none = scopes(&[]);
    for rpc in Rpc::ALL
        .into_iter()
        .filter(|rpc| *rpc != Rpc::ExchangeToken)
    {
        // Without a credential: the plain-exchange grant is not a default grant.
        let denial = policy
            .authorize(&batch, &AccessRequest::new(rpc, &none))
            .expect_err("no default grant");
        assert_eq!(denial.rule, DenialRule::NoDefaultGrant, "{rpc}");
        assert_eq!(denial.grant, None, "{rpc}");
        // With one: the plain-exchange grant is for none.
        let request = AccessRequest {
            credential: Some(&prod),
            ..AccessRequest::new(rpc, &none)
        };
        let denial = policy.authorize(&batch, &request).expect_err("no grant");
        assert_eq!(
            denial.rule,
            DenialRule::CredentialNotGranted {
                credential: prod.clone()
            },
            "{rpc}"
        );
        // Nor does authorize_exchange answer other RPCs differently.
        assert_eq!(
            policy
                .authorize_exchange(&batch, &request)
                .expect_err("no grant"),
            denial,
            "{rpc}"
        );
        let explanation = policy.explain(&batch, &request);
        assert_eq!(
            explanation
                .grants
                .iter()
                .find(|check| check.grant == "aws")
                .map(|check| &check.outcome),
            Some(&GrantOutcome::CredentialNotMatched),
            "{rpc}"
        );
    }
    // A ci/ caller's GetAccessToken without credential goes to its default grant, never to a
    // plain-exchange grant.
    let cp = scopes(&[CP]);
    let decision = policy
        .authorize(
            &spiffe(RUNNER),
            &AccessRequest::new(Rpc::GetAccessToken, &cp),
        )
        .expect("allowed");
    assert_eq!(decision.grant, "tokens");
    assert_eq!(decision.credential.as_str(), "prod");
    // A subject-token type set on another RPC is checked too.
    let denial = policy
        .authorize(
            &spiffe(RUNNER),
            &AccessRequest {
                subject_token_type: Some(SAML),
                ..AccessRequest::new(Rpc::GetAccessToken, &cp)
            },
        )
        .expect_err("not an exchange");
    assert_eq!(denial.rule_name(), "subject_token_types");
    assert_eq!(denial.value(), Some(SAML));
}

#[test]
fn explain_exchange_reports_every_grant() {
    let policy = exchange_policy();
    let cp = scopes(&[CP]);
    let request = exchange_request(None, &cp, Some(ID_TOKEN), Some(GITHUB), None);
    let explanation = policy.explain_exchange(&spiffe(DEPLOYER), &request);
    let outcomes: Vec<(&str, &GrantOutcome)> = explanation
        .grants
        .iter()
        .map(|check| (check.grant.as_str(), &check.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("tokens", &GrantOutcome::CredentialNotMatched),
            (
                "federation",
                &GrantOutcome::Denied(DenialRule::SubjectTokenTypeNotAllowed {
                    subject_token_type: Some(ID_TOKEN.to_owned())
                })
            ),
            (
                "downscope",
                &GrantOutcome::Denied(DenialRule::AudienceNotAllowed {
                    audience: GITHUB.to_owned()
                })
            ),
            ("wif", &GrantOutcome::CredentialNotMatched),
            ("aws", &GrantOutcome::CallerNotMatched),
        ]
    );
    // The closest is the grant for the provider that refuses the type.
    let denial = explanation.result.expect_err("denied");
    assert_eq!(denial.grant.as_deref(), Some("federation"));
    assert_eq!(
        denial.to_string(),
        format!(
            "grant federation (the closest for caller spiffe://example.org/ci/deployer) does not allow exchanging subject tokens of type {ID_TOKEN}: the grant's subject_token_types must list it"
        )
    );
    assert_eq!(
        policy.authorize_exchange(&spiffe(DEPLOYER), &request),
        Err(denial)
    );

    let allowed = exchange_request(None, &cp, Some(JWT), Some(GITHUB), None);
    let explanation = policy.explain_exchange(&spiffe(DEPLOYER), &allowed);
    assert_eq!(
        explanation.result.map(|d| (d.grant, d.credential)),
        Ok(("federation".to_owned(), None))
    );
    assert_eq!(
        explanation.grants.len(),
        5,
        "every grant, even after one allows"
    );
}

#[test]
fn the_closest_grant_is_named_for_exchanges() {
    // The identity provider, then the token's type: a grant for the right provider that
    // refuses the type is closer than a grant for another provider.
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "github"
        callers = [{{ cn = "x" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{GITHUB}"]
        subject_token_types = ["{JWT}"]

        [[grants]]
        name = "okta"
        callers = [{{ cn = "x" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{WORKFORCE}"]
        subject_token_types = ["{SAML}"]
        "#
    ));
    let cp = scopes(&[CP]);
    let caller = cn("x");
    let denial = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &cp, Some(JWT), Some(WORKFORCE), None),
        )
        .expect_err("wrong type for okta");
    assert_eq!(denial.grant.as_deref(), Some("okta"));
    assert_eq!(denial.rule_name(), "subject_token_types");
    assert_eq!(denial.value(), Some(JWT));
    let denial = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &cp, Some(SAML), Some(GITHUB), None),
        )
        .expect_err("wrong type for github");
    assert_eq!(denial.grant.as_deref(), Some("github"));
    // A provider neither allows: the first grant, at `audiences`.
    let denial = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &cp, Some(SAML), Some(OTHER_POOL), None),
        )
        .expect_err("no grant for the provider");
    assert_eq!(denial.grant.as_deref(), Some("github"));
    assert_eq!(denial.rule_name(), "audiences");
    assert_eq!(
        denial.to_string(),
        format!(
            "grant github (the closest for caller x) does not allow audience {OTHER_POOL}: the grant's audiences or audience_prefixes must allow it"
        )
    );
    // The provider before the scopes: a grant for another provider is not closer than the
    // grant for this one that refuses a scope.
    let policy = load(&format!(
        r#"
        [[grants]]
        name = "github"
        callers = [{{ cn = "x" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{GITHUB}"]
        subject_token_types = ["{JWT}"]
        scopes = ["{CP}"]

        [[grants]]
        name = "other-pool"
        callers = [{{ cn = "x" }}]
        rpcs = ["ExchangeToken"]
        audiences = ["{OTHER_POOL}"]
        subject_token_types = ["{JWT}"]
        scopes = ["{GCS_RO}"]
        "#
    ));
    let denial = policy
        .authorize_exchange(
            &caller,
            &exchange_request(None, &cp, Some(JWT), Some(OTHER_POOL), None),
        )
        .expect_err("scope");
    assert_eq!(denial.grant.as_deref(), Some("other-pool"));
    assert_eq!(denial.rule_name(), "scopes");
    assert_eq!(denial.value(), Some(CP));

    // A grant listing ExchangeToken without subject_token_types allows no exchange.
    let policy = load(&format!(
        "[[grants]]\nname = \"g\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\nrpcs = [\"ExchangeToken\"]\nscopes = [\"{CP}\"]"
    ));
    let c = name("c");
    for token_type in [JWT, ID_TOKEN, SAML, AWS, ACCESS_TOKEN] {
        let denial = policy
            .authorize_exchange(
                &caller,
                &exchange_request(Some(&c), &cp, Some(token_type), None, None),
            )
            .expect_err("no type allowed");
        assert_eq!(denial.rule_name(), "subject_token_types");
    }
}

#[test]
fn load_errors_name_their_place_for_exchange_grants() {
    // A plain-exchange grant (no credential), and a grant with a credential that lists
    // ExchangeToken.
    let plain =
        |extra: &str| format!("[[grants]]\nname = \"p\"\ncallers = [{{ cn = \"x\" }}]\n{extra}\n");
    let exchange = |extra: &str| {
        format!(
            "[[grants]]\nname = \"e\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\nrpcs = [\"ExchangeToken\"]\n{extra}\n"
        )
    };
    let tokens = |extra: &str| {
        format!(
            "[[grants]]\nname = \"t\"\ncredential = \"c\"\ncallers = [{{ cn = \"x\" }}]\n{extra}\n"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        // a grant without credential
        (plain(""), "grants[0]", "missing field `credential`"),
        (plain(""), "grants[0]", "this grant allows GetAccessToken"),
        (
            plain("rpcs = [\"ExchangeToken\", \"GetAccessToken\"]"),
            "grants[0]",
            "allows GetAccessToken, ExchangeToken",
        ),
        (
            plain("rpcs = [\"SignBlob\"]"),
            "grants[0]",
            "exactly [\"ExchangeToken\"]",
        ),
        (
            format!(
                "{}{}",
                tokens(""),
                plain("rpcs = [\"ExchangeToken\", \"ImpersonateServiceAccount\"]")
            ),
            "grants[1]",
            "missing field `credential`",
        ),
        (
            plain("rpcs = [\"ExchangeToken\"]\ndefault = true"),
            "grants[0].default",
            "cannot be a default grant",
        ),
        (
            plain("rpcs = [\"ExchangeToken\"]")
                .replace("name = \"p\"", "name = \"p\"\ncredential = \"\""),
            "grants[0].credential",
            "invalid credential name",
        ),
        (
            plain(
                "rpcs = [\"ExchangeToken\"]\nservice_accounts = [\"a@my-project.iam.gserviceaccount.com\"]",
            ),
            "grants[0].service_accounts",
            "has no effect",
        ),
        // subject_token_types
        (
            plain(
                "rpcs = [\"ExchangeToken\"]\nsubject_token_types = [\"urn:ietf:params:oauth:token-type:mtls\"]",
            ),
            "grants[0].subject_token_types[0]",
            "not a subject-token type the broker exchanges",
        ),
        (
            exchange(&format!(
                "subject_token_types = [\"{JWT}\", \"URN:IETF:PARAMS:OAUTH:TOKEN-TYPE:JWT\"]"
            )),
            "grants[0].subject_token_types[1]",
            "urn:ietf:params:aws:token-type:aws4_request",
        ),
        (
            exchange("subject_token_types = [\"jwt\"]"),
            "grants[0].subject_token_types[0]",
            "\"jwt\" is not a subject-token type",
        ),
        (
            exchange("subject_token_types = [\"\"]"),
            "grants[0].subject_token_types[0]",
            "not a subject-token type",
        ),
        (
            exchange(&format!("subject_token_types = \"{JWT}\"")),
            "grants[0].subject_token_types",
            "invalid type",
        ),
        (
            tokens(&format!("subject_token_types = [\"{JWT}\"]")),
            "grants[0].subject_token_types",
            "has no effect: the grant allows none of the RPCs that use it (ExchangeToken)",
        ),
        (
            tokens(&format!(
                "rpcs = [\"GenerateIdToken\"]\nsubject_token_types = [\"{JWT}\"]"
            )),
            "grants[0].subject_token_types",
            "has no effect",
        ),
        // audiences for providers
        (
            tokens(&format!("audiences = [\"{GITHUB}\"]")),
            "grants[0].audiences",
            "GenerateIdToken, ExchangeToken",
        ),
        (
            tokens(&format!("audience_prefixes = [\"{POOL}\"]")),
            "grants[0].audience_prefixes",
            "GenerateIdToken, ExchangeToken",
        ),
        (
            exchange(&format!(
                "audience_prefixes = [\"{}\"]",
                POOL.trim_end_matches('/')
            )),
            "grants[0].audience_prefixes[0]",
            "a resource name ending with '/'",
        ),
        (
            exchange("audience_prefixes = [\"//iam.googleapis.com\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audience_prefixes = [\"//\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audience_prefixes = [\"///\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audience_prefixes = [\"///projects/\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audience_prefixes = [\"//iam.googleapis.com:443/projects/\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audience_prefixes = [\"//*.googleapis.com/\"]"),
            "grants[0].audience_prefixes[0]",
            "audience prefix must be",
        ),
        (
            exchange("audiences = [\"//iam.googleapis.com/projects/1/a b\"]"),
            "grants[0].audiences[0]",
            "not an audience",
        ),
    ];
    for (text, path, message) in cases {
        let error = Policy::from_toml_str(&text).expect_err(&text);
        assert_eq!(error.path(), path, "{text}\n=> {error}");
        assert!(error.message().contains(message), "{text}\n=> {error}");
        assert!(error.to_string().starts_with("policy: "), "{error}");
    }
    // The good forms load.
    let boundary_table = format!(
        "[[grants.access_boundary.rules]]\navailable_resource = \"{BUCKET}\"\navailable_permissions = [\"{VIEWER}\"]"
    );
    for good in [
        plain("rpcs = [\"ExchangeToken\"]"),
        plain("rpcs = [\"ExchangeToken\", \"ExchangeToken\"]"),
        plain(&format!(
            "rpcs = [\"ExchangeToken\"]\nsubject_token_types = [\"{JWT}\", \"{ID_TOKEN}\", \"{SAML}\", \"{AWS}\", \"{ACCESS_TOKEN}\"]\naudiences = [\"{GITHUB}\"]\naudience_prefixes = [\"//iam.googleapis.com/\", \"{POOL}\", \"//iam.googleapis.com/locations/global/workforcePools/staff/providers/\", \"https://\"]\nscopes = [\"{CP}\"]\nmax_lifetime = \"1h\"\nrate_limit = {{ per_second = 1, burst = 1 }}\ndistinct_keys = 5"
        )),
        plain(&format!(
            "rpcs = [\"ExchangeToken\"]\nsubject_token_types = [\"{ACCESS_TOKEN}\"]\n{boundary_table}"
        )),
        exchange(&format!(
            "subject_token_types = [\"{JWT}\"]\naudiences = [\"{GITHUB}\"]\n{boundary_table}"
        )),
        exchange("subject_token_types = []"),
        tokens(&format!(
            "rpcs = [\"GenerateIdToken\"]\naudience_prefixes = [\"{POOL}\"]"
        )),
        format!(
            "{}{}",
            plain("rpcs = [\"ExchangeToken\"]"),
            tokens("default = true").replace("{ cn = \"x\" }", "{ cn = \"x\" }, { cn = \"y\" }")
        ),
    ] {
        if let Err(error) = Policy::from_toml_str(&good) {
            panic!("{good}: {error}");
        }
    }
}

#[test]
fn exchange_grants_are_normalized() {
    let policy = exchange_policy();
    let federation = policy.grant("federation").expect("grant");
    assert_eq!(federation.credential(), None);
    assert!(federation.is_plain_exchange());
    assert!(!federation.is_default());
    assert_eq!(federation.rpcs(), [Rpc::ExchangeToken]);
    assert_eq!(federation.subject_token_types(), [JWT, SAML]);
    assert!(federation.allows_subject_token_type(SAML));
    assert!(!federation.allows_subject_token_type(ACCESS_TOKEN));
    assert!(!federation.allows_subject_token_type("urn:ietf:params:oauth:token-type:JWT"));
    assert_eq!(federation.audience_prefixes(), [POOL]);
    assert!(federation.allows_audience(GITHUB));
    assert!(federation.allows_audience(WORKFORCE));
    assert!(!federation.allows_audience(OTHER_POOL));
    let tokens = policy.grant("tokens").expect("grant");
    assert_eq!(tokens.credential(), Some(&name("prod")));
    assert!(!tokens.is_plain_exchange());
    assert_eq!(tokens.subject_token_types(), [JWT]);
    assert_eq!(broker_authz::SUBJECT_TOKEN_TYPES.len(), 5);
    for token_type in broker_authz::SUBJECT_TOKEN_TYPES {
        assert!(token_type.starts_with("urn:ietf:params:"), "{token_type}");
    }
}
