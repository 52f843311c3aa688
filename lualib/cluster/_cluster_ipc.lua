-- _cluster_ipc.lua: what both ends of a cluster channel share: the message codec (a private
-- lua-cjson instance, so a script's cjson settings never change the wire), the refusal of
-- values JSON cannot carry (raised before anything is written), handle packing, and the
-- Channel that turns the C channel's batches of frames into calls on its owner.
local core = require('_core')
local cjson = require('cjson')
local class = require('_class')
local events = require('events')

local M = {}

-- Frame kinds (runtime/ipc_frame.h). The kind byte, not the body, tells a user message from
-- an internal one, so a user table shaped like an internal message stays a user message.
-- A string message travels as its raw bytes (KIND_STRING): no JSON escaping or parsing.
M.KIND_USER, M.KIND_INTERNAL, M.KIND_HANDLE, M.KIND_STRING = 1, 2, 3, 4

-- Limits (docs/api.md): a message's encoded size (the frame body limit) and its nesting.
-- Internal messages wrap a user's message a level or two deeper, so the encoder for them and
-- the decoder allow a few levels more than users may send.
M.MAX_BYTES = core.ipc_max_body
M.MAX_DEPTH = 1000
-- Above this, send returns false: the caller waits for 'drain' (Node's process.send
-- contract; the message itself is queued, never lost).
M.HIGH_WATER = 1024 * 1024
-- The encoders keep their buffer between messages (fewer allocations), except after one
-- larger than this, which would otherwise stay allocated for the life of the process.
local SHRINK_AT = 1024 * 1024

local function newEncoder(depth, blobs)
  local e = cjson.new()
  e.encode_number_precision(14) -- the most this lua-cjson allows (17 would round-trip doubles)
  e.encode_invalid_numbers(false)
  e.encode_max_depth(depth)
  e.encode_keep_buffer(true)
  local raw = e.encode
  if blobs then
    -- The same text and errors, but a text of 64 KiB or more comes back as a blob
    -- (runtime/json_encode.c): a userdata holding it in a C buffer, which #blob measures and
    -- the channel's send takes as a body, queuing it by reference; no Lua string of that size
    -- is made. blob:release() (M.release) frees it once sent. (Were raw not the fast path's
    -- encode, ipc_blobs would return false and the bodies stay strings.)
    core.ipc_blobs(raw)
  end
  return function(v)
    local s = raw(v)
    if #s > SHRINK_AT and type(s) == 'string' then
      -- Toggling the setting frees the buffer (lua-cjson re-creates it empty). (The fast path
      -- in front of lua-cjson writes to a buffer of its own, freed after a large message.)
      e.encode_keep_buffer(false)
      e.encode_keep_buffer(true)
    end
    return s
  end, raw
end
-- encodeUserRaw: the instance's own encode, which the channel's send_value runs in C.
local encodeUser, encodeUserRaw = newEncoder(M.MAX_DEPTH, true)
-- A user's message inside one level of the runtime's own (M.encodeWrapped).
local encodeWrapped = newEncoder(M.MAX_DEPTH + 1, true)
local encode = newEncoder(M.MAX_DEPTH + 8)
-- Frames' JSON is decoded in C as it is read (runtime/ipc.c, a negative kind), to the same
-- depth; this instance decodes the rest (which the C fast path leaves to lua-cjson).
local dec = require('cjson.safe').new()
dec.decode_max_depth(core.ipc_decode_depth) -- M.MAX_DEPTH + 8
local decode = dec.decode
local null = cjson.null

-- The first thing in v that JSON cannot carry, as a sentence naming where it is; nil when
-- nothing specific is found.
local function explain(v, path, seen, depth)
  local t = type(v)
  if v == null then
    return nil
  elseif t == 'function' or t == 'userdata' or t == 'thread' then
    return ('%s is a %s'):format(path, t)
  elseif t == 'number' then
    if v ~= v then
      return path .. ' is NaN'
    elseif v == math.huge or v == -math.huge then
      return path .. ' is ' .. (v > 0 and 'inf' or '-inf')
    end
  elseif t == 'table' then
    if depth > M.MAX_DEPTH then
      return ('msg is nested deeper than %d levels (the limit)'):format(M.MAX_DEPTH)
    end
    if seen[v] then
      return path .. ' is a cycle (a table that contains itself)'
    end
    seen[v] = true
    for k, x in pairs(v) do
      local kt = type(k)
      if kt ~= 'string' and kt ~= 'number' then
        return ('%s has a %s key'):format(path, kt)
      end
      local why = explain(x, kt == 'number' and ('%s[%s]'):format(path, tostring(k))
        or (path .. '.' .. k), seen, depth + 1)
      if why then
        return why
      end
    end
    seen[v] = nil
  end
  return nil
end

-- Frees a body from M.encode or M.pack once it is sent (or not needed): a large one is a blob
-- whose buffer would otherwise wait for the GC (the channel keeps what it still has queued).
function M.release(body)
  if type(body) == 'userdata' then
    body:release()
  end
end

local function tooLarge(n, level)
  error(('ERR_IPC_MESSAGE_TOO_LARGE: the message is %d bytes encoded, over the limit of %d bytes')
    :format(n, M.MAX_BYTES), level + 1)
end

-- Raises ERR_IPC_MESSAGE_TOO_LARGE (at `level`) when an encoded message is over the limit
-- (releasing it: it will not be sent).
function M.checkSize(body, level)
  local n = #body
  if n > M.MAX_BYTES then
    M.release(body)
    tooLarge(n, level + 1)
  end
end

-- Encodes `body` with `enc`, where body is the user's message `msg` or a runtime wrapper
-- around it; raises (at `level`, counted from here) what is wrong with msg.
local function encodeChecked(enc, body, msg, level)
  if msg == nil then
    error('ERR_MISSING_ARGS: the message to send is nil', level)
  end
  local ok, s = pcall(enc, body)
  if ok then
    M.checkSize(s, level)
    return s
  end
  local why = explain(msg, 'msg', {}, 1)
    or ('msg cannot be encoded as JSON (' .. tostring(s):gsub('^.-:%d+: ', '') .. ')')
  error('ERR_INVALID_ARG_TYPE: cannot send the message: ' .. why, level)
end

-- Encodes a message or raises ERR_INVALID_ARG_TYPE naming the problem (at `level`), or
-- ERR_IPC_MESSAGE_TOO_LARGE. The result is a string, or a blob for 64 KiB or more (see
-- newEncoder): a body for the channel's send, to be given to M.release once sent.
function M.encode(msg, level)
  local s = encodeChecked(encodeUser, msg, msg, level + 1)
  return s
end

-- M.encode for a user's message `msg` carried one level down in `wrapper` (an internal
-- message such as {cmd='sendTo', to=..., msg=msg}, or a handle frame's {desc, msg}): the
-- whole frame's body in one encode, with M.encode's errors about msg (before, the message
-- was encoded once to check it and again inside its wrapper: two encodes of a 1 MiB one).
function M.encodeWrapped(wrapper, msg, level)
  local s = encodeChecked(encodeWrapped, wrapper, msg, level + 1)
  return s
end

M.decode = decode

-- Handle passing. net/dgram register a packer with M.registerHandleType(name, packer):
--   packer.test(handle) -> true when the handle is theirs
--   packer.pack(handle) -> description table, list of fds (the channel duplicates them)
--   packer.unpack(desc, fds) -> the handle object in the receiving process (owns the fds)
-- Until then, and for anything else, an integer handle is a raw fd, delivered as an integer.
local packers, order = {}, {}
function M.registerHandleType(name, packer)
  if not packers[name] then
    order[#order + 1] = name
  end
  packers[name] = packer
end

-- Returns kind, body, fds for a message with an optional handle; raises on bad input.
-- `level` is the caller's level as error() counts it from pack's caller.
function M.pack(msg, handle, level)
  level = (level or 2) + 1
  if handle == nil then
    if type(msg) == 'string' then
      M.checkSize(msg, level)
      return M.KIND_STRING, msg, nil
    end
    return M.KIND_USER, M.encode(msg, level + 1), nil
  end
  local desc, fds
  if type(handle) == 'number' then
    if handle % 1 ~= 0 or handle < 0 or handle > 0x7fffffff then
      error(('ERR_INVALID_HANDLE_TYPE: a raw handle must be a file descriptor (an integer >= 0), got %s')
        :format(tostring(handle)), level)
    end
    desc, fds = { type = 'fd' }, { handle }
  else
    for _, name in ipairs(order) do
      local p = packers[name]
      if p.test(handle) then
        desc, fds = p.pack(handle)
        desc.type = name
        break
      end
    end
  end
  if not desc then
    error('ERR_INVALID_HANDLE_TYPE: this handle type cannot be sent', level)
  end
  return M.KIND_HANDLE, M.encodeWrapped({ desc, msg }, msg, level + 1), fds
end

-- The receiving side of M.pack: msg, handle (fds a list of integers).
function M.unpackHandle(value, fds)
  local desc, msg = value[1], value[2]
  local p = type(desc) == 'table' and packers[desc.type]
  if p then
    return msg, p.unpack(desc, fds or {})
  end
  -- A raw fd (or a type nobody registered here): the first fd as an integer; the rest would
  -- leak, so they are closed.
  for i = 2, #(fds or {}) do
    core.ipc_closefd(fds[i])
  end
  return msg, fds and fds[1]
end

-- Channel: owns a C channel and calls owner:_onFrame(kind, value, fds, lost) for each frame
-- in order (lost: how many fds the kernel dropped because this process was at its fd
-- limit), owner:_onChannelEnd(err) once at EOF (err nil) or on an error (closing is the
-- owner's job).
local Channel = class()
M.Channel = Channel
local KIND_STRING, KIND_USER, KIND_HANDLE = M.KIND_STRING, M.KIND_USER, M.KIND_HANDLE
local KIND_INTERNAL = M.KIND_INTERNAL

function Channel:_init(fd, owner)
  local batch, pos, last = nil, 1, 0
  local ch
  local function dispatch()
    while pos <= last do
      local i = pos
      pos = i + 3
      local kind, body, fds = batch[i], batch[i + 1], batch[i + 2]
      local lost
      if type(fds) == 'number' then
        -- This process was at its fd limit: the kernel dropped the frame's fds.
        lost, fds = fds, false
      end
      local value
      if kind < 0 then
        kind, value = -kind, body
      elseif kind == KIND_STRING then
        kind, value = KIND_USER, body
      else
        value = decode(body)
      end
      if fds and kind ~= KIND_HANDLE and kind ~= KIND_INTERNAL then
        -- Only handle and internal frames carry fds; others' would leak.
        for _, f in ipairs(fds) do
          core.ipc_closefd(f)
        end
        fds = nil
      end
      if kind == KIND_HANDLE and type(value) ~= 'table' then
        value = nil
      end
      if value == nil then
        for _, f in ipairs(fds or {}) do
          core.ipc_closefd(f)
        end
        batch = nil
        owner:_onChannelEnd(events.makeError('EPROTO', kind == KIND_HANDLE
          and 'malformed frame: a handle frame without its description'
          or 'malformed frame: the body is not JSON'))
        return
      end
      owner:_onFrame(kind, value, fds or nil, lost)
      if self.closed then
        batch = nil
        return
      end
    end
    batch = nil
  end
  ch = core.ipc(fd, function(ev, a, b)
    if ev == 'frames' then
      batch, pos, last = a, 1, b * 3
      dispatch()
    elseif ev == 'resume' then
      if batch then
        dispatch()
      end
    elseif ev == 'drain' then
      if owner._onDrain then
        owner:_onDrain()
      end
    elseif ev == 'end' then
      owner:_onChannelEnd(nil)
    elseif ev == 'error' then
      owner:_onChannelEnd(events.fromUv(a, b))
    end
  end)
  if not ch then
    error('cannot open the IPC channel: ' .. tostring(fd), 2)
  end
  self._ch = ch
  self.closed = false
end

-- Sends a frame; returns true, or nil and an error message.
function Channel:send(kind, body, fds)
  if self.closed then
    return nil, 'EPIPE: the channel is closed', 'EPIPE'
  end
  return self._ch:send(kind, body, fds)
end

-- Sends a user message: true, false when the queue is over the high-water mark (the message
-- is queued; the owner's _onDrain runs once the queue is written), or nil, err when closed.
function Channel:sendUser(kind, body, fds)
  if self.closed then
    return nil, 'EPIPE: the channel is closed', 'EPIPE'
  end
  local ok, queued = self._ch:send(kind, body, fds)
  if not ok then
    return nil, queued
  end
  if queued > M.HIGH_WATER then
    self._ch:want_drain()
    return false
  end
  return true
end

-- Sends a user message that is a table (no handle), as sendUser(M.pack(msg)) would, errors
-- included (raised at `level` from here): the channel's C send encodes it where it will be
-- sent from, the shared-memory ring when it fits (runtime/ipc.c, ch:send_value); a value the
-- C encoder leaves to lua-cjson takes M.pack's way.
function Channel:sendMessage(msg, level)
  if not self.closed then
    local ok, n = self._ch:send_value(KIND_USER, encodeUserRaw, msg)
    if ok then
      if n > M.HIGH_WATER then
        self._ch:want_drain()
        return false
      end
      return true
    elseif ok == nil then
      return nil, n
    elseif n then
      tooLarge(n, level + 1)
    end
  end
  local kind, body = M.pack(msg, nil, level + 1)
  local ok, err = self:sendUser(kind, body)
  M.release(body)
  return ok, err
end

-- A user's message, with an optional handle, over ch (nil when the channel is closed):
-- worker:send's and process.send's body. Returns true, false (queued over the high-water
-- mark) or nil (closed); raises what is wrong with msg at `level` (counted from the caller).
function M.sendUser(ch, msg, handle, level)
  local ok
  if ch and handle == nil and type(msg) == 'table' then
    ok = ch:sendMessage(msg, level + 1)
  else
    local kind, body, fds = M.pack(msg, handle, level + 1)
    if ch then
      ok = ch:sendUser(kind, body, fds)
    end
    M.release(body)
  end
  return ok
end

function Channel:sendInternal(msg, fds)
  return self:send(M.KIND_INTERNAL, encode(msg), fds)
end

-- Closes now (queued bytes are dropped); fn runs once the handle is closed.
function Channel:close(fn)
  if self.closed then
    return false
  end
  self.closed = true
  self._ch:close(fn)
  return true
end

-- Closes once every queued byte is written; fn runs once the handle is closed.
function Channel:finish(fn)
  if self.closed then
    return false
  end
  self.closed = true
  self._ch:finish(fn)
  return true
end

function Channel:pump()
  if not self.closed then
    self._ch:pump()
  end
end

function Channel:flushSync(ms)
  if not self.closed then
    return self._ch:flush_sync(ms)
  end
  return true
end

function Channel:setRef(on)
  if not self.closed then
    if on then
      self._ch:ref()
    else
      self._ch:unref()
    end
  end
end

function Channel:queued()
  return self.closed and 0 or self._ch:queued()
end

function Channel:fileno()
  return not self.closed and self._ch:fileno() or nil
end

return M
