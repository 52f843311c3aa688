-- The cluster channel decodes the JSON of frames in C as it reads them (runtime/ipc.c, with
-- the cjson.decode fast path of runtime/json_decode.c), straight from its read buffer: a
-- worker writes user frames of its own making (small ones several to a write, so each body
-- is followed by the next frame's header; large ones whose frame fills its buffer to the last
-- byte; 1008 levels deep; bodies only lua-cjson accepts). The master sees which frames came
-- decoded (a negative kind) and checks every value against lua-cjson's decode of the body.
local lctest = require('lctest')

describe('IPC frames decoded in C', function()
  after_each(lctest.cleanup)

  it('give what lua-cjson decodes; forms only lua-cjson accepts go to it', function()
    local c = lctest.spawn('spec/fixtures/ipc_decode.lua')
    local code = c:waitExit(30000)
    assert.are.equal(0, code, c.stderr)
    local got = {}
    for r in c.stdout:gmatch('RESULT ([^\n]*)') do
      got[#got + 1] = r
    end
    local want = { 'before 4' }
    for i = 1, 17 do
      -- Bodies 9 and 10 hold 01, 0x10, 1. and -Infinity: lua-cjson's, as strings.
      want[#want + 1] = ('%d %d true'):format(i, (i == 9 or i == 10) and 1 or -1)
    end
    want[#want + 1] = 'after 4'
    want[#want + 1] = 'exit 0'
    assert.are.same(want, got)
  end)
end)
