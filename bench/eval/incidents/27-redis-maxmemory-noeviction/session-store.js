// src/session/store.js (changed in PR #4412 "use SET instead of SETEX so sliding sessions work")
async function save(id, data) {
  await redis.set(`sess:${id}`, JSON.stringify(data));
}
