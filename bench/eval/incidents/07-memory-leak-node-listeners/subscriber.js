// src/realtime/subscriber.js
const { EventEmitter } = require('node:events');
const bus = new EventEmitter();
redis.subscribe('notifications');
redis.on('message', (channel, raw) => bus.emit('message', JSON.parse(raw)));

function attach(ws, userId) {
  const onMessage = (msg) => {
    if (msg.userId === userId) ws.send(JSON.stringify(msg));
  };
  bus.on('message', onMessage);
  ws.on('close', () => {
    log.info({ clients: wss.clients.size }, 'ws client disconnected');
  });
}
module.exports = { attach };
