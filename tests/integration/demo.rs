//! `switchboard demo`, run as a newcomer runs it: the real binary, its summary on stdout.

use crate::support;

/// The first number after `label` on the summary line that starts with it.
fn figure(stdout: &str, label: &str) -> usize {
    let line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in the summary:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in {line:?}"))
}

#[test]
fn demo_accounts_for_every_callout_and_keeps_the_cap() {
    let out = support::switchboard(&["demo", "--callouts", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let succeeded = figure(&stdout, "succeeded");
    let failed = figure(&stdout, "failed");
    assert_eq!(succeeded + failed, 60, "{stdout}");
    assert!(
        figure(&stdout, "retried") >= 1,
        "no callout was retried:\n{stdout}"
    );
    assert!(failed >= 1, "no callout failed:\n{stdout}");
    // Each failure reason is listed under `failed` as `  N × kind: message`; the demo's only
    // failures are orders the shop rejects with a 400.
    let reasons: Vec<(usize, &str)> = stdout
        .lines()
        .filter_map(|line| line.trim_start().split_once(" × "))
        .filter_map(|(count, why)| Some((count.parse().ok()?, why)))
        .collect();
    assert!(!reasons.is_empty(), "no failure reason shown:\n{stdout}");
    assert_eq!(
        reasons.iter().map(|(n, _)| n).sum::<usize>(),
        failed,
        "{stdout}"
    );
    for (_, why) in reasons {
        assert!(
            why.starts_with("rejected: ") && why.len() > "rejected: ".len(),
            "{why}"
        );
    }

    let engine_peak = figure(&stdout, "peak in flight  engine");
    assert!((1..=25).contains(&engine_peak), "{stdout}");
    assert!(
        stdout.contains(
            "ok: all 60 callouts ended, and the peak in flight never exceeded the cap of 25\n"
        ),
        "{stdout}"
    );
}

#[test]
fn demo_metadata_validates() {
    let out = support::switchboard(&["validate", "metadata/demo"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: metadata/demo holds 4 connections and 4 functions; no problems found\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn demo_refuses_to_listen_beyond_loopback() {
    let out = support::switchboard(&["demo", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --listen 0.0.0.0:0 is not a loopback address; the demo only listens on loopback, like 127.0.0.1:0\n"
    );
}

#[test]
fn demo_that_runs_out_of_time_says_so_and_exits_1() {
    // The throttled loyalty service asks for a second's pause before any credit succeeds, so
    // its callouts cannot all end within one second.
    let out = support::switchboard(&["demo", "--callouts", "20", "--timeout", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "error: not every callout ended within 1s (--timeout); the summary shows where they are\n"
        ),
        "{stdout}"
    );
    let unfinished = figure(&stdout, "unfinished");
    assert!(unfinished >= 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "error: {unfinished} callout(s) had not finished\n"
        )),
        "{stdout}"
    );
}
