//! Pagination: the pure parts (the `Link` header, query parameters, origins), then the REST
//! wrapper paging against a real axum upstream on `127.0.0.1:0`, for the edge cases that the
//! engine-level tests (`tests/integration/pagination.rs`) do not reach.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_sdk::{Call, ErrorKind, Outcome, Pace, Wrapper};

use super::{Link, links, next_link, same_origin, with_params};
use crate::metadata::Loader;
use crate::wrapper::RestWrapper;

fn url(text: &str) -> url::Url {
    url::Url::parse(text).expect("a URL")
}

fn link(target: &str, rel: Option<&str>) -> Link {
    Link {
        target: target.to_string(),
        rel: rel.map(str::to_string),
    }
}

fn next_of(values: &[&str]) -> Option<String> {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(header::LINK, HeaderValue::from_str(value).expect("a value"));
    }
    next_link(&headers)
}

#[test]
fn link_header_lists_every_link_with_its_rel() {
    let header = r#"<https://api.example.com/items?page=1>; rel="first", <https://api.example.com/items?page=3>; rel="next", <https://api.example.com/items?page=9>; rel="last""#;
    assert_eq!(
        links(header),
        vec![
            link("https://api.example.com/items?page=1", Some("first")),
            link("https://api.example.com/items?page=3", Some("next")),
            link("https://api.example.com/items?page=9", Some("last")),
        ]
    );
    assert_eq!(
        next_of(&[header]).as_deref(),
        Some("https://api.example.com/items?page=3")
    );
}

#[test]
fn link_header_rel_may_be_unquoted_hold_several_values_and_any_case() {
    assert_eq!(next_of(&["</p2>; rel=next"]).as_deref(), Some("/p2"));
    assert_eq!(next_of(&["</p2>;rel=NEXT"]).as_deref(), Some("/p2"));
    assert_eq!(
        next_of(&[r#"</p1>; rel="prev first", </p3>; rel="last  next""#]).as_deref(),
        Some("/p3")
    );
    assert_eq!(
        next_of(&[r#"  < /p4 >  ;  rel = "next"  "#]).as_deref(),
        Some("/p4")
    );
}

#[test]
fn link_header_reads_quoted_params_with_commas_semicolons_and_escapes() {
    let header =
        r#"</a>; title="one, two; \"three\""; rel="prev", </b>; type=text/html; rel="next""#;
    assert_eq!(
        links(header),
        vec![link("/a", Some("prev")), link("/b", Some("next"))]
    );
    assert_eq!(next_of(&[header]).as_deref(), Some("/b"));
}

#[test]
fn link_header_first_rel_counts_and_unreadable_links_are_skipped() {
    // RFC 8288 3.3: occurrences of `rel` after the first are ignored.
    assert_eq!(next_of(&["</a>; rel=prev; rel=next"]), None);
    assert_eq!(
        links("garbage; rel=next, </b>; rel; rel=next, </c>; rel=next"),
        vec![link("/b", Some("")), link("/c", Some("next"))]
    );
    assert_eq!(
        next_of(&["garbage; rel=next, </c>; rel=next"]).as_deref(),
        Some("/c")
    );
    assert_eq!(links("</unterminated; rel=next"), Vec::new());
    assert_eq!(
        links(r#"</a>; title="never closed, </b>; rel=next"#),
        vec![link("/a", None)]
    );
}

#[test]
fn link_header_without_next_gives_none_and_several_fields_are_read_in_order() {
    assert_eq!(next_of(&[]), None);
    assert_eq!(next_of(&[r#"</p1>; rel="prev""#]), None);
    assert_eq!(next_of(&["</x>; rel=nextpage"]), None);
    assert_eq!(
        next_of(&[r#"</p1>; rel="prev""#, r#"</p3>; rel="next""#]).as_deref(),
        Some("/p3")
    );
}

#[test]
fn link_header_parser_never_panics_on_any_cut_of_a_tricky_header() {
    let tricky = r#"<https://é.example/α?x=1>; rel="next prev"; title*=UTF-8'de'n%c3%a4chstes, <>;rel=, "\"", <;>; a="\"#;
    for (i, _) in tricky.char_indices() {
        let _ = links(&tricky[..i]);
        let _ = links(&tricky[i..]);
    }
}

#[test]
fn with_params_replaces_a_parameter_and_keeps_the_others_in_order() {
    let base = url("https://api.example.com/v1/items?status=open&cursor=old&key=K");
    assert_eq!(
        with_params(&base, &[("cursor", "n e/w".to_string())]).as_str(),
        "https://api.example.com/v1/items?status=open&cursor=n+e%2Fw&key=K"
    );
    assert_eq!(
        with_params(
            &url("https://x.example/?a=1&a=2&b=3"),
            &[("a", "9".to_string())]
        )
        .as_str(),
        "https://x.example/?a=9&b=3"
    );
    assert_eq!(
        with_params(
            &url("https://api.example.com/items"),
            &[("page", "1".to_string()), ("limit", "50".to_string())]
        )
        .as_str(),
        "https://api.example.com/items?page=1&limit=50"
    );
    assert_eq!(with_params(&base, &[]), base);
}

#[test]
fn same_origin_needs_scheme_host_and_port() {
    let endpoint = url("https://api.example.com/v1");
    assert!(same_origin(
        &url("https://api.example.com:443/v2/x?y"),
        &endpoint
    ));
    assert!(!same_origin(&url("http://api.example.com/v1"), &endpoint));
    assert!(!same_origin(
        &url("https://api.example.com:8443/v1"),
        &endpoint
    ));
    assert!(!same_origin(&url("https://evil.example.com/v1"), &endpoint));
    assert!(!same_origin(
        &url("https://api.example.com.evil.example/v1"),
        &endpoint
    ));
}

// The wrapper against a real upstream.

const API_KEY: &str = "canary-page-key-3e1d";

/// An upstream answering each request by `reply(path_and_query)`; it records what it saw.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn upstream(reply: impl Fn(&str) -> Response + Clone + Send + Sync + 'static) -> Upstream {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (reply, log) = (reply.clone(), log.clone());
        async move {
            let uri = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            log.lock().expect("lock").push(uri.clone());
            reply(&uri)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { port, seen }
}

fn ok(body: Value) -> Response {
    axum::Json(body).into_response()
}

/// The value of the query parameter `name` in `uri`.
fn param(uri: &str, name: &str) -> Option<String> {
    url(&format!("http://x{uri}"))
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A `rest` connection `pages` on `port` with one function `list` paged by `pagination`
/// (YAML flow text); `auth` is an api key in the query when `with_key`.
fn wrapper(port: u16, pagination: &str, with_key: bool) -> RestWrapper {
    let auth = if with_key {
        "auth: { type: api_key, in: query, name: api_key, value: \"${env:PAGES_KEY}\" }\n"
    } else {
        ""
    };
    let yaml = format!(
        "connection: pages\ntype: rest\nendpoint: http://127.0.0.1:{port}/base\nallow_private_network: true\n{auth}functions:\n  list:\n    path: /list\n    pagination: {pagination}\n"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pages.yaml"), yaml).expect("write");
    let metadata = match Loader::new().load(dir.path()).expect("readable") {
        Ok(metadata) => metadata,
        Err(problems) => panic!("{problems:?}"),
    };
    let env = |name: &str| (name == "PAGES_KEY").then(|| API_KEY.to_string());
    let connection = &metadata.connections["pages"];
    RestWrapper::build(connection, &|r| r.resolve(&env, Path::new(".")), None).expect("built")
}

/// Counts the requests it paced; never waits.
#[derive(Default)]
struct CountingPace(AtomicUsize);

#[async_trait::async_trait]
impl Pace for CountingPace {
    async fn next_request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pace that never lets another request go.
struct Closed;

#[async_trait::async_trait]
impl Pace for Closed {
    async fn next_request(&self) {
        std::future::pending::<()>().await;
    }
}

async fn call(wrapper: &RestWrapper, pace: &dyn Pace, within: Duration) -> Outcome {
    wrapper
        .call(Call {
            callout_id: "co-1",
            function: "list",
            input: &json!({}),
            attempt: 1,
            idempotency_key: "idem-1",
            deadline: Instant::now() + within,
            pace,
        })
        .await
}

fn failure(outcome: &Outcome) -> (ErrorKind, &str) {
    match &outcome.result {
        Ok(data) => panic!("succeeded: {data}"),
        Err(err) => (err.kind, err.message.as_str()),
    }
}

/// A cursor list of three pages of two items: `/base/list`, then `?cursor=c2`, `?cursor=c3`.
fn three_cursor_pages(uri: &str) -> Response {
    match param(uri, "cursor").as_deref() {
        None => ok(json!({ "data": [1, 2], "next": "c2" })),
        Some("c2") => ok(json!({ "data": [3, 4], "next": "c3" })),
        _ => ok(json!({ "data": [5, 6], "next": null })),
    }
}

#[tokio::test]
async fn every_page_after_the_first_waits_for_the_pace() {
    let up = upstream(three_cursor_pages).await;
    let w = wrapper(
        up.port,
        "{ type: cursor, items: /data, cursor: /next, cursor_param: cursor }",
        false,
    );
    let pace = CountingPace::default();
    let outcome = call(&w, &pace, Duration::from_secs(10)).await;
    assert_eq!(
        outcome.result,
        Ok(json!({ "items": [1, 2, 3, 4, 5, 6], "pages": 3, "truncated": false }))
    );
    assert_eq!(pace.0.load(Ordering::SeqCst), 2, "pages 2 and 3 are paced");
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn the_deadline_passing_while_paced_ends_the_attempt_with_a_timeout() {
    let up = upstream(three_cursor_pages).await;
    let w = wrapper(
        up.port,
        "{ type: cursor, items: /data, cursor: /next, cursor_param: cursor }",
        false,
    );
    let outcome = call(&w, &Closed, Duration::from_millis(300)).await;
    assert_eq!(
        failure(&outcome),
        (
            ErrorKind::Timeout,
            "the attempt's deadline passed while page 2 of `pages.list` waited for the connection's rate limit"
        )
    );
    assert_eq!(up.seen().len(), 1);
    assert!(outcome.response_bytes > 0, "the first page's bytes count");
}

#[tokio::test]
async fn items_that_are_not_an_array_fail_naming_the_page_and_the_pointer() {
    let up = upstream(|uri: &str| match param(uri, "cursor") {
        None => ok(json!({ "data": [1], "next": "c2" })),
        Some(_) => ok(json!({ "data": { "oops": true }, "next": null })),
    })
    .await;
    let w = wrapper(
        up.port,
        "{ type: cursor, items: /data, cursor: /next, cursor_param: cursor }",
        false,
    );
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    assert_eq!(
        failure(&outcome),
        (
            ErrorKind::InvalidResponse,
            "page 2 of `pages.list` has an object at `/data` where its list of items should be; expected an array there (`pagination.items`)"
        )
    );
    assert_eq!(outcome.http_status, Some(200));
}

#[tokio::test]
async fn a_page_that_is_not_json_or_lacks_has_more_is_an_invalid_response() {
    let up = upstream(|uri: &str| match param(uri, "page").as_deref() {
        Some("1") => ok(json!({ "items": [1], "more": true })),
        Some("2") => ok(json!({ "items": [2], "more": "yes" })),
        _ => (StatusCode::OK, "<html>maintenance</html>").into_response(),
    })
    .await;
    let w = wrapper(
        up.port,
        "{ type: page, items: /items, has_more: /more }",
        false,
    );
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    assert_eq!(
        failure(&outcome),
        (
            ErrorKind::InvalidResponse,
            "page 2 of `pages.list` has text at `/more` where `has_more` expects true or false"
        )
    );
    let w = wrapper(
        up.port,
        "{ type: page, items: /items, first_page: 3 }",
        false,
    );
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    assert_eq!(
        failure(&outcome),
        (
            ErrorKind::InvalidResponse,
            "page 1 of `pages.list` is not JSON, so its items cannot be read: <html>maintenance</html>"
        )
    );
}

#[tokio::test]
async fn an_error_status_on_a_later_page_ends_the_attempt_with_that_pages_error() {
    let up = upstream(|uri: &str| match param(uri, "offset").as_deref() {
        Some("0") => ok(json!([1, 2])),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "7")],
            "busy",
        )
            .into_response(),
    })
    .await;
    let w = wrapper(up.port, "{ type: offset, items: \"\" }", false);
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    let Err(error) = &outcome.result else {
        panic!("succeeded: {outcome:?}")
    };
    assert_eq!(
        (error.kind, error.message.as_str(), error.retry_after),
        (
            ErrorKind::Unavailable,
            "`pages` answered with status 503 Service Unavailable: busy",
            Some(Duration::from_secs(7))
        )
    );
    assert_eq!(outcome.http_status, Some(503));
    assert_eq!(
        up.seen(),
        vec!["/base/list?offset=0", "/base/list?offset=2"],
        "the offset moves by the items read"
    );
}

#[tokio::test]
async fn pages_over_ten_mib_together_are_response_too_large() {
    let filler = "x".repeat(3 * 1024 * 1024);
    let up = upstream(move |uri: &str| {
        let page: u64 = param(uri, "page").and_then(|p| p.parse().ok()).unwrap_or(1);
        ok(json!({ "items": [filler.clone()], "page": page }))
    })
    .await;
    let w = wrapper(up.port, "{ type: page, items: /items }", false);
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(20)).await;
    assert_eq!(
        failure(&outcome),
        (
            ErrorKind::ResponseTooLarge,
            "the 4 pages of `pages.list` read so far exceed 10 MiB together; expected a shorter list, or a smaller `max_pages`"
        )
    );
    assert_eq!(up.seen().len(), 4);
    assert!(outcome.response_bytes > super::MAX_BODY_BYTES);
}

#[tokio::test]
async fn relative_next_urls_resolve_against_the_page_and_carry_the_api_key() {
    let up = upstream(|uri: &str| match param(uri, "p").as_deref() {
        None => ok(json!({ "rows": ["a"], "links": { "next": "?p=2" } })),
        Some("2") => ok(json!({ "rows": ["b"], "links": { "next": "/base/list?p=3" } })),
        _ => ok(json!({ "rows": ["c"], "links": { "next": "" } })),
    })
    .await;
    let w = wrapper(
        up.port,
        "{ type: next_url, items: /rows, next_url: /links/next }",
        true,
    );
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    assert_eq!(
        outcome.result,
        Ok(json!({ "items": ["a", "b", "c"], "pages": 3, "truncated": false }))
    );
    let key = format!("api_key={API_KEY}");
    assert_eq!(
        up.seen(),
        vec![
            format!("/base/list?{key}"),
            format!("/base/list?p=2&{key}"),
            format!("/base/list?p=3&{key}"),
        ]
    );
}

#[tokio::test]
async fn a_link_to_a_page_already_read_fails_without_showing_the_api_key() {
    // The upstream links back to the first page, key and all.
    let up = upstream(|uri: &str| {
        let back = format!("<{uri}>; rel=\"next\"");
        match param(uri, "p").as_deref() {
            None => (
                [(header::LINK, "</base/list?p=2>; rel=\"next\"".to_string())],
                axum::Json(json!([1])),
            )
                .into_response(),
            _ => {
                let first = back.replace("p=2&", "");
                ([(header::LINK, first)], axum::Json(json!([2]))).into_response()
            }
        }
    })
    .await;
    let w = wrapper(up.port, "{ type: link_header, items: \"\" }", true);
    let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, ErrorKind::InvalidResponse);
    assert_eq!(
        message,
        format!(
            "page 2 of `pages.list` links its next page at http://127.0.0.1:{}/base/list, which was read already as page 1; following it would loop, so the list is not read further",
            up.port
        )
    );
    assert!(!message.contains(API_KEY));
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_next_url_on_another_host_name_or_with_credentials_is_refused() {
    let up = upstream(|uri: &str| {
        let port = param(uri, "port").unwrap_or_default();
        let next = match param(uri, "to").as_deref() {
            Some("host") => format!("http://localhost:{port}/base/list"),
            _ => format!("http://user:pw@127.0.0.1:{port}/base/list"),
        };
        ok(json!({ "data": [1], "next": next }))
    })
    .await;
    let pagination = "{ type: next_url, items: /data, next_url: /next }";
    for (to, expected) in [
        (
            "host",
            format!(
                "page 1 of `pages.list` links its next page at http://localhost:{0}, another origin than the endpoint's (http://127.0.0.1:{0}); only the endpoint's scheme, host and port are followed, so that credentials are not sent elsewhere",
                up.port
            ),
        ),
        (
            "userinfo",
            "page 1 of `pages.list` links its next page at a URL with credentials in it; expected a URL without them".to_string(),
        ),
    ] {
        let yaml_query = format!("{{ to: {to}, port: \"{}\" }}", up.port);
        let w = wrapper_with_query(up.port, pagination, &yaml_query);
        let outcome = call(&w, &CountingPace::default(), Duration::from_secs(10)).await;
        assert_eq!(failure(&outcome), (ErrorKind::InvalidResponse, expected.as_str()));
    }
    assert_eq!(up.seen().len(), 2, "one request each, none to the next URL");
}

/// [`wrapper`] without auth, the function with a fixed `query` (YAML flow text).
fn wrapper_with_query(port: u16, pagination: &str, query: &str) -> RestWrapper {
    let yaml = format!(
        "connection: pages\ntype: rest\nendpoint: http://127.0.0.1:{port}/base\nallow_private_network: true\nfunctions:\n  list:\n    path: /list\n    query: {query}\n    pagination: {pagination}\n"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pages.yaml"), yaml).expect("write");
    let metadata = match Loader::new().load(dir.path()).expect("readable") {
        Ok(metadata) => metadata,
        Err(problems) => panic!("{problems:?}"),
    };
    RestWrapper::build(
        &metadata.connections["pages"],
        &|_| Err("no secrets".into()),
        None,
    )
    .expect("built")
}
