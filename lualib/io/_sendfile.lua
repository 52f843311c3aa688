-- _sendfile.lua: res:sendFile(path [, fn(err)]) for http's ServerResponse. The file goes to
-- the socket with sendfile(2) when nothing
-- transforms the body: the response is the connection's active one, its head is not written
-- yet (Content-Length is set here, so no chunked framing) and the head left the write queue
-- at once. Otherwise the file is streamed (fs.createReadStream():pipe(res)), which honours
-- backpressure the same way.
--
-- sendfile(2) is called here, through the FFI, on the loop thread with the non-blocking
-- socket: each call copies what the socket buffer takes (page cache to socket, no copy
-- through Lua) and returns at once; EAGAIN waits for writability with a uv_poll. libuv's
-- uv_fs_sendfile is not used: in libuv 1.44 (Debian 12) it tries copy_file_range first, which
-- fails with EINVAL for a socket, and then falls back to pread+write in the thread pool,
-- blocking a pool thread in poll() while a slow client drains (strace shows it).
-- A file not in the page cache makes a call wait for the disk; posix_fadvise(WILLNEED) at the
-- start asks the kernel to read ahead.
--
-- The socket's descriptor is dup()ed for the transfer, so the uv_poll has a descriptor of its
-- own (libuv watches one handle per descriptor number) and the connection's handle closing
-- mid-transfer never leaves us with a number the process reused.
local ffi = require('ffi')
local uv = require('luv')
local fs = require('fs')
local HANDLE = require('net')._SOCK_HANDLE -- a socket's handle (`socket._handle`)

pcall(ffi.cdef, [[
int dup(int oldfd);
int close(int fd);
int64_t sendfile(int out_fd, int in_fd, int64_t *offset, size_t count);
int posix_fadvise(int fd, int64_t offset, int64_t len, int advice);
]])
local C = ffi.C
local EAGAIN, EINTR, POSIX_FADV_WILLNEED = 11, 4, 3
local CHUNK = 1048576 -- at most this much per call, so one call never holds the loop long

local function fail(res, fn, err)
  if fn then
    return fn(err)
  end
  if not res.headersSent then
    res.statusCode = err.code == 'ENOENT' and 404 or (err.code == 'EISDIR' and 403 or 500)
    res:finish()
  else
    res:destroy(err)
  end
end

local function streamFile(res, path, fd, fn)
  local rs = fs.createReadStream(path, { fd = fd })
  rs:on('error', function(err)
    fail(res, fn, err)
  end)
  if fn then
    rs:on('end', function()
      fn(nil)
    end)
  end
  rs:pipe(res)
end

-- Sends `size` bytes of file descriptor `fd` over the connection with sendfile(2).
local function sendfile(res, fd, size, fn)
  local conn = res._conn
  local sock = C.dup(res.socket[HANDLE]:fileno())
  if sock < 0 then
    return false
  end
  local poll = uv.new_poll(sock)
  local off = ffi.new('int64_t[1]', 0)
  C.posix_fadvise(fd, 0, size, POSIX_FADV_WILLNEED)
  local function done(err)
    uv.fs_close(fd, function() end)
    poll:close(function()
      C.close(sock)
    end)
    if err then
      if fn then
        fn(err)
      end
      return conn:_destroy(err)
    end
    res:finish()
    if fn then
      fn(nil)
    end
  end
  local pump
  local function onWritable(err)
    poll:stop()
    if err then
      return done(fs._error(err, 'fs_sendfile'))
    end
    pump()
  end
  pump = function()
    local h = res.socket[HANDLE]
    if conn:_isClosing() or not h or h:is_closing() then
      return done(nil)
    end
    while true do
      local left = size - tonumber(off[0])
      if left <= 0 then
        return done(nil)
      end
      local n = C.sendfile(sock, fd, off, left < CHUNK and left or CHUNK)
      if n < 0 then
        local e = ffi.errno()
        if e == EAGAIN then
          return poll:start('w', onWritable)
        elseif e ~= EINTR then
          local name, msg = uv.translate_sys_error(e)
          return done(fs._error(tostring(name) .. ': ' .. tostring(msg or name), 'fs_sendfile'))
        end
      elseif n == 0 then
        return done(nil) -- the file shrank
      elseif n < CHUNK then
        -- The socket buffer is full (or the file ended): wait for writability rather than
        -- spinning on EAGAIN.
        if tonumber(off[0]) < size then
          return poll:start('w', onWritable)
        end
      end
    end
  end
  pump()
  return true
end

return function(res, path, fn)
  if type(path) ~= 'string' then
    error('ERR_INVALID_ARG_TYPE: the "path" argument must be a string, got ' .. type(path), 3)
  end
  if fn ~= nil and type(fn) ~= 'function' then
    error('ERR_INVALID_ARG_TYPE: the "callback" argument must be a function, got ' .. type(fn), 3)
  end
  fs.open(path, 'r', function(err, fd)
    if err then
      return fail(res, fn, err)
    end
    fs.fstat(fd, function(serr, st)
      if serr or not st:isFile() then
        uv.fs_close(fd, function() end)
        return fail(res, fn, serr or fs._error('EISDIR: illegal operation on a directory', 'fs_open', path))
      end
      if res.finished then
        uv.fs_close(fd, function() end)
        return fn and fn(nil)
      end
      if res.headersSent or res._headWritten then
        return streamFile(res, path, fd, fn)
      end
      res:setHeader('Content-Length', tostring(st.size))
      local h = res.socket[HANDLE]
      -- A TLS connection's handle is a Lua table (tls.lua): its bytes must be encrypted, so
      -- the file is streamed through it.
      local plain = res:_isActive() and not res._head and res.statusCode ~= 204 and res.statusCode ~= 304
        and h and type(h) ~= 'table' and not h:is_closing()
      if not plain or st.size == 0 then
        if res._head or st.size == 0 then
          uv.fs_close(fd, function() end)
          res:finish()
          return fn and fn(nil)
        end
        return streamFile(res, path, fd, fn)
      end
      res:_sendHead(nil, false)
      if h:write_queue_size() > 0 or not sendfile(res, fd, st.size, fn) then
        return streamFile(res, path, fd, fn)
      end
    end)
  end)
  return res
end
