// Node's cluster serving HTTPS hello-world: node https_cluster.js PORT WORKERS CERTDIR
// Same certificate as the others; session tickets on (Node's default; the workers share
// one ticket key given here, as lcluster's master and nginx's ssl_session_ticket_key do).
// Prints "ready N" once every worker is listening.
'use strict';
const cluster = require('cluster');
const crypto = require('crypto');
const fs = require('fs');
const https = require('https');
const [port, workers, dir] = [Number(process.argv[2] || 8443), Number(process.argv[3] || 2),
  process.argv[4] || '.'];
cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
  const ticketKeys = crypto.randomBytes(48).toString('hex');
  let listening = 0;
  for (let i = 0; i < workers; i++) cluster.fork({ TICKET_KEYS: ticketKeys });
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready ' + workers);
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  https.createServer({
    key: fs.readFileSync(dir + '/server.key'),
    cert: fs.readFileSync(dir + '/server.pem'),
    ticketKeys: Buffer.from(process.env.TICKET_KEYS, 'hex'),
  }, (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('hello world\n');
  }).listen(port, '127.0.0.1');
}
