//! A property test of history and recovery: for several seeds, a seeded RNG drives
//! random interleavings of subscribe, unsubscribe, publish (through the API of any
//! node and by clients), disconnects and reconnects-with-recover of a few clients
//! across three nodes on one Redis, all on one history channel. At the end, for every
//! client and every one of its subscription periods:
//!
//! - the offsets it saw are contiguous, with no duplicate, starting right after the
//!   position it recovered from (`recovered: true`) or after the newest offset its
//!   `subscribed` named (`recovered: false`);
//! - every message carries the payload published with that offset, in the one epoch;
//! - a recovery that can be complete (same epoch, position inside the history, which
//!   is never outgrown here) is (`recovered: true`);
//! - a period still open at the end reaches the newest offset.
//!
//! The seeds are printed when a run fails, with the last steps; replay some with
//! `SWITCHBOARD_PROPERTY_SEEDS=7,8 cargo test -p switchboard --test property`.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use switchboard_testkit::{Node, RedisServer, WsClient};

const DEFAULT_SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
const STEPS: usize = 200;
const CLIENTS: usize = 4;

/// One subscription period of one client.
#[derive(Debug)]
struct Period {
    node: String,
    recovered: bool,
    /// The first offset this period must show.
    start: u64,
    /// Offsets in arrival order.
    seen: Vec<u64>,
    /// The messages, in arrival order.
    messages: Vec<Value>,
}

struct Client {
    name: String,
    ws: Option<WsClient>,
    subscribed: bool,
    /// Epoch and offset to recover from: the newest this client knows of.
    position: Option<(String, u64)>,
    periods: Vec<Period>,
}

/// One seed's run: the model of what was published and what each client saw.
struct Run<'a> {
    seed: u64,
    nodes: &'a [Node],
    channel: String,
    rng: StdRng,
    clients: Vec<Client>,
    /// offset -> data, from publish answers.
    published: BTreeMap<u64, Value>,
    epoch: Option<String>,
    log: Vec<String>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- property run with seed {} failed (replay: SWITCHBOARD_PROPERTY_SEEDS={}); its steps: ----",
                self.seed, self.seed
            );
            for line in &self.log {
                eprintln!("{line}");
            }
        }
    }
}

impl<'a> Run<'a> {
    fn new(seed: u64, nodes: &'a [Node]) -> Run<'a> {
        Run {
            seed,
            nodes,
            channel: format!("hist:prop-{seed}"),
            rng: StdRng::seed_from_u64(seed),
            clients: (0..CLIENTS)
                .map(|i| Client {
                    name: format!("client-{i}"),
                    ws: None,
                    subscribed: false,
                    position: None,
                    periods: Vec::new(),
                })
                .collect(),
            published: BTreeMap::new(),
            epoch: None,
            log: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    /// Checks `epoch` is the channel's one epoch (the first seen becomes it).
    fn note_epoch(&mut self, epoch: &str, context: &str) {
        match &self.epoch {
            None => self.epoch = Some(epoch.to_owned()),
            Some(e) if e == epoch => {}
            Some(e) => self.fail(format!(
                "{context}: epoch {epoch}, but the channel's is {e}"
            )),
        }
    }

    fn record_publish(&mut self, offset: u64, epoch: &str, data: Value, via: &str) {
        self.note_epoch(epoch, via);
        if let Some(old) = self.published.insert(offset, data.clone()) {
            self.fail(format!(
                "{via}: offset {offset} given twice: {old} and {data}"
            ));
        }
    }

    /// Files frames that arrived on client `c` while waiting for something else.
    fn absorb(&mut self, c: usize, frames: Vec<Value>) {
        for frame in frames {
            if frame["type"] != "message" || frame["channel"] != self.channel.as_str() {
                self.fail(format!(
                    "{}: unexpected frame {frame}",
                    self.clients[c].name
                ));
            }
            let Some(offset) = frame["offset"].as_u64() else {
                self.fail(format!(
                    "{}: message without offset {frame}",
                    self.clients[c].name
                ));
            };
            let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
            self.note_epoch(
                &epoch,
                &format!("{}: message {frame}", self.clients[c].name),
            );
            let client = &mut self.clients[c];
            let Some(period) = client.periods.last_mut() else {
                let name = client.name.clone();
                self.fail(format!(
                    "{name}: a message before any subscription: {frame}"
                ));
            };
            period.seen.push(offset);
            period.messages.push(frame);
            client.position = Some((epoch, offset));
        }
    }

    fn ws(&mut self, c: usize) -> &mut WsClient {
        self.clients[c].ws.as_mut().expect("connected")
    }

    /// Sends `command` with an id on client `c`, files the pushes before its reply, and
    /// returns the reply.
    async fn request(&mut self, c: usize, mut command: Value) -> Value {
        let ws = self.ws(c);
        let id = ws.next_id();
        command["id"] = json!(id);
        ws.send_json(&command).await;
        let (reply, before) = ws.recv_until(|v| v["id"] == id).await;
        self.absorb(c, before);
        reply
    }

    async fn subscribe(&mut self, c: usize) {
        let recover = match &self.clients[c].position {
            Some(p) if self.rng.random_bool(0.85) => Some(p.clone()),
            _ => None,
        };
        let mut command = json!({"type": "subscribe", "channel": self.channel});
        if let Some((epoch, offset)) = &recover {
            command["recover"] = json!({"epoch": epoch, "offset": offset});
        }
        // Half the time an API publish races the subscribe, to hit the seam between
        // recovered (or skipped) messages and the live stream.
        let racer = self.rng.random_bool(0.5).then(|| {
            let n = self.rng.random_range(0..self.nodes.len());
            let data = json!({"seed": self.seed, "racing": c, "via": self.nodes[n].id()});
            (n, data)
        });
        let nodes = self.nodes;
        let channel = self.channel.clone();
        let race = async move {
            match racer {
                Some((n, data)) => {
                    Some((nodes[n].publish_offset(&channel, data.clone()).await, data))
                }
                None => None,
            }
        };
        let (reply, raced) = tokio::join!(self.request(c, command), race);
        if let Some(((offset, epoch), data)) = raced {
            self.record_publish(offset, &epoch, data, "API publish racing a subscribe");
            self.log
                .push(format!("  (racing API publish -> offset {offset})"));
        }
        let name = self.clients[c].name.clone();
        if reply["type"] != "subscribed" {
            self.fail(format!("{name}: subscribe: {reply}"));
        }
        let (Some(epoch), Some(newest), Some(recovered)) = (
            reply["epoch"].as_str(),
            reply["offset"].as_u64(),
            reply["recovered"].as_bool(),
        ) else {
            self.fail(format!(
                "{name}: subscribed without epoch/offset/recovered: {reply}"
            ));
        };
        self.note_epoch(epoch, &format!("{name}: subscribed {reply}"));
        let start = match &recover {
            Some((_, from)) => {
                // The epoch never changes here and the history is never outgrown, so
                // every recovery can be complete.
                if !recovered || *from > newest {
                    self.fail(format!(
                        "{name}: recovery from {from} should be complete: {reply}"
                    ));
                }
                from + 1
            }
            None => {
                if recovered {
                    self.fail(format!("{name}: recovered without recover: {reply}"));
                }
                newest + 1
            }
        };
        let node = self.clients[c].ws.as_ref().expect("connected").welcome["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let client = &mut self.clients[c];
        client.subscribed = true;
        client.position = Some((epoch.to_owned(), start - 1));
        client.periods.push(Period {
            node,
            recovered,
            start,
            seen: Vec::new(),
            messages: Vec::new(),
        });
        self.log.push(format!(
            "  {name} subscribed: recover {recover:?} -> {reply}"
        ));
    }

    async fn unsubscribe(&mut self, c: usize) {
        let reply = self
            .request(c, json!({"type": "unsubscribe", "channel": self.channel}))
            .await;
        if reply["type"] != "unsubscribed" {
            self.fail(format!("{}: unsubscribe: {reply}", self.clients[c].name));
        }
        self.clients[c].subscribed = false;
    }

    async fn client_publish(&mut self, c: usize, step: usize) {
        let data = json!({"seed": self.seed, "step": step, "via": self.clients[c].name});
        let reply = self
            .request(
                c,
                json!({"type": "publish", "channel": self.channel, "data": data}),
            )
            .await;
        let Some(offset) = reply["offset"]
            .as_u64()
            .filter(|_| reply["type"] == "published")
        else {
            self.fail(format!("{}: publish: {reply}", self.clients[c].name));
        };
        // The published reply names no epoch: it is the channel's (a client always
        // subscribes once before it publishes, so that is known).
        let epoch = self.epoch.clone().expect("an epoch is known");
        self.record_publish(offset, &epoch, data, "client publish");
        self.log.push(format!("  -> offset {offset}"));
    }

    async fn api_publish(&mut self, step: usize) {
        let n = self.rng.random_range(0..self.nodes.len());
        let data = json!({"seed": self.seed, "step": step, "via": self.nodes[n].id()});
        let (offset, epoch) = self.nodes[n]
            .publish_offset(&self.channel, data.clone())
            .await;
        self.record_publish(offset, &epoch, data, "API publish");
        self.log.push(format!("  -> offset {offset}"));
    }

    /// A ping on client `c`: everything before its pong is filed.
    async fn sync(&mut self, c: usize) {
        let reply = self.request(c, json!({"type": "ping"})).await;
        if reply["type"] != "pong" {
            self.fail(format!("{}: ping: {reply}", self.clients[c].name));
        }
    }

    async fn connect(&mut self, c: usize) {
        let n = self.rng.random_range(0..self.nodes.len());
        let ws = WsClient::connect_json(&self.nodes[n].ws_url()).await;
        self.clients[c].ws = Some(ws);
        self.clients[c].subscribed = false;
    }

    async fn disconnect(&mut self, c: usize) {
        if let Some(mut ws) = self.clients[c].ws.take()
            && self.rng.random_bool(0.5)
        {
            ws.close(1000).await;
        }
        self.clients[c].subscribed = false;
    }

    async fn step(&mut self, step: usize) {
        if self.rng.random_bool(0.3) {
            self.log.push(format!("{step}: API publish"));
            return self.api_publish(step).await;
        }
        let c = self.rng.random_range(0..self.clients.len());
        let name = self.clients[c].name.clone();
        let connected = self.clients[c].ws.is_some();
        let subscribed = self.clients[c].subscribed;
        let roll = self.rng.random_range(0..100);
        match (connected, subscribed) {
            (false, _) => {
                self.log
                    .push(format!("{step}: {name} reconnects and subscribes"));
                self.connect(c).await;
                self.subscribe(c).await;
            }
            (true, false) => match roll {
                0..50 => {
                    self.log.push(format!("{step}: {name} subscribes"));
                    self.subscribe(c).await;
                }
                50..75 => {
                    self.log
                        .push(format!("{step}: {name} publishes (unsubscribed)"));
                    self.client_publish(c, step).await;
                }
                75..85 => {
                    self.log.push(format!("{step}: {name} disconnects"));
                    self.disconnect(c).await;
                }
                _ => {
                    self.log.push(format!("{step}: {name} pings"));
                    self.sync(c).await;
                }
            },
            (true, true) => match roll {
                0..15 => {
                    self.log.push(format!("{step}: {name} unsubscribes"));
                    self.unsubscribe(c).await;
                }
                15..40 => {
                    self.log.push(format!("{step}: {name} publishes"));
                    self.client_publish(c, step).await;
                }
                40..55 => {
                    self.log
                        .push(format!("{step}: {name} drops and reconnects with recover"));
                    self.disconnect(c).await;
                    self.connect(c).await;
                    self.subscribe(c).await;
                }
                55..65 => {
                    self.log.push(format!("{step}: {name} disconnects"));
                    self.disconnect(c).await;
                }
                _ => {
                    self.log.push(format!("{step}: {name} pings"));
                    self.sync(c).await;
                }
            },
        }
    }

    /// Reads every open period up to the newest offset, then checks every period.
    async fn finish(&mut self) {
        let newest = self.published.keys().next_back().copied().unwrap_or(0);
        for c in 0..self.clients.len() {
            if !self.clients[c].subscribed {
                continue;
            }
            loop {
                let period = self.clients[c].periods.last().expect("subscribed");
                let next = period.start + period.seen.len() as u64;
                if next > newest {
                    break;
                }
                let frame = self.ws(c).recv_json().await;
                self.absorb(c, vec![frame]);
            }
            self.sync(c).await;
        }
        let epoch = self.epoch.clone().unwrap_or_default();
        for client in &self.clients {
            for (i, period) in client.periods.iter().enumerate() {
                let want: Vec<u64> =
                    (period.start..period.start + period.seen.len() as u64).collect();
                if period.seen != want {
                    self.fail(format!(
                        "{} period {i} (on {}, recovered {}) must be contiguous from {}: saw {:?}",
                        client.name, period.node, period.recovered, period.start, period.seen
                    ));
                }
                for m in &period.messages {
                    let offset = m["offset"].as_u64().unwrap_or_default();
                    let want = json!({
                        "type": "message",
                        "channel": self.channel,
                        "data": self.published.get(&offset).cloned().unwrap_or(Value::Null),
                        "offset": offset,
                        "epoch": epoch,
                    });
                    if *m != want {
                        self.fail(format!(
                            "{} period {i}: message {m} is not what was published with offset {offset}: {want}",
                            client.name
                        ));
                    }
                }
            }
        }
        // What was published is exactly 1..=newest, and the history agrees.
        let offsets: Vec<u64> = self.published.keys().copied().collect();
        if offsets != (1..=newest).collect::<Vec<_>>() {
            self.fail(format!(
                "published offsets are not 1..={newest}: {offsets:?}"
            ));
        }
        let response = self.nodes[0]
            .history_api(&self.channel, "?limit=10000")
            .await;
        let body = response.json();
        let history: Vec<(u64, Value)> = body["messages"]
            .as_array()
            .unwrap_or_else(|| self.fail(format!("history: {body}")))
            .iter()
            .map(|m| (m["offset"].as_u64().unwrap_or_default(), m["data"].clone()))
            .collect();
        let want: Vec<(u64, Value)> = self.published.clone().into_iter().collect();
        if history != want {
            self.fail(format!("the history is not what was published: {body}"));
        }
        for client in &mut self.clients {
            client.ws = None;
        }
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("SWITCHBOARD_PROPERTY_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("SWITCHBOARD_PROPERTY_SEEDS: comma-separated u64s")
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_every_period_contiguous() {
    let redis = RedisServer::start().await;
    // Not about the command rate: lift it.
    let unlimited = ["--client-rate", "100000", "--client-burst", "100000"];
    let mut nodes = Vec::new();
    for id in ["node-1", "node-2", "node-3"] {
        nodes.push(
            Node::builder(id)
                .redis(&redis)
                .namespaces()
                .args(unlimited)
                .start()
                .await,
        );
    }
    for seed in seeds() {
        eprintln!("property: seed {seed}, {STEPS} steps");
        let mut run = Run::new(seed, &nodes);
        // The channel's history (and so its one epoch) exists before any
        // client subscribes: the empty epoch of a channel without history is
        // covered by the history and recovery tests.
        run.api_publish(0).await;
        for step in 0..STEPS {
            run.step(step).await;
        }
        run.finish().await;
        let periods: usize = run.clients.iter().map(|c| c.periods.len()).sum();
        let recovered = run
            .clients
            .iter()
            .flat_map(|c| &c.periods)
            .filter(|p| p.recovered)
            .count();
        eprintln!(
            "property: seed {seed} ok: {} messages, {periods} periods, {recovered} recovered",
            run.published.len()
        );
    }
}
