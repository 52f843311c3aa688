-- _busted.lua: runs Debian's busted inside the runtime (`lcluster test`), as Neovim runs it
-- under `nvim -ll`: specs get process, timers, net and cluster with the real loop, and wait
-- on conditions with `require('lctest').waitFor`.
return function()
  local ok, runner = pcall(require, 'busted.runner')
  if not ok then
    error('busted is not installed (apt-get install lua-busted): ' .. tostring(runner), 0)
  end
  -- busted.runner ends the process with os.exit(failures); let the loop's 'exit'
  -- listeners (which stop leftover children) run first.
  local exit = os.exit
  os.exit = function(code, ...)
    local n = code
    if code == true then
      n = 0
    elseif code == false then
      n = 1
    end
    pcall(process.emit, 'exit', n or 0)
    io.stdout:flush()
    return exit(n, ...)
  end
  runner({ standalone = false })
end
