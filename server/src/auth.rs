//! Who is calling: bearer tokens (static ones from the settings, or HS256 JSON Web Tokens) checked into
//! an identity, and the key that rate limits count against.
//!
//! HTTP requests carry the token in `Authorization: Bearer`. Browsers cannot set headers on a WebSocket,
//! so `/ws` also takes it as an offered subprotocol `bearer.<token>` (next to [`WS_PROTOCOL`], the one the
//! server answers with) or as a `token` query parameter.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_protocol::JobRecord;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::debug;

use herald_engine::Secret;

/// The WebSocket subprotocol the server selects when a client offers it. A browser that offers
/// subprotocols drops a connection whose answer names none of them, so a client that sends its token as
/// `bearer.<token>` offers this one too.
pub const WS_PROTOCOL: &str = "herald";

/// Prefix of the subprotocol that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Clock skew tolerated on a JWT's `exp`, in seconds.
const JWT_LEEWAY_SECS: u64 = 30;

/// Longest identity taken from a JWT's `sub`.
const MAX_IDENTITY_BYTES: usize = 256;

/// An authenticated identity: a static token's name, or a JWT's `sub`.
pub type Identity = Arc<str>;

/// What rate limits count against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated identity, wherever it connects from.
    Identity(Identity),
    /// A peer address, without authentication.
    Address(IpAddr),
}

impl ClientKey {
    /// The key of an unauthenticated peer. An IPv6 host usually holds a whole /64, so the prefix is
    /// counted, not the address: otherwise one client could step through addresses to dodge its limits.
    pub fn for_address(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self::Address(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => Self::Address(v4),
        }
    }
}

/// The key as stored with a job (its record's `client`): `id:<identity>` or `ip:<address>`.
impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Identity(identity) => write!(f, "id:{identity}"),
            Self::Address(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated identity; `None` when authentication is off.
    pub identity: Option<Identity>,
    /// What its rate limits count against.
    pub key: ClientKey,
}

impl Caller {
    /// Whether this caller may see a job. With authentication only its owner may; a record without an
    /// owner (stored while authentication was off) belongs to nobody.
    pub fn may_read(&self, record: &JobRecord) -> bool {
        match &self.identity {
            None => true,
            Some(identity) => record.owner.as_deref() == Some(&**identity),
        }
    }
}

/// Why a request was not authenticated. Answered 401 before anything else happens (before a WebSocket
/// upgrade), and the answer does not say which token was wrong or why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token came with the request.
    #[error("authentication required: send a bearer token")]
    Missing,
    /// A token came, but it is unknown, badly signed or expired.
    #[error("invalid or expired token")]
    Invalid,
}

impl AuthError {
    /// The challenge of RFC 6750, section 3.
    fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Missing => r#"Bearer realm="herald""#,
            Self::Invalid => r#"Bearer realm="herald", error="invalid_token""#,
        })
    }

    /// The 401 of the jobs API: its body is JSON, as every other error there.
    pub fn into_json_response(self) -> Response {
        let body = herald_protocol::api::ApiErrorBody {
            code: herald_protocol::ErrorCode::Unauthorized,
            message: self.to_string(),
        };
        let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge());
        response
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::UNAUTHORIZED, self.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge());
        response
    }
}

/// Why a `identity:token` entry of the settings is refused. Never holds the token.
pub fn parse_token_entry(entry: &str) -> Result<(String, Secret), &'static str> {
    let Some((identity, token)) = entry.split_once(':') else {
        return Err("expected `identity:token`");
    };
    let identity = identity.trim();
    if identity.is_empty()
        || identity.len() > 64
        || !identity
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err("the identity must be 1 to 64 of A-Z a-z 0-9 . _ @ -");
    }
    let token = token.trim();
    // These characters pass unescaped in a header, a subprotocol name and a query string alike.
    if token.len() < 16
        || token.len() > 512
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    {
        return Err("the token must be 16 to 512 of A-Z a-z 0-9 . _ ~ -");
    }
    Ok((identity.to_owned(), Secret::from(token)))
}

/// The claims Herald reads from a JWT (`exp` is checked by the library).
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Checks tokens against the configured static tokens and JWT key.
pub struct Authenticator {
    tokens: Vec<(Secret, Identity)>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    /// An authenticator accepting `tokens` ((identity, token) pairs) and, with `jwt_secret`, HS256 JWTs.
    pub fn new(tokens: Vec<(String, Secret)>, jwt_secret: Option<&Secret>) -> Self {
        let jwt = jwt_secret.map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.leeway = JWT_LEEWAY_SECS;
            (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                validation,
            )
        });
        Self {
            tokens: tokens
                .into_iter()
                .map(|(identity, token)| (token, Identity::from(identity)))
                .collect(),
            jwt,
        }
    }

    /// How many static tokens are configured.
    pub fn static_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Whether JWTs are accepted.
    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The identity `token` proves.
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        // Every static token is compared, in time that does not depend on where they differ, so the
        // answer's timing does not tell how much of a guess was right.
        let mut found = None;
        for (candidate, identity) in &self.tokens {
            if constant_time_eq(candidate.expose().as_bytes(), token.as_bytes()) {
                found = Some(identity.clone());
            }
        }
        if let Some(identity) = found {
            return Ok(identity);
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(AuthError::Invalid);
        };
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => {
                let sub = data.claims.sub;
                if sub.is_empty()
                    || sub.len() > MAX_IDENTITY_BYTES
                    || sub.chars().any(char::is_control)
                {
                    return Err(AuthError::Invalid);
                }
                Ok(Identity::from(sub))
            }
            Err(e) => {
                // The kind only (expired, bad signature…): never the token, nor claims of a forged one.
                debug!(kind = ?kind_name(&e), "refused a JWT");
                Err(AuthError::Invalid)
            }
        }
    }
}

/// Signs an HS256 JWT for identity `sub`, expiring at `exp` (Unix seconds), with `secret`: what an
/// identity provider would hand a client. For operators' tools and the tests; the server only verifies.
pub fn sign_jwt(secret: &[u8], sub: &str, exp: u64) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Signed<'a> {
        sub: &'a str,
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &Signed { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

/// A short name of a JWT error's kind, without the data some kinds carry.
fn kind_name(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        ErrorKind::InvalidToken => "malformed",
        _ => "other",
    }
}

/// Equality whose running time does not depend on where the inputs differ (only on their lengths).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The token of `Authorization: Bearer <token>`, if there is one.
pub fn bearer_header(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token of an offered subprotocol `bearer.<token>`, if there is one.
pub fn bearer_protocol(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
}

/// The `token` query parameter, if there is one.
pub fn query_token(uri: &Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    Query::<TokenQuery>::try_from_uri(uri).ok()?.0.token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(
            vec![("alice".into(), Secret::from("alice-token-0123456789"))],
            None,
        )
    }

    #[test]
    fn static_tokens_name_their_identity() {
        let auth = authenticator();
        assert_eq!(
            &*auth.verify(Some("alice-token-0123456789")).unwrap(),
            "alice"
        );
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        assert_eq!(auth.verify(Some("")), Err(AuthError::Missing));
        for wrong in ["alice-token-012345678", "alice-token-0123456780", "x"] {
            assert_eq!(auth.verify(Some(wrong)), Err(AuthError::Invalid));
        }
    }

    #[test]
    fn jwts_prove_their_subject_until_they_expire() {
        let secret = "jwt-secret-0123456789-0123456789-xyz";
        let auth = Authenticator::new(Vec::new(), Some(&Secret::from(secret)));
        let now = jsonwebtoken::get_current_timestamp();
        let valid = sign_jwt(secret.as_bytes(), "carol", now + 600).unwrap();
        assert_eq!(&*auth.verify(Some(&valid)).unwrap(), "carol");
        let expired = sign_jwt(secret.as_bytes(), "carol", now - 600).unwrap();
        assert_eq!(auth.verify(Some(&expired)), Err(AuthError::Invalid));
        let forged = sign_jwt(b"another-secret-0123456789-0123456789", "carol", now + 600).unwrap();
        assert_eq!(auth.verify(Some(&forged)), Err(AuthError::Invalid));
        let nobody = sign_jwt(secret.as_bytes(), "", now + 600).unwrap();
        assert_eq!(auth.verify(Some(&nobody)), Err(AuthError::Invalid));
        // `alg: none` and other algorithms are refused whatever the payload.
        let (_, rest) = valid.split_once('.').unwrap();
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}",
            rest.split('.').next().unwrap()
        );
        assert_eq!(
            auth.verify(Some(&format!("{none}."))),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn tokens_are_found_where_clients_put_them() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "herald, bearer.def".parse().unwrap(),
        );
        assert_eq!(bearer_header(&headers), Some("abc"));
        assert_eq!(bearer_protocol(&headers), Some("def"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_header(&headers), None);
        let uri: Uri = "/ws?a=1&token=ghi".parse().unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("ghi"));
        assert_eq!(
            query_token(&"/ws?token=a%2Eb".parse().unwrap()).as_deref(),
            Some("a.b")
        );
        assert_eq!(query_token(&"/ws?tokens=x".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_prefix() {
        let a = ClientKey::for_address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientKey::for_address("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        let mapped = ClientKey::for_address("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, ClientKey::Address("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn only_the_owner_may_read_a_job() {
        let alice = Caller {
            identity: Some("alice".into()),
            key: ClientKey::Identity("alice".into()),
        };
        let anonymous = Caller {
            identity: None,
            key: ClientKey::for_address([127, 0, 0, 1].into()),
        };
        let record = JobRecord::queued(
            herald_protocol::FACTORIAL,
            herald_protocol::model::factorial_input(5),
            1,
        );
        assert!(
            !alice.may_read(&record),
            "an ownerless job belongs to nobody"
        );
        assert!(alice.may_read(&record.clone().owned_by(Some("alice"))));
        assert!(!alice.may_read(&record.clone().owned_by(Some("bob"))));
        assert!(anonymous.may_read(&record.owned_by(Some("bob"))));
    }
}
