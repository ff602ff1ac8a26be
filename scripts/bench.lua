-- wrk script for make bench: every request is for a random user of the seeded set.
-- Arguments (after --): a file of "user_id token task_id etag" lines, and the operation:
-- list, list-304 (If-None-Match with the list's current ETag), get, toggle, update (a new
-- title), create, or create-key (with a fresh Idempotency-Key each time).
local users, op, sent = {}, "list", 0

function init(args)
  for line in io.lines(args[1]) do
    local id, token, task, etag = line:match("^(%S+) (%S+) (%S+) (%S+)$")
    users[#users + 1] = { id = id, auth = "Bearer " .. token, task = task, etag = etag }
  end
  op = args[2]
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
end

function request()
  local u = users[math.random(#users)]
  local headers = { ["Authorization"] = u.auth }
  local base = "/api/" .. u.id .. "/tasks"
  if op == "list" then
    return wrk.format("GET", base, headers)
  elseif op == "list-304" then
    headers["If-None-Match"] = u.etag
    return wrk.format("GET", base, headers)
  elseif op == "get" then
    return wrk.format("GET", base .. "/" .. u.task, headers)
  elseif op == "toggle" then
    return wrk.format("PATCH", base .. "/" .. u.task .. "/complete", headers)
  end
  headers["Content-Type"] = "application/json"
  if op == "update" then
    return wrk.format("PUT", base .. "/" .. u.task, headers, '{"title":"bench update"}')
  end
  if op == "create-key" then
    sent = sent + 1
    headers["Idempotency-Key"] = string.format("bench-%d-%d", sent, math.random(1000000000))
  end
  return wrk.format("POST", base, headers, '{"title":"bench create"}')
end
