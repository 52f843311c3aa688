-- _class.lua: the tiny class helper every module uses (after luvit's Object:extend()).
-- `local Socket = class(Emitter)`; `function Socket:_init(...) end`; `Socket.new(...)`.
local function class(parent)
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

return class
