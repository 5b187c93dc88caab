// chat.js: the chat pattern. ROOMS rooms of MEMBERS members each, spread over the nodes; every
// member publishes into its room from its own connection (client-side `publish`) and receives
// everyone's messages. Presence is on: the room's namespace needs `presence = true` and
// `join_leave = true` (and, for the order check by offset, a history).
//
// Measures: end-to-end latency (sender's clock in the payload to the receiver's socket), the
// publish round trip (publish to `published` reply), the presence query, and checks that
//   - every member receives every message of its room exactly once and in one order (offsets
//     without gaps or repeats when the namespace has history, otherwise by count);
//   - each sender's messages arrive in the order it sent them;
//   - every member gets its own `join` after subscribing;
//   - `presence` lists exactly the room's members, and after one member unsubscribes the
//     others get its `leave` and `presence` no longer lists it.
//
// A room starts once all its members are subscribed (and have seen their own join); then each member publishes one message
// every MSG_INTERVAL seconds (random phase; a member waits for the reply before its next
// publish) for DURATION seconds; GRACE seconds later the room is tallied.
//
// Settings (environment): WS_URLS, API_URLS, API_KEY, TOKEN, RUN_ID (see lib.js), and
//   ROOMS (100), MEMBERS (5), ROOMS_PER_VU (25), RAMP (5 s), DURATION (20 s), MSG_INTERVAL (2 s),
//   PAYLOAD_BYTES (64), NAMESPACE (ltchat), GRACE (3 s), START_TIMEOUT (30 s),
//   LATENCY_P95_MS (50), LATENCY_P99_MS (100), ACK_P95_MS (50), ACK_P99_MS (100),
//   CONNECT_P95_MS (500), CONNECT_P99_MS (1000).
// A member sends about 1/MSG_INTERVAL commands per second, far under the node's default
// per-connection limit (100/s).
//
// Thresholds: connect errors and time, latency and publish round trip p95/p99, zero lost,
// gapped, duplicated, out-of-order or sender-reordered messages, every member complete, no
// publish errors, no presence mismatch, no missing join or leave, no unexpected closes, no
// server errors or disconnects.

import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  BitSet, checkTargets, Client, connectThresholds, env, envInt, envNum, padding, runId, wsUrl,
} from './lib.js';

const ROOMS = envInt('ROOMS', 100);
const MEMBERS = envInt('MEMBERS', 5);
const ROOMS_PER_VU = envInt('ROOMS_PER_VU', 25);
const VUS = Math.ceil(ROOMS / ROOMS_PER_VU);
const RAMP = envNum('RAMP', 5);
const DURATION = envNum('DURATION', 20);
const MSG_INTERVAL = envNum('MSG_INTERVAL', 2);
const PAYLOAD_BYTES = envInt('PAYLOAD_BYTES', 64);
const GRACE = envNum('GRACE', 3);
const START_TIMEOUT = envNum('START_TIMEOUT', 30);
const LEAVE_WAIT_MS = 1000;
const DEADLINE_S = RAMP + START_TIMEOUT + DURATION + GRACE + 20;

const latency = new Trend('chat_latency', true);
const ackTime = new Trend('chat_publish_ack_time', true);
const presenceTime = new Trend('chat_presence_time', true);
const received = new Counter('chat_messages_received');
const published = new Counter('chat_published');
const lost = new Counter('chat_lost');
const gaps = new Counter('chat_gaps');
const duplicates = new Counter('chat_duplicates');
const outOfOrder = new Counter('chat_out_of_order');
const senderReordered = new Counter('chat_sender_reordered');
const complete = new Rate('chat_complete');
const publishErrors = new Counter('chat_publish_errors');
const subscribeErrors = new Counter('chat_subscribe_errors');
const presenceMismatch = new Counter('chat_presence_mismatch');
const ownJoinMissing = new Counter('chat_own_join_missing');
const leaveMissing = new Counter('chat_leave_missing');
const joins = new Counter('chat_joins_received');
const roomsStartedLate = new Counter('chat_rooms_started_incomplete');

export const options = {
  scenarios: {
    rooms: {
      executor: 'per-vu-iterations',
      exec: 'rooms',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(DEADLINE_S + 30)}s`,
    },
  },
  thresholds: Object.assign(connectThresholds(), {
    chat_latency: [`p(95)<${envNum('LATENCY_P95_MS', 50)}`, `p(99)<${envNum('LATENCY_P99_MS', 100)}`],
    chat_publish_ack_time: [`p(95)<${envNum('ACK_P95_MS', 50)}`, `p(99)<${envNum('ACK_P99_MS', 100)}`],
    chat_lost: ['count==0'],
    chat_gaps: ['count==0'],
    chat_duplicates: ['count==0'],
    chat_out_of_order: ['count==0'],
    chat_sender_reordered: ['count==0'],
    chat_complete: ['rate==1'],
    chat_publish_errors: ['count==0'],
    chat_subscribe_errors: ['count==0'],
    chat_presence_mismatch: ['count==0'],
    chat_own_join_missing: ['count==0'],
    chat_leave_missing: ['count==0'],
    chat_rooms_started_incomplete: ['count==0'],
    chat_messages_received: ['count>0'],
  }),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  checkTargets(false);
  const prefix = `${env('NAMESPACE', 'ltchat')}:${runId()}-room`;
  console.log(`chat: ${ROOMS} rooms x ${MEMBERS} members (${prefix}N), one message per member every ` +
    `${MSG_INTERVAL} s for ${DURATION} s (about ${Math.round((ROOMS * MEMBERS) / MSG_INTERVAL)} publishes/s, ` +
    `${Math.round((ROOMS * MEMBERS * MEMBERS) / MSG_INTERVAL)} deliveries/s)`);
  return { prefix };
}

function newMember(room, m) {
  return {
    room, m, client: null, conn: '', subscribed: false, start: 0, last: 0, hasOffsets: false,
    seen: new BitSet(256), count: 0, senders: {}, ownJoin: false, leaves: {}, seq: 0,
    inFlight: false, timer: null,
  };
}

function onFrame(mb, f, at) {
  const room = mb.room;
  if (f.channel !== room.channel) return;
  if (f.type === 'join') {
    joins.add(1);
    if (f.conn === mb.conn && !mb.ownJoin) {
      mb.ownJoin = true;
      room.joined++;
      maybeStart(room);
    }
    return;
  }
  if (f.type === 'leave') {
    mb.leaves[f.conn] = true;
    return;
  }
  if (f.type !== 'message' || !f.data || f.data.k !== 'c') return;
  const d = f.data;
  received.add(1);
  mb.count++;
  latency.add(at - d.t);
  if (f.offset !== undefined) {
    mb.hasOffsets = true;
    if (!mb.seen.add(f.offset)) duplicates.add(1);
    else if (f.offset < mb.last) outOfOrder.add(1);
    else if (f.offset > mb.last + 1) gaps.add(1);
    if (f.offset > mb.last) mb.last = f.offset;
  }
  const prev = mb.senders[d.f];
  if (prev !== undefined && d.s <= prev) senderReordered.add(1);
  if (prev === undefined || d.s > prev) mb.senders[d.f] = d.s;
}

function publishOnce(mb, pad) {
  const c = mb.client;
  if (mb.inFlight || !c || !c.open) return;
  mb.inFlight = true;
  const room = mb.room;
  const sent = Date.now();
  const d = { k: 'c', f: mb.m, s: mb.seq++, t: sent, text: pad };
  c.cmd({ type: 'publish', channel: room.channel, data: d }, (r, at) => {
    mb.inFlight = false;
    if (r.type !== 'published') {
      publishErrors.add(1, { code: String(r.code) });
      return;
    }
    ackTime.add(at - sent);
    published.add(1);
    room.acked++;
    if (r.offset !== undefined && r.offset > room.maxOffset) room.maxOffset = r.offset;
  });
}

// A room starts when every member is subscribed and has seen its own join: the node records
// presence before it sends the join, so from then on presence must list every member.
// (The `subscribed` reply alone is not enough: it may go out before the presence entry.)
function maybeStart(room) {
  if (room.subscribed === MEMBERS && room.joined === MEMBERS) startRoom(room);
}

// All members in (or START_TIMEOUT passed): check presence, then chat for DURATION.
function startRoom(room) {
  const pad = room.pad;
  if (room.started) return;
  room.started = true;
  if (room.subscribed < MEMBERS) roomsStartedLate.add(1);
  checkPresence(room, room.members, () => {
    for (const mb of room.members) {
      setTimeout(() => {
        publishOnce(mb, pad);
        mb.timer = setInterval(() => publishOnce(mb, pad), MSG_INTERVAL * 1000);
      }, Math.random() * MSG_INTERVAL * 1000);
    }
    setTimeout(() => {
      for (const mb of room.members) if (mb.timer) clearInterval(mb.timer);
      setTimeout(() => finishRoom(room), GRACE * 1000);
    }, DURATION * 1000);
  });
}

// Asks the first open member for the room's presence and compares it with `expected`.
function checkPresence(room, expected, then) {
  const asker = room.members.find((mb) => mb.client && mb.client.open && expected.includes(mb));
  if (!asker) {
    then();
    return;
  }
  const sent = Date.now();
  asker.client.cmd({ type: 'presence', channel: room.channel }, (r, at) => {
    presenceTime.add(at - sent);
    const got = (r.members || []).map((x) => x.conn).sort().join(',');
    const want = expected.filter((mb) => mb.subscribed).map((mb) => mb.conn).sort().join(',');
    if (r.type !== 'presence' || got !== want) {
      presenceMismatch.add(1);
      if (__ENV.VERBOSE) console.warn(`presence ${room.channel}: got [${got}] want [${want}]`);
    }
    then();
  });
}

// Tallies every member, then checks leave and presence as the last member unsubscribes.
function finishRoom(room) {
  if (room.finished) return;
  room.finished = true;
  for (const mb of room.members) {
    let missing;
    if (!mb.subscribed) missing = room.acked;
    else if (mb.hasOffsets || room.maxOffset > 0) missing = mb.seen.missing(mb.start + 1, room.maxOffset);
    else missing = Math.max(0, room.acked - mb.count);
    lost.add(missing);
    if (mb.subscribed && !mb.ownJoin) ownJoinMissing.add(1);
    complete.add(mb.subscribed && missing === 0 && mb.ownJoin);
  }
  const leaver = room.members[MEMBERS - 1];
  const stay = room.members.filter((mb) => mb !== leaver);
  const closeAll = () => room.members.forEach((mb) => mb.client && mb.client.close());
  if (!leaver.client || !leaver.client.open) {
    closeAll();
    return;
  }
  leaver.client.cmd({ type: 'unsubscribe', channel: room.channel }, () => {
    setTimeout(() => {
      for (const mb of stay) if (mb.subscribed && mb.client.open && !mb.leaves[leaver.conn]) leaveMissing.add(1);
      checkPresence(room, stay, closeAll);
    }, LEAVE_WAIT_MS);
  });
}

export function rooms(data) {
  const v = exec.scenario.iterationInTest;
  const pad = padding(PAYLOAD_BYTES);
  const mine = [];
  [lost, gaps, duplicates, outOfOrder, senderReordered, publishErrors, subscribeErrors,
    presenceMismatch, ownJoinMissing, leaveMissing, roomsStartedLate].forEach((c) => c.add(0));

  for (let r = v * ROOMS_PER_VU; r < Math.min(ROOMS, (v + 1) * ROOMS_PER_VU); r++) {
    const room = {
      r, channel: `${data.prefix}${r}`, members: [], subscribed: 0, started: false,
      finished: false, acked: 0, maxOffset: 0, joined: 0, pad,
    };
    mine.push(room);
    for (let m = 0; m < MEMBERS; m++) {
      const mb = newMember(room, m);
      room.members.push(mb);
      const g = r * MEMBERS + m;
      setTimeout(() => {
        mb.client = new Client(wsUrl(g), {
          welcome: (c, w) => {
            mb.conn = w.conn;
            c.cmd({ type: 'subscribe', channel: room.channel }, (s) => {
              if (s.type !== 'subscribed') {
                subscribeErrors.add(1);
                return;
              }
              mb.subscribed = true;
              mb.start = s.offset || 0;
              mb.last = mb.start;
              room.subscribed++;
              maybeStart(room);
            });
          },
          frame: (c, f, at) => onFrame(mb, f, at),
        });
      }, (g / (ROOMS * MEMBERS)) * RAMP * 1000);
    }
  }

  // Rooms whose members did not all subscribe start anyway after START_TIMEOUT (and fail
  // chat_rooms_started_incomplete); a hard deadline closes whatever is left.
  const t0 = Date.now();
  const watchdog = setInterval(() => {
    const age = Date.now() - t0;
    let open = 0;
    for (const room of mine) {
      if (!room.started && age > (RAMP + START_TIMEOUT) * 1000) startRoom(room);
      if (age > DEADLINE_S * 1000) {
        finishRoom(room);
        room.members.forEach((mb) => mb.client && mb.client.close());
      }
      if (room.members.some((mb) => mb.client && !mb.client.closed)) open++;
    }
    if (open === 0 && mine.every((room) => room.finished)) clearInterval(watchdog);
  }, 500);
}
