-- load_loop.lua (a helper of this project's specs, not part of lctest): `loops` concurrent
-- request loops, each sending its next request once the last one is done, until stop().
-- Answers with status 200 count in st.ok (onOk(st, r) sees each), the others in st.failed
-- with a message each in st.errors. request(i) -> an lctest.get record. stop() waits up to
-- stopMs for every loop to end. st: a table to fill in (fields of the caller's own), or nil.
local lctest = require('lctest')

return function(loops, request, stopMs, onOk, st)
  st = st or {}
  st.ok, st.failed, st.errors, st.running, st.live = 0, 0, {}, true, loops
  local function one(i)
    if not st.running then
      st.live = st.live - 1
      return
    end
    local r = request(i)
    local function check()
      if not r.done then
        return setImmediate(check)
      end
      if r.status == 200 then
        st.ok = st.ok + 1
        if onOk then
          onOk(st, r)
        end
      else
        st.failed = st.failed + 1
        st.errors[#st.errors + 1] = r.err or ('status ' .. tostring(r.status))
      end
      one(i)
    end
    check()
  end
  for i = 1, loops do
    one(i)
  end
  function st.stop()
    st.running = false
    lctest.waitFor(function()
      return st.live == 0
    end, stopMs, 'the load loop to stop')
  end
  return st
end
