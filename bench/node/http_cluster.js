// Node's cluster serving hello-world: node http_cluster.js PORT WORKERS [rr|none] [cpu]
// Prints "ready N" once every worker is listening (used for start-up timing).
'use strict';
const cluster = require('cluster');
const http = require('http');
const [port, workers, policy, mode] = [Number(process.argv[2] || 8000),
  Number(process.argv[3] || 2), process.argv[4] || 'rr', process.argv[5] || 'hello'];
cluster.schedulingPolicy = policy === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;

function longComputation() {
  let sum = 0;
  for (let i = 0; i < 1e7; i++) sum += i;
  return sum;
}

if (cluster.isPrimary && workers > 0) {
  let listening = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready ' + workers);
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http.createServer((req, res) => {
    if (mode === 'cpu') {
      res.end('Sum is ' + longComputation() + '\n');
    } else {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('hello world\n');
    }
  }).listen(port, () => { if (workers === 0) console.log('ready 1'); });
}
