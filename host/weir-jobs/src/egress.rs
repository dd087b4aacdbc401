//! Outbound HTTP that cannot be aimed at private networks (SSRF protection).
//!
//! Job inputs (`imageUrl`, `audioUrl`, …) and webhook deliveries are URLs chosen by clients, so
//! every request the gateway makes on their behalf goes through an [`EgressClient`]:
//!
//! * only `http` and `https` URLs without userinfo are accepted;
//! * literal IP hosts are checked before anything is sent;
//! * DNS names are resolved by a resolver installed *inside* the HTTP client, which refuses the
//!   whole name when any of its addresses is not public. The connection is made to exactly the
//!   addresses that resolver checked, so a DNS-rebinding answer cannot slip a private address in
//!   between a check and the connect;
//! * environment proxies are ignored (a proxy would do its own resolution);
//! * redirects are never followed by the HTTP client: [`EgressClient::fetch`] follows them itself,
//!   checking every hop, and [`EgressClient::post`] does not follow them at all;
//! * bodies are capped while streaming and every operation has an overall deadline.
//!
//! Which addresses count as public is decided by [`is_public_address`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use url::{Host, Url};

/// The most body [`EgressClient::post`] returns; the rest of a longer response is discarded.
pub const POST_BODY_LIMIT: usize = 64 * 1024;

/// What egress may reach and how much it may read.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Allow private, loopback, link-local and other non-public addresses (tests, trusted
    /// deployments). Addresses given to [`EgressClient::with_denied_addresses`] stay refused.
    pub allow_private: bool,
    /// The most body bytes [`EgressClient::fetch`] reads before failing with
    /// [`EgressError::TooLarge`].
    pub max_bytes: usize,
    /// Overall deadline of one operation: connecting, every redirect hop and reading the body.
    pub timeout: Duration,
    /// How many redirects [`EgressClient::fetch`] follows (each hop is checked again).
    pub max_redirects: usize,
}

impl Default for EgressPolicy {
    /// Public addresses only, 32 MiB, 30 s, 5 redirects.
    fn default() -> Self {
        EgressPolicy {
            allow_private: false,
            max_bytes: 32 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
        }
    }
}

impl EgressPolicy {
    /// A policy for webhook deliveries: public addresses only, a 15 s deadline, no redirects and
    /// [`POST_BODY_LIMIT`] as the size cap.
    pub fn webhooks() -> Self {
        EgressPolicy {
            allow_private: false,
            max_bytes: POST_BODY_LIMIT,
            timeout: Duration::from_secs(15),
            max_redirects: 0,
        }
    }
}

/// Why an egress request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The URL does not parse, has no host or carries userinfo (`user:pass@`).
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// A scheme other than `http` or `https`.
    #[error("unsupported URL scheme `{0}` (only http and https are allowed)")]
    UnsupportedScheme(String),
    /// The host is, or resolves to, an address egress may not reach.
    #[error("`{host}` resolves to {addr}, which is not a public address")]
    PrivateAddress {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
    /// The host name did not resolve to any address.
    #[error("`{host}` could not be resolved")]
    Unresolvable {
        /// The host name.
        host: String,
    },
    /// The body is larger than the policy's `max_bytes`.
    #[error("response body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More redirects than the policy's `max_redirects`.
    #[error("more than {limit} redirects")]
    TooManyRedirects {
        /// The limit.
        limit: usize,
    },
    /// The operation did not finish within the policy's `timeout`.
    #[error("timed out")]
    Timeout,
    /// The server answered with a status other than 2xx (or a 3xx that could not be followed).
    #[error("upstream answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// Connecting, sending or reading failed (also: the HTTP client could not be built).
    #[error("transport error: {0}")]
    Transport(String),
}

impl EgressError {
    /// The status a gateway should answer a client whose input URL failed this way:
    ///
    /// * 400 — the URL itself is unacceptable: [`BadUrl`](Self::BadUrl),
    ///   [`UnsupportedScheme`](Self::UnsupportedScheme),
    ///   [`PrivateAddress`](Self::PrivateAddress), [`Unresolvable`](Self::Unresolvable),
    ///   [`TooLarge`](Self::TooLarge);
    /// * 422 — the URL is acceptable but what it points at is not usable:
    ///   [`Status`](Self::Status), [`TooManyRedirects`](Self::TooManyRedirects);
    /// * 504 — [`Timeout`](Self::Timeout);
    /// * 502 — [`Transport`](Self::Transport).
    pub fn http_status(&self) -> u16 {
        match self {
            EgressError::BadUrl(_)
            | EgressError::UnsupportedScheme(_)
            | EgressError::PrivateAddress { .. }
            | EgressError::Unresolvable { .. }
            | EgressError::TooLarge { .. } => 400,
            EgressError::Status { .. } | EgressError::TooManyRedirects { .. } => 422,
            EgressError::Timeout => 504,
            EgressError::Transport(_) => 502,
        }
    }
}

/// Whether `ip` is a globally reachable unicast address.
///
/// Refused IPv4: 0.0.0.0/8, 10/8, 100.64/10 (CGNAT), 127/8, 169.254/16, 172.16/12,
/// 192.0.0/24, 192.0.2/24, 192.88.99/24, 192.168/16, 198.18/15 (benchmarking),
/// 198.51.100/24, 203.0.113/24, 224/4 (multicast) and 240/4 (reserved, broadcast).
///
/// IPv6 must be in 2000::/3 (global unicast), which leaves out ::, ::1, fc00::/7, fe80::/10,
/// fec0::/10, ff00::/8 and the rest; within it 2001::/23 (IETF assignments: Teredo,
/// benchmarking, ORCHID), 2001:db8::/32 and 3fff::/20 (documentation) are refused. Addresses
/// that embed an IPv4 address are judged by that address: IPv4-mapped ::ffff:0:0/96, NAT64
/// 64:ff9b::/96 and 6to4 2002::/16. IPv4-compatible ::/96 and local NAT64 64:ff9b:1::/48 are
/// refused.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let private = a == 0
        || a == 10
        || (a == 100 && (64..128).contains(&b))
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224;
    !private
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    // Outside 2000::/3 nothing is global unicast (NAT64 64:ff9b::/96 was handled above).
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = match s[0] {
        // 2001::/23 (IETF protocol assignments) and 2001:db8::/32 (documentation)
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // 3fff::/20 (documentation)
        0x3fff => s[1] < 0x1000,
        _ => false,
    };
    !refused
}

/// The IPv4 address an IPv6 address stands for, where it stands for one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(low); // ::ffff:a.b.c.d
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low); // 64:ff9b::a.b.c.d (NAT64)
    }
    if s[0] == 0x2002 {
        // 2002:AABB:CCDD::/48 (6to4)
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// The address a denied-address entry is compared with: IPv4-mapped IPv6 as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The address rules shared by the URL checks and the client's resolver.
#[derive(Debug, Clone)]
struct AddressFilter {
    allow_private: bool,
    denied: Vec<IpAddr>,
}

impl AddressFilter {
    fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.denied.contains(&ip) && (self.allow_private || is_public_address(ip))
    }

    /// Resolve `host` and check every address; the whole name is refused if any address is.
    async fn resolve(&self, host: &str) -> Result<Vec<std::net::SocketAddr>, EgressError> {
        let addrs: Vec<_> = match tokio::net::lookup_host((host, 0)).await {
            Ok(it) => it.collect(),
            Err(_) => Vec::new(),
        };
        if addrs.is_empty() {
            return Err(EgressError::Unresolvable {
                host: host.to_owned(),
            });
        }
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            return Err(EgressError::PrivateAddress {
                host: host.to_owned(),
                addr: bad.ip(),
            });
        }
        Ok(addrs)
    }
}

/// The error the resolver hands reqwest; found again in the error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ResolveRefused(EgressError);

/// A DNS resolver that only returns addresses the filter permits, so the connection uses exactly
/// the checked addresses.
struct GuardedResolver {
    filter: Arc<AddressFilter>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let filter = self.filter.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match filter.resolve(&host).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(e) => {
                    Err(Box::new(ResolveRefused(e)) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

/// An HTTP client that refuses private, loopback, link-local, multicast, unspecified, CGNAT
/// (100.64/10), benchmarking, documentation, IPv4-mapped-private IPv6, ULA fc00::/7,
/// fe80::/10 … addresses unless the policy's `allow_private` is set (see
/// [`is_public_address`]).
///
/// Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct EgressClient {
    policy: EgressPolicy,
    filter: Arc<AddressFilter>,
    http: reqwest::Client,
}

impl std::fmt::Debug for EgressClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressClient")
            .field("policy", &self.policy)
            .field("denied", &self.filter.denied)
            .finish_non_exhaustive()
    }
}

/// A fetched body.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The final response's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body (at most the policy's `max_bytes`).
    pub data: Bytes,
    /// The URL the body came from after redirects.
    pub final_url: String,
}

impl EgressClient {
    /// A client enforcing `policy`.
    pub fn new(policy: EgressPolicy) -> Result<EgressClient, EgressError> {
        Self::build(
            policy,
            AddressFilter {
                allow_private: false,
                denied: Vec::new(),
            },
        )
    }

    fn build(policy: EgressPolicy, mut filter: AddressFilter) -> Result<EgressClient, EgressError> {
        filter.allow_private = policy.allow_private;
        let filter = Arc::new(filter);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                filter: filter.clone(),
            }))
            .connect_timeout(policy.timeout)
            .user_agent("weir-egress")
            .build()
            .map_err(|e| EgressError::Transport(e.to_string()))?;
        Ok(EgressClient {
            policy,
            filter,
            http,
        })
    }

    /// The same client with `addrs` refused as well, whatever `allow_private` says (IPv4-mapped
    /// IPv6 forms of a denied IPv4 address are refused too). Useful to keep the gateway away
    /// from its own listeners or a metadata service in a deployment that allows private
    /// addresses, and for tests.
    pub fn with_denied_addresses(
        self,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Result<EgressClient, EgressError> {
        let mut filter = (*self.filter).clone();
        filter.denied.extend(addrs.into_iter().map(canonical));
        Self::build(self.policy, filter)
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Parse and check a URL without resolving DNS names: http/https only, no userinfo, a host
    /// present, literal IPs checked (they bypass the resolver).
    fn check_static(&self, url: &str) -> Result<Url, EgressError> {
        let parsed = Url::parse(url).map_err(|e| EgressError::BadUrl(e.to_string()))?;
        self.check_parsed(&parsed)?;
        Ok(parsed)
    }

    fn check_parsed(&self, url: &Url) -> Result<(), EgressError> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(EgressError::UnsupportedScheme(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EgressError::BadUrl(
                "credentials in URLs are not allowed".into(),
            ));
        }
        let ip = match url.host() {
            None => return Err(EgressError::BadUrl("URL has no host".into())),
            Some(Host::Domain("")) => return Err(EgressError::BadUrl("URL has no host".into())),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        if self.filter.permits(ip) {
            Ok(())
        } else {
            Err(EgressError::PrivateAddress {
                host: url.host_str().unwrap_or_default().to_owned(),
                addr: ip,
            })
        }
    }

    /// Validate a URL without fetching: http/https only, no userinfo, host present, literal IPs
    /// checked; DNS names resolved and every address checked.
    ///
    /// A later request resolves the name again through the same checks, so a name that changes
    /// its answer in between is still refused.
    pub async fn check(&self, url: &str) -> Result<Url, EgressError> {
        let parsed = self.check_static(url)?;
        if let Some(Host::Domain(d)) = parsed.host() {
            let d = d.to_owned();
            self.with_deadline(async { self.filter.resolve(&d).await.map(|_| ()) })
                .await?;
        }
        Ok(parsed)
    }

    /// Run `fut` under the policy's overall deadline.
    async fn with_deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, EgressError>>,
    ) -> Result<T, EgressError> {
        match tokio::time::timeout(self.policy.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(EgressError::Timeout),
        }
    }

    /// GET with the policy: size cap enforced while streaming (and up front from
    /// `Content-Length`), overall timeout, redirects followed manually up to `max_redirects`
    /// with each hop checked, non-2xx → [`EgressError::Status`].
    pub async fn fetch(&self, url: &str) -> Result<Fetched, EgressError> {
        let start = self.check_static(url)?;
        self.with_deadline(self.fetch_inner(start)).await
    }

    async fn fetch_inner(&self, mut url: Url) -> Result<Fetched, EgressError> {
        let mut hops = 0usize;
        loop {
            let resp = self
                .http
                .get(url.clone())
                .send()
                .await
                .map_err(map_reqwest)?;
            let status = resp.status();
            if status.is_redirection() {
                let Some(location) = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                else {
                    return Err(EgressError::Status {
                        status: status.as_u16(),
                    });
                };
                hops += 1;
                if hops > self.policy.max_redirects {
                    return Err(EgressError::TooManyRedirects {
                        limit: self.policy.max_redirects,
                    });
                }
                let next = url
                    .join(&location)
                    .map_err(|e| EgressError::BadUrl(format!("bad redirect location: {e}")))?;
                self.check_parsed(&next)?;
                tracing::debug!(from = %url, to = %next, "egress: following redirect");
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(EgressError::Status {
                    status: status.as_u16(),
                });
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let data = read_capped(resp, self.policy.max_bytes, true).await?;
            return Ok(Fetched {
                content_type,
                data,
                final_url: url.to_string(),
            });
        }
    }

    /// POST a body with headers, no redirects followed (3xx is returned as the response status),
    /// timeout; returns status, headers and at most [`POST_BODY_LIMIT`] (64 KiB) of body (the
    /// rest is discarded, not an error). Used by webhook delivery.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(u16, HeaderMap, Bytes), EgressError> {
        let url = self.check_static(url)?;
        self.with_deadline(async {
            let resp = self
                .http
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(map_reqwest)?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let data = read_capped(resp, POST_BODY_LIMIT, false).await?;
            Ok((status, headers, data))
        })
        .await
    }
}

/// Read at most `limit` bytes of `resp`; past that, fail with [`EgressError::TooLarge`] when
/// `strict`, else stop reading and return what fits.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    strict: bool,
) -> Result<Bytes, EgressError> {
    if strict {
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(EgressError::TooLarge { limit });
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
        if buf.len() + chunk.len() > limit {
            if strict {
                return Err(EgressError::TooLarge { limit });
            }
            let room = limit - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Map a reqwest error, recovering a refusal by the resolver from its source chain.
fn map_reqwest(err: reqwest::Error) -> EgressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(ResolveRefused(inner)) = e.downcast_ref::<ResolveRefused>() {
            return match inner {
                EgressError::PrivateAddress { host, addr } => EgressError::PrivateAddress {
                    host: host.clone(),
                    addr: *addr,
                },
                EgressError::Unresolvable { host } => {
                    EgressError::Unresolvable { host: host.clone() }
                }
                other => EgressError::Transport(other.to_string()),
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        return EgressError::Timeout;
    }
    // The full chain, since reqwest's own message ("error sending request") says little.
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        source = e.source();
    }
    EgressError::Transport(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{
        body::Body,
        http::{header, StatusCode},
        response::{IntoResponse, Response},
        routing::get,
        Router,
    };
    use std::net::SocketAddr;

    fn policy(allow_private: bool) -> EgressPolicy {
        EgressPolicy {
            allow_private,
            max_bytes: 1024,
            timeout: Duration::from_secs(5),
            max_redirects: 3,
        }
    }

    fn strict() -> EgressClient {
        EgressClient::new(policy(false)).unwrap()
    }

    fn open() -> EgressClient {
        EgressClient::new(policy(true)).unwrap()
    }

    async fn serve_on(ip: &str, app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        addr
    }

    async fn serve(app: Router) -> SocketAddr {
        serve_on("127.0.0.1", app).await
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(
                !is_public_address(ip(private)),
                "{private} counted as public"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(is_public_address(ip(public)), "{public} counted as private");
        }
    }

    #[tokio::test]
    async fn refuses_private_literals() {
        let c = strict();
        for url in [
            "http://127.0.0.1/",
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://2130706433/", // 127.0.0.1 as a number
            "http://0x7f.1/",
            "http://127.1/",
            "https://100.64.1.1/",
        ] {
            for result in [
                c.check(url).await.map(|_| ()),
                c.fetch(url).await.map(|_| ()),
                c.post(url, HeaderMap::new(), Bytes::new())
                    .await
                    .map(|_| ()),
            ] {
                match result {
                    Err(e @ EgressError::PrivateAddress { .. }) => {
                        assert_eq!(e.http_status(), 400)
                    }
                    other => panic!("{url}: expected PrivateAddress, got {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn refuses_localhost_by_resolution() {
        let c = strict();
        for url in [
            "http://localhost/",
            "http://localhost:1234/",
            "http://LOCALHOST/",
        ] {
            match c.check(url).await {
                Err(EgressError::PrivateAddress { addr, .. }) => {
                    assert!(addr.is_loopback(), "{url}: {addr}")
                }
                other => panic!("{url}: expected PrivateAddress, got {other:?}"),
            }
        }
        // The resolver inside the HTTP client refuses it too, with the same error.
        match c.fetch("http://localhost:9/").await {
            Err(EgressError::PrivateAddress { addr, .. }) => assert!(addr.is_loopback()),
            other => panic!("expected PrivateAddress, got {other:?}"),
        }
        match c
            .post("http://localhost:9/", HeaderMap::new(), Bytes::new())
            .await
        {
            Err(EgressError::PrivateAddress { addr, .. }) => assert!(addr.is_loopback()),
            other => panic!("expected PrivateAddress, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resolver_refuses_a_listening_local_server() {
        // A real server is listening, so a refusal cannot be a connection error in disguise.
        let addr = serve(Router::new().route("/", get(|| async { "hi" }))).await;
        let url = format!("http://localhost:{}/", addr.port());
        assert!(matches!(
            strict().fetch(&url).await,
            Err(EgressError::PrivateAddress { .. })
        ));
        assert_eq!(open().fetch(&url).await.unwrap().data, Bytes::from("hi"));
    }

    #[tokio::test]
    async fn unresolvable_names() {
        match strict().check("http://does-not-exist.invalid/").await {
            Err(e @ EgressError::Unresolvable { .. }) => assert_eq!(e.http_status(), 400),
            other => panic!("expected Unresolvable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_bad_urls_and_schemes() {
        let c = open();
        for url in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "gopher://x/",
            "data:text/plain,hi",
        ] {
            match c.fetch(url).await {
                Err(e @ EgressError::UnsupportedScheme(_)) => assert_eq!(e.http_status(), 400),
                other => panic!("{url}: expected UnsupportedScheme, got {other:?}"),
            }
        }
        for url in [
            "http://user:pass@example.com/",
            "http://user@example.com/",
            "http://:pass@example.com/",
            "not a url",
            "http://",
            "/relative/path",
        ] {
            match c.check(url).await {
                Err(e @ EgressError::BadUrl(_)) => assert_eq!(e.http_status(), 400),
                other => panic!("{url}: expected BadUrl, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn allow_private_fetches_a_local_server() {
        let app = Router::new().route(
            "/img",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], "PNGDATA") }),
        );
        let addr = serve(app).await;
        let url = format!("http://{addr}/img");
        let got = open().fetch(&url).await.unwrap();
        assert_eq!(got.data, Bytes::from("PNGDATA"));
        assert_eq!(got.content_type.as_deref(), Some("image/png"));
        assert_eq!(got.final_url, url);
        assert!(open().check(&url).await.is_ok());
        // The same server is refused without allow_private.
        assert!(matches!(
            strict().fetch(&url).await,
            Err(EgressError::PrivateAddress { .. })
        ));
    }

    #[tokio::test]
    async fn non_success_is_status() {
        let app = Router::new().route("/gone", get(|| async { StatusCode::NOT_FOUND }));
        let addr = serve(app).await;
        match open().fetch(&format!("http://{addr}/gone")).await {
            Err(e @ EgressError::Status { status: 404 }) => assert_eq!(e.http_status(), 422),
            other => panic!("expected Status 404, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn size_cap_content_length_and_chunked() {
        let app = Router::new()
            .route("/fits", get(|| async { vec![b'a'; 1024] }))
            .route("/big", get(|| async { vec![b'a'; 1025] }))
            .route(
                "/chunked",
                get(|| async {
                    // A streamed body has no Content-Length, so only the streaming cap can stop it.
                    let chunks =
                        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'b'; 200])));
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route(
                "/lying",
                get(|| async {
                    // An endless stream: the cap must stop reading, not the deadline.
                    let chunks = futures_util::stream::repeat_with(|| {
                        Ok::<_, std::io::Error>(Bytes::from(vec![b'c'; 4096]))
                    });
                    Body::from_stream(chunks)
                }),
            );
        let addr = serve(app).await;
        let c = open();
        assert_eq!(
            c.fetch(&format!("http://{addr}/fits"))
                .await
                .unwrap()
                .data
                .len(),
            1024
        );
        for path in ["big", "chunked", "lying"] {
            match c.fetch(&format!("http://{addr}/{path}")).await {
                Err(e @ EgressError::TooLarge { limit: 1024 }) => assert_eq!(e.http_status(), 400),
                other => panic!("{path}: expected TooLarge, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn timeout_with_a_slow_server() {
        let app = Router::new()
            .route(
                "/slow-headers",
                axum::routing::any(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/slow-body",
                get(|| async {
                    let chunks = futures_util::stream::unfold(0u32, |n| async move {
                        if n > 0 {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
                    });
                    Body::from_stream(chunks)
                }),
            );
        let addr = serve(app).await;
        let c = EgressClient::new(EgressPolicy {
            timeout: Duration::from_millis(300),
            ..policy(true)
        })
        .unwrap();
        for path in ["slow-headers", "slow-body"] {
            let started = std::time::Instant::now();
            match c.fetch(&format!("http://{addr}/{path}")).await {
                Err(e @ EgressError::Timeout) => assert_eq!(e.http_status(), 504),
                other => panic!("{path}: expected Timeout, got {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        let started = std::time::Instant::now();
        let r = c
            .post(
                &format!("http://{addr}/slow-headers"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert!(matches!(r, Err(EgressError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn connection_refused_is_transport() {
        // Bind then drop to find a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        match open().fetch(&format!("http://127.0.0.1:{port}/")).await {
            Err(e @ EgressError::Transport(_)) => assert_eq!(e.http_status(), 502),
            other => panic!("expected Transport, got {other:?}"),
        }
    }

    fn redirect_to(target: String) -> Response {
        (StatusCode::FOUND, [(header::LOCATION, target)]).into_response()
    }

    #[tokio::test]
    async fn redirects_are_followed_and_each_hop_checked() {
        // The "internal" server listens on 127.0.0.2 (all of 127/8 is loopback on Linux); the
        // client allows private addresses but denies 127.0.0.2, so the only thing keeping the
        // redirect out is the per-hop check.
        let internal = serve_on(
            "127.0.0.2",
            Router::new().route("/secret", get(|| async { "SECRET" })),
        )
        .await;
        let secret = format!("http://{internal}/secret");
        let secret_v6 = format!("http://[::ffff:127.0.0.2]:{}/secret", internal.port());
        let app = Router::new()
            .route("/ok", get(|| async { "OK" }))
            .route("/hop", get(|| async { redirect_to("/ok".into()) }))
            .route("/hop2", get(|| async { redirect_to("hop".into()) }))
            .route("/loop", get(|| async { redirect_to("/loop".into()) }))
            .route("/nowhere", get(|| async { StatusCode::FOUND }))
            .route(
                "/ftp",
                get(|| async { redirect_to("ftp://example.com/".into()) }),
            )
            .route(
                "/evil",
                get(move || async move { redirect_to(secret.clone()) }),
            )
            .route(
                "/evil6",
                get(move || async move { redirect_to(secret_v6.clone()) }),
            );
        let public = serve(app).await;
        let c = open().with_denied_addresses([ip("127.0.0.2")]).unwrap();

        // Sanity: the internal server is really there for a client that does not deny it.
        assert_eq!(
            open()
                .fetch(&format!("http://{internal}/secret"))
                .await
                .unwrap()
                .data,
            Bytes::from("SECRET")
        );
        // Direct access is refused.
        assert!(matches!(
            c.fetch(&format!("http://{internal}/secret")).await,
            Err(EgressError::PrivateAddress { .. })
        ));

        let got = c.fetch(&format!("http://{public}/hop2")).await.unwrap();
        assert_eq!(got.data, Bytes::from("OK"));
        assert_eq!(got.final_url, format!("http://{public}/ok"));

        for path in ["evil", "evil6"] {
            match c.fetch(&format!("http://{public}/{path}")).await {
                Err(EgressError::PrivateAddress { addr, .. }) => {
                    assert_eq!(canonical(addr), ip("127.0.0.2"))
                }
                other => panic!("{path}: expected PrivateAddress, got {other:?}"),
            }
        }
        match c.fetch(&format!("http://{public}/loop")).await {
            Err(e @ EgressError::TooManyRedirects { limit: 3 }) => assert_eq!(e.http_status(), 422),
            other => panic!("expected TooManyRedirects, got {other:?}"),
        }
        assert!(matches!(
            c.fetch(&format!("http://{public}/nowhere")).await,
            Err(EgressError::Status { status: 302 })
        ));
        assert!(matches!(
            c.fetch(&format!("http://{public}/ftp")).await,
            Err(EgressError::UnsupportedScheme(_))
        ));

        // max_redirects = 0 refuses the first redirect.
        let none = EgressClient::new(EgressPolicy {
            max_redirects: 0,
            ..policy(true)
        })
        .unwrap();
        assert!(matches!(
            none.fetch(&format!("http://{public}/hop")).await,
            Err(EgressError::TooManyRedirects { limit: 0 })
        ));
    }

    #[tokio::test]
    async fn per_hop_check_with_default_rules() {
        // The check every redirect hop goes through, with the real (non-test) rules.
        let c = strict();
        let base = Url::parse("http://example.com/a").unwrap();
        for loc in [
            "http://127.0.0.1/",
            "http://169.254.169.254/latest",
            "http://[::ffff:10.0.0.1]/",
            "//10.0.0.1/x",
        ] {
            let next = base.join(loc).unwrap();
            assert!(
                matches!(
                    c.check_parsed(&next),
                    Err(EgressError::PrivateAddress { .. })
                ),
                "{loc}"
            );
        }
        assert!(c.check_parsed(&base.join("/b").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn post_does_not_follow_redirects_and_caps_the_body() {
        let app = Router::new()
            .route(
                "/moved",
                axum::routing::post(|| async { redirect_to("/elsewhere".into()) }),
            )
            .route(
                "/echo",
                axum::routing::post(|headers: axum::http::HeaderMap, body: Bytes| async move {
                    let h = headers
                        .get("x-test")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (StatusCode::ACCEPTED, [("x-echo", h)], body)
                }),
            )
            .route(
                "/huge",
                axum::routing::post(|| async { vec![b'z'; POST_BODY_LIMIT + 10] }),
            );
        let addr = serve(app).await;
        let c = open();
        let (status, headers, _) = c
            .post(
                &format!("http://{addr}/moved"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, 302);
        assert_eq!(headers.get(LOCATION).unwrap(), "/elsewhere");

        let mut h = HeaderMap::new();
        h.insert("x-test", "yes".parse().unwrap());
        let (status, headers, body) = c
            .post(&format!("http://{addr}/echo"), h, Bytes::from("payload"))
            .await
            .unwrap();
        assert_eq!(status, 202);
        assert_eq!(headers.get("x-echo").unwrap(), "yes");
        assert_eq!(body, Bytes::from("payload"));

        let (status, _, body) = c
            .post(
                &format!("http://{addr}/huge"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), POST_BODY_LIMIT);
    }

    #[test]
    fn http_status_mapping() {
        assert_eq!(EgressError::BadUrl("x".into()).http_status(), 400);
        assert_eq!(
            EgressError::UnsupportedScheme("ftp".into()).http_status(),
            400
        );
        assert_eq!(EgressError::Status { status: 500 }.http_status(), 422);
        assert_eq!(EgressError::Timeout.http_status(), 504);
        assert_eq!(EgressError::Transport("x".into()).http_status(), 502);
    }
}
