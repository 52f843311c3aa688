-- path.lua: Node's `path` module, POSIX flavour (path.posix is the module itself). Pure
-- string work on '/'-separated paths; only resolve() reads the working directory.
local M = {}

M.sep = '/'
M.delimiter = ':'
M.posix = M

local function checkString(v, name, level)
  if type(v) ~= 'string' then
    error(('ERR_INVALID_ARG_TYPE: the "%s" argument must be a string, got %s'):format(name, type(v)), level + 1)
  end
end

-- Resolves '.' and '..' segments; `absolute` drops '..' above the root.
local function normalizeSegments(p, absolute)
  local out, n = {}, 0
  for seg in p:gmatch('[^/]+') do
    if seg == '..' then
      if n > 0 and out[n] ~= '..' then
        out[n] = nil
        n = n - 1
      elseif not absolute then
        n = n + 1
        out[n] = '..'
      end
    elseif seg ~= '.' then
      n = n + 1
      out[n] = seg
    end
  end
  return table.concat(out, '/', 1, n)
end

function M.isAbsolute(p)
  checkString(p, 'path', 2)
  return p:byte(1) == 47
end

function M.normalize(p)
  checkString(p, 'path', 2)
  if p == '' then
    return '.'
  end
  local absolute = p:byte(1) == 47
  local trailing = p:byte(-1) == 47
  local s = normalizeSegments(p, absolute)
  if s == '' and not absolute then
    s = '.'
  end
  if s ~= '' and trailing then
    s = s .. '/'
  end
  return absolute and '/' .. s or s
end

function M.join(...)
  local n = select('#', ...)
  local parts = {}
  for i = 1, n do
    local a = select(i, ...)
    checkString(a, 'path', 2)
    if a ~= '' then
      parts[#parts + 1] = a
    end
  end
  if #parts == 0 then
    return '.'
  end
  return M.normalize(table.concat(parts, '/'))
end

function M.resolve(...)
  local n = select('#', ...)
  local resolved = ''
  local absolute = false
  for i = n, 1, -1 do
    local a = select(i, ...)
    checkString(a, 'path', 2)
    if a ~= '' then
      resolved = a .. '/' .. resolved
      if a:byte(1) == 47 then
        absolute = true
        break
      end
    end
  end
  if not absolute then
    resolved = require('_core').cwd() .. '/' .. resolved
  end
  local s = normalizeSegments(resolved, true)
  return '/' .. s
end

function M.relative(from, to)
  checkString(from, 'from', 2)
  checkString(to, 'to', 2)
  if from == to then
    return ''
  end
  from, to = M.resolve(from), M.resolve(to)
  if from == to then
    return ''
  end
  local a, b = {}, {}
  for seg in from:gmatch('[^/]+') do
    a[#a + 1] = seg
  end
  for seg in to:gmatch('[^/]+') do
    b[#b + 1] = seg
  end
  local i = 1
  while i <= #a and i <= #b and a[i] == b[i] do
    i = i + 1
  end
  local out = {}
  for _ = i, #a do
    out[#out + 1] = '..'
  end
  for j = i, #b do
    out[#out + 1] = b[j]
  end
  return table.concat(out, '/')
end

function M.dirname(p)
  checkString(p, 'path', 2)
  if p == '' then
    return '.'
  end
  local s = p:gsub('/+$', '')
  if s == '' then
    return '/'
  end
  local dir = s:match('^(.*)/[^/]*$')
  if dir == nil then
    return '.'
  end
  dir = dir:gsub('/+$', '')
  if dir == '' then
    return p:byte(1) == 47 and '/' or '.'
  end
  return dir
end

function M.basename(p, ext)
  checkString(p, 'path', 2)
  if ext ~= nil then
    checkString(ext, 'ext', 2)
  end
  local base = p:gsub('/+$', ''):match('([^/]*)$')
  if ext and ext ~= base and #ext <= #base and base:sub(-#ext) == ext then
    base = base:sub(1, #base - #ext)
  end
  return base
end

function M.extname(p)
  checkString(p, 'path', 2)
  local base = p:gsub('/+$', ''):match('([^/]*)$')
  -- The last dot starts the extension, except as the first character (".bashrc") or in "..".
  local dot = base:match('^.*()%.')
  if dot == nil or dot == 1 or base == '..' then
    return ''
  end
  return base:sub(dot)
end

function M.parse(p)
  checkString(p, 'path', 2)
  local root = p:byte(1) == 47 and '/' or ''
  local base = M.basename(p)
  local ext = M.extname(p)
  local dir = M.dirname(p)
  if dir == '.' and p:sub(1, 2) ~= './' then
    dir = ''
  end
  return { root = root, dir = dir, base = base, ext = ext, name = base:sub(1, #base - #ext) }
end

function M.format(t)
  if type(t) ~= 'table' then
    error('ERR_INVALID_ARG_TYPE: the "pathObject" argument must be a table, got ' .. type(t), 2)
  end
  local dir = t.dir or t.root
  local base = t.base or ((t.name or '') .. (t.ext or ''))
  if not dir or dir == '' then
    return base
  end
  if dir == t.root then
    return dir .. base
  end
  return dir .. '/' .. base
end

return M
