-- os: Node's functions on Lua's os table, checked against /proc and uname.
local lctest = require('lctest')

local function read(path)
  local f = assert(io.open(path))
  local s = f:read('*a')
  f:close()
  return s
end

describe('os', function()
  after_each(lctest.cleanup)

  it('reports memory, load and uptime as the kernel does', function()
    local kb = tonumber(read('/proc/meminfo'):match('MemTotal:%s*(%d+)'))
    assert.are.equal(kb * 1024, os.totalmem())
    local free = os.freemem()
    assert.is_true(free > 0 and free <= os.totalmem())
    local la = os.loadavg()
    assert.are.equal(3, #la)
    assert.are.equal('number', type(la[1]))
    local up = tonumber(read('/proc/uptime'):match('^(%S+)'))
    assert.is_true(math.abs(os.uptime() - up) < 60)
    -- The standard functions stay, and the ones lcluster added before.
    assert.are.equal('number', type(os.time()))
    assert.are.equal('table', type(os.cpus()))
    assert.are.equal('string', type(os.hostname()))
    assert.is_nil(os.nosuchthing)
  end)

  it('lists network interfaces in Node\'s shape', function()
    local lo = os.networkInterfaces().lo
    assert.is_table(lo)
    local v4
    for _, a in ipairs(lo) do
      if a.family == 'IPv4' then
        v4 = a
      end
    end
    assert.are.same({ address = '127.0.0.1', netmask = '255.0.0.0', family = 'IPv4', mac = '00:00:00:00:00:00',
      internal = true, cidr = '127.0.0.1/8' }, v4)
  end)

  it('names the platform, the kernel and the folders from the environment', function()
    local c = lctest.spawn('spec/fixtures/os_facts.lua', {}, {
      env = { TMPDIR = '/var/tmp', HOME = '/nonexistent/home' },
    })
    assert.are.equal(0, c:waitExit())
    local h = io.popen('uname -r')
    local release = h:read('*l')
    h:close()
    assert.are.equal(('tmpdir=/var/tmp\nhomedir=/nonexistent/home\nplatform=linux\ntype=Linux\nrelease=%s\n')
      :format(release), c.stdout)
    assert.are.equal(jit.arch, os.arch())
    assert.are.equal('\n', os.EOL)
  end)
end)
