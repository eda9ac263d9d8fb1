-- ImagePullBackOff / ErrImagePull: the kubelet cannot pull a pod's image, so the container
-- never starts (kb/imagepullbackoff.md).
--
-- Evidence it reads: kubectl get pods (ErrImagePull, ImagePullBackOff), kubectl describe pod and
-- kubectl get events (the "Failed to pull image" message says why), kubelet/containerd logs.
-- Competing explanations, told apart by the registry's answer: the image reference does not
-- exist (typo, tag never pushed or deleted), credentials (pull secret, IAM, expired token), the
-- registry's rate limit, the registry unreachable from the nodes, no manifest for the node's
-- platform.

local kit = require "kit"
local where, signal_finding = kit.where, kit.signal_finding

-- The causes, each with the signal that proves it, most specific first.
local CAUSES = {
  { key = "imagepull_wrong_platform", signal = "imagepull_platform", confidence = 0.85,
    category = "config",
    statement = "The image has no manifest for the node's platform (an arm64-only image on "
      .. "amd64 nodes, or the reverse)",
    root_cause = "The image has no manifest for the nodes' OS/architecture, so every pull fails" },
  { key = "imagepull_bad_reference", signal = "imagepull_not_found", confidence = 0.85,
    category = "config",
    statement = "The image reference does not exist in the registry: a typo, a tag that was "
      .. "never pushed (CI failed before the push) or deleted by a retention policy",
    root_cause = "The image tag does not exist in the registry (manifest not found): the "
      .. "deployment references an image that was never pushed or was deleted" },
  { key = "imagepull_credentials", signal = "imagepull_unauthorized", confidence = 0.8,
    category = "security",
    statement = "The nodes are not authorised to pull: missing or expired imagePullSecret, a "
      .. "secret in another namespace or for another registry host, node IAM without read access",
    root_cause = "The registry refuses the pull (401/403 or access denied): the pull "
      .. "credentials are missing, expired or do not match the registry" },
  { key = "imagepull_rate_limited", signal = "imagepull_rate_limit", confidence = 0.85,
    category = "external",
    statement = "The registry rate-limits pulls (Docker Hub anonymous limit from a shared NAT)",
    root_cause = "The registry's pull rate limit was reached (toomanyrequests): pulls fail for "
      .. "every node behind the same egress address until the window resets" },
  { key = "imagepull_registry_unreachable", signal = "imagepull_network", confidence = 0.75,
    category = "network",
    statement = "The nodes cannot reach the registry (DNS, egress firewall, proxy, private "
      .. "endpoint, registry outage)",
    root_cause = "The nodes cannot reach the registry (timeouts, DNS or refused connections "
      .. "while pulling)" },
}

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { rows = {}, messages = {}, images = {}, findings = {} }
  for _, ev in ipairs(ctx.command("kubectl_get")) do
    for _, row in ipairs(ev.summary and ev.summary.command and ev.summary.command.rows or {}) do
      if row.status == "ImagePullBackOff" or row.status == "ErrImagePull"
         or row.status == "InvalidImageName" then
        f.rows[#f.rows + 1] = { name = row.name, namespace = row.namespace,
                                status = row.status, ev = ev }
      end
    end
  end
  -- Pull failure messages of describe and events output, and the images they name.
  for _, kind in ipairs { "kubectl_describe", "kubectl_events" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, e in ipairs(c.events or {}) do
        local msg = tostring(e.message or "")
        local image = msg:match('[Ff]ailed to pull image "([^"]+)"')
          or msg:match('[Pp]ulling image "([^"]+)"')
        if image and not f.images[image] then
          f.images[image] = true
          f.images[#f.images + 1] = image
        end
        if msg:find("[Ff]ailed to pull image") then
          f.messages[#f.messages + 1] = { text = msg, line = e.line, ev = ev,
                                          pod = c.pod, namespace = c.namespace }
        end
      end
      for _, fd in ipairs(c.findings or {}) do
        if fd.kind == "image_pull" then f.findings[#f.findings + 1] = { ev = ev, f = fd } end
      end
      if kind == "kubectl_describe" and c.pod and not f.pod then
        f.pod, f.namespace = c.pod, c.namespace
      end
    end
  end
  if not f.pod and f.rows[1] then f.pod, f.namespace = f.rows[1].name, f.rows[1].namespace end
  if f.namespace == "" then f.namespace = nil end
  f.state = ctx.signal("k8s_image_pull")
  f.failed = ctx.signal("imagepull_failed_pull")
  -- The cause whose registry answer was seen on the most lines (ties: the more specific).
  f.cause = nil
  local best = 0
  for _, c in ipairs(CAUSES) do
    local n = ctx.signal(c.signal)
    if n > best then f.cause, best = c, n end
  end
  f.pulling = f.state > 0 or f.failed > 0 or #f.rows > 0 or #f.findings > 0
  if not f.pulling then f.cause = nil end   -- "403 Forbidden" alone is not about images
  cache[ctx] = f
  return f
end

return {
  id = "imagepullbackoff",
  title = "Pod stuck in ImagePullBackOff or ErrImagePull",
  version = "1.0.0",
  description = "The kubelet cannot pull a pod's image. Reads the pull error in describe/events "
    .. "output and tells a missing tag, credentials, a registry rate limit, an unreachable "
    .. "registry and a missing platform manifest apart.",
  tags = { "kubernetes", "imagepullbackoff", "errimagepull", "registry", "image-pull-secret" },
  category = "config",
  kb = "ImagePullBackOff ErrImagePull registry image pull secret rate limit manifest",

  signals = {
    { name = "imagepull_failed_pull", severity = "error",
      pattern = [[Failed to pull image|failed to pull and unpack image|Error: ErrImagePull]],
      description = "the kubelet or the runtime failed to pull an image" },
    { name = "imagepull_not_found", flags = "i", severity = "error",
      pattern = [[manifest unknown|not found: manifest|code = NotFound|]]
        .. [[manifest for [^ ]+ not found|InvalidImageName]]
        .. [[|invalid reference format]],
      description = "the image reference does not exist in the registry" },
    { name = "imagepull_unauthorized", flags = "i", severity = "error",
      pattern = [[pull access denied|failed to authorize|unauthorized: authentication required]]
        .. [[|no basic auth credentials|denied: requested access to the resource is denied]]
        .. [[|failed to fetch oauth token|(pull|manifests/)[^\n]*403 Forbidden]],
      description = "the registry refused the pull credentials" },
    { name = "imagepull_rate_limit", flags = "i", severity = "error",
      pattern = [[toomanyrequests|pull rate limit]],
      description = "the registry rate-limited the pull" },
    { name = "imagepull_network", flags = "i", severity = "error",
      pattern = [[(pull(ing)? image|failed to (do request|resolve reference|copy))[^\n]*]]
        .. [[(i/o timeout|no such host|connection refused|TLS handshake timeout|]]
        .. [[network is unreachable|context deadline exceeded)]],
      description = "the registry could not be reached while pulling" },
    { name = "imagepull_platform", flags = "i", severity = "error",
      pattern = [[no match for platform in manifest|image with reference [^ ]+ was found but ]]
        .. [[does not match the specified platform]],
      description = "no manifest for the node's platform" },
    { name = "imagepull_rollout_stalled", severity = "warning",
      pattern = [[ProgressDeadlineExceeded]],
      description = "a rollout stopped progressing (often new pods that cannot pull)" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.state > 0 then
      score = 0.55
      reasons[#reasons + 1] = "ImagePullBackOff/ErrImagePull in " .. where(ctx, "k8s_image_pull")
    end
    if f.failed > 0 then
      score = score > 0 and score + 0.15 or 0.5
      reasons[#reasons + 1] = "Failed to pull image in " .. where(ctx, "imagepull_failed_pull")
    end
    if score == 0 and #f.findings > 0 then
      score = 0.45
      reasons[#reasons + 1] = tostring(f.findings[1].f.message)
    end
    if f.cause then   -- the registry's answer (only set beside a failed pull)
      score = score + 0.25
      reasons[#reasons + 1] = f.cause.signal .. " in " .. where(ctx, f.cause.signal)
    end
    if ctx.signal("imagepull_rollout_stalled") > 0 and score > 0 then score = score + 0.05 end
    if ctx.said("imagepullbackoff", "errimagepull", "image pull", "pull image", "registry",
                "pull secret") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports image pull failures"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for _, r in ipairs(f.rows) do
        out:finding { text = string.format("%s/%s is %s", tostring(r.namespace or "-"),
          tostring(r.name), tostring(r.status)), evidence_id = r.ev.id, filename = r.ev.filename }
      end
      for i, m in ipairs(f.messages) do
        if i > 5 then break end
        out:finding { text = "Pull error: " .. m.text, evidence_id = m.ev.id,
                      filename = m.ev.filename, line = tonumber(m.line) }
      end
      for _, c in ipairs(CAUSES) do
        signal_finding(ctx, out, c.signal, (c.statement:match("^[^:(]+"):gsub("%s+$", "")))
      end
      signal_finding(ctx, out, "imagepull_rollout_stalled", "Rollout stopped progressing")
      if #f.images > 0 then
        out:finding("Images that fail to pull: " .. table.concat(f.images, ", "))
      end
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      for _, c in ipairs(CAUSES) do
        local lk = 0.15
        if f.cause == c then lk = c.confidence
        elseif not f.cause and c.key == "imagepull_bad_reference" then lk = 0.35
        elseif not f.cause and c.key == "imagepull_credentials" then lk = 0.3 end
        out:hypothesis { key = c.key, statement = c.statement, category = c.category,
                         likelihood = lk }
        local s = ctx.signals[c.signal]
        if s and s.count > 0 then
          out:evidence { hypothesis = c.key, stance = "for", evidence_id = s.evidence_id,
            line = s.first_line, summary = "the registry's answer: " .. c.signal .. " ("
            .. where(ctx, c.signal) .. ")" }
        elseif f.cause then
          out:evidence { hypothesis = c.key, stance = "against",
            summary = "the pull error is " .. f.cause.signal .. ", not this" }
        end
      end
    end },

    { name = "knowledge", run = function(ctx, out)
      local f = facts(ctx)
      out:runbook("ImagePullBackOff " .. (f.cause and f.cause.signal:gsub("_", " ")
        or "registry pull error"), 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local pod, ns = f.pod or "<pod>", f.namespace or "<namespace>"
      local image = f.images[1] or "<registry>/<image>:<tag>"
      if #f.messages == 0 then
        out:ask { label = "Read the pull error", hypothesis = "imagepull_bad_reference",
          command = "kubectl describe pod " .. pod .. " -n " .. ns .. " | sed -n '/Events:/,$p'",
          why = "the Failed to pull image message says not found, unauthorized, rate limit "
            .. "or timeout" }
      end
      local key = f.cause and f.cause.key
      if not key or key == "imagepull_bad_reference" or key == "imagepull_wrong_platform" then
        out:ask { label = "Does the tag exist, for which platforms?",
          hypothesis = "imagepull_bad_reference", command = "docker manifest inspect " .. image,
          why = "manifest unknown means the tag is not in the registry" }
      end
      if key == "imagepull_rate_limited" then
        out:ask { label = "Pulls left for the nodes' egress address",
          hypothesis = "imagepull_rate_limited",
          command = "TOKEN=$(curl -s 'https://auth.docker.io/token?service=registry.docker.io"
            .. "&scope=repository:ratelimitpreview/test:pull' | jq -r .token); curl -s --head "
            .. "-H \"Authorization: Bearer $TOKEN\" https://registry-1.docker.io/v2/"
            .. "ratelimitpreview/test/manifests/latest | grep -i ratelimit",
          why = "run it from a node: ratelimit-remaining 0 confirms the limit and shows when it "
            .. "resets" }
      end
      if not f.cause or f.cause.key == "imagepull_credentials" then
        out:ask { label = "Which pull secrets does the pod use?",
          hypothesis = "imagepull_credentials",
          command = "kubectl get pod " .. pod .. " -n " .. ns
            .. " -o jsonpath='{.spec.imagePullSecrets}{\"\\n\"}{.spec.serviceAccountName}'",
          why = "the secret must be in the pod's namespace and name the image's registry host" }
      end
      if not f.cause or f.cause.key == "imagepull_registry_unreachable" then
        out:ask { label = "Pull from the node itself", hypothesis =
          "imagepull_registry_unreachable", command = "crictl pull " .. image,
          why = "works from a laptop but not from the node: node network or credentials" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if f.pulling and f.cause then
        out:conclude { hypothesis = f.cause.key, confidence = f.cause.confidence,
          severity = "high", root_cause = f.cause.root_cause
            .. (f.images[1] and (" (" .. f.images[1] .. ")") or "") }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local key = f.cause and f.cause.key
      out:mitigate { title = "Roll back to the previous image",
        command = "kubectl -n " .. (f.namespace or "<namespace>") .. " rollout undo deploy/<app>",
        description = "The previous revision's image exists and is cached on most nodes",
        risk = "low", undo = "kubectl -n <namespace> rollout undo deploy/<app>",
        verify = "kubectl -n <namespace> rollout status deploy/<app>" }
      if key == "imagepull_credentials" or not key then
        out:mitigate { title = "Recreate the pull secret",
          command = "kubectl -n <namespace> create secret docker-registry <regsecret> "
            .. "--docker-server=<registry> --docker-username=<user> --docker-password=\"$TOKEN\" "
            .. "--dry-run=client -o yaml | kubectl apply -f -",
          description = "Then delete the pod so it retries now instead of after the back-off",
          risk = "low", undo = "kubectl -n <namespace> apply -f <previous-secret.yaml>" }
        out:solve { title = "Use workload/node identity for the registry",
          description = "IAM roles for ECR/GCR/ACR instead of static secrets; automate token "
            .. "refresh where static credentials are unavoidable", risk = "low",
          undo = "restore the static secret" }
      end
      if key == "imagepull_bad_reference" then
        out:solve { title = "Deploy only images CI has pushed",
          description = "Use immutable tags or digests from CI and verify the manifest exists "
            .. "before updating the deployment; exclude deployed tags from retention",
          risk = "low", undo = "none" }
      elseif key == "imagepull_rate_limited" then
        out:mitigate { title = "Authenticate pulls or use a mirror",
          description = "Docker Hub credentials in the pull secret, or a pull-through cache",
          risk = "low", undo = "remove the mirror configuration" }
        out:solve { title = "Mirror public base images into your registry",
          risk = "low", undo = "point images back at the public registry" }
      elseif key == "imagepull_registry_unreachable" then
        out:solve { title = "Fix the node-to-registry path",
          description = "Egress rules, proxy settings of containerd, DNS, private endpoint",
          risk = "medium", undo = "revert the network change" }
      elseif key == "imagepull_wrong_platform" then
        out:solve { title = "Build a multi-arch image",
          command = "docker buildx build --platform linux/amd64,linux/arm64 -t <image> --push .",
          risk = "low", undo = "push the previous tag" }
      end
    end },
  },
}
