-- _stream.lua: the pieces that fs's file streams (_fs_streams.lua) and child_process's pipe
-- streams share: Node's auto-flow on a 'data' listener, pipe() with backpressure, write
-- after end, finish()'s arguments and destroy()'s 'error'-then-'close'. Each stream keeps its
-- own reading and writing (a file offset or a pipe), so only these shapes live here.
local events = require('events')

local M = {}

-- A readable flows once a 'data' listener is added, unless pause() was called: resume() on
-- the next turn, so listeners added in the same turn all see the first chunk.
function M.autoFlow(self)
  self:on('newListener', function(ev)
    if ev == 'data' and self:isPaused() and not self._explicitPause then
      setImmediate(function()
        if not self._explicitPause and self:isPaused() then
          self:resume()
        end
      end)
    end
  end)
end

-- pipe(src, dest [, {['end']=false}] [, stopOnClose]) -> dest: src pauses while
-- dest:write() returns false and resumes on dest's 'drain'; dest:finish() (or end()) on src's
-- 'end'. With stopOnClose, a dest that emits 'close' before src's end destroys src.
function M.pipe(src, dest, opts, stopOnClose)
  if type(dest) ~= 'table' or type(dest.write) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: pipe needs a writable destination', 3)
  end
  local waiting = false
  src:on('data', function(chunk)
    if dest:write(chunk) == false and not waiting then
      waiting = true
      src:pause()
      dest:once('drain', function()
        waiting = false
        src:resume()
      end)
    end
  end)
  if not (opts and opts['end'] == false) then
    src:once('end', function()
      local fin = dest.finish or dest['end']
      fin(dest)
    end)
  end
  if stopOnClose and dest.once then
    dest:once('close', function()
      if not src.readableEnded then
        src:destroy()
      end
    end)
  end
  src:resume()
  return dest
end

-- A write after finish() or destroy(): cb(err) and report(err) on the next turn; write()
-- returns false.
function M.writeAfterEnd(cb, report)
  local err = events.makeError('ERR_STREAM_WRITE_AFTER_END', 'write after end')
  setImmediate(function()
    if cb then
      cb(err)
    end
    report(err)
  end)
  return false
end

-- finish([chunk] [, cb]) -> cb: writes a last non-empty chunk first.
function M.finishArgs(self, chunk, cb)
  if type(chunk) == 'function' then
    chunk, cb = nil, chunk
  end
  if chunk ~= nil and chunk ~= '' then
    self:write(chunk)
  end
  return cb
end

-- destroy's end: 'error'(err) when given, then 'close'. close(fn) releases the handle and
-- calls fn, or is nil when there is nothing to release (then on the next turn).
function M.closed(self, err, close)
  local function done()
    if err then
      self:emit('error', err)
    end
    self:emit('close')
  end
  if close then
    close(done)
  else
    setImmediate(done)
  end
end

return M
