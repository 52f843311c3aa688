-- _fs_streams.lua: fs.createReadStream and fs.createWriteStream (Node's shapes) on luv's
-- fs calls. One read or write is in flight per stream; backpressure is Node's: a read
-- stream piped into a destination pauses when dest:write() returns false and resumes on its
-- 'drain'; a write stream's write() returns false once highWaterMark bytes are queued and
-- emits 'drain' when the queue is written.
local class = require('_class')
local events = require('events')
local stream = require('_stream')

return function(fs, util)
  local uv, fsError, checkPath = util.uv, util.fsError, util.checkPath

  -- createReadStream/createWriteStream's (path, opts) checks; errors point at their caller.
  local function streamOpts(path, opts)
    if opts == nil or type(opts) == 'string' then
      opts = {}
    elseif type(opts) ~= 'table' then
      error('ERR_INVALID_ARG_TYPE: the "options" argument must be a table, got ' .. type(opts), 3)
    end
    if not opts.fd then
      checkPath(path, 'path', 3)
    end
    return opts
  end

  -- Takes the stream's fd (nil once closed) and returns the closer for stream.closed.
  local function closeFd(self)
    local fd = self.fd
    self.fd = nil
    if fd then
      return function(done)
        uv.fs_close(fd, function()
          done()
        end)
      end
    end
  end

  -- destroy([err]) (also close) of both streams: closes the file; 'error'(err) when given,
  -- then 'close'.
  local function destroy(self, err)
    if self.destroyed then
      return self
    end
    self.destroyed = true
    stream.closed(self, err, closeFd(self))
    return self
  end

  -- Opens path for a stream unless opts.fd is given; then 'open'(fd), 'ready' and start(self).
  local function openFor(self, path, opts, flags, start)
    if opts.fd then
      self.fd = opts.fd
      return
    end
    uv.fs_open(path, opts.flags or flags, opts.mode or 438, function(err, fd)
      if err then
        return self:destroy(fsError(err, 'fs_open', path))
      end
      if self.destroyed then
        uv.fs_close(fd, function() end)
        return
      end
      self.fd = fd
      self:emit('open', fd)
      self:emit('ready')
      start(self)
    end)
  end

  ---------------------------------------------------------------------------------------------
  -- ReadStream: events 'open'(fd), 'ready', 'data'(chunk), 'end', 'error'(err), 'close'.
  -- It flows once a 'data' listener is added (or pipe/resume is called) unless paused.

  local ReadStream = class(events.Emitter)
  fs.ReadStream = ReadStream

  function ReadStream:_init(path, opts)
    self.path = path
    self.bytesRead = 0
    self._hwm = opts.highWaterMark or 65536
    self._pos = opts.start or 0
    self._last = opts['end'] -- inclusive, as Node's
    self._paused = true
    self._reading = false
    self.destroyed = false
    self.readableEnded = false
    stream.autoFlow(self)
    openFor(self, path, opts, 'r', function()
      self:_read()
    end)
  end

  function ReadStream:_read()
    if self._paused or self._reading or self.destroyed or self.readableEnded or not self.fd then
      return
    end
    local want = self._hwm
    if self._last then
      want = math.min(want, self._last - self._pos + 1)
    end
    if want <= 0 then
      return self:_end()
    end
    self._reading = true
    uv.fs_read(self.fd, want, self._pos, function(err, data)
      self._reading = false
      if self.destroyed then
        return
      end
      if err then
        return self:destroy(fsError(err, 'fs_read', self.path))
      end
      if data == nil or #data == 0 then
        return self:_end()
      end
      self._pos = self._pos + #data
      self.bytesRead = self.bytesRead + #data
      self:emit('data', data)
      self:_read()
    end)
  end

  function ReadStream:_end()
    self.readableEnded = true
    self:emit('end')
    self:destroy()
  end

  function ReadStream:pause()
    self._paused = true
    self._explicitPause = true
    return self
  end

  function ReadStream:resume()
    self._paused = false
    self._explicitPause = false
    self:_read()
    return self
  end

  function ReadStream:isPaused()
    return self._paused
  end

  ReadStream.destroy = destroy
  ReadStream.close = destroy

  -- pipe(dest [, {['end']=false}]) -> dest. dest needs write(chunk) -> boolean, 'drain', and
  -- finish() (or end()); a destination that emits 'close' before the end stops the read.
  function ReadStream:pipe(dest, opts)
    local d = stream.pipe(self, dest, opts, true)
    return d
  end

  function fs.createReadStream(path, opts)
    return ReadStream.new(path, streamOpts(path, opts))
  end

  ---------------------------------------------------------------------------------------------
  -- WriteStream: write(chunk [, cb]) -> false once highWaterMark bytes wait; 'drain' after;
  -- finish([chunk] [, cb]) (also ['end']) then 'finish' and 'close'; 'error'(err).

  local WriteStream = class(events.Emitter)
  fs.WriteStream = WriteStream

  function WriteStream:_init(path, opts)
    self.path = path
    self.bytesWritten = 0
    self.writableLength = 0
    self._hwm = opts.highWaterMark or 16384
    self._pos = opts.start or -1
    self._queue = {}
    self._head = 1
    self._tail = 0
    self._writing = false
    self._needDrain = false
    self._ending = false
    self.destroyed = false
    self.writableFinished = false
    openFor(self, path, opts, 'w', function()
      self:_flush()
    end)
  end

  function WriteStream:_flush()
    if self._writing or self.destroyed or not self.fd then
      return
    end
    local item = self._queue[self._head]
    if item == nil then
      if self._needDrain then
        self._needDrain = false
        self:emit('drain')
      end
      if self._ending then
        self:_close()
      end
      return
    end
    self._writing = true
    uv.fs_write(self.fd, item[1], self._pos, function(err, n)
      self._writing = false
      if self.destroyed then
        return
      end
      if err then
        return self:destroy(fsError(err, 'fs_write', self.path))
      end
      if self._pos >= 0 then
        self._pos = self._pos + n
      end
      self.bytesWritten = self.bytesWritten + n
      self.writableLength = self.writableLength - n
      if n < #item[1] then
        item[1] = item[1]:sub(n + 1)
      else
        self._queue[self._head] = nil
        self._head = self._head + 1
        if item[2] then
          item[2]()
        end
      end
      self:_flush()
    end)
  end

  function WriteStream:write(chunk, cb)
    if self._ending or self.destroyed then
      return stream.writeAfterEnd(cb, function(err)
        self:emit('error', err)
      end)
    end
    if type(chunk) ~= 'string' then
      error('ERR_INVALID_ARG_TYPE: the "chunk" argument must be a string, got ' .. type(chunk), 2)
    end
    if chunk ~= '' then
      self._tail = self._tail + 1
      self._queue[self._tail] = { chunk, cb }
      self.writableLength = self.writableLength + #chunk
      self:_flush()
    elseif cb then
      setImmediate(cb)
    end
    local ok = self.writableLength < self._hwm
    if not ok then
      self._needDrain = true
    end
    return ok
  end

  function WriteStream:finish(chunk, cb)
    cb = stream.finishArgs(self, chunk, cb)
    if cb then
      self:once('finish', cb)
    end
    if not self._ending then
      self._ending = true
      self:_flush()
    end
    return self
  end
  WriteStream['end'] = WriteStream.finish

  function WriteStream:_close()
    if self.destroyed then
      return
    end
    self.destroyed = true
    local fd = self.fd
    self.fd = nil
    uv.fs_close(fd, function()
      self.writableFinished = true
      self:emit('finish')
      self:emit('close')
    end)
  end

  WriteStream.destroy = destroy
  WriteStream.close = destroy

  function fs.createWriteStream(path, opts)
    return WriteStream.new(path, streamOpts(path, opts))
  end
end
