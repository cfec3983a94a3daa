//! The Host check: which names a request may address this server by. A page on a DNS-rebinding name
//! (`attacker.example`, made to resolve to 127.0.0.1) reaches a local server with its own name in
//! `Host`, and its `Origin` matches that `Host`: only the name tells the two apart. So a server listening
//! on a loopback address answers loopback names only, unless `--allowed-hosts` names others.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// The one route open whatever the Host: orchestrators and load balancers probe it by address.
const OPEN_PATH: &str = "/healthz";

/// One entry of `--allowed-hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// `*`: any name.
    Any,
    /// A host name or address, lower-case, and the port it must come with (`None`: any port).
    Name { host: String, port: Option<u16> },
}

impl AllowedHost {
    /// Parses `*`, `name`, `name:port`, `[v6]` or `[v6]:port`; a scheme, path or credentials is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "*" {
            return Some(Self::Any);
        }
        let authority: Authority = text.parse().ok()?;
        if authority.as_str() != text || text.contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(Self::Name {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            Self::Any => true,
            Self::Name {
                host: name,
                port: p,
            } => name.eq_ignore_ascii_case(host) && (p.is_none() || *p == port),
        }
    }
}

/// Which `Host` names the server answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any name: a server on a non-loopback address without `--allowed-hosts`.
    Any,
    /// Loopback names (`localhost`, `127.x.x.x`, `[::1]`, with any port or none) and these.
    Only(Vec<AllowedHost>),
}

impl HostPolicy {
    /// The policy for a server listening on `listen` with `--allowed-hosts` `allowed`.
    pub fn new(listen: IpAddr, allowed: Vec<AllowedHost>) -> Self {
        if allowed.contains(&AllowedHost::Any) || (allowed.is_empty() && !listen.is_loopback()) {
            Self::Any
        } else {
            Self::Only(allowed)
        }
    }

    /// Whether a request with these headers (and, over HTTP/2, this URI's authority) is addressed to
    /// a name this server answers to. A request without a host at all (HTTP/1.0) is not from a browser,
    /// and passes.
    pub fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Self::Only(allowed) = self else {
            return true;
        };
        let host = match headers.get(header::HOST) {
            Some(value) => match value
                .to_str()
                .ok()
                .and_then(|h| h.parse::<Authority>().ok())
            {
                Some(authority) => authority,
                None => return false,
            },
            None => match uri.authority() {
                Some(authority) => authority.clone(),
                None => return true,
            },
        };
        let name = host.host();
        is_loopback_name(name) || allowed.iter().any(|a| a.matches(name, host.port_u16()))
    }
}

/// `localhost`, an IPv4 loopback address or `[::1]`.
fn is_loopback_name(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: answers 403 to a request addressed to a name the server does not answer to, on every
/// route but `/healthz`.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() != OPEN_PATH && !state.hosts.allows(request.headers(), request.uri()) {
        return (
            StatusCode::FORBIDDEN,
            "this server does not answer to that host name (see --allowed-hosts)",
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        headers
    }

    fn allowed(entries: &[&str]) -> Vec<AllowedHost> {
        entries
            .iter()
            .map(|e| AllowedHost::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn a_loopback_server_answers_loopback_names_only() {
        let policy = HostPolicy::new([127, 0, 0, 1].into(), Vec::new());
        let uri = Uri::from_static("/ws");
        for (host, ok) in [
            ("localhost:8080", true),
            ("LOCALHOST", true),
            ("127.0.0.1:8080", true),
            ("127.0.0.2", true),
            ("[::1]:8080", true),
            ("attacker.example:8080", false),
            ("attacker.example", false),
            ("localhost.attacker.example", false),
            ("10.0.0.1:8080", false),
        ] {
            assert_eq!(policy.allows(&with_host(host), &uri), ok, "{host}");
        }
        assert!(policy.allows(&HeaderMap::new(), &uri), "no Host: HTTP/1.0");
        let v6 = HostPolicy::new("::1".parse().unwrap(), Vec::new());
        assert!(!v6.allows(&with_host("attacker.example"), &uri));
    }

    #[test]
    fn allowed_hosts_add_names_and_ports() {
        let policy = HostPolicy::new(
            [127, 0, 0, 1].into(),
            allowed(&["herald.example.com", "app.example.com:8443"]),
        );
        let uri = Uri::from_static("/");
        assert!(policy.allows(&with_host("HERALD.example.com"), &uri));
        assert!(policy.allows(&with_host("herald.example.com:9000"), &uri));
        assert!(policy.allows(&with_host("app.example.com:8443"), &uri));
        assert!(!policy.allows(&with_host("app.example.com"), &uri));
        assert!(!policy.allows(&with_host("attacker.example"), &uri));
        assert!(policy.allows(&with_host("localhost:8080"), &uri));
    }

    #[test]
    fn other_addresses_answer_any_name_unless_told_otherwise() {
        let uri = Uri::from_static("/");
        let open = HostPolicy::new([0, 0, 0, 0].into(), Vec::new());
        assert_eq!(open, HostPolicy::Any);
        assert!(open.allows(&with_host("anything.example"), &uri));
        let listed = HostPolicy::new([0, 0, 0, 0].into(), allowed(&["herald.example.com"]));
        assert!(!listed.allows(&with_host("anything.example"), &uri));
        let star = HostPolicy::new([127, 0, 0, 1].into(), allowed(&["*"]));
        assert_eq!(star, HostPolicy::Any);
    }

    #[test]
    fn only_names_parse() {
        for bad in [
            "http://example.com",
            "example.com/path",
            "user@example.com",
            "",
            "exa mple",
        ] {
            assert_eq!(AllowedHost::parse(bad), None, "{bad}");
        }
        assert!(AllowedHost::parse("[::1]:8080").is_some());
    }
}
