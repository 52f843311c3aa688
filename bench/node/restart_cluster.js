// PM2-style hand-written zero-downtime restart in Node's cluster, after seed 001's
// restartWorker: the master forks WORKERS workers serving hello-world and, on SIGHUP or
// SIGUSR2, restarts them one at a time.
//   node restart_cluster.js PORT WORKERS [seed|overlap]
// seed (default): the seed's code as written: disconnect the old worker, on its 'exit' fork
//   the replacement, on the replacement's 'listening' go on with the next one.
// overlap: fork the replacement first and disconnect the old worker once the new one is
//   'listening' (what PM2's reload does), so the slot is never empty.
// Prints "ready N" when the first N workers listen and "restart complete" after each restart.
'use strict';
const cluster = require('cluster');
const http = require('http');
const [port, count, mode] = [Number(process.argv[2] || 8000), Number(process.argv[3] || 2),
  process.argv[4] || 'seed'];

if (cluster.isPrimary) {
  let listening = 0;
  const onListening = () => {
    if (++listening === count) console.log('ready ' + count);
  };
  cluster.on('listening', onListening);
  for (let i = 0; i < count; i++) cluster.fork();
  // Crashed workers are replaced (seed 001), deliberate exits are not.
  cluster.on('exit', (worker, code) => {
    if (code !== 0 && !worker.exitedAfterDisconnect) cluster.fork();
  });

  let restarting = false;
  let pending = false;
  const restartAll = () => {
    if (restarting) { pending = true; return; }
    restarting = true;
    const workers = Object.values(cluster.workers);
    const done = () => {
      console.log('restart complete');
      restarting = false;
      if (pending) { pending = false; restartAll(); }
    };
    // seed 001's restartWorker
    const restartWorker = (workerIndex) => {
      const worker = workers[workerIndex];
      if (!worker) return done();
      if (mode === 'overlap') {
        cluster.fork().on('listening', () => {
          worker.on('exit', () => restartWorker(workerIndex + 1));
          worker.disconnect();
        });
        return;
      }
      worker.on('exit', () => {
        if (!worker.exitedAfterDisconnect) return;
        cluster.fork().on('listening', () => {
          restartWorker(workerIndex + 1);
        });
      });
      worker.disconnect();
    };
    restartWorker(0);
  };
  process.on('SIGHUP', restartAll);
  process.on('SIGUSR2', restartAll);
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('hello world\n');
  }).listen(port, '127.0.0.1');
}
