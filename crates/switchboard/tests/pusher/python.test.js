// The PyPI server SDK `pusher` (unmodified, in the venv .venv from requirements.txt) against a
// two-node cluster: `sdk.py` makes the calls (one process, a JSON line per call) and the test asserts on its answer and on what
// pusher-js clients receive. The Python SDK accepts numeric app ids only, so the app here is
// numeric, configured in TOML with webhooks to a receiver here. Run: node --test python.test.js
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { appToml, connected, record, startCluster, startWebhookReceiver, subscribed, unique, waitEvent } from './cluster.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.PUSHER_PYTHON || path.join(HERE, '.venv/bin/python');
const PYAPP = { id: '424242', key: 'py-key', secret: 'py-secret' };

let cluster, hooks, python;

before(async () => {
  if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`);
  python = startPython();
  hooks = await startWebhookReceiver();
  cluster = await startCluster({
    flagsApp: null,
    toml: appToml({ ...PYAPP, webhook_url: hooks.url, webhook_events: ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed'] }),
  });
});

after(async () => {
  python?.stop();
  await cluster?.stop();
  await hooks?.close();
});

/**
 * The Python SDK process (`sdk.py`): one call per line in, one answer per line out, in order.
 * `py(node, method, args, kwargs)` resolves with the call's result or rejects with its error.
 */
function startPython() {
  const child = spawn(PYTHON, [path.join(HERE, 'sdk.py')], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => waiting.shift()?.(JSON.parse(line)));
  child.on('exit', (code) => {
    for (const w of waiting.splice(0)) w({ error: 'Exit', message: `sdk.py exited with ${code}` });
  });
  return {
    call: (call) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        child.stdin.write(`${JSON.stringify(call)}\n`);
      }),
    stop: () => child.stdin.end(),
  };
}

async function py(node, method, args = [], kwargs = {}) {
  const [host, port] = node.public.split(':');
  const answer = await python.call({ app_id: PYAPP.id, key: PYAPP.key, secret: PYAPP.secret, host, port: Number(port), method, args, kwargs });
  if ('error' in answer) {
    const e = new Error(`${method}: ${answer.error}: ${answer.message}`);
    e.kind = answer.error;
    throw e;
  }
  return answer.result;
}

/** A pusher-js client of the Python app whose channel and user auth come from the Python SDK. */
function pyClient(node, { user, signinUser } = {}) {
  return cluster.client(node, {
    app: PYAPP,
    channelAuthorization: {
      customHandler: ({ channelName, socketId }, callback) => {
        const custom = channelName.startsWith('presence-') ? { user_id: user.id, user_info: user.info } : undefined;
        py(cluster.b, 'authenticate', [channelName, socketId], custom ? { custom_data: custom } : {}).then(
          (auth) => callback(null, auth),
          (e) => callback(e, null),
        );
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        py(cluster.b, 'authenticate_user', [socketId, signinUser]).then(
          (auth) => callback(null, auth),
          (e) => callback(e, null),
        );
      },
    },
  });
}

test('trigger (one channel, several, with socket_id) reaches pusher-js', async () => {
  const alice = pyClient(cluster.a);
  const bob = pyClient(cluster.b);
  const names = [unique('py-'), unique('py-')];
  const aliceChannels = await Promise.all(names.map((n) => subscribed(alice, n)));
  const bobChannel = await subscribed(bob, names[0]);

  const got = waitEvent(aliceChannels[0], 'hello');
  assert.deepEqual(await py(cluster.b, 'trigger', [names[0], 'hello', { from: 'python', n: 1 }]), {});
  assert.deepEqual(await got, { from: 'python', n: 1 });

  const both = aliceChannels.map((c) => waitEvent(c, 'both'));
  await py(cluster.b, 'trigger', [names, 'both', 'a string']);
  assert.deepEqual(await Promise.all(both), ['a string', 'a string']);

  const aliceSaw = record(aliceChannels[0]);
  const bobGot = waitEvent(bobChannel, 'not-alice');
  await py(cluster.b, 'trigger', [names[0], 'not-alice', {}], { socket_id: alice.connection.socket_id });
  await bobGot;
  const markerGot = waitEvent(aliceChannels[0], 'marker');
  await py(cluster.b, 'trigger', [names[0], 'marker', {}]);
  await markerGot;
  assert.deepEqual(aliceSaw.filter((e) => e.event === 'not-alice'), []);
  cluster.disconnect(alice);
  cluster.disconnect(bob);
});

test('trigger_batch', async () => {
  const client = pyClient(cluster.a);
  const [n1, n2] = [unique('pyb-'), unique('pyb-')];
  const [c1, c2] = await Promise.all([subscribed(client, n1), subscribed(client, n2)]);
  const got = [waitEvent(c1, 'b1'), waitEvent(c2, 'b2')];
  await py(cluster.b, 'trigger_batch', [[
    { channel: n1, name: 'b1', data: { i: 1 } },
    { channel: n2, name: 'b2', data: { i: 2 } },
  ]]);
  assert.deepEqual(await Promise.all(got), [{ i: 1 }, { i: 2 }]);
  cluster.disconnect(client);
});

test('authenticate for private and presence channels', async () => {
  const room = unique('presence-py-');
  const ann = pyClient(cluster.a, { user: { id: 'ann', info: { name: 'Ann' } } });
  const bob = pyClient(cluster.b, { user: { id: 'bob', info: { name: 'Bob' } } });
  const privateChannel = await subscribed(ann, unique('private-py-'));
  assert.equal(privateChannel.subscribed, true);
  await subscribed(ann, room);
  const bobRoom = await subscribed(bob, room);
  assert.equal(bobRoom.members.count, 2);
  assert.deepEqual(bobRoom.members.get('ann').info, { name: 'Ann' });
  cluster.disconnect(ann);
  cluster.disconnect(bob);
});

test('channels_info, channel_info, users_info', async () => {
  const room = unique('presence-py-');
  const ann = pyClient(cluster.a, { user: { id: 'ann', info: {} } });
  const ann2 = pyClient(cluster.b, { user: { id: 'ann', info: {} } });
  const bob = pyClient(cluster.b, { user: { id: 'bob', info: {} } });
  for (const c of [ann, ann2, bob]) await subscribed(c, room);
  const list = await py(cluster.a, 'channels_info', [], { prefix_filter: room, attributes: ['user_count'] });
  assert.deepEqual(list, { channels: { [room]: { user_count: 2 } } });
  const info = await py(cluster.a, 'channel_info', [room, ['subscription_count', 'user_count']]);
  assert.deepEqual(info, { occupied: true, subscription_count: 3, user_count: 2 });
  const users = await py(cluster.a, 'users_info', [room]);
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'bob']);
  for (const c of [ann, ann2, bob]) cluster.disconnect(c);
});

test('authenticate_user for signin, then terminate_user_connections', async () => {
  const victim = pyClient(cluster.a, { signinUser: { id: 'py-victim' } });
  await connected(victim);
  const signedIn = waitEvent(victim.connection, 'message', { match: (m) => m.event === 'pusher:signin_success' });
  victim.signin();
  await signedIn;
  const gone = waitEvent(victim.connection, 'state_change', { match: (s) => s.current === 'disconnected' });
  // pusher 3.3.4 posts to /users/{id}/terminate_connections (no /apps/{id} prefix).
  await py(cluster.b, 'terminate_user_connections', ['py-victim']);
  await gone;
  cluster.disconnect(victim);
});

test('validate_webhook accepts the node\'s webhooks and refuses a bad signature', async () => {
  const name = unique('py-hooked-');
  const client = pyClient(cluster.a);
  await subscribed(client, name);
  const hook = await hooks.waitFor('channel_occupied', (r) => JSON.parse(r.rawBody).events.some((e) => e.name === 'channel_occupied' && e.channel === name));
  const valid = await py(cluster.b, 'validate_webhook', [hook.headers['x-pusher-key'], hook.headers['x-pusher-signature'], hook.rawBody]);
  assert.ok(valid, 'validate_webhook returned the body');
  assert.equal(typeof valid.time_ms, 'number');
  assert.ok(valid.events.some((e) => e.name === 'channel_occupied' && e.channel === name));
  const forged = await py(cluster.b, 'validate_webhook', [hook.headers['x-pusher-key'], '0'.repeat(64), hook.rawBody]);
  assert.equal(forged, null);
  cluster.disconnect(client);
});
