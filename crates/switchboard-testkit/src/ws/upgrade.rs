//! Upgrades that may be refused: how an attempt ended, and the HTTP answer of a refusal.

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Stream, WsClient};
use crate::RECV_TIMEOUT;

/// An upgrade refused with an HTTP answer.
#[derive(Debug)]
pub struct Refusal {
    /// The status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Refusal {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How an upgrade attempt ended.
#[derive(Debug)]
pub enum Upgrade {
    /// 101 Switching Protocols; the selected subprotocol, if any.
    Accepted(Option<String>),
    /// Refused with this HTTP status (and body).
    Refused(u16, String),
}

impl WsClient {
    /// Attempts an upgrade and reports how it ended, without reading any frame.
    pub async fn try_upgrade(url: &str, protocols: &[&str], headers: &[(&str, &str)]) -> Upgrade {
        match open(url, protocols, headers).await {
            Ok((_ws, protocol)) => Upgrade::Accepted(protocol),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Upgrade::Refused(response.status().as_u16(), body)
            }
            Err(e) => panic!("upgrade at {url} failed below HTTP: {e}"),
        }
    }

    /// Attempts an upgrade; `None` when it was accepted (the connection is dropped),
    /// else the refusal with its headers.
    pub async fn refusal(
        url: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> Option<Refusal> {
        match open(url, protocols, headers).await {
            Ok(_) => None,
            Err(tungstenite::Error::Http(response)) => Some(Refusal {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("upgrade at {url} failed below HTTP: {e}"),
        }
    }
}

/// Opens a WebSocket, offering `protocols`, with extra request headers.
pub(super) async fn open(
    url: &str,
    protocols: &[&str],
    headers: &[(&str, &str)],
) -> Result<(Stream, Option<String>), tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", ")).expect("protocol header"),
        );
    }
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let (ws, response) =
        tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("WebSocket handshake with {url} timed out"))?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, protocol))
}
