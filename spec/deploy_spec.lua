-- deploy/: each file is checked by the tool that will read it, where Debian has the tool
-- (systemd-analyze verify, haproxy -c, nginx -t, PyYAML), plus the settings the docs promise
-- (drain delay above the balancer's detection time, grace periods above the drain).
local lctest = require('lctest')
local cjson = require('cjson')

local DEPLOY = 'deploy/'

local function have(cmd)
  return os.execute('command -v ' .. cmd .. ' >/dev/null 2>&1') == 0
end

-- Runs a shell command; returns its exit status and its output (stdout and stderr).
local function run(cmd)
  local f = assert(io.popen(cmd .. ' 2>&1; echo "rc=$?"'))
  local out = f:read('*a')
  f:close()
  local rc = tonumber(out:match('rc=(%d+)%s*$'))
  return rc, (out:gsub('rc=%d+%s*$', ''))
end

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

local function copy(from, to, subst)
  local s = read(from)
  for a, b in pairs(subst or {}) do
    s = s:gsub(a:gsub('%p', '%%%0'), (b:gsub('%%', '%%%%')))
  end
  return lctest.writeFile(to, s)
end

-- The value of an lcluster option in a command line or argument list.
local function option(text, name)
  return tonumber(text:match('%-%-' .. name .. '%s+"?(%d+)') or text:match('%-%-' .. name .. '"%s*%-%s*"(%d+)'))
end

describe('deploy/', function()
  local dir
  before_each(function()
    dir = lctest.tmpdir()
  end)
  after_each(function()
    lctest.rmrf(dir)
  end)

  it('lcluster.service and lcluster.socket pass systemd-analyze verify, with no warning', function()
    if not have('systemd-analyze') then
      pending('systemd-analyze is not installed (Debian package systemd)')
      return
    end
    -- The unit names a binary that must exist: the one under test.
    copy(DEPLOY .. 'lcluster.service', dir .. '/lcluster.service', { ['/usr/local/bin/lcluster'] = lctest.binary })
    copy(DEPLOY .. 'lcluster.socket', dir .. '/lcluster.socket')
    local rc, out = run(('systemd-analyze verify %s/lcluster.socket %s/lcluster.service'):format(dir, dir))
    assert.equal(0, rc, out)
    assert.equal('', out)
  end)

  it('lcluster.service is Type=notify, stops with KillMode=mixed and outlasts the drain', function()
    local unit = read(DEPLOY .. 'lcluster.service')
    assert.matches('\nType=notify\n', unit, 1, true)
    assert.matches('\nKillMode=mixed\n', unit, 1, true)
    assert.matches('\nExecReload=/bin/kill %-HUP %$MAINPID\n', unit)
    assert.matches('\nNoNewPrivileges=yes\n', unit, 1, true)
    assert.matches('\nProtectSystem=strict\n', unit, 1, true)
    -- LuaJIT's JIT writes machine code: W^X protection would break it.
    assert.no.matches('MemoryDenyWriteExecute=yes', unit, 1, true)
    local exec = unit:match('\nExecStart=([^\n]*)')
    local drain, kill = option(exec, 'drain%-delay'), option(exec, 'kill%-timeout')
    assert.is_number(drain)
    assert.is_number(kill)
    local stopSec = tonumber(unit:match('\nTimeoutStopSec=(%d+)\n'))
    assert.is_true(stopSec * 1000 > drain + kill)
    assert.is_number(tonumber(unit:match('\nWatchdogSec=(%d+)\n')))
    local sock = read(DEPLOY .. 'lcluster.socket')
    assert.matches('\nListenStream=', sock, 1, true)
    assert.matches('\nFileDescriptorName=web\n', sock, 1, true)
  end)

  it('haproxy.cfg passes haproxy -c and marks a draining host down within the drain delay', function()
    local cfg = read(DEPLOY .. 'haproxy.cfg')
    assert.matches('option httpchk GET /health', cfg, 1, true)
    local drain = option(cfg, 'drain%-delay')
    local inter, fall = cfg:match('default%-server[^\n]* inter (%d+)s fall (%d+)')
    local check = tonumber(cfg:match('timeout check (%d+)s'))
    assert.is_true((tonumber(inter) * tonumber(fall) + check) * 1000 <= drain)
    if not have('haproxy') then
      pending('haproxy is not installed')
      return
    end
    local rc, out = run('haproxy -c -f ' .. DEPLOY .. 'haproxy.cfg')
    assert.equal(0, rc, out)
  end)

  it('nginx.conf passes nginx -t inside an http block', function()
    if not have('nginx') then
      pending('nginx is not installed (Debian package nginx-light)')
      return
    end
    local conf = read(DEPLOY .. 'nginx.conf')
    assert.matches('max_fails=', conf, 1, true)
    assert.matches('proxy_next_upstream error', conf, 1, true)
    lctest.writeFile(dir .. '/main.conf', table.concat({
      'pid ' .. dir .. '/nginx.pid;',
      'error_log ' .. dir .. '/error.log;',
      'events {}',
      'http {',
      '  access_log ' .. dir .. '/access.log;',
      '  client_body_temp_path ' .. dir .. '/body;',
      '  proxy_temp_path ' .. dir .. '/proxy;',
      '  include ' .. require('_core').cwd() .. '/' .. DEPLOY .. 'nginx.conf;',
      '}',
    }, '\n') .. '\n')
    local rc, out = run(('nginx -t -p %s/ -c %s/main.conf'):format(dir, dir))
    assert.equal(0, rc, out)
    assert.matches('test is successful', out, 1, true)
  end)

  it('kubernetes.yaml parses: a Deployment with readiness on /health and a preStop drain, and a Service', function()
    local text = read(DEPLOY .. 'kubernetes.yaml')
    assert.no.matches('\t', text, 1, true)
    if os.execute('/usr/bin/python3 -c "import yaml" >/dev/null 2>&1') ~= 0 then
      pending('PyYAML is not installed (Debian package python3-yaml)')
      return
    end
    local rc, out = run('/usr/bin/python3 -c "import json, sys, yaml; '
      .. 'print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))" ' .. DEPLOY .. 'kubernetes.yaml')
    assert.equal(0, rc, out)
    local docs = cjson.decode(out)
    local byKind = {}
    for _, d in ipairs(docs) do
      byKind[d.kind] = d
    end
    local dep, svc = byKind.Deployment, byKind.Service
    assert.is_table(dep)
    assert.is_table(svc)
    local pod = dep.spec.template.spec
    local c = pod.containers[1]
    assert.equal('/health', c.readinessProbe.httpGet.path)
    assert.is_table(c.lifecycle.preStop)
    local args = table.concat(c.args, ' ')
    local drain, kill = option(args, 'drain%-delay'), option(args, 'kill%-timeout')
    local preStop = tonumber(c.lifecycle.preStop.exec.command[2]) or 0
    assert.is_true(pod.terminationGracePeriodSeconds * 1000 > preStop * 1000 + drain + kill)
    -- The Service selects the Deployment's pods.
    for k, v in pairs(svc.spec.selector) do
      assert.equal(v, dep.spec.template.metadata.labels[k])
    end
  end)
end)
