//! Who a connection is: its identity, from a JWT or anonymous.
//!
//! Tokens are verified with HS256 and the shared secret, or with RS256 / ES256
//! and the PEM public key (whose type picks the algorithm); a token's header
//! names its algorithm, and only the algorithms of the configured keys are
//! accepted, each with its own key (an HS256 token is never checked against
//! the public key's bytes).
//!
//! Time checks have no leeway ([`LEEWAY_SECS`] is 0): a token is accepted
//! while `now < exp` (RFC 7519: `exp` is the time "on or after which the JWT
//! MUST NOT be accepted") and `nbf <= now` when it has an `nbf`, and a session
//! ends with `disconnect` 4001 at `exp` exactly. Clocks of the token issuer and
//! the node are assumed to be synchronised (NTP).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

use crate::config::AuthConfig;

/// Seconds of tolerance on `exp` and `nbf`: none (see the module docs).
pub const LEEWAY_SECS: u64 = 0;

/// Longest token accepted, in bytes; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A session whose token expires further away than this is never ended for
/// expiry (timers that far out are not worth holding; sessions do not live a year).
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A connection's identity and what its token allows.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The user id (`sub`); "" when anonymous.
    pub user: Arc<str>,
    /// Patterns of channels the user may subscribe to; `None`: no restriction.
    pub channels: Option<Vec<String>>,
    /// Patterns of channels the user may publish to; `None`: no restriction.
    pub publish: Option<Vec<String>>,
    /// When the token expires, in seconds since the Unix epoch; `None` for anonymous.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An anonymous connection: no user, no token restrictions.
    pub fn anonymous() -> Self {
        Identity::default()
    }
}

/// Why a client's token (or its absence) was refused; the message of the HTTP 401.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token, and anonymous connections are not allowed.
    #[error("a token is required: pass ?token=<JWT> or an Authorization: Bearer <JWT> header")]
    Missing,
    /// A token was given to a node that has no key to check it with.
    #[error("this node does not accept tokens: no JWT secret or public key is configured")]
    NotConfigured,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not a JWT: bad structure, base64, JSON or claim types.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm this node does not take.
    #[error("token algorithm {found} is not accepted here (accepted: {accepted})")]
    Algorithm {
        /// The header's `alg`.
        found: String,
        /// What the configured keys verify.
        accepted: String,
    },
    /// The signature does not match the key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `now >= exp`.
    #[error("token has expired")]
    Expired,
    /// `now < nbf`.
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// A required claim is absent or empty.
    #[error("token claim {0} is required")]
    MissingClaim(&'static str),
}

/// Why the configured key cannot be used (reported at start-up, exit 64).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Verifies client tokens and applies the anonymous-access policy.
pub struct Authenticator {
    /// HS256 with the shared secret.
    hmac: Option<Verifier>,
    /// RS256 or ES256 with the public key.
    public: Option<Verifier>,
    allow_anonymous: bool,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// The claims Switchboard reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    channels: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

impl Authenticator {
    /// Builds the verifier from the configuration; fails when the public key
    /// is neither an RSA nor an EC P-256 public key.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let hmac = config.jwt_secret.as_deref().map(|secret| {
            if secret.len() < 32 {
                tracing::warn!(
                    bytes = secret.len(),
                    "the JWT secret is shorter than 32 bytes; HS256 secrets that short can be guessed"
                );
            }
            Verifier::new(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
        });
        let public = match &config.jwt_public_key {
            Some(pem) => Some(public_key(pem)?),
            None => None,
        };
        Ok(Authenticator {
            hmac,
            public,
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        self.hmac.is_some() || self.public.is_some()
    }

    /// Who the client is: anonymous without a token (when allowed), else the
    /// token's identity. Uses the system clock.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        match token {
            None if self.allow_anonymous => Ok(Identity::anonymous()),
            None => Err(TokenError::Missing),
            Some(token) => self.verify_at(token, unix_now()),
        }
    }

    /// Verifies a token at `now` (seconds since the Unix epoch).
    pub fn verify_at(&self, token: &str, now: f64) -> Result<Identity, TokenError> {
        if !self.has_keys() {
            return Err(TokenError::NotConfigured);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // Typically an unknown `alg` such as "none".
            ErrorKind::Json(_) => TokenError::Malformed(format!(
                "bad header (its alg must be one of: {})",
                self.accepted()
            )),
            _ => token_error(e),
        })?;
        let verifier = [&self.hmac, &self.public]
            .into_iter()
            .flatten()
            .find(|v| v.validation.algorithms.contains(&header.alg))
            .ok_or_else(|| TokenError::Algorithm {
                found: format!("{:?}", header.alg),
                accepted: self.accepted(),
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(token_error)?
            .claims;

        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
        if !exp.is_finite() || now >= exp + LEEWAY_SECS as f64 {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && (!nbf.is_finite() || now + (LEEWAY_SECS as f64) < nbf)
        {
            return Err(TokenError::NotYetValid);
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub (a non-empty string)"))?;
        Ok(Identity {
            user: sub.into(),
            channels: claims.channels,
            publish: claims.publish,
            // `exp` is finite and above `now >= 0`; `as` saturates.
            expires_at: Some(exp.ceil() as u64),
        })
    }

    fn accepted(&self) -> String {
        [&self.hmac, &self.public]
            .into_iter()
            .flatten()
            .map(|v| format!("{:?}", v.algorithm()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Verifier {
    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        // Every time and claim check is done here, after the signature, so the
        // rules (and the leeway) are ours; an `aud` claim is not checked
        // because no audience is configured.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        Verifier { key, validation }
    }

    fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }
}

/// When a token that expires at `expires_at` (Unix seconds) must end its
/// session, on the tokio clock; `None` when that is too far away to matter.
pub(crate) fn expiry_deadline(expires_at: u64) -> Option<tokio::time::Instant> {
    let left = (expires_at as f64 - unix_now()).max(0.0);
    let left = Duration::try_from_secs_f64(left).ok()?;
    if left > MAX_EXPIRY_WAIT {
        return None;
    }
    tokio::time::Instant::now().checked_add(left)
}

/// Reads the public key: RSA (RS256) or EC P-256 (ES256), PKCS#8 `PUBLIC KEY`
/// or PKCS#1 `RSA PUBLIC KEY`.
fn public_key(pem: &[u8]) -> Result<Verifier, KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let der = key
            .try_get_as_bytes()
            .map_err(|e| KeyError(format!("unusable RSA key: {e}")))?;
        let key_utils = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.key_utils;
        (key_utils.rsa_pub_components_from_public_key)(der).map_err(|_| {
            KeyError("not an RSA public key (a private key? give the public half)".into())
        })?;
        return Ok(Verifier::new(key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // Building an ES256 verifier parses the point: a P-384 key or a
        // damaged one fails here rather than on the first client.
        jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256)
            .map_err(|_| KeyError("an EC key, but not on curve P-256 (ES256)".into()))?;
        return Ok(Verifier::new(key, Algorithm::ES256));
    }
    Err(KeyError(
        "not an RSA or EC P-256 public key in PEM (expected -----BEGIN PUBLIC KEY-----)".into(),
    ))
}

/// Maps a library error to what the client is told.
fn token_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::Json(inner) => TokenError::Malformed(format!("bad claims: {inner}")),
        ErrorKind::InvalidToken => {
            TokenError::Malformed("not three base64url parts separated by dots".into())
        }
        ErrorKind::Base64(_) => TokenError::Malformed("bad base64url".into()),
        ErrorKind::Utf8(_) => TokenError::Malformed("claims are not UTF-8".into()),
        // The header's algorithm did not fit the key (already filtered above).
        ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
        _ => TokenError::Malformed(e.to_string()),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    const NOW: f64 = 1_700_000_000.0;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn auth(
        secret: Option<&str>,
        public_key: Option<&str>,
        allow_anonymous: bool,
    ) -> Authenticator {
        Authenticator::new(&AuthConfig {
            jwt_secret: secret.map(str::to_owned),
            jwt_public_key: public_key.map(fixture),
            allow_anonymous,
        })
        .expect("valid test configuration")
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).expect("signing works")
    }

    fn claims(exp: f64) -> Value {
        json!({"sub": "alice", "exp": exp})
    }

    #[test]
    fn hs256_token_gives_the_identity() {
        let a = auth(Some(SECRET), None, false);
        let token = hs256(&json!({
            "sub": "alice", "exp": NOW + 60.0,
            "channels": ["chat:*", "news"], "publish": [], "aud": "ignored", "extra": 1
        }));
        let id = a.verify_at(&token, NOW).expect("valid token");
        assert_eq!(&*id.user, "alice");
        assert_eq!(
            id.channels,
            Some(vec!["chat:*".to_owned(), "news".to_owned()])
        );
        assert_eq!(id.publish, Some(vec![]));
        assert_eq!(id.expires_at, Some(NOW as u64 + 60));
    }

    #[test]
    fn absent_lists_mean_no_restriction() {
        let a = auth(Some(SECRET), None, false);
        let id = a
            .verify_at(&hs256(&claims(NOW + 1.0)), NOW)
            .expect("valid token");
        assert_eq!(id.channels, None);
        assert_eq!(id.publish, None);
    }

    #[test]
    fn expiry_is_exact() {
        let a = auth(Some(SECRET), None, false);
        let token = hs256(&claims(NOW + 10.0));
        assert!(a.verify_at(&token, NOW + 9.999).is_ok());
        assert_eq!(
            a.verify_at(&token, NOW + 10.0).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            a.verify_at(&token, NOW + 3600.0).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn not_before_is_checked_when_present() {
        let a = auth(Some(SECRET), None, false);
        let token = hs256(&json!({"sub": "a", "exp": NOW + 60.0, "nbf": NOW + 5.0}));
        assert_eq!(
            a.verify_at(&token, NOW).unwrap_err(),
            TokenError::NotYetValid
        );
        assert!(a.verify_at(&token, NOW + 5.0).is_ok());
    }

    #[test]
    fn required_claims() {
        let a = auth(Some(SECRET), None, false);
        let no_exp = hs256(&json!({"sub": "alice"}));
        assert_eq!(
            a.verify_at(&no_exp, NOW).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
        for sub in [
            json!({"exp": NOW + 60.0}),
            json!({"sub": "", "exp": NOW + 60.0}),
        ] {
            assert!(matches!(
                a.verify_at(&hs256(&sub), NOW),
                Err(TokenError::MissingClaim(_))
            ));
        }
        // Wrong claim types are malformed, not a panic.
        for bad in [
            json!({"sub": 5, "exp": NOW + 60.0}),
            json!({"sub": "a", "exp": "soon"}),
            json!({"sub": "a", "exp": NOW + 60.0, "channels": "chat:*"}),
            json!({"sub": "a", "exp": NOW + 60.0, "publish": [1]}),
        ] {
            assert!(
                matches!(
                    a.verify_at(&hs256(&bad), NOW),
                    Err(TokenError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_signature_and_garbage_are_refused() {
        let a = auth(Some(SECRET), None, false);
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret entirely, same length.."),
            &claims(NOW + 60.0),
        );
        assert_eq!(
            a.verify_at(&other, NOW).unwrap_err(),
            TokenError::BadSignature
        );
        let good = hs256(&claims(NOW + 60.0));
        let mut tampered = good.clone();
        tampered.pop();
        tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
        assert!(a.verify_at(&tampered, NOW).is_err());
        for garbage in [
            "",
            "x",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "....",
            "ü.ü.ü",
            &"A".repeat(20_000),
        ] {
            assert!(a.verify_at(garbage, NOW).is_err(), "{garbage:?}");
        }
        // An unsigned token ("alg": "none").
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(a.verify_at(none, NOW).is_err());
    }

    #[test]
    fn wrong_algorithm_is_refused() {
        let a = auth(Some(SECRET), None, false);
        let hs512 = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims(NOW + 60.0),
        );
        assert!(matches!(
            a.verify_at(&hs512, NOW),
            Err(TokenError::Algorithm { .. })
        ));
        let rsa = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("rsa key");
        let rs256 = sign(Algorithm::RS256, &rsa, &claims(NOW + 60.0));
        let err = a.verify_at(&rs256, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token algorithm RS256 is not accepted here (accepted: HS256)"
        );
    }

    #[test]
    fn rs256_with_the_public_key() {
        let rsa = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("rsa key");
        let token = sign(Algorithm::RS256, &rsa, &claims(NOW + 60.0));
        for public in ["rsa_public.pem", "rsa_public_pkcs1.pem"] {
            let a = auth(None, Some(public), false);
            assert_eq!(&*a.verify_at(&token, NOW).expect(public).user, "alice");
        }
        // The RSA key does not verify an ES256 token, nor HS256 signed with the PEM text.
        let a = auth(None, Some("rsa_public.pem"), false);
        let ec = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).expect("ec key");
        let es256 = sign(Algorithm::ES256, &ec, &claims(NOW + 60.0));
        assert!(matches!(
            a.verify_at(&es256, NOW),
            Err(TokenError::Algorithm { .. })
        ));
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&fixture("rsa_public.pem")),
            &claims(NOW + 60.0),
        );
        assert!(matches!(
            a.verify_at(&confused, NOW),
            Err(TokenError::Algorithm { .. })
        ));
    }

    #[test]
    fn es256_with_the_public_key() {
        let ec = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).expect("ec key");
        let token = sign(Algorithm::ES256, &ec, &claims(NOW + 60.0));
        let a = auth(None, Some("ec_public.pem"), false);
        assert_eq!(&*a.verify_at(&token, NOW).expect("valid").user, "alice");
        let expired = sign(Algorithm::ES256, &ec, &claims(NOW - 1.0));
        assert_eq!(a.verify_at(&expired, NOW).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn secret_and_public_key_together() {
        let a = auth(Some(SECRET), Some("ec_public.pem"), false);
        let ec = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).expect("ec key");
        assert!(
            a.verify_at(&sign(Algorithm::ES256, &ec, &claims(NOW + 60.0)), NOW)
                .is_ok()
        );
        assert!(a.verify_at(&hs256(&claims(NOW + 60.0)), NOW).is_ok());
    }

    #[test]
    fn unusable_public_keys_are_refused_at_start() {
        for (pem, why) in [
            (fixture("ec_p384_public.pem"), "P-256"),
            (fixture("rsa_private.pem"), "private"),
            (
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
                "PEM",
            ),
            (b"not a key".to_vec(), "PEM"),
        ] {
            let err = Authenticator::new(&AuthConfig {
                jwt_secret: None,
                jwt_public_key: Some(pem),
                allow_anonymous: false,
            })
            .err()
            .expect("refused");
            assert!(err.to_string().contains(why), "{err} should mention {why}");
        }
    }

    #[test]
    fn anonymous_policy() {
        let open = auth(Some(SECRET), None, true);
        assert_eq!(&*open.identify(None).expect("anonymous").user, "");
        let closed = auth(Some(SECRET), None, false);
        assert_eq!(closed.identify(None).unwrap_err(), TokenError::Missing);
        let keyless = auth(None, None, true);
        assert_eq!(&*keyless.identify(None).expect("anonymous").user, "");
        assert_eq!(
            keyless.identify(Some("a.b.c")).unwrap_err(),
            TokenError::NotConfigured
        );
    }

    #[test]
    fn expiry_deadlines() {
        assert!(expiry_deadline(0).is_some_and(|d| d <= tokio::time::Instant::now()));
        assert!(expiry_deadline(u64::MAX).is_none());
        let soon = (unix_now() as u64) + 30;
        let d = expiry_deadline(soon).expect("30 s away");
        assert!(d > tokio::time::Instant::now() + Duration::from_secs(28));
    }
}
