//! `POST /v1/files` and `GET /v1/files/{id}` against a real S3 server (moto): uploads of every
//! size stored byte for byte and read back by their links, names kept out of keys, refusals
//! that leave nothing behind, the scan hook, and a storage server that dies mid-upload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard::offload::{ScanHook, Scanner};
use switchboard::server::ServerConfig;

use crate::support::engine::{KEY, POLL, TestServer};
use crate::support::{payload, s3, sha256};

const MIB: usize = 1024 * 1024;

/// The part size of a files bucket by default.
const PART_SIZE: usize = 8 * MIB;

/// A server whose files bucket is a fresh bucket of the test S3 server.
struct Bench {
    server: TestServer,
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// Follows no redirect, so a `307` can be looked at.
    http: reqwest::Client,
}

/// An answer of the API.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Bench {
    /// `None` (the test is skipped) when there is no S3 test server. `files` is the YAML of
    /// the `files:` block, like `{ max_size: 1MB }`.
    async fn start(files: &str, configure: impl FnOnce(&mut ServerConfig)) -> Option<Bench> {
        let url = s3::s3_url()?;
        Some(Bench::on(&url, files, configure).await)
    }

    async fn on(url: &str, files: &str, configure: impl FnOnce(&mut ServerConfig)) -> Bench {
        let client = s3::client(url).await;
        let bucket = s3::fresh_bucket(&client).await;
        let mut metadata = s3::s3_connection_files(url, &bucket);
        metadata[0].1 = metadata[0]
            .1
            .replace("files: {}", &format!("files: {files}"));
        let server = TestServer::start_with(&metadata, configure).await;
        Bench {
            server,
            s3: client,
            bucket,
            http: http_client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.api.base)
    }

    /// POSTs `body` to `path` with `headers`.
    async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.post(self.url(path)).bearer_auth(KEY).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.expect("POST reaches the server")).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(self.url(path)).bearer_auth(KEY);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.expect("GET reaches the server")).await
    }

    /// Uploads `data` as a raw body of type `application/octet-stream`, expects `201`, checks
    /// the answer against the data and the stored object, and returns the reference.
    async fn upload_ok(&self, path: &str, data: &[u8]) -> Value {
        let answer = self
            .post(
                path,
                data.to_vec(),
                &[("content-type", "application/octet-stream")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        self.check_stored(&answer, data).await;
        answer.body
    }

    /// Checks a `201` answer: its `Location`, `size` and `sha256`, the key, and the stored
    /// object and its link, which give back `data`.
    async fn check_stored(&self, answer: &Answer, data: &[u8]) {
        let reference = &answer.body;
        let id = reference["id"].as_str().expect("an id");
        assert_eq!(
            answer.headers["location"].to_str().expect("ASCII"),
            format!("/v1/files/{id}")
        );
        assert_eq!(answer.headers["cache-control"], "no-store");
        let expected = (data.len() as u64, sha256(data));
        assert_eq!(reference["size"], json!(expected.0), "{reference}");
        assert_eq!(reference["sha256"], json!(expected.1), "{reference}");
        assert_eq!(reference["bucket"], json!(self.bucket), "{reference}");
        let key = reference["key"].as_str().expect("a key");
        assert!(is_generated_key(key), "{key}");
        assert_eq!(
            s3::object_sha256(&self.s3, &self.bucket, key).await,
            expected
        );
        let url = reference["url"].as_str().expect("a link");
        assert_eq!(download(&http_client(), url).await, expected);
    }

    /// Nothing is stored: no object, no multipart upload in progress.
    async fn assert_empty(&self) {
        assert_eq!(s3::keys(&self.s3, &self.bucket).await, Vec::<String>::new());
        assert_eq!(s3::multipart_uploads(&self.s3, &self.bucket).await, 0);
    }

    /// Every file reference in the store, expired or not.
    async fn references(&self) -> usize {
        self.server
            .server
            .engine
            .store()
            .expired_files(i64::MAX, 1000)
            .await
            .expect("the store answers")
            .len()
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read the answer");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// The size and SHA-256 of what `url` answers, read as a stream.
async fn download(http: &reqwest::Client, url: &str) -> (u64, String) {
    let response = http.get(url).send().await.expect("the link is served");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let mut body = response.bytes_stream();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("read the download");
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (size, hex::encode(hasher.finalize()))
}

/// Whether `key` is `files/yyyy/mm/dd/f` and 32 lowercase hex digits.
fn is_generated_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 5
        && parts[0] == "files"
        && digits(parts[1], 4)
        && digits(parts[2], 2)
        && digits(parts[3], 2)
        && parts[4].len() == 33
        && parts[4].starts_with('f')
        && parts[4][1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `multipart/form-data` body: a text part, then the part `file` holding `data` (with
/// `filename` and `content_type`), then another text part.
fn form(data: &[u8], filename: &str, content_type: &str) -> (Vec<u8>, String) {
    let boundary = "switchboard-test-boundary-7MA4YWxkTrZu0gW";
    let (head, tail) = form_around(boundary, filename, content_type);
    let mut body = head;
    body.extend_from_slice(data);
    body.extend_from_slice(&tail);
    (body, format!("multipart/form-data; boundary={boundary}"))
}

/// What comes before and after the file's bytes in [`form`].
fn form_around(boundary: &str, filename: &str, content_type: &str) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nfrom the CRM\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    );
    let tail = format!(
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"after\"\r\n\r\nignored\r\n--{boundary}--\r\n"
    );
    (head.into_bytes(), tail.into_bytes())
}

#[tokio::test]
async fn uploads_of_every_size_are_stored_byte_for_byte_and_read_back_by_their_links() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    for (n, size) in [0, 1000, MIB, MIB + 1].into_iter().enumerate() {
        let data = payload(size, 7 + n as u32);
        let reference = bench
            .upload_ok(&format!("/v1/files?name=size-{size}.bin"), &data)
            .await;
        assert_eq!(
            reference["name"],
            json!(format!("size-{size}.bin")),
            "{reference}"
        );
        assert_eq!(reference["content_type"], "application/octet-stream");
    }
    assert_eq!(s3::keys(&bench.s3, &bench.bucket).await.len(), 4);
    assert_eq!(bench.references().await, 4);
    assert_eq!(
        bench
            .server
            .api
            .metric("switchboard_files_stored_total")
            .await,
        Some(4.0)
    );
}

#[tokio::test]
async fn a_file_over_the_part_size_goes_up_in_parts_and_redirects_to_a_working_link() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    let data = payload(50_000_000, 11);
    let reference = bench.upload_ok("/v1/files?name=big.bin", &data).await;
    let key = reference["key"].as_str().expect("a key");
    let head = bench
        .s3
        .head_object()
        .bucket(&bench.bucket)
        .key(key)
        .send()
        .await
        .expect("head the object");
    let parts = data.len().div_ceil(PART_SIZE);
    let etag = head.e_tag().expect("an ETag");
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "{etag}"
    );
    assert_eq!(bench.s3_uploads_left().await, 0);

    let id = reference["id"].as_str().expect("an id");
    let redirect = bench.get(&format!("/v1/files/{id}"), &[]).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(redirect.headers["cache-control"], "no-store");
    let location = redirect.headers["location"].to_str().expect("ASCII");
    assert_eq!(
        download(&bench.http, location).await,
        (data.len() as u64, sha256(&data))
    );
}

impl Bench {
    async fn s3_uploads_left(&self) -> usize {
        s3::multipart_uploads(&self.s3, &self.bucket).await
    }
}

#[tokio::test]
async fn the_reference_is_read_back_as_json() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    let data = payload(5000, 3);
    let reference = bench.upload_ok("/v1/files?name=a.bin", &data).await;
    let id = reference["id"].as_str().expect("an id");
    for (path, headers) in [
        (format!("/v1/files/{id}?format=json"), vec![]),
        (
            format!("/v1/files/{id}"),
            vec![("accept", "application/json")],
        ),
    ] {
        let again = bench.get(&path, &headers).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        assert_eq!(again.headers["cache-control"], "no-store");
        for field in [
            "id",
            "bucket",
            "key",
            "size",
            "sha256",
            "content_type",
            "name",
            "created_at",
            "expires_at",
        ] {
            assert_eq!(again.body[field], reference[field], "{field}");
        }
        let url = again.body["url"].as_str().expect("a link");
        assert_eq!(
            download(&bench.http, url).await,
            (data.len() as u64, sha256(&data))
        );
    }
    let missing = bench.get("/v1/files/f0123?format=json", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body,
        json!({"error": {"code": "not_found", "details": null, "message": "no file `f0123`"}})
    );
    let redirect = bench.get("/v1/files/f0123", &[]).await;
    assert_eq!(redirect.status, StatusCode::NOT_FOUND);
    let bad = bench.get(&format!("/v1/files/{id}?format=xml"), &[]).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad.body["error"]["message"],
        "unknown format \"xml\"; expected `json` (the reference) or `redirect` (the default)"
    );
}

#[tokio::test]
async fn a_form_upload_stores_its_file_part_past_the_framework_body_limit() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    // Over axum's default limit of 2 MB for forms, and over --max-body-bytes.
    let data = payload(3 * MIB + 5, 21);
    let (body, content_type) = form(&data, "report.pdf", "application/pdf");
    let answer = bench
        .post("/v1/files", body, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    bench.check_stored(&answer, &data).await;
    assert_eq!(answer.body["name"], "report.pdf");
    assert_eq!(answer.body["content_type"], "application/pdf");
}

#[tokio::test]
async fn a_large_form_is_streamed_into_parts() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    let data = Bytes::from(payload(50_000_000, 23));
    let boundary = "b0undary-of-a-large-form";
    let (head, tail) = form_around(boundary, "big.zip", "application/zip");
    let chunks: Vec<Result<Bytes, std::io::Error>> = std::iter::once(Bytes::from(head))
        .chain(
            (0..data.len())
                .step_by(MIB)
                .map(|at| data.slice(at..(at + MIB).min(data.len()))),
        )
        .chain(std::iter::once(Bytes::from(tail)))
        .map(Ok)
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let answer = bench
        .post("/v1/files", body, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    bench.check_stored(&answer, &data).await;
    assert_eq!(answer.body["name"], "big.zip");
}

#[tokio::test]
async fn a_form_without_exactly_one_file_part_is_refused_and_leaves_nothing() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    let boundary = "xyz";
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let none = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}--\r\n"
    );
    let answer = bench
        .post("/v1/files", none, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "invalid_upload", "details": null, "message": "the form has no `file` part; send the file as a part named `file`, like `curl -F file=@invoice.pdf`"}})
    );
    let part = |name: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\nsome text\r\n"
        )
    };
    let two = format!("{}{}--{boundary}--\r\n", part("a.txt"), part("b.txt"));
    let answer = bench
        .post("/v1/files", two, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.body["error"]["message"],
        "the form has more than one `file` part; send one file per request"
    );
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
}

/// Request headers, (name, value).
type Headers<'a> = Vec<(&'a str, &'a str)>;

#[tokio::test]
async fn names_never_reach_the_key_and_are_kept_sanitised() {
    let Some(bench) = Bench::start("{}", |_| {}).await else {
        return;
    };
    let long = format!("{}.pdf", "x".repeat(1996));
    let cut = format!("{}.pdf", "x".repeat(251));
    let rtl = "invoice\u{202E}fdp.exe";
    let rtl_header =
        percent_encoding::utf8_percent_encode(rtl, percent_encoding::NON_ALPHANUMERIC).to_string();
    // (path and query, headers, the name kept)
    let cases: Vec<(String, Headers, Value)> = vec![
        (
            "/v1/files?name=../../etc/passwd".into(),
            vec![],
            json!("passwd"),
        ),
        (
            "/v1/files?name=..%2F..%2Fetc%2Fpasswd".into(),
            vec![],
            json!("passwd"),
        ),
        ("/v1/files?name=a%00b.pdf".into(), vec![], json!("ab.pdf")),
        (format!("/v1/files?name={long}"), vec![], json!(cut)),
        (
            "/v1/files".into(),
            vec![("x-file-name", rtl_header.as_str())],
            json!("invoicefdp.exe"),
        ),
        ("/v1/files?name=..".into(), vec![], Value::Null),
    ];
    let data = payload(2000, 5);
    for (path, mut headers, expected) in cases {
        headers.push(("content-type", "application/octet-stream"));
        let answer = bench.post(&path, data.clone(), &headers).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{path}: {}",
            answer.body
        );
        assert_eq!(answer.body["name"], expected, "{path}");
        let key = answer.body["key"].as_str().expect("a key");
        assert!(is_generated_key(key), "{path}: {key}");
    }
    // A form's file name too.
    let (body, content_type) = form(&data, "../../etc/passwd", "text/plain");
    let answer = bench
        .post("/v1/files", body, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["name"], "passwd");
    for key in s3::keys(&bench.s3, &bench.bucket).await {
        assert!(is_generated_key(&key), "{key}");
    }
}

#[tokio::test]
async fn a_content_type_off_the_list_is_refused_with_415_and_leaves_nothing() {
    let Some(bench) = Bench::start("{ content_types: [application/pdf, image/*] }", |_| {}).await
    else {
        return;
    };
    let answer = bench
        .post(
            "/v1/files?name=setup.exe",
            payload(10_000, 1),
            &[("content-type", "application/x-msdownload")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "content_type_not_allowed", "details": null, "message": "content type \"application/x-msdownload\" is not allowed; expected one of: application/pdf, image/*"}})
    );
    // In a form, the part's type counts.
    let (body, content_type) = form(&payload(10_000, 1), "setup.exe", "application/x-msdownload");
    let answer = bench
        .post("/v1/files", body, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Without a type, a file is application/octet-stream, which this bucket does not take.
    let answer = bench.post("/v1/files", payload(10, 1), &[]).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
    assert_eq!(
        bench
            .server
            .api
            .metric("switchboard_files_rejected_total{reason=\"content_type\"}")
            .await,
        Some(3.0)
    );
    // The bucket's types are taken.
    let ok = bench
        .post(
            "/v1/files",
            payload(10, 1),
            &[("content-type", "image/png")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
}

/// A body of `n` pseudo-random bytes in chunks of 64 KiB, without a `Content-Length`.
fn streamed(n: usize) -> reqwest::Body {
    let data = Bytes::from(payload(n, 9));
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..n)
        .step_by(64 * 1024)
        .map(|at| Ok(data.slice(at..(at + 64 * 1024).min(n))))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn a_file_over_max_size_is_refused_with_413_and_leaves_nothing() {
    let Some(bench) = Bench::start("{ max_size: 1MB }", |_| {}).await else {
        return;
    };
    let expected = json!({"error": {"code": "file_too_large", "details": null, "message": "the file is larger than the limit of 1048576 bytes"}});
    let octets = [("content-type", "application/octet-stream")];
    // Refused up front by its Content-Length.
    let answer = bench.post("/v1/files", payload(2 * MIB, 2), &octets).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body, expected);
    // Refused while it streams, without a Content-Length.
    let answer = bench.post("/v1/files", streamed(3 * MIB), &octets).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body, expected);
    // In a form.
    let (body, content_type) = form(&payload(MIB + 1, 2), "big.pdf", "application/pdf");
    let answer = bench
        .post("/v1/files", body, &[("content-type", &content_type)])
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body, expected);
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
    // Exactly the limit is taken.
    bench.upload_ok("/v1/files", &payload(MIB, 2)).await;
}

#[tokio::test]
async fn a_file_over_max_size_after_its_first_part_aborts_the_multipart_upload() {
    let Some(bench) = Bench::start("{ max_size: 10MB }", |_| {}).await else {
        return;
    };
    let answer = bench
        .post(
            "/v1/files",
            streamed(20 * MIB),
            &[("content-type", "application/octet-stream")],
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
}

fn scan_with(script: &str) -> impl FnOnce(&mut ServerConfig) {
    let hook = ScanHook::Command(vec!["sh".into(), "-c".into(), script.into()]);
    move |config| config.scan = Some(Scanner::new(hook, Duration::from_secs(30)))
}

#[tokio::test]
async fn a_file_the_scan_finds_infected_is_refused_with_422_and_leaves_nothing() {
    let script = "if grep -q EICAR-MARKER; then cat >/dev/null; \
                  echo 'stdin: Eicar-Test-Signature FOUND'; exit 1; fi; exit 0";
    let Some(bench) = Bench::start("{}", scan_with(script)).await else {
        return;
    };
    let octets = [("content-type", "application/octet-stream")];
    // Over the part size: the parts went up before the verdict, and are deleted.
    let mut data = payload(10 * MIB, 4);
    data[9 * MIB..9 * MIB + 12].copy_from_slice(b"EICAR-MARKER");
    let answer = bench.post("/v1/files", data, &octets).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "file_infected", "details": null, "message": "the file was rejected by the scan: the scanner found stdin: Eicar-Test-Signature FOUND"}})
    );
    let mut small = payload(1000, 4);
    small[10..22].copy_from_slice(b"EICAR-MARKER");
    let answer = bench.post("/v1/files", small, &octets).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
    assert_eq!(
        bench
            .server
            .api
            .metric("switchboard_files_rejected_total{reason=\"infected\"}")
            .await,
        Some(2.0)
    );
    // A clean file passes the same scanner.
    bench.upload_ok("/v1/files", &payload(10 * MIB, 4)).await;
}

#[tokio::test]
async fn a_failed_scan_refuses_the_file_with_422_and_its_reason() {
    let script = "cat >/dev/null; echo 'cannot open the signature database' >&2; exit 2";
    let Some(bench) = Bench::start("{}", scan_with(script)).await else {
        return;
    };
    let answer = bench
        .post(
            "/v1/files",
            payload(3 * MIB, 8),
            &[("content-type", "application/pdf")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "scan_failed", "details": null, "message": "the file was rejected by the scan: the scan failed: the scanner `sh` exited with status 2: cannot open the signature database"}})
    );
    bench.assert_empty().await;
    assert_eq!(bench.references().await, 0);
}

#[tokio::test]
async fn a_scan_that_takes_too_long_refuses_the_file() {
    let hook = ScanHook::Command(vec!["sh".into(), "-c".into(), "exec sleep 30".into()]);
    let Some(bench) = Bench::start("{}", move |config| {
        config.scan = Some(Scanner::new(hook, Duration::from_millis(500)));
    })
    .await
    else {
        return;
    };
    let started = Instant::now();
    let answer = bench
        .post(
            "/v1/files",
            payload(2 * MIB, 8),
            &[("content-type", "application/pdf")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.body["error"]["message"],
        "the file was rejected by the scan: the scan took longer than 500ms"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    bench.assert_empty().await;
}

#[tokio::test]
async fn without_a_files_bucket_the_routes_say_how_to_configure_one() {
    let server = TestServer::start(&[]).await;
    let expected = json!({"error": {"code": "no_files_bucket", "details": null, "message": "no files bucket is configured: give one `s3` connection a `files:` block in the metadata (see docs/metadata.md)"}});
    let (status, body) = server.api.post_raw("/v1/files", "hello", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, expected);
    let (status, body) = server.api.get("/v1/files/f0123").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, expected);
    // The caller key is checked first.
    let anonymous = crate::support::engine::Api::new(server.api.base.clone(), None);
    let (status, _) = anonymous.post_raw("/v1/files", "hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A moto server of this test's own, which it can stop and start again on the same port.
struct OwnMoto {
    program: String,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnMoto {
    /// `None` (skipped) when `SWITCHBOARD_MOTO_SERVER` is not set.
    fn program() -> Option<String> {
        const HOW: &str = "run scripts/test, which installs moto and sets it";
        match std::env::var("SWITCHBOARD_MOTO_SERVER") {
            Ok(path) if !path.is_empty() => Some(path),
            _ if std::env::var_os("CI").is_some() => {
                panic!("SWITCHBOARD_MOTO_SERVER is not set: {HOW}")
            }
            _ => {
                eprintln!("skipped: SWITCHBOARD_MOTO_SERVER is not set; {HOW}");
                None
            }
        }
    }

    async fn start(program: String) -> OwnMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut moto = OwnMoto {
            program,
            port,
            child: None,
        };
        moto.run().await;
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it answers.
    async fn run(&mut self) {
        let child = std::process::Command::new(&self.program)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        self.child = Some(child);
        let http = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answered = http
                .get(format!("{}/", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answered.is_ok_and(|a| a.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "moto did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn the_s3_server_stopping_mid_upload_is_a_502_and_the_engine_recovers() {
    let Some(program) = OwnMoto::program() else {
        return;
    };
    let moto = Arc::new(Mutex::new(OwnMoto::start(program).await));
    let url = moto.lock().expect("moto").url();
    let bench = Bench::on(&url, "{}", |_| {}).await;

    // 50 MB in chunks of 256 KiB; after 10 MB the server is killed, and the rest follows.
    let total = 50_000_000usize;
    let chunk = 256 * 1024;
    let data = Bytes::from(payload(total, 31));
    let killer = moto.clone();
    let body = futures_util::stream::unfold(0usize, move |at| {
        let data = data.clone();
        let killer = killer.clone();
        async move {
            if at >= total {
                return None;
            }
            if at >= 10_000_000 && at < 10_000_000 + chunk {
                killer.lock().expect("moto").kill();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let end = (at + chunk).min(total);
            Some((Ok::<Bytes, std::io::Error>(data.slice(at..end)), end))
        }
    });
    let answer = bench
        .post(
            "/v1/files",
            reqwest::Body::wrap_stream(body),
            &[("content-type", "application/octet-stream")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"error": {"code": "storage_failed", "details": null, "message": "the file was not stored: the storage service failed or could not be reached; retry later"}})
    );
    assert_eq!(bench.references().await, 0);

    // The same server comes back (empty: moto keeps objects in memory); the engine, not
    // restarted, stores the next upload.
    let mut again = {
        let mut stopped = moto.lock().expect("moto");
        stopped.kill();
        OwnMoto {
            program: stopped.program.clone(),
            port: stopped.port,
            child: None,
        }
    };
    again.run().await;
    bench
        .s3
        .create_bucket()
        .bucket(&bench.bucket)
        .send()
        .await
        .expect("create the bucket again");
    let data = payload(PART_SIZE + 5, 32);
    let reference = bench.upload_ok("/v1/files?name=after.bin", &data).await;
    assert_eq!(
        s3::keys(&bench.s3, &bench.bucket).await,
        vec![reference["key"].as_str().expect("a key").to_string()]
    );
    assert_eq!(bench.references().await, 1);
}

/// Retention: a reference past its `expires_at` is no longer served, and the sweep deletes its
/// object, then the reference; one not yet expired is kept with its object.
#[tokio::test]
async fn expired_references_are_refused_and_swept_with_their_objects() {
    let Some(bench) = Bench::start("{ retention: 2h }", |_| {}).await else {
        return;
    };
    let files = bench
        .server
        .server
        .engine
        .version()
        .files
        .clone()
        .expect("the metadata has a files bucket");
    let old = bench
        .upload_ok("/v1/files?name=old.pdf", b"old bytes")
        .await;
    let old_id = old["id"].as_str().expect("an id");
    let old_record = files
        .find(old_id, switchboard::engine::now_millis())
        .await
        .expect("the store answers")
        .expect("a fresh reference is found");
    assert_eq!(
        old_record.expires_at - old_record.created_at,
        2 * 3600 * 1000,
        "retention: 2h"
    );
    // The next upload in a later millisecond, so that it expires strictly later.
    while switchboard::engine::now_millis() <= old_record.created_at {
        tokio::task::yield_now().await;
    }
    let kept = bench
        .upload_ok("/v1/files?name=kept.pdf", b"kept bytes")
        .await;

    // From its expiry on, the old reference is not found; the other one still is.
    let at = old_record.expires_at;
    let found = |id: String| {
        let files = files.clone();
        async move { files.find(&id, at).await.expect("the store answers") }
    };
    assert!(found(old_id.to_string()).await.is_none());
    let kept_id = kept["id"].as_str().expect("an id").to_string();
    assert!(found(kept_id.clone()).await.is_some());

    // The sweep at that moment deletes the old object and reference only.
    assert_eq!(files.sweep(at).await.expect("the sweep runs"), 1);
    assert_eq!(
        s3::keys(&bench.s3, &bench.bucket).await,
        vec![kept["key"].as_str().expect("a key").to_string()]
    );
    assert_eq!(bench.references().await, 1);
    let gone = bench.get(&format!("/v1/files/{old_id}"), &[]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    let still = bench
        .get(&format!("/v1/files/{kept_id}?format=json"), &[])
        .await;
    assert_eq!(still.status, StatusCode::OK, "{}", still.body);
    // A second sweep at the same moment finds nothing more.
    assert_eq!(files.sweep(at).await.expect("the sweep runs"), 0);
}

/// A store cancelled after its object was stored but before its reference was recorded (here:
/// while the scan is still deciding) deletes the object: nothing stays that no reference
/// points to.
#[tokio::test]
async fn a_store_cancelled_before_its_reference_is_recorded_leaves_no_object() {
    let slow_verdict = "cat >/dev/null; exec sleep 30";
    let Some(bench) = Bench::start("{}", scan_with(slow_verdict)).await else {
        return;
    };
    let files = bench
        .server
        .server
        .engine
        .version()
        .files
        .clone()
        .expect("the metadata has a files bucket");
    let storing = tokio::spawn(async move {
        let incoming = switchboard::offload::Incoming {
            name: Some("late.pdf".into()),
            content_type: "application/pdf".into(),
            origin: "upload".into(),
            untrusted: true,
        };
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
            b"%PDF-1.7 a small file",
        ))]);
        files.store(incoming, body).await
    });
    // The object is in the bucket while the scan is pending.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s3::keys(&bench.s3, &bench.bucket).await.is_empty() {
        assert!(Instant::now() < deadline, "the object was never stored");
        assert!(
            !storing.is_finished(),
            "the store ended before the scan: {storing:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    storing.abort();
    assert!(storing.await.expect_err("aborted").is_cancelled());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s3::keys(&bench.s3, &bench.bucket).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the cancelled store's object is still there"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(bench.references().await, 0);
}

/// `--max-concurrent-uploads`: while the one place is taken, another upload is answered `503`
/// with `Retry-After` and stores nothing; once the first is done, uploads are taken again.
#[tokio::test]
async fn uploads_beyond_the_limit_are_told_to_come_back() {
    let Some(bench) = Bench::start("{}", |config| config.max_concurrent_uploads = 1).await else {
        return;
    };
    let (feed, chunks) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let slow = {
        let request = bench
            .http
            .post(bench.url("/v1/files?name=slow.bin"))
            .bearer_auth(KEY)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(tokio_stream_of(chunks)));
        tokio::spawn(
            async move { answer(request.send().await.expect("POST reaches the server")).await },
        )
    };
    feed.send(Ok(Bytes::from_static(b"first half, ")))
        .await
        .expect("the upload reads");
    // Until the slow upload holds the place, a second one may still get it; then it is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "no upload was refused while one was under way"
        );
        let other = bench
            .post(
                "/v1/files",
                b"x".to_vec(),
                &[("content-type", "application/octet-stream")],
            )
            .await;
        if other.status == StatusCode::SERVICE_UNAVAILABLE {
            break other;
        }
        assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(
        refused.body["error"]["code"], "too_many_uploads",
        "{}",
        refused.body
    );
    assert_eq!(refused.headers["retry-after"], "1");
    let before = s3::keys(&bench.s3, &bench.bucket).await.len();

    feed.send(Ok(Bytes::from_static(b"second half")))
        .await
        .expect("the upload reads");
    drop(feed);
    let done = slow.await.expect("the slow upload ends");
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    assert_eq!(done.body["size"], json!(23));
    assert_eq!(s3::keys(&bench.s3, &bench.bucket).await.len(), before + 1);
    bench.upload_ok("/v1/files", b"after").await;
}

/// The items of a channel as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
