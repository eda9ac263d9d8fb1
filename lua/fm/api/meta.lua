-- /v1/meta/capabilities (and /api/v1/meta/capabilities): what this backend offers, so the
-- extension and dashboard can adapt. Features not built yet are reported false, honestly.
local settings = require "fm.settings"
local uploads = require "fm.services.uploads"

local function capabilities()
  return 200, {
    deploymentMode = "self-hosted",
    kbManagement = "dashboard",
    dashboardUrl = settings.dashboard_url,
    features = {
      extensionKB = false,
      adminKB = false,
      teamSharing = false,
      caseHistory = false,
      sso = false,
    },
    limits = {
      maxFileBytes = settings.max_upload_size_mb * 1024 * 1024,
      allowedExtensions = setmetatable(uploads.allowed_extensions(), require("fm.json").array_mt),
    },
  }
end

return function(r)
  r:get("/v1/meta/capabilities", capabilities)
  r:get("/api/v1/meta/capabilities", capabilities)
end
