// Switchboard browser client: a plain ES module, no build step, no dependencies.
// Every node serves it at GET /client.js. The wire protocol is docs/PROTOCOL.md.
//
//   import { Switchboard } from '/client.js';
//   const sb = new Switchboard({ url: ['wss://a.example/ws', 'wss://b.example/ws'], getToken });
//   sb.subscribe('chat:lobby', (data, message) => show(data));
//   sb.connect();
//   await sb.publish('chat:lobby', { text: 'hi' });

const SUBPROTOCOL = 'switchboard.v1.json';
/** Close codes after which the client gives up: policy, too large, disconnected by the API. */
const FINAL_CODES = new Set([1008, 1009, 4100]);
/** Code the client closes with itself when the server has been silent too long. */
const HEARTBEAT_TIMEOUT = 4000;

/** A command the server refused (`code` from the protocol), or one that failed locally
 * (`timeout`, `disconnected`, `unsubscribed`, `closed`). */
export class SwitchboardError extends Error {
  /** @param {string} code @param {string} [message] */
  constructor(code, message) {
    super(message || code);
    this.name = 'SwitchboardError';
    /** @type {string} */
    this.code = code;
  }
}

/**
 * Exponential backoff with full jitter: a random delay in [0, min(max, initial * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{initial?: number, max?: number}} [backoff] milliseconds
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { initial = 500, max = 15000 } = {}, random = Math.random) {
  return Math.floor(random() * Math.min(max, initial * 2 ** attempt));
}

/**
 * Whether to reconnect after a close: never after 1008, 1009 or 4100; after 4001 only with a
 * way to refresh the token; otherwise as the server's `disconnect` frame says (yes without one).
 * @param {number} code the close code (the `disconnect` frame's, when there was one)
 * @param {{reconnect?: boolean} | null} frame the server's `disconnect` frame, if any
 * @param {boolean} canRefreshToken whether a `getToken` callback was given
 * @returns {boolean}
 */
export function shouldReconnect(code, frame, canRefreshToken) {
  if (code === 4001) return canRefreshToken;
  if (FINAL_CODES.has(code)) return false;
  return frame ? frame.reconnect !== false : true;
}

/**
 * A connection to a Switchboard cluster that survives network trouble: it reconnects with
 * backoff (moving on to the next URL when one fails), refreshes its token, re-subscribes and
 * recovers what it missed on channels with history.
 *
 * Events (`on(name, fn)`):
 * - `state` `{state}`: `disconnected`, `connecting` or `connected`;
 * - `connected` the server's `welcome` (`{conn, node, user, heartbeat}`) plus `url`;
 * - `disconnected` `{code, reason, reconnect}`: `reconnect: false` means the client stopped;
 * - `reconnecting` `{delay, attempt, url}`;
 * - `subscribed` the server's `subscribed` reply (`{channel, epoch, offset, recovered}`);
 * - `unrecovered` `{channel, from: {epoch, offset}, epoch, offset}`: the client asked to
 *   recover `channel` from `from` but the server could not (the history was lost or too
 *   short): messages between `from` and `offset` were missed; `history()` may still have some;
 * - `missed` `{channel, reason}` (or `{user, reason}` for messages sent to this user): the
 *   server could not deliver some messages and could not repair the gap from history
 *   (`reason` is `backplane`: its link to the cluster was interrupted, on a channel without
 *   history; or `history`: the history was lost, expired or trimmed past the gap). Reload
 *   what the application shows for that channel if it matters; delivery goes on;
 * - `message` every delivered message frame, channel and user messages alike;
 * - `join` / `leave` presence events `{channel, conn, user}`;
 * - `error` a `SwitchboardError` that no promise carries (a re-subscribe refused, say).
 */
export class Switchboard {
  /**
   * @param {object} options
   * @param {string | string[]} options.url one or more node URLs (`ws://host:port/ws`;
   *   `http(s)://` and paths relative to the page work too); a failed attempt moves to the next
   * @param {string} [options.token] JWT for the first connection
   * @param {() => string | Promise<string>} [options.getToken] returns a fresh JWT; called when
   *   there is no token, before every reconnect, and after the server closed with 4001
   *   (token expired); without it a 4001 ends the client
   * @param {{initial?: number, max?: number}} [options.backoff] reconnect delays, milliseconds
   *   (default 500 and 15000)
   * @param {number} [options.timeout] milliseconds a command waits for its reply and a
   *   connection for its `welcome` (default 10000)
   * @param {number} [options.rateLimitDelay] least milliseconds to wait after a 4029 (default 5000)
   * @param {typeof WebSocket} [options.WebSocket] implementation (default: the global one)
   * @param {() => number} [options.random] source of jitter (default `Math.random`)
   */
  constructor(options) {
    const urls = [].concat(options.url ?? []);
    if (urls.length === 0) throw new TypeError('Switchboard: options.url is required');
    this.urls = urls.map(toWsUrl);
    this.options = {
      backoff: { initial: 500, max: 15000, ...options.backoff },
      timeout: options.timeout ?? 10000,
      rateLimitDelay: options.rateLimitDelay ?? 5000,
      getToken: options.getToken,
      WebSocket: options.WebSocket ?? globalThis.WebSocket,
      random: options.random ?? Math.random,
    };
    /** @type {'disconnected' | 'connecting' | 'connected'} */
    this.state = 'disconnected';
    /** The current connection's `welcome` frame (`conn`, `node`, `user`, `heartbeat`), or null. */
    this.info = null;
    this._token = options.token ?? null;
    this._needToken = this._token == null;
    this._ws = null;
    this._url = 0;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // id -> request sent, waiting for its reply
    this._queue = []; // requests made while not connected
    this._subs = new Map(); // channel -> subscription
    this._listeners = new Map();
    this._timers = {};
  }

  /** Starts connecting (and keeps reconnecting until `disconnect()` or a final close). */
  connect() {
    if (this.state !== 'disconnected') return;
    this._stopped = false;
    this._open();
  }

  /** Closes the connection and stops reconnecting; subscriptions are kept for a later `connect()`. */
  disconnect() {
    this._stopped = true;
    clearTimeout(this._timers.retry);
    if (this._ws) this._drop(this._ws, 1000, 'client disconnect');
    else this._finish(1000, 'client disconnect');
  }

  /**
   * Subscribes to a channel and calls `onMessage(data, message)` for each of its messages, in
   * order and once each (on channels with history the client checks offsets, fills gaps and
   * recovers after reconnects). A second call for the same channel adds a handler.
   * @param {string} channel
   * @param {(data: any, message: object) => void} [onMessage]
   * @param {{recover?: {epoch: string, offset: number}}} [options] where to resume from (say,
   *   a position saved before a page reload)
   * @returns {Promise<object>} the first `subscribed` reply; rejects with the server's error
   */
  subscribe(channel, onMessage, options = {}) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = { channel, handlers: new Set(), epoch: null, offset: null, state: 'new' };
      if (options.recover) Object.assign(sub, options.recover);
      sub.ready = new Promise((resolve, reject) => Object.assign(sub, { resolve, reject }));
      sub.ready.catch(() => {}); // the caller may ignore it
      this._subs.set(channel, sub);
      if (this.state === 'connected') this._sendSubscribe(sub);
    }
    if (onMessage) sub.handlers.add(onMessage);
    return sub.ready;
  }

  /**
   * Removes `onMessage` from a channel, or every handler when it is not given; the client
   * unsubscribes once no handler is left.
   * @param {string} channel
   * @param {Function} [onMessage]
   * @returns {Promise<object>} the `unsubscribed` reply (or a local one when offline)
   */
  unsubscribe(channel, onMessage) {
    const sub = this._subs.get(channel);
    const done = { type: 'unsubscribed', channel };
    if (!sub) return Promise.resolve(done);
    if (onMessage) sub.handlers.delete(onMessage);
    if (onMessage && sub.handlers.size > 0) return Promise.resolve(done);
    this._subs.delete(channel);
    sub.reject(new SwitchboardError('unsubscribed'));
    if (this.state !== 'connected') return Promise.resolve(done);
    return this._request({ type: 'unsubscribe', channel });
  }

  /**
   * Publishes `data` (any JSON value) to a channel.
   * @returns {Promise<object>} the `published` reply (`offset` on channels with history)
   */
  publish(channel, data) {
    return this._request({ type: 'publish', channel, data });
  }

  /**
   * Reads a channel's history.
   * @param {string} channel
   * @param {{limit?: number, since?: {epoch: string, offset: number}}} [options]
   * @returns {Promise<object>} `{channel, epoch, offset, messages: [...]}`
   */
  history(channel, { limit, since } = {}) {
    return this._request({ type: 'history', channel, limit, since });
  }

  /**
   * Lists who is subscribed to a channel, on every node.
   * @returns {Promise<object>} `{channel, members: [{conn, user, node}]}`
   */
  presence(channel) {
    return this._request({ type: 'presence', channel });
  }

  /**
   * Where the client is in a channel with history: the last delivered offset and its epoch.
   * @returns {{epoch: string, offset: number} | null}
   */
  position(channel) {
    const sub = this._subs.get(channel);
    return sub && sub.epoch != null ? { epoch: sub.epoch, offset: sub.offset } : null;
  }

  /**
   * Adds an event listener (see the class comment for the events).
   * @returns {() => void} a function that removes it
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /** Removes an event listener. */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  // ---- connection ----

  async _open() {
    const attempt = (this._opening = (this._opening ?? 0) + 1);
    this._setState('connecting');
    const url = this.urls[this._url % this.urls.length];
    if (this.options.getToken && this._needToken) {
      try {
        this._token = await this.options.getToken();
      } catch (e) {
        this._emit('error', new SwitchboardError('token', `getToken failed: ${e?.message ?? e}`));
        return this._retry(undefined, false);
      }
      if (this._stopped || attempt !== this._opening) return;
    }
    // With a callback, every later attempt asks for a fresh token.
    this._needToken = Boolean(this.options.getToken);
    let ws;
    try {
      ws = new this.options.WebSocket(withToken(url, this._token), SUBPROTOCOL);
    } catch (e) {
      this._emit('error', new SwitchboardError('connect', String(e?.message ?? e)));
      return this._retry(undefined, true);
    }
    this._ws = ws;
    this._currentUrl = url;
    this._disconnectFrame = null;
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onclose = (event) => this._drop(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this._timers.handshake = setTimeout(
      () => this._drop(ws, HEARTBEAT_TIMEOUT, 'no welcome in time'),
      this.options.timeout,
    );
  }

  _onWelcome(frame) {
    clearTimeout(this._timers.handshake);
    this.info = frame;
    this._attempt = 0;
    this._generation = (this._generation ?? 0) + 1;
    this._setState('connected');
    this._watch(this._ws, frame.heartbeat);
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const request of this._queue.splice(0)) this._send(request);
    this._emit('connected', { ...frame, url: this._currentUrl });
  }

  /** Detects a silent server: browsers answer pings without telling the page, so after one
   * heartbeat of silence the client sends `ping`, and after two it reconnects. */
  _watch(ws, heartbeatSeconds) {
    const interval = Math.max(0.05, Number(heartbeatSeconds) || 25) * 1000;
    this._lastSeen = Date.now();
    let pingedAt = 0;
    this._timers.heartbeat = setInterval(() => {
      const silent = Date.now() - this._lastSeen;
      if (silent >= 2 * interval) {
        this._drop(ws, HEARTBEAT_TIMEOUT, 'heartbeat timeout');
      } else if (silent >= interval && pingedAt <= this._lastSeen) {
        pingedAt = Date.now();
        this._raw({ type: 'ping' });
      }
    }, interval / 2);
  }

  /** The connection is over (closed by the server, the network, or this client). */
  _drop(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code === 1000 ? 1000 : HEARTBEAT_TIMEOUT, reason);
    } catch {
      // already closed
    }
    clearTimeout(this._timers.handshake);
    clearInterval(this._timers.heartbeat);
    const frame = this._disconnectFrame;
    if (frame) ({ code, reason } = frame);
    const wasConnected = this.state === 'connected';
    this.info = null;
    for (const request of this._pending.values()) {
      clearTimeout(request.timer);
      if (!request.sub) request.fail(new SwitchboardError('disconnected', 'connection lost before the reply'));
    }
    this._pending.clear();
    for (const sub of this._subs.values()) sub.state = 'new';
    const reconnect = !this._stopped && shouldReconnect(code, frame, Boolean(this.options.getToken));
    this._emit('disconnected', { code, reason, reconnect });
    if (!reconnect) return this._finish(code, reason);
    if (code === 4001) this._needToken = true;
    // A node that is going away, silent, or never answered: try the next one.
    const moveOn = !wasConnected || code === 1001 || code === HEARTBEAT_TIMEOUT;
    let delay;
    if (code === 4001) delay = 0;
    else if (code === 4029) delay = Math.max(this.options.rateLimitDelay, this._backoff());
    this._retry(delay, moveOn);
  }

  _retry(delay, moveOn) {
    if (this._stopped) return;
    if (moveOn) this._url += 1;
    delay ??= this._backoff();
    this._setState('connecting');
    const url = this.urls[this._url % this.urls.length];
    this._emit('reconnecting', { delay, attempt: this._attempt, url });
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  _backoff() {
    return backoffDelay(this._attempt++, this.options.backoff, this.options.random);
  }

  /** Stopped for good (until `connect()`): queued requests fail. */
  _finish(code, reason) {
    this._stopped = true;
    for (const request of this._queue.splice(0)) {
      clearTimeout(request.timer);
      request.fail(new SwitchboardError('closed', `client stopped: ${code} ${reason ?? ''}`.trim()));
    }
    this._setState('disconnected');
  }

  // ---- frames ----

  _onFrame(ws, text) {
    if (ws !== this._ws) return;
    this._lastSeen = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        return this._onWelcome(frame);
      case 'message':
        return this._onMessage(frame);
      case 'join':
      case 'leave':
        return this._emit(frame.type, frame);
      case 'missed':
        return this._onMissed(frame);
      case 'disconnect':
        this._disconnectFrame = frame;
        return;
    }
    const request = frame.id != null && this._pending.get(frame.id);
    if (!request) return;
    this._pending.delete(frame.id);
    clearTimeout(request.timer);
    if (frame.type === 'error') request.fail(new SwitchboardError(frame.code, frame.message));
    else request.ok(frame);
  }

  _onMessage(frame) {
    const sub = frame.channel != null && this._subs.get(frame.channel);
    if (!sub) {
      if (frame.channel == null) this._emit('message', frame); // a message to this user
      return;
    }
    if (frame.offset != null) {
      if (sub.epoch != null) {
        if (frame.epoch === sub.epoch && frame.offset <= sub.offset) return; // seen already
        // Epoch "" at offset 0: subscribed before the channel had any history, so the
        // first message of whatever epoch began since comes next.
        const next = sub.epoch === '' && sub.offset === 0
          ? frame.offset === 1
          : frame.epoch === sub.epoch && frame.offset === sub.offset + 1;
        if (!next) {
          this._resync(sub); // a gap: the missed messages come with the recovery
          return;
        }
      }
      sub.epoch = frame.epoch;
      sub.offset = frame.offset;
    }
    this._emit('message', frame);
    for (const handler of [...sub.handlers]) safely(() => handler(frame.data, frame));
  }

  /** The server says messages were missed and cannot be repaired: tell the application. */
  _onMissed(frame) {
    const sub = frame.channel != null && this._subs.get(frame.channel);
    if (frame.channel != null && !sub) return;
    // The gap is final: follow the stream from the next message on, wherever it stands.
    if (sub && frame.reason === 'history') sub.epoch = null;
    this._emit('missed', frame);
  }

  /** Resubscribes from the last offset delivered, to fetch what a gap left out. */
  _resync(sub) {
    if (sub.state !== 'subscribed' || this.state !== 'connected') return;
    this._raw({ type: 'unsubscribe', channel: sub.channel });
    this._sendSubscribe(sub);
  }

  _sendSubscribe(sub) {
    const command = { type: 'subscribe', channel: sub.channel };
    const from = sub.epoch != null ? { epoch: sub.epoch, offset: sub.offset } : null;
    if (from) command.recover = from;
    sub.state = 'subscribing';
    const request = {
      command,
      sub,
      ok: (reply) => this._onSubscribed(sub, reply, from),
      fail: (error) => {
        if (this._subs.get(sub.channel) !== sub) return;
        if (error.code === 'rate_limited') {
          // Not refused, only too fast: try again on this connection in a moment.
          const generation = this._generation;
          setTimeout(() => {
            if (this._generation === generation && this.state === 'connected' && this._subs.get(sub.channel) === sub) {
              this._sendSubscribe(sub);
            }
          }, 1000);
          return;
        }
        this._subs.delete(sub.channel);
        sub.reject(error);
        this._emit('error', error);
      },
    };
    this._send(request);
  }

  _onSubscribed(sub, reply, from) {
    if (this._subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    sub.state = 'subscribed';
    if (reply.epoch != null && !reply.recovered) {
      // Live from reply.offset + 1; anything between `from` and there is not coming.
      if (from) this._emit('unrecovered', { channel: sub.channel, from, epoch: reply.epoch, offset: reply.offset });
      sub.epoch = reply.epoch;
      sub.offset = reply.offset;
    }
    // recovered: the missed messages follow this reply, from sub.offset + 1.
    sub.resolve(reply);
    this._emit('subscribed', reply);
  }

  // ---- requests ----

  _request(command) {
    return new Promise((resolve, reject) => {
      const request = { command, ok: resolve, fail: reject };
      request.timer = setTimeout(() => {
        this._pending.delete(request.id);
        const queued = this._queue.indexOf(request);
        if (queued >= 0) this._queue.splice(queued, 1);
        reject(new SwitchboardError('timeout', `no reply to ${command.type} in ${this.options.timeout} ms`));
      }, this.options.timeout);
      if (this.state === 'connected') this._send(request);
      else this._queue.push(request);
    });
  }

  _send(request) {
    request.id = this._nextId++;
    this._pending.set(request.id, request);
    this._raw({ ...request.command, id: request.id });
  }

  _raw(command) {
    try {
      this._ws?.send(JSON.stringify(command));
    } catch {
      // closing: the close event follows
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state });
  }

  _emit(event, value) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) safely(() => fn(value));
  }
}

/** Runs an application callback; its exception is reported without breaking the client. */
function safely(fn) {
  try {
    fn();
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}

function toWsUrl(url) {
  if (url.startsWith('/') && globalThis.location) {
    url = new URL(url, globalThis.location.href).href;
  }
  return url.replace(/^http(s?):/, 'ws$1:');
}

function withToken(url, token) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}
