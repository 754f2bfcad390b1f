//! The S3 test server itself (moto, started by `scripts/test`, its URL in
//! `SWITCHBOARD_S3_URL`) and the helpers of `support::s3`, including the `s3` connection they
//! give the engine: if these fail, the S3 tests of the engine cannot be trusted either.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use crate::support::{self, s3};

#[tokio::test]
async fn stored_object_reads_back_by_client_and_presigned_link() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let body = support::payload(3 * 1024 * 1024, 0x2545_f491);
    let key = "smoke/three-megabytes.bin";
    client
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put the object");

    let expected = support::sha256(&body);
    assert_eq!(
        s3::object_sha256(&client, &bucket, key).await,
        (body.len() as u64, expected)
    );
    assert_eq!(s3::keys(&client, &bucket).await, vec![key.to_string()]);
    assert_eq!(s3::multipart_uploads(&client, &bucket).await, 0);

    let link = client
        .get_object()
        .bucket(&bucket)
        .key(key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("a TTL"))
        .await
        .expect("sign a link");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let answer = http
        .get(link.uri())
        .send()
        .await
        .expect("the link is served");
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let downloaded = answer.bytes().await.expect("read the download");
    assert!(
        downloaded.as_ref() == body.as_slice(),
        "the download differs"
    );
}

#[tokio::test]
async fn started_multipart_upload_is_counted_until_aborted() {
    let Some(url) = s3::s3_url() else { return };
    let client = s3::client(&url).await;
    let bucket = s3::fresh_bucket(&client).await;
    let started = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("half")
        .send()
        .await
        .expect("start a multipart upload");
    assert_eq!(s3::multipart_uploads(&client, &bucket).await, 1);
    assert!(s3::keys(&client, &bucket).await.is_empty());
    client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("half")
        .upload_id(started.upload_id().expect("an upload id"))
        .send()
        .await
        .expect("abort the upload");
    assert_eq!(s3::multipart_uploads(&client, &bucket).await, 0);
}

#[test]
fn s3_connection_files_load_with_their_secrets() {
    let files = s3::s3_connection_files("http://127.0.0.1:9", "t-bucket");
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dir = support::folder(&files);
    let metadata = switchboard::metadata::Loader::new()
        .load(dir.path())
        .expect("readable")
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    assert!(metadata.connections.contains_key("files"));
    let problems = metadata.check_secrets(&|_| None);
    assert!(problems.is_empty(), "{problems:#?}");
}
