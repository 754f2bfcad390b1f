//! The real `switchboard serve` binary as a child process, on a free port: the crash, shutdown
//! and reload tests, and the reliability suite (`tests/reliability/harness`), start it here.

// The reliability suite uses more of it than the integration tests do.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::engine::{Api, metric_value, pointed};

/// A `switchboard serve` process, killed (SIGKILL) when dropped so that a failing test
/// leaves nothing behind.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
    pub api: Api,
    pub port: u16,
}

/// How to start a [`Serve`].
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Extra arguments after `serve --metadata DIR --db URL --listen ADDR`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Caller key the [`Api`] sends; `None` starts the engine with `--dev` (no keys).
    pub key: Option<String>,
    /// `RUST_LOG` (default `warn`).
    pub log_level: Option<String>,
}

impl Serve {
    /// Starts `switchboard serve --dev` on a free port and waits until `/healthz` answers.
    pub async fn start(metadata: &Path, db: &str, log: PathBuf) -> Serve {
        Serve::start_with(metadata, db, log, ServeOptions::default()).await
    }

    /// Starts `switchboard serve` with `options` on a free port and waits until `/healthz`
    /// answers; tries another port if that one was taken meanwhile.
    pub async fn start_with(
        metadata: &Path,
        db: &str,
        log: PathBuf,
        options: ServeOptions,
    ) -> Serve {
        for _ in 0..3 {
            let port = free_port();
            let out = File::create(&log).expect("create the log file");
            let err = out.try_clone().expect("clone the log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
            command.arg("serve");
            if options.key.is_none() {
                command.arg("--dev");
            }
            command
                .arg("--metadata")
                .arg(metadata)
                .args(["--db", db, "--listen", &format!("127.0.0.1:{port}")])
                .args(&options.args)
                .env(
                    "RUST_LOG",
                    options.log_level.clone().unwrap_or_else(|| "warn".into()),
                )
                .envs(options.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let child = command.spawn().expect("switchboard serve starts");
            let api = Api::new(format!("http://127.0.0.1:{port}"), options.key.as_deref());
            let mut serve = Serve {
                child,
                log: log.clone(),
                api,
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = serve.child.try_wait() {
                    let text = serve.log_text();
                    assert!(
                        text.contains("cannot listen on"),
                        "switchboard serve exited with {status}:\n{text}"
                    );
                    break; // The port was taken meanwhile: try another.
                }
                if serve.api.healthy().await {
                    return serve;
                }
                assert!(
                    Instant::now() < deadline,
                    "no /healthz within 20 s:\n{}",
                    serve.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("switchboard serve found no free port in 3 tries");
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (like `-STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Callouts (succeeded, running) now, from one scrape of `/metrics`.
    pub async fn counts(&self) -> (usize, usize) {
        let (status, text) = self.api.get_text("/metrics").await;
        assert_eq!(status, reqwest::StatusCode::OK, "{text}");
        let count = |s: &str| {
            let series = format!("switchboard_callouts{{status=\"{s}\"}}");
            metric_value(&text, &series).unwrap_or(0.0) as usize
        };
        (count("succeeded"), count("running"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now (bound, then released), below the kernel's ephemeral range:
/// every `127.0.0.1:0` bind of the tests running beside this one and every outgoing connection
/// takes its port from that range, so none of them can take this port between its release
/// here and the child's bind.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    for _ in 0..100 {
        let port = rand::random_range(low..ephemeral_low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_low}");
}

/// A connection `sink` whose function `put` posts `{n}` to the upstream, with quick retries:
/// the load of the crash and storage tests. Its endpoint is `UPSTREAM/sink`, for
/// [`sink_folder`] to point.
pub const SINK: &str = r#"connection: sink
type: rest
endpoint: UPSTREAM/sink
allow_private_network: true
limits: { timeout: 5s, connect_timeout: 1s }
retry: { max_attempts: 10, initial_delay: 50ms, max_delay: 200ms }
functions:
  put:
    method: POST
    path: /items
    body: { n: "{{ input.n }}" }
    input_schema:
      type: object
      required: [n]
      properties:
        n: { type: integer }
"#;

/// A temp folder holding `metadata/sink.yaml` (the connection `yaml` pointed at `upstream`),
/// the metadata folder, and the URL of a database file beside it.
pub fn sink_folder(yaml: &str, upstream: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp folder");
    let metadata = dir.path().join("metadata");
    std::fs::create_dir(&metadata).expect("metadata folder");
    std::fs::write(metadata.join("sink.yaml"), pointed(yaml, upstream)).expect("write metadata");
    let db = format!("sqlite://{}", dir.path().join("sb.db").display());
    (dir, metadata, db)
}
