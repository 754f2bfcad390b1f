//! Request templates through the engine: a function whose path, query, headers and body use the
//! connection's settings and the template helpers reaches a real upstream as rendered.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::support::engine::{TestServer, pointed};
use crate::support::upstream::{Reply, Upstream};

/// A CRM's notes API: the account and API version are connection settings.
const CRM: &str = r#"connection: crm
type: rest
endpoint: UPSTREAM/api
allow_private_network: true
settings:
  account_id: A-17
  api_version: "2024-01"
  page_size: 50
retry: { max_attempts: 1 }
functions:
  create_note:
    method: POST
    path: "/{{ settings.api_version }}/accounts/{{ settings.account_id }}/notes"
    query:
      limit: "{{ settings.page_size }}"
    headers:
      X-Client: "{{ (settings.account_id ~ ':' ~ input.user) | b64encode }}"
      X-Sent-On: "{{ now() | dateformat(format='%Y-%m-%d') }}"
    body:
      account: "{{ settings.account_id }}"
      page_size: "{{ settings.page_size }}"
      due: "{{ input.due | dateformat(format='%d.%m.%Y') }}"
      created: "{{ input.created | datetimeformat(format='%Y-%m-%dT%H:%M:%SZ') }}"
      text: "{{ input.text_b64 | b64decode }}"
      link: "https://crm.example.com/cases?{{ {'case': input.case_id} | urlencode }}"
    input_schema:
      type: object
      required: [user, due, created, text_b64, case_id]
      properties:
        user: { type: string }
        due: { type: string, format: date }
        created: { type: integer }
        text_b64: { type: string }
        case_id: { type: string }
"#;

/// Today in UTC, as `YYYY-MM-DD`.
fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_helpers_reach_the_upstream_as_rendered() {
    let upstream = Upstream::start(|_| Reply::ok(json!({ "id": "N-1" }))).await;
    let sb = TestServer::start(&[("crm.yaml", pointed(CRM, &upstream.url()))]).await;

    let before = today();
    let id = sb
        .api
        .enqueue(
            "crm.create_note",
            json!({
                "user": "ann",
                "due": "2024-03-05",
                "created": 1_700_000_000,
                "text_b64": STANDARD.encode("Call back, ré: order 7"),
                "case_id": "C&1 2",
            }),
        )
        .await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded"], Duration::from_secs(10))
        .await;
    let after = today();
    assert_eq!(done["result"]["data"], json!({ "id": "N-1" }), "{done}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let seen = &requests[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/2024-01/accounts/A-17/notes?limit=50")
    );
    let header = |name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("x-client"), STANDARD.encode("A-17:ann"));
    let sent_on = header("x-sent-on");
    assert!(
        sent_on == before || sent_on == after,
        "X-Sent-On {sent_on:?}, expected today ({before})"
    );
    assert_eq!(
        seen.json(),
        json!({
            "account": "A-17",
            "page_size": 50,
            "due": "05.03.2024",
            "created": "2023-11-14T22:13:20Z",
            "text": "Call back, ré: order 7",
            "link": "https://crm.example.com/cases?case=C%261%202",
        })
    );
    sb.stop().await;
}
