//! A real S3-compatible server for the tests that need one: moto's, started by `scripts/test`,
//! which passes its URL in `SWITCHBOARD_S3_URL`, and a client of it to set up and check what
//! the engine stored.
//!
//! moto keeps objects in memory and takes any credentials; every test makes its own bucket
//! ([`fresh_bucket`]), so tests never see each other's objects. The engine reaches the server
//! through an `s3` connection ([`s3_connection_files`]) whose keys are `${file:…}` secrets
//! beside its YAML, as the other integration tests provide theirs.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use sha2::{Digest, Sha256};

/// The access key id the engine and [`client`] use (moto takes any).
pub const ACCESS_KEY_ID: &str = "test";
/// The secret access key the engine and [`client`] use.
pub const SECRET_ACCESS_KEY: &str = "test";
/// The region of every test bucket.
pub const REGION: &str = "us-east-1";

/// The S3 server's base URL, or `None` (with a note printed) when `SWITCHBOARD_S3_URL` is not
/// set, so `cargo test` alone skips the S3 tests: `let Some(url) = s3_url() else { return };`.
///
/// # Panics
/// When it is not set but `CI` is: CI runs `scripts/test`, so a missing server is a broken
/// script, not a test to skip.
pub fn s3_url() -> Option<String> {
    const HOW: &str = "run scripts/test, which installs and starts the S3 test server (moto)";
    match std::env::var("SWITCHBOARD_S3_URL") {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_string()),
        _ if std::env::var_os("CI").is_some() => panic!("SWITCHBOARD_S3_URL is not set: {HOW}"),
        _ => {
            eprintln!("skipped: SWITCHBOARD_S3_URL is not set; {HOW}");
            None
        }
    }
}

/// A client of the S3 server at `url`: the test keys, [`REGION`], path-style addressing, and
/// checksums only where an operation requires them (as the engine's `checksums:
/// when_required`).
pub async fn client(url: &str) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "switchboard-tests",
        ))
        .region(Region::new(REGION))
        .endpoint_url(url)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// Creates a bucket no other test uses and returns its name (`t-` and 32 hex digits).
pub async fn fresh_bucket(client: &Client) -> String {
    let bucket = format!("t-{}", uuid::Uuid::now_v7().simple());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|err| panic!("create bucket {bucket}: {err:?}"));
    bucket
}

/// The size and lowercase hex SHA-256 of the object `key`, read as a stream (large objects
/// are never held whole).
pub async fn object_sha256(client: &Client, bucket: &str, key: &str) -> (u64, String) {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|err| panic!("get {bucket}/{key}: {err:?}"));
    let mut body = object.body;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|err| panic!("read {bucket}/{key}: {err:?}"));
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (size, hex::encode(hasher.finalize()))
}

/// Every object key in `bucket`, in S3's order (every page of ListObjectsV2).
pub async fn keys(client: &Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|err| panic!("list {bucket}: {err:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    keys
}

/// How many multipart uploads are in progress (started, neither completed nor aborted) in
/// `bucket`.
pub async fn multipart_uploads(client: &Client, bucket: &str) -> usize {
    let mut count = 0;
    let mut markers: (Option<String>, Option<String>) = (None, None);
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(markers.0.take())
            .set_upload_id_marker(markers.1.take())
            .send()
            .await
            .unwrap_or_else(|err| panic!("list multipart uploads of {bucket}: {err:?}"));
        count += page.uploads().len();
        if page.is_truncated() != Some(true) {
            return count;
        }
        markers = (
            page.next_key_marker().map(str::to_string),
            page.next_upload_id_marker().map(str::to_string),
        );
        assert!(
            markers.0.is_some() || markers.1.is_some(),
            "a truncated list of multipart uploads of {bucket} without a next marker"
        );
    }
}

/// The YAML of the `s3` connection `files` on `bucket` of the server at `url`: path-style,
/// loopback allowed, checksums only where required, the files bucket (`files: {}`), keys read
/// from the files `s3.key` and `s3.secret` beside it (see [`s3_connection_files`]).
pub fn s3_metadata(url: &str, bucket: &str) -> String {
    format!(
        r#"connection: files
type: s3
endpoint: {url}
region: {REGION}
bucket: {bucket}
path_style: true
allow_private_network: true
checksums: when_required
auth: {{ type: aws, access_key_id: "${{file:s3.key}}", secret_access_key: "${{file:s3.secret}}" }}
files: {{}}
"#
    )
}

/// The metadata files of [`s3_metadata`] with its secret files, ready for
/// [`TestServer::start`](super::engine::TestServer::start) (add the test's other files).
pub fn s3_connection_files(url: &str, bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("files.yaml", s3_metadata(url, bucket)),
        ("s3.key", ACCESS_KEY_ID.to_string()),
        ("s3.secret", SECRET_ACCESS_KEY.to_string()),
    ]
}
