// Shared by the Switchboard k6 scripts: settings from the environment, a WebSocket client
// that speaks the JSON subprotocol (switchboard.v1.json) and counts connect failures,
// unexpected closes and server errors, the server API, and a bit set for loss checks.
//
// One k6 VU holds many connections here (k6/experimental/websockets runs them all on the
// VU's event loop), so a 2-core machine can hold thousands of them; one VU per connection
// would cost k6 a JavaScript runtime per connection.
//
// Settings common to every script (all optional):
//   WS_URLS        comma-separated WebSocket URLs, one per node; connections are spread
//                  round-robin over them (default: the two nodes of scripts/loadtest.sh's
//                  defaults, ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws)
//   API_URLS       comma-separated base URLs of the nodes' internal listeners (server API),
//                  used round-robin (default http://127.0.0.1:9091,http://127.0.0.1:9092)
//   API_KEY        sent as `Authorization: apikey KEY` on API calls when set
//   TOKEN          JWT sent as `Authorization: Bearer TOKEN` on every WebSocket upgrade
//                  (a header, so the token does not end up in k6's `url` metric tags)
//   RUN_ID         suffix that makes this run's channel names unique (default: time-based)
//   CONNECT_P95_MS / CONNECT_P99_MS   connect-time thresholds (WebSocket upgrade to welcome)
//   WELCOME_TIMEOUT_MS  a connection without a welcome this long after it started counts as a
//                  connect error and is closed (default 10000)
//   WELCOME_PROBE_MS    after `open` without a welcome this long, probe with a `ping` (default
//                  2000; see Client for why)

import { WebSocket } from 'k6/experimental/websockets';
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';

// ---- settings ---------------------------------------------------------------------------

export function env(name, def) {
  const v = __ENV[name];
  return v === undefined || v === '' ? def : v;
}

export function envNum(name, def) {
  const v = env(name, undefined);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v}: not a number`);
  return n;
}

export function envInt(name, def) {
  const n = envNum(name, def);
  if (!Number.isInteger(n)) throw new Error(`${name}=${n}: not an integer`);
  return n;
}

export function envList(name, def) {
  return env(name, def).split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

export const WS_URLS = envList('WS_URLS', 'ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws');
export const API_URLS = envList('API_URLS', 'http://127.0.0.1:9091,http://127.0.0.1:9092');
export const TOKEN = env('TOKEN', '');
/** Milliseconds a new connection may take to get its welcome before it counts as failed. */
export const WELCOME_TIMEOUT_MS = Number(env('WELCOME_TIMEOUT_MS', '10000'));
/** Milliseconds after `open` without a welcome before the client probes with a `ping`. */
export const WELCOME_PROBE_MS = Number(env('WELCOME_PROBE_MS', '2000'));
// The id of that probe; command ids of a Client start at 1.
const PROBE_ID = 0;
export const API_KEY = env('API_KEY', '');

/** Connect-time thresholds shared by every script. */
export function connectThresholds() {
  return {
    sb_connect_errors: ['count==0'],
    sb_connect_time: [
      `p(95)<${envNum('CONNECT_P95_MS', 500)}`,
      `p(99)<${envNum('CONNECT_P99_MS', 1000)}`,
    ],
    sb_unexpected_closes: ['count==0'],
    sb_server_errors: ['count==0'],
    sb_server_disconnects: ['count==0'],
  };
}

/** A run id for channel names: call it in setup() and pass it on through setup's data. */
export function runId() {
  return env('RUN_ID', Date.now().toString(36) + Math.floor(Math.random() * 1296).toString(36));
}

// ---- metrics every script shares --------------------------------------------------------

/** Upgrade request sent to welcome frame received, per connection. */
export const connectTime = new Trend('sb_connect_time', true);
/** Connections that never got a welcome (refused, 429/503/401, reset, timeout). */
export const connectErrors = new Counter('sb_connect_errors');
/** Connections that got a welcome. */
export const connected = new Counter('sb_connections');
/** Connections closed by the other side (or the network) while the script still wanted them. */
export const unexpectedCloses = new Counter('sb_unexpected_closes');
/** `error` frames from the server (tagged with `code`). */
export const serverErrors = new Counter('sb_server_errors');
/** `disconnect` frames from the server (tagged with `code`). */
export const serverDisconnects = new Counter('sb_server_disconnects');
/** Welcomes k6 itself dropped (see Client); the connection was dialled again. */
export const lostWelcomes = new Counter('sb_k6_lost_welcomes');

// ---- the WebSocket client ---------------------------------------------------------------

// Connection errors logged so far by this VU (the first few are, the rest only with VERBOSE).
let loggedErrors = 0;

/** The i-th WebSocket URL, round-robin over WS_URLS. */
export function wsUrl(i) {
  return WS_URLS[i % WS_URLS.length];
}

/** The i-th API base URL, round-robin over API_URLS. */
export function apiUrl(i) {
  return API_URLS[i % API_URLS.length];
}

/**
 * One Switchboard connection on the JSON subprotocol.
 *
 * handlers (all optional): welcome(client, frame), frame(client, frame, at) for every frame
 * that is not a reply to a command sent with `cmd`, closed(client, expected).
 * `at` is the k6 receive timestamp in milliseconds (sub-millisecond precision), taken when
 * the frame came off the socket rather than when the event loop got to it.
 *
 * k6 v1.1 can drop a frame that arrives right after the upgrade: its reader may queue the
 * frame before the `open` task is queued, and a frame handled while the socket still counts as
 * connecting is discarded (k6's websockets.go, establishConnection/queueMessage). The node
 * sends its welcome at once, so about one connection in ten thousand never sees it. A client
 * without a welcome WELCOME_PROBE_MS after `open` therefore sends a `ping`: a `pong` proves the
 * session runs and that the welcome, written before it, was lost in k6; the client then dials
 * again (counted in sb_k6_lost_welcomes, which fails no threshold). No answer by
 * WELCOME_TIMEOUT_MS is a connect error.
 */
export class Client {
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers || {};
    this.nextId = 1;
    this.pending = {};
    this.welcome = null;
    this.failed = false;
    this.closing = false;
    this.closed = false;
    this.redials = 0;
    this._dial();
  }

  /** Sends a command object as is (no reply expected or handled by `frame`). */
  send(obj) {
    if (this.closed || this.closing || this.welcome === null) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  /** Sends a command with a fresh id; `onReply(frame, at)` gets its reply (or error). */
  cmd(obj, onReply) {
    const id = this.nextId++;
    obj.id = id;
    if (!this.send(obj)) return false;
    this.pending[id] = onReply || null;
    return true;
  }

  /** Closes on purpose: not counted as an unexpected close. */
  close() {
    if (this.closed || this.closing) return;
    this.closing = true;
    this._clearTimers();
    this.ws.close();
  }

  get open() {
    return this.welcome !== null && !this.closed && !this.closing;
  }

  _dial() {
    this.startedAt = Date.now();
    this.openedAt = 0;
    const params = TOKEN ? { headers: { Authorization: `Bearer ${TOKEN}` } } : {};
    const ws = new WebSocket(this.url, 'switchboard.v1.json', params);
    this.ws = ws;
    // Events of a socket given up for a redial are ignored.
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.probeTimer = setTimeout(() => this._probe(), WELCOME_PROBE_MS);
    };
    ws.onmessage = (e) => {
      if (ws === this.ws) this._onMessage(e);
    };
    ws.onerror = (e) => {
      if (ws === this.ws) this._onError(e);
    };
    ws.onclose = () => {
      if (ws === this.ws) this._onClose();
    };
    // A connection that gets no welcome in time failed to connect, whatever the socket says.
    this.welcomeTimer = setTimeout(() => this._noWelcome(), WELCOME_TIMEOUT_MS);
  }

  _clearTimers() {
    clearTimeout(this.welcomeTimer);
    clearTimeout(this.probeTimer);
  }

  _probe() {
    if (this.welcome !== null || this.closed || this.closing || this.failed) return;
    this.ws.send(JSON.stringify({ type: 'ping', id: PROBE_ID }));
  }

  _onMessage(e) {
    const at = e.timestamp || Date.now();
    let f;
    try {
      f = JSON.parse(e.data);
    } catch (err) {
      serverErrors.add(1, { code: 'unparsable_frame' });
      return;
    }
    if (f.type === 'welcome') {
      this._clearTimers();
      this.welcome = f;
      connectTime.add(at - this.startedAt);
      connected.add(1);
      if (this.h.welcome) this.h.welcome(this, f);
      return;
    }
    if (f.id === PROBE_ID && f.type === 'pong') {
      if (this.welcome === null && !this.closing && !this.failed) this._redial();
      return;
    }
    if (f.type === 'error') serverErrors.add(1, { code: String(f.code) });
    if (f.type === 'disconnect') serverDisconnects.add(1, { code: String(f.code) });
    if (f.id !== undefined && f.id in this.pending) {
      const cb = this.pending[f.id];
      delete this.pending[f.id];
      if (cb) cb(f, at);
      return;
    }
    if (this.h.frame) this.h.frame(this, f, at);
  }

  // The session answered the probe but k6 never showed its welcome: start over.
  _redial() {
    lostWelcomes.add(1);
    if (++loggedErrors <= 3 || __ENV.VERBOSE) {
      console.warn(`connect ${this.url}: k6 dropped the welcome (the probe was answered); dialling again`);
    }
    this._clearTimers();
    const old = this.ws;
    this.redials++;
    this._dial();
    old.close();
  }

  _noWelcome() {
    if (this.welcome !== null || this.failed || this.closed) return;
    this.failed = true;
    connectErrors.add(1, { reason: 'no_welcome' });
    const upgraded = this.openedAt ? `upgraded ${this.openedAt - this.startedAt} ms after the start` : 'not upgraded';
    console.warn(`connect ${this.url}: no welcome within ${WELCOME_TIMEOUT_MS} ms (${upgraded})`);
    this.closing = true;
    this._clearTimers();
    this.ws.close();
  }

  _onError(e) {
    if (this.welcome === null && !this.failed) {
      this.failed = true;
      connectErrors.add(1, { reason: 'error' });
      if (++loggedErrors <= 3 || __ENV.VERBOSE) console.warn(`connect ${this.url}: ${e.error}`);
    } else if (this.welcome !== null && !this.closing && (++loggedErrors <= 3 || __ENV.VERBOSE)) {
      console.warn(`connection ${this.welcome.conn} on ${this.url}: ${e.error}`);
    }
  }

  _onClose() {
    if (this.closed) return;
    this.closed = true;
    this._clearTimers();
    const expected = this.closing;
    if (this.welcome === null && !this.failed) {
      this.failed = true;
      connectErrors.add(1, { reason: 'closed' });
      if (++loggedErrors <= 3 || __ENV.VERBOSE) console.warn(`connect ${this.url}: closed before the welcome`);
    } else if (this.welcome !== null && !expected) {
      unexpectedCloses.add(1);
    }
    if (this.h.closed) this.h.closed(this, expected);
  }
}

// ---- the server API ---------------------------------------------------------------------

export function apiHeaders() {
  const h = { 'Content-Type': 'application/json' };
  if (API_KEY) h.Authorization = `apikey ${API_KEY}`;
  return h;
}

/** POST /api/v1/publish on the i-th API URL. */
export function apiPublish(i, channel, data) {
  return http.post(`${apiUrl(i)}/api/v1/publish`, JSON.stringify({ channel, data }), {
    headers: apiHeaders(),
    tags: { name: 'publish' },
  });
}

/** GET on the i-th API URL; returns the parsed JSON body or null, and the response. */
export function apiGet(i, path, name) {
  const r = http.get(`${apiUrl(i)}${path}`, { headers: apiHeaders(), tags: { name } });
  let body = null;
  try {
    body = r.status === 200 ? JSON.parse(r.body) : null;
  } catch (err) {
    body = null;
  }
  return { r, body };
}

/**
 * For setup(): stops the test at once, with a clear message, when a node in WS_URLS (its
 * public `/healthz`) or, with `needApi`, in API_URLS (`/healthz`) does not answer.
 */
export function checkTargets(needApi) {
  const bad = [];
  for (const u of WS_URLS) {
    const h = u.replace(/^ws/, 'http').replace(/\/ws(\?.*)?$/, '/healthz');
    const r = http.get(h, { tags: { name: 'healthz' } });
    if (r.status !== 200) bad.push(`${h} (for ${u}): ${r.status || r.error}`);
  }
  if (needApi) {
    for (const u of API_URLS) {
      const r = http.get(`${u}/healthz`, { tags: { name: 'healthz' } });
      if (r.status !== 200) bad.push(`${u}/healthz: ${r.status || r.error}`);
    }
  }
  if (bad.length > 0) {
    exec.test.abort(`unreachable: ${bad.join('; ')} (set WS_URLS and API_URLS)`);
  }
}

// ---- helpers ----------------------------------------------------------------------------

/** A payload string of about n bytes, to pad messages to a size. */
export function padding(n) {
  return n > 0 ? 'x'.repeat(n) : '';
}

/** A growable set of small non-negative integers (sequence numbers, offsets). */
export class BitSet {
  constructor(n) {
    this.bits = new Uint8Array(Math.max(8, Math.ceil((n || 64) / 8)));
    this.size = 0;
  }

  has(i) {
    const b = i >> 3;
    return b < this.bits.length && (this.bits[b] & (1 << (i & 7))) !== 0;
  }

  /** Adds i; returns false if it was already there. */
  add(i) {
    const b = i >> 3;
    if (b >= this.bits.length) {
      const grown = new Uint8Array(Math.max(b + 1, this.bits.length * 2));
      grown.set(this.bits);
      this.bits = grown;
    }
    const m = 1 << (i & 7);
    if (this.bits[b] & m) return false;
    this.bits[b] |= m;
    this.size++;
    return true;
  }

  /** How many of lo..hi (inclusive) are missing. */
  missing(lo, hi) {
    let n = 0;
    for (let i = lo; i <= hi; i++) if (!this.has(i)) n++;
    return n;
  }
}
