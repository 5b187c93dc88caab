// reconnect.js: clients that keep dropping their connection and coming back with recovery.
// CLIENTS clients subscribe to CHANNELS history channels while a publisher sends RATE
// messages/s (in total, round-robin over the channels) through the server API. Every client
// closes its connection about every DROP_INTERVAL seconds, stays away DOWN_TIME ms while
// messages keep coming, then reconnects to the next node in WS_URLS and subscribes with
// `recover: {epoch, offset}` (the last offset it received).
//
// Measures and checks, per client, from its first subscription to the publisher's final
// `end` message on its channel:
//   - messages missed (offsets never received): must be 0, whatever the drops;
//   - every resubscription answered `recovered: true` in the same epoch;
//   - offsets arrive without gaps, repeats or reordering across the recovery seam;
//   - time from reconnecting (new WebSocket) to the `subscribed` reply, the number of
//     messages replayed by recovery, and the latency of live (not replayed) messages.
// The channels' namespace needs a history long enough to cover a client's absence:
// history_size > RATE / CHANNELS x (DOWN_TIME + reconnect time), with room to spare.
//
// Settings (environment): WS_URLS, API_URLS, API_KEY, TOKEN, RUN_ID (see lib.js), and
//   CLIENTS (200), CLIENTS_PER_VU (50), CHANNELS (10), NAMESPACE (lthist), RAMP (3 s),
//   RATE (100 /s), DURATION (20 s), DROP_INTERVAL (4 s), DOWN_TIME (500 ms), PAYLOAD_BYTES
//   (64), GRACE (10 s), LATENCY_P95_MS (50), LATENCY_P99_MS (100), RESUBSCRIBE_P95_MS (100),
//   RESUBSCRIBE_P99_MS (250), CONNECT_P95_MS (500), CONNECT_P99_MS (1000).
//
// Thresholds: connect errors and time, zero missed, gapped, duplicated or out-of-order
// messages, zero unrecovered resubscriptions or epoch changes, every client complete, at
// least one reconnect per client, resubscribe time and live latency p95/p99, no publish
// errors, no unexpected closes, no server errors or disconnects.

import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  apiPublish, BitSet, checkTargets, Client, connectThresholds, env, envInt, envNum, padding, runId, WS_URLS,
} from './lib.js';

const CLIENTS = envInt('CLIENTS', 200);
const PER_VU = envInt('CLIENTS_PER_VU', 50);
const VUS = Math.ceil(CLIENTS / PER_VU);
const CHANNELS = envInt('CHANNELS', 10);
const RAMP = envNum('RAMP', 3);
const RATE = envNum('RATE', 100);
const DURATION = envNum('DURATION', 20);
const DROP_INTERVAL = envNum('DROP_INTERVAL', 4);
const DOWN_TIME = envNum('DOWN_TIME', 500);
const PAYLOAD_BYTES = envInt('PAYLOAD_BYTES', 64);
const GRACE = envNum('GRACE', 10);
const DEADLINE_S = RAMP + 1 + 2 * DURATION + GRACE + 10;

const missed = new Counter('reconnect_missed');
const gaps = new Counter('reconnect_gaps');
const duplicates = new Counter('reconnect_duplicates');
const outOfOrder = new Counter('reconnect_out_of_order');
const notRecovered = new Counter('reconnect_not_recovered');
const epochChanged = new Counter('reconnect_epoch_changed');
const unfinished = new Counter('reconnect_unfinished');
const complete = new Rate('reconnect_complete');
const reconnects = new Counter('reconnects');
const replayed = new Counter('reconnect_replayed_messages');
const resubscribeTime = new Trend('reconnect_resubscribe_time', true);
const latency = new Trend('reconnect_latency', true);
const received = new Counter('reconnect_messages_received');
const subscribeErrors = new Counter('reconnect_subscribe_errors');
const publishErrors = new Counter('reconnect_publish_errors');
const published = new Counter('reconnect_published');

export const options = {
  scenarios: {
    clients: {
      executor: 'per-vu-iterations',
      exec: 'clients',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(DEADLINE_S + 30)}s`,
    },
    publisher: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: 1,
      iterations: 1,
      maxDuration: `${Math.ceil(DEADLINE_S + 30)}s`,
    },
  },
  thresholds: Object.assign(connectThresholds(), {
    reconnect_missed: ['count==0'],
    reconnect_gaps: ['count==0'],
    reconnect_duplicates: ['count==0'],
    reconnect_out_of_order: ['count==0'],
    reconnect_not_recovered: ['count==0'],
    reconnect_epoch_changed: ['count==0'],
    reconnect_unfinished: ['count==0'],
    reconnect_subscribe_errors: ['count==0'],
    reconnect_publish_errors: ['count==0'],
    reconnect_complete: ['rate==1'],
    reconnects: [`count>=${CLIENTS}`],
    reconnect_resubscribe_time: [
      `p(95)<${envNum('RESUBSCRIBE_P95_MS', 100)}`, `p(99)<${envNum('RESUBSCRIBE_P99_MS', 250)}`,
    ],
    reconnect_latency: [`p(95)<${envNum('LATENCY_P95_MS', 50)}`, `p(99)<${envNum('LATENCY_P99_MS', 100)}`],
  }),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  checkTargets(true);
  const prefix = `${env('NAMESPACE', 'lthist')}:${runId()}-`;
  console.log(`reconnect: ${CLIENTS} clients on ${CHANNELS} channels (${prefix}N), ${RATE} publishes/s for ` +
    `${DURATION} s, a drop about every ${DROP_INTERVAL} s, ${DOWN_TIME} ms away`);
  return { prefix };
}

function channelOf(data, i) {
  return `${data.prefix}${i % CHANNELS}`;
}

export function clients(data) {
  const v = exec.scenario.iterationInTest;
  const all = [];
  [missed, gaps, duplicates, outOfOrder, notRecovered, epochChanged, unfinished, subscribeErrors,
    replayed].forEach((c) => c.add(0));

  // Tallies a client once it has the `end` message (or at the deadline), then closes it.
  function finish(st) {
    if (st.done) return;
    st.done = true;
    clearTimeout(st.dropTimer);
    if (st.end === 0) {
      unfinished.add(1);
      complete.add(false);
    } else {
      const n = st.start >= 0 ? st.seen.missing(st.start + 1, st.end) : st.end;
      missed.add(n);
      complete.add(n === 0);
    }
    if (st.client) st.client.close();
  }

  function scheduleDrop(st) {
    clearTimeout(st.dropTimer);
    st.dropTimer = setTimeout(() => {
      if (st.done || !st.client || !st.client.open) return;
      st.client.close(); // frames still arriving on it are ignored: recovery must bring them
      setTimeout(() => connect(st, true), DOWN_TIME);
    }, DROP_INTERVAL * (0.5 + Math.random()) * 1000);
  }

  function onMessage(st, f, at) {
    const d = f.data || {};
    received.add(1);
    if (f.offset === undefined) {
      subscribeErrors.add(1, { code: 'no_offset' }); // the namespace keeps no history
      finish(st);
      return;
    }
    const o = f.offset;
    // Subscribed before the channel had history (epoch ""): the first message names the
    // epoch that began since, and recovery resumes in it.
    if (st.epoch === '' && o === 1) st.epoch = f.epoch;
    if (!st.seen.add(o)) duplicates.add(1);
    else if (o < st.last) outOfOrder.add(1);
    else if (o > st.last + 1) gaps.add(1);
    if (o > st.last) st.last = o;
    if (o <= st.replayTo) replayed.add(1);
    else if (d.t) latency.add(at - d.t);
    if (d.k === 'end') {
      st.end = o;
      finish(st);
    }
  }

  function connect(st, again) {
    if (st.done) return;
    st.node = again ? (st.node + 1) % WS_URLS.length : st.node;
    const startedAt = Date.now();
    const c = new Client(WS_URLS[st.node], {
      welcome: () => {
        const cmd = { type: 'subscribe', channel: st.channel };
        if (again) cmd.recover = { epoch: st.epoch, offset: st.last };
        c.cmd(cmd, (r, at) => {
          if (r.type !== 'subscribed') {
            subscribeErrors.add(1, { code: String(r.code) });
            finish(st);
            return;
          }
          if (again) {
            reconnects.add(1);
            resubscribeTime.add(at - startedAt);
            if (!r.recovered) notRecovered.add(1);
            // A client that had seen no history yet (epoch "") takes the epoch that began since.
            if (st.epoch !== '' && r.epoch !== st.epoch) epochChanged.add(1);
            st.replayTo = r.offset;
          } else {
            st.start = r.offset;
            st.last = r.offset;
            st.replayTo = r.offset;
          }
          st.epoch = r.epoch;
          scheduleDrop(st);
        });
      },
      frame: (cl, f, at) => {
        if (cl === st.client && !cl.closing && !st.done && f.type === 'message' && f.channel === st.channel) {
          onMessage(st, f, at);
        }
      },
      closed: (cl, expected) => {
        if (!expected && cl === st.client) finish(st);
      },
    });
    st.client = c;
  }

  for (let i = v * PER_VU; i < Math.min(CLIENTS, (v + 1) * PER_VU); i++) {
    const st = {
      i, channel: channelOf(data, i), node: i % WS_URLS.length, client: null, epoch: '',
      start: -1, last: 0, replayTo: 0, end: 0, seen: new BitSet(1024), dropTimer: null, done: false,
    };
    all.push(st);
    setTimeout(() => connect(st, false), (i / CLIENTS) * RAMP * 1000);
  }

  const t0 = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - t0 > DEADLINE_S * 1000) all.forEach(finish);
    if (all.every((st) => st.done)) clearInterval(watchdog);
  }, 500);
}

export function publisher(data) {
  [publishErrors, published].forEach((c) => c.add(0));
  sleep(RAMP + 1);
  const pad = padding(PAYLOAD_BYTES);
  const seq = new Array(CHANNELS).fill(0);
  const total = Math.max(CHANNELS, Math.round(RATE * DURATION));
  const t0 = Date.now();
  let failures = 0;
  const publish = (k, d) => {
    const r = apiPublish(k, channelOf(data, k), d);
    if (r.status === 200) published.add(1);
    else {
      publishErrors.add(1, { status: String(r.status) });
      if (++failures <= 3) console.warn(`reconnect: publish answered ${r.status} ${r.body}`);
    }
  };
  for (let k = 0; k < total; k++) {
    const wait = t0 + (k * 1000) / RATE - Date.now();
    if (wait > 0) sleep(wait / 1000);
    const c = k % CHANNELS;
    publish(c, { k: 'm', s: seq[c]++, t: Date.now(), x: pad });
  }
  // Clients finish on their channel's `end`, after any drop in progress has recovered.
  sleep(DOWN_TIME / 1000);
  for (let c = 0; c < CHANNELS; c++) publish(c, { k: 'end', t: Date.now() });
}
