//! The server under test: its URLs, and the rule that load goes only to this machine (loopback).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// A `--url` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("--url {url:?} is not a valid URL: {reason}")]
    Malformed {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A scheme other than plain HTTP or WebSocket.
    #[error("--url must start with http:// or ws:// (plain HTTP on loopback), not {0}://")]
    Scheme(String),
    /// The host is not on this machine.
    #[error(
        "--url host {0:?} is not a loopback address: load goes only to this machine \
         (127.0.0.0/8, ::1 or localhost)"
    )]
    NotLoopback(String),
    /// A host name that resolves to an address off this machine.
    #[error("--url host {host:?} resolves to {ip}, which is not a loopback address")]
    ResolvesElsewhere {
        /// The name given.
        host: String,
        /// The address it resolved to.
        ip: IpAddr,
    },
    /// The host name does not resolve.
    #[error("cannot resolve --url host {host:?}: {error}")]
    Resolve {
        /// The name given.
        host: String,
        /// What the resolver said.
        error: std::io::Error,
    },
}

/// The URLs of a server on a loopback host, checked but not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Base of the HTTP API, ending in `/` (`http://127.0.0.1:8080/`).
    pub http: Url,
    /// The WebSocket endpoint (`ws://127.0.0.1:8080/ws`).
    pub ws: Url,
    /// Host as given (a name or an address literal without brackets).
    pub host: String,
    /// Port (80 when the URL has none).
    pub port: u16,
}

impl Endpoints {
    /// Checks `raw` (an `http://` base URL, or the `ws://…/ws` endpoint) and derives both URLs from it.
    ///
    /// Refuses any host that is not 127.0.0.0/8, ::1 or `localhost`: this tool sends load, and load goes
    /// only to this machine.
    pub fn parse(raw: &str) -> Result<Self, TargetError> {
        let url = Url::parse(raw.trim()).map_err(|e| TargetError::Malformed {
            url: raw.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "ws") {
            return Err(TargetError::Scheme(url.scheme().to_owned()));
        }
        let host = match url.host() {
            None => {
                return Err(TargetError::Malformed {
                    url: raw.to_owned(),
                    reason: "no host".into(),
                })
            }
            Some(Host::Ipv4(ip)) if ip.is_loopback() => ip.to_string(),
            Some(Host::Ipv6(ip)) if ip.is_loopback() => ip.to_string(),
            // Special schemes lower-case host names when parsing.
            Some(Host::Domain("localhost")) => "localhost".to_owned(),
            Some(other) => return Err(TargetError::NotLoopback(other.to_string())),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        // A server behind a path prefix keeps it; a URL naming the WebSocket itself loses its `/ws`.
        let path = url.path().trim_end_matches('/');
        let base = path.strip_suffix("/ws").unwrap_or(path);
        let mut http = url.clone();
        http.set_query(None);
        http.set_fragment(None);
        let authority = |scheme: &str| -> Result<Url, TargetError> {
            let mut u = http.clone();
            u.set_scheme(scheme).map_err(|()| TargetError::Malformed {
                url: raw.to_owned(),
                reason: format!("cannot use scheme {scheme}"),
            })?;
            Ok(u)
        };
        let mut http = authority("http")?;
        http.set_path(&format!("{base}/"));
        let mut ws = authority("ws")?;
        ws.set_path(&format!("{base}/ws"));
        Ok(Self {
            http,
            ws,
            host,
            port,
        })
    }

    /// Resolves the host once, so that every connection of the run goes to the same checked address.
    pub async fn resolve(self) -> Result<Target, TargetError> {
        let host = self.host.clone();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), self.port))
            .await
            .map_err(|error| TargetError::Resolve {
                host: host.clone(),
                error,
            })?
            .collect();
        let addr = pick_loopback(&host, &addrs)?;
        Ok(Target {
            endpoints: self,
            addr,
        })
    }
}

/// Picks the address to use among what a host resolved to; every one of them must be loopback, so that a
/// doctored hosts file cannot point the load elsewhere.
fn pick_loopback(host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, TargetError> {
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(TargetError::ResolvesElsewhere {
            host: host.to_owned(),
            ip: bad.ip(),
        });
    }
    // Servers here listen on 127.0.0.1 by default: prefer IPv4 when a name gives both.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| TargetError::Resolve {
            host: host.to_owned(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })
}

/// A checked server address: its URLs and the one loopback socket address every connection uses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URLs.
    pub endpoints: Endpoints,
    /// Where to connect.
    pub addr: SocketAddr,
}

impl Target {
    /// The WebSocket URL.
    pub fn ws_url(&self) -> &Url {
        &self.endpoints.ws
    }

    /// An HTTP API URL: `path` relative to the base (`factorial/result`).
    pub fn http_url(&self, path: &str) -> Url {
        self.endpoints
            .http
            .join(path)
            .expect("a relative path joins onto an http URL")
    }

    /// An HTTP client pinned to [`Target::addr`], with no proxy: requests never leave this machine.
    pub fn http_client(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .no_proxy()
            .resolve(&self.endpoints.host, self.addr)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(usize::MAX)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let e = Endpoints::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (e.http.to_string(), e.ws.to_string())
    }

    #[test]
    fn derives_http_and_ws_urls() {
        let pair = |h: &str, w: &str| (h.to_owned(), w.to_owned());
        assert_eq!(
            ok("http://127.0.0.1:8080"),
            pair("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws")
        );
        assert_eq!(
            ok("ws://127.0.0.1:9/ws"),
            pair("http://127.0.0.1:9/", "ws://127.0.0.1:9/ws")
        );
        assert_eq!(
            ok("http://LOCALHOST:18181/herald/?x=1"),
            pair(
                "http://localhost:18181/herald/",
                "ws://localhost:18181/herald/ws"
            )
        );
        assert_eq!(ok("http://[::1]:8080").1, "ws://[::1]:8080/ws");
        let e = Endpoints::parse("http://127.8.9.10").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.8.9.10", 80));
    }

    #[test]
    fn refuses_hosts_off_this_machine() {
        for raw in [
            "http://10.0.0.1:8080",
            "http://192.168.1.5",
            "http://0.0.0.0:8080",
            "http://example.com",
            "http://localhost.example.com",
            "http://[::ffff:127.0.0.1]:80",
            "http://[2001:db8::1]",
            "http://128.0.0.1",
        ] {
            assert!(
                matches!(Endpoints::parse(raw), Err(TargetError::NotLoopback(_))),
                "{raw}"
            );
        }
        assert!(matches!(
            Endpoints::parse("https://127.0.0.1"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Endpoints::parse("not a url"),
            Err(TargetError::Malformed { .. })
        ));
    }

    #[test]
    fn resolved_addresses_must_all_be_loopback() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let far: SocketAddr = "93.184.216.34:80".parse().unwrap();
        assert_eq!(pick_loopback("localhost", &[v6, v4]).unwrap(), v4);
        assert_eq!(pick_loopback("localhost", &[v6]).unwrap(), v6);
        assert!(pick_loopback("localhost", &[v4, far]).is_err());
        assert!(pick_loopback("localhost", &[]).is_err());
    }
}
