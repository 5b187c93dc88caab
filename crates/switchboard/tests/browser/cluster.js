// A private redis-server and Switchboard nodes as child processes, on free ports, like the
// Rust test kit (crates/switchboard-testkit): every process is ours and is stopped.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const BIN =
  process.env.SWITCHBOARD_BIN ||
  path.join(process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target'), 'release/switchboard');

const children = new Set();
// Whatever happens to the test process, its children go with it.
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` (async, truthy when done) until `ms` pass. */
export async function eventually(what, check, ms = 10000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(50);
  }
}

function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** A redis-server of our own; `stop()` kills it. */
export async function startRedis(dir) {
  for (let tries = 0; tries < 5; tries++) {
    const port = await freePort();
    const child = track(
      spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
        stdio: 'ignore',
      }),
    );
    const up = await eventually('redis PING', () => ping(port), 5000).catch(() => false);
    if (up) {
      return {
        port,
        url: `redis://127.0.0.1:${port}`,
        stop: () => child.kill('SIGKILL'),
      };
    }
    child.kill('SIGKILL');
  }
  throw new Error('redis-server did not start (apt-get install -y redis-server)');
}

function ping(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => resolve(false));
    socket.on('data', (data) => {
      socket.destroy();
      resolve(data.toString().startsWith('+PONG'));
    });
    socket.write('PING\r\n');
  });
}

/**
 * Starts a node and waits until `/readyz` answers 200.
 * @returns {Promise<{id: string, public: string, internal: string, pid: number, kill: Function, stop: Function, log: Function}>}
 */
export async function startNode({ id, redisUrl, toml, args = [], dir }) {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run cargo build --release -p switchboard`);
  const config = path.join(dir, `${id}.toml`);
  writeFileSync(config, toml ?? '');
  const logPath = path.join(dir, `${id}.log`);
  const child = track(
    spawn(
      BIN,
      ['--listen', '127.0.0.1:0', '--internal-listen', '127.0.0.1:0', '--node-id', id, '--redis-url', redisUrl, '--config', config, ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  );
  const log = [];
  child.stderr.on('data', (d) => log.push(d));
  child.on('exit', () => writeFileSync(logPath, Buffer.concat(log)));
  const line = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`node ${id} printed no listening line:\n${Buffer.concat(log)}`)), 20000);
    lines.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once('exit', (code) => reject(new Error(`node ${id} exited (${code}):\n${Buffer.concat(log)}`)));
  });
  const m = /public=(\S+) internal=(\S+)/.exec(line);
  if (!m) throw new Error(`unexpected listening line ${line}`);
  const node = {
    id,
    public: m[1],
    internal: m[2],
    pid: child.pid,
    /** SIGKILL: no drain, no goodbye, like a crashed machine. */
    kill: () => child.kill('SIGKILL'),
    /** SIGTERM and wait for the exit. */
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', resolve);
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
    log: () => Buffer.concat(log).toString(),
  };
  await eventually(`node ${id} ready`, async () => (await fetch(`http://${node.internal}/readyz`)).status === 200, 20000);
  return node;
}

/** `POST /api/v1/publish` on a node's internal listener. */
export async function apiPublish(node, channel, data) {
  const response = await fetch(`http://${node.internal}/api/v1/publish`, {
    method: 'POST',
    body: JSON.stringify({ channel, data }),
  });
  if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
  return response.json();
}

/** An HS256 JWT for `sub`, valid `ttlSeconds` from now. */
export function mintToken(secret, sub, ttlSeconds) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds })}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

export function tempDir() {
  return mkdtempSync(path.join(os.tmpdir(), 'switchboard-browser-'));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}
