//! Paginated REST functions end to end: callouts through the engine (`server::start`) against
//! real upstreams on loopback that serve a list page by page.
//!
//! Each upstream serves the seven contacts of [`contacts`] in its own paging style, and each
//! test asserts both the callout's result and the exact requests the upstream saw.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::engine::{TestServer, pointed};
use crate::support::upstream::{Reply, Seen, Upstream};

/// How long any callout may take to reach the status a test waits for.
const DEADLINE: Duration = Duration::from_secs(15);

/// The `crm` connection with one function `list` (`GET /api/contacts?status=active`), paged by
/// `PAGINATION` (YAML flow text), its items mapped to `{ id, name }`.
const CRM: &str = r#"connection: crm
type: rest
endpoint: UPSTREAM/api
allow_private_network: true
auth: { type: bearer, token: "${file:crm.token}" }
limits: LIMITS
retry: { max_attempts: 1 }
functions:
  list:
    path: /contacts
    query: { status: active }
    pagination: PAGINATION
    output:
      id: /id
      name: /name
    output_schema:
      type: object
      required: [items, pages, truncated]
      properties:
        items:
          type: array
          items:
            type: object
            required: [id, name]
            properties:
              id: { type: string }
              name: { type: string }
        pages: { type: integer }
        truncated: { type: boolean }
"#;

const DEFAULT_LIMITS: &str = "{ timeout: 10s, connect_timeout: 1s }";

/// The bearer token of `crm`, read from the file `crm.token` beside `crm.yaml`.
const TOKEN: &str = "crm-token-5b7c";

/// `crm.yaml` pointed at `upstream`, paged by `pagination`, with `limits`, and its token file.
fn crm_with(upstream: &Upstream, pagination: &str, limits: &str) -> [(&'static str, String); 2] {
    let text = CRM
        .replace("PAGINATION", pagination)
        .replace("LIMITS", limits);
    [
        ("crm.yaml", pointed(&text, &upstream.url())),
        ("crm.token", TOKEN.to_string()),
    ]
}

fn crm(upstream: &Upstream, pagination: &str) -> [(&'static str, String); 2] {
    crm_with(upstream, pagination, DEFAULT_LIMITS)
}

/// The seven contacts the upstreams serve, with a field the output mapping leaves out.
fn contacts() -> Vec<Value> {
    (1..=7)
        .map(|n| json!({ "id": format!("C{n}"), "name": format!("Contact {n}"), "internal": n }))
        .collect()
}

/// [`contacts`] as the output mapping gives them back.
fn mapped() -> Vec<Value> {
    (1..=7)
        .map(|n| json!({ "id": format!("C{n}"), "name": format!("Contact {n}") }))
        .collect()
}

/// The contacts from index `from`, at most `count` of them.
fn slice(from: usize, count: usize) -> Vec<Value> {
    contacts().into_iter().skip(from).take(count).collect()
}

/// The query parameter `name` of the request.
fn param(seen: &Seen, name: &str) -> Option<String> {
    url::Url::parse(&format!("http://x{}", seen.path))
        .expect("a path and query")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn number(seen: &Seen, name: &str, default: usize) -> usize {
    param(seen, name).map_or(default, |v| v.parse().expect("a number"))
}

/// The paths (with queries) the upstream saw, in order.
fn paths(upstream: &Upstream) -> Vec<String> {
    upstream.requests().into_iter().map(|s| s.path).collect()
}

/// Runs one `crm.list` callout and waits for it to end; returns it.
async fn run(sb: &TestServer, status: &str) -> Value {
    let id = sb.api.enqueue("crm.list", json!({})).await;
    sb.api.wait_for_status(&id, &[status], DEADLINE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pagination_collects_every_item_and_maps_each() {
    // The cursor is the index of the next contact; `limit` sets the page size.
    let upstream = Upstream::start(|seen| {
        let from: usize = param(seen, "cursor").map_or(0, |c| {
            c.strip_prefix("after-")
                .expect("a cursor we gave")
                .parse()
                .expect("a number")
        });
        let limit = number(seen, "limit", 100);
        let next = (from + limit < 7).then(|| format!("after-{}", from + limit));
        Reply::ok(json!({ "data": slice(from, limit), "meta": { "next_cursor": next } }))
    })
    .await;
    let pagination = "{ type: cursor, items: /data, cursor: /meta/next_cursor, cursor_param: cursor, limit_param: limit, page_size: 3 }";
    let sb = TestServer::start(&crm(&upstream, pagination)).await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped(), "pages": 3, "truncated": false })
    );
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active&limit=3",
            "/api/contacts?status=active&limit=3&cursor=after-3",
            "/api/contacts?status=active&limit=3&cursor=after-6",
        ]
    );
    for seen in upstream.requests() {
        assert_eq!(
            seen.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {TOKEN}").as_str()),
            "every page carries the credentials"
        );
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_url_in_the_body_collects_every_item() {
    // Absolute next URLs, as most APIs give them; the last page has `next: null`.
    let upstream = Upstream::start(|seen| {
        let host = seen.headers["host"].to_str().expect("a host").to_string();
        let from = number(seen, "from", 0);
        let next = (from + 2 < 7).then(|| format!("http://{host}/api/contacts?from={}", from + 2));
        Reply::ok(json!({ "results": slice(from, 2), "links": { "next": next } }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: next_url, items: /results, next_url: /links/next }",
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped(), "pages": 4, "truncated": false })
    );
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active",
            "/api/contacts?from=2",
            "/api/contacts?from=4",
            "/api/contacts?from=6",
        ]
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_header_collects_every_item() {
    // GitHub's style: the body is the list; `Link` names first, prev, next and last pages.
    let upstream = Upstream::start(|seen| {
        let page = number(seen, "page", 1);
        let at = |p: usize| format!("</api/contacts?page={p}&per_page=3>");
        let mut links = vec![format!("{}; rel=\"first\"", at(1))];
        if page > 1 {
            links.push(format!("{}; rel=\"prev\"", at(page - 1)));
        }
        if page < 3 {
            links.push(format!("{}; rel=\"next\"", at(page + 1)));
        }
        links.push(format!("{}; rel=\"last\"", at(3)));
        Reply::ok(Value::Array(slice((page - 1) * 3, 3))).header("link", links.join(", "))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: link_header, items: \"\", limit_param: per_page, page_size: 3 }",
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped(), "pages": 3, "truncated": false })
    );
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active&per_page=3",
            "/api/contacts?page=2&per_page=3",
            "/api/contacts?page=3&per_page=3",
        ]
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_pagination_collects_every_item_and_stops_at_a_short_page() {
    let upstream = Upstream::start(|seen| {
        let page = number(seen, "p", 1);
        let size = number(seen, "per_page", 100);
        Reply::ok(json!({ "items": slice((page - 1) * size, size), "total": 7 }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: page, items: /items, page_param: p, limit_param: per_page, page_size: 3 }",
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped(), "pages": 3, "truncated": false })
    );
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active&p=1&per_page=3",
            "/api/contacts?status=active&p=2&per_page=3",
            "/api/contacts?status=active&p=3&per_page=3",
        ],
        "page 3 holds one contact, fewer than 3: it is the last"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_pagination_collects_every_item_and_stops_at_an_empty_page() {
    // No page size: the upstream chooses 4, and only an empty page ends the list.
    let upstream = Upstream::start(|seen| {
        let start = number(seen, "start", 0);
        Reply::ok(json!({ "records": slice(start, 4) }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: offset, items: /records, offset_param: start }",
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped(), "pages": 3, "truncated": false })
    );
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active&start=0",
            "/api/contacts?status=active&start=4",
            "/api/contacts?status=active&start=7",
        ],
        "the offset moves by the items each page held"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_cursor_fails_with_a_clear_error_after_exactly_one_repeat() {
    // c1 → c2 → c1 again: following it would loop forever.
    let upstream = Upstream::start(|seen| {
        let next = match param(seen, "cursor").as_deref() {
            None => "c1",
            Some("c1") => "c2",
            Some(_) => "c1",
        };
        Reply::ok(json!({ "data": slice(0, 1), "next": next }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: cursor, items: /data, cursor: /next, cursor_param: cursor }",
    ))
    .await;

    let done = run(&sb, "failed").await;
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "invalid_response",
            "message": "page 3 of `crm.list` gives the cursor \"c1\" again (page 1 gave it already); following it would loop, so the list is not read further",
            "retryable": false,
        })
    );
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        paths(&upstream),
        vec![
            "/api/contacts?status=active",
            "/api/contacts?status=active&cursor=c1",
            "/api/contacts?status=active&cursor=c2",
        ],
        "the repeated cursor is never sent"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pages_is_respected_and_the_result_says_truncated() {
    // An endless list: every page names a next one.
    let upstream = Upstream::start(|seen| {
        let n = number(seen, "cursor", 0);
        Reply::ok(json!({ "data": slice(n % 7, 1), "next": n + 1 }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: cursor, items: /data, cursor: /next, cursor_param: cursor, max_pages: 4 }",
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(
        done["result"]["data"],
        json!({ "items": mapped()[..4], "pages": 4, "truncated": true })
    );
    assert_eq!(upstream.count(), 4, "{:#?}", paths(&upstream));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_counts_against_the_connections_rate_limit() {
    // 5 requests a second, no burst beyond one: six pages need a second at least.
    const PAGES: usize = 6;
    let upstream = Upstream::start(|seen| {
        let page = number(seen, "page", 1);
        Reply::ok(json!({ "items": slice(page - 1, 1) }))
    })
    .await;
    let limits = "{ rate: 5/s, burst: 1, timeout: 10s, connect_timeout: 1s }";
    let sb = TestServer::start(&crm_with(
        &upstream,
        "{ type: page, items: /items, page_size: 1, max_pages: 6 }",
        limits,
    ))
    .await;

    let done = run(&sb, "succeeded").await;
    assert_eq!(done["result"]["data"]["pages"], 6, "{done}");
    let arrivals: Vec<Instant> = upstream.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), PAGES);
    for (i, pair) in arrivals.windows(2).enumerate() {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(120),
            "page {} came {gap:?} after page {}; at 5/s with a burst of 1 each page waits about 200 ms",
            i + 2,
            i + 1
        );
    }
    let busiest = crate::support::upstream::most_within_a_second(&arrivals);
    assert!(
        busiest <= 6,
        "{busiest} pages within one second; the limit is 5/s with a burst of 1"
    );
    let span = arrivals[PAGES - 1].duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_millis(900),
        "{PAGES} pages took only {span:?}; at 5/s they need about 1 s"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_url_to_another_origin_is_refused_and_never_called() {
    let elsewhere = Upstream::ok().await;
    let target = format!("{}/api/contacts?page=2", elsewhere.url());
    let upstream = Upstream::start(move |_| {
        Reply::ok(json!({ "results": slice(0, 2), "links": { "next": target } }))
    })
    .await;
    let sb = TestServer::start(&crm(
        &upstream,
        "{ type: next_url, items: /results, next_url: /links/next }",
    ))
    .await;

    let done = run(&sb, "failed").await;
    assert_eq!(
        done["result"]["error"],
        json!({
            "kind": "invalid_response",
            "message": format!(
                "page 1 of `crm.list` links its next page at {}, another origin than the endpoint's ({}); only the endpoint's scheme, host and port are followed, so that credentials are not sent elsewhere",
                elsewhere.url(),
                upstream.url()
            ),
            "retryable": false,
        })
    );
    assert_eq!(upstream.count(), 1);
    assert_eq!(elsewhere.count(), 0, "the other origin got no request");
    sb.stop().await;
}
