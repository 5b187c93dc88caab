// The client's reconnect, backoff and recovery logic against a fake WebSocket: no browser,
// no node, a second or two. Run: node --test client.test.js
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Switchboard,
  SwitchboardError,
  backoffDelay,
  shouldReconnect,
} from '../../../switchboard-gateway/static/client.js';
import { FakeServer, until } from './fake-websocket.js';

/** A client on a fake server with tiny, predictable delays. */
function setup(options = {}) {
  const server = new FakeServer();
  const events = [];
  const client = new Switchboard({
    url: ['ws://a/ws', 'ws://b/ws'],
    WebSocket: server.WebSocket,
    backoff: { initial: 4, max: 40 },
    random: () => 0.5,
    timeout: 500,
    ...options,
  });
  for (const name of ['state', 'connected', 'disconnected', 'reconnecting', 'subscribed', 'unrecovered', 'missed', 'error']) {
    client.on(name, (value) => events.push([name, value]));
  }
  return { server, client, events };
}

/** Connects and welcomes; returns the socket. */
async function connected(server, client, index = 0, welcome = {}) {
  if (index === 0) client.connect();
  const ws = await server.socket(index);
  ws.welcome(welcome);
  assert.equal(client.state, 'connected');
  return ws;
}

const message = (offset, epoch = 'e1', channel = 'chat:a') => ({
  type: 'message',
  channel,
  data: { n: offset },
  offset,
  epoch,
});

test('backoff is exponential with full jitter and a cap', () => {
  const b = { initial: 100, max: 1000 };
  assert.equal(backoffDelay(0, b, () => 0), 0);
  assert.equal(backoffDelay(0, b, () => 0.999), 99);
  assert.equal(backoffDelay(3, b, () => 0.999), 799);
  assert.equal(backoffDelay(4, b, () => 0.999), 999, 'capped at max');
  assert.equal(backoffDelay(30, b, () => 0.5), 500);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, b);
    assert.ok(d >= 0 && d < 400, `${d} within [0, 400)`);
  }
});

test('disconnect codes decide whether to reconnect', () => {
  assert.equal(shouldReconnect(1008, { reconnect: true }, true), false, 'policy');
  assert.equal(shouldReconnect(4100, null, true), false, 'disconnected by the API');
  assert.equal(shouldReconnect(1009, null, true), false, 'too large');
  assert.equal(shouldReconnect(4001, { reconnect: true }, true), true, 'token expired, can refresh');
  assert.equal(shouldReconnect(4001, { reconnect: true }, false), false, 'token expired, no refresh');
  assert.equal(shouldReconnect(1001, { reconnect: true }, false), true, 'draining');
  assert.equal(shouldReconnect(4008, { reconnect: true }, false), true, 'slow consumer');
  assert.equal(shouldReconnect(1011, { reconnect: false }, false), false, 'the frame says no');
  assert.equal(shouldReconnect(1006, null, false), true, 'network drop');
});

test('commands get promises matched by id, in any reply order', async () => {
  const { server, client } = setup();
  const ws = await connected(server, client);
  assert.equal(ws.protocol, 'switchboard.v1.json');
  const pub = client.publish('chat:a', { text: 'hi' });
  const hist = client.history('chat:a', { limit: 5 });
  const pres = client.presence('chat:a');
  const bad = client.publish('nope', 1);
  const [p, h, r, x] = [
    await ws.sentFrame({ type: 'publish', channel: 'chat:a' }),
    await ws.sentFrame({ type: 'history' }),
    await ws.sentFrame({ type: 'presence' }),
    await ws.sentFrame({ type: 'publish', channel: 'nope' }),
  ];
  assert.equal(h.limit, 5);
  assert.equal(new Set([p.id, h.id, r.id, x.id]).size, 4, 'distinct ids');
  ws.push({ type: 'presence', id: r.id, channel: 'chat:a', members: [{ conn: 'c', user: 'u', node: 'n' }] });
  ws.push({ type: 'error', id: x.id, code: 'forbidden', message: 'no' });
  ws.push({ type: 'history', id: h.id, channel: 'chat:a', epoch: 'e', offset: 0, messages: [] });
  ws.push({ type: 'published', id: p.id, channel: 'chat:a', offset: 7 });
  assert.equal((await pres).members[0].user, 'u');
  assert.equal((await hist).type, 'history');
  assert.equal((await pub).offset, 7);
  await assert.rejects(bad, (e) => e instanceof SwitchboardError && e.code === 'forbidden');
  client.disconnect();
});

test('commands made while offline wait for the connection; unanswered ones time out', async () => {
  const { server, client } = setup({ timeout: 100 });
  const early = client.publish('chat:a', 1);
  client.connect();
  const ws = await server.socket(0);
  assert.equal(ws.sent.length, 0, 'nothing before the welcome');
  ws.welcome();
  await ws.reply({ type: 'publish' }, { type: 'published', channel: 'chat:a' });
  assert.equal((await early).type, 'published');
  await assert.rejects(client.presence('chat:a'), { code: 'timeout' });
  client.disconnect();
});

test('messages reach their channel handlers in order, once; user messages reach the client', async () => {
  const { server, client } = setup();
  const got = [];
  const all = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  client.subscribe('chat:a', (data) => got.push(-data.n)); // a second handler on the same channel
  client.on('message', (m) => all.push(m));
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 2, recovered: false });
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 1, 'one subscribe per channel');
  ws.push(message(3));
  ws.push(message(3)); // a duplicate
  ws.push(message(4));
  ws.push({ type: 'message', user: 'alice', data: 'direct' });
  ws.push(message(1, 'e1', 'other:x')); // not subscribed: ignored
  assert.deepEqual(got, [3, -3, 4, -4]);
  assert.deepEqual(client.position('chat:a'), { epoch: 'e1', offset: 4 });
  assert.deepEqual(all.map((m) => m.data), [{ n: 3 }, { n: 4 }, 'direct']);
  client.disconnect();
});

test('a gap in offsets resubscribes with recover and fills it, without duplicates', async () => {
  const { server, client } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 0, recovered: false });
  ws.push(message(1));
  ws.push(message(3)); // 2 is missing
  const unsub = await ws.sentFrame({ type: 'unsubscribe', channel: 'chat:a' });
  const resub = ws.sent.filter((f) => f.type === 'subscribe')[1];
  assert.ok(ws.sent.indexOf(unsub) < ws.sent.indexOf(resub), 'unsubscribe first');
  assert.deepEqual(resub.recover, { epoch: 'e1', offset: 1 });
  ws.push(message(4)); // still out of order: waits for the recovery
  ws.push({ type: 'unsubscribed', channel: 'chat:a' });
  ws.push({ type: 'subscribed', id: resub.id, channel: 'chat:a', epoch: 'e1', offset: 4, recovered: true });
  for (const n of [2, 3, 4]) ws.push(message(n));
  ws.push(message(5));
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  client.disconnect();
});

test('after a drop the client reconnects, resubscribes with recover and gets what it missed', async () => {
  const { server, client, events } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  client.subscribe('plain', () => {});
  let ws = await connected(server, client, 0, { node: 'node-a' });
  await ws.reply({ type: 'subscribe', channel: 'chat:a' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 5, recovered: false });
  await ws.reply({ type: 'subscribe', channel: 'plain' }, { type: 'subscribed', channel: 'plain' });
  ws.push(message(6));
  const inFlight = client.publish('chat:a', 'x');
  await ws.sentFrame({ type: 'publish' });
  ws.serverClose(1006); // the node died
  await assert.rejects(inFlight, { code: 'disconnected' });
  assert.equal(client.state, 'connecting');

  // The same URL first; it fails before a welcome, so the next one is tried.
  const retry = await server.socket(1);
  assert.equal(retry.url, 'ws://a/ws');
  retry.serverClose(1006);
  ws = await server.socket(2);
  assert.equal(ws.url, 'ws://b/ws');
  ws.welcome({ node: 'node-b' });
  const resub = await ws.sentFrame({ type: 'subscribe', channel: 'chat:a' });
  assert.deepEqual(resub.recover, { epoch: 'e1', offset: 6 });
  const plain = await ws.sentFrame({ type: 'subscribe', channel: 'plain' });
  assert.equal(plain.recover, undefined, 'no history, nothing to recover');
  ws.push({ type: 'subscribed', id: resub.id, channel: 'chat:a', epoch: 'e1', offset: 8, recovered: true });
  ws.push(message(7));
  ws.push(message(8));
  ws.push(message(9));
  assert.deepEqual(got, [6, 7, 8, 9]);
  const connects = events.filter(([e]) => e === 'connected').map(([, w]) => w.node);
  assert.deepEqual(connects, ['node-a', 'node-b']);
  assert.ok(!events.some(([e]) => e === 'unrecovered'));
  client.disconnect();
});

test('the application hears when recovery was impossible', async () => {
  const { server, client, events } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  let ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 3, recovered: false });
  assert.ok(!events.some(([e]) => e === 'unrecovered'), 'a first subscribe asks for nothing');
  ws.serverClose(1011, { reconnect: true });
  ws = await server.socket(1);
  ws.welcome();
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e2', offset: 10, recovered: false });
  const [, lost] = events.find(([e]) => e === 'unrecovered');
  assert.deepEqual(lost, { channel: 'chat:a', from: { epoch: 'e1', offset: 3 }, epoch: 'e2', offset: 10 });
  ws.push(message(11, 'e2'));
  assert.deepEqual(got, [11], 'live again from the new position');
  client.disconnect();
});

test('a new epoch in the live stream is a gap too', async () => {
  const { server, client, events } = setup();
  client.subscribe('chat:a', () => {});
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 3, recovered: false });
  ws.push(message(1, 'e9')); // the history was lost and restarted
  const again = await until(() => ws.sent.filter((f) => f.type === 'subscribe')[1], 'a resubscribe');
  assert.deepEqual(again.recover, { epoch: 'e1', offset: 3 });
  ws.push({ type: 'subscribed', id: again.id, channel: 'chat:a', epoch: 'e9', offset: 1, recovered: false });
  assert.ok(events.some(([e]) => e === 'unrecovered'));
  client.disconnect();
});

test('a channel subscribed before it had history takes its first epoch without a resync', async () => {
  const { server, client } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: '', offset: 0, recovered: false });
  ws.push(message(1, 'e7'));
  ws.push(message(2, 'e7'));
  assert.deepEqual(got, [1, 2]);
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 1, 'no resubscribe');
  assert.deepEqual(client.position('chat:a'), { epoch: 'e7', offset: 2 });
  client.disconnect();
});

test('a channel subscribed before it had history recovers from its start after a gap', async () => {
  const { server, client } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: '', offset: 0, recovered: false });
  ws.push(message(2, 'e7')); // 1 is missing
  const resub = await until(() => ws.sent.filter((f) => f.type === 'subscribe')[1], 'a resubscribe');
  assert.deepEqual(resub.recover, { epoch: '', offset: 0 });
  ws.push({ type: 'subscribed', id: resub.id, channel: 'chat:a', epoch: 'e7', offset: 2, recovered: true });
  ws.push(message(1, 'e7'));
  ws.push(message(2, 'e7'));
  assert.deepEqual(got, [1, 2]);
  client.disconnect();
});

test('a missed push reaches the application, and a lost history is followed from its new start', async () => {
  const { server, client, events } = setup();
  const got = [];
  client.subscribe('chat:a', (data) => got.push(data.n));
  client.subscribe('plain', () => {});
  const ws = await connected(server, client);
  await ws.reply({ type: 'subscribe', channel: 'chat:a' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 3, recovered: false });
  await ws.reply({ type: 'subscribe', channel: 'plain' }, { type: 'subscribed', channel: 'plain' });
  ws.push({ type: 'missed', channel: 'plain', reason: 'backplane' });
  ws.push({ type: 'missed', channel: 'chat:a', reason: 'history' });
  ws.push({ type: 'missed', user: 'alice', reason: 'backplane' });
  ws.push({ type: 'missed', channel: 'not-mine', reason: 'backplane' }); // not subscribed: ignored
  ws.push(message(1, 'e2')); // the new epoch's first message: no resync, the gap is known
  assert.deepEqual(got, [1]);
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 2, 'no resubscribe');
  const missed = events.filter(([e]) => e === 'missed').map(([, m]) => m.channel ?? m.user);
  assert.deepEqual(missed, ['plain', 'chat:a', 'alice']);
  client.disconnect();
});

test('4001: the token is refreshed and the client comes back at once', async () => {
  let n = 0;
  const { server, client, events } = setup({ getToken: async () => `tok${++n}` });
  let ws = await connected(server, client);
  assert.equal(ws.url, 'ws://a/ws?token=tok1');
  ws.serverClose(4001, { reason: 'token expired', reconnect: true });
  ws = await server.socket(1);
  assert.equal(ws.url, 'ws://a/ws?token=tok2', 'same node, fresh token');
  const reconnecting = events.find(([e]) => e === 'reconnecting')[1];
  assert.equal(reconnecting.delay, 0);
  ws.welcome();
  assert.equal(client.state, 'connected');
  client.disconnect();
});

test('a static token is used first; without getToken a 4001 ends the client', async () => {
  const { server, client, events } = setup({ token: 'a b' });
  const ws = await connected(server, client);
  assert.equal(ws.url, 'ws://a/ws?token=a%20b');
  const queued = [];
  ws.serverClose(4001, { reconnect: true });
  assert.equal(client.state, 'disconnected');
  queued.push(client.publish('x', 1));
  // A reconnect is only ever scheduled together with a `reconnecting` event.
  assert.ok(!events.some(([e]) => e === 'reconnecting'), 'no reconnect scheduled');
  assert.equal(server.sockets.length, 1, 'no reconnect');
  const last = events.filter(([e]) => e === 'disconnected').pop()[1];
  assert.equal(last.reconnect, false);
  // A later connect() works again; the queued publish goes out then.
  client.connect();
  (await server.socket(1)).welcome();
  await server.last.reply({ type: 'publish' }, { type: 'published', channel: 'x' });
  await queued[0];
  client.disconnect();
});

for (const code of [1008, 4100]) {
  test(`${code}: no reconnect, and commands in flight fail`, async () => {
    const { server, client, events } = setup({ getToken: () => 't' });
    const ws = await connected(server, client);
    const pending = client.publish('x', 1);
    ws.serverClose(code, { reconnect: code !== 4100 }); // the code wins over the flag
    await assert.rejects(pending, { code: 'disconnected' });
    assert.ok(!events.some(([e]) => e === 'reconnecting'), 'no reconnect scheduled');
    assert.equal(server.sockets.length, 1);
    assert.equal(client.state, 'disconnected');
    assert.deepEqual(events.filter(([e]) => e === 'disconnected').pop()[1].reconnect, false);
  });
}

test('1001 (draining) moves to the next node', async () => {
  const { server, client } = setup();
  const ws = await connected(server, client);
  ws.serverClose(1001, { reason: 'node shutting down', reconnect: true });
  const next = await server.socket(1);
  assert.equal(next.url, 'ws://b/ws');
  next.welcome();
  client.disconnect();
});

test('4029 waits at least rateLimitDelay; failures back off exponentially and rotate URLs', async () => {
  const { server, client, events } = setup({ rateLimitDelay: 30, random: () => 0.999 });
  const ws = await connected(server, client);
  ws.serverClose(4029, { reconnect: true });
  const first = events.find(([e]) => e === 'reconnecting')[1];
  assert.ok(first.delay >= 30, `4029 delay ${first.delay}`);
  for (let i = 1; i <= 4; i++) (await server.socket(i)).serverClose(1006);
  await server.socket(5);
  const delays = events.filter(([e]) => e === 'reconnecting').map(([, r]) => r.delay);
  assert.deepEqual(delays, [30, 7, 15, 31, 39], 'doubling from initial 4, capped at 40');
  const urls = server.sockets.map((s) => s.url.slice(5, 6));
  assert.deepEqual(urls, ['a', 'a', 'b', 'a', 'b', 'a']);
  client.disconnect();
  assert.equal(client.state, 'disconnected');
});

test('a silent server is pinged after one heartbeat and dropped after two', async () => {
  const { server, client, events } = setup();
  const ws = await connected(server, client, 0, { heartbeat: 0.06 });
  await ws.sentFrame({ type: 'ping' }, 500);
  ws.push({ type: 'pong' }); // alive: no drop
  // The pong reset the silence clock: the client pings again rather than dropping.
  await until(() => ws.sent.filter((f) => f.type === 'ping').length >= 2, 'a second ping', 500);
  assert.equal(server.sockets.length, 1);
  assert.equal(ws.closedByClient, null);
  // Now silence: the client gives up on this socket and reconnects elsewhere.
  const next = await server.socket(1);
  assert.equal(ws.closedByClient.code, 4000);
  assert.equal(next.url, 'ws://b/ws');
  const dropped = events.find(([e]) => e === 'disconnected')[1];
  assert.equal(dropped.reason, 'heartbeat timeout');
  client.disconnect();
});

test('a refused resubscribe is reported; unsubscribe stops delivery', async () => {
  const { server, client, events } = setup();
  const got = [];
  const first = client.subscribe('chat:a', (d) => got.push(d.n));
  let ws = await connected(server, client);
  await ws.reply({ type: 'subscribe' }, { type: 'subscribed', channel: 'chat:a', epoch: 'e1', offset: 0, recovered: false });
  await first;
  ws.serverClose(1006);
  ws = await server.socket(1);
  ws.welcome();
  await ws.reply({ type: 'subscribe' }, { type: 'error', code: 'forbidden', message: 'not any more' });
  assert.equal(events.find(([e]) => e === 'error')[1].code, 'forbidden');
  assert.equal(client.position('chat:a'), null, 'the subscription is gone');

  const again = client.subscribe('chat:b', (d) => got.push(d.n));
  await ws.reply({ type: 'subscribe', channel: 'chat:b' }, { type: 'subscribed', channel: 'chat:b' });
  await again;
  const unsub = client.unsubscribe('chat:b');
  await ws.reply({ type: 'unsubscribe' }, { type: 'unsubscribed', channel: 'chat:b' });
  await unsub;
  ws.push({ type: 'message', channel: 'chat:b', data: { n: 1 } });
  assert.deepEqual(got, []);
  client.disconnect();
});
