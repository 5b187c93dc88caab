// connect.js: ramps up to many connections and holds them. Measures connect time (upgrade
// request to the server's welcome frame), connect errors (refused, HTTP 429/503/401, reset),
// and whether every connection stays up and responsive while held: each one subscribes to a
// channel and sends an application `ping` every PING_INTERVAL seconds (round trip in
// connect_ping_rtt). With API_URLS reachable, an observer VU reads GET /api/v1/cluster each
// second and records the number of connections the cluster reports (connect_cluster_connections).
//
// Connections open at an even pace over RAMP seconds, round-robin over WS_URLS, each VU holding
// CONNECTIONS_PER_VU of them; all are held HOLD seconds after the last has opened, then closed.
//
// Settings (environment): WS_URLS, API_URLS, API_KEY, TOKEN, RUN_ID (see lib.js), and
//   CONNECTIONS (3000), CONNECTIONS_PER_VU (500), RAMP (20 s), HOLD (15 s), CHANNELS (100;
//   0 = no subscription), CHANNEL_PREFIX (ltconn:RUNID-), PING_INTERVAL (10 s),
//   OBSERVE (1; 0 = no observer, for deployments whose API is out of reach),
//   PING_P95_MS (100), PING_P99_MS (250), CONNECT_P95_MS (500), CONNECT_P99_MS (1000).
// A node refuses more than 50 new connections per second from one IP by default
// (--ip-connect-rate): a test from one machine needs it raised, or a slower RAMP.
//
// Thresholds: no connect errors, connect time p95/p99, every connection held to the end
// (connect_held rate 100 %, connect_held_total >= CONNECTIONS), no unexpected closes, ping
// round trip p95/p99, no lost pings, no server errors or disconnects, and (observer) the
// cluster reporting at least CONNECTIONS connections at some point.

import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  apiGet, API_URLS, checkTargets, Client, connectThresholds, env, envInt, envNum, runId, wsUrl,
} from './lib.js';

const CONNECTIONS = envInt('CONNECTIONS', 3000);
const PER_VU = envInt('CONNECTIONS_PER_VU', 500);
const VUS = Math.ceil(CONNECTIONS / PER_VU);
const RAMP = envNum('RAMP', 20);
const HOLD = envNum('HOLD', 15);
const CHANNELS = envInt('CHANNELS', 100);
const PING_INTERVAL = envNum('PING_INTERVAL', 10);
const OBSERVE = envInt('OBSERVE', 1) === 1 && API_URLS.length > 0;
const TOTAL_S = RAMP + HOLD;

const held = new Rate('connect_held');
const heldTotal = new Counter('connect_held_total');
const pingRtt = new Trend('connect_ping_rtt', true);
const pingsLost = new Counter('connect_pings_lost');
const subscribeErrors = new Counter('connect_subscribe_errors');
const clusterConnections = new Trend('connect_cluster_connections');

const scenarios = {
  connections: {
    executor: 'per-vu-iterations',
    exec: 'connections',
    vus: VUS,
    iterations: 1,
    maxDuration: `${Math.ceil(TOTAL_S + 60)}s`,
  },
};
const thresholds = Object.assign(connectThresholds(), {
  connect_held: ['rate==1'],
  connect_held_total: [`count>=${CONNECTIONS}`],
  connect_ping_rtt: [`p(95)<${envNum('PING_P95_MS', 100)}`, `p(99)<${envNum('PING_P99_MS', 250)}`],
  connect_pings_lost: ['count==0'],
  connect_subscribe_errors: ['count==0'],
});
if (OBSERVE) {
  scenarios.observer = {
    executor: 'per-vu-iterations',
    exec: 'observer',
    vus: 1,
    iterations: 1,
    maxDuration: `${Math.ceil(TOTAL_S + 60)}s`,
  };
  thresholds.connect_cluster_connections = [`max>=${CONNECTIONS}`];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  checkTargets(OBSERVE);
  const prefix = env('CHANNEL_PREFIX', `ltconn:${runId()}-`);
  console.log(`connect: ${CONNECTIONS} connections (${VUS} VUs) over ${RAMP} s, held ${HOLD} s, ` +
    `${CHANNELS > 0 ? `subscribed to ${CHANNELS} channels ${prefix}N` : 'no subscriptions'}`);
  return { prefix };
}

export function connections(data) {
  const v = exec.scenario.iterationInTest;
  const t0 = Date.now();
  const conns = [];
  [pingsLost, subscribeErrors, heldTotal].forEach((c) => c.add(0));

  for (let i = v * PER_VU; i < Math.min(CONNECTIONS, (v + 1) * PER_VU); i++) {
    const st = { i, client: null, pingSent: 0, pingStart: null, pingTimer: null };
    conns.push(st);
    // Connection i opens at i/CONNECTIONS of the ramp, so all VUs together open evenly.
    setTimeout(() => {
      st.client = new Client(wsUrl(i), {
        welcome: (c) => {
          if (CHANNELS > 0) {
            c.cmd({ type: 'subscribe', channel: `${data.prefix}${i % CHANNELS}` }, (r) => {
              if (r.type !== 'subscribed') subscribeErrors.add(1);
            });
          }
        },
      });
    }, (i / CONNECTIONS) * RAMP * 1000);
  }

  // Each open connection pings every PING_INTERVAL, at its own phase so the pings of all
  // connections spread evenly; a ping still unanswered at the next one counts as lost.
  const ping = (st) => {
    const c = st.client;
    if (!c || !c.open) return;
    if (st.pingSent) pingsLost.add(1);
    const sent = Date.now();
    st.pingSent = sent;
    c.cmd({ type: 'ping' }, (r, at) => {
      st.pingSent = 0;
      if (r.type === 'pong') pingRtt.add(at - sent);
    });
  };
  for (const st of conns) {
    st.pingStart = setTimeout(() => {
      ping(st);
      st.pingTimer = setInterval(() => ping(st), PING_INTERVAL * 1000);
    }, (st.i / CONNECTIONS) * RAMP * 1000 + Math.random() * PING_INTERVAL * 1000);
  }

  // At the end of the hold: count who is still there, then close everything.
  setTimeout(() => {
    for (const st of conns) {
      clearTimeout(st.pingStart);
      if (st.pingTimer !== null) clearInterval(st.pingTimer);
      const ok = st.client !== null && st.client.open;
      held.add(ok);
      if (ok) heldTotal.add(1);
      if (st.client) st.client.close();
    }
  }, Math.max(0, t0 + TOTAL_S * 1000 - Date.now()));
}

// Reads the cluster's own count of connections once a second through the ramp and hold.
export function observer() {
  const t0 = Date.now();
  while (Date.now() - t0 < TOTAL_S * 1000) {
    const { body } = apiGet(0, '/api/v1/cluster', 'cluster');
    if (body && body.nodes) clusterConnections.add(body.nodes.reduce((a, n) => a + (n.connections || 0), 0));
    sleep(1);
  }
}
