//! The signatures of the Pusher protocol (docs/PROTOCOL.md, section 8): pure
//! functions of the app's key and secret, no node state.
//!
//! - Channel authorization: a client subscribing to `private-*` or
//!   `presence-*` sends `auth = "<key>:<hex HMAC-SHA256(secret, S)>"` with
//!   `S = "<socket_id>:<channel>"`, or `"<socket_id>:<channel>:<channel_data>"`
//!   on presence channels.
//! - User authentication (`pusher:signin`): the same form of `auth` with
//!   `S = "<socket_id>::user::<user_data>"`.
//! - HTTP API requests: query parameters `auth_key`, `auth_timestamp`,
//!   `auth_version=1.0`, `body_md5` (hex MD5 of the body) and
//!   `auth_signature = hex HMAC-SHA256(secret, "METHOD\nPATH\nQ")`, where `Q`
//!   is every other query parameter, percent-decoded, keys lowercased, sorted
//!   by key and joined as `key=value` with `&`, without escaping anything.
//! - Webhooks: `X-Pusher-Signature` is the hex HMAC-SHA256 of the body.
//!
//! Signatures are compared in constant time. The `data` strings signed
//! (channel data, user data, bodies) are checked byte for byte as the client
//! sent them: they are never re-serialised before the check.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use thiserror::Error;

/// How far `auth_timestamp` may be from the node's clock, either way: a
/// request is refused once the difference reaches this many seconds (as
/// Pusher's own servers do).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// The only `auth_version` there is.
pub const AUTH_VERSION: &str = "1.0";

/// Why a channel authorization or a sign-in `auth` value was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// Not of the form `<key>:<signature>`.
    #[error("auth value is malformed: expected \"<app key>:<hex HMAC-SHA256 signature>\"")]
    Malformed,
    /// The key before the `:` is not this app's key.
    #[error("auth value names key {0:?}, which is not this app's key")]
    WrongKey(String),
    /// The signature does not match the signed string.
    #[error("invalid signature: expected the hex HMAC-SHA256 of {0:?} with the app secret")]
    BadSignature(String),
}

/// Why a signed HTTP API request was refused; the message is the body of the
/// 401 answer and tells the caller what to fix.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ApiAuthError {
    /// The query string does not decode (bad `%` escape, not UTF-8, or a
    /// parameter given twice).
    #[error("malformed query string: {0}")]
    MalformedQuery(String),
    /// A required authentication parameter is absent.
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("unknown auth_key {0:?}")]
    WrongKey(String),
    /// `auth_timestamp` is not a number of seconds.
    #[error("auth_timestamp {0:?} is not a Unix time in seconds")]
    BadTimestamp(String),
    /// `auth_timestamp` is too far from the node's clock.
    #[error(
        "timestamp expired: auth_timestamp {timestamp} is not within {MAX_CLOCK_SKEW_SECS} s of \
         the server time {now}"
    )]
    Expired {
        /// The request's `auth_timestamp`.
        timestamp: u64,
        /// The node's clock, in seconds since the Unix epoch.
        now: u64,
    },
    /// `auth_version` is not `1.0`.
    #[error("auth_version {0:?} is not supported (only 1.0 is)")]
    UnsupportedVersion(String),
    /// The request has a body but no `body_md5`.
    #[error("missing query parameter body_md5 (the hex MD5 of the request body)")]
    MissingBodyMd5,
    /// `body_md5` is not the MD5 of the body received.
    #[error("body_md5 {given:?} does not match the body received (its MD5 is {actual})")]
    BodyMd5Mismatch {
        /// The request's `body_md5`.
        given: String,
        /// The hex MD5 of the body the node received.
        actual: String,
    },
    /// `auth_signature` does not match the request.
    #[error(
        "invalid signature: expected the hex HMAC-SHA256 of {string_to_sign:?} with the app secret"
    )]
    BadSignature {
        /// What the node signed, so the caller can compare with what it signed.
        string_to_sign: String,
    },
}

/// The hex (lowercase) HMAC-SHA256 of `message` with `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

/// Whether two hex signatures are equal, ignoring ASCII case, in time that
/// depends only on their lengths (which are public).
pub fn signatures_equal(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    });
    diff == 0
}

/// Checks a channel authorization: `auth` must be `"<key>:<signature>"` for
/// `socket_id:channel`, or `socket_id:channel:channel_data` when
/// `channel_data` is given (presence channels).
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    let signed = channel_string_to_sign(socket_id, channel, channel_data);
    verify_auth_value(key, secret, &signed, auth)
}

/// The `auth` value that authorizes `socket_id` on `channel` (what an app's
/// auth endpoint answers); for tests and tools.
pub fn sign_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let signed = channel_string_to_sign(socket_id, channel, channel_data);
    format!(
        "{key}:{}",
        hmac_sha256_hex(secret.as_bytes(), signed.as_bytes())
    )
}

/// Checks a `pusher:signin`: `auth` must be `"<key>:<signature>"` for
/// `socket_id::user::user_data`, with `user_data` exactly as the client sent it.
pub fn verify_user_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    verify_auth_value(
        key,
        secret,
        &user_string_to_sign(socket_id, user_data),
        auth,
    )
}

/// The `auth` value that signs `user_data` in for `socket_id`; for tests and tools.
pub fn sign_user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    let signed = user_string_to_sign(socket_id, user_data);
    format!(
        "{key}:{}",
        hmac_sha256_hex(secret.as_bytes(), signed.as_bytes())
    )
}

/// Verifies a signed HTTP API request at `now_secs` (seconds since the Unix
/// epoch). `path` is the request path as received and `raw_query` the query
/// string without its `?`.
///
/// `body_md5` is required when the body is not empty; when present it is
/// checked even for an empty body (the Python SDK sends the MD5 of the empty
/// body on GET requests, the Node SDK sends none).
pub fn verify_request(
    app_key: &str,
    secret: &str,
    method: &str,
    path: &str,
    raw_query: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), ApiAuthError> {
    let params = parse_query(raw_query)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    if key != app_key {
        return Err(ApiAuthError::WrongKey(key.to_owned()));
    }
    let signature = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let timestamp = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let timestamp: u64 = timestamp
        .parse()
        .map_err(|_| ApiAuthError::BadTimestamp(timestamp.to_owned()))?;
    if timestamp.abs_diff(now_secs) >= MAX_CLOCK_SKEW_SECS {
        return Err(ApiAuthError::Expired {
            timestamp,
            now: now_secs,
        });
    }
    let version = get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    if version != AUTH_VERSION {
        return Err(ApiAuthError::UnsupportedVersion(version.to_owned()));
    }
    match get("body_md5") {
        None if !body.is_empty() => return Err(ApiAuthError::MissingBodyMd5),
        None => {}
        Some(given) => {
            let actual = hex(&Md5::digest(body));
            if !given.eq_ignore_ascii_case(&actual) {
                return Err(ApiAuthError::BodyMd5Mismatch {
                    given: given.to_owned(),
                    actual,
                });
            }
        }
    }

    let mut signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let query: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let method = method.to_ascii_uppercase();

    let string_to_sign = format!("{method}\n{path}\n{query}");
    if signatures_equal(
        &hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes()),
        signature,
    ) {
        return Ok(());
    }
    // A client may have escaped a character of the path that it signed
    // unescaped (Pusher channel names never need escaping, but some HTTP
    // stacks escape anyway).
    if path.contains('%')
        && let Ok(decoded) = percent_decode(path, false)
    {
        let alternative = format!("{method}\n{decoded}\n{query}");
        if signatures_equal(
            &hmac_sha256_hex(secret.as_bytes(), alternative.as_bytes()),
            signature,
        ) {
            return Ok(());
        }
    }
    Err(ApiAuthError::BadSignature { string_to_sign })
}

/// The query string (without `?`) that signs a request as Pusher's server
/// SDKs do: `params` plus `auth_key`, `auth_timestamp`, `auth_version` and,
/// for a non-empty body, `body_md5`, then `auth_signature`. Values are
/// percent-encoded where the query syntax needs it; the signature covers them
/// unescaped. For tests and tools (the node verifies, it does not sign).
pub fn sign_request(
    app_key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = hex(&Md5::digest(body));
    let mut all: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), *v))
        .collect();
    all.push(("auth_key".into(), app_key));
    all.push(("auth_timestamp".into(), &timestamp));
    all.push(("auth_version".into(), AUTH_VERSION));
    if !body.is_empty() {
        all.push(("body_md5".into(), &md5));
    }
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let plain: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let string_to_sign = format!(
        "{}\n{path}\n{}",
        method.to_ascii_uppercase(),
        plain.join("&")
    );
    let signature = hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes());
    let mut escaped: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    escaped.push(format!("auth_signature={signature}"));
    escaped.join("&")
}

/// The `X-Pusher-Signature` of a webhook: the hex HMAC-SHA256 of its body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), body)
}

fn channel_string_to_sign(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Checks `"<key>:<signature>"` against `signed`. The signature is hex, so it
/// has no `:`: splitting at the last one keeps keys that contain `:` whole.
fn verify_auth_value(key: &str, secret: &str, signed: &str, auth: &str) -> Result<(), AuthError> {
    let (given_key, signature) = auth.rsplit_once(':').ok_or(AuthError::Malformed)?;
    if given_key.is_empty() || signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    if given_key != key {
        return Err(AuthError::WrongKey(given_key.to_owned()));
    }
    let expected = hmac_sha256_hex(secret.as_bytes(), signed.as_bytes());
    if signatures_equal(&expected, signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature(signed.to_owned()))
    }
}

/// Splits and decodes a query string into `(lowercased key, value)` pairs.
/// `+` decodes to a space (form encoding, as Pusher's servers read it); a
/// parameter given twice is refused rather than guessed at.
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, ApiAuthError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k, true)?.to_ascii_lowercase();
        let v = percent_decode(v, true)?;
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiAuthError::MalformedQuery(format!(
                "parameter {k:?} is given more than once"
            )));
        }
        params.push((k, v));
    }
    Ok(params)
}

fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, ApiAuthError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex_value(h[0])? << 4 | hex_value(h[1])?))
                    .ok_or_else(|| {
                        ApiAuthError::MalformedQuery(format!("bad percent escape in {s:?}"))
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiAuthError::MalformedQuery(format!("{s:?} does not decode to UTF-8")))
}

/// Escapes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
