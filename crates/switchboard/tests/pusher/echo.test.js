// Laravel Echo 2 (unmodified) with pusher-js 8 against a two-node cluster, authorized by a
// backend that answers Laravel's /broadcasting/auth with the server SDK, as a Laravel app does.
// Events are triggered with the server SDK through the other node, named as Laravel names them
// (`App\Events\OrderShipped`, or a `broadcastAs` name). Run: node --test echo.test.js
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import Echo from 'laravel-echo';
import PusherJs from 'pusher-js';

import { APP1, connected, startCluster, unique, waitEvent } from './cluster.js';

const USERS = {
  'token-ann': { id: '1', info: { id: 1, name: 'Ann' } },
  'token-bob': { id: '2', info: { id: 2, name: 'Bob' } },
};

let cluster, backend;
const echos = [];

before(async () => {
  cluster = await startCluster();
  backend = await cluster.authBackend(USERS);
});

after(async () => {
  for (const echo of echos) echo.disconnect();
  await cluster?.stop();
});

/** An Echo on `node`, authorized through the backend as the user of `token` (or `extra`'s options). */
async function echoOn(node, token, extra = {}) {
  const [wsHost, wsPort] = node.public.split(':');
  const echo = new Echo({
    broadcaster: 'pusher',
    Pusher: PusherJs,
    key: APP1.key,
    cluster: 'mt1',
    wsHost,
    wsPort: Number(wsPort),
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    authEndpoint: backend.authEndpoint,
    bearerToken: token,
    ...extra,
  });
  echos.push(echo);
  await connected(echo.connector.pusher);
  return echo;
}

/** Resolves once Echo's channel reports the subscription (or rejects on its error). */
function whenSubscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribed(resolve);
    channel.error((e) => reject(new Error(`subscription error: ${JSON.stringify(e)}`)));
  });
}

test('channel().listen(): the App\\Events namespace and a leading-dot custom name', async () => {
  const echo = await echoOn(cluster.a, 'token-ann');
  const name = unique('orders-');
  const shipped = new Promise((resolve) => echo.channel(name).listen('OrderShipped', resolve));
  const custom = new Promise((resolve) => echo.channel(name).listen('.order.cancelled', resolve));
  await whenSubscribed(echo.channel(name));
  const sdk = cluster.sdk(cluster.b);
  // Echo listens for `App\Events\OrderShipped`: Laravel broadcasts under the class name.
  await sdk.trigger(name, 'App\\Events\\OrderShipped', { order: { id: 42 } });
  await sdk.trigger(name, 'order.cancelled', { order: { id: 43 } });
  assert.deepEqual(await shipped, { order: { id: 42 } });
  assert.deepEqual(await custom, { order: { id: 43 } });
});

test('private().listen(): authorized through authEndpoint with the bearer token', async () => {
  const echo = await echoOn(cluster.a, 'token-ann');
  const room = unique('invoices-');
  const channel = echo.private(room);
  const paid = new Promise((resolve) => channel.listen('InvoicePaid', resolve));
  await whenSubscribed(channel);
  const request = backend.requests.find((r) => r.form.channel_name === `private-${room}`);
  assert.equal(request.headers.authorization, 'Bearer token-ann');
  assert.equal(request.form.socket_id, echo.socketId());
  await cluster.sdk(cluster.b).trigger(`private-${room}`, 'App\\Events\\InvoicePaid', { amount: 10 });
  assert.deepEqual(await paid, { amount: 10 });
});

test('encryptedPrivate().listen() and notification() on a private channel', async () => {
  const echo = await echoOn(cluster.b, 'token-bob');
  const vault = unique('vault-');
  const encrypted = echo.encryptedPrivate(vault);
  const secret = new Promise((resolve) => encrypted.listen('SecretShared', resolve));
  const user = echo.private(unique('App.Models.User.2-'));
  const notified = new Promise((resolve) => user.notification(resolve));
  await Promise.all([whenSubscribed(encrypted), whenSubscribed(user)]);
  const sdk = cluster.sdk(cluster.a);
  await sdk.trigger(`private-encrypted-${vault}`, 'App\\Events\\SecretShared', { code: 'swordfish' });
  assert.deepEqual(await secret, { code: 'swordfish' });
  // Laravel broadcasts notifications under this class name, with the notification's data.
  await sdk.trigger(user.name, 'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated', { id: 'n1', type: 'App\\Notifications\\InvoicePaid' });
  const notification = await notified;
  assert.equal(notification.id, 'n1');
});

test('a custom authorizer (the Laravel docs idiom) with the server SDK\'s authorizeChannel', async () => {
  const sdk = cluster.sdk(cluster.a);
  const calls = [];
  const authorizer = (channel) => ({
    authorize: (socketId, callback) => {
      calls.push(channel.name);
      callback(null, sdk.authorizeChannel(socketId, channel.name, { user_id: '9', user_info: { name: 'Nine' } }));
    },
  });
  const echo = await echoOn(cluster.b, undefined, { authorizer, authEndpoint: undefined });
  const room = unique('desk-');
  const channel = echo.join(room);
  const here = await new Promise((resolve) => channel.here(resolve));
  assert.equal(here.length, 1);
  assert.deepEqual(calls, [`presence-${room}`]);
  const got = new Promise((resolve) => channel.listen('.desk.updated', resolve));
  await cluster.sdk(cluster.a).trigger(`presence-${room}`, 'desk.updated', { desk: 4 });
  assert.deepEqual(await got, { desk: 4 });
});

test('private() with a token the backend refuses: subscription error, no subscription', async () => {
  const echo = await echoOn(cluster.b, 'token-nobody');
  const channel = echo.private(unique('invoices-'));
  const status = await new Promise((resolve) => channel.error(resolve));
  assert.equal(status.type, 'AuthError');
  assert.equal(status.status, 403);
});

test('join(): here, joining and leaving across the two nodes', async () => {
  const room = unique('chat-');
  const ann = await echoOn(cluster.a, 'token-ann');
  const annHere = new Promise((resolve) => ann.join(room).here(resolve));
  assert.deepEqual(await annHere, [USERS['token-ann'].info]);
  const joined = new Promise((resolve) => ann.join(room).joining(resolve));
  const left = new Promise((resolve) => ann.join(room).leaving(resolve));

  const bob = await echoOn(cluster.b, 'token-bob');
  const bobHere = await new Promise((resolve) => bob.join(room).here(resolve));
  assert.deepEqual(
    bobHere.map((u) => u.name).sort(),
    ['Ann', 'Bob'],
  );
  assert.deepEqual(await joined, USERS['token-bob'].info);
  bob.leave(room);
  assert.deepEqual(await left, USERS['token-bob'].info);
});

test('whisper() and listenForWhisper(): client events between two Echos on two nodes', async () => {
  const room = unique('typing-');
  const ann = await echoOn(cluster.a, 'token-ann');
  const bob = await echoOn(cluster.b, 'token-bob');
  const annChannel = ann.private(room);
  const bobChannel = bob.private(room);
  await Promise.all([whenSubscribed(annChannel), whenSubscribed(bobChannel)]);
  const heard = new Promise((resolve) => bobChannel.listenForWhisper('typing', resolve));
  annChannel.whisper('typing', { name: 'Ann', typing: true });
  assert.deepEqual(await heard, { name: 'Ann', typing: true });

  // On presence channels too (Echo's join().whisper()).
  const presence = unique('presence-room-');
  const annJoin = ann.join(presence);
  const bobJoin = bob.join(presence);
  await Promise.all([new Promise((r) => annJoin.here(r)), new Promise((r) => bobJoin.here(r))]);
  const heardJoin = new Promise((resolve) => annJoin.listenForWhisper('wave', resolve));
  bobJoin.whisper('wave', { from: 'Bob' });
  assert.deepEqual(await heardJoin, { from: 'Bob' });
});

test('listenToAll() strips the namespace Echo adds', async () => {
  const echo = await echoOn(cluster.b, 'token-bob');
  const name = unique('all-');
  const seen = [];
  const channel = echo.channel(name);
  channel.listenToAll((event, data) => seen.push({ event, data }));
  await whenSubscribed(channel);
  const got = waitEvent(echo.connector.pusher.channel(name), 'App\\Events\\Pinged');
  await cluster.sdk(cluster.a).trigger(name, 'App\\Events\\Pinged', { n: 1 });
  await got;
  assert.deepEqual(seen, [{ event: 'Pinged', data: { n: 1 } }]);
});
