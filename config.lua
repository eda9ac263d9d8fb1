-- config.lua: the environment turned into settings.
--
-- Every setting the engine reads is declared here once: its environment variable, its type and
-- bounds, its default and what it means. `faultmaven check-config` prints the resolved values and
-- docs/CONFIG.md is written from the same table. Settings that C holds from start (listen address,
-- worker counts, limits) are read once; changing them needs a restart.

local M = {}

local engine_ok, engine = pcall(require, "fm.engine")
local ncpu = engine_ok and engine.cpu_count() or 2

local rl_ok, rl = pcall(require, "fm.ratelimit_core")

-- DATABASE_URL is parsed by the engine's own parser (fm.db), so a URL the engine would refuse
-- stops it here with exit 2; its password is masked wherever the value is shown.
local db_ok, db = pcall(require, "fm.db")
local function mask_url(u)
  if db_ok then return db.mask_url(u) end
  return "********"
end
local function check_url(u)
  if not db_ok then return nil end
  local _, err = db.parse_url(u)
  return err
end

-- kind: string | int | number | bool | enum | list
-- secret = true: shown as ******** ; mask = fn(value): shown as fn(value) (a URL's password);
-- check = fn(value, settings) -> nil | message: a further check of the resolved value (default
-- included); settings holds every resolved value (to check one against another).
-- reload = true: the setting applies with the next Lua generation (hot reload). Every other
-- setting is held by C from start: a reload that changes it reports "restart required" and the
-- running engine keeps the old value (see M.pin).
M.specs = {
  { env = "DEPLOYMENT_MODE", key = "deployment_mode", kind = "enum",
    values = { "local", "docker", "kubernetes" }, default = "local",
    doc = "local, docker or kubernetes: decides the default bind address and service URLs." },
  { env = "FM_HOST", key = "host", kind = "string",
    default = function(s) return s.deployment_mode == "local" and "127.0.0.1" or "0.0.0.0" end,
    default_doc = "127.0.0.1 in local mode, 0.0.0.0 otherwise",
    doc = "Address the HTTP server listens on." },
  { env = "FM_PORT", key = "port", kind = "int", min = 0, max = 65535, default = 8090,
    doc = "HTTP port (0 picks a free port; the log line \"listening\" names it)." },
  { env = "FM_DATA_DIR", key = "data_dir", kind = "string", default = "./data",
    doc = "Directory for the embedded database, uploads, indexes and temp files." },
  { env = "FM_HOME", key = "home", kind = "string", default = ".",
    default_doc = "the current directory if it has config.lua, else the install prefix",
    doc = "Where config.lua, lua/, playbooks/ and kb/ are read from." },
  { env = "FM_WORKERS", key = "workers", kind = "int", min = 1, max = 512,
    default = function() return math.max(2, 2 * ncpu) end, default_doc = "2 x CPU cores",
    doc = "Lua worker threads; each owns one Lua VM and runs one request at a time." },
  { env = "FM_HTTP_IO_THREADS", key = "http_io_threads", kind = "int", min = 1, max = 64,
    default = function() return math.min(math.max(ncpu, 1), 4) end,
    default_doc = "CPU cores, at most 4",
    doc = "libmicrohttpd I/O threads (epoll); they parse and stream, never run Lua." },
  { env = "FM_SHUTDOWN_GRACE_S", key = "shutdown_grace_s", kind = "number", min = 0, max = 3600,
    default = 30, doc = "On SIGTERM/SIGINT, seconds in-flight requests get to finish." },
  { env = "LOG_LEVEL", key = "log_level", reload = true, kind = "enum", lower = true,
    values = { "debug", "info", "warn", "warning", "error", "off" }, default = "info",
    doc = "Threshold of the JSON log on stderr (any case: INFO works)." },
  { env = "FM_LUA_MEMORY_MB", key = "lua_memory_mb", kind = "int", min = 8, max = 65536,
    default = 128,
    doc = "Memory cap of each worker's Lua VM; a request that exceeds it gets 503." },
  { env = "FM_REQUEST_INSTRUCTION_LIMIT", key = "request_instruction_limit", kind = "int",
    min = 0, max = 1e15, default = 200000000,
    doc = "Lua VM instructions one request may run before it fails with 500 (0: no limit)." },
  { env = "FM_MAX_BODY_BYTES", key = "max_body_bytes", reload = true, kind = "int", min = 1024,
    max = 1 << 40,
    default = 1048576,
    doc = "Largest request body on routes that set no limit of their own (413)." },
  { env = "MAX_UPLOAD_SIZE_MB", key = "max_upload_size_mb", reload = true, kind = "int", min = 1,
    max = 1 << 20,
    default = 10, doc = "Largest uploaded file (evidence, knowledge documents)." },
  { env = "UPLOAD_ALLOWED_EXTENSIONS", key = "upload_allowed_extensions", reload = true,
    kind = "string",
    default = ".txt,.log,.json,.jsonl,.ndjson,.csv,.tsv,.md,.yaml,.yml,.conf,.cfg,.ini,.toml,"
      .. ".xml,.properties,.env,.out,.err,.trace,.prom,.gz",
    doc = "File extensions accepted on turns (comma-separated; a name without an extension is "
      .. "always accepted). Others are 415." },
  { env = "FM_UPLOAD_SWEEP_GRACE_S", key = "upload_sweep_grace_s", reload = true, kind = "int",
    min = 1, max = 30 * 86400, default = 3600,
    doc = "The upload sweeper removes stored objects that no uploaded file names once they are "
      .. "this old (an upload in flight has its object before its row: keep it well above the "
      .. "longest upload)." },
  { env = "FM_HOUSEKEEPING_INTERVAL_S", key = "housekeeping_interval_s", kind = "int", min = 0,
    max = 86400, default = 600,
    doc = "Seconds between housekeeping runs (upload sweeper, expired idempotency keys and "
      .. "refresh tokens); 0 turns it off." },
  { env = "FM_JOB_WORKERS", key = "job_workers", kind = "int", min = 0, max = 64, default = 1,
    doc = "Background job runner threads (knowledge ingestion), each with its own Lua VM; 0 "
      .. "runs no jobs in this engine (another replica on the same database may)." },
  { env = "FM_JOB_POLL_MS", key = "job_poll_ms", kind = "int", min = 10, max = 600000,
    default = 1000,
    doc = "How often an idle job runner looks for due jobs (an enqueue in the same engine wakes "
      .. "it at once; jobs queued by other replicas or retried later wait for the poll)." },
  { env = "FM_JOB_LEASE_S", key = "job_lease_s", reload = true, kind = "int", min = 2,
    max = 86400, default = 300,
    doc = "A running job whose runner has not renewed its lock for this long (its engine died) "
      .. "is taken again by another runner." },
  { env = "FM_MAX_URL_BYTES", key = "max_url_bytes", kind = "int", min = 256, max = 1 << 20,
    default = 8192, doc = "Longest request URL (414 above)." },
  { env = "FM_MAX_HEADER_BYTES", key = "max_header_bytes", kind = "int", min = 1024,
    max = 1 << 20, default = 16384,
    doc = "Largest total size of request headers (431 above). Each connection's libmicrohttpd "
      .. "memory pool is this plus 4 KiB and is cleared on every request: raising it costs "
      .. "throughput." },
  { env = "FM_JSON_MAX_DEPTH", key = "json_max_depth", reload = true, kind = "int", min = 1,
    max = 1000,
    default = 64, doc = "Deepest nesting accepted in a JSON request body (400 above)." },
  { env = "FM_HTTP_IDLE_TIMEOUT_S", key = "http_idle_timeout_s", kind = "int", min = 1,
    max = 86400, default = 60, doc = "Idle keep-alive connections are closed after this." },
  { env = "FM_HTTP_MAX_CONNECTIONS", key = "http_max_connections", kind = "int", min = 16,
    max = 1000000, default = 4096, doc = "Concurrent connections accepted." },
  { env = "FM_LUA_PATH", key = "lua_path", kind = "string", default = "",
    doc = "Extra Lua search path templates (`/x/?.lua;...`), searched before FM_HOME/lua." },
  { env = "FM_EXTRA_ROUTES", key = "extra_routes", reload = true, kind = "list", default = {},
    doc = "Comma-separated Lua modules, each a route module loaded after the built-in routes." },
  { env = "FM_RELOAD_WATCH", key = "reload_watch", kind = "bool", default = true,
    doc = "Watch config.lua, lua/ and playbooks/ with inotify and reload on change (SIGHUP, "
      .. "`faultmaven reload` and admin.reload() work either way)." },
  { env = "FM_RELOAD_DEBOUNCE_MS", key = "reload_debounce_ms", kind = "int", min = 10,
    max = 10000, default = 150,
    doc = "Quiet time after the last file change before a reload starts (a steady stream of "
      .. "changes still reloads every 2 s)." },
  { env = "FM_PLAYBOOK_INSTRUCTION_LIMIT", key = "playbook_instruction_limit", reload = true,
    kind = "int", min = 1000, max = 1e12, default = 10000000,
    doc = "Lua VM instructions one playbook run (loading its file, or one step) may use." },
  { env = "FM_PLAYBOOK_MEMORY_MB", key = "playbook_memory_mb", reload = true, kind = "int",
    min = 1, max = 4096, default = 16,
    doc = "Memory one playbook run may allocate above what its VM held when it started." },
  { env = "AGENT_REQUEST_TIMEOUT", key = "agent_request_timeout", reload = true, kind = "number",
    min = 1, max = 3600, default = 120,
    doc = "Seconds the investigation of one turn may take (playbooks, LLM steps); past it the "
      .. "turn answers 504 REQUEST_TIMEOUT, stores nothing and may be retried." },
  { env = "DATABASE_URL", key = "database_url", kind = "string", mask = mask_url,
    check = check_url,
    default = function(s) return "sqlite:///" .. s.data_dir .. "/faultmaven.db" end,
    default_doc = "`sqlite:///<FM_DATA_DIR>/faultmaven.db`",
    doc = "The database: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or "
      .. "`postgresql://user:password@host:5432/db?sslmode=require` (`sqlite+aiosqlite`, "
      .. "`postgresql+asyncpg` and `postgres` are accepted). The password is masked wherever "
      .. "the URL is shown. See docs/DATABASE.md." },
  { env = "DATABASE_POOL_SIZE", key = "database_pool_size", kind = "int", min = 1, max = 1024,
    default = function(s) return s.workers + 2 end, default_doc = "FM_WORKERS + 2",
    doc = "Database connections at most, opened on demand." },
  { env = "DATABASE_POOL_TIMEOUT_S", key = "database_pool_timeout_s", kind = "number", min = 0,
    max = 3600, default = 10,
    doc = "How long a call waits for a free database connection before it fails with "
      .. "\"database pool exhausted\"." },
  { env = "DATABASE_CONNECT_TIMEOUT_S", key = "database_connect_timeout_s", kind = "number",
    min = 0, max = 3600, default = 30,
    doc = "At start, how long the engine retries connecting to the database (exponential "
      .. "backoff with jitter, each attempt logged) before it exits 1." },
  { env = "DATABASE_STATEMENT_TIMEOUT_S", key = "database_statement_timeout_s", kind = "number",
    min = 0, max = 3600, default = 30,
    doc = "PostgreSQL: longest a statement may run (statement_timeout of every pooled session); "
      .. "past it the request gets 503. 0: no limit. A statement in the URL's `options` wins." },
  { env = "KV_MEMORY_MAX_MB", key = "kv_memory_max_mb", kind = "int", min = 1, max = 65536,
    default = 64,
    doc = "The in-process key-value store (used when no Redis is set): its memory bound. When "
      .. "full, expired entries go first, then the least recently used. See docs/KV.md." },
  { env = "REDIS_MODE", key = "redis_mode", kind = "enum", lower = true,
    values = { "standalone", "sentinel" }, default = "standalone",
    check = function(v, s)
      if v == "sentinel" and #s.redis_sentinel_hosts == 0 then
        return "sentinel needs REDIS_SENTINEL_HOSTS"
      end
    end,
    doc = "standalone: one Redis at REDIS_URL or REDIS_HOST. sentinel: the master of "
      .. "REDIS_MASTER_SET as REDIS_SENTINEL_HOSTS say (REDIS_URL and REDIS_HOST are ignored; "
      .. "REDIS_PASSWORD and REDIS_DB apply to the master). See docs/KV.md." },
  { env = "REDIS_SENTINEL_HOSTS", key = "redis_sentinel_hosts", kind = "list", default = {},
    check = function(list)
      for _, h in ipairs(list) do
        local host, port = h:match("^%[?([^%[%]]-)%]?:(%d+)$")
        port = tonumber(port)
        if not host or host == "" or not port or port < 1 or port > 65535 then
          return "expected host:port,host:port,... got '" .. h .. "'"
        end
      end
      if #list > 16 then return "at most 16 sentinels" end
    end,
    doc = "With REDIS_MODE=sentinel: the sentinels, host:port,host:port,... asked in this order "
      .. "for the master's address." },
  { env = "REDIS_MASTER_SET", key = "redis_master_set", kind = "string", default = "mymaster",
    doc = "With REDIS_MODE=sentinel: the name the sentinels monitor the master under." },
  { env = "REDIS_SENTINEL_PASSWORD", key = "redis_sentinel_password", kind = "string",
    default = "", secret = true,
    doc = "With REDIS_MODE=sentinel: the sentinels' password (AUTH), if they have one. The "
      .. "master's is REDIS_PASSWORD." },
  { env = "REDIS_URL", key = "redis_url", kind = "string", default = "", mask = mask_url,
    check = function(u)
      if u ~= "" and not u:match("^redis://") then
        return "expected redis://[:password@]host[:port][/db]"
      end
    end,
    doc = "redis://[:password@]host[:port][/db]. Wins over REDIS_HOST. Empty with REDIS_HOST "
      .. "empty: the in-process store (one process only)." },
  { env = "REDIS_HOST", key = "redis_host", kind = "string", default = "",
    doc = "Redis host (with REDIS_PORT, REDIS_PASSWORD, REDIS_DB) when REDIS_URL is empty." },
  { env = "REDIS_PORT", key = "redis_port", kind = "int", min = 1, max = 65535, default = 6379,
    doc = "Redis port, with REDIS_HOST." },
  { env = "REDIS_PASSWORD", key = "redis_password", kind = "string", default = "", secret = true,
    doc = "Redis password (AUTH), with REDIS_HOST, or REDIS_URL without one." },
  { env = "REDIS_DB", key = "redis_db", kind = "int", min = 0, max = 1000000, default = 0,
    doc = "Redis database number, with REDIS_HOST." },
  { env = "REDIS_POOL_SIZE", key = "redis_pool_size", kind = "int", min = 1, max = 1024,
    default = function(s) return s.workers + 2 end, default_doc = "FM_WORKERS + 2",
    doc = "Redis connections at most, opened on demand." },
  { env = "REDIS_TIMEOUT_MS", key = "redis_timeout_ms", kind = "int", min = 10, max = 600000,
    default = 2000,
    doc = "Redis connect and command timeout; also how long a call waits for a free pooled "
      .. "connection. Past it the call fails with KV_TIMEOUT or KV_UNAVAILABLE." },
  -- files: uploads and evidence (docs/STORAGE.md)
  { env = "STORAGE_BACKEND", key = "storage_backend", kind = "enum", lower = true,
    values = { "local", "s3" }, default = "",
    doc = "Alias of STORAGE_PROVIDER (the name older FaultMaven deployments use)." },
  { env = "STORAGE_PROVIDER", key = "storage_provider", kind = "enum", lower = true,
    values = { "local", "s3" },
    default = function(s) return s.storage_backend ~= "" and s.storage_backend or "local" end,
    default_doc = "STORAGE_BACKEND, else local",
    check = function(v, s)
      if v ~= "s3" then return nil end
      local missing = {}
      if s.s3_bucket_name == "" then missing[#missing + 1] = "S3_BUCKET_NAME" end
      if s.aws_access_key_id == "" then missing[#missing + 1] = "AWS_ACCESS_KEY_ID" end
      if s.aws_secret_access_key == "" then missing[#missing + 1] = "AWS_SECRET_ACCESS_KEY" end
      if #missing > 0 then return "s3 needs " .. table.concat(missing, ", ") end
    end,
    doc = "Where uploaded files go: local (FM_UPLOADS_DIR) or s3 (an S3 or S3-compatible "
      .. "bucket: S3_BUCKET_NAME, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). See "
      .. "docs/STORAGE.md." },
  { env = "FM_UPLOADS_DIR", key = "uploads_dir", kind = "string",
    default = function(s) return s.data_dir .. "/uploads" end,
    default_doc = "`<FM_DATA_DIR>/uploads`",
    doc = "STORAGE_PROVIDER=local: the directory objects are stored in (written to a temp file, "
      .. "fsync'd, renamed, directory fsync'd)." },
  { env = "S3_BUCKET_NAME", key = "s3_bucket_name", kind = "string", default = "",
    check = function(v)
      if v ~= "" and not v:match("^[a-z0-9][a-z0-9.-]*[a-z0-9]$") then
        return "expected a bucket name: [a-z0-9.-], 3 to 63 characters"
      end
    end,
    doc = "STORAGE_PROVIDER=s3: the bucket." },
  { env = "AWS_REGION", key = "aws_region", kind = "string", default = "us-east-1",
    doc = "STORAGE_PROVIDER=s3: the bucket's region (signatures name it)." },
  { env = "AWS_ACCESS_KEY_ID", key = "aws_access_key_id", kind = "string", default = "",
    doc = "STORAGE_PROVIDER=s3: the access key id." },
  { env = "AWS_SECRET_ACCESS_KEY", key = "aws_secret_access_key", kind = "string", default = "",
    secret = true, doc = "STORAGE_PROVIDER=s3: the secret access key." },
  { env = "AWS_SESSION_TOKEN", key = "aws_session_token", kind = "string", default = "",
    secret = true,
    doc = "STORAGE_PROVIDER=s3: a session token, with temporary credentials (STS)." },
  { env = "S3_ENDPOINT_URL", key = "s3_endpoint_url", kind = "string", default = "",
    check = function(v)
      if v ~= "" and not v:match("^https?://[^/?#]+/?$") then
        return "expected http(s)://host[:port]"
      end
    end,
    doc = "STORAGE_PROVIDER=s3: an S3-compatible server (MinIO, Ceph, R2), http(s)://host[:port]. "
      .. "Empty: AWS (https://s3.<AWS_REGION>.amazonaws.com)." },
  { env = "S3_FORCE_PATH_STYLE", key = "s3_force_path_style", kind = "bool",
    default = function(s) return s.s3_endpoint_url ~= "" end,
    default_doc = "true when S3_ENDPOINT_URL is set, else false",
    doc = "Address objects as <endpoint>/<bucket>/<key> (MinIO, Ceph) instead of "
      .. "<bucket>.<endpoint>/<key>." },
  { env = "S3_MULTIPART_THRESHOLD_MB", key = "s3_multipart_threshold_mb", kind = "int", min = 5,
    max = 5120, default = 16,
    doc = "Files this large or larger are uploaded in parts (multipart upload); smaller ones in "
      .. "one PUT." },
  { env = "S3_PART_SIZE_MB", key = "s3_part_size_mb", kind = "int", min = 5, max = 5120,
    default = 8,
    doc = "Size of each part of a multipart upload (one part is in memory at a time)." },
  { env = "S3_TIMEOUT_S", key = "s3_timeout_s", kind = "number", min = 1, max = 3600, default = 60,
    doc = "Longest an S3 request may take (a streamed download: longest it may stall)." },
  { env = "S3_MAX_RETRIES", key = "s3_max_retries", kind = "int", min = 0, max = 20, default = 3,
    doc = "Retries of an S3 request after a 5xx, throttling or a network error (exponential "
      .. "backoff with jitter); each attempt goes through the `s3` circuit breaker." },
  -- embeddings and vectors (docs/VECTORS.md)
  { env = "EMBEDDING_PROVIDER", key = "embedding_provider", kind = "enum", lower = true,
    values = { "hashing", "openai" }, default = "hashing",
    check = function(v, s)
      if v ~= "openai" then return nil end
      if s.embedding_api_base == "" then return "openai needs EMBEDDING_API_BASE" end
      if s.embedding_model == "" then return "openai needs EMBEDDING_MODEL" end
    end,
    doc = "hashing: the built-in embedder (deterministic, no model; word and character n-gram "
      .. "feature hashing). openai: any OpenAI-compatible /v1/embeddings API (OpenAI, Ollama, "
      .. "vLLM, TEI) at EMBEDDING_API_BASE. See docs/VECTORS.md." },
  { env = "EMBEDDING_API_BASE", key = "embedding_api_base", kind = "string", default = "",
    check = function(v)
      if v ~= "" and not v:match("^https?://[^/?#]+") then return "expected an http(s) URL" end
    end,
    doc = "EMBEDDING_PROVIDER=openai: the API base the path /embeddings is added to, e.g. "
      .. "`https://api.openai.com/v1` or `http://localhost:11434/v1` (Ollama)." },
  { env = "EMBEDDING_MODEL", key = "embedding_model", kind = "string", default = "",
    doc = "EMBEDDING_PROVIDER=openai: the model, e.g. `text-embedding-3-small`, "
      .. "`nomic-embed-text`." },
  { env = "EMBEDDING_API_KEY", key = "embedding_api_key", kind = "string", default = "",
    secret = true,
    doc = "EMBEDDING_PROVIDER=openai: sent as `Authorization: Bearer <key>` (empty: no header)." },
  { env = "EMBEDDING_DIM", key = "embedding_dim", kind = "int", min = 1, max = 8192,
    default = 384,
    check = function(v, s)
      if s.embedding_provider == "hashing" and v ~= 384 and v ~= 512 then
        return "the hashing embedder makes 384 or 512 dimensions"
      end
    end,
    doc = "Dimensions of every vector: 384 or 512 for hashing; for openai the model's own "
      .. "(1536 for text-embedding-3-small, 768 for nomic-embed-text). A vector index built with "
      .. "another dimension stops the knowledge base at start: `faultmaven kb reindex`." },
  { env = "EMBEDDING_BATCH_SIZE", key = "embedding_batch_size", kind = "int", min = 1,
    max = 2048, default = 64,
    doc = "EMBEDDING_PROVIDER=openai: texts sent in one /embeddings request." },
  { env = "EMBEDDING_TIMEOUT_S", key = "embedding_timeout_s", kind = "number", min = 1,
    max = 600, default = 30,
    doc = "EMBEDDING_PROVIDER=openai: longest one /embeddings request may take. Failed requests "
      .. "(5xx, 429, timeouts) are retried 3 times with backoff through the `embeddings` circuit "
      .. "breaker." },
  { env = "VECTOR_BACKEND", key = "vector_backend", kind = "enum", lower = true,
    values = { "embedded", "qdrant", "pinecone", "chroma", "pgvector" }, default = "",
    doc = "Alias of VECTOR_DB_PROVIDER (the name older FaultMaven deployments use)." },
  { env = "VECTOR_DB_PROVIDER", key = "vector_db_provider", kind = "enum", lower = true,
    values = { "embedded", "qdrant", "pinecone", "chroma", "pgvector" },
    default = function(s) return s.vector_backend ~= "" and s.vector_backend or "embedded" end,
    default_doc = "VECTOR_BACKEND, else embedded",
    check = function(v)
      if v == "pgvector" then
        return "pgvector is not built in this engine (Debian 12 has no pgvector package for "
          .. "PostgreSQL 15): use embedded, qdrant, pinecone or chroma (docs/VECTORS.md)"
      end
    end,
    doc = "Where vectors live: embedded (an HNSW index per collection in "
      .. "`<FM_DATA_DIR>/vectors`, with a write-ahead log), qdrant, pinecone or chroma. pgvector "
      .. "is not built (refused at start). See docs/VECTORS.md." },
  { env = "HNSW_M", key = "hnsw_m", kind = "int", min = 4, max = 128, default = 16,
    doc = "VECTOR_DB_PROVIDER=embedded: links per node of a new index (more: better recall, "
      .. "more memory)." },
  { env = "HNSW_EF_CONSTRUCTION", key = "hnsw_ef_construction", kind = "int", min = 8,
    max = 4096, default = 200,
    doc = "VECTOR_DB_PROVIDER=embedded: candidate list while inserting (more: better graph, "
      .. "slower inserts)." },
  { env = "HNSW_EF_SEARCH", key = "hnsw_ef_search", kind = "int", min = 8, max = 4096,
    default = 64,
    doc = "VECTOR_DB_PROVIDER=embedded: candidate list while searching (raised to k; more: "
      .. "better recall, slower)." },
  { env = "VECTOR_QUANTIZE", key = "vector_quantize", kind = "bool", default = false,
    doc = "VECTOR_DB_PROVIDER=embedded: traverse a new index on int8 codes (4x less memory "
      .. "read per hop) and rescore the candidates in float32." },
  -- external vector stores (fm.vector.qdrant, .pinecone, .chroma over fm.http)
  { env = "VECTOR_TIMEOUT_S", key = "vector_timeout_s", kind = "number", min = 1, max = 600,
    default = 10,
    doc = "VECTOR_DB_PROVIDER=qdrant, pinecone or chroma: longest one request to the vector "
      .. "store may take. Each provider has its circuit breaker (`qdrant`, `pinecone`, "
      .. "`chroma`); a timeout, a refused connection, a 5xx or 429 or an open breaker is "
      .. "VECTOR_UNAVAILABLE." },
  { env = "QDRANT_URL", key = "qdrant_url", kind = "string",
    default = function(s)
      return s.deployment_mode == "local" and "http://localhost:6333" or "http://qdrant:6333"
    end,
    default_doc = "http://localhost:6333 in local mode, http://qdrant:6333 otherwise",
    check = function(v)
      if not v:match("^https?://[^/?#]+/?$") then return "expected http(s)://host[:port]" end
    end,
    doc = "VECTOR_DB_PROVIDER=qdrant: the Qdrant REST API (port 6333). Collections are made with "
      .. "Cosine distance." },
  { env = "QDRANT_API_KEY", key = "qdrant_api_key", kind = "string", default = "", secret = true,
    doc = "VECTOR_DB_PROVIDER=qdrant: sent as the `api-key` header (Qdrant Cloud; empty: none)." },
  { env = "PINECONE_API_KEY", key = "pinecone_api_key", kind = "string", default = "",
    secret = true,
    check = function(v, s)
      if s.vector_db_provider ~= "pinecone" then return nil end
      if v == "" then return "pinecone needs PINECONE_API_KEY" end
      if s.pinecone_index_name == "" and s.pinecone_host == "" then
        return "pinecone needs PINECONE_INDEX_NAME (or PINECONE_HOST)"
      end
    end,
    doc = "VECTOR_DB_PROVIDER=pinecone: sent as the `Api-Key` header." },
  { env = "PINECONE_INDEX_NAME", key = "pinecone_index_name", kind = "string", default = "",
    doc = "VECTOR_DB_PROVIDER=pinecone: the index (create it with the metric cosine and "
      .. "EMBEDDING_DIM dimensions); each collection is a namespace in it. Its host is asked from "
      .. "the control plane (https://api.pinecone.io/indexes/<name>) once." },
  { env = "PINECONE_ENVIRONMENT", key = "pinecone_environment", kind = "string", default = "",
    doc = "VECTOR_DB_PROVIDER=pinecone: a legacy (pod) index's environment, e.g. "
      .. "`us-west1-gcp`: when the control plane does not know the index, its host is "
      .. "https://<index>-<project>.svc.<environment>.pinecone.io (project from "
      .. "controller.<environment>.pinecone.io/actions/whoami)." },
  { env = "PINECONE_HOST", key = "pinecone_host", kind = "string", default = "",
    doc = "VECTOR_DB_PROVIDER=pinecone: the index host (as the console shows it, or a URL); set, "
      .. "it wins over PINECONE_INDEX_NAME and PINECONE_ENVIRONMENT and nothing is looked up." },
  { env = "CHROMA_HOST", key = "chroma_host", kind = "string",
    default = function(s) return s.deployment_mode == "local" and "localhost" or "chroma" end,
    default_doc = "localhost in local mode, chroma otherwise",
    doc = "VECTOR_DB_PROVIDER=chroma: the Chroma server's host (HTTP API v2), or a URL "
      .. "http(s)://host[:port] used as it is." },
  { env = "CHROMA_PORT", key = "chroma_port", kind = "int", min = 1, max = 65535, default = 8000,
    doc = "VECTOR_DB_PROVIDER=chroma: the Chroma server's port." },
  { env = "CHROMA_TENANT", key = "chroma_tenant", kind = "string", default = "default_tenant",
    doc = "VECTOR_DB_PROVIDER=chroma: the tenant (it must exist)." },
  { env = "CHROMA_DATABASE", key = "chroma_database", kind = "string",
    default = "default_database",
    doc = "VECTOR_DB_PROVIDER=chroma: the database (it must exist)." },
  { env = "CHROMA_API_KEY", key = "chroma_api_key", kind = "string", default = "", secret = true,
    doc = "VECTOR_DB_PROVIDER=chroma: sent as the `X-Chroma-Token` header (token auth, Chroma "
      .. "Cloud; empty: none)." },
  { env = "RUN_STARTUP_MIGRATIONS", key = "run_startup_migrations", kind = "bool",
    default = function(s) return s.deployment_mode == "local" end,
    default_doc = "true in local mode, false otherwise",
    doc = "Apply pending database migrations at start. Otherwise the engine refuses to start "
      .. "while migrations are pending: run `faultmaven migrate up`." },
  { env = "JWT_SECRET_KEY", key = "jwt_secret_key", kind = "string", default = "", secret = true,
    doc = "HS256 key for access and refresh tokens (at least 32 bytes). Empty: a key generated "
      .. "into <FM_DATA_DIR>/.jwt_secret (mode 0600) and reused. Replicas must share one." },
  { env = "ACCESS_TOKEN_TTL_S", key = "access_token_ttl_s", reload = true, kind = "int",
    min = 60, max = 86400, default = 900, doc = "Lifetime of an access token." },
  { env = "REFRESH_TOKEN_TTL_S", key = "refresh_token_ttl_s", reload = true, kind = "int",
    min = 300, max = 31536000, default = 604800,
    doc = "Lifetime of a refresh token; each use rotates it." },
  { env = "REFRESH_REUSE_GRACE_S", key = "refresh_reuse_grace_s", reload = true, kind = "int",
    min = 0, max = 60, default = 2,
    doc = "A refresh token used again within this many seconds of its rotation is refused (401) "
      .. "without ending the session: two tabs refreshing at once. Later reuse is taken as "
      .. "theft and revokes the session." },
  { env = "RATE_LIMIT_ENABLED", key = "rate_limit_enabled", reload = true, kind = "bool",
    default = true,
    doc = "Token-bucket rate limiting of the API per client (user, else IP), in separate buckets "
      .. "for reads (GET/HEAD), turns and other writes. Health, /metrics and CORS preflights are "
      .. "exempt. Shared through Redis when it is configured; in-process otherwise, and while "
      .. "Redis fails (fail open)." },
  { env = "RATE_LIMIT_REQUESTS_PER_MINUTE", key = "rate_limit_requests_per_minute",
    reload = true, kind = "int", min = 1, max = 1000000, default = 60,
    doc = "Steady rate of each bucket: it refills at this many tokens a minute." },
  { env = "RATE_LIMIT_BURST_SIZE", key = "rate_limit_burst_size", reload = true, kind = "int",
    min = 1, max = 1000000, default = 10,
    doc = "Capacity of each bucket: a client idle long enough may send this many requests at "
      .. "once; in any t seconds at most BURST + t x RATE/60 requests pass." },
  { env = "FM_TRUSTED_PROXIES", key = "trusted_proxies", reload = true, kind = "list",
    default = {},
    check = function(list)
      if not rl_ok then return nil end
      for _, c in ipairs(list) do
        if rl.addr_in("127.0.0.1", c) == nil then return "not an IP or CIDR: " .. c end
      end
      return nil
    end,
    doc = "IPs or CIDRs of reverse proxies: for a request from one of them the client address is "
      .. "the right-most X-Forwarded-For entry that is not a trusted proxy." },
  { env = "FM_ALLOW_DEV_LOGIN", key = "allow_dev_login", reload = true, kind = "bool",
    default = false,
    doc = "Allow username-only login (dev-login, dev-register, and register or login without a "
      .. "password) outside local mode. Always allowed in local mode." },
  { env = "FM_ADMIN_USERS", key = "admin_users", reload = true, kind = "list", default = {},
    doc = "Usernames that get the admin role (in local mode the first user is admin too)." },
  { env = "PASSWORD_HASH_OPSLIMIT", key = "password_hash_opslimit", reload = true, kind = "int",
    min = 1, max = 64, default = 2, doc = "argon2id passes for password hashes." },
  { env = "PASSWORD_HASH_MEMORY_KIB", key = "password_hash_memory_kib", reload = true,
    kind = "int", min = 8192, max = 4194304, default = 65536,
    doc = "argon2id memory per password hash (KiB); each login holds this much for ~0.1 s." },
  { env = "CIRCUIT_BREAKER_ENABLED", key = "circuit_breaker_enabled", kind = "bool",
    default = true,
    doc = "Circuit breakers around outbound dependencies (every fm.http request; see "
      .. "docs/OPERATIONS.md). false: requests always go out." },
  { env = "CIRCUIT_BREAKER_FAIL_THRESHOLD", key = "circuit_breaker_fail_threshold", kind = "int",
    min = 1, max = 1000000, default = 5,
    doc = "Consecutive failures (5xx, timeout, connection error; never 4xx) that open a "
      .. "dependency's breaker." },
  { env = "CIRCUIT_BREAKER_RESET_TIMEOUT", key = "circuit_breaker_reset_timeout",
    kind = "number", min = 0.1, max = 86400, default = 30,
    doc = "Seconds a breaker stays open (requests answered at once, not sent) before one probe "
      .. "request may go; its success closes the breaker, its failure opens it again." },
  { env = "CORS_ALLOW_ORIGINS", key = "cors_allow_origins", kind = "list",
    default = { "http://localhost:3000", "http://localhost:5173" },
    doc = "Origins allowed by CORS besides chrome-extension:// and moz-extension:// (`*`: any)." },
  { env = "DASHBOARD_URL", key = "dashboard_url", reload = true, kind = "string",
    default = "http://localhost:3333",
    doc = "URL of the FaultMaven dashboard, announced in /v1/meta/capabilities." },
  { env = "FM_ADMIN_SOCKET", key = "admin_socket", kind = "string",
    default = function(s) return s.data_dir .. "/admin.sock" end,
    default_doc = "`<FM_DATA_DIR>/admin.sock`",
    doc = "Unix socket of the admin REPL (`faultmaven repl`, `faultmaven reload`): mode 0600, "
      .. "only the engine's own user is served. `off` disables it." },
  { env = "FM_ADMIN_AUDIT_LOG", key = "admin_audit_log", kind = "string",
    default = function(s) return s.data_dir .. "/admin-audit.log" end,
    default_doc = "`<FM_DATA_DIR>/admin-audit.log`",
    doc = "Audit log of the admin REPL: one JSON line per command and per refused connection "
      .. "(mode 0600, appended)." },
  { env = "KB_PACK_DIR", key = "kb_pack_dir", kind = "string",
    default = function(s) return s.home .. "/kb" end, default_doc = "`<FM_HOME>/kb`",
    doc = "The built-in knowledge pack: its *.md runbooks are loaded at start (global, "
      .. "origin pack); a changed file updates its document, a removed one deletes it. `off`: "
      .. "no pack (documents loaded before stay until the pack is on again)." },
  { env = "KB_WEIGHT_VECTOR", key = "kb_weight_vector", reload = true, kind = "number", min = 0,
    max = 100, default = 0.45, doc = "Knowledge search: weight of the vector similarity." },
  { env = "KB_WEIGHT_KEYWORD", key = "kb_weight_keyword", reload = true, kind = "number",
    min = 0, max = 100, default = 0.4,
    doc = "Knowledge search: weight of the full-text score (divided by the best one)." },
  { env = "KB_WEIGHT_METADATA", key = "kb_weight_metadata", reload = true, kind = "number",
    min = 0, max = 100, default = 0.1,
    doc = "Knowledge search: weight of the match of the request's category, document_type and "
      .. "tags (counted only when the request names one)." },
  { env = "KB_WEIGHT_FRESHNESS", key = "kb_weight_freshness", reload = true, kind = "number",
    min = 0, max = 100, default = 0.05,
    doc = "Knowledge search: weight of freshness (1 when just updated, halving every "
      .. "KB_FRESHNESS_HALF_LIFE_DAYS)." },
  { env = "KB_FRESHNESS_HALF_LIFE_DAYS", key = "kb_freshness_half_life_days", reload = true,
    kind = "number", min = 1, max = 36500, default = 180,
    doc = "Knowledge search: days after which a document's freshness score halves." },
  { env = "KB_SIMILARITY_THRESHOLD", key = "kb_similarity_threshold", reload = true,
    kind = "number", min = 0, max = 1, default = 0.15,
    doc = "Knowledge search: results scoring below this are dropped (a request's "
      .. "similarity_threshold replaces it)." },
  { env = "KB_MAX_CHUNKS_PER_DOCUMENT", key = "kb_max_chunks_per_document", reload = true,
    kind = "int", min = 1, max = 100, default = 2,
    doc = "Knowledge search: at most this many chunks of one document in the results." },
}

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function parse(spec, raw)
  local kind = spec.kind
  if kind == "string" then return raw end
  if kind == "int" or kind == "number" then
    local n = tonumber(trim(raw))
    if not n or n ~= n then return nil, "expected a number" end
    if kind == "int" then
      if math.type(n) == "float" then
        if n ~= math.floor(n) then return nil, "expected a whole number" end
        n = math.tointeger(n)
      end
    end
    if (spec.min and n < spec.min) or (spec.max and n > spec.max) then
      return nil, string.format("expected %s to %s", spec.min, spec.max)
    end
    return n
  end
  if kind == "bool" then
    local v = trim(raw):lower()
    if v == "true" or v == "1" or v == "yes" or v == "on" then return true end
    if v == "false" or v == "0" or v == "no" or v == "off" then return false end
    return nil, "expected true or false"
  end
  if kind == "enum" then
    local v = trim(raw)
    if spec.lower then v = v:lower() end
    for _, ok in ipairs(spec.values) do if v == ok then return v end end
    return nil, "expected one of " .. table.concat(spec.values, ", ")
  end
  if kind == "list" then
    local out = {}
    for item in raw:gmatch("[^,]+") do
      item = trim(item)
      if item ~= "" then out[#out + 1] = item end
    end
    return out
  end
  error("config.lua: unknown kind " .. tostring(kind))
end

--- Resolves every setting from getenv (a function name -> string|nil).
-- Returns settings, nil or nil, errors (a list of "NAME: message" strings).
function M.resolve(getenv)
  getenv = getenv or os.getenv
  local s, errs, source = {}, {}, {}
  for _, spec in ipairs(M.specs) do
    local raw = getenv(spec.env)
    if raw ~= nil and raw ~= "" then
      local v, err = parse(spec, raw)
      if v == nil then
        local shown = spec.secret and "********" or spec.mask and spec.mask(raw) or raw
        errs[#errs + 1] = string.format("%s: %s, got '%s'", spec.env, err, shown)
      else
        s[spec.key] = v
        source[spec.key] = "env"
      end
    end
  end
  for _, spec in ipairs(M.specs) do
    if s[spec.key] == nil then
      local d = spec.default
      if type(d) == "function" then d = d(s) end
      s[spec.key] = d
      source[spec.key] = "default"
    end
  end
  if s.log_level == "warning" then s.log_level = "warn" end
  for _, spec in ipairs(M.specs) do
    local err = spec.check and s[spec.key] ~= nil and spec.check(s[spec.key], s)
    if err then errs[#errs + 1] = string.format("%s: %s", spec.env, err) end
  end
  if #errs > 0 then return nil, errs end
  return setmetatable(s, { __index = function(_, k)
    error("unknown setting '" .. tostring(k) .. "'", 2)
  end }), source
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

--- Keeps the start values of settings that C holds (specs without reload = true).
-- boot: the settings the engine started with. Returns the env names that differ, sorted; those
-- keep their boot value in s, so Lua never sees a value the running engine does not use.
function M.pin(s, boot)
  local changed = {}
  for _, spec in ipairs(M.specs) do
    local b = boot[spec.key]
    if not spec.reload and b ~= nil and not same(rawget(s, spec.key), b) then
      changed[#changed + 1] = spec.env
      rawset(s, spec.key, b)
    end
  end
  table.sort(changed)
  return changed
end

local function show(spec, v)
  if spec.secret and v ~= nil and v ~= "" then return "********" end
  if spec.mask and type(v) == "string" then return spec.mask(v) end
  if type(v) == "table" then return table.concat(v, ",") end
  return tostring(v)
end

--- Every setting by variable name, as text, secrets masked (admin.config()).
function M.describe(s)
  local out = {}
  for _, spec in ipairs(M.specs) do out[spec.env] = show(spec, rawget(s, spec.key)) end
  return out
end

--- For `faultmaven check-config`: ok, report text.
function M.check(getenv)
  local s, extra = M.resolve(getenv)
  if not s then
    return false, "invalid configuration:\n  " .. table.concat(extra, "\n  ") .. "\n"
  end
  local lines = {}
  for _, spec in ipairs(M.specs) do
    lines[#lines + 1] = string.format("%-30s %-28s (%s)", spec.env, show(spec, rawget(s, spec.key)),
      extra[spec.key])
  end
  return true, table.concat(lines, "\n") .. "\n"
end

return M
