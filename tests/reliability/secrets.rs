//! Item 6, secrets: a canary value for every secret of every auth kind the engine supports
//! reaches its upstream and appears nowhere else — not in the engine's trace logs, its error
//! answers, the journal, `/metrics`, any `GET` answer, `switchboard validate` or `functions`
//! output, `Debug` output of the built connections, nor the SQLite files.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use switchboard::metadata::Loader;
use switchboard::wrapper::registry::secret_reader;
use switchboard::wrapper::{RestWrapper, S3Wrapper, SoapWrapper};

use harness::figure;
use support::serve::{Serve, ServeOptions};
use support::upstream::{Reply, Seen, Upstream};

const ITEM: &str = "6 secrets";
const WITHIN: Duration = Duration::from_secs(30);
/// Every canary starts with this, so that a canary cut short is found too.
const MARK: &str = "sbcnry";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The canaries of one run: each secret a distinct value, all starting with [`MARK`] and a
/// random part.
struct Canaries {
    run: String,
    /// Name → value, for the metadata's secrets.
    values: BTreeMap<&'static str, String>,
}

impl Canaries {
    fn new() -> Canaries {
        let run = format!("{MARK}{:012x}", rand::random::<u64>() >> 16);
        let names = [
            "BEARER",
            "BASIC_USER",
            "BASIC_PASSWORD",
            "KEY_HEADER",
            "KEY_QUERY",
            "CC_SECRET",
            "CC_BODY_SECRET",
            "RT_TOKEN",
            "RT_SECRET",
            "REFUSED_SECRET",
            "SOAP_PASSWORD",
            "SOAP_BEARER",
            "WS_TEXT",
            "WS_DIGEST",
            "AWS_KEY_ID",
            "AWS_SECRET",
            "AWS_SESSION",
        ];
        let values = names
            .into_iter()
            .map(|n| {
                (
                    n,
                    format!("{run}-{}", n.to_ascii_lowercase().replace('_', "-")),
                )
            })
            .collect();
        Canaries { run, values }
    }

    fn get(&self, name: &str) -> &str {
        &self.values[name]
    }

    /// A token the token endpoint issues (access tokens, rotated refresh tokens): secrets too.
    fn issued(&self, what: &str, n: usize) -> String {
        format!("{}-{what}-{n}", self.run)
    }

    /// Every form a canary may take where it leaks: the values as they are and the basic
    /// credentials as base64; plus the mark of the run, which any cut piece of a canary
    /// still has.
    fn forms(&self) -> Vec<String> {
        let mut forms: Vec<String> = self.values.values().cloned().collect();
        forms.push(b64(&format!(
            "{}:{}",
            self.get("BASIC_USER"),
            self.get("BASIC_PASSWORD")
        )));
        forms.push(b64(&format!("crm:{}", self.get("SOAP_PASSWORD"))));
        forms.push(b64(&format!("cc-client:{}", self.get("CC_SECRET"))));
        forms.push(b64(&format!("rt-client:{}", self.get("RT_SECRET"))));
        forms.push(b64(&format!(
            "refused-client:{}",
            self.get("REFUSED_SECRET")
        )));
        forms.push(self.run.clone());
        forms
    }
}

/// Where `text` holds any form of a canary: `(form, excerpt around it)`, at most a few.
fn leaks(forms: &[String], text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for form in forms {
        for (at, _) in text.match_indices(form.as_str()).take(3) {
            let start = text.floor_char_boundary(at.saturating_sub(200));
            let end = text.ceil_char_boundary((at + form.len() + 120).min(text.len()));
            found.push((form.clone(), text[start..end].to_string()));
        }
    }
    found
}

/// What a scan covered: places and bytes.
#[derive(Default)]
struct Scanned {
    places: usize,
    bytes: usize,
    found: Vec<(String, String, String)>,
}

impl Scanned {
    fn scan(&mut self, forms: &[String], place: &str, text: &str) {
        self.places += 1;
        self.bytes += text.len();
        for (form, excerpt) in leaks(forms, text) {
            self.found.push((place.to_string(), form, excerpt));
        }
    }

    fn scan_bytes(&mut self, forms: &[String], place: &str, bytes: &[u8]) {
        self.scan(forms, place, &String::from_utf8_lossy(bytes));
    }
}

/// The form fields of a request body.
fn form(seen: &Seen) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(&seen.body)
        .into_owned()
        .collect()
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Everything the upstream received in one request, as text: for the echoes and the proof of
/// receipt.
fn everything(seen: &Seen) -> String {
    let headers: Vec<String> = seen
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    format!(
        "{} {}\n{}\n\n{}",
        seen.method,
        seen.path,
        headers.join("\n"),
        String::from_utf8_lossy(&seen.body)
    )
}

/// The one upstream of the test: token endpoints, the REST and SOAP APIs of every connection
/// and a fake S3 endpoint, told apart by path. `/{connection}/denied` answers 401 and
/// `/{connection}/fail` 500, each echoing in its body everything the request carried
/// (headers, query, body), as careless services do; every other path answers 200.
struct Upstreams {
    upstream: Upstream,
}

impl Upstreams {
    async fn start(canaries: &Canaries) -> Upstreams {
        let issued = Arc::new(AtomicUsize::new(0));
        let refresh = Arc::new(Mutex::new(canaries.get("RT_TOKEN").to_string()));
        let cc_basic = format!(
            "Basic {}",
            b64(&format!("cc-client:{}", canaries.get("CC_SECRET")))
        );
        let rt_basic = format!(
            "Basic {}",
            b64(&format!("rt-client:{}", canaries.get("RT_SECRET")))
        );
        let cc_body_secret = canaries.get("CC_BODY_SECRET").to_string();
        let run = canaries.run.clone();
        let upstream = Upstream::start(move |seen| {
            let echo = json!({ "error": "refused", "you_sent": everything(seen) });
            let path = seen.path.split('?').next().unwrap_or_default();
            let token = |n: usize, refresh: Option<String>| {
                let mut answer = json!({
                    "access_token": format!("{run}-access-{n}"),
                    "token_type": "bearer",
                    "expires_in": 3600,
                });
                if let Some(r) = refresh {
                    answer["refresh_token"] = json!(r);
                }
                Reply::ok(answer)
            };
            match path {
                "/token/cc" => {
                    let ok = header(seen, "authorization") == cc_basic
                        && form(seen).get("grant_type").map(String::as_str)
                            == Some("client_credentials");
                    match ok {
                        true => token(issued.fetch_add(1, Ordering::SeqCst) + 1, None),
                        false => Reply::json(401, json!({ "error": "invalid_client" })),
                    }
                }
                "/token/cc_body" => {
                    let fields = form(seen);
                    let ok = fields.get("client_secret") == Some(&cc_body_secret)
                        && fields.get("client_id").map(String::as_str) == Some("cc-body-client");
                    match ok {
                        true => token(issued.fetch_add(1, Ordering::SeqCst) + 1, None),
                        false => Reply::json(401, json!({ "error": "invalid_client" })),
                    }
                }
                "/token/rt" => {
                    let fields = form(seen);
                    let mut current = refresh.lock().expect("refresh lock");
                    let ok = header(seen, "authorization") == rt_basic
                        && fields.get("refresh_token") == Some(&*current);
                    if !ok {
                        return Reply::json(400, json!({ "error": "invalid_grant" }));
                    }
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    *current = format!("{run}-refresh-{n}");
                    token(n, Some(current.clone()))
                }
                // A token endpoint that refuses the client and quotes what it got.
                "/token/refuse" => Reply::json(
                    400,
                    json!({
                        "error": "invalid_client",
                        "error_description": format!("unknown client; you sent {}", everything(seen)),
                    }),
                ),
                p if p.ends_with("/denied") => Reply::json(401, echo),
                p if p.ends_with("/fail") => Reply::json(500, echo),
                _ => match header(seen, "soapaction").trim_matches('"') {
                    "denied" => Reply::json(401, echo),
                    "fail" => Reply::json(500, echo),
                    _ => Reply::ok(json!({ "ok": true })),
                },
            }
        })
        .await;
        Upstreams { upstream }
    }
}

/// The metadata: one connection per auth kind (and variant), each with the functions `ok`,
/// `denied` (401 with an echo) and `fail` (500 with an echo, 2 attempts).
fn metadata(api: &str) -> Vec<(String, String)> {
    let rest = |name: &str, auth: &str| {
        format!(
            r#"connection: {name}
type: rest
endpoint: {api}/{name}
allow_private_network: true
auth: {auth}
limits: {{ timeout: 5s, connect_timeout: 1s }}
retry: {{ max_attempts: 2, initial_delay: 10ms, max_delay: 20ms }}
breaker: {{ enabled: false }}
functions:
  ok: {{ path: /ok }}
  denied: {{ path: /denied }}
  fail: {{ path: /fail }}
"#
        )
    };
    let soap = |name: &str, auth: &str| {
        format!(
            r#"connection: {name}
type: soap
endpoint: {api}/{name}
allow_private_network: true
{auth}
limits: {{ timeout: 5s, connect_timeout: 1s }}
retry: {{ max_attempts: 2, initial_delay: 10ms, max_delay: 20ms }}
breaker: {{ enabled: false }}
functions:
  ok: {{ action: ok, body: "<Ping/>" }}
  denied: {{ action: denied, body: "<Ping/>" }}
  fail: {{ action: fail, body: "<Ping/>" }}
"#
        )
    };
    let oauth = |kind: &str, url: &str, rest_of: &str| {
        format!("\n  type: {kind}\n  token_url: {api}/token/{url}\n{rest_of}")
    };
    vec![
        (
            "bearer".into(),
            rest("bearer", "{ type: bearer, token: \"${env:SB_BEARER}\" }"),
        ),
        (
            "basic".into(),
            rest(
                "basic",
                "{ type: basic, username: \"${env:SB_BASIC_USER}\", password: \"${file:basic.secret}\" }",
            ),
        ),
        (
            "key_header".into(),
            rest(
                "key_header",
                "{ type: api_key, in: header, name: X-Api-Key, value: \"${env:SB_KEY_HEADER}\" }",
            ),
        ),
        (
            "key_query".into(),
            rest(
                "key_query",
                "{ type: api_key, in: query, name: api_key, value: \"${env:SB_KEY_QUERY}\" }",
            ),
        ),
        (
            "oauth_cc".into(),
            rest(
                "oauth_cc",
                &oauth(
                    "oauth2_client_credentials",
                    "cc",
                    "  client_id: cc-client\n  client_secret: \"${env:SB_CC_SECRET}\"\n  scopes: [api]",
                ),
            ),
        ),
        (
            "oauth_cc_body".into(),
            rest(
                "oauth_cc_body",
                &oauth(
                    "oauth2_client_credentials",
                    "cc_body",
                    "  client_id: cc-body-client\n  client_secret: \"${file:cc_body.secret}\"\n  client_auth: body",
                ),
            ),
        ),
        (
            "oauth_rt".into(),
            rest(
                "oauth_rt",
                &oauth(
                    "oauth2_refresh_token",
                    "rt",
                    "  client_id: rt-client\n  client_secret: \"${env:SB_RT_SECRET}\"\n  refresh_token: \"${file:rt.secret}\"",
                ),
            ),
        ),
        (
            "oauth_refused".into(),
            rest(
                "oauth_refused",
                &oauth(
                    "oauth2_client_credentials",
                    "refuse",
                    "  client_id: refused-client\n  client_secret: \"${env:SB_REFUSED_SECRET}\"",
                ),
            ),
        ),
        (
            "soap_basic".into(),
            soap(
                "soap_basic",
                "auth: { type: basic, username: crm, password: \"${env:SB_SOAP_PASSWORD}\" }",
            ),
        ),
        (
            "soap_bearer".into(),
            soap(
                "soap_bearer",
                "auth: { type: bearer, token: \"${env:SB_SOAP_BEARER}\" }",
            ),
        ),
        (
            "soap_ws_text".into(),
            soap(
                "soap_ws_text",
                "ws_security: { username: crm-ws, password: \"${env:SB_WS_TEXT}\", password_type: text }",
            ),
        ),
        (
            "soap_ws_digest".into(),
            soap(
                "soap_ws_digest",
                "ws_security: { username: crm-ws, password: \"${file:ws_digest.secret}\", password_type: digest }",
            ),
        ),
        (
            "s3_keys".into(),
            format!(
                r#"connection: s3_keys
type: s3
endpoint: {api}
region: us-east-1
bucket: sb-bucket
path_style: true
allow_private_network: true
checksums: when_required
auth: {{ type: aws, access_key_id: "${{env:SB_AWS_KEY_ID}}", secret_access_key: "${{env:SB_AWS_SECRET}}", session_token: "${{file:aws_session.secret}}" }}
limits: {{ timeout: 5s, connect_timeout: 1s }}
retry: {{ max_attempts: 2, initial_delay: 10ms, max_delay: 20ms }}
breaker: {{ enabled: false }}
functions:
  ok: {{ operation: get, key: ok }}
  denied: {{ operation: get, key: denied }}
  fail: {{ operation: get, key: fail }}
"#
            ),
        ),
    ]
}

/// Environment variables (name, value) and secret files (name, text) of the metadata.
type Sources = (Vec<(String, String)>, Vec<(&'static str, String)>);

/// The environment variables and secret files that hold the canaries.
fn secret_sources(c: &Canaries) -> Sources {
    let env = [
        "BEARER",
        "BASIC_USER",
        "KEY_HEADER",
        "KEY_QUERY",
        "CC_SECRET",
        "RT_SECRET",
        "REFUSED_SECRET",
        "SOAP_PASSWORD",
        "SOAP_BEARER",
        "WS_TEXT",
        "AWS_KEY_ID",
        "AWS_SECRET",
    ]
    .into_iter()
    .map(|n| (format!("SB_{n}"), c.get(n).to_string()))
    .collect();
    let files = vec![
        ("basic.secret", format!("{}\n", c.get("BASIC_PASSWORD"))),
        ("cc_body.secret", c.get("CC_BODY_SECRET").to_string()),
        ("rt.secret", c.get("RT_TOKEN").to_string()),
        ("ws_digest.secret", c.get("WS_DIGEST").to_string()),
        ("aws_session.secret", c.get("AWS_SESSION").to_string()),
    ];
    (env, files)
}

/// Fault: every auth kind — bearer, basic (user and password secret), api_key in a header and
/// in the query, oauth2_client_credentials (client secret in a basic header and in the body),
/// oauth2_refresh_token (refresh token rotated by the provider), a token endpoint that refuses
/// the client, SOAP basic and bearer, WS-Security text and digest, and S3 static keys with a
/// session token (against a fake S3 endpoint on loopback, so no S3 server is needed) — with a
/// canary for each secret, called successfully, refused with a 401 and failing with a 500, where
/// the upstream's error bodies echo every header, the query and the body it got; the engine
/// runs at `RUST_LOG=trace`.
///
/// Expected: the upstream received every canary that goes on the wire (the WS-Security digest
/// and the AWS secret key only as a digest or signature); and no canary — as is, as base64 of
/// the basic credentials, or any piece carrying the run's mark — appears in the engine's logs,
/// the callouts' results and journals, `/metrics`, any `GET` answer (callouts, list, attempts,
/// functions, connections, health), `switchboard validate` (also of a broken folder) and
/// `functions` output, the `Debug` output of every built wrapper, or the SQLite files (the
/// provider's rotated refresh token excepted, which the store keeps by design).
///
/// Figure: the auth kinds and calls that carried a canary, and the bytes and answers scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_of_every_auth_kind_reach_the_upstream_and_nothing_else() {
    let canaries = Canaries::new();
    let forms = canaries.forms();
    let upstreams = Upstreams::start(&canaries).await;
    let dir = tempfile::tempdir().expect("temp folder");
    let meta = dir.path().join("metadata");
    std::fs::create_dir(&meta).expect("metadata folder");
    let connections = metadata(&upstreams.upstream.url());
    for (name, yaml) in &connections {
        std::fs::write(meta.join(format!("{name}.yaml")), yaml).expect("write metadata");
    }
    let (env, files) = secret_sources(&canaries);
    for (name, text) in &files {
        std::fs::write(meta.join(name), text).expect("write a secret file");
    }
    let db = format!("sqlite://{}", dir.path().join("sb.db").display());
    let log = dir.path().join("serve.log");
    let mut serve = Serve::start_with(
        &meta,
        &db,
        log.clone(),
        ServeOptions {
            env: env.clone(),
            log_level: Some("trace".into()),
            ..ServeOptions::default()
        },
    )
    .await;

    // Every function of every connection: `ok` three times, `denied` and `fail` once.
    let mut ids = Vec::new();
    for (name, _) in &connections {
        for function in ["ok", "ok", "ok", "denied", "fail"] {
            let id = serve
                .api
                .enqueue(&format!("{name}.{function}"), json!({}))
                .await;
            ids.push((name.clone(), function, id));
        }
    }
    let mut scanned = Scanned::default();
    let mut answers = 0;
    for (name, function, id) in &ids {
        let done = serve
            .api
            .wait_for_status(id, &["succeeded", "failed"], WITHIN)
            .await;
        // What `ok` must end with: the REST APIs succeed; SOAP's `ok` gets JSON (not an
        // envelope), S3's `get` an object; the refused token endpoint fails everything.
        if *function == "ok" && name.as_str() != "oauth_refused" && !name.starts_with("soap") {
            assert_eq!(done["status"], "succeeded", "{name}.{function}: {done:#}");
        }
        if *function != "ok" || name.as_str() == "oauth_refused" {
            assert_eq!(done["status"], "failed", "{name}.{function}: {done:#}");
        }
        scanned.scan(
            &forms,
            &format!("GET callout {name}.{function}"),
            &done.to_string(),
        );
        let (_, journal) = serve.api.get(&format!("/v1/callouts/{id}/attempts")).await;
        scanned.scan(
            &forms,
            &format!("journal {name}.{function}"),
            &journal.to_string(),
        );
        answers += 2;
    }
    // The refusals name what went wrong without the secret.
    let refused = serve
        .api
        .callout(
            &ids.iter()
                .find(|(n, _, _)| n == "oauth_refused")
                .expect("refused")
                .2,
        )
        .await;
    assert_eq!(refused["result"]["error"]["kind"], "auth", "{refused:#}");

    // Every other GET route, and an error answer of the API.
    let list = serve.api.list_all(10).await;
    assert_eq!(list.len(), ids.len());
    for path in [
        "/v1/callouts?limit=500",
        "/v1/callouts?status=failed&limit=500",
        "/v1/functions",
        "/v1/connections",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/callouts/00000000-0000-0000-0000-000000000000",
    ] {
        let (_, text) = serve.api.get_text(path).await;
        scanned.scan(&forms, &format!("GET {path}"), &text);
        answers += 1;
    }
    let (_, invalid) = serve
        .api
        .post(
            "/v1/callouts",
            &json!({ "function": "bearer.nope", "input": {} }),
        )
        .await;
    scanned.scan(&forms, "POST error answer", &invalid.to_string());
    answers += 1;

    // The upstream got every canary that goes on the wire.
    let requests = upstreams.upstream.requests();
    let wire: Vec<String> = requests.iter().map(everything).collect();
    let carried = |value: &str| wire.iter().filter(|r| r.contains(value)).count();
    let mut kinds_proved = Vec::new();
    for (kind, value) in [
        ("bearer", format!("Bearer {}", canaries.get("BEARER"))),
        (
            "basic",
            b64(&format!(
                "{}:{}",
                canaries.get("BASIC_USER"),
                canaries.get("BASIC_PASSWORD")
            )),
        ),
        ("api_key header", canaries.get("KEY_HEADER").to_string()),
        (
            "api_key query",
            format!("api_key={}", canaries.get("KEY_QUERY")),
        ),
        (
            "oauth2_client_credentials (basic)",
            b64(&format!("cc-client:{}", canaries.get("CC_SECRET"))),
        ),
        (
            "oauth2_client_credentials (body)",
            format!("client_secret={}", canaries.get("CC_BODY_SECRET")),
        ),
        (
            "oauth2_refresh_token",
            format!("refresh_token={}", canaries.get("RT_TOKEN")),
        ),
        (
            "oauth2 refused client",
            b64(&format!(
                "refused-client:{}",
                canaries.get("REFUSED_SECRET")
            )),
        ),
        (
            "soap basic",
            b64(&format!("crm:{}", canaries.get("SOAP_PASSWORD"))),
        ),
        (
            "soap bearer",
            format!("Bearer {}", canaries.get("SOAP_BEARER")),
        ),
        ("ws_security text", canaries.get("WS_TEXT").to_string()),
        (
            "aws access key id",
            format!("Credential={}/", canaries.get("AWS_KEY_ID")),
        ),
        ("aws session token", canaries.get("AWS_SESSION").to_string()),
        (
            "oauth2 access token",
            format!("Bearer {}", canaries.issued("access", 1)),
        ),
    ] {
        assert!(
            carried(&value) > 0,
            "the upstream never got the {kind} canary"
        );
        kinds_proved.push(kind);
    }
    // A digest and a signature carry their secret without it.
    let digests = wire
        .iter()
        .filter(|r| r.contains("PasswordDigest") && r.contains("crm-ws"))
        .count();
    assert!(digests > 0, "no WS-Security digest arrived");
    for secret in ["WS_DIGEST", "AWS_SECRET"] {
        assert_eq!(
            carried(canaries.get(secret)),
            0,
            "{secret} went on the wire as is"
        );
    }
    let calls_with_canary = wire.iter().filter(|r| r.contains(&canaries.run)).count();

    // The built wrappers' `Debug` output (what a panic message would print).
    let metadata = Loader::new()
        .load(&meta)
        .expect("readable")
        .expect("valid metadata");
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut debugs = 0;
    for (name, connection) in &metadata.connections {
        let secret = secret_reader(connection, &lookup);
        let debug = match connection.type_name.as_str() {
            "rest" => format!(
                "{:?}",
                RestWrapper::build(connection, &secret, None).expect("rest")
            ),
            "soap" => format!(
                "{:?}",
                SoapWrapper::build(connection, &secret, None).expect("soap")
            ),
            "s3" => format!(
                "{:?}",
                S3Wrapper::build(connection, &secret, None).expect("s3")
            ),
            other => panic!("unexpected type {other}"),
        };
        scanned.scan(&forms, &format!("Debug of {name}"), &debug);
        scanned.scan(
            &forms,
            &format!("Debug of {name}'s metadata"),
            &format!("{connection:?}"),
        );
        debugs += 2;
    }
    scanned.scan(&forms, "Debug of the metadata", &format!("{metadata:?}"));

    // `switchboard validate` and `functions`, with the secrets resolvable; and a broken copy.
    let broken = tempfile::tempdir().expect("temp folder");
    for entry in std::fs::read_dir(&meta).expect("read metadata") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, broken.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        broken.path().join("broken.yaml"),
        format!(
            "connection: broken\ntype: rest\nendpoint: https://api.example.com/?key={key}\nauth: {{ type: bearer, token: \"{key}\", tokne: \"${{env:SB_BEARER}}\" }}\nlimits: {{ rate: ten }}\n",
            key = canaries.get("BEARER")
        ),
    )
    .expect("write broken metadata");
    let folder = meta.display().to_string();
    let broken_folder = broken.path().display().to_string();
    for (args, ok) in [
        (vec!["validate", "--check-secrets", folder.as_str()], true),
        (
            vec![
                "validate",
                "--check-secrets",
                "--format",
                "json",
                folder.as_str(),
            ],
            true,
        ),
        (vec!["functions", folder.as_str()], true),
        (
            vec!["validate", "--check-secrets", broken_folder.as_str()],
            false,
        ),
        (
            vec!["validate", "--format", "json", broken_folder.as_str()],
            false,
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "trace")
            .output()
            .expect("switchboard runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "{args:?}: {text}");
        // The broken file holds the canary literally: only its refusal may be printed.
        let place = format!("switchboard {}", args.join(" "));
        scanned.scan(&forms, &place, &text);
        answers += 1;
    }

    // The engine alive; its logs; then its database files, once it is gone.
    assert!(
        serve.child.try_wait().expect("wait").is_none(),
        "the engine exited"
    );
    serve.kill();
    let log_text = std::fs::read(&log).expect("read the log");
    let log_bytes = log_text.len();
    scanned.scan_bytes(&forms, "engine log (trace)", &log_text);
    let log_lines = String::from_utf8_lossy(&log_text).lines().count();
    let rotated: Vec<String> = (1..=50).map(|n| canaries.issued("refresh", n)).collect();
    let mut db_bytes = 0;
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.path().join(format!("sb.db{suffix}"));
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        db_bytes += bytes.len();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // The newest rotated refresh token is kept in the store by design (docs/metadata.md,
        // OAuth2); nothing else may be.
        let mut masked = text.clone();
        for r in &rotated {
            masked = masked.replace(r.as_str(), "<rotated refresh token>");
        }
        scanned.scan(&forms, &format!("sb.db{suffix}"), &masked);
    }

    let found: Vec<String> = scanned
        .found
        .iter()
        .map(|(place, form, excerpt)| format!("{place}: `{form}` in …{excerpt}…"))
        .collect();
    assert!(
        found.is_empty(),
        "{} leaks:\n{}",
        found.len(),
        found.join("\n\n")
    );
    println!(
        "{} kinds proved; {} requests carried a canary; {log_lines} log lines ({log_bytes} bytes); {} places, {} bytes scanned; DB {db_bytes} bytes",
        kinds_proved.len(),
        calls_with_canary,
        scanned.places,
        scanned.bytes
    );
    figure(
        ITEM,
        "a canary of every auth kind reaches the upstream and appears nowhere else",
        &format!(
            "canaries of {kinds} auth kinds and variants ({list}) carried by {calls_with_canary} \
             upstream requests, each echoed back in 401 and 500 answers; 0 occurrences in \
             {log_mb:.1} MB of trace logs ({log_lines} lines), {answers} API answers and CLI \
             outputs (callouts, journals, lists, functions, connections, /metrics, validate, \
             functions), {debug} Debug outputs and {db_kb} KB of SQLite files",
            kinds = kinds_proved.len(),
            list = kinds_proved.join(", "),
            log_mb = log_bytes as f64 / 1e6,
            debug = debugs + 1,
            db_kb = db_bytes / 1024,
        ),
    );
}
