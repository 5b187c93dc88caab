// pusher-js's browser build (dist/web/pusher.js, unmodified) in headless Chromium, driven by
// playwright-core with Debian's /usr/bin/chromium (CHROMIUM overrides the path): it subscribes
// through node a and receives an event the server SDK triggers through node b.
// Run: node --test browser.test.js
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { chromium } from 'playwright-core';

import { APP1, startCluster, unique } from './cluster.js';

const require = createRequire(import.meta.url);
const PUSHER_WEB = require.resolve('pusher-js/dist/web/pusher.js');

let cluster, browser;

before(async () => {
  cluster = await startCluster();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

test('pusher-js in Chromium subscribes and receives an event triggered through the other node', { timeout: 60000 }, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.setContent('<!doctype html><title>pusher-js</title>');
  await page.addScriptTag({ path: PUSHER_WEB });
  const [wsHost, wsPort] = cluster.a.public.split(':');
  const name = unique('browser-');
  const socketId = await page.evaluate(
    ({ key, wsHost, wsPort, name }) =>
      new Promise((resolve, reject) => {
        window.received = [];
        const pusher = new window.Pusher(key, { wsHost, wsPort, forceTLS: false, enabledTransports: ['ws'], cluster: 'ignored', enableStats: false });
        window.pusher = pusher;
        const channel = pusher.subscribe(name);
        channel.bind('news', (data) => window.received.push(data));
        channel.bind('pusher:subscription_succeeded', () => resolve(pusher.connection.socket_id));
        channel.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
        setTimeout(() => reject(new Error(`not subscribed; state ${pusher.connection.state}`)), 15000);
      }),
    { key: APP1.key, wsHost, wsPort: Number(wsPort), name },
  );
  assert.match(socketId, /^\d+\.\d+$/);
  await cluster.sdk(cluster.b).trigger(name, 'news', { headline: 'Chromium receives', n: 1 });
  await page.waitForFunction(() => window.received.length > 0, null, { timeout: 10000 });
  assert.deepEqual(await page.evaluate(() => window.received), [{ headline: 'Chromium receives', n: 1 }]);
  assert.deepEqual(errors, []);
  await page.evaluate(() => window.pusher.disconnect());
  await page.close();
});
