//! The container image's health check: `GET /healthz` on the node's internal
//! listener, exit 0 on HTTP 200 and 1 on anything else.
//!
//! The runtime image has no curl or wget (and the distroless variant has no
//! shell at all), so the image carries this program instead. It uses only the
//! standard library and is compiled with plain `rustc` in the build stage, so
//! it adds no dependency and nothing to download.
//!
//! Usage: `switchboard-healthcheck [PATH [ADDR]]`
//!
//! - PATH defaults to `/healthz` (liveness; pass `/readyz` for readiness).
//! - ADDR defaults to `$SWITCHBOARD_INTERNAL_LISTEN`, else `127.0.0.1:9090`, the
//!   node's own default. A wildcard address (`0.0.0.0`, `[::]`) is probed on
//!   the loopback address of the same family.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "/healthz".to_owned());
    let addr = args
        .next()
        .or_else(|| std::env::var("SWITCHBOARD_INTERNAL_LISTEN").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    match probe(addr.trim(), &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-healthcheck: {addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(addr: &str, path: &str) -> Result<(), String> {
    let target = resolve(addr)?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(e.to_string()),
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status = line.lines().next().unwrap_or("").trim().to_owned();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ if status.is_empty() => Err("no answer".to_owned()),
        _ => Err(format!("answered {status:?}")),
    }
}

/// The address to connect to: a wildcard listen address means loopback.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut target = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => addr
            .to_socket_addrs()
            .map_err(|e| format!("bad address: {e}"))?
            .next()
            .ok_or_else(|| "address resolves to nothing".to_owned())?,
    };
    if target.ip().is_unspecified() {
        target.set_ip(match target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(target)
}
