-- wrk: GET /kv/?key= over the 10k-key space the PUT run filled.
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", "/kv/?key=k" .. math.random(0, 9999))
end
