-- The "RESULT ..." lines of a fixture's output, in order, without the prefix (the IPC
-- fixtures, spec/fixtures/ipc_large.lua and ipc_shm.lua, report what they saw that way).
return function(text)
  local out = {}
  for line in text:gmatch('[^\n]+') do
    local r = line:match('^RESULT (.*)$')
    if r then
      out[#out + 1] = r
    end
  end
  return out
end
