-- wrk script: POST the CUSDEC envelope with a unique MessageId per request.
-- The suite passes the body halves around the id through the environment
-- (BENCH_PRE_FILE / BENCH_POST_FILE) and a run id (BENCH_RUN_ID); each wrk thread
-- numbers its own requests, so ids are unique across threads and runs.
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local pre = slurp(os.getenv("BENCH_PRE_FILE"))
local post = slurp(os.getenv("BENCH_POST_FILE"))
local run_id = os.getenv("BENCH_RUN_ID") or "wrk"
local token = os.getenv("BENCH_TOKEN")
local counter = 0
local thread_no = 0
local threads = {}

function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/xml"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  counter = counter + 1
  return wrk.format(nil, "/v1/messages", nil, pre .. run_id .. "-" .. tid .. "-" .. counter .. post)
end
