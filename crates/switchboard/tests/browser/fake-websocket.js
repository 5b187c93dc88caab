// A stand-in for the browser's WebSocket, driven by the test as if it were the server.

/** Polls `check` until it returns a truthy value (returned) or `ms` pass (throws). */
export async function until(check, what = 'condition', ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Every socket a client opens goes through one FakeServer. */
export class FakeServer {
  constructor() {
    /** @type {FakeSocket[]} */
    this.sockets = [];
    const server = this;
    /** The class to give the client as `options.WebSocket`. */
    this.WebSocket = class extends FakeSocket {
      constructor(url, protocol) {
        super(url, protocol);
        server.sockets.push(this);
      }
    };
  }

  /** The socket opened after `count` others, once the client opened it. */
  socket(index) {
    return until(() => this.sockets[index], `socket #${index}`);
  }

  /** The newest socket. */
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

export class FakeSocket {
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 1;
    /** Frames the client sent, parsed. */
    this.sent = [];
    this.closedByClient = null;
  }

  // ---- what the client calls ----

  send(text) {
    if (this.readyState !== 1) throw new Error('send on a closed socket');
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedByClient = { code, reason };
  }

  // ---- what the test (the "server") does ----

  /** Sends a frame to the client. */
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  welcome(fields = {}) {
    this.push({ type: 'welcome', conn: 'c_1', node: 'node-a', user: '', heartbeat: 25, ...fields });
  }

  /** The server closes the connection (after a `disconnect` frame when `frame` is given). */
  serverClose(code, frame) {
    if (frame) this.push({ type: 'disconnect', code, reason: 'test', ...frame });
    this.readyState = 3;
    this.onclose?.({ code, reason: frame?.reason ?? '' });
  }

  /** The first sent frame matching `where` (fields compared with ===), waiting for it. */
  sentFrame(where, ms) {
    const match = (f) => Object.entries(where).every(([k, v]) => f[k] === v);
    return until(() => this.sent.find(match), `a sent frame like ${JSON.stringify(where)}`, ms);
  }

  /** Answers the first sent frame like `where` with `reply` (its id added). */
  async reply(where, reply) {
    const frame = await this.sentFrame(where);
    this.push({ ...reply, id: frame.id });
    return frame;
  }
}
