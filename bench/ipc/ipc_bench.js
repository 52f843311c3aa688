// bench/ipc/ipc_bench.js: the Node twin of ipc_bench.lua (same tests, same output).
'use strict';
const cluster = require('cluster');
const [test, countArg] = process.argv.slice(2);
const count = Number(countArg);

if (cluster.isPrimary) {
  const w = cluster.fork();
  let t0, n = 0;
  const done = (rate) => {
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(JSON.stringify({ test, count, seconds: secs, rate: rate(secs) }));
    w.process.kill('SIGKILL');
    process.exit(0);
  };
  w.on('online', () => {
    t0 = process.hrtime.bigint();
    w.send(test === 'pingpong' ? '0123456789abcdef' : 'go');
  });
  w.on('message', (m) => {
    n++;
    if (test === 'pingpong') {
      if (n === count) return done((s) => count / s);
      w.send(m);
    } else if (n === count) {
      if (test === 'big' && m.length !== 1024 * 1024) throw new Error('bad size');
      return done((s) => count / s);
    }
  });
} else {
  const big = 'x'.repeat(1024 * 1024);
  process.on('message', (m) => {
    if (test === 'pingpong') {
      process.send(m);
    } else if (test === 'stream') {
      for (let i = 1; i <= count; i++) process.send({ seq: i, v: 'abc' });
    } else {
      for (let i = 0; i < count; i++) process.send(big);
    }
  });
}
