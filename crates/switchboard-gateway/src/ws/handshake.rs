//! The checks an upgrade request must pass before it is answered 101
//! (RFC 6455 4.2.1), whatever the path and the node's own admission rules.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};

/// The only WebSocket version there is (RFC 6455 4.4).
pub const VERSION: &str = "13";

/// Why an upgrade request is refused, and how to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 426 Upgrade Required when the request asks for a WebSocket
    /// version other than 13 (the answer then carries
    /// `Sec-WebSocket-Version: 13`, see [`Refusal::headers`]).
    pub status: StatusCode,
    /// A short label, for metrics (`switchboard_upgrades_rejected_total{reason}`).
    pub reason: &'static str,
    /// What is wrong, for the response body.
    pub message: &'static str,
}

impl Refusal {
    fn bad(reason: &'static str, message: &'static str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason,
            message,
        }
    }

    /// Headers the answer must carry (the supported version, on a 426).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(VERSION),
            );
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        headers
    }
}

/// Checks an upgrade request: `GET` over HTTP/1.1 or later (an HTTP/1.0
/// request cannot upgrade: 400), `Connection: Upgrade` and
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13` (else 426 naming 13),
/// and a `Sec-WebSocket-Key` that is the base64 of exactly 16 bytes.
pub fn check<B>(req: &Request<B>) -> Result<(), Refusal> {
    if req.method() != Method::GET {
        return Err(Refusal::bad(
            "not_websocket",
            "a WebSocket upgrade is a GET",
        ));
    }
    if req.version() < Version::HTTP_11 {
        return Err(Refusal::bad(
            "http_version",
            "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 4.1)",
        ));
    }
    let headers = req.headers();
    if !has_token(headers, &header::CONNECTION, "upgrade")
        || !has_token(headers, &header::UPGRADE, "websocket")
    {
        return Err(Refusal::bad(
            "not_websocket",
            "expected a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if versions.next().map(HeaderValue::as_bytes) != Some(VERSION.as_bytes())
        || versions.next().is_some()
    {
        return Err(Refusal {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "websocket_version",
            message: "unsupported Sec-WebSocket-Version: this server speaks version 13",
        });
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => is_nonce(key.as_bytes()),
        _ => false,
    };
    if !key_ok {
        return Err(Refusal::bad(
            "websocket_key",
            "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
        ));
    }
    Ok(())
}

/// Whether a comma-separated header lists `token` (ignoring ASCII case).
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `key` is the canonical base64 of exactly 16 bytes: 22 characters
/// of the standard alphabet, the last carrying 2 bits (so one of `AQgw`), then `==`.
fn is_nonce(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..21].iter().all(base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn with<'a>(replace: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
        GOOD.iter()
            .map(|&(k, v)| if k == replace.0 { replace } else { (k, v) })
            .collect()
    }

    #[test]
    fn a_good_request_passes() {
        assert_eq!(check(&request(Version::HTTP_11, &GOOD)), Ok(()));
    }

    #[test]
    fn http_1_0_is_refused() {
        let refusal = check(&request(Version::HTTP_10, &GOOD)).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.reason, "http_version");
    }

    #[test]
    fn other_versions_get_426_naming_13() {
        for v in ["8", "12", "14", "", "13, 8"] {
            let refusal = check(&request(
                Version::HTTP_11,
                &with(("sec-websocket-version", v)),
            ))
            .unwrap_err();
            assert_eq!(refusal.status, StatusCode::UPGRADE_REQUIRED, "{v:?}");
            assert_eq!(
                refusal
                    .headers()
                    .get(header::SEC_WEBSOCKET_VERSION)
                    .unwrap(),
                "13"
            );
        }
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",    // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",   // short padding
            "dGhlIHNhbXBsZSBub25jZR==",  // stray bits in the last character
            "dGhlIHNhbXBsZSBub25j",      // 15 bytes
            "dGhlIHNhbXBsZSBub25jZSE=",  // 17 bytes
            "dGhlIHNhbXBsZSBub25j!Q==",  // not base64
            "dGhlIHNhbXBsZSBub25jZQ== ", // trailing space kept by the header
        ] {
            let refusal = check(&request(
                Version::HTTP_11,
                &with(("sec-websocket-key", key)),
            ))
            .unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{key:?}");
            assert_eq!(refusal.reason, "websocket_key", "{key:?}");
        }
        // Random 16-byte keys of real clients.
        for key in [
            "x3JJHMbDL1EzLkh9GBhXDw==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
        ] {
            assert_eq!(
                check(&request(
                    Version::HTTP_11,
                    &with(("sec-websocket-key", key))
                )),
                Ok(()),
                "{key}"
            );
        }
    }

    #[test]
    fn connection_and_upgrade_tokens_are_required() {
        for h in [("connection", "keep-alive"), ("upgrade", "h2c")] {
            let refusal = check(&request(Version::HTTP_11, &with(h))).unwrap_err();
            assert_eq!(refusal.reason, "not_websocket", "{h:?}");
        }
    }
}
