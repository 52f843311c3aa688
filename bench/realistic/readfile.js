// readfile.js: fs.readFile throughput, the Node side of bench/realistic/run's row.
//   node readfile.js FILE RUNS   -> "readFile MiB/s best size N"
'use strict';
const fs = require('fs');
const [file, runs] = [process.argv[2], Number(process.argv[3] || 3)];
let best = 0, i = 0;
function one() {
  i++;
  const t0 = process.hrtime.bigint();
  fs.readFile(file, (err, data) => {
    if (err) throw err;
    const rate = data.length / 1048576 / (Number(process.hrtime.bigint() - t0) / 1e9);
    if (rate > best) best = rate;
    if (i < runs) return one();
    console.log(`readFile ${best.toFixed(0)} MiB/s size ${data.length}`);
  });
}
one();
