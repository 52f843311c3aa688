-- _logs.lua: worker and agent output under the built-in master. Each process's stdout and
-- stderr are pipes the master reads (cluster silent mode); the master cuts them into whole
-- lines and writes each line, prefixed with the process's slot and pid ([w2 4312] ...,
-- [agent 4309] ...) or as one JSON object, with one write per chunk read. Only the master
-- writes to its stdout/stderr or the log file, so lines never interleave; a worker's exit is
-- reported only after both of its pipes reached EOF, so nothing it wrote before it died is
-- lost or reported after its exit.
local ffi = require('ffi')
local core = require('_core')
local cjson = require('cjson')

ffi.cdef([[
int open(const char *path, int flags, int mode);
int close(int fd);
char *strerror(int errnum);
struct lc_timeval { long tv_sec; long tv_usec; };
int gettimeofday(struct lc_timeval *tv, void *tz);
]])

local O_WRONLY, O_CREAT, O_APPEND, O_CLOEXEC = 1, 0x40, 0x400, 0x80000
-- A line longer than this without a newline is written in pieces of this size, each tagged,
-- so a process that never ends its line cannot make the master buffer without bound.
local MAX_LINE = 1024 * 1024
-- How long a dead process's pipes may stay open (a child of its own holding them) before
-- its exit is reported anyway.
local DRAIN_MS = 1000

local M = {}

local tv = ffi.new('struct lc_timeval')
local function isoTime()
  ffi.C.gettimeofday(tv, nil)
  local sec = tonumber(tv.tv_sec)
  return os.date('!%Y-%m-%dT%H:%M:%S', sec) .. ('.%03dZ'):format(math.floor(tonumber(tv.tv_usec) / 1000))
end

-- opts: file (append there instead of stdout/stderr), format ('text' | 'json').
-- Returns the logger: {reopen=fn, attach=fn(worker)}.
function M.new(opts)
  local self = { file = opts.file, json = opts.format == 'json', fd = nil }

  -- Opens (or reopens, for logrotate) the log file. Returns nil, err on failure.
  function self.reopen()
    if not self.file then
      return true
    end
    local fd = ffi.C.open(self.file, O_WRONLY + O_CREAT + O_APPEND + O_CLOEXEC, 420) -- 0644
    if fd < 0 then
      return nil, ('EIO: cannot open log file %s: %s'):format(self.file, ffi.string(ffi.C.strerror(ffi.errno())))
    end
    if self.fd then
      ffi.C.close(self.fd)
    end
    self.fd = fd
    return true
  end

  local function sink(stream)
    if self.fd then
      return self.fd
    end
    return stream == 'stderr' and 2 or 1
  end

  local function tag(w)
    if w.isAgent then
      return 'agent'
    end
    return 'w' .. tostring(w._slot or w.id)
  end

  -- Writes the lines (a list of strings without their newline) from one process's stream.
  local function emit(w, stream, lines)
    local out = {}
    if self.json then
      local proc, pid, time = tag(w), w.process.pid, isoTime()
      for i, l in ipairs(lines) do
        out[i] = cjson.encode({ time = time, proc = proc, pid = pid, stream = stream, msg = l })
      end
    else
      local prefix = ('[%s %d] '):format(tag(w), w.process.pid)
      for i, l in ipairs(lines) do
        out[i] = prefix .. l
      end
    end
    out[#out + 1] = ''
    core.write(sink(stream), table.concat(out, '\n'))
  end

  local function follow(w, stream, out, onEnd)
    local rest = ''
    out:on('data', function(d)
      local s = rest .. d
      local lines, pos = {}, 1
      while true do
        local nl = s:find('\n', pos, true)
        if not nl then
          break
        end
        lines[#lines + 1] = s:sub(pos, nl - 1)
        pos = nl + 1
      end
      rest = s:sub(pos)
      while #rest > MAX_LINE do
        lines[#lines + 1] = rest:sub(1, MAX_LINE)
        rest = rest:sub(MAX_LINE + 1)
      end
      if #lines > 0 then
        emit(w, stream, lines)
      end
    end)
    out:on('end', function()
      -- A last line without its newline (a crash mid-line) is still a line.
      if #rest > 0 then
        emit(w, stream, { rest })
        rest = ''
      end
      onEnd()
    end)
  end

  -- Called for every process the master forks (workers and the agent), before the loop
  -- reads their pipes.
  function self.attach(w)
    local open = 0
    local waiting
    local function ended()
      open = open - 1
      if open == 0 and waiting then
        local resume = waiting
        waiting = nil
        resume()
      end
    end
    for _, stream in ipairs({ 'stdout', 'stderr' }) do
      local out = w.process[stream]
      if out and out.readable then
        open = open + 1
        follow(w, stream, out, ended)
      end
    end
    -- _cluster_primary asks before it reports the exit: wait for EOF on both pipes.
    w._holdExit = function(resume)
      if open == 0 then
        return resume()
      end
      local t
      waiting = function()
        clearTimeout(t)
        resume()
      end
      t = setTimeout(function()
        if waiting then
          waiting = nil
          resume()
        end
      end, DRAIN_MS)
    end
  end

  return self
end

return M
