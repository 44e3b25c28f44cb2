//! The Lua scripts of the Redis store. Each runs atomically in Redis.
//!
//! A write to a node's data is one step, as Garage's `update_entry_with`:
//! compare versions, store the record if newer, update its hash-tree leaf
//! (`core::merkle`), the record count, the tombstone index (tombstones and
//! expiring values, scored by the time they are deleted) and the key
//! index (a sorted set of every key, score 0, so its members are in byte
//! order for listings). The leaf
//! digest is the first 52 bits of `SHA-1(key \0 version)`, summed modulo
//! 2^52 — exactly `core::merkle::record_digest` and `Leaf::add`; 52-bit
//! numbers keep Lua's double arithmetic exact. The digest of a record being
//! stored comes with it, computed by the node (Rust); only the digest of the
//! record it replaces is computed here (`redis.sha1hex`), since Redis alone
//! knows which one that is.

/// Version order, shared by the apply scripts: numerically on `wall_ms` and
/// `logical`, then byte by byte on the rest (`node\npayload`), which is the
/// order of `Record::cmp` in Rust (`parsed_gt` on two records already
/// matched, `newer` on two that are not). Redis' Lua `<` on strings uses the
/// locale's collation, hence the explicit byte loop. Only the two numbers
/// are captured; the rest is compared in place. A stored record that does
/// not parse (corrupt) is older than anything.
const NEWER: &str = r#"
local function rest_gt(a, i, b, j)
  local na, nb = #a - i + 1, #b - j + 1
  for k = 0, math.min(na, nb) - 1 do
    local x, y = string.byte(a, i + k), string.byte(b, j + k)
    if x ~= y then return x > y end
  end
  return na > nb
end
local function parsed_gt(a, wa, la, ra, b, wb, lb, rb)
  wa, la, wb, lb = tonumber(wa), tonumber(la), tonumber(wb), tonumber(lb)
  if wa ~= wb then return wa > wb end
  if la ~= lb then return la > lb end
  return rest_gt(a, ra, b, rb)
end
local function newer(a, b)
  if a == b then return false end
  local wa, la, ra = string.match(a, "^(%d+):(%d+):()")
  local wb, lb, rb = string.match(b, "^(%d+):(%d+):()")
  if not wb then return true end
  if not wa then return false end
  return parsed_gt(a, wa, la, ra, b, wb, lb, rb)
end
"#;

/// Leaf arithmetic and the deletion time (a tombstone's wall time, an
/// expiring value's expiry: `Record::dead_since`), shared by the data
/// scripts. `parse` reads a record's version line, its two numbers, where
/// the rest of the version (`node`) starts and where the payload starts,
/// in one match (nil for a corrupt record, which is not in the tree, as
/// `core::merkle` skips it); the rest works from that.
const TREE: &str = r#"
local M = 4503599627370496
local function parse(rec)
  return string.match(rec, "^((%d+):(%d+):()[^\n]*)\n()")
end
local function digest_of(key, version)
  return tonumber(string.sub(redis.sha1hex(key .. "\0" .. version), 1, 13), 16)
end
local function dead_since(rec, p)
  local kind = string.byte(rec, p)
  if kind == 84 and #rec == p then return string.match(rec, "^(%d+)") end
  if kind == 69 then return string.match(rec, "^(%d+)\n", p + 1) end
  return nil
end
local function leaf_add(tree, leaves, field, dcount, ddigest)
  local cur = redis.call('HGET', tree, field)
  local count, dig = 0, 0
  if cur then
    local c, d = string.match(cur, "^(%d+):(%d+)$")
    if c then count, dig = tonumber(c), tonumber(d) end
  end
  local was = count
  count = count + dcount
  dig = (dig + ddigest) % M
  if count <= 0 then
    redis.call('HDEL', tree, field)
    if was > 0 then redis.call('ZREM', leaves, field) end
  else
    redis.call('HSET', tree, field, string.format('%d:%d', count, dig))
    if was <= 0 then redis.call('ZADD', leaves, tonumber(field, 16), field) end
  end
end
"#;

/// Apply records to a node's data if newer.
/// KEYS = tree, count, tombstones, non-empty leaves, key index, change log,
/// change-log counter, then one leaf hash per record; ARGV = the change
/// log's length (0: no log), then key, record, leaf field and the record's
/// digest (`core::merkle::record_digest`, decimal) per record. Returns 1
/// (stored) or 0 (unchanged: the local copy is as new or newer) per record,
/// in order; a key repeated in one call is decided against the newest so
/// far. `wins` is [`NEWER`]'s order on records already parsed, so each
/// record is matched once.
///
/// The records stored are appended to the change log together, in entries
/// of at most [`CHANGE_LOG_ENTRY_LEN_MAX`] (key, version) pairs, not one
/// entry per record: one `XADD` per record was about a tenth of PUT
/// throughput. Changes are numbered 1, 2, 3, ... by the counter, and an
/// entry's id is the number of its last change (`n-0`), so a change's
/// position stays one number that orders like the log (see
/// `core::watch::entry_changes`), and trimming to the entries at or above
/// `last - len + 1` (`MINID ~`) keeps about `len` changes whatever the
/// entries' sizes. A counter that is missing (a log written by an older
/// build, which numbered entries by time) starts one above the log's newest
/// id, so numbers only grow and the first new change never looks like the
/// one right after an old position (`core::watch::missed_on_resume`).
const APPLY_DATA: &str = r#"
local function wins(a, va, wa, la, ra, b, vb, wb, lb, rb)
  if not b then return true end
  if a == b then return false end
  if not vb then return true end
  if not va then return false end
  return parsed_gt(a, wa, la, ra, b, wb, lb, rb)
end
local out = {}
local loglen = tonumber(ARGV[1])
local logged = {}
for i = 1, (#ARGV - 1) / 4 do
  local hash = KEYS[7 + i]
  local key, rec, field = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i]
  local cur = redis.call('HGET', hash, key)
  local version, wall, logical, r, p = parse(rec)
  local cur_version, cur_wall, cur_logical, cur_r, cur_p
  if cur then cur_version, cur_wall, cur_logical, cur_r, cur_p = parse(cur) end
  if wins(rec, version, wall, logical, r, cur, cur_version, cur_wall, cur_logical, cur_r) then
    redis.call('HSET', hash, key, rec)
    local new = version and tonumber(ARGV[4 * i + 1]) or 0
    if cur_version then
      leaf_add(KEYS[1], KEYS[4], field, 0, new - digest_of(key, cur_version))
    else
      leaf_add(KEYS[1], KEYS[4], field, 1, new)
      redis.call('INCR', KEYS[2])
      redis.call('ZADD', KEYS[5], 0, key)
    end
    local dead = p and dead_since(rec, p)
    if dead then
      redis.call('ZADD', KEYS[3], dead, key)
    elseif cur_p and dead_since(cur, cur_p) then
      redis.call('ZREM', KEYS[3], key)
    end
    if loglen > 0 and version then
      logged[#logged + 1] = key
      logged[#logged + 1] = version
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #logged > 0 then
  local last = tonumber(redis.call('GET', KEYS[7]))
  if not last then
    local top = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)[1]
    last = top and tonumber(string.match(top[1], '^(%d+)')) + 1 or 0
  end
  local per = ENTRY_LEN_MAX * 2
  for first = 1, #logged, per do
    local entry = {}
    for j = first, math.min(first + per - 1, #logged), 2 do
      entry[#entry + 1] = 'k'
      entry[#entry + 1] = logged[j]
      entry[#entry + 1] = 'v'
      entry[#entry + 1] = logged[j + 1]
    end
    last = last + #entry / 4
    local keep = string.format('%d', math.max(0, last - loglen + 1))
    redis.call('XADD', KEYS[6], 'MINID', '~', keep, string.format('%d-0', last), unpack(entry))
  end
  redis.call('SET', KEYS[7], string.format('%d', last))
end
return out
"#;

/// Remove records from a node's data only if still exactly as given.
/// KEYS and ARGV as [`APPLY_DATA`] (a removal is not logged as a change:
/// only collected tombstones are removed). Returns how many were removed.
const REMOVE_DATA: &str = r#"
local removed = 0
for i = 1, (#ARGV - 1) / 4 do
  local hash = KEYS[7 + i]
  local key, rec, field = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i]
  if redis.call('HGET', hash, key) == rec then
    redis.call('HDEL', hash, key)
    leaf_add(KEYS[1], KEYS[4], field, -1, -(tonumber(ARGV[4 * i + 1]) or 0))
    redis.call('DECR', KEYS[2])
    redis.call('ZREM', KEYS[3], key)
    redis.call('ZREM', KEYS[5], key)
    removed = removed + 1
  end
end
return removed
"#;

/// Apply records to a plain hash (a node's hints for one owner) if newer.
/// KEYS[1] = the hash; ARGV = key1, rec1, key2, rec2, ...
const APPLY_PLAIN: &str = r#"
local out = {}
for i = 1, #ARGV, 2 do
  local key, rec = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', KEYS[1], key)
  if (not cur) or newer(rec, cur) then
    redis.call('HSET', KEYS[1], key, rec)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Remove records from a plain hash only if still exactly as given.
/// KEYS[1] = the hash; ARGV = key1, rec1, ... Returns how many were removed.
pub const REMOVE_PLAIN: &str = r#"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"#;

/// One page of a node's data, leaf after leaf; the next non-empty leaf is
/// found in the sorted set of non-empty leaves, so empty ones cost nothing.
/// KEYS[1] = non-empty leaves; ARGV = data-leaf prefix, first leaf, cursor
/// inside it, records wanted, bytes wanted. Returns {next leaf (65536 =
/// done), cursor inside it, {key1, rec1, ...}}. A page stops at the first
/// HSCAN batch that reaches either bound.
pub const SCAN_DATA: &str = r#"
local leaf, cursor = tonumber(ARGV[2]), ARGV[3]
local want, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
local n, bytes = 0, 0
while leaf < 65536 do
  if cursor == '0' then
    local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], leaf, '+inf', 'LIMIT', 0, 1)
    if #nxt == 0 then
      leaf = 65536
      break
    end
    leaf = tonumber(nxt[1], 16)
  end
  local r = redis.call('HSCAN', ARGV[1] .. string.format('%04x', leaf), cursor, 'COUNT', 16)
  cursor = r[1]
  local items = r[2]
  for j = 1, #items, 2 do
    out[#out + 1] = items[j]
    out[#out + 1] = items[j + 1]
    n = n + 1
    bytes = bytes + #items[j] + #items[j + 1]
  end
  if cursor == '0' then leaf = leaf + 1 end
  if n >= want or bytes >= budget then break end
end
return {leaf, cursor, out}
"#;

/// Set a number key to `ARGV[1]` unless it already holds a larger one.
pub const RAISE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Most (key, version) pairs in one change-log entry; an apply call with
/// more stored records appends several entries. Bounds what one entry costs
/// a reader (see `storage::change_log`).
pub const CHANGE_LOG_ENTRY_LEN_MAX: usize = 16;

pub fn apply_data() -> String {
    format!("local ENTRY_LEN_MAX = {CHANGE_LOG_ENTRY_LEN_MAX}\n{NEWER}{TREE}{APPLY_DATA}")
}

pub fn remove_data() -> String {
    format!("{TREE}{REMOVE_DATA}")
}

pub fn apply_plain() -> String {
    format!("{NEWER}{APPLY_PLAIN}")
}
