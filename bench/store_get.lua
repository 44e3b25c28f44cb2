-- wrk: GET /kv/?key= over the key space the PUT run filled: KEYS keys
-- (default 10,000) named PREFIX..n (default "k").
local keys = tonumber(os.getenv("KEYS") or "10000")
local prefix = os.getenv("PREFIX") or "k"
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", "/kv/?key=" .. prefix .. math.random(0, keys - 1))
end
