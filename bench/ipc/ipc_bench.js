// bench/ipc/ipc_bench.js: the Node twin of ipc_bench.lua (same tests, same output).
// The bigtable tests stream as Node's own contract asks: send returns false over its
// high-water mark, and the producer resumes from that message's callback (Node's process
// has no 'drain' event).
'use strict';
const cluster = require('cluster');
const [test, countArg] = process.argv.slice(2);
const count = Number(countArg);
const MiB = 1024 * 1024;

// Sends {i, p: big} count times through send(msg, cb) -> boolean, pausing after a false
// until that message's callback.
function streamer(big, send) {
  let sent = 0;
  const pump = () => {
    while (sent < count) {
      sent++;
      let paused = false;
      const ok = send({ i: sent, p: big }, () => { if (paused) pump(); });
      if (!ok) { paused = true; return; }
    }
  };
  return pump;
}

if (cluster.isPrimary) {
  const w = cluster.fork();
  let t0, n = 0;
  const done = (rate) => {
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(JSON.stringify({ test, count, seconds: secs, rate: rate(secs) }));
    w.process.kill('SIGKILL');
    process.exit(0);
  };
  const perSecond = (s) => count / s;
  w.on('online', () => {
    t0 = process.hrtime.bigint();
    if (test === 'pingpong') {
      w.send('0123456789abcdef');
    } else if (test === 'bigtable-down') {
      streamer('x'.repeat(MiB), (m, cb) => w.send(m, cb))();
    } else {
      w.send('go');
    }
  });
  w.on('message', (m) => {
    n++;
    if (test === 'pingpong') {
      if (n === count) return done(perSecond);
      w.send(m);
    } else if (test === 'bigtable-down') {
      if (m !== 'done') throw new Error('bad answer');
      return done(perSecond);
    } else if (test === 'bigtable-up') {
      if (m.i !== n || m.p.length !== MiB) throw new Error('out of order or damaged');
      if (n === count) return done(perSecond);
    } else if (n === count) {
      if (test === 'big' && m.length !== MiB) throw new Error('bad size');
      return done(perSecond);
    }
  });
} else {
  const big = 'x'.repeat(MiB);
  let n = 0;
  process.on('message', (m) => {
    if (test === 'pingpong') {
      process.send(m);
    } else if (test === 'stream') {
      for (let i = 1; i <= count; i++) process.send({ seq: i, v: 'abc' });
    } else if (test === 'bigtable-up') {
      streamer(big, (msg, cb) => process.send(msg, cb))();
    } else if (test === 'bigtable-down') {
      n++;
      if (m.i !== n || m.p.length !== MiB) throw new Error('out of order or damaged');
      if (n === count) process.send('done');
    } else {
      for (let i = 0; i < count; i++) process.send(big);
    }
  });
}
