//! A secret value never appears in an error, in `Debug` output or in `validate` output.

use switchboard::metadata::Loader;
use switchboard::metadata::values::{Secret, SecretRef};

use crate::support;

const CANARY: &str = "canary-7f3a9c-do-not-print";

/// Metadata that misuses the canary in every way an admin might.
fn misuses() -> String {
    format!(
        r#"connection: leaky
type: rest
endpoint: https://user:{CANARY}@api.example.com/v1
auth:
  type: basic
  username: crm
  password: {CANARY}
---
connection: leaky_bearer
type: rest
endpoint: https://api.example.com
auth: {{ type: bearer, token: "${{env:{CANARY}}}" }}
---
connection: leaky_oauth
type: rest
endpoint: https://api.example.com
auth:
  type: oauth2_client_credentials
  token_url: https://login.example.com/token
  client_id: crm
  client_secret: "{CANARY}"
---
connection: leaky_aws
type: s3
bucket: crm-files
auth: {{ type: aws, access_key_id: "{CANARY}", secret_access_key: "${{file:{CANARY}"}}
"#
    )
}

#[test]
fn misused_secrets_are_reported_without_their_value() {
    let dir = support::folder(&[("leaky.yaml", &misuses())]);
    let problems = support::problems(dir.path());
    assert!(
        problems.len() >= 5,
        "every misuse is reported: {problems:#?}"
    );
    for line in &problems {
        assert!(!line.contains(CANARY), "secret leaked into: {line}");
    }
    let out = support::switchboard(&["validate", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let json = support::switchboard(&[
        "validate",
        "--format",
        "json",
        &dir.path().display().to_string(),
    ]);
    for output in [&out, &json] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains(CANARY),
            "secret leaked into validate output: {text}"
        );
        assert!(
            text.contains("a literal secret is not allowed here"),
            "{text}"
        );
    }
}

#[test]
fn resolved_secrets_never_show_in_debug_or_validate_output() {
    let secret_file = format!("{CANARY}\n");
    let dir = support::folder(&[
        (
            "ok.yaml",
            "connection: billing\ntype: rest\nendpoint: https://api.example.com\nauth: { type: basic, username: crm, password: \"${env:SB_TEST_CANARY}\" }\n---\nconnection: files\ntype: s3\nbucket: crm-files\nauth: { type: aws, access_key_id: \"${file:keys/id}\", secret_access_key: \"${env:SB_TEST_CANARY}\" }\n",
        ),
        ("keys/id", &secret_file),
    ]);
    let metadata = Loader::new()
        .load(dir.path())
        .expect("readable")
        .expect("valid");
    let env = |name: &str| (name == "SB_TEST_CANARY").then(|| CANARY.to_string());
    assert!(metadata.check_secrets(&env).is_empty());
    assert!(!format!("{metadata:?}").contains(CANARY));

    // Resolving gives the value only through `expose`.
    let files = &metadata.connections["files"];
    let base = dir.path();
    let reference = SecretRef::File("keys/id".into());
    let secret: Secret = reference.resolve(&env, base).expect("file secret");
    assert_eq!(secret.expose(), CANARY, "trailing newline removed");
    assert_eq!(format!("{secret} {secret:?}"), "*** Secret(***)");
    assert!(!format!("{files:?}").contains(CANARY));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "validate",
            "--check-secrets",
            &dir.path().display().to_string(),
        ])
        .env("SB_TEST_CANARY", CANARY)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains(CANARY));
}

#[test]
fn unresolvable_references_name_the_reference_and_its_place() {
    let dir = support::folder(&[(
        "billing.yaml",
        "connection: billing\ntype: rest\nendpoint: https://api.example.com\nauth:\n  type: bearer\n  token: \"${env:SB_TEST_UNSET_TOKEN}\"\n---\nconnection: files\ntype: s3\nbucket: crm-files\nauth: { type: aws, access_key_id: \"${file:missing/id}\", secret_access_key: \"${env:SB_TEST_CANARY}\" }\n",
    )]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "validate",
            "--check-secrets",
            &dir.path().display().to_string(),
        ])
        .env("SB_TEST_CANARY", CANARY)
        .env_remove("SB_TEST_UNSET_TOKEN")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let file = dir.path().join("billing.yaml");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "error: {}:6:10: connections.billing.auth.token: secret reference `${{env:SB_TEST_UNSET_TOKEN}}` cannot be resolved: environment variable SB_TEST_UNSET_TOKEN is not set",
            file.display()
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "error: {}:11:35: connections.files.auth.access_key_id: secret reference `${{file:missing/id}}` cannot be resolved: cannot read {}: entity not found",
            file.display(),
            dir.path().join("missing/id").display()
        )
    );
    assert!(!text.contains(CANARY));
}
