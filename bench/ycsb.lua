-- wrk: a YCSB-style mix of reads and updates, the same for this store and
-- for etcd's JSON gateway, so their figures compare.
--
-- Environment: TARGET=store|etcd, READ_PCT (50: workload A, 95: workload
-- B), KEYS (default 100000; `kN` for N in 0..KEYS-1, all loaded before),
-- 1 KiB values. Keys are chosen zipfian (theta 0.99, as YCSB), with the
-- popular ranks scattered over the key space by a hash (YCSB's
-- ScrambledZipfian), so the hot keys do not share one replica set.
local target = os.getenv("TARGET") or "store"
local read_pct = tonumber(os.getenv("READ_PCT") or "50")
local n = tonumber(os.getenv("KEYS") or "100000")
local theta = 0.99

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for j = 1, 4 do
      if j <= chars then
        local idx = math.floor(v / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = b64chars:sub(idx + 1, idx + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

-- YCSB's zipfian generator over ranks 0..n-1.
local zetan = 0
for i = 1, n do zetan = zetan + 1 / i ^ theta end
local zeta2 = 1 + 1 / 2 ^ theta
local alpha = 1 / (1 - theta)
local eta = (1 - (2 / n) ^ (1 - theta)) / (1 - zeta2 / zetan)
local function zipf_rank()
  local u = math.random()
  local uz = u * zetan
  if uz < 1 then return 0 end
  if uz < 1 + 0.5 ^ theta then return 1 end
  return math.floor(n * (eta * u - eta + 1) ^ alpha)
end

-- The rank's key: a multiplicative hash, a bijection of 0..n-1 as long as
-- the odd multiplier (not a multiple of 5) shares no factor with n;
-- exact in doubles for n up to about 3 million.
local function scatter(rank)
  return (rank * 2654435761 + 12345) % n
end

math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local value = string.rep("x", 1022) -- a JSON string of 1 KiB with its quotes
local value64 = b64(string.rep("x", 1024))
local json = { ["Content-Type"] = "application/json" }
local etcd_keys = {}

request = function()
  local k = scatter(zipf_rank())
  local read = math.random(100) <= read_pct
  if target == "etcd" then
    local key = etcd_keys[k]
    if not key then
      key = b64("k" .. k)
      etcd_keys[k] = key
    end
    if read then
      return wrk.format("POST", "/v3/kv/range", json, '{"key":"' .. key .. '"}')
    end
    return wrk.format("POST", "/v3/kv/put", json, '{"key":"' .. key .. '","value":"' .. value64 .. '"}')
  end
  if read then
    return wrk.format("GET", "/kv/k" .. k)
  end
  return wrk.format("PUT", "/kv/k" .. k, json, '{"value":"' .. value .. '"}')
end
