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
/// `channel_data` is given (presence channels). `socket_id` is the
/// connection's own id, as the node gave it, never one the client names.
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
#[cfg(test)]
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
#[cfg(test)]
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
#[cfg(test)]
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
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    //! The fixtures were made by Pusher's own server SDKs, not by this code:
    //! the npm package `pusher` 5.3.4 (Node 20.20.2) and the PyPI package
    //! `pusher` 3.3.4 (Python 3.11.7), with key `sb-key-1`, secret
    //! `sb-secret-7f3a`, app id `123` and their clocks fixed at 1764790000.
    //! The requests are what each SDK sent to a local HTTP server: the
    //! request target as received and the body.

    use super::*;

    const KEY: &str = "sb-key-1";
    const SECRET: &str = "sb-secret-7f3a";
    const NOW: u64 = 1_764_790_000;
    const SOCKET: &str = "1234.5678";

    /// One request as an SDK sent it.
    struct Sent {
        method: &'static str,
        target: &'static str,
        body: &'static str,
    }

    impl Sent {
        fn verify_at(&self, now: u64) -> Result<(), ApiAuthError> {
            let (path, query) = self.target.split_once('?').unwrap();
            verify_request(
                KEY,
                SECRET,
                self.method,
                path,
                query,
                self.body.as_bytes(),
                now,
            )
        }
    }

    /// npm `pusher` 5.3.4: `trigger("orders", "created", {id: 42, note: "a b"}, {socket_id: "99.100"})`.
    const NODE_TRIGGER: Sent = Sent {
        method: "POST",
        target: "/apps/123/events?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&body_md5=4402d871f3b008aec06b0598283cb4b4&auth_signature=d37fbe9dfab3df4c7a307296614cbccb4a08d8d3f3d49ae63440c3cbc2060667",
        body: r#"{"name":"created","data":"{\"id\":42,\"note\":\"a b\"}","channels":["orders"],"socket_id":"99.100"}"#,
    };
    /// npm `pusher` 5.3.4: `trigger(["a-1", "b-2"], "tick", "plain string")`.
    const NODE_TRIGGER_MANY: Sent = Sent {
        method: "POST",
        target: "/apps/123/events?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&body_md5=5b83024ae3bf1291576a7e5485a1856b&auth_signature=d12c7d3e5d1ad7238e60c0ca341871393e042f348eb228cbc9e1caeebada680b",
        body: r#"{"name":"tick","data":"plain string","channels":["a-1","b-2"]}"#,
    };
    /// npm `pusher` 5.3.4: `get({path: "/channels", params: {filter_by_prefix: "presence-", info: "user_count,subscription_count"}})`.
    const NODE_CHANNELS: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&filter_by_prefix=presence-&info=user_count,subscription_count&auth_signature=d49c61635a143e97bbb4960edad8877d927f33ace293e976486cbf206c76bf72",
        body: "",
    };
    /// npm `pusher` 5.3.4: `get({path: "/channels/presence-room", params: {info: "user_count"}})`.
    const NODE_CHANNEL: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels/presence-room?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&info=user_count&auth_signature=60026fdf2684e3f0d463991d31634dec14e9cc73d714f89aa9c52322df387f70",
        body: "",
    };
    /// npm `pusher` 5.3.4: `get({path: "/channels/presence-room/users"})`.
    const NODE_USERS: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels/presence-room/users?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&auth_signature=3884cebc127975a1060b3a53892b4b67904e5ecaf839bd5528a166961394c626",
        body: "",
    };
    /// npm `pusher` 5.3.4: `terminateUserConnections("u-7")`.
    const NODE_TERMINATE: Sent = Sent {
        method: "POST",
        target: "/apps/123/users/u-7/terminate_connections?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature=a888122ff6928b58f45f7c49aa3f5363cbea5c8df1bc3ea8a3eb41fb6b51fdb7",
        body: "{}",
    };
    /// npm `pusher` 5.3.4: `triggerBatch([{channel: "orders", name: "e1", data: "x"}, {channel: "private-orders", name: "e2", data: {y: 1}}])`.
    const NODE_BATCH: Sent = Sent {
        method: "POST",
        target: "/apps/123/batch_events?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&body_md5=ae4ffdfea0b50772db3b6c012d580439&auth_signature=5a2a2b97d0e99bfc348f68dd351069525b7fd2943f396c4ddcb61e1389362147",
        body: r#"{"batch":[{"channel":"orders","name":"e1","data":"x"},{"channel":"private-orders","name":"e2","data":"{\"y\":1}"}]}"#,
    };
    /// npm `pusher` 5.3.4: `get({path: "/channels", params: {filter_by_prefix: "presence-a=b;c@d,e.é x"}})`:
    /// the SDK signs the value raw and its HTTP stack escapes `é` and the space.
    const NODE_ESCAPED: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels?auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&filter_by_prefix=presence-a=b;c@d,e.%C3%A9%20x&auth_signature=7a51a58a6fe457e29496fb1d58a3bbcc6677a90377729504c484a4ddd6b88d7d",
        body: "",
    };

    /// PyPI `pusher` 3.3.4: `trigger("orders", "created", {"id": 42, "note": "a b"}, socket_id="99.100")`.
    const PY_TRIGGER: Sent = Sent {
        method: "POST",
        target: "/apps/123/events?auth_key=sb-key-1&auth_signature=2484d1c577bb0fd02909fb6a41e7cd652a78a9600bf2f82694f91b16eb6d5f61&auth_timestamp=1764790000&auth_version=1.0&body_md5=a3ac28ab107f656d0bf8bbd189c64499",
        body: r#"{"name": "created", "channels": ["orders"], "data": "{\"id\": 42, \"note\": \"a b\"}", "socket_id": "99.100"}"#,
    };
    /// PyPI `pusher` 3.3.4: `channels_info(prefix_filter="presence-", attributes=["user_count", "subscription_count"])`
    /// (a GET with the MD5 of the empty body).
    const PY_CHANNELS: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels?auth_key=sb-key-1&auth_signature=3a3d56d93ad010b805f5274d24df0172fa8f9be7a627aa5820c880ae8a1d250a&auth_timestamp=1764790000&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count,subscription_count",
        body: "",
    };
    /// PyPI `pusher` 3.3.4: `channel_info("presence-room", ["user_count"])`.
    const PY_CHANNEL: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels/presence-room?auth_key=sb-key-1&auth_signature=8777506f469bdf7a511149dddca8f20863ee60e933fb13e4586de5db725d3241&auth_timestamp=1764790000&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&info=user_count",
        body: "",
    };
    /// PyPI `pusher` 3.3.4: `users_info("presence-room")`.
    const PY_USERS: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels/presence-room/users?auth_key=sb-key-1&auth_signature=642eba7b35c432c01a413c30986ccb3a40fc53ede61c23d62ec58056f71bfcc5&auth_timestamp=1764790000&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e",
        body: "",
    };
    /// PyPI `pusher` 3.3.4: `trigger_batch([{"channel": "orders", "name": "e1", "data": "x"}])`.
    const PY_BATCH: Sent = Sent {
        method: "POST",
        target: "/apps/123/batch_events?auth_key=sb-key-1&auth_signature=1102ffc2d61c01ac78880feb2486482ee32e8f6a87e69dfa28f880dc9e0d8ca8&auth_timestamp=1764790000&auth_version=1.0&body_md5=d03c3047f564af5d20c8bf1f7223a319",
        body: r#"{"batch": [{"channel": "orders", "name": "e1", "data": "x"}]}"#,
    };
    /// PyPI `pusher` 3.3.4: `channels_info(prefix_filter="presence-a=b;c@d,e.é x")`.
    const PY_ESCAPED: Sent = Sent {
        method: "GET",
        target: "/apps/123/channels?auth_key=sb-key-1&auth_signature=8e4de80c31e0ba01e497944f58d8de2de0b7fe370664bc4de5fd7a0dedba4de5&auth_timestamp=1764790000&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-a=b;c@d,e.%C3%A9%20x",
        body: "",
    };

    /// PyPI `pusher` 3.3.4: `terminate_user_connections("u-7")`. This SDK
    /// leaves `/apps/<id>` out of the path (and signs the path it sends).
    const PY_TERMINATE: Sent = Sent {
        method: "POST",
        target: "/users/u-7/terminate_connections?auth_key=sb-key-1&auth_signature=442e72f3248162fccd445cd67cb24c9ea8ea7c24901d8c8f2892f2abb595a4e6&auth_timestamp=1764790000&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b",
        body: "{}",
    };
    /// PyPI `pusher` 3.3.4: `send_to_user("u-7", "ev", {"a": 1})`, a trigger
    /// on the channel `#server-to-user-u-7` (the npm SDK's `sendToUser` does
    /// the same).
    const PY_SEND_TO_USER: Sent = Sent {
        method: "POST",
        target: "/apps/123/events?auth_key=sb-key-1&auth_signature=d63a1e88986d0c7fb8ecdc50e5cb8fcb91797c44d95910aab494d41cce15b58b&auth_timestamp=1764790000&auth_version=1.0&body_md5=85b0b0d50eb867b10a29f9c51d9a0629",
        body: r##"{"name": "ev", "channels": ["#server-to-user-u-7"], "data": "{\"a\": 1}"}"##,
    };

    const ALL_SENT: [&Sent; 16] = [
        &NODE_TRIGGER,
        &NODE_TRIGGER_MANY,
        &NODE_CHANNELS,
        &NODE_CHANNEL,
        &NODE_USERS,
        &NODE_TERMINATE,
        &NODE_BATCH,
        &NODE_ESCAPED,
        &PY_TRIGGER,
        &PY_CHANNELS,
        &PY_CHANNEL,
        &PY_USERS,
        &PY_BATCH,
        &PY_ESCAPED,
        &PY_TERMINATE,
        &PY_SEND_TO_USER,
    ];

    #[test]
    fn sdk_private_channel_auth_verifies() {
        // npm pusher 5.3.4 `authorizeChannel("1234.5678", "private-orders")`;
        // PyPI pusher 3.3.4 `authenticate(channel="private-orders", socket_id="1234.5678")`
        // gave the same value.
        let auth = "sb-key-1:84a7f2ab03ac52ef9ca7ab9d100f1d3abbec4de5caaa61797e62af9b33ec2588";
        assert_eq!(
            verify_channel_auth(KEY, SECRET, SOCKET, "private-orders", None, auth),
            Ok(())
        );
        assert_eq!(
            sign_channel_auth(KEY, SECRET, SOCKET, "private-orders", None),
            auth
        );
        // Bound to the socket and the channel.
        assert!(matches!(
            verify_channel_auth(KEY, SECRET, "1234.5679", "private-orders", None, auth),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            verify_channel_auth(KEY, SECRET, SOCKET, "private-orderz", None, auth),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn sdk_presence_channel_auth_verifies() {
        // npm pusher 5.3.4 `authorizeChannel("1234.5678", "presence-room",
        // {user_id: "u-7", user_info: {name: "Ada"}})`.
        let node_data = r#"{"user_id":"u-7","user_info":{"name":"Ada"}}"#;
        let node_auth = "sb-key-1:03fc2a44e087ccbaedeb11cafb23b36c1aa2771c2da648f254f058955b2b0319";
        // PyPI pusher 3.3.4 `authenticate(channel="presence-room", socket_id="1234.5678",
        // custom_data={...})`: json.dumps puts spaces after `:` and `,`.
        let py_data = r#"{"user_id": "u-7", "user_info": {"name": "Ada"}}"#;
        let py_auth = "sb-key-1:e686d5264108fd64e807aabe56dcdc21766f2b69d5afeed65afcbecd0ac50c27";
        for (data, auth) in [(node_data, node_auth), (py_data, py_auth)] {
            assert_eq!(
                verify_channel_auth(KEY, SECRET, SOCKET, "presence-room", Some(data), auth),
                Ok(())
            );
            assert_eq!(
                sign_channel_auth(KEY, SECRET, SOCKET, "presence-room", Some(data)),
                auth
            );
        }
        // The channel data is checked as sent: the other SDK's spelling of
        // the same JSON does not verify, nor does a changed user.
        assert!(matches!(
            verify_channel_auth(
                KEY,
                SECRET,
                SOCKET,
                "presence-room",
                Some(py_data),
                node_auth
            ),
            Err(AuthError::BadSignature(_))
        ));
        let other_user = node_data.replace("u-7", "u-8");
        assert!(matches!(
            verify_channel_auth(
                KEY,
                SECRET,
                SOCKET,
                "presence-room",
                Some(&other_user),
                node_auth
            ),
            Err(AuthError::BadSignature(_))
        ));
        // Without the channel data the signature covers something else.
        assert!(matches!(
            verify_channel_auth(KEY, SECRET, SOCKET, "presence-room", None, node_auth),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn sdk_user_auth_verifies() {
        // npm pusher 5.3.4 `authenticateUser("1234.5678", {id: "u-7", user_info: {name: "Ada"}})`.
        let node_data = r#"{"id":"u-7","user_info":{"name":"Ada"}}"#;
        let node_auth = "sb-key-1:8a012e14e10002a76c3a4118dcb22445e91e2ded1ef27094e39bc442d9530d06";
        // PyPI pusher 3.3.4 `authenticate_user("1234.5678", {"id": "u-7", "user_info": {"name": "Ada"}})`.
        let py_data = r#"{"id": "u-7", "user_info": {"name": "Ada"}}"#;
        let py_auth = "sb-key-1:7db32d2340b773fa425b5bfffab77b7b931d5b7b9f298bca513bb86a417f9dbe";
        for (data, auth) in [(node_data, node_auth), (py_data, py_auth)] {
            assert_eq!(verify_user_auth(KEY, SECRET, SOCKET, data, auth), Ok(()));
            assert_eq!(sign_user_auth(KEY, SECRET, SOCKET, data), auth);
        }
        assert!(matches!(
            verify_user_auth(KEY, SECRET, "1.2", node_data, node_auth),
            Err(AuthError::BadSignature(_))
        ));
        // A channel authorization is not a sign-in.
        let channel_auth = sign_channel_auth(KEY, SECRET, SOCKET, "private-orders", None);
        assert!(verify_user_auth(KEY, SECRET, SOCKET, node_data, &channel_auth).is_err());
    }

    #[test]
    fn auth_value_errors_are_told_apart() {
        let data = "{\"id\":\"u-7\"}";
        let good = sign_user_auth(KEY, SECRET, SOCKET, data);
        let sig = good.rsplit_once(':').unwrap().1;
        for malformed in ["", "no-colon", ":", "sb-key-1:", &format!(":{sig}")] {
            assert_eq!(
                verify_user_auth(KEY, SECRET, SOCKET, data, malformed),
                Err(AuthError::Malformed),
                "{malformed:?}"
            );
        }
        assert_eq!(
            verify_user_auth(KEY, SECRET, SOCKET, data, &format!("other-key:{sig}")),
            Err(AuthError::WrongKey("other-key".into()))
        );
        let err = verify_user_auth(KEY, SECRET, SOCKET, data, "sb-key-1:00ff").unwrap_err();
        assert_eq!(
            err,
            AuthError::BadSignature("1234.5678::user::{\"id\":\"u-7\"}".into())
        );
        assert!(err.to_string().contains("1234.5678::user::"));
        // Signed with another secret.
        let forged = sign_user_auth(KEY, "not-the-secret", SOCKET, data);
        assert!(matches!(
            verify_user_auth(KEY, SECRET, SOCKET, data, &forged),
            Err(AuthError::BadSignature(_))
        ));
        // Upper-case hex is the same signature.
        let upper = format!("{KEY}:{}", sig.to_ascii_uppercase());
        assert_eq!(verify_user_auth(KEY, SECRET, SOCKET, data, &upper), Ok(()));
        // A key that contains ':' stays whole.
        let colon_key = sign_user_auth("a:b", SECRET, SOCKET, data);
        assert_eq!(
            verify_user_auth("a:b", SECRET, SOCKET, data, &colon_key),
            Ok(())
        );
    }

    #[test]
    fn sdk_requests_verify() {
        for sent in ALL_SENT {
            assert_eq!(sent.verify_at(NOW), Ok(()), "{}", sent.target);
        }
    }

    #[test]
    fn timestamps_within_600_seconds_either_way_verify() {
        for now in [NOW - 599, NOW + 599] {
            assert_eq!(NODE_TRIGGER.verify_at(now), Ok(()));
        }
        for now in [NOW - 600, NOW + 600, NOW + 86_400, 0] {
            assert_eq!(
                NODE_TRIGGER.verify_at(now),
                Err(ApiAuthError::Expired {
                    timestamp: NOW,
                    now
                }),
                "now {now}"
            );
        }
        let err = PY_CHANNELS.verify_at(NOW + 601).unwrap_err();
        assert!(err.to_string().contains("not within 600 s"), "{err}");
    }

    #[test]
    fn tampered_body_is_refused() {
        let (path, query) = NODE_TRIGGER.target.split_once('?').unwrap();
        let tampered = NODE_TRIGGER.body.replace("orders", "admins");
        let err =
            verify_request(KEY, SECRET, "POST", path, query, tampered.as_bytes(), NOW).unwrap_err();
        assert_eq!(
            err,
            ApiAuthError::BodyMd5Mismatch {
                given: "4402d871f3b008aec06b0598283cb4b4".into(),
                actual: hex(&Md5::digest(tampered.as_bytes())),
            }
        );
        // A body added to a GET signed without one.
        let (path, query) = NODE_CHANNELS.target.split_once('?').unwrap();
        assert_eq!(
            verify_request(KEY, SECRET, "GET", path, query, b"{}", NOW),
            Err(ApiAuthError::MissingBodyMd5)
        );
        // The Python SDK's GET carries the MD5 of the empty body.
        let (path, query) = PY_CHANNELS.target.split_once('?').unwrap();
        assert!(matches!(
            verify_request(KEY, SECRET, "GET", path, query, b"x", NOW),
            Err(ApiAuthError::BodyMd5Mismatch { .. })
        ));
    }

    #[test]
    fn tampered_query_path_or_method_is_refused() {
        let (path, query) = NODE_CHANNELS.target.split_once('?').unwrap();
        let query_other_prefix = query.replace("presence-", "private-");
        let cases = [
            ("GET", path, query_other_prefix.as_str()),
            ("GET", "/apps/124/channels", query),
            ("POST", path, query),
        ];
        for (method, path, query) in cases {
            let err = verify_request(KEY, SECRET, method, path, query, b"", NOW).unwrap_err();
            assert!(
                matches!(err, ApiAuthError::BadSignature { .. }),
                "{method} {path}?{query}: {err}"
            );
        }
        // The message shows what the node signed (Pusher's servers do the same).
        let err = verify_request(KEY, SECRET, "POST", path, query, b"", NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid signature: expected the hex HMAC-SHA256 of \"POST\\n/apps/123/channels\\n\
             auth_key=sb-key-1&auth_timestamp=1764790000&auth_version=1.0&\
             filter_by_prefix=presence-&info=user_count,subscription_count\" with the app secret"
        );
        // An added parameter is covered by the signature too.
        let extra = format!("{query}&socket_id=1.2");
        assert!(matches!(
            verify_request(KEY, SECRET, "GET", path, &extra, b"", NOW),
            Err(ApiAuthError::BadSignature { .. })
        ));
        // The method is compared upper-cased, as it is signed.
        assert_eq!(
            verify_request(KEY, SECRET, "get", path, query, b"", NOW),
            Ok(())
        );
    }

    #[test]
    fn wrong_key_secret_or_missing_params_are_refused() {
        let (path, query) = NODE_USERS.target.split_once('?').unwrap();
        assert_eq!(
            verify_request("other-key", SECRET, "GET", path, query, b"", NOW),
            Err(ApiAuthError::WrongKey("sb-key-1".into()))
        );
        assert!(matches!(
            verify_request(KEY, "other-secret", "GET", path, query, b"", NOW),
            Err(ApiAuthError::BadSignature { .. })
        ));
        for (param, missing) in [
            ("auth_key", ApiAuthError::Missing("auth_key")),
            ("auth_signature", ApiAuthError::Missing("auth_signature")),
            ("auth_timestamp", ApiAuthError::Missing("auth_timestamp")),
            ("auth_version", ApiAuthError::Missing("auth_version")),
        ] {
            let without: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with(&format!("{param}=")))
                .collect();
            assert_eq!(
                verify_request(KEY, SECRET, "GET", path, &without.join("&"), b"", NOW),
                Err(missing),
                "without {param}"
            );
        }
        let (path, query) = NODE_TRIGGER.target.split_once('?').unwrap();
        let without_md5: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("body_md5="))
            .collect();
        assert_eq!(
            verify_request(
                KEY,
                SECRET,
                "POST",
                path,
                &without_md5.join("&"),
                NODE_TRIGGER.body.as_bytes(),
                NOW
            ),
            Err(ApiAuthError::MissingBodyMd5)
        );
        assert_eq!(
            verify_request(KEY, SECRET, "GET", path, "", b"", NOW),
            Err(ApiAuthError::Missing("auth_key"))
        );
    }

    #[test]
    fn bad_timestamp_version_and_query_are_refused() {
        let (path, query) = NODE_USERS.target.split_once('?').unwrap();
        let check = |q: String| verify_request(KEY, SECRET, "GET", path, &q, b"", NOW);
        assert_eq!(
            check(query.replace("auth_timestamp=1764790000", "auth_timestamp=soon")),
            Err(ApiAuthError::BadTimestamp("soon".into()))
        );
        assert_eq!(
            check(query.replace("auth_version=1.0", "auth_version=2.0")),
            Err(ApiAuthError::UnsupportedVersion("2.0".into()))
        );
        for bad in ["%zz", "%4", "%ff"] {
            assert!(
                matches!(
                    check(format!("{query}&x={bad}")),
                    Err(ApiAuthError::MalformedQuery(_))
                ),
                "{bad}"
            );
        }
        // Given twice, or twice once keys are lowercased.
        for dup in ["auth_key=sb-key-1", "AUTH_KEY=sb-key-1"] {
            assert!(matches!(
                check(format!("{query}&{dup}")),
                Err(ApiAuthError::MalformedQuery(_))
            ));
        }
    }

    #[test]
    fn query_keys_are_lowercased_and_values_decoded_before_signing() {
        // Upper-case keys and escaped values, as other HTTP stacks may send
        // them, verify against the signature of the plain form.
        let (path, query) = NODE_CHANNELS.target.split_once('?').unwrap();
        let variant = query
            .replace("filter_by_prefix=presence-", "Filter_By_Prefix=presence%2D")
            .replace(
                "info=user_count,subscription_count",
                "INFO=user_count%2Csubscription_count",
            );
        assert_eq!(
            verify_request(KEY, SECRET, "GET", path, &variant, b"", NOW),
            Ok(())
        );
        // An escaped path verifies against the signature of the plain one.
        let (path, query) = NODE_USERS.target.split_once('?').unwrap();
        let escaped_path = path.replace("presence-room", "presence%2Droom");
        assert_eq!(
            verify_request(KEY, SECRET, "GET", &escaped_path, query, b"", NOW),
            Ok(())
        );
    }

    #[test]
    fn sign_request_matches_the_sdks() {
        // Our signer (for tests and tools) produces what the Node SDK sent.
        let signed = sign_request(
            KEY,
            SECRET,
            "POST",
            "/apps/123/events",
            &[],
            NODE_TRIGGER.body.as_bytes(),
            NOW,
        );
        assert_eq!(signed, NODE_TRIGGER.target.split_once('?').unwrap().1);
        let params = [("filter_by_prefix", "presence-a=b;c@d,e.é x")];
        let signed = sign_request(KEY, SECRET, "GET", "/apps/123/channels", &params, b"", NOW);
        let expected_sig =
            "auth_signature=7a51a58a6fe457e29496fb1d58a3bbcc6677a90377729504c484a4ddd6b88d7d";
        assert!(signed.ends_with(expected_sig), "{signed}");
        assert_eq!(
            verify_request(KEY, SECRET, "GET", "/apps/123/channels", &signed, b"", NOW),
            Ok(())
        );
    }

    #[test]
    fn webhook_signature_is_the_hmac_of_the_body() {
        // npm pusher 5.3.4 signed this body with the token its
        // `WebHook.isValid()` checks against, and accepted the result with
        // `X-Pusher-Key: sb-key-1` and `Content-Type: application/json`.
        let body = br#"{"time_ms":1764790000000,"events":[{"name":"channel_occupied","channel":"orders"}]}"#;
        assert_eq!(
            webhook_signature(SECRET, body),
            "0fe5b405257b47965aca81f35cd28a6fea69010bdc9b0e8ddb89684629dbd27b"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_compare_exactly() {
        assert!(signatures_equal("00ab", "00AB"));
        assert!(!signatures_equal("00ab", "00ac"));
        assert!(!signatures_equal("00ab", "00ab0"));
        assert!(!signatures_equal("00ab", ""));
    }
}
