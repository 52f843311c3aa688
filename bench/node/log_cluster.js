// Node's cluster with silent: true, the master piping each worker's stdout to its own with a
// per-line tag (what PM2's daemon does): node log_cluster.js N. The worker prints N lines of
// 100 bytes, then "done N". The log-throughput comparison of bench/ops/run.
'use strict';
const cluster = require('cluster');
const readline = require('readline');
const n = Number(process.argv[2] || 200000);
if (cluster.isPrimary) {
  cluster.setupPrimary({ silent: true });
  const w = cluster.fork();
  const tag = `[w1 ${w.process.pid}] `;
  readline.createInterface({ input: w.process.stdout }).on('line', (l) => {
    process.stdout.write(tag + l + '\n');
  });
  process.on('SIGTERM', () => {
    w.kill();
    process.exit(0);
  });
} else {
  const line = 'x'.repeat(99) + '\n';
  let i = 0;
  (function write() {
    while (i < n) {
      i++;
      if (!process.stdout.write(line)) return process.stdout.once('drain', write);
    }
    process.stdout.write('done ' + n + '\n');
  })();
  setInterval(() => {}, 60000);
}
