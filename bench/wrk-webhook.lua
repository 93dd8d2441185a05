-- wrk script for bench/run.ts: POST /github-webhook with the same signed body every time
-- and a fresh X-GitHub-Delivery GUID per request (a repeated ID would take the duplicate
-- fast path). Counts responses by status and prints one JSON line at the end.
--
--   wrk -t2 -c32 -d10s -s bench/wrk-webhook.lua http://127.0.0.1:PORT -- <body-file> <signature> <run-nonce> [<path>]
--
-- <path> defaults to /github-webhook (deployq, bare Express); adnanh/webhook serves /hooks/<id>.
--
-- The GUID is <nonce 8 hex>-<thread 4 hex>-4000-8000-<counter 12 hex>: unique within a run
-- without any randomness, and valid for deployq's GUID check.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  table.insert(threads, thread)
end

local head
local body
local counter = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  body = file:read("*a")
  file:close()
  local signature = args[2]
  local nonce = args[3]
  local path = args[4] or "/github-webhook"
  statuses = {}
  head = "POST " .. path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. wrk.port .. "\r\n"
    .. "Content-Type: application/json\r\n"
    .. "User-Agent: GitHub-Hookshot/bench\r\n"
    .. "X-GitHub-Event: push\r\n"
    .. "X-GitHub-Hook-ID: 123456\r\n"
    .. "X-Hub-Signature-256: " .. signature .. "\r\n"
    .. "Content-Length: " .. #body .. "\r\n"
    .. "X-GitHub-Delivery: " .. nonce .. "-" .. string.format("%04x", thread_id) .. "-4000-8000-"
end

function request()
  counter = counter + 1
  return head .. string.format("%012x", counter) .. "\r\n\r\n" .. body
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, n in pairs(s) do
      totals[code] = (totals[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(totals) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  -- wrk does not expose its histogram's counts to Lua: print 1000 quantiles instead
  -- (0.1 % apart), enough to merge several runs' latencies within 0.1 percentile.
  local quantiles = {}
  if summary.requests > 0 then
    for i = 1, 1000 do
      table.insert(quantiles, string.format("%d", latency:percentile(i / 10)))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"max":%d,"mean":%.1f},"statuses":{%s},"quantiles_us":[%s]}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, table.concat(parts, ","), table.concat(quantiles, ",")))
end
