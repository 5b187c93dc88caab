//! The Lua scripts of presence in Redis (see `presence.rs`).
//!
//! Each script touches one key: a channel's presence set, or the index of
//! channels. A script that removes entries (expired ones, unreadable ones, or
//! those of a superseded incarnation) reports each of them, as
//! `{user, user_now_absent, channel_now_empty}` with 1/0 flags, as if they
//! had been removed one at a time in order: only the last removed entry of a
//! user can say that the user is now absent, only the last one that the
//! channel is now empty. Anonymous entries (user `""`) never say the user is
//! absent. Since a script runs atomically, each removal is reported by exactly
//! one caller.

use std::sync::LazyLock;

use redis::Script;

/// Helpers every channel script starts with. KEYS[1] is the channel's set.
const PRELUDE: &str = r#"
local key = KEYS[1]
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function decode(entry)
  local ok, v = pcall(cjson.decode, entry)
  if ok and type(v) == 'table' and type(v.conn) == 'string' then return v end
  return nil
end
local function text(v)
  if type(v) == 'string' then return v end
  return ''
end
local function user_of(entry)
  local v = decode(entry)
  if v then return text(v.user) end
  return ''
end
-- Whether some entry of the set belongs to user (not ''). An entry holds the
-- user as a JSON string, which is the user in quotes unless it has a
-- character JSON escapes: only entries containing that are decoded.
local function has_user(user)
  local plain = not string.find(user, '[%c"\\]')
  local quoted = '"' .. user .. '"'
  for _, e in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if (not plain or string.find(e, quoted, 1, true)) and user_of(e) == user then
      return true
    end
  end
  return false
end
-- Reports entries just removed (see the module docs). kept: an entry removed
-- with them whose removal the caller reports itself, after them. A few
-- users are looked up one by one; many at once, by decoding the set once.
local function report(gone, kept)
  local out = {}
  if #gone == 0 then return out end
  local users, last, distinct = {}, {}, {}
  for i, e in ipairs(gone) do
    local u = user_of(e)
    users[i] = u
    if u ~= '' and not last[u] then distinct[#distinct + 1] = u end
    last[u] = i
  end
  local kept_user = nil
  if kept then kept_user = user_of(kept) end
  local present = {}
  if #distinct <= 8 then
    for _, u in ipairs(distinct) do
      if u == kept_user or has_user(u) then present[u] = true end
    end
  else
    for _, e in ipairs(redis.call('ZRANGE', key, 0, -1)) do present[user_of(e)] = true end
    if kept_user then present[kept_user] = true end
  end
  local empty = (not kept) and redis.call('ZCARD', key) == 0
  for i, u in ipairs(users) do
    local absent, vacated = 0, 0
    if u ~= '' and not present[u] and last[u] == i then absent = 1 end
    if empty and i == #gone then vacated = 1 end
    out[i] = {u, absent, vacated}
  end
  return out
end
-- Removes the entries that expired before now and reports them, except kept
-- (removed too when expired, but reported by the caller). Returns the
-- report and whether kept was among them.
local function purge(now, kept)
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. now)
  if #gone == 0 then return {}, false end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. now)
  local others, mine = {}, false
  for _, e in ipairs(gone) do
    if e == kept then mine = true else others[#others + 1] = e end
  end
  if mine then return report(others, kept), true end
  return report(others, nil), false
end
"#;

/// Builds a channel script: the prelude, then its body.
fn channel_script(body: &str) -> Script {
    Script::new(&[PRELUDE, body].concat())
}

/// Adds an entry and says what that changed.
///
/// ARGV: entry ttl ms, key ttl ms, the entry, its user (`""`: anonymous, or
/// the caller does not ask; finding a user's other entries costs a pass over
/// the set), the entry of the same connection it replaces (`""`: none).
/// Returns `{channel_was_empty, user_was_absent, expires, departed}`.
pub(super) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    channel_script(
        r#"
local now = clock()
local departed = purge(now, nil)
local entry, user, old = ARGV[3], ARGV[4], ARGV[5]
local was_empty, absent = 0, 0
if redis.call('ZCARD', key) == 0 then was_empty = 1 end
if user ~= '' and not has_user(user) then absent = 1 end
if old ~= '' and old ~= entry then redis.call('ZREM', key, old) end
local expires = now + tonumber(ARGV[1])
redis.call('ZADD', key, expires, entry)
redis.call('PEXPIRE', key, ARGV[2])
return {was_empty, absent, expires, departed}
"#,
    )
});

/// Removes an entry and says what that changed.
///
/// ARGV: the entry, its user (`""` as for [`JOIN`]). Returns `{removed,
/// user_now_absent, channel_now_empty, departed}`; `removed` is 0 when the
/// entry was not there (then the flags are 0).
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    channel_script(
        r#"
local entry, user = ARGV[1], ARGV[2]
local departed, mine = purge(clock(), entry)
if not mine and redis.call('ZREM', key, entry) == 0 then
  return {0, 0, 0, departed}
end
local absent, empty = 0, 0
if user ~= '' and not has_user(user) then absent = 1 end
if redis.call('ZCARD', key) == 0 then empty = 1 end
return {1, absent, empty, departed}
"#,
    )
});

/// Removes the expired entries and reports them.
///
/// Returns `{departed, latest}`: `latest` is the latest expiry left in the
/// set, 0 when it is empty.
pub(super) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    channel_script(
        r#"
local departed = purge(clock(), nil)
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local latest = 0
if #top == 2 then latest = tonumber(top[2]) end
return {departed, latest}
"#,
    )
});

/// Removes the expired entries and reads the channel.
///
/// Returns `{now, departed, {entry...}}`. The entries are judged (and
/// counted) by the caller: decoding them here would hold Redis for the whole set.
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| {
    channel_script(
        r#"
local now = clock()
local departed = purge(now, nil)
return {now, departed, redis.call('ZRANGE', key, 0, -1)}
"#,
    )
});

/// Removes the given entries (unreadable ones, or those of superseded
/// incarnations) and reports those that were still there.
///
/// ARGV: the entries. Returns `departed`.
pub(super) static DROP: LazyLock<Script> = LazyLock::new(|| {
    channel_script(
        r#"
local gone = {}
for _, e in ipairs(ARGV) do
  if redis.call('ZREM', key, e) == 1 then gone[#gone + 1] = e end
end
return report(gone, nil)
"#,
    )
});

/// The channels of the index whose hint has passed: no node refreshes their
/// members any more.
///
/// KEYS: the index. ARGV: the most channels to return. Returns `{now, {channel...}}`.
pub(super) static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, ARGV[1])}
"#,
    )
});

/// Takes channels found empty out of the index, unless their hint moved past
/// `now` meanwhile (a node joined them since).
///
/// KEYS: the index. ARGV: `now` (ms, Redis clock, read before the channels
/// were found empty), then the channels. Returns how many were removed.
pub(super) static UNINDEX: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < now then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"#,
    )
});
