//! A minimal keep-alive HTTP/1.1 client for the node's server API.
//!
//! Publishers send one request at a time per connection and wait for its answer, because a
//! 2xx means the backplane accepted the message: the next publish of the same publisher is
//! therefore ordered after it, which is what lets subscribers check per-publisher order even
//! when consecutive publishes go to different nodes. One hyper `http1` connection per
//! (publisher, node) pair, reopened after any failure, keeps the per-request cost at one
//! write and one read.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a node's internal listener is, parsed from an `http://host:port[/prefix]` URL.
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
    /// Path prefix (without trailing `/`) put before `/api/v1/...`.
    prefix: String,
    /// `Authorization: apikey <key>`, when the node wants one.
    auth: Option<HeaderValue>,
}

/// One keep-alive connection to one node, opened lazily and reopened after a failure.
pub struct ApiClient {
    endpoint: ApiEndpoint,
    conn: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl ApiEndpoint {
    /// Parses `http://host:port[/prefix]`; `https` is not supported (the internal listener is
    /// plain HTTP on a private address).
    pub fn parse(url: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("bad --api URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--api URL {url:?}: only http:// is supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--api URL {url:?} has no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let auth = api_key
            .map(|k| HeaderValue::from_str(&format!("apikey {k}")))
            .transpose()
            .context("--api-key is not a valid header value")?;
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            auth,
        })
    }
}

impl ApiClient {
    /// A client for `endpoint`; nothing is connected until the first request.
    pub fn new(endpoint: ApiEndpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            conn: None,
            timeout,
        }
    }

    /// Opens the connection now, so that the first timed publish does not pay for it.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.endpoint).await?);
        }
        Ok(())
    }

    /// `POST /api/v1/publish` with `body`: the answer's status and body
    /// (`{"offset":N,"epoch":E}` on a channel with history), reading the whole answer so the
    /// connection can be reused. `Err` means no answer. Not cancel-safe: a cancelled call
    /// leaves the connection mid-request, so it is dropped and reopened (the timeout does
    /// exactly that).
    pub async fn publish_with_reply(&mut self, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let r = tokio::time::timeout(
            self.timeout,
            self.request(Method::POST, "/api/v1/publish", Some(body)),
        )
        .await;
        let r = r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", self.timeout)));
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// `GET path` (e.g. `/metrics`), with the answer's status and body. Not cancel-safe, as
    /// [`ApiClient::publish_with_reply`].
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let r = tokio::time::timeout(self.timeout, self.request(Method::GET, path, None)).await;
        let r = r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", self.timeout)));
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.connect().await?;
        let Some(conn) = self.conn.as_mut() else {
            bail!("not connected");
        };
        conn.ready().await.context("connection closed")?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.prefix))
            .header(HOST, &self.endpoint.authority);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &self.endpoint.auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let resp = conn
            .send_request(req.body(Full::new(body.unwrap_or_default()))?)
            .await?;
        let status = resp.status();
        // Read the whole body: the connection is reusable only once the answer is fully read.
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn open(endpoint: &ApiEndpoint) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(&endpoint.authority)
        .await
        .with_context(|| format!("connecting to {}", endpoint.authority))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    // The connection future does the actual I/O; it ends when `send` is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_urls() {
        let e = ApiEndpoint::parse("http://127.0.0.1:9090", None).unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("127.0.0.1:9090", "")
        );
        let e = ApiEndpoint::parse("http://node-a/gw/", Some("k")).unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("node-a:80", "/gw")
        );
        assert_eq!(e.auth.unwrap(), "apikey k");
        assert!(ApiEndpoint::parse("https://x:1", None).is_err());
        assert!(ApiEndpoint::parse("nope", None).is_err());
    }
}
