//! The outbound network policy: which addresses a connection may reach.
//!
//! Unless a connection sets `allow_private_network: true`, no request reaches a loopback,
//! private, link-local, shared (CGNAT), reserved or multicast address, however it is spelt.
//! Three gates enforce this, and together they leave no check-then-connect gap:
//!
//! - host names go through [`GuardedResolver`], which drops forbidden addresses; reqwest
//!   connects only to the addresses the resolver returned, so DNS rebinding between a check
//!   and the connect is impossible;
//! - IP-literal hosts skip the resolver, so callers check them with [`check_url`] before
//!   sending (the `url` crate has already turned decimal, octal and hex IPv4 spellings into an
//!   address);
//! - redirects are followed at most [`MAX_REDIRECTS`] times by [`redirect_policy`], which
//!   refuses a forbidden IP-literal target (a named target meets the resolver again).
//!
//! [`http_client`] builds the one client per connection with all of it, and never uses a
//! proxy from the environment (a proxy would resolve names itself, past the resolver).
//!
//! `s3` connections talk through the AWS SDK, whose HTTP client is not reqwest's:
//! [`sdk_http_client`] builds it, per connection, with the same [`GuardedResolver`] (hyper
//! likewise connects only to the addresses it returned, and skips it for IP literals, which
//! the S3 wrapper and the files bucket check with [`check_url`]) and no proxy. The SDK follows
//! no redirect (a `301` or `307` answer is an error), so there is no third gate to add;
//! [`RefusedIsFinal`] keeps the SDK from retrying a refusal.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::metadata::Connection;
use crate::metadata::config::ApiKeyLocation;
use crate::metadata::model::Auth;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// How much later than the attempt's deadline the client's own timeout fires. The deadline
/// (`wrapper::http::Upstream::send`) ends an attempt and says how far it got; the client's
/// timeout only backs it up, and firing at the same instant it would win the race with a
/// vaguer message.
const BACKSTOP_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// Whether the policy refuses `ip` for a connection that does not allow private networks.
///
/// ```
/// use std::net::IpAddr;
/// use switchboard::wrapper::net::is_forbidden;
///
/// let ip = |s: &str| s.parse::<IpAddr>().unwrap();
/// assert!(is_forbidden(ip("169.254.169.254")));
/// assert!(is_forbidden(ip("::ffff:127.0.0.1")));
/// assert!(!is_forbidden(ip("93.184.216.34")));
/// ```
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", 0.0.0.0/8, with the unspecified address
        || a == 10 // private, RFC 1918
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), 100.64/10
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local, with cloud metadata 169.254.169.254
        || (a == 172 && (16..32).contains(&b)) // private, RFC 1918
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || (a == 192 && b == 168) // private, RFC 1918
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || a >= 224 // multicast 224/4, reserved 240/4 and broadcast 255.255.255.255
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d carry an IPv4 address.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return is_forbidden_v4(embedded(s[6], s[7]));
    }
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765) too.
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return is_forbidden_v4(embedded(s[6], s[7]));
    }
    // NAT64, 64:ff9b::/96, carries an IPv4 address; the local-use 64:ff9b:1::/48 is private.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_forbidden_v4(embedded(s[6], s[7]));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        return true;
    }
    // 6to4, 2002::/16, carries an IPv4 address in the next 32 bits.
    if s[0] == 0x2002 {
        return is_forbidden_v4(embedded(s[1], s[2]));
    }
    // Teredo, 2001::/32: the server's IPv4 address, then the client's, inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        return is_forbidden_v4(embedded(s[2], s[3])) || is_forbidden_v4(embedded(!s[6], !s[7]));
    }
    (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7, with AWS metadata fd00:ec2::254
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still private)
        || s[0] >> 8 == 0xff // multicast ff00::/8
        || s[..4] == [0x100, 0, 0, 0] // discard-only 100::/64
}

/// Why the policy refused a request. Found in a reqwest error's source chain, it makes the
/// attempt fail with `ErrorKind::Refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    message: String,
}

impl Refused {
    /// `what` is the refused thing (`host `x` is a private or reserved address`).
    fn new(what: String) -> Refused {
        Refused {
            message: format!(
                "{what}; private addresses are refused unless the connection sets `allow_private_network: true`"
            ),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Refused {}

/// Checks a URL whose host is an IP literal (such hosts skip the resolver). Names pass: the
/// resolver checks them.
///
/// # Errors
/// The host is a forbidden address and `allow_private` is off.
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), Refused> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(name)) => match address_in_opaque_host(url.scheme(), name) {
            Some(ip) => ip,
            None => return Ok(()),
        },
        None => return Ok(()),
    };
    if is_forbidden(ip) {
        let host = url.host_str().unwrap_or_default();
        return Err(Refused::new(format!(
            "host `{host}` is a private or reserved address"
        )));
    }
    Ok(())
}

/// The address a host of a scheme the URL parser does not know (a plugin's `grpc://…`) spells,
/// read as a web URL's host would be: the parser leaves such hosts as text, so
/// `grpc://169.254.169.254` or `tcp://0x7f000001` would otherwise pass as names.
fn address_in_opaque_host(scheme: &str, host: &str) -> Option<IpAddr> {
    if matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp" | "file") {
        return None; // The parser already read any address in it.
    }
    match Url::parse(&format!("http://{host}/")).ok()?.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    }
}

/// Resolves names with the system resolver (`tokio::net::lookup_host`) and, unless the
/// connection allows private networks, keeps only allowed addresses. The resolver of both
/// HTTP clients: reqwest's ([`Resolve`]) and the AWS SDK's ([`ResolveDns`]).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl GuardedResolver {
    /// The allowed addresses of `host` (with port 0: the client sets the port).
    ///
    /// # Errors
    /// The lookup failed, or no allowed address is left (a [`Refused`]).
    async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        filter_addresses(host, found, self.allow_private)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolver.lookup(&host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl ResolveDns for GuardedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let addrs = self.lookup(name).await.map_err(ResolveDnsError::new)?;
            Ok(addrs.iter().map(SocketAddr::ip).collect())
        })
    }
}

/// The addresses `host` resolved to that the policy allows.
///
/// # Errors
/// None is left: every address was forbidden (or there were none).
fn filter_addresses(
    host: &str,
    found: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>> {
    if allow_private {
        return Ok(found);
    }
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
        found.into_iter().partition(|a| !is_forbidden(a.ip()));
    if allowed.is_empty() {
        if refused.is_empty() {
            return Err(format!("host `{host}` has no address").into());
        }
        let ips: Vec<IpAddr> = refused.iter().map(SocketAddr::ip).collect();
        let list = ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Box::new(Refused::new(format!(
            "host `{host}` resolves only to private or reserved addresses ({list})"
        ))));
    }
    Ok(allowed)
}

/// Whether to follow a redirect to `next`; `previous` holds the URLs requested so far in the
/// chain, the first request's included. With `same_origin`, a redirect to another scheme, host
/// or port is refused: the connection sends a credential in a header that reqwest does not
/// strip across origins (it strips `Authorization` and cookies only), such as an api key.
///
/// # Errors
/// Too many redirects, a forbidden IP-literal target, or another origin when refused.
pub fn check_redirect(
    next: &Url,
    previous: &[Url],
    allow_private: bool,
    same_origin: bool,
) -> Result<(), Box<dyn StdError + Send + Sync>> {
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects").into());
    }
    if let Err(refused) = check_url(next, allow_private) {
        return Err(Box::new(Refused {
            message: format!("redirect refused: {refused}"),
        }));
    }
    if same_origin
        && let Some(last) = previous.last()
        && (next.scheme() != last.scheme()
            || next.host() != last.host()
            || next.port_or_known_default() != last.port_or_known_default())
    {
        let host = next.host_str().unwrap_or_default();
        return Err(Box::new(Refused {
            message: format!(
                "redirect refused: it leads to another origin (`{host}`), which would receive the connection's api key header"
            ),
        }));
    }
    Ok(())
}

/// The redirect policy: at most [`MAX_REDIRECTS`], never to a forbidden IP literal, and with
/// `same_origin` never to another origin.
pub fn redirect_policy(allow_private: bool, same_origin: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match check_redirect(
            attempt.url(),
            attempt.previous(),
            allow_private,
            same_origin,
        ) {
            Ok(()) => attempt.follow(),
            Err(err) => attempt.error(err),
        }
    })
}

/// The HTTP client of one connection: its connect timeout (and its per-attempt timeout as a
/// backstop), the user agent, the guarded resolver, the redirect policy (same origin only when
/// an api key travels in a header), and no proxy.
///
/// # Errors
/// reqwest could not build the client (its TLS backend failed to start).
pub fn http_client(connection: &Connection) -> Result<reqwest::Client, String> {
    let allow_private = connection.allow_private_network;
    let same_origin = matches!(
        connection.auth,
        Auth::ApiKey {
            location: ApiKeyLocation::Header,
            ..
        }
    );
    client(connection, redirect_policy(allow_private, same_origin))
}

/// [`http_client`] that follows no redirect: for requests whose body holds credentials (an
/// OAuth2 token request), which a redirect could carry to another host.
///
/// # Errors
/// As [`http_client`].
pub fn http_client_without_redirects(connection: &Connection) -> Result<reqwest::Client, String> {
    client(connection, reqwest::redirect::Policy::none())
}

fn client(
    connection: &Connection,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, String> {
    let allow_private = connection.allow_private_network;
    reqwest::Client::builder()
        .connect_timeout(connection.limits.connect_timeout)
        .timeout(connection.limits.timeout + BACKSTOP_MARGIN)
        .user_agent(USER_AGENT)
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .redirect(redirects)
        .no_proxy()
        .build()
        .map_err(|err| {
            format!(
                "connection `{}`: cannot build its HTTP client: {}",
                connection.name,
                root_cause(&err)
            )
        })
}

/// The AWS SDK's HTTP client for one `s3` connection: rustls (aws-lc, the SDK's default
/// provider, with the platform's root certificates), the [`GuardedResolver`], and no proxy
/// (the SDK's default client takes one from the environment, which would resolve names past
/// the resolver). Its timeouts come from the SDK's config, per connection.
pub fn sdk_http_client(allow_private: bool) -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_with_resolver(GuardedResolver { allow_private })
}

/// A retry classifier for the AWS SDK: a request the policy refused is not retried (the
/// SDK would otherwise retry the failed lookup as an I/O error, with backoff, only to be
/// refused again).
#[derive(Debug, Clone, Copy, Default)]
pub struct RefusedIsFinal;

impl ClassifyRetry for RefusedIsFinal {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let refused = match ctx.output_or_error() {
            Some(Err(err)) => err
                .as_connector_error()
                .is_some_and(|err| find_refused(err).is_some()),
            _ => false,
        };
        if refused {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "refused by the network policy"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// The innermost error of a chain: the one that says what happened (`Connection refused`),
/// without the outer layers' text, which may hold the request URL.
pub fn root_cause<'a>(err: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current
}

/// The [`Refused`] in an error's source chain, if the policy caused it.
pub fn find_refused<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn refused(url: &str) -> bool {
        check_url(&Url::parse(url).expect("a URL"), false).is_err()
    }

    #[test]
    fn private_and_reserved_ipv4_ranges_are_forbidden() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_forbidden(ip(addr)), "{addr} should be forbidden");
        }
    }

    #[test]
    fn public_ipv4_addresses_are_allowed() {
        for addr in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "169.255.0.1",
            "223.255.255.255",
        ] {
            assert!(!is_forbidden(ip(addr)), "{addr} should be allowed");
        }
    }

    #[test]
    fn private_and_reserved_ipv6_ranges_are_forbidden() {
        for addr in [
            "::",
            "::1",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "fc00::1",
            "fd00:ec2::254",
            "fdff:ffff::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(is_forbidden(ip(addr)), "{addr} should be forbidden");
        }
    }

    #[test]
    fn ipv6_carrying_a_forbidden_ipv4_is_forbidden() {
        for addr in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.1.2.3",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            // Teredo with server 127.0.0.1, client 8.8.8.8 (inverted: f7f7:f7f7).
            "2001:0:7f00:1::f7f7:f7f7",
            // Teredo with server 8.8.8.8, client 10.0.0.1 (inverted: f5ff:fffe).
            "2001:0:808:808::f5ff:fffe",
        ] {
            assert!(is_forbidden(ip(addr)), "{addr} should be forbidden");
        }
    }

    #[test]
    fn public_ipv6_addresses_are_allowed() {
        for addr in [
            "2606:2800:220:1:248:1893:25c8:1946",
            "2001:4860:4860::8888",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:0:808:808::f7f7:f7f7",
        ] {
            assert!(!is_forbidden(ip(addr)), "{addr} should be allowed");
        }
    }

    #[test]
    fn every_spelling_of_loopback_in_a_url_is_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:7f00:0001]/",
            "http://0/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
    }

    #[test]
    fn metadata_and_private_hosts_in_a_url_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.1.2.3/",
            "http://172.16.0.5:8080/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "https://0xa9fea9fe/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
    }

    #[test]
    fn addresses_in_hosts_of_other_schemes_are_refused_too() {
        for url in [
            "grpc://169.254.169.254:443",
            "tcp://10.0.0.5",
            "custom://0x7f000001/",
            "custom://0177.0.0.1/x",
            "grpc://[::1]:50051",
            "amqp://[::ffff:127.0.0.1]/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
        for url in ["grpc://ledger.example.com:443", "tcp://8.8.8.8:53"] {
            assert!(!refused(url), "{url} should pass the literal check");
        }
    }

    #[test]
    fn public_and_named_hosts_in_a_url_pass_the_literal_check() {
        for url in [
            "http://93.184.216.34/",
            "https://api.example.com/v1",
            "http://localhost:8080/", // a name: the resolver checks it
        ] {
            assert!(!refused(url), "{url} should pass");
        }
        let loopback = Url::parse("http://127.0.0.1/").expect("a URL");
        assert_eq!(check_url(&loopback, true), Ok(()));
    }

    #[test]
    fn refusal_names_the_host_and_the_setting() {
        let err = check_url(&Url::parse("http://2130706433/").expect("a URL"), false)
            .expect_err("loopback");
        assert_eq!(
            err.to_string(),
            "host `127.0.0.1` is a private or reserved address; private addresses are refused unless the connection sets `allow_private_network: true`"
        );
    }

    #[test]
    fn resolved_addresses_are_filtered_and_none_left_is_refused() {
        let sock = |s: &str| SocketAddr::new(ip(s), 0);
        let kept = filter_addresses(
            "mixed.example",
            vec![sock("10.0.0.1"), sock("93.184.216.34")],
            false,
        )
        .expect("one allowed");
        assert_eq!(kept, vec![sock("93.184.216.34")]);

        let err = filter_addresses(
            "internal.example",
            vec![sock("127.0.0.1"), sock("::1")],
            false,
        )
        .expect_err("all private");
        assert!(find_refused(err.as_ref()).is_some());
        assert_eq!(
            err.to_string(),
            "host `internal.example` resolves only to private or reserved addresses (127.0.0.1, ::1); private addresses are refused unless the connection sets `allow_private_network: true`"
        );

        let all = filter_addresses("internal.example", vec![sock("127.0.0.1")], true)
            .expect("allowed by the connection");
        assert_eq!(all, vec![sock("127.0.0.1")]);
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_unless_allowed() {
        let name: Name = "localhost".parse().expect("a name");
        let err = match (GuardedResolver {
            allow_private: false,
        })
        .resolve(name)
        .await
        {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        assert!(find_refused(err.as_ref()).is_some(), "{err}");
        let name: Name = "localhost".parse().expect("a name");
        let addrs: Vec<SocketAddr> = (GuardedResolver {
            allow_private: true,
        })
        .resolve(name)
        .await
        .expect("resolves")
        .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn the_sdk_resolver_refuses_localhost_unless_allowed() {
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let err = match guarded.resolve_dns("localhost").await {
            Ok(ips) => panic!("resolved to {ips:?}"),
            Err(err) => err,
        };
        // The error hyper and the SDK wrap: the refusal stays findable in the chain.
        let refused = find_refused(&err).expect("a refusal in the chain");
        assert!(
            refused
                .message()
                .starts_with("host `localhost` resolves only to private or reserved addresses ("),
            "{refused}"
        );
        let allowed = GuardedResolver {
            allow_private: true,
        };
        let ips = allowed.resolve_dns("localhost").await.expect("resolves");
        assert!(!ips.is_empty());
        assert!(ips.iter().all(IpAddr::is_loopback), "{ips:?}");
    }

    #[test]
    fn a_refusal_is_not_retried_by_the_sdk_and_other_failures_are_left_to_it() {
        use aws_smithy_runtime_api::client::interceptors::context::{Error, Input, Output};
        use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
        use aws_smithy_runtime_api::client::result::ConnectorError;

        let classify = |connector: ConnectorError| {
            let mut ctx: InterceptorContext = InterceptorContext::new(Input::erase(()));
            ctx.set_output_or_error(Err(OrchestratorError::<Error>::connector(connector)));
            RefusedIsFinal.classify_retry(&ctx)
        };
        let sock = SocketAddr::new(ip("127.0.0.1"), 0);
        let refusal = filter_addresses("internal.example", vec![sock], false).expect_err("refused");
        let wrapped = ResolveDnsError::new(refusal);
        assert_eq!(
            classify(ConnectorError::io(Box::new(wrapped))),
            RetryAction::RetryForbidden
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            classify(ConnectorError::io(Box::new(reset))),
            RetryAction::NoActionIndicated
        );
        let mut ok: InterceptorContext = InterceptorContext::new(Input::erase(()));
        ok.set_output_or_error(Ok(Output::erase(())));
        assert_eq!(
            RefusedIsFinal.classify_retry(&ok),
            RetryAction::NoActionIndicated
        );
    }

    #[test]
    fn redirects_stop_after_five_and_at_forbidden_literals() {
        let url = |s: &str| Url::parse(s).expect("a URL");
        let chain = |n: usize| vec![url("https://api.example.com/start"); n];
        let next = url("https://api.example.com/next");
        assert!(check_redirect(&next, &chain(1), false, false).is_ok());
        assert!(check_redirect(&next, &chain(5), false, false).is_ok());
        let err = check_redirect(&next, &chain(6), false, false).expect_err("too many");
        assert_eq!(err.to_string(), "more than 5 redirects");
        let err = check_redirect(
            &url("http://169.254.169.254/latest"),
            &chain(1),
            false,
            false,
        )
        .expect_err("metadata address");
        assert!(find_refused(err.as_ref()).is_some());
        assert!(check_redirect(&url("http://127.0.0.1/"), &chain(1), true, false).is_ok());
    }

    #[test]
    fn redirects_keep_the_origin_when_an_api_key_header_would_follow() {
        let url = |s: &str| Url::parse(s).expect("a URL");
        let chain = vec![url("https://api.example.com/start")];
        let same = url("https://api.example.com/other?page=2");
        assert!(check_redirect(&same, &chain, false, true).is_ok());
        for other in [
            "https://evil.example/steal",
            "http://api.example.com/start",
            "https://api.example.com:8443/start",
        ] {
            let err = check_redirect(&url(other), &chain, false, true).expect_err(other);
            assert!(find_refused(err.as_ref()).is_some(), "{err}");
            assert!(
                check_redirect(&url(other), &chain, false, false).is_ok(),
                "{other}"
            );
        }
    }
}
