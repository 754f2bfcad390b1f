//! Loading and validating 1,000 connection files.
//!
//! Run: `cargo bench --bench metadata_load`. Writes 1,000 realistic connection files (one REST
//! connection each, three functions with input and output schemas and templates) to a
//! temporary folder, loads the folder several times through the same `Loader` the CLI uses, and
//! prints the median and the slowest run. The target is under one second in release mode.
//! `cargo bench --bench metadata_load -- --quick` loads the folder once (a smoke run).

use std::time::{Duration, Instant};

use switchboard::metadata::Loader;

const FILES: usize = 1_000;
const RUNS: usize = 7;

fn connection(i: usize) -> String {
    format!(
        r#"# Connection {i}: a CRM-side REST service.
connection: service_{i}
type: rest
description: Accounts and orders of region {i}
endpoint: https://region{i}.example.com/api/v2
auth:
  type: oauth2_client_credentials
  token_url: https://login.example.com/oauth2/token
  client_id: crm-{i}
  client_secret: "${{env:SERVICE_{i}_SECRET}}"
  scopes: [accounts.read, orders.write]
headers:
  X-Tenant: region-{i}
limits: {{ rate: 600/min, burst: 20, concurrency: 5, timeout: 30s, connect_timeout: 5s }}
retry: {{ max_attempts: 8, initial_delay: 1s, max_delay: 10m, max_age: 24h }}
functions:
  get_account:
    description: Read one account
    path: /accounts/{{{{ input.account_id }}}}
    query: {{ expand: "{{{{ input.expand }}}}" }}
    input_schema:
      type: object
      required: [account_id]
      properties:
        account_id: {{ type: string, pattern: "^[A-Z0-9]{{6,18}}$" }}
        expand: {{ type: string, enum: [contacts, orders] }}
    output_schema:
      type: object
      properties:
        name: {{ type: string }}
        balance: {{ type: number }}
    output: {{ name: /data/name, balance: /data/balance }}
  create_order:
    method: POST
    path: /orders
    headers: {{ X-Request-Id: "{{{{ callout.id }}}}" }}
    body:
      account: "{{{{ input.account_id }}}}"
      lines: "{{{{ input.lines | tojson }}}}"
      note: "Created by CRM for {{{{ input.owner.email }}}}"
    input_schema:
      type: object
      required: [account_id, lines]
      properties:
        account_id: {{ type: string }}
        owner:
          type: object
          properties:
            email: {{ type: string, format: email }}
        lines:
          type: array
          minItems: 1
          items:
            type: object
            required: [sku, qty]
            properties:
              sku: {{ type: string }}
              qty: {{ type: integer, minimum: 1 }}
    output: {{ order_id: /id }}
  cancel_order:
    method: DELETE
    path: /orders/{{{{ input.order_id }}}}
    input_schema:
      type: object
      required: [order_id]
      properties:
        order_id: {{ type: string }}
"#
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..FILES {
        std::fs::write(
            dir.path().join(format!("service_{i:04}.yaml")),
            connection(i),
        )
        .expect("write");
    }
    let loader = Loader::new();
    let runs = if std::env::args().any(|arg| arg == "--quick") {
        1
    } else {
        RUNS
    };
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let metadata = loader
            .load(dir.path())
            .expect("readable")
            .expect("valid metadata");
        times.push(start.elapsed());
        assert_eq!(metadata.connections.len(), FILES);
        assert_eq!(metadata.functions().count(), FILES * 3);
    }
    times.sort();
    let median = times[runs / 2];
    let slowest = times[runs - 1];
    println!(
        "metadata_load: {FILES} files, {} functions, {runs} runs",
        FILES * 3
    );
    println!("  median  {:>8.1} ms", median.as_secs_f64() * 1e3);
    println!("  fastest {:>8.1} ms", times[0].as_secs_f64() * 1e3);
    println!("  slowest {:>8.1} ms", slowest.as_secs_f64() * 1e3);
    println!(
        "  target  < 1000 ms: {}",
        if median < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
}
