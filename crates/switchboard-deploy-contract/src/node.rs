//! The `switchboard` binary, started the way a deployment starts it: exactly the
//! environment a manifest gives it, the probes a kubelet or HAProxy would send.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::files::{env_names, root};

/// The crates the binary is built from; an edit under any of them (tests aside)
/// makes a built binary stale.
const BINARY_SOURCES: &[&str] = &[
    "crates/switchboard",
    "crates/switchboard-gateway",
    "crates/switchboard-backplane",
    "crates/switchboard-proto",
    "Cargo.lock",
];

/// The `switchboard` binary, current with the sources.
///
/// This crate is not the binary's package, so cargo does not build the binary for
/// it. `cargo test --workspace` does (for the `switchboard` package's own tests)
/// and puts it beside this test's `deps/` directory: that one is used when it is
/// newer than every source file it is built from. Otherwise (this crate tested
/// alone, an edit since, another build directory) `cargo build -p switchboard`
/// builds it, and cargo says where it put it.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|test| Some(test.parent()?.parent()?.join("switchboard")));
        match beside {
            Some(path) if is_current(&path) => path,
            _ => build_binary(),
        }
    })
}

/// Whether `binary` exists and is newer than every file of [`BINARY_SOURCES`].
fn is_current(binary: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let mut stack: Vec<PathBuf> = BINARY_SOURCES.iter().map(|p| root().join(p)).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "tests" || n == "target")
            {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&path) else {
                return false;
            };
            stack.extend(entries.flatten().map(|e| e.path()));
        } else {
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::now());
            if modified > built {
                return false;
            }
        }
    }
    true
}

/// `cargo build -p switchboard --bin switchboard`; returns the executable's path.
fn build_binary() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "switchboard",
            "--bin",
            "switchboard",
        ])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let out = build.output().expect("run cargo build -p switchboard");
    assert!(out.status.success(), "cargo build -p switchboard failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "switchboard")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo build names the switchboard executable")
}

/// The variables the binary reads, from its own `--help`.
pub fn binary_env_names() -> BTreeSet<String> {
    let out = Command::new(binary())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run switchboard --help");
    assert!(out.status.success(), "switchboard --help failed");
    let names = env_names(&String::from_utf8_lossy(&out.stdout));
    assert!(
        names.contains("SWITCHBOARD_LISTEN") && names.len() > 10,
        "--help lists the environment variables: {names:?}"
    );
    names
}

pub struct RunningNode {
    child: Child,
    /// The public listener, `HOST:PORT`.
    pub public: String,
    /// The internal listener, `HOST:PORT`.
    pub internal: String,
}

impl RunningNode {
    /// Starts the binary with exactly `env` (and PATH), reading the ports from its
    /// "switchboard listening" line.
    pub fn start(env: &BTreeMap<String, String>) -> RunningNode {
        let mut child = Command::new(binary())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read stdout");
        if !line.starts_with("switchboard listening ") {
            let _ = child.kill();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("the node did not start with {env:?}:\n{line}{err}");
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .expect("address in the listening line")
                .to_owned()
        };
        RunningNode {
            public: field("public="),
            internal: field("internal="),
            child,
        }
    }

    /// SIGTERM, as Kubernetes and docker send it; the node must exit 0 (drained).
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        // Wait for the exit itself, on a thread, with a deadline.
        let (exited, exit) = std::sync::mpsc::channel();
        let status = std::thread::scope(|scope| {
            let child = &mut self.child;
            scope.spawn(move || {
                let _ = exited.send(child.wait());
            });
            match exit.recv_timeout(Duration::from_secs(10)) {
                Ok(status) => status.expect("wait for the node"),
                Err(_) => {
                    // Unblock the waiting thread before failing.
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                    panic!("no exit within 10 s of SIGTERM");
                }
            }
        });
        assert!(status.success(), "the node exited {status} after SIGTERM");
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A GET that must answer 200. The listeners are bound before the node prints
/// its listening line, and without Redis it is ready from the start, so no
/// retry is needed.
pub fn get_ok(addr: &str, path: &str) -> String {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "GET {path} on {addr}: {body}");
    body
}

/// The same address on loopback with port 0, so the test never fights for a port.
pub fn on_free_port(addr: &str) -> String {
    let host = &addr[..addr.rfind(':').unwrap()];
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    format!("{host}:0")
}
