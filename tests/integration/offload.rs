//! Large bodies through the files bucket, against real parts: the engine as production starts
//! it, a real S3 server (moto, `SWITCHBOARD_S3_URL`; skipped without it) and the bulk upstream
//! of `support::upstream`, which streams its answers and hashes what it is sent.
//!
//! A successful answer over the connection's offload threshold is stored in the files bucket
//! and the result is `{ "file": <reference> }`; a REST function with `body_file` sends a stored
//! file's bytes; a deadline that passes while an answer is being stored leaves nothing in the
//! bucket. Real time on purpose: the point is real sockets, a real bucket and a real deadline.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::engine::{POLL, TestServer, pointed};
use crate::support::s3;
use crate::support::upstream::{Reply, Sunk, Upstream, content_sha256};

const WITHIN: Duration = Duration::from_secs(60);

/// The `bulk` connection to `upstream`: `fetch` reads `/bytes/{size}` (query `chunked`,
/// `stall_after` and `type` from the input when given), `send` posts a stored file to `/sink`.
fn bulk(upstream: &Upstream, limits: &str, extra: &str) -> String {
    let yaml = format!(
        r#"connection: bulk
type: rest
endpoint: UPSTREAM
allow_private_network: true
limits: {limits}
retry: {{ max_attempts: 1 }}
{extra}
functions:
  fetch:
    method: GET
    path: "/bytes/{{{{ input.size }}}}"
    query:
      chunked: "{{{{ input.chunked | default(false) }}}}"
      stall_after: "{{{{ input.stall_after | default('') }}}}"
      type: "{{{{ input.type | default('application/octet-stream') }}}}"
    input_schema:
      type: object
      properties:
        size: {{ type: integer }}
        chunked: {{ type: boolean }}
        stall_after: {{ type: integer }}
        type: {{ type: string }}
    output: {{ length: /length }}
    output_schema: {{ type: object, properties: {{ length: {{ type: integer }} }} }}
  send:
    method: POST
    path: /sink
    body_file: "{{{{ input.file }}}}"
    input_schema: {{ type: object, properties: {{ file: {{ type: string }} }} }}
"#
    );
    pointed(&yaml, &upstream.url())
}

/// A server with the files bucket `bucket` and the `bulk` connection.
async fn server(url: &str, bucket: &str, bulk_yaml: String) -> TestServer {
    let mut files = s3::s3_connection_files(url, bucket);
    files.push(("bulk.yaml", bulk_yaml));
    TestServer::start(&files).await
}

/// Runs `function` with `input` to `status`; returns the callout.
async fn run(sb: &TestServer, function: &str, input: Value, status: &str) -> Value {
    let id = sb.api.enqueue(function, input).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], WITHIN)
        .await;
    assert_eq!(done["status"], status, "{done:#}");
    done
}

/// Checks that `reference` is an offloaded file of `size` bytes of the bulk content with
/// `content_type`, stored in `bucket` with the same bytes; returns its id.
async fn check_stored(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    reference: &Value,
    size: u64,
    content_type: &str,
) -> String {
    let sha256 = content_sha256(size);
    assert_eq!(reference["size"], json!(size), "{reference:#}");
    assert_eq!(reference["sha256"], json!(sha256), "{reference:#}");
    assert_eq!(
        reference["content_type"],
        json!(content_type),
        "{reference:#}"
    );
    assert_eq!(reference["bucket"], json!(bucket), "{reference:#}");
    let key = reference["key"].as_str().expect("a key");
    assert_eq!(
        s3::object_sha256(client, bucket, key).await,
        (size, sha256),
        "the object in the bucket"
    );
    assert_eq!(s3::multipart_uploads(client, bucket).await, 0);
    reference["id"].as_str().expect("an id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_threshold_is_stored_and_the_result_holds_its_reference() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(&url, &bucket, bulk(&upstream, "{ timeout: 30s }", "")).await;

    let size = 5_000_000;
    let done = run(
        &sb,
        "bulk.fetch",
        json!({ "size": size, "type": "application/pdf" }),
        "succeeded",
    )
    .await;
    let data = &done["result"]["data"];
    let object = data.as_object().expect("an object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["file"], "{data:#}");
    check_stored(&client, &bucket, &data["file"], size, "application/pdf").await;
    assert!(
        data["file"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&url)),
        "{data:#}"
    );
    let journal = sb.api.attempts(done["id"].as_str().expect("id")).await;
    assert_eq!(journal[0]["response_bytes"], json!(size), "{journal:#?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_content_length_is_stored_once_it_passes_the_threshold() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(&url, &bucket, bulk(&upstream, "{ timeout: 30s }", "")).await;

    // Over the part size (8 MiB), so that it goes up as a multipart upload.
    let size = 20_000_001;
    let done = run(
        &sb,
        "bulk.fetch",
        json!({ "size": size, "chunked": true }),
        "succeeded",
    )
    .await;
    let seen = upstream.requests();
    assert!(
        seen[0]
            .path
            .starts_with(&format!("/bytes/{size}?chunked=True&")),
        "{}",
        seen[0].path
    );
    let reference = &done["result"]["data"]["file"];
    check_stored(
        &client,
        &bucket,
        reference,
        size,
        "application/octet-stream",
    )
    .await;
    assert_eq!(s3::keys(&client, &bucket).await.len(), 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_under_the_threshold_stays_inline_and_stores_nothing() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(
        &url,
        &bucket,
        bulk(&upstream, "{ timeout: 30s }", "offload_threshold: 64KB"),
    )
    .await;

    let done = run(
        &sb,
        "bulk.fetch",
        json!({ "size": 60_000, "type": "text/plain" }),
        "failed",
    )
    .await;
    // Read inline: the output mapping and the schema applied (and the content is no object).
    let error = &done["result"]["error"];
    assert_eq!(error["kind"], "invalid_response", "{done:#}");
    assert_eq!(
        error["message"],
        "the answer of `bulk.fetch` does not match its output_schema at `/length`: value is not of type \"integer\"",
        "{done:#}"
    );
    assert_eq!(s3::keys(&client, &bucket).await, Vec::<String>::new());

    // Just over it: stored, neither mapped nor checked.
    let done = run(&sb, "bulk.fetch", json!({ "size": 70_000 }), "succeeded").await;
    let reference = &done["result"]["data"]["file"];
    check_stored(
        &client,
        &bucket,
        reference,
        70_000,
        "application/octet-stream",
    )
    .await;
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_file_of_50_mb_is_sent_whole_as_a_request_body() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(&url, &bucket, bulk(&upstream, "{ timeout: 60s }", "")).await;

    let size = 50_000_000;
    let done = run(
        &sb,
        "bulk.fetch",
        json!({ "size": size, "type": "application/zip" }),
        "succeeded",
    )
    .await;
    let reference = &done["result"]["data"]["file"];
    let id = check_stored(&client, &bucket, reference, size, "application/zip").await;

    let done = run(&sb, "bulk.send", json!({ "file": id }), "succeeded").await;
    let sha256 = content_sha256(size);
    assert_eq!(
        done["result"]["data"],
        json!({ "size": size, "sha256": sha256 }),
        "{done:#}"
    );
    assert_eq!(
        upstream.sunk(),
        vec![Sunk {
            size,
            sha256,
            content_type: Some("application/zip".to_string()),
            content_length: Some(size),
        }]
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_file_fails_the_request_without_sending_it() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(&url, &bucket, bulk(&upstream, "{ timeout: 30s }", "")).await;

    let done = run(&sb, "bulk.send", json!({ "file": "f-nothing" }), "failed").await;
    let error = &done["result"]["error"];
    assert_eq!(error["kind"], "invalid_request", "{done:#}");
    assert_eq!(
        error["message"],
        "cannot build the request of `bulk.send`: no file `f-nothing`"
    );
    assert_eq!(upstream.count(), 0);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_file_without_a_files_bucket_fails_as_configuration() {
    let upstream = Upstream::bulk().await;
    let sb = TestServer::start(&[("bulk.yaml", bulk(&upstream, "{ timeout: 5s }", ""))]).await;

    let done = run(&sb, "bulk.send", json!({ "file": "f1" }), "failed").await;
    let error = &done["result"]["error"];
    assert_eq!(error["kind"], "config", "{done:#}");
    assert_eq!(
        error["message"],
        "function `bulk.send` sends a stored file (`body_file`), but no connection has a `files:` block"
    );
    assert_eq!(upstream.count(), 0);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_sends_the_stored_file_again_from_its_start() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tokens = Upstream::start(move |_| {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Reply::ok(json!({ "access_token": format!("tok-{n}"), "token_type": "bearer", "expires_in": 3600 }))
    })
    .await;
    let auth = format!(
        r#"auth:
  type: oauth2_client_credentials
  token_url: {}/oauth/token
  client_id: bulk-client
  client_secret: "${{file:client.secret}}""#,
        tokens.url()
    );
    // `/sink` accepts only the second token: the first try is refused after its whole body.
    let yaml = bulk(&upstream, "{ timeout: 60s }", &auth)
        .replace("path: /sink", "path: /sink\n    query: { accept: tok-2 }");
    let mut files = s3::s3_connection_files(&url, &bucket);
    files.push(("bulk.yaml", yaml));
    files.push(("client.secret", "bulk-secret".to_string()));
    let sb = TestServer::start(&files).await;

    let size = 12_000_000;
    let done = run(&sb, "bulk.fetch", json!({ "size": size }), "succeeded").await;
    let id = check_stored(
        &client,
        &bucket,
        &done["result"]["data"]["file"],
        size,
        "application/octet-stream",
    )
    .await;
    let done = run(&sb, "bulk.send", json!({ "file": id }), "succeeded").await;
    let sha256 = content_sha256(size);
    assert_eq!(done["result"]["data"]["sha256"], json!(sha256), "{done:#}");
    let sinks: Vec<String> = upstream
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/sink"))
        .filter_map(|s| {
            s.headers
                .get("authorization")?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(sinks, ["Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(upstream.sunk().len(), 1);
    assert_eq!(upstream.sunk()[0].size, size);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_the_store_leaves_no_object_and_no_multipart_upload() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let sb = server(&url, &bucket, bulk(&upstream, "{ timeout: 3s }", "")).await;

    // 20 MB arrive at once (two parts of 8 MiB go up), then the upstream stalls.
    let id = sb
        .api
        .enqueue(
            "bulk.fetch",
            json!({ "size": 40_000_000, "stall_after": 20_000_000 }),
        )
        .await;
    let started = Instant::now() + Duration::from_secs(3);
    while s3::multipart_uploads(&client, &bucket).await == 0 {
        assert!(
            Instant::now() < started,
            "no multipart upload began: the test would not test its abort"
        );
        tokio::time::sleep(POLL).await;
    }
    let done = sb.api.wait_for_status(&id, &["failed"], WITHIN).await;
    let error = &done["result"]["error"];
    assert_eq!(error["kind"], "timeout", "{done:#}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "`bulk` gave no complete answer before the attempt's deadline (status 200 received, "
        ),
        "{message}"
    );

    let clean = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = s3::keys(&client, &bucket).await;
        let uploads = s3::multipart_uploads(&client, &bucket).await;
        if keys.is_empty() && uploads == 0 {
            break;
        }
        assert!(
            Instant::now() < clean,
            "left behind: objects {keys:?}, {uploads} multipart uploads"
        );
        tokio::time::sleep(POLL).await;
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_soap_answer_is_stored_unread() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let upstream = Upstream::bulk().await;
    let soap = pointed(
        r#"connection: ledger
type: soap
endpoint: UPSTREAM/bytes/3000000?type=text/xml
allow_private_network: true
retry: { max_attempts: 1 }
functions:
  export:
    action: urn:export
    body: "<Export/>"
"#,
        &upstream.url(),
    );
    let mut files = s3::s3_connection_files(&url, &bucket);
    files.push(("ledger.yaml", soap));
    let sb = TestServer::start(&files).await;

    let done = run(&sb, "ledger.export", json!({}), "succeeded").await;
    let reference = &done["result"]["data"]["file"];
    check_stored(&client, &bucket, reference, 3_000_000, "text/xml").await;
    assert_eq!(upstream.requests()[0].method, "POST");
    sb.stop().await;
}
