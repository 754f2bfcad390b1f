//! `switchboard import wsdl` end to end: the spyne server's own WSDL (`tests/peers/
//! soap_server.py`, started by `scripts/test`, its URL in `SWITCHBOARD_SOAP_URL`) imported by
//! the real binary, checked by `switchboard validate`, and served by the engine, with callouts
//! that succeed without a single hand edit.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::engine::TestServer;
use crate::support::switchboard;

const DEADLINE: Duration = Duration::from_secs(15);

fn soap_url() -> String {
    std::env::var("SWITCHBOARD_SOAP_URL").expect(
        "SWITCHBOARD_SOAP_URL is not set: run scripts/test, which installs and starts the SOAP test server",
    )
}

/// Fetches the spyne WSDL at `path` (`soap11` or `soap12`), imports it as connection `crm`
/// and validates the result; returns the generated text.
async fn imported(path: &str) -> String {
    let url = format!("{}/{path}?wsdl", soap_url());
    let wsdl = reqwest::get(&url)
        .await
        .expect("the WSDL is served")
        .text()
        .await
        .expect("the WSDL is read");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("crm.wsdl");
    std::fs::write(&file, wsdl).expect("save the WSDL");
    let out = dir.path().join("metadata");
    std::fs::create_dir(&out).expect("mkdir");
    let (file, out) = (file.display().to_string(), out.display().to_string());
    let args = [
        "import",
        "wsdl",
        file.as_str(),
        "--connection",
        "crm",
        "--out",
        out.as_str(),
        "--allow-private-network",
    ];
    let run = switchboard(&args);
    assert!(
        run.status.success(),
        "import: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let target = format!("{out}/crm.yaml");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("wrote {target}; check it with `switchboard validate {target}`\n")
    );

    let again = switchboard(&args);
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        format!("error: {target} already exists; pass --force to overwrite it\n")
    );

    let check = switchboard(&["validate", out.as_str()]);
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        format!("ok: {out} holds 1 connection and 5 functions; no problems found\n")
    );
    assert!(check.status.success());
    std::fs::read_to_string(&target).expect("read the generated file")
}

async fn succeeded(sb: &TestServer, function: &str, input: Value) -> Value {
    let id = sb.api.enqueue(function, input).await;
    let done = sb
        .api
        .wait_for_status(&id, &["succeeded", "failed"], DEADLINE)
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    done["result"]["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_spyne_wsdl_calls_simple_and_nested_operations_in_soap_1_1_and_1_2() {
    for path in ["soap11", "soap12"] {
        let yaml = imported(path).await;
        let version = if path == "soap12" { "1.2" } else { "1.1" };
        assert!(
            yaml.lines()
                .any(|l| l == format!("soap_version: \"{version}\"")),
            "{yaml}"
        );
        let sb = TestServer::start(&[("crm.yaml", yaml)]).await;

        let data = succeeded(
            &sb,
            "crm.greet",
            json!({ "name": "Ann & <Co>", "times": 2 }),
        )
        .await;
        assert_eq!(
            data,
            json!({ "GreetResult": "Hello, Ann & <Co>!; Hello, Ann & <Co>!" }),
            "SOAP {version}"
        );
        // Optional fields may be left out: their elements are not sent.
        let data = succeeded(&sb, "crm.greet", json!({ "name": "Bo" })).await;
        assert_eq!(
            data,
            json!({ "GreetResult": "Hello, Bo!" }),
            "SOAP {version}"
        );

        let data = succeeded(
            &sb,
            "crm.create_order",
            json!({ "order": {
                "customer": "C-7",
                "shipping": { "street": "1 Main St", "city": "Zürich", "zip": "8001" },
                "lines": [
                    { "sku": "A-1", "quantity": 2, "price": 9.5 },
                    { "sku": "B-2", "quantity": 1, "price": 20 },
                ],
                "rush": true,
            }}),
        )
        .await;
        assert_eq!(
            data,
            json!({
                "order_id": "SO-C-7-2",
                "customer": "C-7",
                "city": "Zürich",
                "total": 39.0,
                "line_count": 2,
                "skus": ["A-1", "B-2"],
                "rush": true,
            }),
            "SOAP {version}"
        );

        // One line, no shipping: a list of one stays a list; absent values are null.
        let data = succeeded(
            &sb,
            "crm.create_order",
            json!({ "order": { "customer": "C-8", "lines": [{ "sku": "Z-9", "quantity": 3, "price": 1.25 }] } }),
        )
        .await;
        assert_eq!(
            data,
            json!({
                "order_id": "SO-C-8-1",
                "customer": "C-8",
                "city": null,
                "total": 3.75,
                "line_count": 1,
                "skus": ["Z-9"],
                "rush": false,
            }),
            "SOAP {version}"
        );
        sb.stop().await;
    }
}

#[test]
fn import_reports_a_wsdl_it_cannot_convert_with_file_and_line() {
    let root = crate::support::root();
    let file = root.join("tests/fixtures/wsdl/bad/external_import.wsdl");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = switchboard(&[
        "import",
        "wsdl",
        &file.display().to_string(),
        "--connection",
        "erp",
        "--out",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        format!(
            "error: {}:5: wsdl:import of \"https://erp.example.com/types.wsdl\": external imports are not supported yet; save the imported documents' content into this WSDL\n",
            file.display()
        )
    );
    assert!(!dir.path().join("erp.yaml").exists());

    let run = switchboard(&["import", "wsdl", "x.wsdl", "--connection", "Bad-Name"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        "error: --connection \"Bad-Name\" is not a valid connection name; expected lowercase letters, digits and underscores, starting with a letter, like \"billing_v2\"\n"
    );
}
