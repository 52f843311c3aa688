// Hello-world for PM2's cluster mode (bench/deploy/run): one "host" is one PM2 daemon running
//   pm2 start pm2_app.js -i 2 --name NAME -- PORT HOST
// GET /health answers 200 (HAProxy's check, on the same port: PM2 has no health endpoint of
// its own), anything else "hello world". On SIGINT, PM2's stop signal during `pm2 reload`, it
// shuts down the way PM2's documentation shows (graceful shutdown): server.close(), which
// stops accepting and closes idle keep-alive connections, then exit once the in-flight
// requests are answered.
'use strict';
const http = require('http');
const [port, host] = [Number(process.argv[2] || 8000), process.argv[3] || '127.0.0.1'];

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(req.url === '/health' ? 'ok\n' : 'hello world\n');
});
server.listen(port, host);
process.on('SIGINT', () => {
  server.close(() => process.exit(0));
});
