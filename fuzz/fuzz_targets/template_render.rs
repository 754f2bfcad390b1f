//! Fuzzes request templates: compile a template, then render it with an input built from the
//! fuzz bytes.
//!
//! The first byte picks the mode. With its high bit clear, the rest is a template source (for
//! the path, a query value, a header, a body string or a whole JSON body), then a 0xFF byte,
//! then the input (JSON, or a string when it is not JSON): neither compiling nor rendering may
//! panic, and a rendered header never holds a line break. With the high bit set, the templates
//! are fixed and the rest is the input value, and the promises of `wrapper::template` are
//! checked: a value printed into the path stays one segment and cannot move the request to
//! another host, path or query, and a body string that is one expression keeps the input's
//! value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value as Json, json};
use switchboard::metadata::model::Settings;
use switchboard::wrapper::template::{Templates, Vars, join};
use url::Url;

const ENDPOINT: &str = "https://api.example.com/base";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 == 0 {
        any_template(mode, rest);
    } else {
        fixed_templates(rest);
    }
});

fn vars<'a>(input: &'a Json, settings: &'a Settings) -> Vars<'a> {
    Vars {
        input,
        settings,
        connection: "fuzz",
        endpoint: ENDPOINT,
        callout_id: "0190a4b2-7c3d-7e5f-8a9b-0c1d2e3f4a5b",
        attempt: 1,
        idempotency_key: "0190a4b2-7c3d-7e5f-8a9b-0c1d2e3f4a5b",
    }
}

fn settings() -> Settings {
    Settings::from([("region".to_string(), json!("eu-west-1"))])
}

fn any_template(mode: u8, rest: &[u8]) {
    let (source, input) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let input = serde_json::from_slice::<Json>(input)
        .unwrap_or_else(|_| json!({ "id": String::from_utf8_lossy(input) }));
    let none: &[(String, String)] = &[];
    let one = [("x".to_string(), source.to_string())];
    let body_string = json!({ "v": source });
    let body_json: Option<Json> = serde_json::from_str(source).ok();
    let mut templates = Templates::new();
    let compiled = match mode % 5 {
        0 => templates.request("f", source, none, none, None),
        1 => templates.request("f", "/p", &one, none, None),
        2 => templates.request("f", "/p", none, &one, None),
        3 => templates.request("f", "/p", none, none, Some(&body_string)),
        _ => match &body_json {
            Some(body) => templates.request("f", "/p", none, none, Some(body)),
            None => return,
        },
    };
    let Ok(request) = compiled else {
        return;
    };
    let settings = settings();
    let Ok(rendered) = templates.render(&request, &vars(&input, &settings)) else {
        return;
    };
    for (name, value) in &rendered.headers {
        assert!(
            !value.contains(['\r', '\n']),
            "header {name} has a line break: {value:?}"
        );
    }
    if let Ok(endpoint) = Url::parse(ENDPOINT)
        && let Ok(url) = join(&endpoint, &rendered.path)
    {
        assert_eq!(url.host_str(), endpoint.host_str());
        assert_eq!(
            url.port_or_known_default(),
            endpoint.port_or_known_default()
        );
        assert_eq!(url.scheme(), endpoint.scheme());
    }
}

fn fixed_templates(rest: &[u8]) {
    let value = serde_json::from_slice::<Json>(rest)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(rest).into_owned()));
    let input = json!({ "id": value });
    let query = [("q".to_string(), "{{ input.id }}".to_string())];
    let headers = [("X-Id".to_string(), "id {{ input.id }}".to_string())];
    let body = json!({ "v": "{{ input.id }}", "w": "a {{ input.id }} b" });
    let mut templates = Templates::new();
    let request = templates
        .request(
            "f",
            "/items/{{ input.id }}/x",
            &query,
            &headers,
            Some(&body),
        )
        .expect("the fixed templates compile");
    let settings = settings();
    let Ok(rendered) = templates.render(&request, &vars(&input, &settings)) else {
        return;
    };
    // The printed value is one path segment: no `/`, `?`, `#` or `%`-less dot segment.
    let segments: Vec<&str> = rendered.path.split('/').collect();
    assert_eq!(segments.len(), 4, "path {:?}", rendered.path);
    assert_eq!((segments[0], segments[1], segments[3]), ("", "items", "x"));
    let printed = segments[2];
    assert!(!printed.is_empty());
    assert!(
        printed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "unencoded byte in path segment {printed:?}"
    );
    assert!(printed != "." && printed != "..");
    let endpoint = Url::parse(ENDPOINT).expect("the endpoint parses");
    if let Ok(url) = join(&endpoint, &rendered.path) {
        assert_eq!(url.host_str(), Some("api.example.com"));
        assert_eq!(url.path(), format!("/base{}", rendered.path));
        assert_eq!(url.query(), None);
        assert_eq!(url.fragment(), None);
    } else {
        // Only a dot segment, in some spelling, is refused.
        let lower = printed.to_ascii_lowercase();
        assert!(
            matches!(lower.as_str(), "%2e" | "%2e%2e"),
            "join refused {printed:?}"
        );
    }
    for (_, value) in &rendered.headers {
        assert!(
            !value.contains(['\r', '\n']),
            "header has a line break: {value:?}"
        );
    }
    if let Some(body) = &rendered.body {
        let kept = &body["v"];
        assert!(
            same_value(kept, &value),
            "body kept {kept} for input {value}"
        );
        assert!(body["w"].is_string());
    }
}

/// JSON equality, numbers compared by value (an integral float may come back as an integer).
fn same_value(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Json::Array(xs), Json::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_value(x, y))
        }
        (Json::Object(xs), Json::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| same_value(x, y)))
        }
        _ => a == b,
    }
}
