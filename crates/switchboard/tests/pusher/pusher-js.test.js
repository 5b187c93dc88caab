// pusher-js 8 (its Node build, unmodified) against a two-node cluster: events are triggered by
// the server SDK (npm `pusher`) through the other node's HTTP API, so every delivery crosses the
// Redis backplane. Run: node --test pusher-js.test.js (needs the release binary, see README.md).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import Pusher from 'pusher';
import PusherJs from 'pusher-js';

import { APP1, connected, eventually, record, recordFrames, startCluster, subscribed, unique, waitEvent } from './cluster.js';

let cluster;

before(async () => {
  cluster = await startCluster();
});

after(async () => {
  await cluster?.stop();
});

/** Triggers `marker` on `channel` through node b and waits until `channel` (a client's) has it. */
async function marker(channel) {
  const id = unique('m');
  const got = waitEvent(channel, 'marker', { match: (d) => d?.id === id });
  await cluster.sdk(cluster.b).trigger(channel.name, 'marker', { id });
  await got;
}

test('connects with protocol 7: a socket id and an activity timeout', async () => {
  const client = cluster.client(cluster.a);
  const socketId = await connected(client);
  assert.match(socketId, /^\d+\.\d+$/);
  // pusher-js refuses a connection_established without activity_timeout ("No activity timeout
  // specified in handshake") and takes the smaller of the server's and its own (120 s).
  const timeout = client.connection.activityTimeout;
  assert.ok(timeout > 0 && timeout <= 120000, `activity timeout ${timeout} ms`);
  cluster.disconnect(client);
});

test('keeps alive: pusher:ping from pusher-js is answered with pusher:pong', async () => {
  // pusher-js pings after activityTimeout of silence (the smaller of its option and the
  // server's activity_timeout) and drops the connection if no pong comes within pongTimeout.
  const client = cluster.client(cluster.a, { activityTimeout: 500, pongTimeout: 3000 });
  const socketId = await connected(client);
  await waitEvent(client.connection, 'message', { match: (m) => m.event === 'pusher:pong', ms: 8000 });
  await waitEvent(client.connection, 'message', { match: (m) => m.event === 'pusher:pong', ms: 8000 });
  assert.equal(client.connection.state, 'connected');
  assert.equal(client.connection.socket_id, socketId, 'the same connection throughout');
  cluster.disconnect(client);
});

test('an unknown app key is refused with 4001 and pusher-js stops retrying', async () => {
  const client = new PusherJs('no-such-key', cluster.clientOptions(cluster.a));
  const errors = [];
  client.connection.bind('error', (e) => errors.push(e));
  try {
    await waitEvent(client.connection, 'state_change', { match: (s) => s.current === 'disconnected' || s.current === 'failed' });
    assert.match(JSON.stringify(errors), /4001/, `errors: ${JSON.stringify(errors)}`);
  } finally {
    client.disconnect();
  }
});

test('public channel: an event triggered through the other node reaches the subscriber', async () => {
  const client = cluster.client(cluster.a);
  const channel = await subscribed(client, unique('orders-'));
  const objectEvent = waitEvent(channel, 'order-shipped');
  await cluster.sdk(cluster.b).trigger(channel.name, 'order-shipped', { id: 7, note: 'é "quoted" \\ slash' });
  assert.deepEqual(await objectEvent, { id: 7, note: 'é "quoted" \\ slash' });
  // A string payload arrives as that string (the server encodes the data field once).
  const stringEvent = waitEvent(channel, 'text');
  await cluster.sdk(cluster.b).trigger(channel.name, 'text', 'plain text, not JSON');
  assert.equal(await stringEvent, 'plain text, not JSON');
  cluster.disconnect(client);
});

test('one trigger to several channels reaches each of them', async () => {
  const client = cluster.client(cluster.a);
  const names = [unique('multi-'), unique('multi-'), unique('multi-')];
  const channels = await Promise.all(names.map((n) => subscribed(client, n)));
  const got = channels.map((c) => waitEvent(c, 'fanned'));
  await cluster.sdk(cluster.b).trigger(names, 'fanned', { n: 3 });
  for (const data of await Promise.all(got)) assert.deepEqual(data, { n: 3 });
  cluster.disconnect(client);
});

test('private channel: authorized by the server SDK, and a bad signature is refused', async () => {
  const good = cluster.client(cluster.a);
  const channel = await subscribed(good, unique('private-invoices-'));
  const got = waitEvent(channel, 'paid');
  await cluster.sdk(cluster.b).trigger(channel.name, 'paid', { total: 12.5 });
  assert.deepEqual(await got, { total: 12.5 });

  // Signed with the wrong secret: never subscribed. pusher-js surfaces either server answer:
  // a `pusher:subscription_error` frame on the channel (emitted on the channel as it is) or a
  // `pusher:error` frame (emitted on the connection as a PusherError).
  const forger = new Pusher({ appId: APP1.id, key: APP1.key, secret: 'not-the-secret', host: '127.0.0.1', port: 1 });
  const bad = cluster.client(cluster.b, { authSdk: forger });
  await connected(bad);
  const badChannel = bad.subscribe(unique('private-invoices-'));
  const succeeded = [];
  badChannel.bind('pusher:subscription_succeeded', () => succeeded.push(true));
  const refusal = await Promise.race([
    waitEvent(badChannel, 'pusher:subscription_error').then((data) => ({ on: 'channel', data })),
    waitEvent(bad.connection, 'error', { match: (e) => e?.type === 'PusherError' }).then((e) => ({ on: 'connection', data: e.data })),
  ]);
  assert.ok(refusal.data, `refusal: ${JSON.stringify(refusal)}`);
  assert.equal(badChannel.subscribed, false);
  assert.deepEqual(succeeded, []);
  assert.equal(bad.connection.state, 'connected', 'a refused subscription does not close the connection');
  cluster.disconnect(good);
  cluster.disconnect(bad);
});

test('presence channel: members list, member_added/removed once per user across nodes', async () => {
  const name = unique('presence-room-');
  const ann = { id: 'u-ann', info: { name: 'Ann' } };
  const bob = { id: 'u-bob', info: { name: 'Bob' } };

  const observer = cluster.client(cluster.b, { user: bob });
  // Raw frames: pusher-js hides a member_removed for a user it does not know, so duplicates
  // are counted on the wire.
  const frames = recordFrames(observer);
  const memberFrames = (event) => frames.filter((f) => f.event === event && f.channel === name);
  const obsChannel = await subscribed(observer, name);
  assert.equal(obsChannel.members.count, 1);
  assert.equal(obsChannel.members.me.id, bob.id);
  const added = [];
  const removed = [];
  obsChannel.bind('pusher:member_added', (m) => added.push(m));
  obsChannel.bind('pusher:member_removed', (m) => removed.push(m));

  // Ann's first connection, on the other node: Bob sees her join, she sees both.
  const annJoined = waitEvent(obsChannel, 'pusher:member_added');
  const ann1 = cluster.client(cluster.a, { user: ann });
  const ann1Channel = await subscribed(ann1, name);
  const member = await annJoined;
  assert.equal(member.id, ann.id);
  assert.deepEqual(member.info, ann.info);
  assert.equal(ann1Channel.members.count, 2);
  assert.deepEqual(Object.keys(ann1Channel.members.members).sort(), [ann.id, bob.id]);

  // Ann's second connection: no second member_added; members count users, not connections.
  const ann2 = cluster.client(cluster.b, { user: ann });
  const ann2Channel = await subscribed(ann2, name);
  assert.equal(ann2Channel.members.count, 2);
  await marker(obsChannel);
  assert.equal(added.length, 1, `member_added events: ${JSON.stringify(added)}`);
  assert.equal(memberFrames('pusher_internal:member_added').length, 1);

  const users = await (await cluster.sdk(cluster.a).get({ path: `/channels/${name}/users` })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), [ann.id, bob.id]);

  // Ann leaves with one connection: still a member. With the last: member_removed, once.
  ann1.unsubscribe(name);
  // The unsubscribe has no reply: wait until the cluster counts two connections, then check.
  const sdk = cluster.sdk(cluster.a);
  await eventually('ann1 unsubscribed', async () => {
    const info = await (await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } })).json();
    return info.subscription_count === 2;
  });
  await marker(obsChannel);
  assert.deepEqual(memberFrames('pusher_internal:member_removed'), [], 'Ann still has a connection in the channel');
  const annLeft = waitEvent(obsChannel, 'pusher:member_removed');
  cluster.disconnect(ann2);
  const gone = await annLeft;
  assert.equal(gone.id, ann.id);
  await marker(obsChannel);
  assert.equal(removed.length, 1, `member_removed events: ${JSON.stringify(removed)}`);
  assert.equal(memberFrames('pusher_internal:member_removed').length, 1);
  assert.deepEqual(JSON.parse(JSON.stringify(memberFrames('pusher_internal:member_removed')[0].data)), { user_id: ann.id });
  assert.equal(added.length, 1);
  assert.equal(obsChannel.members.count, 1);

  const remaining = await (await cluster.sdk(cluster.a).get({ path: `/channels/${name}/users` })).json();
  assert.deepEqual(remaining.users, [{ id: bob.id }]);
  cluster.disconnect(ann1);
  cluster.disconnect(observer);
});

test('presence channel: the members list of subscription_succeeded carries each user_info', async () => {
  const name = unique('presence-infos-');
  const ann = { id: 'u-ann', info: { name: 'Ann', tags: ['a', 'b'] } };
  const bob = { id: 'u-bob', info: { name: 'Bob' } };
  const bobClient = cluster.client(cluster.b, { user: bob });
  const bobChannel = await subscribed(bobClient, name);
  assert.deepEqual(bobChannel.members.me, { id: bob.id, info: bob.info });
  const annClient = cluster.client(cluster.a, { user: ann });
  const annChannel = await subscribed(annClient, name);
  assert.deepEqual(annChannel.members.get(bob.id).info, bob.info, 'a member on the other node');
  assert.deepEqual(annChannel.members.get(ann.id).info, ann.info, 'oneself');
  cluster.disconnect(annClient);
  cluster.disconnect(bobClient);
});

test('private-encrypted channel: the SDK encrypts, the server relays, pusher-js decrypts', async () => {
  const client = cluster.client(cluster.a);
  const frames = recordFrames(client);
  const channel = await subscribed(client, unique('private-encrypted-vault-'));
  const got = waitEvent(channel, 'secret');
  await cluster.sdk(cluster.b).trigger(channel.name, 'secret', { code: 'swordfish', n: 1 });
  assert.deepEqual(await got, { code: 'swordfish', n: 1 });
  const raw = frames.find((f) => f.event === 'secret');
  assert.equal(typeof raw.data.ciphertext, 'string', 'the frame carries the ciphertext');
  assert.equal(typeof raw.data.nonce, 'string');
  assert.ok(!JSON.stringify(raw).includes('swordfish'), 'the server never sees the plaintext');
  cluster.disconnect(client);
});

test('client events: delivered to the other members, not echoed, user_id on presence', async () => {
  const name = unique('private-chat-');
  const alice = cluster.client(cluster.a);
  const bob = cluster.client(cluster.b);
  const [aliceChannel, bobChannel] = await Promise.all([subscribed(alice, name), subscribed(bob, name)]);
  const echoed = record(aliceChannel);
  const got = waitEvent(bobChannel, 'client-typing');
  aliceChannel.trigger('client-typing', { who: 'alice', text: 'hi "there"' });
  assert.deepEqual(await got, { who: 'alice', text: 'hi "there"' });
  await marker(aliceChannel);
  assert.deepEqual(echoed.filter((e) => e.event === 'client-typing'), [], 'the sender does not get its own client event');

  const room = unique('presence-chat-');
  const ann = cluster.client(cluster.a, { user: { id: 'u-ann', info: {} } });
  const ben = cluster.client(cluster.b, { user: { id: 'u-ben', info: {} } });
  const [annChannel, benChannel] = await Promise.all([subscribed(ann, room), subscribed(ben, room)]);
  const withUser = waitEvent(benChannel, 'client-wave', { all: true });
  annChannel.trigger('client-wave', { hand: 'left' });
  const [data, metadata] = await withUser;
  assert.deepEqual(data, { hand: 'left' });
  assert.equal(metadata?.user_id, 'u-ann', 'client events on presence channels carry the sender user_id');
  for (const c of [alice, bob, ann, ben]) cluster.disconnect(c);
});

test('client events on a public channel are refused with pusher:error', async () => {
  const name = unique('public-chat-');
  const alice = cluster.client(cluster.a);
  const bob = cluster.client(cluster.b);
  const [aliceChannel, bobChannel] = await Promise.all([subscribed(alice, name), subscribed(bob, name)]);
  const seen = record(bobChannel);
  const refused = waitEvent(alice.connection, 'error', { match: (e) => e?.type === 'PusherError' });
  aliceChannel.trigger('client-shout', { loud: true });
  const error = await refused;
  assert.equal(typeof error.data.message, 'string');
  await marker(bobChannel);
  assert.deepEqual(seen.filter((e) => e.event === 'client-shout'), []);
  assert.equal(alice.connection.state, 'connected');
  cluster.disconnect(alice);
  cluster.disconnect(bob);
});

test('socket_id on trigger excludes that connection only', async () => {
  const name = unique('feed-');
  const alice = cluster.client(cluster.a);
  const bob = cluster.client(cluster.b);
  const [aliceChannel, bobChannel] = await Promise.all([subscribed(alice, name), subscribed(bob, name)]);
  const aliceSaw = record(aliceChannel);
  const bobGot = waitEvent(bobChannel, 'update');
  await cluster.sdk(cluster.b).trigger(name, 'update', { v: 1 }, { socket_id: alice.connection.socket_id });
  assert.deepEqual(await bobGot, { v: 1 });
  await marker(aliceChannel);
  assert.deepEqual(aliceSaw.filter((e) => e.event === 'update'), [], 'the excluded socket got the event');
  cluster.disconnect(alice);
  cluster.disconnect(bob);
});

test('cache channel: the last event is replayed on subscribe, pusher:cache_miss when none', async () => {
  const name = unique('cache-prices-');
  await cluster.sdk(cluster.b).trigger(name, 'price', { eur: 1 });
  await cluster.sdk(cluster.b).trigger(name, 'price', { eur: 2 });
  const client = cluster.client(cluster.a);
  const channel = client.subscribe(name);
  const replayed = waitEvent(channel, 'price');
  await waitEvent(channel, 'pusher:subscription_succeeded');
  assert.deepEqual(await replayed, { eur: 2 });

  const empty = client.subscribe(unique('cache-empty-'));
  const miss = waitEvent(empty, 'pusher:cache_miss');
  await waitEvent(empty, 'pusher:subscription_succeeded');
  await miss;
  cluster.disconnect(client);
});

test('user sign-in: pusher.signin() with authenticateUser', async () => {
  const client = cluster.client(cluster.a, { signinUser: { id: 'signed-1', user_info: { name: 'Sig' } } });
  const frames = recordFrames(client);
  await connected(client);
  client.signin();
  await waitEvent(client.connection, 'message', { match: (m) => m.event === 'pusher:signin_success' });
  await client.user.signinDonePromise;
  assert.equal(client.user.user_data?.id, 'signed-1');
  const success = frames.find((f) => f.event === 'pusher:signin_success');
  assert.equal(typeof success.data.user_data, 'string', 'signin_success carries user_data as a JSON string');

  cluster.disconnect(client);
});

test('sendToUser reaches a signed-in pusher-js user on #server-to-user-<id>', async () => {
  const client = cluster.client(cluster.a, { signinUser: { id: 'signed-2' } });
  await connected(client);
  // After signin_success pusher-js subscribes to `#server-to-user-<id>` (auth "").
  const userChannel = waitEvent(client.connection, 'message', {
    match: (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === '#server-to-user-signed-2',
  });
  client.signin();
  await userChannel;
  const note = waitEvent(client.user, 'note');
  await cluster.sdk(cluster.b).sendToUser('signed-2', 'note', { hello: 'user' });
  assert.deepEqual(await note, { hello: 'user' });
  cluster.disconnect(client);
});

test('terminate_connections closes every connection of the user on every node, no others', async () => {
  const victimA = cluster.client(cluster.a, { signinUser: { id: 'doomed' } });
  const victimB = cluster.client(cluster.b, { signinUser: { id: 'doomed' } });
  const bystander = cluster.client(cluster.a, { signinUser: { id: 'spared' } });
  for (const c of [victimA, victimB, bystander]) {
    await connected(c);
    const ok = waitEvent(c.connection, 'message', { match: (m) => m.event === 'pusher:signin_success' });
    c.signin();
    await ok;
  }
  const bystanderChannel = await subscribed(bystander, unique('after-terminate-'));
  const closed = [victimA, victimB].map((c) =>
    waitEvent(c.connection, 'state_change', { match: (s) => s.current === 'disconnected' || s.current === 'unavailable' }),
  );
  const errors = [];
  victimA.connection.bind('error', (e) => errors.push(e));
  await cluster.sdk(cluster.b).terminateUserConnections('doomed');
  await Promise.all(closed);
  assert.match(JSON.stringify(errors), /4009/, `victim's errors: ${JSON.stringify(errors)}`);
  assert.equal(victimA.connection.state, 'disconnected', 'code 4009 (4000-4099) tells pusher-js not to reconnect');
  await marker(bystanderChannel);
  assert.equal(bystander.connection.state, 'connected');
  for (const c of [victimA, victimB, bystander]) cluster.disconnect(c);
});

test('drain (SIGTERM): pusher-js is closed with 4200 and reconnects at once through the other node', { timeout: 60000 }, async () => {
  const local = await startCluster();
  try {
    const name = unique('drained-');
    const fwd = await local.forwarder([local.a, local.b]);
    const client = local.client(fwd);
    const channel = await subscribed(client, name);
    assert.equal(local.nodeOf(client), local.a);
    const errors = [];
    client.connection.bind('error', (e) => errors.push(e));
    const states = [];
    client.connection.bind('state_change', (s) => states.push(s.current));
    const back = waitEvent(client.connection, 'state_change', { match: (s) => s.previous !== 'connected' && s.current === 'connected', ms: 20000 });
    const resubscribed = waitEvent(channel, 'pusher:subscription_succeeded', { ms: 20000 });
    const stopped = local.a.stop();
    await back;
    await resubscribed;
    await stopped;
    assert.match(JSON.stringify(errors), /4200/, `errors: ${JSON.stringify(errors)}`);
    assert.ok(!states.includes('unavailable') && !states.includes('disconnected'), `states: ${states}`);
    assert.equal(local.nodeOf(client), local.b);
    const got = waitEvent(channel, 'after-drain');
    await local.sdk(local.b).trigger(name, 'after-drain', { ok: 1 });
    assert.deepEqual(await got, { ok: 1 });
  } finally {
    await local.stop();
  }
});

// Last: these kill node a. The first leaves a member on it whose departure the second checks.
let departure;
const leftBehind = [];

test('after its node is SIGKILLed, pusher-js reconnects to the surviving node and resubscribes', { timeout: 60000 }, async () => {
  const name = unique('presence-failover-');
  const fwd = await cluster.forwarder([cluster.a, cluster.b]);
  const mover = cluster.client(fwd, { user: { id: 'u-mover', info: {} } });
  const stuck = cluster.client(cluster.a, { user: { id: 'u-stuck', info: {} } });
  const watcher = cluster.client(cluster.b, { user: { id: 'u-watcher', info: {} } });
  const moverChannel = await subscribed(mover, name);
  await subscribed(stuck, name);
  const watcherChannel = await subscribed(watcher, name);
  assert.equal(cluster.nodeOf(mover), cluster.a);
  assert.equal(watcherChannel.members.count, 3);
  const firstSocket = mover.connection.socket_id;

  // Checked by the next test: the member on the dead node is purged and announced as gone.
  departure = waitEvent(watcherChannel, 'pusher:member_removed', { match: (m) => m.id === 'u-stuck', ms: 20000 });
  departure.catch(() => {});
  leftBehind.push(mover, stuck, watcher);
  const back = waitEvent(mover.connection, 'state_change', { match: (s) => s.previous !== 'connected' && s.current === 'connected', ms: 20000 });
  const resubscribed = waitEvent(moverChannel, 'pusher:subscription_succeeded', { ms: 20000 });
  cluster.a.kill();
  await back;
  await resubscribed;
  assert.equal(cluster.nodeOf(mover), cluster.b);
  assert.notEqual(mover.connection.socket_id, firstSocket);

  const got = waitEvent(moverChannel, 'after-failover');
  await cluster.sdk(cluster.b).trigger(name, 'after-failover', { ok: true });
  assert.deepEqual(await got, { ok: true });
});

test('a presence member on the SIGKILLed node is removed cluster-wide with member_removed', { timeout: 30000 }, async () => {
  assert.ok(departure, 'the SIGKILL test ran');
  const gone = await departure;
  assert.equal(gone.id, 'u-stuck');
  for (const c of leftBehind) cluster.disconnect(c);
});
