//! Reliability and security suite, item 2: storage faults under the real `switchboard serve`.
//!
//! - the database on a full disk (a small tmpfs filled up): enqueues are refused with `503
//!   unavailable`, nothing acknowledged is lost, and the service comes back when space does;
//! - the database locked by another process (`BEGIN EXCLUSIVE` held by python3): the same.
//!
//! See tests/reliability/harness for the helpers.

#[path = "../integration/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod harness;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use harness::figure;
use support::serve::{SINK, Serve, sink_folder};
use support::upstream::{Reply, Upstream};

/// One enqueue's answer: status, `Retry-After`, body.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

/// POSTs one callout `n` with idempotency key `key`; the answer, whatever it is.
async fn enqueue(client: &reqwest::Client, base: &str, n: usize, key: &str) -> Answer {
    let body = json!({ "function": "sink.put", "input": { "n": n }, "idempotency_key": key });
    let response = client
        .post(format!("{base}/v1/callouts"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("enqueue {key} got no answer: {err}"));
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.text().await.expect("read the answer");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        retry_after,
        body,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// Checks a refusal: `503 unavailable` with `Retry-After`.
fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        answer.body
    );
    assert_eq!(
        answer.body["error"]["code"], "unavailable",
        "{what}: {}",
        answer.body
    );
    assert_eq!(answer.retry_after.as_deref(), Some("1"), "{what}");
}

/// Whether this process runs as root (uid 0), from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(1).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

/// A tmpfs mounted on a temp folder, unmounted when dropped (even when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp folder");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, it goes when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `path` until the file system says it is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let mut written = 0u64;
    // Big chunks, then smaller ones to take the last free blocks; bounded by the tmpfs size.
    for chunk in [64 * 1024, 4096, 512, 1] {
        let bytes = vec![0xA5u8; chunk];
        for _ in 0..100_000 {
            match file.write_all(&bytes).and_then(|()| file.sync_data()) {
                Ok(()) => written += chunk as u64,
                Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                Err(err) => panic!("filling the disk failed otherwise: {err}"),
            }
        }
    }
    written
}

/// Every callout stored, by idempotency key.
async fn stored_keys(serve: &Serve) -> HashSet<String> {
    serve
        .api
        .list_all(20)
        .await
        .iter()
        .filter_map(|c| c["idempotency_key"].as_str().map(str::to_string))
        .collect()
}

/// Checks what the engine keeps doing through a fault: its process lives, `/healthz` answers
/// 200; returns what `/readyz` answered.
async fn still_alive(serve: &mut Serve) -> String {
    assert!(
        matches!(serve.child.try_wait(), Ok(None)),
        "the engine died:\n{}",
        serve.log_text()
    );
    assert!(serve.api.healthy().await, "/healthz stopped answering 200");
    let (status, body) = serve.api.get("/readyz").await;
    match body["error"]["code"].as_str() {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Polls until an enqueue is answered `202`; returns how long that took and how many were
/// refused meanwhile (each a `503 unavailable`).
async fn until_accepted(
    client: &reqwest::Client,
    serve: &Serve,
    prefix: &str,
    within: Duration,
) -> (Duration, String, usize) {
    let start = Instant::now();
    let deadline = start + within;
    for i in 0.. {
        let key = format!("{prefix}-{i}");
        let answer = enqueue(client, &serve.base(), 100_000 + i, &key).await;
        if answer.status == StatusCode::ACCEPTED {
            return (start.elapsed(), key, i);
        }
        assert_unavailable(&answer, "while the fault clears");
        assert!(
            Instant::now() < deadline,
            "no enqueue accepted within {within:?} of the fault's end:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// The log's lines at WARN or ERROR, shortened to their messages, each once with a count.
fn log_summary(log: &str) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let plain = strip_ansi(line);
        let Some(level) = ["ERROR", "WARN"].into_iter().find(|l| plain.contains(l)) else {
            continue;
        };
        let message = plain
            .split_once(": ")
            .map_or(plain.as_str(), |(_, rest)| rest)
            .split(" error=")
            .next()
            .unwrap_or_default()
            .split(" internal=")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let message = format!("{level} {message}");
        match seen.iter_mut().find(|(m, _)| *m == message) {
            Some((_, n)) => *n += 1,
            None => seen.push((message, 1)),
        }
    }
    seen.iter()
        .map(|(m, n)| format!("{n}× {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fault: the database's file system fills up (a 4 MiB tmpfs holding the SQLite file, filled
/// by a filler file until ENOSPC) while the engine runs callouts; then the filler is deleted.
///
/// Expected: while full, enqueue answers `503 unavailable` with `Retry-After: 1` — never a 2xx
/// for a callout not stored, never a 500, never a crash; `/healthz` keeps answering; nothing
/// acknowledged (before or during) is lost and nothing refused is stored; once space returns,
/// enqueue answers `202` again within a bounded wait and every acknowledged callout succeeds.
///
/// Figure: acknowledged before, refused while full, lost, how soon the service came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_work_with_503_and_loses_nothing() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the full-disk test mounts a tmpfs and needs root"
        );
        println!("SKIPPED: the full-disk test mounts a tmpfs and needs root");
        return;
    }
    const BEFORE: usize = 60;
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "stored": true })).hold(Duration::from_millis(100)))
            .await;
    let (dir, metadata, _) = sink_folder(SINK, &upstream.url());
    // Declared before the engine: dropped after it, so the mount is no longer in use.
    let tmpfs = Tmpfs::mount("4m");
    let db = format!("sqlite://{}", tmpfs.path().join("sb.db").display());
    let mut serve = Serve::start(&metadata, &db, dir.path().join("serve.log")).await;
    let client = client();

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for n in 0..BEFORE {
        let key = format!("before-{n}");
        let answer = enqueue(&client, &serve.base(), n, &key).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        acknowledged.push((key, answer.body["id"].as_str().expect("an id").to_string()));
    }

    let filler = tmpfs.path().join("filler");
    let filled = fill(&filler);

    // SQLite may still take a few writes in WAL pages it already has: enqueue until refused.
    let mut accepted_while_full = 0;
    let mut refused: Vec<String> = Vec::new();
    for n in 0..2000 {
        let key = format!("full-{n}");
        let answer = enqueue(&client, &serve.base(), 1000 + n, &key).await;
        if answer.status == StatusCode::ACCEPTED {
            accepted_while_full += 1;
            acknowledged.push((key, answer.body["id"].as_str().expect("an id").to_string()));
            continue;
        }
        assert_unavailable(&answer, "an enqueue on a full disk");
        refused.push(key);
        break;
    }
    assert_eq!(refused.len(), 1, "no enqueue was refused on a full disk");
    // Full stays full: every further enqueue is refused the same way.
    for n in 0..20 {
        let key = format!("refused-{n}");
        let answer = enqueue(&client, &serve.base(), 5000 + n, &key).await;
        assert_unavailable(&answer, "a further enqueue on a full disk");
        refused.push(key);
    }
    let readyz_full = still_alive(&mut serve).await;

    std::fs::remove_file(&filler).expect("delete the filler");
    let (back_after, _, refused_meanwhile) =
        until_accepted(&client, &serve, "after", Duration::from_secs(30)).await;
    still_alive(&mut serve).await;

    let ids: Vec<String> = acknowledged.iter().map(|(_, id)| id.clone()).collect();
    serve
        .api
        .wait_all(&ids, "succeeded", Duration::from_secs(60))
        .await;
    let stored = stored_keys(&serve).await;
    let lost = acknowledged
        .iter()
        .filter(|(key, _)| !stored.contains(key))
        .count();
    let stored_refused: Vec<&String> = refused.iter().filter(|k| stored.contains(*k)).collect();
    assert_eq!(lost, 0, "acknowledged callouts lost");
    assert!(
        stored_refused.is_empty(),
        "refused callouts were stored: {stored_refused:?}"
    );
    let log = serve.log_text();
    assert!(!log.contains("panicked"), "{log}");
    println!("log: {}", log_summary(&log));
    figure(
        "2 storage",
        "database on a full disk (4 MiB tmpfs)",
        &format!(
            "{BEFORE} acknowledged before + {accepted_while_full} after the filler ({filled} bytes) \
             took the last space, {} refused with 503 unavailable while full (none stored, /healthz \
             200, /readyz {readyz_full}), 0 lost; service back {} ms after space returned \
             ({refused_meanwhile} more 503 meanwhile); {}/{} acknowledged succeeded",
            refused.len(),
            back_after.as_millis(),
            ids.len(),
            ids.len()
        ),
    );
}

/// A python3 process holding `BEGIN EXCLUSIVE` on a SQLite file until its stdin closes (or 120 s
/// pass); killed when dropped.
struct Locker {
    child: Child,
}

impl Locker {
    /// Starts it and waits until it holds the lock.
    fn lock(db: &Path) -> Locker {
        const SCRIPT: &str = "
import signal, sqlite3, sys
signal.alarm(120)
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
sys.stdin.read()
db.execute('ROLLBACK')
print('released', flush=True)
";
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(
            first.as_deref(),
            Some("locked"),
            "python3 did not take the lock"
        );
        child.stdout = None;
        // The rest of its output is not read: keep the reader alive in a thread.
        std::thread::spawn(move || lines.for_each(drop));
        Locker { child }
    }

    /// Closes its stdin: it rolls back and exits. Waits for that.
    async fn release(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "python3 ended with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "python3 did not release the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fault: another process (python3's sqlite3) takes `BEGIN EXCLUSIVE` on the database while the
/// engine runs callouts, holds it through several enqueues, then releases it.
///
/// Expected: while locked, enqueue answers `503 unavailable` with `Retry-After: 1` after the
/// store's busy timeout (5 s) — never a 2xx for a callout not stored, never a 500, never a
/// crash; `/healthz` keeps answering; nothing acknowledged is lost and nothing refused is
/// stored; once the lock is released, enqueue answers `202` and every acknowledged callout
/// succeeds.
///
/// Figure: acknowledged before, refused while locked and how long each refusal took, lost, how
/// soon the service came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_refuses_work_with_503_and_loses_nothing() {
    const BEFORE: usize = 60;
    const WHILE_LOCKED: usize = 4;
    let upstream =
        Upstream::start(|_| Reply::ok(json!({ "stored": true })).hold(Duration::from_millis(100)))
            .await;
    let (dir, metadata, _) = sink_folder(SINK, &upstream.url());
    let db_file = dir.path().join("sb.db");
    let db = format!("sqlite://{}", db_file.display());
    let mut serve = Serve::start(&metadata, &db, dir.path().join("serve.log")).await;
    let client = client();

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for n in 0..BEFORE {
        let key = format!("before-{n}");
        let answer = enqueue(&client, &serve.base(), n, &key).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        acknowledged.push((key, answer.body["id"].as_str().expect("an id").to_string()));
    }

    let mut locker = Locker::lock(&db_file);
    let locked_at = Instant::now();
    // A few enqueues at once while locked: each waits out the busy timeout, then is refused.
    let attempts: Vec<_> = (0..WHILE_LOCKED)
        .map(|n| {
            let (client, base) = (client.clone(), serve.base());
            tokio::spawn(async move {
                let key = format!("locked-{n}");
                let start = Instant::now();
                let answer = enqueue(&client, &base, 1000 + n, &key).await;
                (key, answer, start.elapsed())
            })
        })
        .collect();
    let readyz_locked = still_alive(&mut serve).await;
    let mut refused = Vec::new();
    let mut took = Vec::new();
    for attempt in attempts {
        let (key, answer, elapsed) = attempt.await.expect("the enqueue task");
        assert_unavailable(&answer, "an enqueue while the database is locked");
        // At least the busy timeout (5 s); at most twice it, for an enqueue queued behind a
        // write group that was already waiting for the lock.
        assert!(
            (Duration::from_secs(4)..Duration::from_secs(12)).contains(&elapsed),
            "refused after {elapsed:?}; expected one or two busy timeouts (5 s)"
        );
        refused.push(key);
        took.push(elapsed.as_millis());
    }
    let held_for = locked_at.elapsed();
    still_alive(&mut serve).await;

    locker.release().await;
    let (back_after, _, refused_meanwhile) =
        until_accepted(&client, &serve, "after", Duration::from_secs(30)).await;

    let ids: Vec<String> = acknowledged.iter().map(|(_, id)| id.clone()).collect();
    serve
        .api
        .wait_all(&ids, "succeeded", Duration::from_secs(60))
        .await;
    let stored = stored_keys(&serve).await;
    let lost = acknowledged
        .iter()
        .filter(|(key, _)| !stored.contains(key))
        .count();
    let stored_refused: Vec<&String> = refused.iter().filter(|k| stored.contains(*k)).collect();
    assert_eq!(lost, 0, "acknowledged callouts lost");
    assert!(
        stored_refused.is_empty(),
        "refused callouts were stored: {stored_refused:?}"
    );
    let log = serve.log_text();
    assert!(!log.contains("panicked"), "{log}");
    println!("log: {}", log_summary(&log));
    took.sort_unstable();
    figure(
        "2 storage",
        "database locked by another process (BEGIN EXCLUSIVE)",
        &format!(
            "{BEFORE} acknowledged before, {} refused with 503 unavailable while locked \
             {} ms (answered after {:?} ms: one busy timeout of 5 s, two behind a waiting \
             write group; none stored, /healthz 200, \
             /readyz {readyz_locked}), 0 lost; service back {} ms after the release \
             ({refused_meanwhile} more 503 meanwhile); {}/{} acknowledged succeeded",
            refused.len(),
            held_for.as_millis(),
            took,
            back_after.as_millis(),
            ids.len(),
            ids.len()
        ),
    );
}
