std = 'luajit'
-- The runtime's globals, as every script sees them.
globals = { 'process' }
read_globals = { 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'setImmediate', 'clearImmediate' }
max_line_length = 120
-- os gains cpus() and hostname() in lcluster.
read_globals.os = { fields = { 'cpus', 'hostname' }, other_fields = true }
files['spec/'] = { std = '+busted' }
files['apps/spec/'] = { std = '+busted' }
files['lualib/_main.lua'] = { globals = { 'print', 'arg', 'os', 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'setImmediate', 'clearImmediate' } }
files['lualib/_busted.lua'] = { globals = { 'os' } }
files['lualib/lctest.lua'] = { globals = { 'process' } }
-- A fixture that must not compile, on purpose.
exclude_files = { 'build*/**', 'bench/**/node_modules/**', 'spec/fixtures/rt_syntax.lua' }
