-- wrk: PUT /kv/ with 100-byte values over a 10k-key space.
local value = string.rep("x", 98) -- a JSON string of 100 bytes with its quotes
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local key = "k" .. math.random(0, 9999)
  local body = '{"key":"' .. key .. '","value":"' .. value .. '"}'
  return wrk.format("PUT", "/kv/", { ["Content-Type"] = "application/json" }, body)
end
