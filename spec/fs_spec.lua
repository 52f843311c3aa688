-- fs against the real file system, in a temporary folder per test; the loop runs under
-- lctest.waitFor until each callback has come.
local lctest = require('lctest')
local fs = require('fs')

local BIN = {}
for i = 0, 255 do
  BIN[#BIN + 1] = string.char(i)
end
BIN = table.concat(BIN)

-- Runs fn(done) and waits until done(...) was called; returns what it was given.
local function await(fn, what)
  local got
  fn(function(...)
    got = { n = select('#', ...), ... }
  end)
  lctest.waitFor(function()
    return got
  end, 5000, what)
  return unpack(got, 1, got.n)
end

describe('fs', function()
  local dir
  before_each(function()
    dir = fs.mkdtempSync('/tmp/lcfs')
  end)
  after_each(function()
    lctest.rmrf(dir)
    lctest.cleanup()
  end)

  it('round-trips binary data (every byte value, NULs) async and sync', function()
    local data = BIN:rep(4096) -- 1 MB
    local p = dir .. '/bin'
    assert.is_nil(await(function(done)
      fs.writeFile(p, data, done)
    end))
    local err, back = await(function(done)
      fs.readFile(p, done)
    end)
    assert.is_nil(err)
    assert.is_true(back == data)
    assert.is_nil(await(function(done)
      fs.appendFile(p, '\0tail', done)
    end))
    assert.is_true(fs.readFileSync(p) == data .. '\0tail')
    fs.writeFileSync(p, 'x\0y')
    fs.appendFileSync(p, '\255')
    assert.are.equal('x\0y\255', fs.readFileSync(p))
  end)

  it('reads files whose size stat does not know (/proc)', function()
    local _, data = await(function(done)
      fs.readFile('/proc/self/status', done)
    end)
    assert.matches('VmRSS', data, 1, true)
  end)

  it('gives errors with code, path and syscall', function()
    local err = await(function(done)
      fs.readFile(dir .. '/missing', done)
    end)
    assert.are.equal('ENOENT', err.code)
    assert.are.equal(dir .. '/missing', err.path)
    assert.are.equal('open', err.syscall)
    assert.are.equal(("ENOENT: no such file or directory, open '%s/missing'"):format(dir), tostring(err))
    local ok, serr = pcall(fs.statSync, dir .. '/missing')
    assert.is_false(ok)
    assert.are.equal('ENOENT', serr.code)
    assert.are.equal('stat', serr.syscall)
    fs.mkdirSync(dir .. '/d')
    ok, serr = pcall(fs.mkdirSync, dir .. "/d")
    assert.is_false(ok)
    assert.are.equal('EEXIST', serr.code)
    err = await(function(done)
      fs.rm(dir .. '/d', done)
    end)
    assert.are.equal('ERR_FS_EISDIR', err.code)
    err = await(function(done)
      fs.rename(dir .. '/nope', dir .. '/other', done)
    end)
    assert.are.equal('ENOENT', err.code)
    assert.are.equal(dir .. '/other', err.dest)
  end)

  it('rejects bad arguments with coded errors', function()
    assert.has_error(function()
      fs.readFile(42, function() end)
    end, 'ERR_INVALID_ARG_TYPE: the "path" argument must be a string, got number')
    assert.has_error(function()
      fs.readFile(dir .. '/x')
    end, 'ERR_INVALID_ARG_TYPE: the "callback" argument must be a function, got string')
    assert.has_error(function()
      fs.writeFileSync(dir .. '/x', {})
    end, 'ERR_INVALID_ARG_TYPE: the "data" argument must be a string, got table')
    assert.has_error(function()
      fs.readFileSync('a\0b')
    end, 'ERR_INVALID_ARG_VALUE: the "path" argument must not contain null bytes')
    assert.has_error(function()
      fs.closeSync(-1)
    end, 'ERR_INVALID_ARG_TYPE: the "fd" argument must be a non-negative integer, got -1')
  end)

  it('stats files, folders and links', function()
    fs.writeFileSync(dir .. '/f', 'hello')
    local err, st = await(function(done)
      fs.stat(dir .. '/f', done)
    end)
    assert.is_nil(err)
    assert.are.equal(5, st.size)
    assert.is_true(st:isFile())
    assert.is_false(st:isDirectory())
    assert.are.equal('number', type(st.mtime))
    assert.are.equal('number', type(st.mtimeMs))
    assert.are.equal(0x8000, bit.band(st.mode, 0xF000)) -- S_IFREG
    assert.is_true(fs.statSync(dir):isDirectory())
    os.execute('ln -s f ' .. dir .. '/link')
    assert.is_true(fs.lstatSync(dir .. '/link'):isSymbolicLink())
    assert.is_true(fs.statSync(dir .. '/link'):isFile())
  end)

  it('makes and removes trees, lists folders in order, renames and unlinks', function()
    local err, first = await(function(done)
      fs.mkdir(dir .. '/a/b/c', { recursive = true }, done)
    end)
    assert.is_nil(err)
    assert.are.equal(dir .. '/a', first)
    assert.is_nil((await(function(done)
      fs.mkdir(dir .. '/a/b/c', { recursive = true }, done)
    end)))
    fs.writeFileSync(dir .. '/a/b/c/z', '1')
    fs.writeFileSync(dir .. '/a/b/y', '2')
    fs.writeFileSync(dir .. '/a/x', '3')
    local _, names = await(function(done)
      fs.readdir(dir .. '/a', done)
    end)
    assert.are.same({ 'b', 'x' }, names)
    local ents = fs.readdirSync(dir .. '/a', { withFileTypes = true })
    assert.are.equal('b', ents[1].name)
    assert.is_true(ents[1]:isDirectory())
    assert.is_true(ents[2]:isFile())
    assert.is_nil(await(function(done)
      fs.rename(dir .. '/a/x', dir .. '/a/w', done)
    end))
    assert.are.equal('3', fs.readFileSync(dir .. '/a/w'))
    assert.is_nil(await(function(done)
      fs.unlink(dir .. '/a/w', done)
    end))
    assert.is_false((fs.existsSync(dir .. '/a/w')))
    assert.is_nil(await(function(done)
      fs.rm(dir .. '/a', { recursive = true }, done)
    end))
    assert.is_false((fs.existsSync(dir .. '/a')))
    assert.is_nil(await(function(done)
      fs.rm(dir .. '/a', { recursive = true, force = true }, done)
    end))
    assert.is_false(await(function(done)
      fs.exists(dir .. '/a', done)
    end))
  end)

  it('opens, reads, writes and closes descriptors', function()
    local err, fd = await(function(done)
      fs.open(dir .. '/d', 'w+', done)
    end)
    assert.is_nil(err)
    local _, n = await(function(done)
      fs.write(fd, 'abc\0def', done)
    end)
    assert.are.equal(7, n)
    local _, data = await(function(done)
      fs.read(fd, 100, 2, done)
    end)
    assert.are.equal('c\0def', data)
    assert.is_nil(await(function(done)
      fs.close(fd, done)
    end))
    err = await(function(done)
      fs.close(fd, done)
    end)
    assert.are.equal('EBADF', err.code)
    local sfd = fs.openSync(dir .. '/d')
    assert.are.equal('abc', fs.readSync(sfd, 3, 0))
    fs.closeSync(sfd)
  end)

  it('streams a file in chunks with start/end, pause and resume', function()
    fs.writeFileSync(dir .. '/s', BIN:rep(1024)) -- 256 KB
    local rs = fs.createReadStream(dir .. '/s', { highWaterMark = 1000, start = 10, ['end'] = 99999 })
    local chunks, events, ended, closed = {}, {}, false, false
    rs:on('open', function()
      events[#events + 1] = 'open'
    end)
    rs:on('data', function(c)
      chunks[#chunks + 1] = c
      if #chunks == 3 then
        rs:pause()
        setTimeout(function()
          events[#events + 1] = 'paused at ' .. #chunks
          rs:resume()
        end, 20)
      end
    end)
    rs:on('end', function()
      ended = true
    end)
    rs:on('close', function()
      closed = true
    end)
    lctest.waitFor(function()
      return closed
    end, 5000, 'the read stream to close')
    assert.is_true(ended)
    assert.are.same({ 'open', 'paused at 3' }, events)
    assert.are.equal(100, #chunks)
    assert.is_true(table.concat(chunks) == BIN:rep(1024):sub(11, 100000))
  end)

  it('gives a read stream of a missing file an error event, then close', function()
    local rs = fs.createReadStream(dir .. '/none')
    local got, closed
    rs:on('error', function(e)
      got = e
    end)
    rs:on('close', function()
      closed = true
    end)
    lctest.waitFor(function()
      return closed
    end)
    assert.are.equal('ENOENT', got.code)
    assert.are.equal(dir .. '/none', got.path)
  end)

  it('applies backpressure on write streams (false above highWaterMark, drain, finish)', function()
    local ws = fs.createWriteStream(dir .. '/w', { highWaterMark = 100 })
    assert.is_true(ws:write(('a'):rep(50)))
    assert.is_false(ws:write(('b'):rep(60)))
    local drained, finished, closed = 0, false, false
    ws:on('drain', function()
      drained = drained + 1
    end)
    ws:on('finish', function()
      finished = true
    end)
    ws:on('close', function()
      closed = true
    end)
    lctest.waitFor(function()
      return drained == 1
    end, 5000, 'drain')
    ws:finish('\0end')
    lctest.waitFor(function()
      return closed
    end, 5000, 'close')
    assert.is_true(finished)
    assert.are.equal(114, ws.bytesWritten)
    assert.are.equal(('a'):rep(50) .. ('b'):rep(60) .. '\0end', fs.readFileSync(dir .. '/w'))
    local err
    ws:on('error', function(e)
      err = e
    end)
    assert.is_false(ws:write('late'))
    lctest.waitFor(function()
      return err
    end)
    assert.are.equal('ERR_STREAM_WRITE_AFTER_END', err.code)
  end)

  it('pipes a read stream into a write stream (binary, paused by the writer)', function()
    local data = BIN:rep(8192) -- 2 MB
    fs.writeFileSync(dir .. '/src', data)
    local rs = fs.createReadStream(dir .. '/src')
    local ws = fs.createWriteStream(dir .. '/dst', { highWaterMark = 1024 })
    local pauses = 0
    local origPause = rs.pause
    rs.pause = function(self)
      pauses = pauses + 1
      return origPause(self)
    end
    local done = false
    assert.are.equal(ws, rs:pipe(ws))
    ws:on('finish', function()
      done = true
    end)
    lctest.waitFor(function()
      return done
    end, 10000, 'the copy')
    assert.is_true(pauses > 0)
    assert.is_true(fs.readFileSync(dir .. '/dst') == data)
  end)

  it('watches a folder for new and changed files', function()
    local seen = {}
    local w = fs.watch(dir, function(ev, name)
      seen[#seen + 1] = ev .. ':' .. tostring(name)
    end)
    fs.writeFileSync(dir .. '/new', 'x')
    lctest.waitFor(function()
      return #seen > 0
    end, 5000, 'a watch event')
    assert.are.equal('rename:new', seen[1])
    local closed = false
    w:on('close', function()
      closed = true
    end)
    w:close()
    lctest.waitFor(function()
      return closed
    end)
    assert.has_error(function()
      fs.watch(dir .. '/missing/x', function() end)
    end)
  end)
end)

describe('fs callbacks', function()
  after_each(lctest.cleanup)

  it('make an error raised in a callback an uncaught error', function()
    local c = lctest.spawn('spec/fixtures/fs_cb_error.lua')
    assert.are.equal(0, c:waitExit())
    assert.matches('caught: spec/fixtures/fs_cb_error.lua:9: boom in fs callback: ENOENT', c.stdout, 1, true)
    assert.matches('caught: spec/fixtures/fs_cb_error.lua:12: boom in child exit', c.stdout, 1, true)
    assert.matches('still running', c.stdout, 1, true)
  end)
end)

describe('fs to http', function()
  local dir
  before_each(function()
    dir = fs.mkdtempSync('/tmp/lcfs')
  end)
  after_each(function()
    lctest.rmrf(dir)
    lctest.cleanup()
  end)

  it('sends a 50 MB file by pipe and by sendFile with bounded memory', function()
    local file = dir .. '/big'
    assert.are.equal(0, os.execute('head -c 52428800 /dev/urandom > ' .. file))
    -- Under ASan freed memory sits in a quarantine (RSS then counts every byte ever
    -- allocated); without it the peak measures what was live, as in a normal build.
    local asan = (process.env.ASAN_OPTIONS or '') .. ':quarantine_size_mb=0:thread_local_quarantine_size_kb=0'
    local srv = lctest.spawn('spec/fixtures/fs_server.lua', { file }, { env = { ASAN_OPTIONS = asan } })
    local port = tonumber(srv:waitOutput('port (%d+)\n'))
    local base = 'http://127.0.0.1:' .. port
    -- A client slower than the disk, so the server has to wait on it.
    for _, route in ipairs({ 'pipe', 'file' }) do
      local out = dir .. '/' .. route
      assert.are.equal(0, os.execute(('curl -sf --limit-rate 50M -o %s %s/%s'):format(out, base, route)))
      assert.are.equal(0, os.execute(('cmp -s %s %s'):format(out, file)), route .. ' body differs')
      os.remove(out)
    end
    local h = io.popen(('curl -s -o /dev/null -w "%%{http_code}" %s/missing'):format(base))
    assert.are.equal('404', h:read('*a'))
    h:close()
    h = io.popen(('curl -s %s/rss'):format(base))
    local kb = tonumber(h:read('*a'))
    h:close()
    -- Two 50 MB bodies went through; the process never held more than a few chunks.
    assert.is_true(kb < 30 * 1024, 'peak RSS ' .. tostring(kb) .. ' kB')
  end)

  it('survives clients that leave mid-file and closes what the transfer opened', function()
    local file = dir .. '/big'
    assert.are.equal(0, os.execute('head -c 20971520 /dev/zero > ' .. file))
    local srv = lctest.spawn('spec/fixtures/fs_server.lua', { file })
    local port = tonumber(srv:waitOutput('port (%d+)\n'))
    local base = 'http://127.0.0.1:' .. port
    local function get(route)
      local h = io.popen(('curl -s %s/%s'):format(base, route))
      local body = h:read('*a')
      h:close()
      return body
    end
    local fds = tonumber(get('fds'))
    for _, route in ipairs({ 'file', 'pipe', 'file', 'pipe' }) do
      -- A slow client that gives up after a fraction of the body.
      os.execute(('curl -s --limit-rate 2M --max-time 0.3 -o /dev/null %s/%s'):format(base, route))
    end
    lctest.waitFor(function()
      return tonumber(get('fds')) == fds
    end, 5000, 'the server to close the files and sockets of the abandoned transfers')
    assert.is_false(srv.exited)
  end)
end)
