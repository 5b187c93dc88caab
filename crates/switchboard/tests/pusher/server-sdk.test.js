// The npm server SDK `pusher` 5 (unmodified) against a two-node cluster with two apps: app1 by
// flags, app2 in TOML (`[[pusher.apps]]`, client events off, webhooks to a receiver here).
// Deliveries are observed with pusher-js. Run: node --test server-sdk.test.js
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import Pusher from 'pusher';

import { APP1, APP2, appToml, connected, record, startCluster, startWebhookReceiver, subscribed, unique, waitEvent } from './cluster.js';

const WEBHOOK_EVENTS = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event'];

let cluster, hooks, app2;

before(async () => {
  hooks = await startWebhookReceiver();
  app2 = { ...APP2, client_events: false, webhook_url: hooks.url, webhook_events: WEBHOOK_EVENTS };
  cluster = await startCluster({ flagsApp: APP1, toml: appToml(app2) });
});

after(async () => {
  await cluster?.stop();
  await hooks?.close();
});

const json = async (responsePromise) => (await responsePromise).json();

/** Waits until `channel` has `marker` from app `app`'s SDK (everything triggered before is in). */
async function marker(channel, app = APP1) {
  const id = unique('m');
  const got = waitEvent(channel, 'marker', { match: (d) => d?.id === id });
  await cluster.sdk(cluster.b, app).trigger(channel.name, 'marker', { id });
  await got;
}

test('trigger to one channel answers 200 {} and delivers', async () => {
  const client = cluster.client(cluster.a);
  const channel = await subscribed(client, unique('one-'));
  const got = waitEvent(channel, 'e');
  const response = await cluster.sdk(cluster.b).trigger(channel.name, 'e', { x: 1 });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), {});
  assert.deepEqual(await got, { x: 1 });
  cluster.disconnect(client);
});

test('trigger to many channels, with info=subscription_count in the answer', async () => {
  const a = cluster.client(cluster.a);
  const b = cluster.client(cluster.b);
  const names = [unique('many-'), unique('many-')];
  const channelsA = await Promise.all(names.map((n) => subscribed(a, n)));
  await subscribed(b, names[0]);
  const got = channelsA.map((c) => waitEvent(c, 'fan'));
  const body = await json(cluster.sdk(cluster.b).trigger(names, 'fan', { y: 2 }, { info: 'subscription_count' }));
  for (const data of await Promise.all(got)) assert.deepEqual(data, { y: 2 });
  assert.deepEqual(body, { channels: { [names[0]]: { subscription_count: 2 }, [names[1]]: { subscription_count: 1 } } });
  cluster.disconnect(a);
  cluster.disconnect(b);
});

test('triggerBatch delivers each event to its channel, with per-event socket_id exclusion', async () => {
  const alice = cluster.client(cluster.a);
  const bob = cluster.client(cluster.b);
  const [n1, n2] = [unique('batch-'), unique('batch-')];
  const [a1, a2] = await Promise.all([subscribed(alice, n1), subscribed(alice, n2)]);
  const b1 = await subscribed(bob, n1);
  const aliceSaw = record(a1);
  const gotA2 = waitEvent(a2, 'second');
  const gotB1 = waitEvent(b1, 'first');
  const response = await cluster.sdk(cluster.b).triggerBatch([
    { channel: n1, name: 'first', data: { i: 1 }, socket_id: alice.connection.socket_id },
    { channel: n2, name: 'second', data: 'two' },
  ]);
  assert.equal(response.status, 200);
  assert.deepEqual(await gotB1, { i: 1 });
  assert.equal(await gotA2, 'two');
  await marker(a1);
  assert.deepEqual(aliceSaw.filter((e) => e.event === 'first'), [], 'alice was excluded from the first event');
  cluster.disconnect(alice);
  cluster.disconnect(bob);
});

test('GET /channels with filter_by_prefix and info=user_count', async () => {
  const prefix = unique('presence-list-');
  const ann = cluster.client(cluster.a, { user: { id: 'ann', info: {} } });
  const ann2 = cluster.client(cluster.b, { user: { id: 'ann', info: {} } });
  const bob = cluster.client(cluster.b, { user: { id: 'bob', info: {} } });
  await subscribed(ann, `${prefix}x`);
  await subscribed(ann2, `${prefix}x`);
  await subscribed(bob, `${prefix}x`);
  await subscribed(bob, `${prefix}y`);
  const publicName = unique('listed-');
  await subscribed(bob, publicName);
  const sdk = cluster.sdk(cluster.a);

  const presence = await json(sdk.get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'user_count' } }));
  assert.deepEqual(presence, { channels: { [`${prefix}x`]: { user_count: 2 }, [`${prefix}y`]: { user_count: 1 } } });

  const all = await json(sdk.get({ path: '/channels' }));
  assert.ok(all.channels[publicName], `${publicName} listed: ${JSON.stringify(all)}`);
  assert.deepEqual(all.channels[publicName], {});
  for (const c of [ann, ann2, bob]) cluster.disconnect(c);
});

test('GET /channels/{name}: occupied, subscription_count, user_count; unoccupied', async () => {
  const name = unique('presence-info-');
  const ann = cluster.client(cluster.a, { user: { id: 'ann', info: {} } });
  const ann2 = cluster.client(cluster.b, { user: { id: 'ann', info: {} } });
  await subscribed(ann, name);
  await subscribed(ann2, name);
  const sdk = cluster.sdk(cluster.b);
  const info = await json(sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count,user_count' } }));
  assert.deepEqual(info, { occupied: true, subscription_count: 2, user_count: 1 });
  const users = await json(sdk.get({ path: `/channels/${name}/users` }));
  assert.deepEqual(users, { users: [{ id: 'ann' }] });
  const empty = await json(sdk.get({ path: `/channels/${unique('nobody-')}` }));
  assert.equal(empty.occupied, false);
  cluster.disconnect(ann);
  cluster.disconnect(ann2);
});

test('a request signed with the wrong secret is refused with 401', async () => {
  const forger = new Pusher({ appId: APP1.id, key: APP1.key, secret: 'wrong', host: cluster.a.public.split(':')[0], port: cluster.a.public.split(':')[1], useTLS: false });
  await assert.rejects(forger.trigger('x', 'e', {}), (e) => e.status === 401);
  await assert.rejects(forger.get({ path: '/channels' }), (e) => e.status === 401);
  // app2's credentials do not open app1's API.
  const crossed = new Pusher({ appId: APP1.id, key: APP2.key, secret: APP2.secret, host: cluster.a.public.split(':')[0], port: cluster.a.public.split(':')[1], useTLS: false });
  await assert.rejects(crossed.trigger('x', 'e', {}), (e) => e.status === 401 || e.status === 403 || e.status === 404);
});

test('apps are isolated: the same channel name in app1 and app2 are different channels', async () => {
  const name = unique('shared-');
  const one = cluster.client(cluster.a);
  const two = cluster.client(cluster.a, { app: APP2 });
  const [c1, c2] = await Promise.all([subscribed(one, name), subscribed(two, name)]);
  const twoSaw = record(c2);
  const got = waitEvent(c1, 'only-app1');
  await cluster.sdk(cluster.b).trigger(name, 'only-app1', {});
  await got;
  await marker(c2, APP2);
  assert.deepEqual(twoSaw.filter((e) => e.event === 'only-app1'), []);
  const listed = await json(cluster.sdk(cluster.b, APP2).get({ path: '/channels', params: { filter_by_prefix: 'shared-' } }));
  assert.deepEqual(Object.keys(listed.channels), [name]);
  cluster.disconnect(one);
  cluster.disconnect(two);
});

test('app2 has client events off: a client event on its private channel is refused', async () => {
  const name = unique('private-quiet-');
  const alice = cluster.client(cluster.a, { app: APP2 });
  const bob = cluster.client(cluster.b, { app: APP2 });
  const [ca, cb] = await Promise.all([subscribed(alice, name), subscribed(bob, name)]);
  const bobSaw = record(cb);
  const refused = waitEvent(alice.connection, 'error', { match: (e) => e?.type === 'PusherError' });
  ca.trigger('client-psst', {});
  await refused;
  await marker(cb, APP2);
  assert.deepEqual(bobSaw.filter((e) => e.event === 'client-psst'), []);
  cluster.disconnect(alice);
  cluster.disconnect(bob);
});

test('webhooks: signed (X-Pusher-Signature), validated by pusher.webhook(), one per transition', { timeout: 60000 }, async () => {
  const sdk2 = cluster.sdk(cluster.a, APP2);
  const channel = unique('presence-hooked-');
  const of = (name, extra = {}) => (r) => {
    const body = JSON.parse(r.rawBody);
    return body.events.some((e) => e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v));
  };
  // Two users on two nodes: one occupied, two member_added, then both leave.
  const ann = cluster.client(cluster.a, { app: APP2, user: { id: 'ann', info: {} } });
  const bob = cluster.client(cluster.b, { app: APP2, user: { id: 'bob', info: {} } });
  await subscribed(ann, channel);
  await subscribed(bob, channel);
  const occupied = await hooks.waitFor('channel_occupied', of('channel_occupied'));
  await hooks.waitFor('member_added ann', of('member_added', { user_id: 'ann' }));
  await hooks.waitFor('member_added bob', of('member_added', { user_id: 'bob' }));
  cluster.disconnect(ann);
  await hooks.waitFor('member_removed ann', of('member_removed', { user_id: 'ann' }));
  cluster.disconnect(bob);
  await hooks.waitFor('channel_vacated', of('channel_vacated'));

  // The SDK's validation: the key header, the HMAC of the raw body, a JSON body.
  assert.equal(occupied.headers['x-pusher-key'], APP2.key);
  assert.match(occupied.headers['x-pusher-signature'], /^[0-9a-f]{64}$/);
  const webhook = sdk2.webhook({ headers: occupied.headers, rawBody: occupied.rawBody });
  assert.equal(webhook.isValid(), true, `content-type ${occupied.headers['content-type']} and the signature validate`);
  assert.equal(typeof webhook.getTime().getTime(), 'number');
  assert.ok(webhook.getEvents().length >= 1);
  const forged = new Pusher({ appId: APP2.id, key: APP2.key, secret: 'wrong', host: '127.0.0.1' });
  assert.equal(forged.webhook({ headers: occupied.headers, rawBody: occupied.rawBody }).isValid(), false);

  // Exactly one node reported each transition.
  const events = hooks.received.flatMap((r) => JSON.parse(r.rawBody).events).filter((e) => e.channel === channel);
  const count = (name) => events.filter((e) => e.name === name).length;
  assert.equal(count('channel_occupied'), 1, JSON.stringify(events));
  assert.equal(count('channel_vacated'), 1, JSON.stringify(events));
  assert.equal(count('member_added'), 2, JSON.stringify(events));
  for (const r of hooks.received) assert.equal(sdk2.webhook({ headers: r.headers, rawBody: r.rawBody }).isValid(), true);
});

test('webhooks: client_event carries the event, data, socket_id and user_id', { timeout: 30000 }, async () => {
  // app2 has client events off; a client event is only reported when it is accepted, so this
  // uses a third app with client events on and webhooks to the same receiver.
  const app3 = { id: 'app3', key: 'app3-key', secret: 'app3-secret', client_events: true, webhook_url: hooks.url, webhook_events: ['client_event'] };
  const local = await startCluster({ flagsApp: null, toml: appToml(app3) });
  try {
    const channel = unique('presence-whispers-');
    const ann = local.client(local.a, { app: app3, user: { id: 'ann', info: {} } });
    const bob = local.client(local.b, { app: app3, user: { id: 'bob', info: {} } });
    const [ca, cb] = await Promise.all([subscribed(ann, channel), subscribed(bob, channel)]);
    const delivered = waitEvent(cb, 'client-hello');
    ca.trigger('client-hello', { hi: 1 });
    await delivered;
    const hook = await hooks.waitFor('client_event', (r) => JSON.parse(r.rawBody).events.some((e) => e.name === 'client_event' && e.channel === channel));
    const event = JSON.parse(hook.rawBody).events.find((e) => e.name === 'client_event');
    assert.equal(event.event, 'client-hello');
    assert.deepEqual(JSON.parse(event.data), { hi: 1 });
    assert.equal(event.socket_id, ann.connection.socket_id);
    assert.equal(event.user_id, 'ann');
    const sdk3 = local.sdk(local.a, app3);
    assert.equal(sdk3.webhook({ headers: hook.headers, rawBody: hook.rawBody }).isValid(), true);
  } finally {
    await local.stop();
  }
});

test('terminateUserConnections closes the signed-in user\'s connection', async () => {
  const client = cluster.client(cluster.a, { signinUser: { id: 'sdk-user' } });
  await connected(client);
  const signedIn = waitEvent(client.connection, 'message', { match: (m) => m.event === 'pusher:signin_success' });
  client.signin();
  await signedIn;
  const gone = waitEvent(client.connection, 'state_change', { match: (s) => s.current === 'disconnected' });
  const response = await cluster.sdk(cluster.b).terminateUserConnections('sdk-user');
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), {});
  await gone;
  cluster.disconnect(client);
});

test('sendToUser reaches the signed-in user', async () => {
  const client = cluster.client(cluster.a, { signinUser: { id: 'sdk-user-2' } });
  await connected(client);
  const userChannel = waitEvent(client.connection, 'message', {
    match: (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === '#server-to-user-sdk-user-2',
  });
  client.signin();
  await userChannel;
  const got = waitEvent(client.user, 'ping');
  await cluster.sdk(cluster.b).sendToUser('sdk-user-2', 'ping', { p: 1 });
  assert.deepEqual(await got, { p: 1 });
  cluster.disconnect(client);
});
