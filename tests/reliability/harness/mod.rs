//! Helpers of the reliability and security suite (`tests/reliability/`): the real
//! `switchboard serve` as a child process, and the figures every test reports.
//!
//! Each test of the suite is its own test binary (`reliability_*` in Cargo.toml), so one
//! fault's processes and mounts never share a process with another's.

#![allow(dead_code)]

pub mod raw;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::engine::{Api, metric_value};

/// Reports a figure: printed (shown with `--nocapture`) and appended, one line per figure, to
/// `target/reliability-figures.txt`, which `scripts/test` prints at the end of a run.
///
/// `item` is the suite's item ("1 crash", "4 SSRF", …), `claim` what was shown.
pub fn figure(item: &str, claim: &str, figure: &str) {
    let line = format!("{item} | {claim} | {figure}");
    println!("FIGURE {line}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/reliability-figures.txt");
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
        // One write per line: lines of tests running at once do not interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

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

/// Set in the re-run of a test inside its private network namespace ([`private_network`]).
const PRIVATE_NETWORK_ENV: &str = "SWITCHBOARD_TEST_PRIVATE_NETWORK";

/// Runs the calling test again, alone, in a new network and mount namespace of its own, with
/// `addresses` (like `11.1.1.1`, `fd00:ec2::254`) on that namespace's `lo`; returns `true`
/// there (the caller goes on with the test) and `false` here, once that re-run has passed.
/// `test` is the test's name as the test binary lists it.
///
/// Addresses that are not loopback exist only inside the namespace, whose one interface is
/// `lo`, so no packet of the test leaves the machine; mounts made there (a `resolv.conf`) are
/// seen by nothing outside it. The re-run is a new process under `unshare --net --mount`
/// rather than `unshare(2)` on this thread, because the workspace forbids `unsafe` code.
///
/// Needs root: without it the test is skipped with a printed message, unless `CI` is set.
///
/// # Panics
/// The namespace cannot be made, or the re-run fails (its output is printed first).
pub fn private_network(test: &str, addresses: &[&str]) -> bool {
    if std::env::var_os(PRIVATE_NETWORK_ENV).is_some() {
        enter_private_network(addresses);
        return true;
    }
    if !is_root() {
        let message = format!("{test}: needs root to make a private network namespace");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        println!("SKIPPED {message}");
        return false;
    }
    // `timeout` bounds the re-run; its output comes back whole when it ends.
    let output = Command::new("timeout")
        .args(["--kill-after=5", "300", "unshare", "--net", "--mount"])
        .args(["--propagation", "private"])
        .arg(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(PRIVATE_NETWORK_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .expect("timeout and unshare run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("--- {test} in its private network ---\n{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{test} failed in its private network ({})",
        output.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its private network"
    );
    false
}

/// Whether this process runs as root (effective uid 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// In the re-run: checks that the namespace holds `lo` alone, brings it up and adds
/// `addresses` to it.
fn enter_private_network(addresses: &[&str]) {
    // /proc/self/net is this process's network namespace (unlike /sys/class/net).
    let devices = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    let interfaces: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "not in a private network namespace: refusing to add addresses"
    );
    ip(&["link", "set", "lo", "up"]);
    for address in addresses {
        let prefix = if address.contains(':') { 128 } else { 32 };
        // `nodad`: usable at once, without duplicate address detection.
        let cidr = format!("{address}/{prefix}");
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", "lo"];
        if prefix == 128 {
            args.push("nodad");
        }
        ip(&args);
    }
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Bind-mounts a file holding `text` over `target` (like `/etc/resolv.conf`): only in a mount
/// namespace of the test's own ([`private_network`]), which the mount dies with.
///
/// # Panics
/// Not in the re-run of [`private_network`], or the mount fails.
pub fn mount_file_over(target: &str, text: &str, dir: &Path) {
    assert!(
        std::env::var_os(PRIVATE_NETWORK_ENV).is_some(),
        "mount over {target} only in a private namespace"
    );
    let name = Path::new(target)
        .file_name()
        .expect("a file name")
        .to_os_string();
    let source = dir.join(name);
    std::fs::write(&source, text).expect("write the file to mount");
    let output = Command::new("mount")
        .arg("--bind")
        .arg(&source)
        .arg(target)
        .output()
        .expect("the mount command runs");
    assert!(
        output.status.success(),
        "mount --bind over {target}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Raises this process's soft limit of open files to its hard limit (CI machines often start
/// at 1,024), so that a test can hold many connections; returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

/// How many files (sockets included) process `pid` has open, from `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}
