// node_app.js: the Node side of bench/realistic/run (the same routes as app.lua), cluster RR.
//   node node_app.js PORT WORKERS FILE64K
// POST /json: JSON.parse the body, answer a 1 KB JSON object; GET /64k: 64 KB from memory;
// GET /file: FILE64K with fs.createReadStream().pipe(res); anything else: hello world.
// keepAliveTimeout is off so idle connections stay open while the bench measures them.
'use strict';
const cluster = require('cluster');
const http = require('http');
const fs = require('fs');
const [port, workers, file] = [Number(process.argv[2]), Number(process.argv[3] || 2), process.argv[4]];
cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
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
  const BIG = Buffer.alloc(65536, 'x');
  const items = [];
  for (let i = 1; i <= 12; i++) {
    items.push({ id: i, name: 'item-' + i, price: i * 1.25, tags: ['a', 'b', 'c'], active: true });
  }
  const server = http.createServer((req, res) => {
    const url = req.url;
    if (url === '/json') {
      const parts = [];
      req.on('data', (c) => parts.push(c));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(parts).toString());
        const out = JSON.stringify({ ok: true, n: body.items.length, user: body.user, items });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(out) });
        res.end(out);
      });
    } else if (url === '/64k') {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': 65536 });
      res.end(BIG);
    } else if (url === '/file') {
      fs.stat(file, (err, st) => {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': st.size });
        fs.createReadStream(file).pipe(res);
      });
    } else {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('hello world\n');
    }
  });
  server.keepAliveTimeout = 0;
  server.listen(port, '127.0.0.1');
}
