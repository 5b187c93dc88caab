// The Pusher tests' cluster: a private redis-server and two release nodes with Pusher apps, on
// free ports. The process plumbing (free ports, redis-server, a node and its readiness) is the
// browser tests' (../browser/cluster.js); this file adds the Pusher apps, the libraries' options
// pointed at a node, a TCP forwarder for fail-over, a webhook receiver and event helpers.
import http from 'node:http';
import net from 'node:net';

import Pusher from 'pusher';
import PusherJs from 'pusher-js';

import { eventually, freePort, removeDir, startNode, startRedis, tempDir } from '../browser/cluster.js';

export { eventually, freePort };

/** The app every cluster has, given to the nodes by flags. */
export const APP1 = { id: 'app1', key: 'app1-key', secret: 'app1-secret' };
/** A second app, given only in TOML, for isolation and webhook tests. */
export const APP2 = { id: 'app2', key: 'app2-key', secret: 'app2-secret' };
/** The master key the server SDK derives encrypted channels' shared secrets from (32 bytes). */
export const ENCRYPTION_MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

// A dead node leaves the registry (and its presence entries are purged) within about 1.5 s.
const BASE_ARGS = ['--jwt-secret', 'pusher-test-jwt-secret', '--registry-interval', '0.5', '--drain-timeout', '1', '--ip-connect-rate', '1000'];

/** `[[pusher.apps]]` TOML for `app` (client_events, webhook_url, webhook_events optional). */
export function appToml(app) {
  const lines = ['[[pusher.apps]]', `id = "${app.id}"`, `key = "${app.key}"`, `secret = "${app.secret}"`];
  if (app.client_events !== undefined) lines.push(`client_events = ${app.client_events}`);
  if (app.webhook_url) lines.push(`webhook_url = "${app.webhook_url}"`);
  if (app.webhook_events) lines.push(`webhook_events = [${app.webhook_events.map((e) => `"${e}"`).join(', ')}]`);
  return `${lines.join('\n')}\n`;
}

/**
 * Starts redis-server and two nodes.
 * `flagsApp` (default APP1) is given with `--pusher-app-id/--pusher-key/--pusher-secret`; pass
 * `flagsApp: null` and `toml` with `[[pusher.apps]]` to configure every app in TOML instead.
 */
export async function startCluster({ flagsApp = APP1, toml = '', args = [] } = {}) {
  const dir = tempDir();
  const redis = await startRedis(dir);
  const appArgs = flagsApp ? ['--pusher-app-id', flagsApp.id, '--pusher-key', flagsApp.key, '--pusher-secret', flagsApp.secret] : [];
  let nodes;
  try {
    nodes = await Promise.all(
      ['node-a', 'node-b'].map((id) => startNode({ id, redisUrl: redis.url, toml, args: [...BASE_ARGS, ...appArgs, ...args], dir })),
    );
  } catch (e) {
    redis.stop();
    throw e;
  }
  const clients = new Set();
  const closers = [];
  const forwarders = [];
  const cluster = {
    dir,
    redis,
    nodes,
    a: nodes[0],
    b: nodes[1],
    /** The node listening on `port` (a number or string), or undefined. */
    nodeByPort: (port) => nodes.find((n) => n.public.endsWith(`:${port}`)),
    /** The server SDK (npm `pusher`) of `app` talking to `node`'s public listener. */
    sdk(node, app = APP1) {
      const [host, port] = node.public.split(':');
      return new Pusher({ appId: app.id, key: app.key, secret: app.secret, host, port, useTLS: false, encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY });
    },
    /** pusher-js options for `node` (or a forwarder: anything with a `public` host:port). */
    clientOptions(node, extra = {}) {
      const [host, port] = node.public.split(':');
      return { wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ['ws'], cluster: 'ignored', enableStats: false, ...extra };
    },
    /**
     * A pusher-js client of `app` on `node`, with channel authorization and user
     * authentication done by the server SDK (`authorizeChannel`, `authenticateUser`), as a
     * backend would. `user` ({id, info}) is the presence member; `signinUser` the user data.
     */
    client(node, { app = APP1, user, signinUser, authSdk, ...extra } = {}) {
      const backend = authSdk ?? cluster.sdk(nodes[0], app);
      const client = new PusherJs(app.key, cluster.clientOptions(node, {
        channelAuthorization: {
          customHandler: ({ channelName, socketId }, callback) => {
            try {
              const presence = channelName.startsWith('presence-') ? { user_id: user?.id, user_info: user?.info } : undefined;
              callback(null, backend.authorizeChannel(socketId, channelName, presence));
            } catch (e) {
              callback(e, null);
            }
          },
        },
        userAuthentication: {
          customHandler: ({ socketId }, callback) => {
            try {
              callback(null, backend.authenticateUser(socketId, signinUser ?? { id: user?.id ?? 'anonymous' }));
            } catch (e) {
              callback(e, null);
            }
          },
        },
        ...extra,
      }));
      clients.add(client);
      return client;
    },
    /** Closes a client made here (and forgets it). */
    disconnect(client) {
      clients.delete(client);
      client.disconnect();
    },
    /** A forwarder whose listening address goes to the first live node of `targets`. */
    async forwarder(targets = nodes) {
      const fwd = await startForwarder(targets);
      forwarders.push(fwd);
      closers.push(() => fwd.close());
      return fwd;
    },
    /** The node a client made here is connected to (through a forwarder: its current target). */
    nodeOf(client) {
      const port = String(client.config.wsPort);
      const node = nodes.find((n) => n.public.endsWith(`:${port}`));
      if (node) return node;
      return forwarders.find((f) => f.public.endsWith(`:${port}`))?.current;
    },
    /** An auth backend for `app` (see `startAuthBackend`). */
    async authBackend(users, app = APP1) {
      const backend = await startAuthBackend(cluster.sdk(nodes[0], app), users);
      closers.push(() => backend.close());
      return backend;
    },
    /** A webhook receiver (see `startWebhookReceiver`). */
    async webhookReceiver() {
      const receiver = await startWebhookReceiver();
      closers.push(() => receiver.close());
      return receiver;
    },
    async stop() {
      for (const client of clients) client.disconnect();
      for (const close of closers) await close();
      await Promise.all(nodes.map((n) => n.stop()));
      redis.stop();
      removeDir(dir);
    },
  };
  return cluster;
}

/**
 * A TCP forwarder, as a load balancer in front of the nodes: each accepted connection is piped
 * to the first target of the list that is ready (its internal listener's `/readyz` answers 200,
 * as a health check would ask; a draining or dead node is skipped) and accepts a TCP connection.
 * Targets have a `public` and an `internal` "host:port". A client pointed at it reconnects to the
 * surviving node when its node dies or drains. `current` is the target of the last connection.
 */
export async function startForwarder(targets) {
  const sockets = new Set();
  const fwd = { current: undefined, connections: 0 };
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    client.pause();
    const tryTarget = async (i) => {
      if (i >= targets.length) return client.destroy();
      if (!(await isReady(targets[i]))) return tryTarget(i + 1);
      const [host, port] = targets[i].public.split(':');
      const upstream = net.connect(Number(port), host);
      upstream.once('error', () => {
        upstream.destroy();
        if (!upstream.connectedOnce) tryTarget(i + 1);
        else client.destroy();
      });
      upstream.once('connect', () => {
        upstream.connectedOnce = true;
        fwd.current = targets[i];
        fwd.connections += 1;
        sockets.add(upstream);
        upstream.on('close', () => {
          sockets.delete(upstream);
          client.destroy();
        });
        client.on('close', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    tryTarget(0);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  fwd.public = `127.0.0.1:${server.address().port}`;
  fwd.close = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return fwd;
}

/** Whether `node`'s `/readyz` answers 200 within a second. */
async function isReady(node) {
  if (!node.internal) return true;
  try {
    const response = await fetch(`http://${node.internal}/readyz`, { signal: AbortSignal.timeout(1000) });
    return response.status === 200;
  } catch {
    return false;
  }
}

/**
 * An HTTP server that records every POST (its headers with lower-case keys and its raw body,
 * the shape `pusher.webhook(request)` takes) and answers 200.
 */
export async function startWebhookReceiver() {
  const received = [];
  const waiters = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ method: req.method, url: req.url, headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200).end();
      for (const w of waiters) w();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/pusher/webhooks`,
    received,
    /** Resolves with the first request `match(request)` accepts (already received or later). */
    waitFor(what, match, ms = 15000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = received.find(match);
          if (found) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${ms} ms waiting for webhook ${what}; received ${JSON.stringify(received.map((r) => r.rawBody))}`));
        }, ms);
        waiters.add(check);
        check();
      });
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * An application backend as Laravel's broadcasting routes are: `POST /broadcasting/auth`
 * (channel authorization) and `POST /broadcasting/user-auth` (user authentication), form
 * encoded as pusher-js posts them, answered with the server SDK's `authorizeChannel` and
 * `authenticateUser`. The caller is the user its bearer token names in `users`
 * ({token: {id, info}}); no token or an unknown one gets 403. `requests` records each call.
 */
export async function startAuthBackend(sdk, users) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      requests.push({ url: req.url, headers: req.headers, form });
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      const user = users[token];
      if (!user) return res.writeHead(403).end('forbidden');
      let body;
      try {
        if (req.url === '/broadcasting/auth') {
          const presence = form.channel_name.startsWith('presence-') ? { user_id: user.id, user_info: user.info } : undefined;
          body = sdk.authorizeChannel(form.socket_id, form.channel_name, presence);
        } else if (req.url === '/broadcasting/user-auth') {
          body = sdk.authenticateUser(form.socket_id, { id: user.id, user_info: user.info });
        } else {
          return res.writeHead(404).end();
        }
      } catch (e) {
        return res.writeHead(400).end(String(e));
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    authEndpoint: `${base}/broadcasting/auth`,
    userAuthEndpoint: `${base}/broadcasting/user-auth`,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Resolves with the first argument of the first `event` that `target.bind` (a pusher-js client,
 * channel, connection or user facade) emits and `match(...args)` accepts (with `all`, with the
 * array of arguments: a channel's events carry `(data, metadata)`); rejects after `ms`.
 */
export function waitEvent(target, event, { match = () => true, ms = 10000, all = false } = {}) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (!match(...args)) return;
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve(all ? args : args[0]);
    };
    const timer = setTimeout(() => {
      target.unbind(event, handler);
      reject(new Error(`timed out after ${ms} ms waiting for ${event}${target.name ? ` on ${target.name}` : ''}`));
    }, ms);
    target.bind(event, handler);
  });
}

/** Resolves once `client` is connected (its socket id). */
export async function connected(client, ms = 10000) {
  if (client.connection.state !== 'connected') {
    await waitEvent(client.connection, 'state_change', { match: (s) => s.current === 'connected', ms });
  }
  return client.connection.socket_id;
}

/** Subscribes `client` to `name` and resolves with the channel once the server confirmed it. */
export function subscribed(client, name, ms = 10000) {
  const channel = client.subscribe(name);
  if (channel.subscribed) return Promise.resolve(channel);
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', fail);
    };
    const ok = () => {
      done();
      resolve(channel);
    };
    const fail = (status) => {
      done();
      reject(new Error(`subscription to ${name} failed: ${JSON.stringify(status)}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${ms} ms waiting for pusher:subscription_succeeded on ${name}`));
    }, ms);
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', fail);
  });
}

/** Records every event `channel` emits (bind_global), as {event, data}. */
export function record(channel) {
  const events = [];
  channel.bind_global((event, data) => events.push({ event, data }));
  return events;
}

/** Every frame the client receives, decoded by pusher-js, as {event, channel, data}. */
export function recordFrames(client) {
  const frames = [];
  client.connection.bind('message', (m) => frames.push(m));
  return frames;
}

/** A unique channel-name suffix for one test. */
let counter = 0;
export function unique(prefix) {
  counter += 1;
  return `${prefix}${process.pid}-${counter}`;
}
