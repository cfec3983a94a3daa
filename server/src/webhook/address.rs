//! Where webhooks may go: `http` and `https` URLs whose host is not an address of this machine or its
//! private networks (loopback, private, link-local, unique-local, shared CGNAT, unspecified, multicast,
//! cloud metadata), unless `--webhook-allow-private`. A URL naming an address is checked at the submit;
//! a name is checked when it is resolved for the delivery, by the resolver the sending client connects
//! through, so that the address checked is the address connected to (a name that resolves to a public
//! address for the check and a private one for the connection gains nothing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Why an address is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The AWS metadata service's IPv6 address (the IPv4 one, 169.254.169.254, is link-local).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);

/// Whether `ip` is one a webhook may not reach without `--webhook-allow-private`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || v6 == AWS_METADATA_V6
                // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
                || (v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && is_private_v4(Ipv4Addr::from_bits(v6.to_bits() as u32)))
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        // "This network" (0.0.0.0/8) and shared address space, carrier-grade NAT (100.64.0.0/10).
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

/// Checks a webhook URL as written in a submit: an absolute `http` or `https` URL with a host and
/// no credentials, whose host, if an address, is not private (unless `allow_private`).
pub fn check_url(text: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    if !allow_private {
        check_host(&url).map_err(|refused| refused.0)?;
    }
    Ok(url)
}

/// Refuses a URL whose host is a private address. Names pass: they are checked when resolved.
pub fn check_host(url: &Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_private(ip) {
        return Err(refused(&ip.to_string()));
    }
    Ok(())
}

fn refused(what: &str) -> Refused {
    Refused(format!(
        "{what} is a loopback, private, link-local or metadata address, which webhooks may not reach \
         (--webhook-allow-private allows them)"
    ))
}

/// The resolver of the webhook client: the system's resolver, less the private addresses.
pub struct Resolver {
    /// Whether private addresses are allowed (`--webhook-allow-private`).
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| allow_private || !is_private(addr.ip()))
                .collect();
            if usable.is_empty() && !found.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(refused(&format!("{host} ({})", found[0].ip())));
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "100.128.0.1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_as_written() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", true).is_ok());
        for (bad, reason) in [
            ("ftp://example.com/", "scheme"),
            ("example.com/hook", "not a URL"),
            ("https://user:pw@example.com/", "password"),
            ("http://127.0.0.1:9/", "loopback"),
            ("http://10.0.0.1/", "private"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://[::1]:9/", "loopback"),
            ("http://[fd00:ec2::254]/", "metadata"),
        ] {
            let error = check_url(bad, false).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }
}
