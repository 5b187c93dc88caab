//! A private Redis Cluster per test: `masters` masters with `replicas` replicas
//! each, every node a `redis-server --cluster-enabled yes` on a free port,
//! joined with `redis-cli --cluster create`. The faults a test can cause: a
//! node killed (its replica is promoted), and a slot moved from one master to
//! another while it is in use.

use std::process::Command;
use std::time::Duration;

use crate::{RedisServer, eventually};

/// The number of hash slots of every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A running Redis Cluster; every node is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's cluster id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// Whether the cluster marks it failed (`fail` flag).
    pub failed: bool,
    /// The slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every slot is
    /// served and every replica attached.
    ///
    /// Panics with the install command if `redis-server` or `redis-cli` is
    /// missing (Debian's `redis-server` package has both).
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs 3 masters at least"
        );
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): apt-get install -y redis-server")
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(masters, masters * replicas).await;
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node, for `--redis-cluster` seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' servers, in start order (for `query`, `pause`, ...).
    pub fn servers(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `CLUSTER NODES` as seen by the first live node.
    pub async fn topology(&self) -> Vec<ClusterNode> {
        for server in &self.nodes {
            if !server.is_running() {
                continue;
            }
            let text: String = server.query(::redis::cmd("CLUSTER").arg("NODES")).await;
            return parse_nodes(&text);
        }
        panic!("no node of the cluster is running");
    }

    /// The master serving `slot`, from a live node's view.
    pub async fn master_of(&self, slot: u16) -> ClusterNode {
        self.topology()
            .await
            .into_iter()
            .find(|n| {
                n.master
                    && !n.failed
                    && self.is_running(n.port)
                    && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        let server = self.live_server();
        let slot: i64 = server
            .query(::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await;
        slot as u16
    }

    /// SIGKILLs the node listening on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        node.kill();
    }

    /// Waits until every slot is served again by a live master (after a
    /// master was killed: its replica promoted).
    pub async fn wait_all_slots_served(&self) {
        eventually(
            "every slot served by a live master",
            Duration::from_secs(30),
            || async {
                // A killed master counts as gone at once, before the cluster
                // has noticed (about a node timeout later).
                let live: Vec<ClusterNode> = self
                    .topology()
                    .await
                    .into_iter()
                    .filter(|n| self.is_running(n.port))
                    .collect();
                let served = served_slots(&live);
                if served == u32::from(SLOTS) {
                    Ok(())
                } else {
                    Err(format!("{served} of {SLOTS} slots served"))
                }
            },
        )
        .await
    }

    /// Moves `slot`, with its keys, from the master that serves it to the
    /// master on port `to`, as `redis-cli --cluster reshard` does: IMPORTING
    /// on the target, MIGRATING on the source, `MIGRATE` of every key, then
    /// `SETSLOT NODE` on both and on every other master.
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let topology = self.topology().await;
        let source = self.master_of(slot).await;
        let target = topology
            .iter()
            .find(|n| n.port == to && n.master)
            .unwrap_or_else(|| panic!("no master on port {to}"))
            .clone();
        assert_ne!(source.port, target.port, "slot {slot} is on {to} already");
        let server = |port: u16| {
            self.nodes
                .iter()
                .find(|n| n.port() == port)
                .expect("a node of this cluster")
        };
        let setslot = |state: &str, id: &str| {
            let mut cmd = ::redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let _: String = server(target.port)
            .query(&setslot("IMPORTING", &source.id))
            .await;
        let _: String = server(source.port)
            .query(&setslot("MIGRATING", &target.id))
            .await;
        loop {
            let keys: Vec<String> = server(source.port)
                .query(
                    ::redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .await;
            if keys.is_empty() {
                break;
            }
            let mut migrate = ::redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(target.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            let _: String = server(source.port).query(&migrate).await;
        }
        for node in topology.iter().filter(|n| n.master && !n.failed) {
            let _: String = server(node.port).query(&setslot("NODE", &target.id)).await;
        }
        eventually(
            &format!("slot {slot} served by the master on port {to}"),
            Duration::from_secs(10),
            || async {
                let now = self.master_of(slot).await;
                if now.port == to {
                    Ok(())
                } else {
                    Err(format!("still on {}", now.port))
                }
            },
        )
        .await;
    }

    /// Whether the node on `port` runs.
    fn is_running(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|n| n.port() == port && n.is_running())
    }

    fn live_server(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("no node of the cluster is running")
    }

    async fn wait_healthy(&self, masters: usize, replicas: usize) {
        eventually(
            "the cluster is created, every slot served, every replica attached",
            Duration::from_secs(30),
            || async {
                for server in &self.nodes {
                    let info: String = server.query(::redis::cmd("CLUSTER").arg("INFO")).await;
                    if !info.contains("cluster_state:ok") {
                        return Err(format!("node {}: not ok yet", server.port()));
                    }
                }
                let topology = self.topology().await;
                let (m, r) = (
                    topology.iter().filter(|n| n.master).count(),
                    topology.iter().filter(|n| !n.master).count(),
                );
                if m == masters && r == replicas && served_slots(&topology) == u32::from(SLOTS) {
                    Ok(())
                } else {
                    Err(format!("{m} masters, {r} replicas so far"))
                }
            },
        )
        .await
    }
}

/// How many slots the live masters serve.
fn served_slots(topology: &[ClusterNode]) -> u32 {
    topology
        .iter()
        .filter(|n| n.master && !n.failed)
        .flat_map(|n| n.slots.iter())
        .map(|(a, b)| u32::from(b - a) + 1)
        .sum()
}

/// Reads `CLUSTER NODES`: `id addr flags master ping pong epoch link slots...`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, addr, flags) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = flags.split(',').collect();
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|one| (one, one)),
                })
                .collect();
            Some(ClusterNode {
                id: (*id).to_owned(),
                port,
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail"),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read() {
        let text = "07c3 127.0.0.1:30004@40004 replica e7d1 0 1426238317239 4 connected\n\
                    67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922\n\
                    e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 10923 [5461->-67ed]\n\
                    9fd8 127.0.0.1:30003@40003 master,fail - 0 0 3 connected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert!(!nodes[0].master && nodes[0].slots.is_empty());
        assert_eq!(nodes[1].slots, [(5461, 10922)]);
        assert_eq!(
            (nodes[2].port, nodes[2].slots.clone()),
            (30001, vec![(0, 5460), (10923, 10923)])
        );
        assert!(nodes[3].failed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_starts_fails_over_and_moves_a_slot() {
        let mut cluster = RedisCluster::start(3, 1).await;
        assert_eq!(cluster.seeds().len(), 6);
        // Keys of one hash tag share a slot.
        let slot = cluster.slot_of("{room}:history").await;
        assert_eq!(slot, cluster.slot_of("{room}:offset").await);

        // A key in the slot, moved with it to another master.
        let owner = cluster.master_of(slot).await;
        let server = cluster
            .servers()
            .iter()
            .find(|s| s.port() == owner.port)
            .unwrap();
        let _: String = server
            .query(::redis::cmd("SET").arg("{room}:history").arg("kept"))
            .await;
        let other = cluster
            .topology()
            .await
            .into_iter()
            .find(|n| n.master && n.port != owner.port)
            .unwrap();
        cluster.move_slot(slot, other.port).await;
        let moved = cluster
            .servers()
            .iter()
            .find(|s| s.port() == other.port)
            .unwrap();
        let value: String = moved.query(::redis::cmd("GET").arg("{room}:history")).await;
        assert_eq!(value, "kept");

        // The slot's master killed: its replica takes over every slot.
        cluster.kill(other.port);
        cluster.wait_all_slots_served().await;
        assert_ne!(cluster.master_of(slot).await.port, other.port);
    }
}
