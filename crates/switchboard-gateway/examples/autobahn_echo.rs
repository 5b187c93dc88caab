//! An echo server on the node's own WebSocket layer, for the Autobahn
//! TestSuite (`.ci/steps/15-autobahn.sh`):
//!
//! ```text
//! cargo run --release -p switchboard-gateway --example autobahn_echo -- 127.0.0.1:9001
//! ```
//!
//! It accepts the upgrade on any path after the node's own handshake checks
//! (`ws::handshake`), then reads with the node's frame parser, writes with the
//! outbox a session writes with (`ws::Writer`), and closes with the session's
//! closing handshake. Every text or binary message is sent back as it came,
//! up to [`MAX_MESSAGE`] bytes; pings are answered with pongs.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_gateway::ws::{self, Closing, Event, OpCode, Parser, Writer};
use tokio::net::{TcpListener, TcpStream};

/// Largest message echoed (the Autobahn cases go up to 16 MiB).
const MAX_MESSAGE: usize = 32 << 20;
/// Frames queued behind a full socket at most.
const QUEUE: usize = 1024;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!("autobahn_echo listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tcp), service_fn(upgrade))
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("http connection: {e}");
            }
        });
    }
}

type Body = Full<Bytes>;

async fn upgrade(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Err(refusal) = ws::handshake::check(&req) {
        let mut response = Response::new(Body::from(refusal.message));
        *response.status_mut() = refusal.status;
        response.headers_mut().extend(refusal.headers());
        return Ok(response);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, _)) => response.map(|_| Body::default()),
        Err(e) => {
            let mut response = Response::new(Body::from(e.to_string()));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return eprintln!("upgrade: {e}"),
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => echo(parts.io.into_inner(), &parts.read_buf).await,
            Err(_) => eprintln!("upgraded connection is not a TCP stream"),
        }
    });
    Ok(response)
}

/// Echoes messages until the client closes, the socket fails, or the client
/// breaks the protocol (then: the close frame with 1002, 1007 or 1009).
async fn echo(socket: TcpStream, read_ahead: &[u8]) {
    let mut parser = Parser::new(MAX_MESSAGE);
    parser.feed(read_ahead);
    let writer = Writer::new(QUEUE);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let sent = match parser.next() {
            Ok(Some(Event::Message { text, data })) => {
                let opcode = if text { OpCode::Text } else { OpCode::Binary };
                writer.send(&socket, opcode, &data).await
            }
            Ok(Some(Event::Ping(payload))) => writer.send(&socket, OpCode::Pong, &payload).await,
            Ok(Some(Event::Pong)) => Ok(()),
            Ok(Some(Event::Close(code))) => {
                let closing = Closing::Echoed;
                return writer.close(&socket, &mut parser, code, "", closing).await;
            }
            Ok(None) => {
                if socket.readable().await.is_err() {
                    return;
                }
                match socket.try_read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        parser.feed(&chunk[..n]);
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(violation) => {
                let code = Some(violation.close_code());
                return writer
                    .close(&socket, &mut parser, code, "", Closing::Failed)
                    .await;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}
