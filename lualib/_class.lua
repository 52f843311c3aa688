-- _class.lua: the tiny class helper every module uses (after luvit's Object:extend()).
-- `local Socket = class(Emitter)`; `function Socket:_init(...) end`; `Socket.new(...)`.
local function newClass(parent)
  local cls = {}
  cls.__index = cls
  cls.super = parent
  if parent then
    setmetatable(cls, { __index = parent })
  end
  function cls.new(...)
    local self = setmetatable({}, cls)
    if self._init then
      self:_init(...)
    end
    return self
  end
  return cls
end

-- Dot-call guards. `server.listen(8000)` (a dot where a colon belongs) passes 8000 as self,
-- and the method fails somewhere inside lualib with a message about lualib's own locals.
-- class.guard(cls, label) replaces each public method of cls (names not starting with '_')
-- by a wrapper that checks self is an object (a table with a metatable) and otherwise
-- raises ERR_INVALID_THIS at the caller's line, naming the method and the fix. The wrapper
-- passes its arguments on as they came (select('#', ...) in the method sees what the caller
-- passed) in a tail call, so an error the method raises at level 2 still names the caller's
-- line.
local type, getmetatable = type, getmetatable
local class = setmetatable({}, { __call = function(_, parent)
  return newClass(parent)
end })

local function describe(v)
  if v == nil then
    return 'nil (no arguments at all)'
  end
  local t = type(v)
  if t == 'string' then
    return ('the string %q'):format(#v > 40 and v:sub(1, 40) .. '...' or v)
  elseif t == 'number' or t == 'boolean' then
    return ('the %s %s'):format(t, tostring(v))
  end
  return 'a ' .. (t == 'table' and 'plain table' or t)
end

local function invalidThis(label, name, self, level)
  error(('ERR_INVALID_THIS: %s:%s: use a colon call (%s:%s(...)), not %s.%s(...); got %s as self')
    :format(label, name, label, name, label, name, describe(self)), level + 1)
end

local function wrap(f, label, name)
  return function(self, ...)
    if type(self) ~= 'table' or getmetatable(self) == nil then
      invalidThis(label, name, self, 2)
    end
    return f(self, ...)
  end
end

local rawOf = setmetatable({}, { __mode = 'k' }) -- wrapper -> the method it guards

-- The method behind a guard (the function itself when it has none).
function class.raw(fn)
  return rawOf[fn] or fn
end

-- Guards every public method an instance of cls sees, its own and those it inherits (the
-- wrappers become cls's own fields, so messages name `label`: 'res:setHeader'), except
-- those of a class guarded with `shared = true` (Emitter: its wrappers serve every class,
-- and say 'emitter:on'; copying them into each class doubled the start-up cost of the
-- guards). Call it once the class is complete. Names in `exempt` (a set) stay unwrapped:
-- methods on the per-request and per-connection paths, which check self themselves where it
-- costs nothing (in an error branch they already have) or with one type test. Returns cls.
function class.guard(cls, label, exempt, shared)
  local names, seen = {}, {}
  local c = cls
  while c ~= nil and (c == cls or not rawget(c, '_guardShared')) do
    for name, g in pairs(c) do
      -- The nearest definition wins, as in a lookup; exempt ones shadow their parents'.
      if not seen[name] then
        seen[name] = true
        if type(g) == 'function' and type(name) == 'string' and name:sub(1, 1) ~= '_'
          and name ~= 'new' and not (exempt and exempt[name]) then
          names[name] = g
        end
      end
    end
    c = rawget(c, 'super')
  end
  for name, g in pairs(names) do
    local f = rawOf[g] or g
    local w = wrap(f, label, name)
    rawOf[w] = f
    rawset(cls, name, w)
  end
  if shared then
    rawset(cls, '_guardShared', true)
  end
  return cls
end

-- For an object whose methods are its own fields (cluster.worker in a worker): self must be
-- that object.
function class.guardObject(obj, label, names)
  for _, name in ipairs(names) do
    local f = obj[name]
    if type(f) == 'function' then
      obj[name] = function(self, ...)
        if self ~= obj then
          invalidThis(label, name, self, 2)
        end
        return f(self, ...)
      end
    end
  end
  return obj
end

class.invalidThis = invalidThis

-- Guards run once, at start-up: compiling their loops into traces would cost more than
-- interpreting them.
jit.off(class.guard, true)
jit.off(class.guardObject, true)

return class
