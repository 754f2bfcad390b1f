//! The engine as production starts it ([`server::start`]), with its own metadata folder and
//! SQLite file in temporary folders, and a small client of its HTTP API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::controller::CallerAuth;
use switchboard::metadata::Loader;
use switchboard::server::{self, Server, ServerConfig};
use tempfile::TempDir;

/// The caller key every test server accepts.
pub const KEY: &str = "test-caller-key";

/// How often [`Api::wait_for_status`] and friends look again.
pub const POLL: Duration = Duration::from_millis(20);

/// Metadata text with every `UPSTREAM` replaced by the upstream's base URL.
pub fn pointed(yaml: &str, upstream: &str) -> String {
    yaml.replace("UPSTREAM", upstream)
}

/// Writes `files` (name, text) into `dir`, replacing what was there.
pub fn write_metadata(dir: &Path, files: &[(&str, String)]) {
    for entry in std::fs::read_dir(dir).expect("read the metadata folder") {
        let path = entry.expect("a folder entry").path();
        std::fs::remove_file(&path).expect("remove an old metadata file");
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a metadata file");
    }
}

/// A running server with its temporary metadata folder and database.
pub struct TestServer {
    pub api: Api,
    pub server: Server,
    pub metadata: TempDir,
    /// Holds the SQLite file.
    _data: TempDir,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with the metadata `files`, the default cap (25) and a
    /// caller key ([`KEY`]).
    pub async fn start(files: &[(&str, String)]) -> TestServer {
        TestServer::start_with(files, |_| {}).await
    }

    /// [`TestServer::start`], with the config changed by `configure` first.
    pub async fn start_with(
        files: &[(&str, String)],
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let metadata = tempfile::tempdir().expect("temp metadata folder");
        write_metadata(metadata.path(), files);
        let data = tempfile::tempdir().expect("temp data folder");
        let db = format!("sqlite://{}", data.path().join("sb.db").display());
        let mut config = ServerConfig::new(metadata.path(), db);
        config.listen = ([127, 0, 0, 1], 0).into();
        config.auth = CallerAuth::Keys(Arc::new(vec![KEY.to_string()]));
        config.shutdown_grace = Duration::from_secs(1);
        configure(&mut config);
        let server = server::start(config, Loader::new())
            .await
            .expect("the server starts");
        let api = Api::new(format!("http://{}", server.addr), Some(KEY));
        TestServer {
            api,
            server,
            metadata,
            _data: data,
        }
    }

    /// Rewrites the metadata folder with `files` (not reloaded yet).
    pub fn rewrite_metadata(&self, files: &[(&str, String)]) {
        write_metadata(self.metadata.path(), files);
    }

    pub fn metadata_file(&self, name: &str) -> PathBuf {
        self.metadata.path().join(name)
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// Stops the server and starts a new one on the same metadata folder and database, as
    /// a restarted process would (a new port).
    pub async fn restart(self) -> TestServer {
        let TestServer {
            server,
            metadata,
            _data: data,
            ..
        } = self;
        server.stop().await;
        let db = format!("sqlite://{}", data.path().join("sb.db").display());
        let mut config = ServerConfig::new(metadata.path(), db);
        config.listen = ([127, 0, 0, 1], 0).into();
        config.auth = CallerAuth::Keys(Arc::new(vec![KEY.to_string()]));
        config.shutdown_grace = Duration::from_secs(1);
        let server = server::start(config, Loader::new())
            .await
            .expect("the server starts again");
        let api = Api::new(format!("http://{}", server.addr), Some(KEY));
        TestServer {
            api,
            server,
            metadata,
            _data: data,
        }
    }
}

/// A client of the HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, key: Option<&str>) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Api {
            base,
            key: key.map(str::to_string),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let text = response.text().await.expect("read the answer");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// POSTs `body` as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self.authorised(self.http.post(self.url(path)).json(body));
        Api::answer(request.send().await.expect("POST reaches the server")).await
    }

    /// POSTs raw bytes with extra headers, as given.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self.authorised(self.http.post(self.url(path)).body(body));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Api::answer(request.send().await.expect("POST reaches the server")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let request = self.authorised(self.http.get(self.url(path)));
        Api::answer(request.send().await.expect("GET reaches the server")).await
    }

    /// Whether `/healthz` answers 200 (false while nothing listens).
    pub async fn healthy(&self) -> bool {
        let answer = self
            .http
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        answer.is_ok_and(|r| r.status() == StatusCode::OK)
    }

    /// GETs a text answer (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("GET reaches the server");
        let status = response.status();
        (status, response.text().await.expect("read the answer"))
    }

    /// Enqueues one callout, expects `202`, returns its id.
    pub async fn enqueue(&self, function: &str, input: Value) -> String {
        self.enqueue_body(&json!({ "function": function, "input": input }))
            .await
    }

    /// Enqueues `body`, expects `202`, returns the callout's id.
    pub async fn enqueue_body(&self, body: &Value) -> String {
        let (status, answer) = self.post("/v1/callouts", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "enqueue {body}: {answer}");
        answer["id"].as_str().expect("an id").to_string()
    }

    /// Enqueues `items` with one batch; expects every item stored; returns their ids.
    pub async fn enqueue_batch(&self, items: Vec<Value>) -> Vec<String> {
        let (status, answer) = self
            .post("/v1/callouts/batch", &json!({ "callouts": items }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().expect("results");
        results
            .iter()
            .map(|r| {
                r["callout"]["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("not stored: {r}"))
                    .to_string()
            })
            .collect()
    }

    /// The callout `id`.
    pub async fn callout(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/callouts/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET callout {id}: {body}");
        body
    }

    /// The journal of callout `id`.
    pub async fn attempts(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/callouts/{id}/attempts")).await;
        assert_eq!(status, StatusCode::OK, "GET attempts {id}: {body}");
        body["attempts"].as_array().expect("attempts").clone()
    }

    /// Polls the callout every [`POLL`] until its status is one of `statuses`; panics with
    /// its last state after `within`.
    pub async fn wait_for_status(&self, id: &str, statuses: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let callout = self.callout(id).await;
            let status = callout["status"].as_str().unwrap_or_default();
            if statuses.contains(&status) {
                return callout;
            }
            assert!(
                Instant::now() < deadline,
                "callout {id} did not reach {statuses:?} within {within:?}; it is {callout:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for every callout in `ids` to reach `status`.
    pub async fn wait_all(&self, ids: &[String], status: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let left = deadline.saturating_duration_since(Instant::now());
            done.push(self.wait_for_status(id, &[status], left).await);
        }
        done
    }

    /// The value of the metric line that starts with `series` (name and labels as rendered),
    /// or `None` when there is no such line.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        metric_value(&text, series)
    }

    /// Every callout, newest first, read page by page (at most `max_pages` pages of 500).
    pub async fn list_all(&self, max_pages: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let path = match &cursor {
                Some(c) => format!("/v1/callouts?limit=500&cursor={c}"),
                None => "/v1/callouts?limit=500".to_string(),
            };
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            all.extend(
                page["callouts"]
                    .as_array()
                    .expect("callouts")
                    .iter()
                    .cloned(),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return all,
            }
        }
        panic!("more than {max_pages} pages of callouts");
    }
}

/// The value of the line of Prometheus `text` whose series is exactly `series`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// An RFC 3339 time `ahead` from now.
pub fn rfc3339_in(ahead: Duration) -> String {
    (time::OffsetDateTime::now_utc() + ahead)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format a time")
}
