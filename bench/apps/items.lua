-- wrk script: GET /items/{id}, cycling through ids 1..10000 in a fixed scrambled order.
local n = 0

request = function()
  n = n + 1
  local id = (n * 7919) % 10000 + 1
  return wrk.format("GET", "/items/" .. id)
end
