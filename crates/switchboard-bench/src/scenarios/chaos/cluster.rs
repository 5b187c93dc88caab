//! The processes of a chaos run, owned by the generator: `redis-server` and the nodes, started
//! on fixed free ports, killed, paused and restarted; every pid is appended to `WORK/pids` so a
//! wrapper script can clean up even after a SIGKILL of the generator.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::Opts;
use crate::clients::http::{ApiClient, ApiEndpoint};

/// Where a node listens.
pub struct NodeSpec {
    /// Its `--node-id`.
    pub id: String,
    ws: u16,
    api: u16,
}

/// Redis and the nodes, owned by the generator.
pub struct Cluster {
    pub work: PathBuf,
    node_bin: PathBuf,
    redis_bin: PathBuf,
    config: PathBuf,
    log_level: String,
    pub redis_port: u16,
    pub specs: Vec<NodeSpec>,
    redis: Option<Child>,
    redis_paused: bool,
    pub nodes: Vec<Option<Child>>,
    pids: std::fs::File,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Sends `args` to Redis as one RESP command and returns the first line of the reply.
pub async fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(req, "${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        anyhow::Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 2 s")))
}

/// Sends signal `sig` (`KILL`, `STOP`, `CONT`) to `pid`.
async fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await
        .with_context(|| format!("running kill -{sig} {pid}"))?;
    ensure!(status.success(), "kill -{sig} {pid}: {status}");
    Ok(())
}

impl Cluster {
    pub fn new(opts: &Opts) -> anyhow::Result<Self> {
        let work = opts.work_dir.clone();
        std::fs::create_dir_all(work.join("redis-data"))
            .with_context(|| format!("creating {}", work.display()))?;
        let config = work.join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "[namespaces.h]\nhistory_size = {}\nhistory_ttl = {}\n",
                opts.history_size, opts.history_ttl
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut specs = Vec::new();
        for i in 0..opts.nodes {
            specs.push(NodeSpec {
                id: format!("chaos-{}", (b'a' + (i % 26) as u8) as char),
                ws: free_port()?,
                api: free_port()?,
            });
        }
        Ok(Self {
            pids: append(&work.join("pids"))?,
            node_bin: opts.switchboard_bin.clone(),
            redis_bin: opts.redis_server.clone(),
            log_level: opts.node_log_level.clone(),
            redis_port: free_port()?,
            nodes: specs.iter().map(|_| None).collect(),
            specs,
            config,
            work,
            redis: None,
            redis_paused: false,
        })
    }

    pub fn ws_urls(&self) -> Vec<Arc<str>> {
        self.specs
            .iter()
            .map(|s| Arc::from(format!("ws://127.0.0.1:{}/ws", s.ws)))
            .collect()
    }

    pub fn api_endpoints(&self) -> anyhow::Result<Vec<ApiEndpoint>> {
        self.specs
            .iter()
            .map(|s| ApiEndpoint::parse(&format!("http://127.0.0.1:{}", s.api), None))
            .collect()
    }

    fn note_pid(&mut self, child: &Child) {
        if let Some(pid) = child.id() {
            use std::io::Write as _;
            let _ = writeln!(self.pids, "{pid}");
        }
    }

    /// Starts Redis (emptying its data directory first when `wipe`) and waits for PONG.
    pub async fn start_redis(&mut self, wipe: bool) -> anyhow::Result<()> {
        let data = self.work.join("redis-data");
        if wipe {
            std::fs::remove_dir_all(&data).context("emptying Redis's data directory")?;
            std::fs::create_dir_all(&data)?;
        }
        let log = append(&self.work.join("redis.log"))?;
        let child = Command::new(&self.redis_bin)
            .args([
                "--port",
                &self.redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.redis_bin.display()))?;
        self.note_pid(&child);
        self.redis = Some(child);
        self.redis_paused = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = redis_command(self.redis_port, &["PING"]).await
                && r == "+PONG"
            {
                return Ok(());
            }
            if let Some(c) = self.redis.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "redis-server exited ({status}): see {}/redis.log",
                    self.work.display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn kill_redis(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.redis.take() {
            c.start_kill().context("SIGKILL redis-server")?;
            c.wait().await?;
        }
        self.redis_paused = false;
        Ok(())
    }

    fn redis_pid(&self) -> anyhow::Result<u32> {
        self.redis
            .as_ref()
            .and_then(Child::id)
            .context("redis-server is not running")
    }

    pub async fn pause_redis(&mut self) -> anyhow::Result<()> {
        signal(self.redis_pid()?, "STOP").await?;
        self.redis_paused = true;
        Ok(())
    }

    pub async fn resume_redis(&mut self) -> anyhow::Result<()> {
        if self.redis_paused {
            signal(self.redis_pid()?, "CONT").await?;
            self.redis_paused = false;
        }
        Ok(())
    }

    /// Starts node `i` and waits until its `/readyz` answers 200.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let spec = &self.specs[i];
        let out = append(&self.work.join(format!("{}.out", spec.id)))?;
        let err = append(&self.work.join(format!("{}.log", spec.id)))?;
        let child = Command::new(&self.node_bin)
            .arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{}", self.redis_port))
            .args(["--node-id", &spec.id])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", spec.ws))
            .arg("--internal-listen")
            .arg(format!("127.0.0.1:{}", spec.api))
            .arg("--config")
            .arg(&self.config)
            .args(["--log-level", &self.log_level])
            // Every client connects from 127.0.0.1: the per-IP default (50/s) would refuse
            // the reconnects after a node dies.
            .args(["--ip-connect-rate", "100000"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.node_bin.display()))?;
        let id = spec.id.clone();
        let endpoint = ApiEndpoint::parse(&format!("http://127.0.0.1:{}", spec.api), None)?;
        self.note_pid(&child);
        self.nodes[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = ApiClient::new(endpoint.clone(), Duration::from_millis(500));
            if let Ok((status, _)) = c.get("/readyz").await
                && status.is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.nodes[i] = None;
                bail!(
                    "node {id} exited ({status}): see {}/{id}.log",
                    self.work.display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "node {id} not ready within 20 s: see {}/{id}.log",
                self.work.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].take() {
            c.start_kill().context("SIGKILL node")?;
            c.wait().await?;
        }
        Ok(())
    }

    /// Redis running and not paused, every node running; retried a few times.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            match self.heal_once().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!("chaos: healing the cluster: {e:#}; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("heal failed")))
    }

    async fn heal_once(&mut self) -> anyhow::Result<()> {
        self.resume_redis().await?;
        if self.redis.is_none() {
            self.start_redis(false).await?;
        }
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].as_mut() {
                Some(c) => c.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if exited {
                self.nodes[i] = None;
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// Waits until every node's `/readyz` answers 200 (its backplane is connected), up to
    /// `timeout`; says which nodes were not ready.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for spec in &self.specs {
            let endpoint = ApiEndpoint::parse(&format!("http://127.0.0.1:{}", spec.api), None)?;
            loop {
                let mut c = ApiClient::new(endpoint.clone(), Duration::from_millis(500));
                match c.get("/readyz").await {
                    Ok((status, _)) if status.is_success() => break,
                    _ if Instant::now() >= deadline => {
                        bail!("node {} not ready after the faults", spec.id)
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    /// Stops everything (nodes first), waiting for each process.
    pub async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill_node(i).await;
        }
        let _ = self.kill_redis().await;
    }
}
