-- wrk: PUT /kv/ with 100-byte values over a key space of KEYS keys
-- (default 10,000) named PREFIX..n (default "k").
local value = string.rep("x", 98) -- a JSON string of 100 bytes with its quotes
local keys = tonumber(os.getenv("KEYS") or "10000")
local prefix = os.getenv("PREFIX") or "k"
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local key = prefix .. math.random(0, keys - 1)
  local body = '{"key":"' .. key .. '","value":"' .. value .. '"}'
  return wrk.format("PUT", "/kv/", { ["Content-Type"] = "application/json" }, body)
end
