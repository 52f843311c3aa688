-- fs.lua: Node's `fs` on luv (the runtime's loop; file work runs in libuv's thread pool).
-- Callbacks are cb(err, ...) with err a table {code=, message=, path=, syscall=} (prints
-- through __tostring); the Sync variants return the result or raise that same table.
-- Compound operations (readFile, mkdir -p, rm -r) are written once as a body that calls
-- `op(name, ...)`: the async driver runs the body in a coroutine and resumes it from each
-- luv callback, the Sync driver calls luv's synchronous form. Streams live in _fs_streams.lua.
local uv = require('luv')
local events = require('events')

local M = {}

local ErrorMeta = events.ErrorMeta
local yield, resume, create, status = coroutine.yield, coroutine.resume, coroutine.create, coroutine.status
local concat = table.concat

-- Which argument of each luv call is the path (or paths) its errors name, and the syscall.
local SYSCALL = {
  fs_open = 'open', fs_close = 'close', fs_read = 'read', fs_write = 'write', fs_stat = 'stat',
  fs_lstat = 'lstat', fs_fstat = 'fstat', fs_scandir = 'scandir', fs_mkdir = 'mkdir', fs_rmdir = 'rmdir',
  fs_unlink = 'unlink', fs_rename = 'rename', fs_ftruncate = 'ftruncate', fs_access = 'access',
  fs_copyfile = 'copyfile', fs_readlink = 'readlink', fs_symlink = 'symlink', fs_realpath = 'realpath',
  fs_chmod = 'chmod', fs_utime = 'utime', fs_mkdtemp = 'mkdtemp', fs_sendfile = 'sendfile',
}
local PATH_ARG = {
  fs_open = 1, fs_stat = 1, fs_lstat = 1, fs_scandir = 1, fs_mkdir = 1, fs_rmdir = 1, fs_unlink = 1,
  fs_rename = 1, fs_access = 1, fs_copyfile = 1, fs_readlink = 1, fs_symlink = 1, fs_realpath = 1,
  fs_chmod = 1, fs_utime = 1, fs_mkdtemp = 1,
}

-- luv's "ENOENT: no such file or directory: /p" -> Node's error table.
local function fsError(msg, name, path, dest)
  msg = tostring(msg)
  local code = msg:match('^([%u%d_]+):') or 'EIO'
  local text = msg:match('^[%u%d_]+: ([^:]*)') or msg
  local syscall = SYSCALL[name] or name
  local e = { code = code, syscall = syscall, path = path, dest = dest }
  if path then
    e.message = ("%s: %s, %s '%s'"):format(code, text, syscall, path)
    if dest then
      e.message = e.message .. (" -> '%s'"):format(dest)
    end
  else
    e.message = ('%s: %s, %s'):format(code, text, syscall)
  end
  return setmetatable(e, ErrorMeta)
end
M._error = fsError

local function argError(msg, level)
  error('ERR_INVALID_ARG_TYPE: ' .. msg, level + 1)
end

local function checkPath(p, name, level)
  if type(p) ~= 'string' then
    argError(('the "%s" argument must be a string, got %s'):format(name or 'path', type(p)), level + 1)
  end
  if p:find('\0', 1, true) then
    error(('ERR_INVALID_ARG_VALUE: the "%s" argument must not contain null bytes'):format(name or 'path'), level + 1)
  end
end

local function checkCb(cb, level)
  if type(cb) ~= 'function' then
    argError('the "callback" argument must be a function, got ' .. type(cb), level + 1)
  end
end

local function checkFd(fd, level)
  if type(fd) ~= 'number' or fd < 0 or fd ~= math.floor(fd) then
    argError('the "fd" argument must be a non-negative integer, got ' .. tostring(fd), level + 1)
  end
end

-- The two ways to run a body: opSync raises, opAsync yields until luv's callback.
local function opSync(name, ...)
  local r, err = uv[name](...)
  if r == nil and err ~= nil then
    local a1, a2 = ...
    error(fsError(err, name, PATH_ARG[name] and a1, name == 'fs_rename' and a2 or nil), 0)
  end
  return r
end

-- The callback of each async body, by coroutine.
local pendingCb = setmetatable({}, { __mode = 'k' })

-- After a resume: when the body has ended, its callback gets the outcome (outside the
-- coroutine, so an error in the callback is the script's uncaught error). A Lua error that
-- is not an fs error is a bug in the body and is raised as such.
local function step(co, ok, ...)
  if status(co) ~= 'dead' then
    if not ok then
      error((...), 0)
    end
    return
  end
  local cb = pendingCb[co]
  pendingCb[co] = nil
  if ok then
    return cb(nil, ...)
  end
  local err = ...
  if type(err) == 'table' and getmetatable(err) == ErrorMeta then
    return cb(err)
  end
  error(err, 0)
end

local function opAsync(name, ...)
  local co = coroutine.running()
  local n = select('#', ...)
  local args = { ... }
  args[n + 1] = function(err, res)
    step(co, resume(co, err, res))
  end
  local req, serr = uv[name](unpack(args, 1, n + 1))
  local err, res
  if req == nil and serr ~= nil then
    err = serr
  else
    err, res = yield()
  end
  if err ~= nil then
    error(fsError(err, name, PATH_ARG[name] and args[1], name == 'fs_rename' and args[2] or nil), 0)
  end
  return res
end

-- Runs body(opAsync, ...) in a coroutine; cb(err) or cb(nil, results...), never before this
-- call returns.
local function runAsync(body, cb, ...)
  local co = create(body)
  pendingCb[co] = cb
  local r = { resume(co, opAsync, ...) }
  if status(co) ~= 'dead' then
    return step(co, unpack(r, 1, table.maxn(r)))
  end
  -- Finished without waiting on libuv: the callback still comes later, as Node's does.
  setImmediate(function()
    step(co, unpack(r, 1, table.maxn(r)))
  end)
end

local function runSync(body, ...)
  return body(opSync, ...)
end

-- Exposes body as fs.name(args..., cb) and fs.nameSync(args...). `check` validates the
-- arguments (raising at the caller) and returns them normalised, count first.
local function define(name, check, body)
  M[name] = function(...)
    local n = select('#', ...)
    local cb = select(n, ...)
    checkCb(cb, 2)
    local args = { check(2, ...) }
    runAsync(body, cb, unpack(args, 2, args[1] + 1))
  end
  M[name .. 'Sync'] = function(...)
    local args = { check(2, ...) }
    return runSync(body, unpack(args, 2, args[1] + 1))
  end
end

---------------------------------------------------------------------------------------------
-- Stats

local Stats = {}
Stats.__index = Stats
M.Stats = Stats

local function toStats(st)
  local s = setmetatable({}, Stats)
  for k, v in pairs(st) do
    if type(v) == 'table' then
      s[k .. 'Ms'] = v.sec * 1000 + v.nsec / 1e6
      s[k] = v.sec + v.nsec / 1e9
    else
      s[k] = v
    end
  end
  return s
end

-- isFile(), isDirectory(), ...: each tests luv's type name.
for method, typ in pairs({
  isFile = 'file', isDirectory = 'directory', isSymbolicLink = 'link', isFIFO = 'fifo', isSocket = 'socket',
}) do
  Stats[method] = function(self)
    return self.type == typ
  end
end

---------------------------------------------------------------------------------------------
-- Argument checks: each returns (count, normalised args...).

local function pathOnly(level, p)
  checkPath(p, 'path', level + 1)
  return 1, p
end

local function pathOpts(level, p, opts)
  checkPath(p, 'path', level + 1)
  if type(opts) == 'function' then
    opts = nil
  end
  if opts ~= nil and type(opts) ~= 'table' and type(opts) ~= 'string' and type(opts) ~= 'number' then
    argError('the "options" argument must be a table, got ' .. type(opts), level + 1)
  end
  return 2, p, opts
end

local function twoPaths(level, a, b)
  checkPath(a, 'oldPath', level + 1)
  checkPath(b, 'newPath', level + 1)
  return 2, a, b
end

local function pathData(level, p, data, opts)
  checkPath(p, 'path', level + 1)
  if type(data) == 'number' then
    data = tostring(data)
  elseif type(data) ~= 'string' then
    argError('the "data" argument must be a string, got ' .. type(data), level + 1)
  end
  if type(opts) == 'function' then
    opts = nil
  end
  return 3, p, data, opts
end

local function flagOf(opts, default)
  if type(opts) == 'table' and opts.flag then
    return opts.flag
  end
  return default
end

local function modeOf(opts, default)
  if type(opts) == 'table' and opts.mode then
    return opts.mode
  elseif type(opts) == 'number' then
    return opts
  end
  return default
end

---------------------------------------------------------------------------------------------
-- Whole-file operations

local CHUNK = 65536

local function readAll(op, fd)
  local st = op('fs_fstat', fd)
  local parts, n, pos = {}, 0, 0
  local want = st.size > 0 and st.size or CHUNK
  while true do
    local data = op('fs_read', fd, want, pos)
    if data == nil or #data == 0 then
      break
    end
    n = n + 1
    parts[n] = data
    pos = pos + #data
    -- The size may have grown, or be 0 for files like /proc's: read on until EOF.
    want = CHUNK
  end
  -- The usual case is one read of the whole file: hand that string over as it is (a concat
  -- would copy it once more, and on a large file the copy's page faults dominate).
  if n == 1 then
    return parts[1]
  end
  return concat(parts, '', 1, n)
end

define('readFile', pathOpts, function(op, p, opts)
  local fd = op('fs_open', p, flagOf(opts, 'r'), 438)
  local ok, data = pcall(readAll, op, fd)
  op('fs_close', fd)
  if not ok then
    error(data, 0)
  end
  return data
end)

local function writeAll(op, fd, data, pos)
  local off = 1
  while off <= #data do
    local chunk = off == 1 and data or data:sub(off)
    local n = op('fs_write', fd, chunk, pos)
    off = off + n
    if pos >= 0 then
      pos = pos + n
    end
  end
end

define('writeFile', pathData, function(op, p, data, opts)
  local fd = op('fs_open', p, flagOf(opts, 'w'), modeOf(opts, 438))
  local ok, err = pcall(writeAll, op, fd, data, -1)
  op('fs_close', fd)
  if not ok then
    error(err, 0)
  end
end)

define('appendFile', pathData, function(op, p, data, opts)
  local fd = op('fs_open', p, flagOf(opts, 'a'), modeOf(opts, 438))
  local ok, err = pcall(writeAll, op, fd, data, -1)
  op('fs_close', fd)
  if not ok then
    error(err, 0)
  end
end)

define('stat', pathOnly, function(op, p)
  return toStats(op('fs_stat', p))
end)

define('lstat', pathOnly, function(op, p)
  return toStats(op('fs_lstat', p))
end)

define('fstat', function(level, fd)
  checkFd(fd, level + 1)
  return 1, fd
end, function(op, fd)
  return toStats(op('fs_fstat', fd))
end)

define('exists', pathOnly, function(op, p)
  return (pcall(op, 'fs_stat', p))
end)
-- fs.exists(path, cb) calls cb(boolean) as Node's does, not cb(err, boolean).
do
  local existsAsync = M.exists
  M.exists = function(p, cb)
    checkCb(cb, 2)
    existsAsync(p, function(_, found)
      cb(found == true)
    end)
  end
end

-- readdir(path [, {withFileTypes=true}]): names in sorted order, or Dirent tables.
local Dirent = {}
Dirent.__index = Dirent
M.Dirent = Dirent
Dirent.isFile, Dirent.isDirectory, Dirent.isSymbolicLink = Stats.isFile, Stats.isDirectory, Stats.isSymbolicLink

define('readdir', pathOpts, function(op, p, opts)
  local req = op('fs_scandir', p)
  local out = {}
  local types = type(opts) == 'table' and opts.withFileTypes
  while true do
    local name, t = uv.fs_scandir_next(req)
    if not name then
      break
    end
    out[#out + 1] = types and setmetatable({ name = name, type = t }, Dirent) or name
  end
  return out
end)

local function isDir(op, p)
  local ok, st = pcall(op, 'fs_stat', p)
  return ok and st.type == 'directory'
end

-- mkdir(path [, {recursive=, mode=}]): recursive creates the missing parents and returns the
-- first folder it made (nil when all existed), as Node's does.
define('mkdir', pathOpts, function(op, p, opts)
  local mode = modeOf(opts, 511)
  if not (type(opts) == 'table' and opts.recursive) then
    op('fs_mkdir', p, mode)
    return nil
  end
  local path = require('path')
  local full = path.resolve(p)
  local missing = {}
  local cur = full
  while cur ~= '/' and not isDir(op, cur) do
    missing[#missing + 1] = cur
    cur = path.dirname(cur)
  end
  for i = #missing, 1, -1 do
    local ok, err = pcall(op, 'fs_mkdir', missing[i], mode)
    if not ok and not (err.code == 'EEXIST' and isDir(op, missing[i])) then
      err.path = p
      error(err, 0)
    end
  end
  return missing[#missing]
end)

local function rmTree(op, p)
  local st = op('fs_lstat', p)
  if st.type ~= 'directory' then
    return op('fs_unlink', p)
  end
  local req = op('fs_scandir', p)
  local names = {}
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then
      break
    end
    names[#names + 1] = name
  end
  for _, name in ipairs(names) do
    rmTree(op, p .. '/' .. name)
  end
  op('fs_rmdir', p)
end

-- rm(path [, {recursive=, force=}]): a folder needs recursive; force ignores a missing path.
define('rm', pathOpts, function(op, p, opts)
  opts = type(opts) == 'table' and opts or {}
  local ok, st = pcall(op, 'fs_lstat', p)
  if not ok then
    if opts.force and st.code == 'ENOENT' then
      return nil
    end
    error(st, 0)
  end
  if st.type == 'directory' and not opts.recursive then
    error(setmetatable({ code = 'ERR_FS_EISDIR', syscall = 'rm', path = p,
      message = ("ERR_FS_EISDIR: path is a directory, rm '%s' (use recursive = true)"):format(p) }, ErrorMeta), 0)
  end
  rmTree(op, p)
end)

define('rmdir', pathOnly, function(op, p)
  op('fs_rmdir', p)
end)

define('unlink', pathOnly, function(op, p)
  op('fs_unlink', p)
end)

define('rename', twoPaths, function(op, a, b)
  op('fs_rename', a, b)
end)

define('copyFile', twoPaths, function(op, a, b)
  op('fs_copyfile', a, b)
end)

define('realpath', pathOnly, function(op, p)
  return op('fs_realpath', p)
end)

define('access', pathOpts, function(op, p, mode)
  op('fs_access', p, type(mode) == 'number' and mode or 0)
end)

define('mkdtemp', pathOnly, function(op, prefix)
  return op('fs_mkdtemp', prefix .. 'XXXXXX')
end)

---------------------------------------------------------------------------------------------
-- Descriptors

-- open(path [, flags='r' [, mode=0666]], cb(err, fd))
define('open', function(level, p, flags, mode)
  checkPath(p, 'path', level + 1)
  if type(flags) == 'function' then
    flags, mode = nil, nil
  elseif type(mode) == 'function' then
    mode = nil
  end
  if flags ~= nil and type(flags) ~= 'string' and type(flags) ~= 'number' then
    argError('the "flags" argument must be a string or a number, got ' .. type(flags), level + 1)
  end
  return 3, p, flags or 'r', mode or 438
end, function(op, p, flags, mode)
  return op('fs_open', p, flags, mode)
end)

define('close', function(level, fd)
  checkFd(fd, level + 1)
  return 1, fd
end, function(op, fd)
  op('fs_close', fd)
end)

-- read(fd, length [, position], cb(err, data)): data is a string ('' at the end of the file);
-- position nil or -1 reads from the current offset.
define('read', function(level, fd, length, position)
  checkFd(fd, level + 1)
  if type(length) ~= 'number' or length < 0 then
    argError('the "length" argument must be a non-negative number, got ' .. tostring(length), level + 1)
  end
  if type(position) ~= 'number' then
    position = -1
  end
  return 3, fd, length, position
end, function(op, fd, length, position)
  return op('fs_read', fd, length, position)
end)

-- write(fd, data [, position], cb(err, written))
define('write', function(level, fd, data, position)
  checkFd(fd, level + 1)
  if type(data) ~= 'string' then
    argError('the "data" argument must be a string, got ' .. type(data), level + 1)
  end
  if type(position) ~= 'number' then
    position = -1
  end
  return 3, fd, data, position
end, function(op, fd, data, position)
  return op('fs_write', fd, data, position)
end)

define('ftruncate', function(level, fd, len)
  checkFd(fd, level + 1)
  return 2, fd, type(len) == 'number' and len or 0
end, function(op, fd, len)
  op('fs_ftruncate', fd, len)
end)

---------------------------------------------------------------------------------------------
-- watch(path [, {recursive=}], fn(eventType, filename)) -> FSWatcher (:close(); 'change',
-- 'error', 'close'). eventType is 'rename' or 'change' as Node's.

local FSWatcher = require('_class')(events.Emitter)
M.FSWatcher = FSWatcher

function M.watch(p, opts, fn)
  checkPath(p, 'filename', 2)
  if type(opts) == 'function' then
    opts, fn = nil, opts
  end
  if fn ~= nil then
    checkCb(fn, 2)
  end
  local w = FSWatcher.new()
  local h = uv.new_fs_event()
  w._handle = h
  if fn then
    w:on('change', fn)
  end
  local ok, err = h:start(p, { recursive = type(opts) == 'table' and opts.recursive or false },
    function(e, name, evs)
      if e then
        w:emit('error', fsError(e, 'watch', p))
        return w:close()
      end
      w:emit('change', evs.rename and 'rename' or 'change', name)
    end)
  if not ok then
    h:close()
    error(fsError(err, 'watch', p), 2)
  end
  return w
end

function FSWatcher:close()
  local h = self._handle
  if h and not h:is_closing() then
    h:close()
    self._handle = nil
    setImmediate(function()
      self:emit('close')
    end)
  end
end

function FSWatcher:unref()
  if self._handle then
    self._handle:unref()
  end
  return self
end

function FSWatcher:ref()
  if self._handle then
    self._handle:ref()
  end
  return self
end

-- Streams (createReadStream / createWriteStream) are in _fs_streams.lua.
require('_fs_streams')(M, { fsError = fsError, checkPath = checkPath, uv = uv })

M.constants = { F_OK = 0, R_OK = 4, W_OK = 2, X_OK = 1 }
M.F_OK, M.R_OK, M.W_OK, M.X_OK = 0, 4, 2, 1

-- Dot calls (`stream.write('x')`) raise ERR_INVALID_THIS at the caller (_class.lua).
local class = require('_class')
class.guard(FSWatcher, 'watcher', { emit = true })
class.guard(M.ReadStream, 'stream', { emit = true })
class.guard(M.WriteStream, 'stream', { emit = true })

return M
