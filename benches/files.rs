//! A large file through `POST /v1/files`, against the AWS SDK uploading the same file straight
//! to the same S3-compatible server, in one run.
//!
//! Run: `cargo bench --bench files` (1 GiB, 3 runs each; a few minutes), or
//! `cargo bench --bench files -- --quick` (64 MiB, once). Options, as arguments after `--`:
//! `--size-mib N` (default 1024; quick 64), `--runs R` (default 3; quick 1), `--json PATH`
//! (default `target/bench-files.json`).
//!
//! The S3-compatible server is moto's (`moto_server`, as the tests use): the bench starts its
//! own on a free loopback port, from `SWITCHBOARD_MOTO_SERVER` or
//! `target/soap-peer/venv/bin/moto_server` (which `scripts/test` installs). Switchboard runs as
//! `switchboard serve` (the release binary, in a process of its own, SQLite in a temporary
//! folder) with an `s3` files connection to that server (`part_size` 8 MiB).
//!
//! The file (deterministic pseudo-random bytes) is written once under `target/bench-files-tmp/`
//! and read from disk by both sides. Each run, in turn:
//!
//! - **ceiling**: `aws-sdk-s3` multipart upload of the file, 8 MiB parts, two parts in flight
//!   (what the engine does), no hashing;
//! - **engine**: one `reqwest` client streams the file as the raw body of `POST /v1/files`;
//!   the answer's `sha256` and `size` must equal the file's, and the stored object's SHA-256
//!   too.
//!
//! Throughput is the file's bytes over the wall time of the upload (to the last answer). The
//! ratio is engine over ceiling, of the medians. Peak RSS is the server process's `VmHWM`,
//! read after all runs. Objects are deleted after each run (moto keeps them in memory).

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

const PART: usize = 8 * 1024 * 1024;
const BUCKET: &str = "bench-files";
const KEY: &str = support::KEY;

struct Options {
    size: u64,
    runs: usize,
    json: PathBuf,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut options = Options {
        size: if quick { 64 } else { 1024 } * 1024 * 1024,
        runs: if quick { 1 } else { 3 },
        json: PathBuf::from("target/bench-files.json"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--size-mib" => {
                let mib: u64 = value()?.parse().map_err(|_| "--size-mib takes a number")?;
                options.size = mib * 1024 * 1024;
            }
            "--runs" => options.runs = value()?.parse().map_err(|_| "--runs takes a number")?,
            "--json" => options.json = PathBuf::from(value()?),
            "--quick" | "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other}; expected --size-mib N, --runs R, --json PATH or --quick"
                ));
            }
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    support::with_runtimes(|_| run())
}

/// A child process killed when dropped.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Waits until `url` answers anything over HTTP, for at most 30 s.
async fn wait_up(url: &str, what: &str, child: &mut Child) -> Result<(), String> {
    let client = support::http_client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("{what} exited at start-up: {status}"));
        }
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what} did not answer at {url} within 30 s"))
}

async fn run() -> Result<(), String> {
    let options = options()?;
    let tmp = PathBuf::from("target/bench-files-tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let file = tmp.join(format!("file-{}.bin", options.size));
    let sha = write_file(&file, options.size).await?;

    let moto_bin = std::env::var("SWITCHBOARD_MOTO_SERVER")
        .unwrap_or_else(|_| "target/soap-peer/venv/bin/moto_server".to_string());
    let moto_port = free_port()?;
    let mut moto = Child(
        tokio::process::Command::new(&moto_bin)
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {moto_bin} (run scripts/test once to install it, or set SWITCHBOARD_MOTO_SERVER): {e}"))?,
    );
    let s3_url = format!("http://127.0.0.1:{moto_port}");
    wait_up(&s3_url, "moto_server", &mut moto).await?;
    let s3 = s3_client(&s3_url);
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| {
            format!(
                "create bucket: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;

    let work = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let meta = work.path().join("metadata");
    std::fs::create_dir_all(&meta).map_err(|e| format!("metadata dir: {e}"))?;
    std::fs::write(
        meta.join("files.yaml"),
        format!(
            "connection: files\ntype: s3\nendpoint: {s3_url}\nregion: us-east-1\nbucket: {BUCKET}\n\
             path_style: true\nallow_private_network: true\nchecksums: when_required\n\
             auth: {{ type: aws, access_key_id: \"${{env:BENCH_S3_KEY}}\", secret_access_key: \"${{env:BENCH_S3_SECRET}}\" }}\n\
             limits: {{ timeout: 5m }}\n\
             files: {{ part_size: 8MB, max_size: 20GB, content_types: [application/octet-stream] }}\n"
        ),
    )
    .map_err(|e| format!("metadata: {e}"))?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut engine = Child(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--metadata"])
            .arg(&meta)
            .arg("--db")
            .arg(format!("sqlite://{}", work.path().join("sb.db").display()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("SWITCHBOARD_API_KEYS", KEY)
            .env("BENCH_S3_KEY", "bench")
            .env("BENCH_S3_SECRET", "bench")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start switchboard serve: {e}"))?,
    );
    wait_up(&format!("{base}/readyz"), "switchboard serve", &mut engine).await?;
    let pid = engine.0.id().ok_or("the engine has no pid")?;

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1800))
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let mb = options.size as f64 / 1e6;
    let (mut ceiling, mut engine_runs) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        let secs = ceiling_upload(&s3, &file, options.size, run).await?;
        println!("run {run}: ceiling {:.1} MB/s ({secs:.2} s)", mb / secs);
        ceiling.push(mb / secs);
        clear_bucket(&s3).await?;

        let started = Instant::now();
        let body = tokio::fs::File::open(&file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(body, 256 * 1024);
        let answer = client
            .post(format!("{base}/v1/files?name=bench.bin"))
            .bearer_auth(KEY)
            .header("content-type", "application/octet-stream")
            .header("content-length", options.size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| format!("POST /v1/files: {e}"))?;
        let status = answer.status();
        let text = answer.text().await.map_err(|e| format!("answer: {e}"))?;
        let secs = started.elapsed().as_secs_f64();
        if status != reqwest::StatusCode::CREATED {
            return Err(format!("POST /v1/files answered {status}: {text}"));
        }
        let reference: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("answer is not JSON: {e}"))?;
        if reference["sha256"] != sha.as_str() || reference["size"] != options.size {
            return Err(format!(
                "the reference does not match the file: {reference}"
            ));
        }
        let key = reference["key"].as_str().unwrap_or_default();
        let stored = object_sha(&s3, key).await?;
        if stored != sha {
            return Err(format!(
                "the stored object's SHA-256 {stored} is not the file's {sha}"
            ));
        }
        println!("run {run}: engine  {:.1} MB/s ({secs:.2} s)", mb / secs);
        engine_runs.push(mb / secs);
        clear_bucket(&s3).await?;
    }
    let peak = status_kib(pid, "VmHWM:")? / 1024.0;
    let (c, e) = (support::median(&ceiling), support::median(&engine_runs));
    println!(
        "\n| file | ceiling (aws-sdk-s3 multipart) | POST /v1/files | ratio | engine peak RSS |\n\
         | --- | --- | --- | --- | --- |\n\
         | {} MiB | {c:.1} MB/s | {e:.1} MB/s | {:.2}× | {peak:.0} MB |",
        options.size / (1024 * 1024),
        e / c,
    );
    let json = serde_json::json!({
        "size": options.size, "runs": options.runs,
        "ceiling_mb_s": ceiling, "engine_mb_s": engine_runs,
        "median_ratio": e / c, "engine_peak_rss_mb": peak,
    });
    std::fs::write(&options.json, json.to_string())
        .map_err(|e| format!("{}: {e}", options.json.display()))?;
    Ok(())
}

fn s3_client(url: &str) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// Writes `size` deterministic pseudo-random bytes to `path` unless it holds them already;
/// returns their SHA-256.
async fn write_file(path: &Path, size: u64) -> Result<String, String> {
    let sha_path = path.with_extension("sha256");
    if let (Ok(meta), Ok(sha)) = (std::fs::metadata(path), std::fs::read_to_string(&sha_path))
        && meta.len() == size
    {
        return Ok(sha.trim().to_string());
    }
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut written = 0u64;
    let mut block = vec![0u8; 1024 * 1024];
    while written < size {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = (size - written).min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        out.write_all(&block[..n])
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written += n as u64;
    }
    out.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let sha = hex::encode(hasher.finalize());
    std::fs::write(&sha_path, &sha).map_err(|e| format!("{}: {e}", sha_path.display()))?;
    Ok(sha)
}

/// The ceiling: a multipart upload of the file straight to the server, two parts in flight.
async fn ceiling_upload(s3: &Client, file: &Path, size: u64, run: usize) -> Result<f64, String> {
    let key = format!("ceiling/{run}");
    let started = Instant::now();
    let created = s3
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(&key)
        .content_type("application/octet-stream")
        .send()
        .await
        .map_err(|e| {
            format!(
                "create upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut in_flight = JoinSet::new();
    let mut parts = Vec::new();
    let mut number = 1;
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(PART as u64) as usize;
        let mut buffer = vec![0u8; n];
        input
            .read_exact(&mut buffer)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        sent += n as u64;
        if in_flight.len() >= 2 {
            parts.push(joined(in_flight.join_next().await)?);
        }
        let (s3, key, id) = (s3.clone(), key.clone(), upload_id.clone());
        in_flight.spawn(async move {
            let done = s3
                .upload_part()
                .bucket(BUCKET)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(buffer))
                .send()
                .await
                .map_err(|e| {
                    format!("upload part: {}", aws_sdk_s3::error::DisplayErrorContext(e))
                })?;
            Ok::<_, String>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(done.e_tag().map(str::to_string))
                    .build(),
            )
        });
        number += 1;
    }
    while let Some(done) = in_flight.join_next().await {
        parts.push(joined(Some(done))?);
    }
    parts.sort_by_key(|p| p.part_number());
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            format!(
                "complete upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    Ok(started.elapsed().as_secs_f64())
}

fn joined(
    done: Option<Result<Result<CompletedPart, String>, tokio::task::JoinError>>,
) -> Result<CompletedPart, String> {
    match done {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(format!("a part task failed: {e}")),
        None => Err("no part in flight".into()),
    }
}

/// The SHA-256 of a stored object, read as a stream.
async fn object_sha(s3: &Client, key: &str) -> Result<String, String> {
    let mut got = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = got.body.next().await {
        hasher.update(&chunk.map_err(|e| format!("read {key}: {e}"))?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Deletes every object of the bucket.
async fn clear_bucket(s3: &Client) -> Result<(), String> {
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| format!("list: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    for object in listed.contents() {
        if let Some(key) = object.key() {
            s3.delete_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "delete {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                })?;
        }
    }
    Ok(())
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}
