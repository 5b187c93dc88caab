// End to end in headless Chromium: the demo page and /client.js served by a real two-node
// cluster on a real redis-server, all started here on free ports.
// Needs `cargo build --release -p switchboard` and Debian's chromium (CHROMIUM overrides the path).
// Run: node --test e2e.test.js
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { REPO, apiPublish, eventually, mintToken, removeDir, startNode, startRedis, tempDir } from './cluster.js';

const SECRET = 'browser-test-secret';
const TOML = `
[namespaces.demo]
history_size = 1000
history_ttl = 600
presence = true
join_leave = true
`;
// Anonymous pages and token pages on the same nodes; a dead node leaves the registry in 1.5 s.
const ARGS = ['--jwt-secret', SECRET, '--allow-anonymous', 'true', '--registry-interval', '0.5', '--drain-timeout', '1', '--ip-connect-rate', '1000'];
const IMAGES = path.join(REPO, 'docs/images');

let dir, redis, browser, context;
const nodes = {};

before(async () => {
  dir = tempDir();
  redis = await startRedis(dir);
  [nodes.a, nodes.b] = await Promise.all(
    ['node-a', 'node-b'].map((id) => startNode({ id, redisUrl: redis.url, toml: TOML, args: ARGS, dir })),
  );
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context = await browser.newContext({ viewport: { width: 1180, height: 700 } });
  mkdirSync(IMAGES, { recursive: true });
});

after(async () => {
  await browser?.close();
  await Promise.all(Object.values(nodes).map((n) => n.stop()));
  redis?.stop();
  if (dir) removeDir(dir);
});

/** The demo page on `node`, failing over to `others`. */
async function openDemo(node, name, others) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  const list = [node, ...others].map((n) => n.public).join(',');
  await page.goto(`http://${node.public}/?name=${name}&nodes=${list}`);
  await page.waitForSelector(`#status[data-state="connected"]`);
  return page;
}

const texts = (page) => page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
const statusText = (page) => page.textContent('#status-text');

let alice, bob;

test('the node serves the client and the demo', async () => {
  const client = await fetch(`http://${nodes.a.public}/client.js`);
  assert.equal(client.status, 200);
  assert.match(client.headers.get('content-type'), /^application\/javascript/);
  assert.match(await client.text(), /export class Switchboard/);
  const page = await fetch(`http://${nodes.a.public}/`);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  assert.match(page.headers.get('content-security-policy'), /default-src 'self'/);
  const status = await (await fetch(`http://${nodes.b.public}/status`)).json();
  assert.equal(status.node, 'node-b');
  assert.deepEqual(status.nodes.map((n) => n.id).sort(), ['node-a', 'node-b']);
  assert.equal(typeof status.messages_per_second, 'number');
});

test('two pages on two nodes exchange messages', { timeout: 60000 }, async () => {
  alice = await openDemo(nodes.a, 'alice', [nodes.b]);
  bob = await openDemo(nodes.b, 'bob', [nodes.a]);
  assert.equal(await statusText(alice), 'connected to node-a');
  assert.equal(await statusText(bob), 'connected to node-b');

  await alice.fill('#text', 'hello from node-a');
  await alice.press('#text', 'Enter');
  await bob.waitForSelector('#messages li.msg:has-text("hello from node-a") .via:has-text("via node-a")');
  await bob.fill('#text', 'hi alice, this is node-b');
  await bob.press('#text', 'Enter');
  await alice.waitForSelector('#messages li.msg:has-text("this is node-b")');
  for (const page of [alice, bob]) {
    assert.deepEqual(await texts(page), ['hello from node-a', 'hi alice, this is node-b']);
  }

  // Presence shows both, each on its node; the cluster panel shows both nodes.
  await alice.waitForFunction(() => document.querySelectorAll('#presence li').length === 2);
  const presence = await alice.$$eval('#presence li', (els) => els.map((e) => e.textContent).sort());
  assert.deepEqual(presence, ['alice (you)node-a', 'bobnode-b']);
  await alice.waitForFunction(() => document.querySelectorAll('#nodes tr').length === 2);

  await bob.click('#burst');
  await alice.waitForFunction(() => document.querySelectorAll('#messages li.msg').length === 22);
  await alice.fill('#text', 'the cluster works');
  await alice.press('#text', 'Enter');
  await bob.waitForSelector('#messages li.msg:has-text("the cluster works")');
  // The next /status poll has the burst in node-a's rate.
  await alice.waitForFunction(() => !['–', '0.0'].includes(document.querySelector('#node-rate').textContent));
  await alice.screenshot({ path: path.join(IMAGES, 'demo.png') });
  await bob.screenshot({ path: path.join(IMAGES, 'demo-node-b.png') });
});

test('a token that expires is refreshed: 4001, getToken, reconnect, nothing lost', { timeout: 60000 }, async () => {
  const page = await context.newPage();
  let minted = 0;
  // The first token lives two seconds; the next ones an hour.
  await page.exposeFunction('mintToken', () => mintToken(SECRET, 'carol', ++minted === 1 ? 2 : 3600));
  await page.goto(`http://${nodes.b.public}/healthz`); // any page of the node's origin
  await page.evaluate(async () => {
    const { Switchboard } = await import('/client.js');
    const sb = new Switchboard({ url: `ws://${location.host}/ws`, getToken: () => window.mintToken() });
    window.log = [];
    window.got = [];
    sb.on('connected', (w) => window.log.push(`connected ${w.user}`));
    sb.on('disconnected', (d) => window.log.push(`disconnected ${d.code} ${d.reconnect}`));
    sb.on('unrecovered', () => window.log.push('unrecovered'));
    sb.subscribe('demo:tokens', (data) => window.got.push(data.n));
    sb.connect();
    window.sb = sb;
  });
  await page.waitForFunction(() => window.sb.state === 'connected' && window.sb.position('demo:tokens'));
  // Publish all along, across the expiry.
  const sent = [];
  const started = Date.now();
  while (Date.now() - started < 3500 || minted < 2) {
    sent.push(sent.length + 1);
    await apiPublish(nodes.a, 'demo:tokens', { n: sent.length });
    await new Promise((r) => setTimeout(r, 40));
    assert.ok(Date.now() - started < 20000, 'the token was never refreshed');
  }
  await page.waitForFunction(() => window.sb.state === 'connected');
  for (let i = 0; i < 3; i++) {
    sent.push(sent.length + 1);
    await apiPublish(nodes.a, 'demo:tokens', { n: sent.length });
  }
  await eventually('every message', async () => (await page.evaluate(() => window.got.length)) >= sent.length);
  assert.deepEqual(await page.evaluate(() => window.got), sent, 'in order, once');
  const log = await page.evaluate(() => window.log);
  assert.deepEqual(log, ['connected carol', 'disconnected 4001 true', 'connected carol']);
  assert.equal(minted, 2, 'one token, then one refresh');
  await page.close();
});

test('a page whose node is killed moves to the other node and misses nothing', { timeout: 90000 }, async () => {
  const before = await texts(alice);
  nodes.a.kill(); // SIGKILL: no drain, no disconnect frame
  const sent = [];
  let whileDown = 0;
  // Bob keeps talking while alice is cut off and reconnecting, and a little after.
  for (let after = 0; after < 5; ) {
    const text = `while failing over ${sent.length + 1}`;
    await bob.evaluate((t) => window.switchboard.publish('demo:lobby', { text: t, name: 'bob', node: 'node-b' }), text);
    sent.push(text);
    if ((await statusText(alice)) === 'connected to node-b') after++;
    else whileDown++;
    assert.ok(sent.length < 400, 'alice never reconnected');
  }
  assert.ok(whileDown > 0, 'some messages were sent while alice was disconnected');
  await eventually(
    'alice shows every message',
    async () => (await texts(alice)).length >= before.length + sent.length,
    15000,
  );
  assert.deepEqual(await texts(alice), [...before, ...sent], 'every message, in order, once');
  const log = await alice.$$eval('#events li', (els) => els.map((e) => e.textContent).join('\n'));
  assert.match(log, /connected to node-b/);
  assert.match(log, /rejoined demo:lobby, missed messages recovered/);
  assert.doesNotMatch(log, /could not recover/);

  // The cluster panel drops the dead node once the registry forgets it.
  await alice.waitForFunction(() => document.querySelectorAll('#nodes tr').length === 1, null, { timeout: 15000 });
  // So does presence: alice's old connection on node-a goes, her new one on node-b stays.
  await alice.waitForFunction(() => document.querySelectorAll('#presence li').length === 2, null, { timeout: 15000 });
  const presence = await alice.$$eval('#presence li', (els) => els.map((e) => e.textContent).sort());
  assert.deepEqual(presence, ['alice (you)node-b', 'bobnode-b']);
  await alice.fill('#text', 'back, via node-b');
  await alice.press('#text', 'Enter');
  await bob.waitForSelector('#messages li.msg:has-text("back, via node-b")');
  await alice.screenshot({ path: path.join(IMAGES, 'demo-failover.png') });
});
