// The demo page: a chat room with presence and a live view of the cluster, on /client.js.
//
// Query parameters: room (default "lobby": channel demo:lobby), name, token (a JWT when the
// node requires one), nodes (comma-separated node addresses or ws:// URLs to fail over to;
// default this page's node).
import { Switchboard } from '/client.js';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'lobby';
const channel = `demo:${room}`;
const $ = (id) => document.getElementById(id);

const nodes = (params.get('nodes') || location.host)
  .split(',')
  .map((n) => n.trim())
  .filter(Boolean)
  .map((n) => (/^(wss?|https?):\/\//.test(n) ? n : `${location.protocol === 'https:' ? 'wss' : 'ws'}://${n}/ws`));

const nameInput = $('name');
nameInput.value = params.get('name') || localStorage.getItem('switchboard-demo-name') || `guest-${Math.floor(Math.random() * 900 + 100)}`;
nameInput.addEventListener('change', () => localStorage.setItem('switchboard-demo-name', nameInput.value));
$('room').textContent = channel;

const token = params.get('token');
const sb = new Switchboard({ url: nodes, token: token || undefined });
window.switchboard = sb; // for the browser console (and the tests)

// ---- the chat ----

const list = $('messages');
const names = new Map(); // conn -> name, learned from messages
const seen = []; // arrival times, for the room's rate

function addLine(li) {
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 20;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

function showMessage(data, message) {
  if (!data || typeof data !== 'object') data = { text: JSON.stringify(data) };
  if (data.conn && data.name) names.set(data.conn, data.name);
  const li = el('li', 'msg');
  if (message.offset != null) {
    li.dataset.offset = message.offset;
    li.append(el('span', 'offset', `#${message.offset}`));
  }
  li.append(el('span', 'who', data.name || 'api'), ' ');
  if (data.node) li.append(el('span', 'via', `via ${data.node}`), ' ');
  li.append(el('span', 'text', String(data.text ?? '')));
  addLine(li);
  seen.push(Date.now());
  if (data.conn) renderPresence();
}

function showNote(text) {
  addLine(el('li', 'sys', text));
}

function logEvent(text) {
  const li = el('li', null, `${new Date().toLocaleTimeString()} ${text}`);
  $('events').prepend(li);
  while ($('events').children.length > 50) $('events').lastChild.remove();
}

async function send(text) {
  const data = { text, name: nameInput.value || 'anonymous', node: sb.info?.node, conn: sb.info?.conn };
  return sb.publish(channel, data);
}

$('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  send(text).catch((e) => showNote(`not sent: ${e.code} ${e.message}`));
});

$('burst').addEventListener('click', () => {
  for (let i = 1; i <= 20; i++) send(`burst ${i}/20`).catch(() => {});
});

// ---- presence ----

let members = [];
let presenceTimer = null;

async function refreshPresence() {
  try {
    members = (await sb.presence(channel)).members;
  } catch {
    members = [];
  }
  renderPresence();
}

function schedulePresence() {
  clearTimeout(presenceTimer);
  presenceTimer = setTimeout(refreshPresence, 150);
}

function renderPresence() {
  const ul = $('presence');
  ul.replaceChildren(
    ...members.map((m) => {
      const li = el('li');
      const mine = m.conn === sb.info?.conn;
      const who = (mine ? nameInput.value : names.get(m.conn)) || m.user || `anonymous ${m.conn.slice(-4)}`;
      li.append(el('span', null, mine ? `${who} (you)` : who), el('span', 'node', m.node));
      return li;
    }),
  );
}

sb.on('join', (e) => e.channel === channel && schedulePresence());
sb.on('leave', (e) => e.channel === channel && schedulePresence());

// ---- connection state ----

sb.on('state', ({ state }) => {
  $('status').dataset.state = state;
  if (state !== 'connected') $('status-text').textContent = state === 'connecting' ? 'reconnecting…' : 'disconnected';
});
let currentUrl = nodes[0];
sb.on('connected', (w) => {
  currentUrl = w.url;
  $('status-text').textContent = `connected to ${w.node}`;
  logEvent(`connected to ${w.node} (${w.conn})`);
  pollStatus();
});
sb.on('disconnected', (d) => logEvent(`disconnected: ${d.code} ${d.reason || ''}${d.reconnect ? '' : ' (not reconnecting)'}`));
sb.on('reconnecting', (r) => logEvent(`reconnecting to ${new URL(r.url).host} in ${r.delay} ms`));
let joined = false;
sb.on('subscribed', (s) => {
  if (s.channel !== channel) return;
  logEvent(joined ? `rejoined ${channel}${s.recovered ? ', missed messages recovered' : ''}` : `joined ${channel}`);
  joined = true;
  schedulePresence();
});
sb.on('unrecovered', (u) => {
  showNote(`some messages could not be recovered (offsets ${u.from.offset + 1}–${u.offset})`);
  logEvent(`could not recover ${u.channel}`);
});
sb.on('error', (e) => logEvent(`error: ${e.code} ${e.message}`));

// ---- the cluster panel: /status of the node this page is connected to ----

let statusTimer = null;

async function pollStatus() {
  clearTimeout(statusTimer);
  statusTimer = setTimeout(pollStatus, 2000);
  const now = Date.now();
  while (seen.length && seen[0] < now - 5000) seen.shift();
  $('room-rate').textContent = (seen.length / 5).toFixed(1);
  if (!sb.info) return;
  refreshPresence(); // a node that died sent no leaves: its members go once it is forgotten
  const statusUrl = currentUrl.replace(/^ws/, 'http').replace(/\/ws(\?.*)?$/, '/status');
  try {
    const status = await (await fetch(statusUrl, { cache: 'no-store' })).json();
    $('node-rate').textContent = status.messages_per_second.toFixed(1);
    $('rate-node').textContent = status.node;
    $('nodes').replaceChildren(
      ...status.nodes
        .sort((a, b) => a.id.localeCompare(b.id))
        .map((n) => {
          const tr = el('tr', n.id === sb.info?.node ? 'mine' : null);
          tr.append(el('td', null, n.id), el('td', 'num', n.connections), el('td', 'num', n.subscriptions));
          return tr;
        }),
    );
  } catch {
    // the node may be going away; the next poll tries the one we are connected to then
  }
}

// ---- start: read the recent history, then subscribe from exactly where it ends ----

async function start() {
  sb.connect();
  let recover;
  try {
    const history = await sb.history(channel, { limit: 50 });
    for (const m of history.messages) showMessage(m.data, m);
    recover = { epoch: history.epoch, offset: history.offset };
  } catch (e) {
    if (e.code !== 'forbidden') logEvent(`history: ${e.code}`); // forbidden: no history here
  }
  sb.subscribe(channel, showMessage, { recover }).catch((e) => showNote(`cannot join ${channel}: ${e.code} ${e.message}`));
}

start();
pollStatus();
