//! Pagination of REST functions: follows a list over its pages and collects their items.
//!
//! A [`Pager`] runs one attempt of a function with `pagination` (see
//! [`crate::metadata::model::Pagination`]): it sends the first request, reads the page's items
//! at the `items` pointer, finds the next page (a cursor sent back in the query, a next URL in
//! the body or in an RFC 8288 `Link` header, or a page number or an offset in the query) and
//! goes on until the list ends. Invariants:
//!
//! - every page is sent by the wrapper's own `send`, so credentials apply to each the same way;
//! - every page after the first waits for the connection's pace ([`switchboard_sdk::Pace`]),
//!   so each page counts against the connection's rate limit;
//! - all pages share the attempt's deadline, and their bodies together are bounded by
//!   [`MAX_BODY_BYTES`];
//! - at most `max_pages` pages are read, and a cursor or URL given a second time is an error,
//!   never a loop;
//! - a next URL is followed only to the endpoint's scheme, host and port (credentials never go
//!   elsewhere), and only where the network policy allows;
//! - a page with an error status ends the attempt with that page's error.
//!
//! The list ends at the first of: no cursor or next URL (absent, `null` or `""`), no
//! `rel="next"` link, a page without items, a page shorter than `page_size` (`page` and
//! `offset` only), `has_more` false, or `max_pages` (then the result is `truncated`).

use std::collections::HashMap;
use std::future::Future;

use reqwest::header::{HeaderMap, LINK};
use serde_json::Value;
use switchboard_sdk::{Call, CallError, ErrorKind, Outcome};
use url::Url;

use super::http::{Answer, EXCERPT_CHARS, MAX_BODY_BYTES, Upstream, excerpt, truncate};
use crate::metadata::model::{PageLink, Pagination};

#[cfg(test)]
mod tests;

/// What the pages of one attempt gave.
#[derive(Debug)]
pub(super) struct Collected {
    /// The items of every page, in order.
    pub items: Vec<Value>,
    /// Pages read.
    pub pages: u32,
    /// Whether `max_pages` stopped the reading while the last page announced more.
    pub truncated: bool,
    /// The last page's HTTP status.
    pub status: u16,
    /// Bytes of all the bodies read.
    pub bytes: u64,
}

/// Reads the pages of one function's list.
pub(super) struct Pager<'a> {
    pub upstream: &'a Upstream,
    /// The function's name within the connection.
    pub function: &'a str,
    pub pagination: &'a Pagination,
    /// An api key sent in the query, as (name, value): set on every next URL too.
    pub api_key: Option<(&'a str, &'a str)>,
}

/// Where the reading stands after a page.
enum Step {
    /// The list ends here.
    Done,
    /// The next page is at `url`. `given` is what the page gave to find it, which must not
    /// come twice: the cursor, or the URL (without the api key); `None` for a counter.
    Next { url: Url, given: Option<String> },
}

impl Pager<'_> {
    /// Reads every page, from the request `first` on, sending each with `send`.
    ///
    /// # Errors
    /// The outcome that ends the attempt: a page's transport failure or error status, a page
    /// that is not what the pagination expects, a repeated cursor or URL, a next URL to another
    /// origin, bodies over [`MAX_BODY_BYTES`] together, or the deadline passing while waiting
    /// for the connection's pace. Its byte count covers every page read.
    pub async fn collect<S, F>(
        &self,
        first: reqwest::Request,
        call: &Call<'_>,
        send: S,
    ) -> Result<Collected, Outcome>
    where
        S: Fn(reqwest::Request) -> F,
        F: Future<Output = Result<(Answer, u64), Outcome>>,
    {
        let fail = |error: CallError, status: Option<u16>, bytes: u64| {
            Err(Outcome::failure(error, status, bytes))
        };
        let p = self.pagination;
        let start = self.first_url(first.url());
        let mut template = first;
        *template.url_mut() = start.clone();
        let mut url = start.clone();
        let mut items = Vec::new();
        let mut bytes = 0u64;
        let mut offset = 0u64;
        let mut status = 0u16;
        // Each cursor with the page that gave it; each URL with the page read there.
        let mut given: HashMap<String, u32> = HashMap::new();
        if matches!(p.next, PageLink::NextUrl { .. } | PageLink::LinkHeader) {
            given.insert(self.url_key(&url), 1);
        }
        for page in 1..=p.max_pages {
            if page > 1 {
                let deadline = tokio::time::Instant::from_std(call.deadline);
                if tokio::time::timeout_at(deadline, call.pace.next_request())
                    .await
                    .is_err()
                {
                    let message = format!(
                        "the attempt's deadline passed while page {page} of {} waited for the connection's rate limit",
                        self.name()
                    );
                    return fail(
                        CallError::new(ErrorKind::Timeout, message),
                        Some(status),
                        bytes,
                    );
                }
            }
            let Some(mut request) = template.try_clone() else {
                let message = format!(
                    "the request of page {page} of {} cannot be repeated",
                    self.name()
                );
                return fail(CallError::new(ErrorKind::Internal, message), None, bytes);
            };
            *request.url_mut() = url.clone();
            let (answer, read) = match send(request).await {
                Ok(answer) => answer,
                Err(mut outcome) => {
                    outcome.response_bytes += bytes;
                    return Err(outcome);
                }
            };
            bytes += read;
            status = answer.status.as_u16();
            if ErrorKind::from_status(status).is_some() {
                return fail(self.upstream.status_error(&answer), Some(status), bytes);
            }
            if bytes > MAX_BODY_BYTES {
                let message = format!(
                    "the {page} pages of {} read so far exceed 10 MiB together; expected a shorter list, or a smaller `max_pages`",
                    self.name()
                );
                return fail(
                    CallError::new(ErrorKind::ResponseTooLarge, message),
                    Some(status),
                    bytes,
                );
            }
            let step = match self.page(&answer, page, &start, &url, &mut offset, &mut items) {
                Ok(step) => step,
                Err(error) => return fail(error, Some(status), bytes),
            };
            let Step::Next {
                url: next,
                given: key,
            } = step
            else {
                return Ok(Collected {
                    items,
                    pages: page,
                    truncated: false,
                    status,
                    bytes,
                });
            };
            if let Some(key) = key {
                if let Some(earlier) = given.get(&key) {
                    let error = self.repeated(&key, page, *earlier);
                    return fail(error, Some(status), bytes);
                }
                // A cursor is known by the page that gave it, a URL by the page read there.
                let by = match p.next {
                    PageLink::Cursor { .. } => page,
                    _ => page + 1,
                };
                given.insert(key, by);
            }
            url = next;
        }
        Ok(Collected {
            items,
            pages: p.max_pages,
            truncated: true,
            status,
            bytes,
        })
    }

    /// `connection.function`, quoted, for messages.
    fn name(&self) -> String {
        format!("`{}.{}`", self.upstream.connection, self.function)
    }

    /// The first request's URL: the function's own, with the first page's parameters.
    fn first_url(&self, url: &Url) -> Url {
        let p = self.pagination;
        let mut set: Vec<(&str, String)> = Vec::new();
        match &p.next {
            PageLink::Page { param, first } => set.push((param, first.to_string())),
            PageLink::Offset { param } => set.push((param, "0".to_string())),
            PageLink::Cursor { .. } | PageLink::NextUrl { .. } | PageLink::LinkHeader => {}
        }
        if let (Some(param), Some(size)) = (&p.limit_param, p.page_size) {
            set.push((param, size.to_string()));
        }
        with_params(url, &set)
    }

    /// Takes the items of one page into `items` and finds the next page. `start` is the first
    /// request's URL, `current` this page's; `offset` is the next page's offset.
    fn page(
        &self,
        answer: &Answer,
        page: u32,
        start: &Url,
        current: &Url,
        offset: &mut u64,
        items: &mut Vec<Value>,
    ) -> Result<Step, CallError> {
        let p = self.pagination;
        let invalid = |message: String| CallError::new(ErrorKind::InvalidResponse, message);
        let mut body: Value = serde_json::from_slice(&answer.body).map_err(|_| {
            let shown = excerpt(
                self.upstream
                    .redactor
                    .redact(&String::from_utf8_lossy(&answer.body))
                    .as_bytes(),
            );
            invalid(format!(
                "page {page} of {} is not JSON, so its items cannot be read: {}",
                self.name(),
                if shown.is_empty() {
                    "(an empty body)".to_string()
                } else {
                    shown
                }
            ))
        })?;
        let found = match body.pointer_mut(&p.items) {
            Some(Value::Array(list)) => std::mem::take(list),
            other => {
                return Err(invalid(format!(
                    "page {page} of {} has {} at `{}` where its list of items should be; expected an array there (`pagination.items`)",
                    self.name(),
                    describe(other.as_deref()),
                    p.items
                )));
            }
        };
        let count = found.len();
        items.extend(found);
        if let Some(pointer) = &p.has_more {
            match body.pointer(pointer) {
                Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => return Ok(Step::Done),
                other => {
                    return Err(invalid(format!(
                        "page {page} of {} has {} at `{pointer}` where `has_more` expects true or false",
                        self.name(),
                        describe(other)
                    )));
                }
            }
        }
        if count == 0 {
            return Ok(Step::Done);
        }
        let short = p
            .page_size
            .is_some_and(|size| count < usize::try_from(size).unwrap_or(usize::MAX));
        Ok(match &p.next {
            PageLink::Cursor { pointer, param } => {
                match self.text_at(&body, pointer, page, "a cursor")? {
                    None => Step::Done,
                    Some(cursor) => Step::Next {
                        url: with_params(start, &[(param, cursor.clone())]),
                        given: Some(cursor),
                    },
                }
            }
            PageLink::NextUrl { pointer } => {
                match self.text_at(&body, pointer, page, "the next page's URL")? {
                    None => Step::Done,
                    Some(link) => self.follow(current, &link, page)?,
                }
            }
            PageLink::LinkHeader => match next_link(&answer.headers) {
                None => Step::Done,
                Some(link) => self.follow(current, &link, page)?,
            },
            PageLink::Page { .. } | PageLink::Offset { .. } if short => Step::Done,
            PageLink::Page { param, first } => Step::Next {
                url: with_params(
                    start,
                    &[(param, first.saturating_add(u64::from(page)).to_string())],
                ),
                given: None,
            },
            PageLink::Offset { param } => {
                *offset = offset.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
                Step::Next {
                    url: with_params(start, &[(param, offset.to_string())]),
                    given: None,
                }
            }
        })
    }

    /// The text (or number) at `pointer` in a page's body; `None` when there is none (no
    /// value, `null` or `""`): the list ends.
    fn text_at(
        &self,
        body: &Value,
        pointer: &str,
        page: u32,
        what: &str,
    ) -> Result<Option<String>, CallError> {
        match body.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(CallError::new(
                ErrorKind::InvalidResponse,
                format!(
                    "page {page} of {} has {} at `{pointer}` where {what} should be; expected text, a number or null",
                    self.name(),
                    describe(Some(other))
                ),
            )),
        }
    }

    /// The step to the next page at `link`, resolved against the page's URL `current`: only on
    /// the endpoint's scheme, host and port, allowed by the network policy, with the api key.
    fn follow(&self, current: &Url, link: &str, page: u32) -> Result<Step, CallError> {
        let invalid = |message: String| CallError::new(ErrorKind::InvalidResponse, message);
        let shown = |text: &str| truncate(&self.upstream.redactor.redact(text), EXCERPT_CHARS);
        let mut next = current.join(link.trim()).map_err(|err| {
            invalid(format!(
                "page {page} of {} gives a next page URL that cannot be read ({err}): {}",
                self.name(),
                shown(link)
            ))
        })?;
        let endpoint = &self.upstream.endpoint;
        if !same_origin(&next, endpoint) {
            return Err(invalid(format!(
                "page {page} of {} links its next page at {}, another origin than the endpoint's ({}); only the endpoint's scheme, host and port are followed, so that credentials are not sent elsewhere",
                self.name(),
                shown(&next.origin().ascii_serialization()),
                endpoint.origin().ascii_serialization()
            )));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(invalid(format!(
                "page {page} of {} links its next page at a URL with credentials in it; expected a URL without them",
                self.name()
            )));
        }
        next.set_fragment(None);
        self.upstream.check_url(&next)?;
        let given = Some(self.url_key(&next));
        if let Some((name, value)) = self.api_key {
            next = with_params(&next, &[(name, value.to_string())]);
        }
        Ok(Step::Next { url: next, given })
    }

    /// The error of `page` giving again the cursor or URL `key` that page `earlier` gave
    /// (cursor) or was read at (URL).
    fn repeated(&self, key: &str, page: u32, earlier: u32) -> CallError {
        let shown = truncate(&self.upstream.redactor.redact(key), EXCERPT_CHARS);
        let message = match self.pagination.next {
            PageLink::Cursor { .. } => format!(
                "page {page} of {} gives the cursor \"{shown}\" again (page {earlier} gave it already); following it would loop, so the list is not read further",
                self.name()
            ),
            _ => format!(
                "page {page} of {} links its next page at {shown}, which was read already as page {earlier}; following it would loop, so the list is not read further",
                self.name()
            ),
        };
        CallError::new(ErrorKind::InvalidResponse, message)
    }

    /// A URL as known to find a repeat: without the api key, which this side adds.
    fn url_key(&self, url: &Url) -> String {
        match self.api_key {
            Some((name, _)) => without_param(url, name).to_string(),
            None => url.to_string(),
        }
    }
}

/// `url` with each of `params` set: in the place of its first earlier value (the later ones
/// dropped), or last; every other parameter is kept as it is, in order.
pub(super) fn with_params(url: &Url, params: &[(&str, String)]) -> Url {
    if params.is_empty() {
        return url.clone();
    }
    let mut placed = vec![false; params.len()];
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        match params.iter().position(|(name, _)| k == *name) {
            Some(i) if !placed[i] => {
                placed[i] = true;
                pairs.push((k.into_owned(), params[i].1.clone()));
            }
            Some(_) => {}
            None => pairs.push((k.into_owned(), v.into_owned())),
        }
    }
    for (i, (name, value)) in params.iter().enumerate() {
        if !placed[i] {
            pairs.push(((*name).to_string(), value.clone()));
        }
    }
    let mut out = url.clone();
    out.set_query(None);
    out.query_pairs_mut().extend_pairs(&pairs);
    out
}

/// `url` without the query parameter `name`.
fn without_param(url: &Url, name: &str) -> Url {
    if !url.query_pairs().any(|(k, _)| k == name) {
        return url.clone();
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.set_query(None);
    if !kept.is_empty() {
        out.query_pairs_mut().extend_pairs(&kept);
    }
    out
}

/// Whether `a` and `b` share scheme, host and port.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// What a JSON value is, for messages.
fn describe(value: Option<&Value>) -> &'static str {
    match value {
        None => "no value",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(_)) => "text",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

/// The target of the first link with the relation `next` in the `Link` headers (RFC 8288),
/// as written (to be resolved against the page's URL).
pub(super) fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(links)
        .find(|link| {
            link.rel.as_deref().is_some_and(|rel| {
                rel.split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            })
        })
        .map(|link| link.target)
}

/// One link of a `Link` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub target: String,
    /// The first `rel` parameter's value (RFC 8288 ignores the later ones).
    pub rel: Option<String>,
}

/// The links of one `Link` header value: `<target>; param=value; param="quoted", ...`.
/// Lenient: a link that cannot be read is skipped up to the next comma outside quotes, and an
/// unterminated one ends the list; it never fails.
pub(super) fn links(header: &str) -> Vec<Link> {
    let mut out = Vec::new();
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return out;
        }
        let Some(after) = rest.strip_prefix('<') else {
            rest = skip_link(rest);
            continue;
        };
        let Some(end) = after.find('>') else {
            return out;
        };
        let target = after[..end].trim().to_string();
        rest = &after[end + 1..];
        let mut rel = None;
        loop {
            rest = rest.trim_start();
            let Some(param) = rest.strip_prefix(';') else {
                break;
            };
            rest = param.trim_start();
            let name_end = rest
                .find(|c: char| matches!(c, '=' | ';' | ',') || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            rest = rest[name_end..].trim_start();
            let mut value = None;
            if let Some(v) = rest.strip_prefix('=') {
                let (read, after) = param_value(v.trim_start());
                value = Some(read);
                rest = after;
            }
            if name.eq_ignore_ascii_case("rel") && rel.is_none() {
                rel = Some(value.unwrap_or_default());
            }
        }
        out.push(Link { target, rel });
        rest = skip_link(rest);
    }
}

/// A parameter's value (a token or a quoted string with `\` escapes) and the text after it.
fn param_value(text: &str) -> (String, &str) {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text
            .find(|c: char| matches!(c, ';' | ',') || c.is_whitespace())
            .unwrap_or(text.len());
        return (text[..end].to_string(), &text[end..]);
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '"' => return (value, &quoted[i + 1..]),
            _ => value.push(c),
        }
    }
    (value, "")
}

/// The text after the next comma outside a quoted string (the rest of a link that cannot be
/// read, or what follows a link's parameters).
fn skip_link(text: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => return &text[i + 1..],
            _ => {}
        }
    }
    ""
}
