//! Callouts on `s3` connections end to end: the HTTP API, the queue, the dispatcher and the S3
//! wrapper against a real S3-compatible server (moto, started by `scripts/test`; skipped
//! without `SWITCHBOARD_S3_URL`).
//!
//! Every test has two fresh buckets: the files bucket (the connection `files`, from
//! `support::s3`) and the bucket of the connection `docs` whose functions the tests call.
//! Objects are set up and checked with the server's own client, never through the engine.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::engine::TestServer;
use crate::support::{payload, s3, sha256};

/// How long any single callout may take to reach the status a test waits for.
const DEADLINE: Duration = Duration::from_secs(20);

/// The connection `docs` on `bucket` of the server at `url`, with the keys of the files
/// connection. Retries are quick, so that a retried failure would show within a test.
fn docs_metadata(url: &str, bucket: &str) -> String {
    format!(
        r#"connection: docs
type: s3
endpoint: {url}
region: {region}
bucket: {bucket}
path_style: true
allow_private_network: true
checksums: when_required
auth: {{ type: aws, access_key_id: "${{file:s3.key}}", secret_access_key: "${{file:s3.secret}}" }}
retry: {{ max_attempts: 3, initial_delay: 50ms, max_delay: 100ms }}
functions:
  fetch:
    operation: get
    key: "records/{{{{ input.name }}}}"
    input_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
  link:
    operation: presign
    key: "records/{{{{ input.name }}}}"
    expires: 5m
    input_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
    output: {{ link: /url, until: /expires_at }}
  remove:
    operation: delete
    key: "records/{{{{ input.name }}}}"
    input_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
  under:
    operation: list
    prefix: "records/{{{{ input.record }}}}/"
    input_schema: {{ type: object, required: [record], properties: {{ record: {{ type: string }} }} }}
  store:
    operation: put
    key: "stored/{{{{ input.name }}}}"
    file: "{{{{ input.file_id }}}}"
    input_schema:
      type: object
      required: [name, file_id]
      properties:
        name: {{ type: string }}
        file_id: {{ type: string }}
"#,
        region = s3::REGION,
    )
}

/// A server whose metadata has the files bucket and `docs`, and the client and buckets.
struct Setup {
    sb: TestServer,
    client: Client,
    files_bucket: String,
    docs_bucket: String,
}

/// `None` when there is no S3 server to test against.
async fn setup() -> Option<Setup> {
    let url = s3::s3_url()?;
    let client = s3::client(&url).await;
    let files_bucket = s3::fresh_bucket(&client).await;
    let docs_bucket = s3::fresh_bucket(&client).await;
    let mut files = s3::s3_connection_files(&url, &files_bucket);
    files.push(("docs.yaml", docs_metadata(&url, &docs_bucket)));
    let sb = TestServer::start(&files).await;
    Some(Setup {
        sb,
        client,
        files_bucket,
        docs_bucket,
    })
}

impl Setup {
    /// Stores `body` at `key` of the `docs` bucket.
    async fn put(&self, key: &str, content_type: &str, body: impl Into<ByteStream>) {
        self.client
            .put_object()
            .bucket(&self.docs_bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|err| panic!("put {key}: {err:?}"));
    }

    /// Enqueues `function` with `input` and waits for it to reach `status`.
    async fn run(&self, function: &str, input: Value, status: &str) -> Value {
        let id = self.sb.api.enqueue(function, input).await;
        self.sb.api.wait_for_status(&id, &[status], DEADLINE).await
    }
}

#[tokio::test]
async fn a_presigned_link_downloads_the_object_without_credentials() {
    let Some(setup) = setup().await else { return };
    setup
        .put(
            "records/r1/note.txt",
            "text/plain",
            b"signed and sealed".to_vec(),
        )
        .await;

    let done = setup
        .run("docs.link", json!({ "name": "r1/note.txt" }), "succeeded")
        .await;
    let data = &done["result"]["data"];
    assert_eq!(
        data.as_object().map(|o| o.len()),
        Some(2),
        "only the mapped fields: {done}"
    );
    assert_eq!(done["result"]["meta"]["http_status"], Value::Null, "{done}");
    let until = data["until"].as_str().expect("an expiry");
    let until = time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
        .expect("the expiry is RFC 3339");
    let ahead = until - time::OffsetDateTime::now_utc();
    assert!(
        ahead > time::Duration::minutes(4) && ahead <= time::Duration::minutes(5),
        "{ahead}"
    );

    let link = data["link"].as_str().expect("a link");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let answer = http.get(link).send().await.expect("the link answers");
    assert_eq!(answer.status(), StatusCode::OK);
    let bytes = answer.bytes().await.expect("the body");
    assert_eq!(&bytes[..], b"signed and sealed");
    setup.sb.stop().await;
}

#[tokio::test]
async fn a_list_has_the_objects_under_the_prefix_only() {
    let Some(setup) = setup().await else { return };
    for (key, body) in [
        ("records/r1/a.txt", "a"),
        ("records/r1/b.txt", "bb"),
        ("records/r10/c.txt", "ccc"),
        ("other/r1/d.txt", "dddd"),
    ] {
        setup.put(key, "text/plain", body.as_bytes().to_vec()).await;
    }

    let done = setup
        .run("docs.under", json!({ "record": "r1" }), "succeeded")
        .await;
    let data = &done["result"]["data"];
    assert_eq!(data["truncated"], false, "{done}");
    let items = data["items"].as_array().expect("items");
    let listed: Vec<(&str, u64)> = items
        .iter()
        .map(|item| {
            let modified = item["last_modified"].as_str().expect("a time");
            time::OffsetDateTime::parse(modified, &time::format_description::well_known::Rfc3339)
                .expect("last_modified is RFC 3339");
            (
                item["key"].as_str().expect("a key"),
                item["size"].as_u64().expect("a size"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![("records/r1/a.txt", 1), ("records/r1/b.txt", 2)]
    );
    setup.sb.stop().await;
}

#[tokio::test]
async fn a_deleted_object_is_not_found_and_the_get_is_not_retried() {
    let Some(setup) = setup().await else { return };
    setup
        .put("records/gone.txt", "text/plain", b"bye".to_vec())
        .await;

    let done = setup
        .run("docs.remove", json!({ "name": "gone.txt" }), "succeeded")
        .await;
    assert_eq!(
        done["result"]["data"],
        json!({ "key": "records/gone.txt", "deleted": true })
    );
    assert!(s3::keys(&setup.client, &setup.docs_bucket).await.is_empty());

    let done = setup
        .run("docs.fetch", json!({ "name": "gone.txt" }), "failed")
        .await;
    assert_eq!(done["attempts"], 1, "not found is not retried: {done}");
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "rejected",
            "message": format!(
                "reading `records/gone.txt` in bucket `{}` of `docs` failed: The specified key does not exist.",
                setup.docs_bucket
            ),
            "retryable": false,
        })
    );
    setup.sb.stop().await;
}

#[tokio::test]
async fn a_small_json_object_comes_back_parsed() {
    let Some(setup) = setup().await else { return };
    let text = r#"{"total": 12.5, "lines": [1, 2], "note": "ünïcode"}"#;
    setup
        .put(
            "records/order.json",
            "application/json",
            text.as_bytes().to_vec(),
        )
        .await;

    let done = setup
        .run("docs.fetch", json!({ "name": "order.json" }), "succeeded")
        .await;
    assert_eq!(
        done["result"]["data"],
        json!({
            "key": "records/order.json",
            "size": text.len(),
            "content_type": "application/json",
            "body": { "total": 12.5, "lines": [1, 2], "note": "ünïcode" },
        })
    );
    setup.sb.stop().await;
}

#[tokio::test]
async fn a_large_object_is_kept_in_the_files_bucket_and_referenced() {
    let Some(setup) = setup().await else { return };
    let body = payload(3 * 1024 * 1024, 0x2545_f491);
    setup
        .put(
            "records/scans/big.bin",
            "application/octet-stream",
            body.clone(),
        )
        .await;

    let done = setup
        .run(
            "docs.fetch",
            json!({ "name": "scans/big.bin" }),
            "succeeded",
        )
        .await;
    let file = &done["result"]["data"]["file"];
    assert_eq!(
        done["result"]["data"].as_object().map(|o| o.len()),
        Some(1),
        "{done}"
    );
    assert_eq!(file["bucket"], setup.files_bucket.as_str(), "{done}");
    assert_eq!(file["size"], body.len(), "{done}");
    assert_eq!(file["sha256"], sha256(&body), "{done}");
    assert_eq!(file["content_type"], "application/octet-stream");
    assert_eq!(file["name"], "big.bin");
    assert!(
        file["id"].as_str().is_some_and(|id| id.starts_with('f')),
        "{file}"
    );
    assert!(file["url"].as_str().is_some(), "{file}");
    let key = file["key"].as_str().expect("a key");
    assert_eq!(
        s3::object_sha256(&setup.client, &setup.files_bucket, key).await,
        (body.len() as u64, sha256(&body))
    );
    setup.sb.stop().await;
}

#[tokio::test]
async fn a_stored_file_is_put_into_the_bucket_with_its_checksum_checked() {
    let Some(setup) = setup().await else { return };
    let body = payload(200 * 1024, 0x1357_9bdf);
    let (status, reference) = setup
        .sb
        .api
        .post_raw(
            "/v1/files?name=contract.pdf",
            body.clone(),
            &[("content-type", "application/pdf")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reference}");
    let file_id = reference["id"].as_str().expect("a file id");

    let done = setup
        .run(
            "docs.store",
            json!({ "name": "contract.pdf", "file_id": file_id }),
            "succeeded",
        )
        .await;
    assert_eq!(
        done["result"]["data"],
        json!({
            "bucket": setup.docs_bucket,
            "key": "stored/contract.pdf",
            "size": body.len(),
            "sha256": sha256(&body),
        })
    );
    assert_eq!(
        s3::object_sha256(&setup.client, &setup.docs_bucket, "stored/contract.pdf").await,
        (body.len() as u64, sha256(&body))
    );
    let head = setup
        .client
        .head_object()
        .bucket(&setup.docs_bucket)
        .key("stored/contract.pdf")
        .send()
        .await
        .expect("head the object");
    assert_eq!(head.content_type(), Some("application/pdf"));

    let done = setup
        .run(
            "docs.store",
            json!({ "name": "other.pdf", "file_id": "fnope" }),
            "failed",
        )
        .await;
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "invalid_request",
            "message": "cannot build the request of `docs.store`: no file `fnope`",
            "retryable": false,
        })
    );
    setup.sb.stop().await;
}
