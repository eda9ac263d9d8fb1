// shop-frontend/server.js (Node 20 upgrade, deployed 2026-11-22 12:40)
const http = require('node:http');
const app = require('./app');
const server = http.createServer(app);
// Node's default keepAliveTimeout is 5 s
server.listen(3000, () => console.log('listening on 3000'));
