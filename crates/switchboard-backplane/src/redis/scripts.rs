//! The Lua scripts that make history atomic in Redis.
//!
//! A channel's history is a list of full envelopes (`PREFIX:hist:{C}`) and a
//! hash (`PREFIX:meta:{C}`) with its `epoch` and newest `offset`; both expire
//! `history_ttl` after the last publish. Each script runs atomically, so the
//! offset assignment, the append and the PUBLISH are one step: offset order is
//! the order in which every node receives the messages.

use std::sync::LazyLock;

use redis::Script;

/// Publishes with history.
///
/// KEYS: meta, history. ARGV: pub/sub channel, envelope bytes (without offset
/// and epoch), history size, ttl seconds, a fresh epoch for a new history.
/// The offset (field 7, varint) and epoch (field 8, bytes) are appended to the
/// encoded envelope: in protobuf a later field value wins, so the stored and
/// published bytes decode with them. Returns `{offset, epoch}`.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = math.floor(n / 128)
    if n > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
local full = ARGV[2] .. '\56' .. varint(offset) .. '\66' .. varint(#epoch) .. epoch
redis.call('RPUSH', KEYS[2], full)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], full)
return {offset, epoch}
"#,
    )
});

/// Reads a history position and messages, creating nothing.
///
/// KEYS: meta, history. ARGV: `after` (-1: all, -2: none, else the offset to
/// read after), the most messages to return (the oldest ones of the range).
/// Returns `{epoch, offset, first, {envelope...}}`; a channel without history
/// (never published, expired, or lost) reads as epoch `""`, offset 0, first 1.
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return {'', 0, 1, {}}
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local len = redis.call('LLEN', KEYS[2])
local first = offset - len + 1
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local items = {}
if after ~= -2 then
  local start = 0
  if after >= first then start = after - first + 1 end
  if start < len then items = redis.call('LRANGE', KEYS[2], start, start + limit - 1) end
end
return {epoch, offset, first, items}
"#,
    )
});
