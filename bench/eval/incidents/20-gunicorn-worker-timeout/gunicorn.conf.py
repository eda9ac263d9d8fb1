bind = "0.0.0.0:8000"
workers = 4
worker_class = "sync"
timeout = 30
graceful_timeout = 30
max_requests = 1000
