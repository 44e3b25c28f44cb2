-- wrk: etcd's JSON gateway. ETCD_OP=put (PUT /v3/kv/put) or range
-- (linearizable GET /v3/kv/range), 100-byte values, 10k-key space.
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end
local op = os.getenv("ETCD_OP") or "put"
local value = b64(string.rep("x", 100))
local keys = {}
for i = 0, 9999 do keys[i] = b64("k" .. i) end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local key = keys[math.random(0, 9999)]
  if op == "put" then
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" },
      '{"key":"' .. key .. '","value":"' .. value .. '"}')
  end
  return wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" }, '{"key":"' .. key .. '"}')
end
