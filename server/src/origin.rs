//! The Origin check on the WebSocket upgrade. A browser lets any page open a WebSocket to any server and
//! says which page did in `Origin`; without this check a hostile page could drive its visitors' browsers
//! into Herald (cross-site WebSocket hijacking), from wherever they sit on the network. The same check
//! guards the one GET that creates a job (`/factorial?no=`), which any page can send with an `<img>`.

use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Uri};

/// A web origin: scheme, host and port, as browsers send it in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]`; anything else (a path, credentials, another
    /// scheme, the opaque origin `null`) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let uri: Uri = text.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = default_port(&scheme)?;
        if uri
            .path_and_query()
            .is_some_and(|pq| !matches!(pq.as_str(), "" | "/"))
        {
            return None;
        }
        let authority = uri.authority()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(Self {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            scheme,
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Which pages may open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Pages of the host the request is addressed to (the Origin's scheme, host and port equal the
    /// request's): the page Herald serves itself, also behind a proxy that passes the Host header on
    /// (and, when it speaks TLS, says so in `X-Forwarded-Proto`).
    SameHost,
    /// Pages of these origins only.
    AllowList(Vec<Origin>),
}

impl OriginPolicy {
    /// The policy of --allowed-origins: empty means [`OriginPolicy::SameHost`].
    pub fn new(allowed: Vec<Origin>) -> Self {
        if allowed.is_empty() {
            Self::SameHost
        } else {
            Self::AllowList(allowed)
        }
    }

    /// Whether a request with these headers may open a socket. A request without `Origin` does not come
    /// from a page (browsers always send it on a WebSocket upgrade) and passes: non-browser clients are
    /// kept out by authentication, not by this check.
    pub fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Some(value) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Some(origin) = value.to_str().ok().and_then(Origin::parse) else {
            return false;
        };
        match self {
            Self::AllowList(allowed) => allowed.contains(&origin),
            Self::SameHost => {
                // HTTP/2 carries the host in the request's authority instead of a Host header.
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
                let Some(authority) = host.and_then(|h| h.parse::<Authority>().ok()) else {
                    return false;
                };
                let scheme = request_scheme(headers);
                let port = authority.port_u16().or_else(|| default_port(scheme));
                origin.scheme == scheme
                    && authority.host().eq_ignore_ascii_case(&origin.host)
                    && port == Some(origin.port)
            }
        }
    }

    /// Whether a request that creates a job may: not when its `Origin` would be refused on the
    /// WebSocket, nor when the browser says it comes from another site (`Sec-Fetch-Site: cross-site`,
    /// sent even where `Origin` is not, as on an `<img>`). Programs send neither, and pass.
    pub fn allows_job_request(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let cross_site = headers
            .get(SEC_FETCH_SITE)
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        !cross_site && self.allows(headers, uri)
    }
}

/// The header in which browsers say how a request's page relates to its target.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The scheme a request came in with: Herald itself speaks plain HTTP; a TLS proxy in front says
/// `https` in `X-Forwarded-Proto`. Trusted as it stands: a page cannot set it on a WebSocket upgrade
/// or on a request that needs no preflight, and other clients are not what this check keeps out.
fn request_scheme(headers: &HeaderMap) -> &'static str {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    match forwarded {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    /// A request that came through a TLS proxy.
    fn behind_tls(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = request(origin, host);
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers
    }

    #[test]
    fn same_host_compares_host_and_port() {
        let policy = OriginPolicy::new(Vec::new());
        let uri = Uri::from_static("/ws");
        for (origin, host, allowed) in [
            (None, "127.0.0.1:8080", true),
            (Some("http://127.0.0.1:8080"), "127.0.0.1:8080", true),
            (Some("http://LOCALHOST:8080"), "localhost:8080", true),
            (Some("http://example.com"), "example.com", true),
            (Some("http://[::1]:8080"), "[::1]:8080", true),
            (Some("http://127.0.0.1:8081"), "127.0.0.1:8080", false),
            (Some("http://evil.example"), "127.0.0.1:8080", false),
            (Some("null"), "127.0.0.1:8080", false),
            // The scheme counts: an https page is not the http server's.
            (Some("https://127.0.0.1:8080"), "127.0.0.1:8080", false),
            (Some("https://example.com"), "example.com", false),
        ] {
            assert_eq!(
                policy.allows(&request(origin, host), &uri),
                allowed,
                "{origin:?} to {host}"
            );
        }
        // Behind a TLS proxy that says so.
        for (origin, host, allowed) in [
            ("https://example.com", "example.com", true),
            ("https://example.com", "example.com:443", true),
            ("https://example.com", "example.com:80", false),
            ("http://example.com", "example.com", false),
        ] {
            assert_eq!(
                policy.allows(&behind_tls(Some(origin), host), &uri),
                allowed,
                "{origin} to {host} behind TLS"
            );
        }
    }

    #[test]
    fn job_requests_from_other_sites_are_refused() {
        let policy = OriginPolicy::new(Vec::new());
        let uri = Uri::from_static("/factorial?no=5");
        let host = "127.0.0.1:8080";
        assert!(
            policy.allows_job_request(&request(None, host), &uri),
            "curl"
        );
        assert!(policy.allows_job_request(&request(Some("http://127.0.0.1:8080"), host), &uri));
        assert!(!policy.allows_job_request(&request(Some("http://evil.example"), host), &uri));
        for (site, allowed) in [
            ("cross-site", false),
            ("Cross-Site", false),
            ("same-origin", true),
            ("same-site", true),
            ("none", true),
        ] {
            let mut headers = request(None, host);
            headers.insert(SEC_FETCH_SITE, site.parse().unwrap());
            assert_eq!(policy.allows_job_request(&headers, &uri), allowed, "{site}");
        }
    }

    #[test]
    fn an_allow_list_takes_only_its_origins() {
        let allowed = ["https://app.example.com", "http://localhost:3000"]
            .into_iter()
            .map(|o| Origin::parse(o).unwrap())
            .collect();
        let policy = OriginPolicy::new(allowed);
        let uri = Uri::from_static("/ws");
        let host = "herald.example.com";
        assert!(policy.allows(&request(Some("https://APP.example.com:443"), host), &uri));
        assert!(policy.allows(&request(Some("http://localhost:3000"), host), &uri));
        assert!(policy.allows(&request(None, host), &uri));
        assert!(!policy.allows(&request(Some("http://app.example.com"), host), &uri));
        assert!(!policy.allows(&request(Some("https://herald.example.com"), host), &uri));
    }

    #[test]
    fn only_plain_origins_parse() {
        assert!(Origin::parse("https://example.com:8443").is_some());
        assert!(Origin::parse("https://example.com/").is_some());
        for bad in [
            "example.com",
            "null",
            "ftp://example.com",
            "https://example.com/app",
            "https://user@example.com",
            "https://example.com?x=1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }
}
