// fanout.js: one channel, many subscribers spread over the nodes, a publisher through the
// server API. Measures end-to-end latency (publisher's clock in the payload to the moment
// the subscriber's socket delivered the frame) and checks that every subscriber got every
// message exactly once and in publish order.
//
// How it runs:
//   1. SUBSCRIBERS connections (SUBSCRIBERS_PER_VU per k6 VU, round-robin over WS_URLS)
//      connect over RAMP seconds and subscribe to CHANNEL.
//   2. Each publisher VU waits until the channel's presence (GET
//      /api/v1/channels/{c}/presence) lists every subscriber, so nobody subscribes late;
//      without presence on the namespace (403) it waits START_DELAY seconds instead.
//   3. PUBLISHERS VUs publish RATE messages/s in total for DURATION seconds through
//      POST /api/v1/publish, round-robin over API_URLS. Each payload carries the
//      publisher's number, its sequence number (0, 1, 2, ... per publisher, each publish
//      answered before the next), the send time, and padding to PAYLOAD_BYTES.
//   4. A last `end` message per publisher tells the subscribers to finish; a subscriber
//      that hears nothing for GRACE seconds finishes too.
//
// Settings (environment): WS_URLS, API_URLS, API_KEY, TOKEN, RUN_ID (see lib.js), and
//   SUBSCRIBERS (500), SUBSCRIBERS_PER_VU (100), RAMP (5 s), PUBLISHERS (1), RATE (20 /s),
//   DURATION (20 s), PAYLOAD_BYTES (64), CHANNEL (ltfan:fanout-RUNID; its namespace should
//   have presence on), START_TIMEOUT (60 s), START_DELAY (5 s), GRACE (10 s),
//   LATENCY_P95_MS (50), LATENCY_P99_MS (100), CONNECT_P95_MS (500), CONNECT_P99_MS (1000).
//
// Thresholds (k6 exits non-zero when one fails): no connect errors, connect time p95/p99,
// latency p95/p99, zero lost, gapped, duplicated or out-of-order messages, every subscriber
// complete, no publish errors, no unexpected closes, no server errors or disconnects.

import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  apiGet, apiPublish, BitSet, checkTargets, Client, connectThresholds, env, envInt, envNum, padding,
  runId, wsUrl,
} from './lib.js';

const SUBSCRIBERS = envInt('SUBSCRIBERS', 500);
const PER_VU = envInt('SUBSCRIBERS_PER_VU', 100);
const SUB_VUS = Math.ceil(SUBSCRIBERS / PER_VU);
const RAMP = envNum('RAMP', 5);
const PUBLISHERS = envInt('PUBLISHERS', 1);
const RATE = envNum('RATE', 20);
const DURATION = envNum('DURATION', 20);
const PER_PUBLISHER = Math.max(1, Math.round((RATE * DURATION) / PUBLISHERS));
const PAYLOAD_BYTES = envInt('PAYLOAD_BYTES', 64);
const START_TIMEOUT = envNum('START_TIMEOUT', 60);
const START_DELAY = envNum('START_DELAY', 5);
const GRACE = envNum('GRACE', 10);
// The hard stop for a subscriber VU, far beyond what a healthy run needs.
const DEADLINE_S = RAMP + START_TIMEOUT + 3 * DURATION + 2 * GRACE + 10;

const latency = new Trend('fanout_latency', true);
const received = new Counter('fanout_messages_received');
const lost = new Counter('fanout_lost');
const gaps = new Counter('fanout_gaps');
const duplicates = new Counter('fanout_duplicates');
const outOfOrder = new Counter('fanout_out_of_order');
const complete = new Rate('fanout_complete');
const subscribeErrors = new Counter('fanout_subscribe_errors');
const publishErrors = new Counter('fanout_publish_errors');
const published = new Counter('fanout_published');
const gateTime = new Trend('fanout_wait_for_subscribers', true);
// Milliseconds the publishers fell behind their schedule, summed (the API or k6 too slow).
const behind = new Counter('fanout_publisher_late_ms');

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscribers',
      vus: SUB_VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(DEADLINE_S + 30)}s`,
    },
    publishers: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: PUBLISHERS,
      iterations: 1,
      maxDuration: `${Math.ceil(DEADLINE_S + 30)}s`,
    },
  },
  thresholds: Object.assign(connectThresholds(), {
    fanout_latency: [`p(95)<${envNum('LATENCY_P95_MS', 50)}`, `p(99)<${envNum('LATENCY_P99_MS', 100)}`],
    fanout_lost: ['count==0'],
    fanout_gaps: ['count==0'],
    fanout_duplicates: ['count==0'],
    fanout_out_of_order: ['count==0'],
    fanout_complete: ['rate==1'],
    fanout_subscribe_errors: ['count==0'],
    fanout_publish_errors: ['count==0'],
    fanout_messages_received: [`count>=${SUBSCRIBERS * PER_PUBLISHER * PUBLISHERS}`],
  }),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  checkTargets(true);
  const channel = env('CHANNEL', `ltfan:fanout-${runId()}`);
  console.log(`fanout: ${SUBSCRIBERS} subscribers on ${channel}, ${PUBLISHERS} publisher(s), ` +
    `${RATE}/s for ${DURATION} s (${PER_PUBLISHER} messages each), ${PAYLOAD_BYTES}-byte padding`);
  return { channel };
}

// A subscriber's view: per publisher, the sequence numbers seen and the highest one.
function newSubscriber(j) {
  const seen = [];
  const last = [];
  for (let p = 0; p < PUBLISHERS; p++) {
    seen.push(new BitSet(PER_PUBLISHER));
    last.push(-1);
  }
  return { j, client: null, subscribed: false, seen, last, ended: 0, lastAt: 0, count: 0, done: false };
}

function onMessage(s, f, at) {
  const d = f.data;
  if (!d || typeof d !== 'object') return;
  s.lastAt = Date.now();
  if (d.k === 'end') {
    s.ended++;
    if (s.ended >= PUBLISHERS) finish(s);
    return;
  }
  if (d.k !== 'm') return;
  s.count++; // added to fanout_messages_received once, in finish(): one metric sample less per message
  latency.add(at - d.t);
  const p = d.p;
  if (!s.seen[p].add(d.s)) {
    duplicates.add(1);
    return;
  }
  if (d.s < s.last[p]) outOfOrder.add(1);
  else if (d.s > s.last[p] + 1) gaps.add(1);
  if (d.s > s.last[p]) s.last[p] = d.s;
}

// Tallies one subscriber and closes it. Order problems were counted as they happened.
function finish(s) {
  if (s.done) return;
  s.done = true;
  let missing = 0;
  if (s.subscribed) for (let p = 0; p < PUBLISHERS; p++) missing += PER_PUBLISHER - s.seen[p].size;
  else missing = PER_PUBLISHER * PUBLISHERS;
  lost.add(missing);
  received.add(s.count);
  complete.add(s.subscribed && missing === 0);
  if (s.client) s.client.close();
}

export function subscribers(data) {
  const v = exec.scenario.iterationInTest;
  const subs = [];
  for (let j = v * PER_VU; j < Math.min(SUBSCRIBERS, (v + 1) * PER_VU); j++) subs.push(newSubscriber(j));
  // Zero samples, so every threshold has a metric to look at even in a tiny run.
  [lost, gaps, duplicates, outOfOrder, subscribeErrors, received].forEach((c) => c.add(0));

  for (const s of subs) {
    setTimeout(() => {
      s.client = new Client(wsUrl(s.j), {
        welcome: (c) => c.cmd({ type: 'subscribe', channel: data.channel }, (r) => {
          if (r.type === 'subscribed') {
            s.subscribed = true;
            s.lastAt = Date.now();
          } else {
            subscribeErrors.add(1);
            finish(s);
          }
        }),
        frame: (c, f, at) => {
          if (!s.done && f.type === 'message' && f.channel === data.channel) onMessage(s, f, at);
        },
        closed: () => finish(s),
      });
    }, (s.j / SUBSCRIBERS) * RAMP * 1000);
  }

  // A subscriber finishes on the last `end`, after GRACE seconds of silence once messages
  // flowed, or at the deadline.
  const started = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    let open = 0;
    for (const s of subs) {
      if (s.done) continue;
      const silent = s.lastAt > 0 && s.ended + s.seen.reduce((a, b) => a + b.size, 0) > 0 &&
        now - s.lastAt > GRACE * 1000;
      if (silent || now - started > DEADLINE_S * 1000) finish(s);
      else open++;
    }
    if (open === 0) clearInterval(timer);
  }, 500);
}

// Waits until the channel's presence lists `want` members; false if presence is off.
function waitForSubscribers(channel, want) {
  const t0 = Date.now();
  // Channel names are URL-safe as they are; the node does not percent-decode the path.
  const path = `/api/v1/channels/${channel}/presence`;
  while (Date.now() - t0 < START_TIMEOUT * 1000) {
    const { r, body } = apiGet(0, path, 'presence');
    if (r.status >= 400 && r.status < 500) {
      console.warn(`fanout: presence answered ${r.status} ${r.body}; waiting START_DELAY instead`);
      return false;
    }
    if (body && body.members && body.members.length >= want) {
      gateTime.add(Date.now() - t0);
      return true;
    }
    sleep(0.25);
  }
  console.warn(`fanout: presence did not reach ${want} members within ${START_TIMEOUT} s; publishing anyway`);
  gateTime.add(Date.now() - t0);
  return true;
}

export function publisher(data) {
  const p = exec.scenario.iterationInTest;
  [publishErrors, published, behind].forEach((c) => c.add(0));
  sleep(RAMP);
  if (!waitForSubscribers(data.channel, SUBSCRIBERS)) sleep(START_DELAY);
  sleep(0.5); // the presence entry is written just after the subscription is live
  const pad = padding(PAYLOAD_BYTES);
  const interval = (PUBLISHERS / RATE) * 1000;
  const t0 = Date.now() + (p * interval) / PUBLISHERS;
  let failures = 0;
  for (let s = 0; s < PER_PUBLISHER; s++) {
    const due = t0 + s * interval;
    const wait = due - Date.now();
    if (wait > 0) sleep(wait / 1000);
    else behind.add(-wait);
    const r = apiPublish(p + s, data.channel, { k: 'm', p, s, t: Date.now(), x: pad });
    if (r.status === 200) published.add(1);
    else {
      publishErrors.add(1, { status: String(r.status) });
      if (++failures <= 3) console.warn(`fanout: publish answered ${r.status} ${r.body}`);
    }
  }
  const r = apiPublish(p, data.channel, { k: 'end', p, n: PER_PUBLISHER });
  if (r.status !== 200) publishErrors.add(1, { status: String(r.status) });
}
