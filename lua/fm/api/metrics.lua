-- GET /metrics: the registry in Prometheus text format 0.0.4.
local metrics = require "fm.metrics"

return function(r)
  r:get("/metrics", function()
    return 200, metrics.render(), { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }
  end)
end
