//! Fuzzes the outbound network policy (`wrapper::net`): `is_forbidden` on any address,
//! `check_url` on any parsed URL, and `check_redirect` on any chain.
//!
//! The first byte picks the mode. Addresses are checked against the standard library's own
//! classification: nothing it calls loopback, private, link-local, unique-local, multicast,
//! broadcast or unspecified is ever allowed, and an IPv4-mapped IPv6 address gets its IPv4
//! address's answer. A URL whose host is a forbidden IP literal is refused, also when a
//! scheme the URL parser does not know keeps it as text, and an `http`/`https` host left to
//! the resolver is a name, not an address in some spelling. A
//! redirect allowed with `same_origin` stays on the last URL's origin.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use switchboard::wrapper::net::{MAX_REDIRECTS, check_redirect, check_url, is_forbidden};
use url::{Host, Url};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => address(rest),
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                url(text);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                redirect(mode, text);
            }
        }
    }
});

fn address(bytes: &[u8]) {
    if let Some(octets) = bytes.first_chunk::<16>() {
        let v6 = Ipv6Addr::from(*octets);
        let forbidden = is_forbidden(IpAddr::V6(v6));
        if v6.is_loopback()
            || v6.is_unspecified()
            || v6.is_multicast()
            || v6.is_unique_local()
            || v6.is_unicast_link_local()
        {
            assert!(forbidden, "{v6} is allowed");
        }
        if let Some(v4) = v6.to_ipv4_mapped() {
            assert_eq!(
                forbidden,
                is_forbidden(IpAddr::V4(v4)),
                "{v6} and {v4} differ"
            );
        }
    }
    if let Some(octets) = bytes.first_chunk::<4>() {
        let v4 = Ipv4Addr::from(*octets);
        let forbidden = is_forbidden(IpAddr::V4(v4));
        if v4.is_loopback()
            || v4.is_private()
            || v4.is_link_local()
            || v4.is_multicast()
            || v4.is_broadcast()
            || v4.is_unspecified()
        {
            assert!(forbidden, "{v4} is allowed");
        }
        assert_eq!(forbidden, is_forbidden(IpAddr::V6(v4.to_ipv6_mapped())));
    }
}

fn url(text: &str) {
    let Ok(url) = Url::parse(text) else {
        return;
    };
    assert!(check_url(&url, true).is_ok(), "allow_private allows all");
    let allowed = check_url(&url, false).is_ok();
    match url.host() {
        Some(Host::Ipv4(v4)) => assert_eq!(allowed, !is_forbidden(IpAddr::V4(v4)), "{url}"),
        Some(Host::Ipv6(v6)) => assert_eq!(allowed, !is_forbidden(IpAddr::V6(v6)), "{url}"),
        Some(Host::Domain(name)) if matches!(url.scheme(), "http" | "https") => {
            assert!(allowed);
            // The resolver would read a name that is an address in disguise as that address,
            // past this check: the URL parser must already have turned it into an IP host.
            assert!(name.parse::<IpAddr>().is_err(), "{name} is an address");
            // The URL Standard's "ends in a number" drops one trailing dot, not more.
            let trimmed = name.strip_suffix('.').unwrap_or(name);
            let last = trimmed.rsplit('.').next().unwrap_or_default();
            let numeric = !last.is_empty()
                && (last.bytes().all(|b| b.is_ascii_digit())
                    || last
                        .strip_prefix("0x")
                        .or_else(|| last.strip_prefix("0X"))
                        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
            assert!(!numeric, "{name} ends in a number but is not an IP host");
        }
        Some(Host::Domain(name)) => {
            // A scheme the URL parser does not know keeps its host as text; an address
            // spelt in it is checked as a web URL's host would be read.
            let web = Url::parse(&format!("http://{name}/")).ok();
            match web.as_ref().and_then(Url::host) {
                Some(Host::Ipv4(v4)) => assert_eq!(allowed, !is_forbidden(IpAddr::V4(v4)), "{url}"),
                Some(Host::Ipv6(v6)) => assert_eq!(allowed, !is_forbidden(IpAddr::V6(v6)), "{url}"),
                _ => assert!(allowed, "{url}"),
            }
        }
        None => assert!(allowed),
    }
}

fn redirect(mode: u8, text: &str) {
    let allow_private = mode & 0x10 != 0;
    let same_origin = mode & 0x20 != 0;
    let mut urls: Vec<Url> = text.lines().filter_map(|l| Url::parse(l).ok()).collect();
    let Some(next) = urls.pop() else {
        return;
    };
    let result = check_redirect(&next, &urls, allow_private, same_origin);
    if urls.len() > MAX_REDIRECTS {
        assert!(
            result.is_err(),
            "more than {MAX_REDIRECTS} redirects followed"
        );
        return;
    }
    if check_url(&next, allow_private).is_err() {
        assert!(result.is_err(), "redirect to forbidden {next} followed");
    }
    if result.is_ok()
        && same_origin
        && let Some(last) = urls.last()
    {
        assert_eq!(next.scheme(), last.scheme());
        assert_eq!(next.host(), last.host());
        assert_eq!(next.port_or_known_default(), last.port_or_known_default());
    }
}
