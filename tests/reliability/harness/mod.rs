//! Helpers of the reliability and security suite (`tests/reliability/`): the figures every
//! test reports, raw TCP peers, the private network namespace and open-file counts. The real
//! `switchboard serve` as a child process is shared with the integration tests
//! (`tests/integration/support/serve.rs`, `support::serve` here).
//!
//! Each test of the suite is its own test binary (`reliability_*` in Cargo.toml), so one
//! fault's processes and mounts never share a process with another's.

#![allow(dead_code)]

pub mod raw;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
