-- Disk full: a filesystem ran out of blocks or inodes (kb/disk-full.md).
--
-- Evidence it reads: ENOSPC / "No space left on device" in any log (built-in disk_full), `df -h`
-- and `df -i` output (the analyser's df facts: Use% and IUse% per mount), kubelet DiskPressure
-- conditions and alerts, `lsof +L1` output (deleted files still open), PostgreSQL write errors.
-- Competing explanations: data or logs grew until the blocks ran out, deleted files still held
-- open by a process, inode exhaustion (many small files).

local kit = require "kit"
local count, where, signal_finding = kit.count, kit.where, kit.signal_finding

-- Mounts that are always full by design (squashfs snaps, ISO images): not a disk-full signal.
local function ignored_mount(fs)
  local m, dev = fs.mount or "", fs.filesystem or ""
  return m:find("^/snap/") or dev:find("^/dev/loop") or m:find("^/media/cdrom")
end

-- What the evidence says, computed once per run and kept on ctx.
-- Facts are computed once per run (ctx is the same read-only view across one run's steps).
local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { blocks = nil, inodes = nil, healthy_df = false, df_items = 0 }
  for _, ev in ipairs(ctx.command("df")) do
    local c = ev.summary and ev.summary.command or {}
    f.df_items = f.df_items + 1
    local lines = {}
    for _, fd in ipairs(c.findings or {}) do
      local mount = tostring(fd.message or ""):match("mounted on (%S+)")
      if mount then lines[mount .. ":" .. tostring(fd.kind)] = fd.line end
    end
    for _, fs in ipairs(c.filesystems or {}) do
      if not ignored_mount(fs) then
        local u, iu = tonumber(fs.use_pct), tonumber(fs.inode_use_pct)
        if u and (not f.blocks or u > f.blocks.pct) then
          f.blocks = { pct = u, mount = fs.mount, fs = fs.filesystem, evidence_id = ev.id,
                       filename = ev.filename, avail = fs.avail,
                       line = lines[tostring(fs.mount) .. ":disk_saturation"] }
        end
        if iu and (not f.inodes or iu > f.inodes.pct) then
          f.inodes = { pct = iu, mount = fs.mount, fs = fs.filesystem, evidence_id = ev.id,
                       filename = ev.filename,
                       line = lines[tostring(fs.mount) .. ":inode_saturation"] }
        end
      end
    end
  end
  f.enospc = count(ctx, "disk_full")
  f.pressure = count(ctx, "disk_pressure")
  f.inode_words = count(ctx, "disk_inodes_exhausted")
  f.deleted_open = count(ctx, "disk_deleted_open")
  f.db_write = count(ctx, "disk_db_write_failed")
  f.docker = count(ctx, "disk_container_storage")
  f.blocks_full = f.blocks and f.blocks.pct >= 95
  f.blocks_high = f.blocks and f.blocks.pct >= 90
  f.inodes_full = f.inodes and f.inodes.pct >= 95
  f.healthy_df = f.df_items > 0 and not f.blocks_high and not (f.inodes and f.inodes.pct >= 90)
  cache[ctx] = f
  return f
end

-- The playbook ------------------------------------------------------------------------------

return {
  id = "disk-full",
  title = "Disk full (out of space or inodes)",
  version = "1.0.0",
  description = "A filesystem ran out of blocks or inodes: writes fail with ENOSPC, services "
    .. "crash or stop logging, Kubernetes nodes report DiskPressure. Tells log/data growth, "
    .. "deleted-but-open files and inode exhaustion apart from df, df -i, lsof and the logs.",
  tags = { "disk", "storage", "filesystem", "enospc", "inodes", "df" },
  category = "environment",
  kb = "disk full no space left on device inodes deleted open files df du",

  signals = {
    { name = "disk_inodes_exhausted", flags = "i", severity = "error",
      pattern = [[out of inodes|inodes? (are )?(exhausted|100%)|NodeFilesystemAlmostOutOfFiles]]
        .. [[|no free inodes]],
      description = "inode exhaustion reported by a tool, a log or an alert" },
    { name = "disk_pressure", severity = "error",
      pattern = [[DiskPressure +True|(Node|Kubelet)HasDiskPressure|FreeDiskSpaceFailed]]
        .. [[|node\.kubernetes\.io/disk-pressure:No(Schedule|Execute)$|ImageGCFailed]]
        .. [[|NodeFilesystemAlmostOutOfSpace|NodeFilesystemSpaceFillingUp]],
      description = "kubelet disk pressure (condition True, taint, image GC failure) or a "
        .. "node_exporter filesystem alert; 'DiskPressure False' does not match" },
    { name = "disk_deleted_open", severity = "warning",
      pattern = [[ \(deleted\)$]],
      description = "lsof +L1 row: a deleted file still held open (space not freed)" },
    { name = "disk_db_write_failed", severity = "critical",
      pattern = [[could not (write to|extend) file "[^"]*"|could not write to file "pg_wal]]
        .. [[|Error writing file '[^']*' \(errno: 28]],
      description = "a database could not write (PostgreSQL WAL/relation, MySQL errno 28)" },
    { name = "disk_container_storage", flags = "i", severity = "error",
      pattern = [[failed to register layer|write /var/lib/(docker|containerd)/[^ ]+: no space]],
      description = "container runtime storage full (image layers, overlay)" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.enospc > 0 then
      score = score + 0.5
      reasons[#reasons + 1] = "No space left on device / ENOSPC in " .. where(ctx, "disk_full")
    end
    if f.blocks and f.blocks.pct >= 85 then
      local add = f.blocks.pct >= 95 and 0.45 or (f.blocks.pct >= 90 and 0.3 or 0.1)
      score = score + add
      reasons[#reasons + 1] = string.format("df: %s at %d%% in %s", tostring(f.blocks.mount),
        math.floor(f.blocks.pct), tostring(f.blocks.filename))
    end
    if f.inodes and f.inodes.pct >= 90 then
      score = score + (f.inodes.pct >= 95 and 0.45 or 0.25)
      reasons[#reasons + 1] = string.format("df -i: %s inodes at %d%% in %s",
        tostring(f.inodes.mount), math.floor(f.inodes.pct), tostring(f.inodes.filename))
    end
    if f.pressure > 0 then   -- the kubelet measured the node's filesystem past its threshold
      score = score + 0.4
      reasons[#reasons + 1] = "node disk pressure in " .. where(ctx, "disk_pressure")
    end
    for _, n in ipairs { "disk_inodes_exhausted", "disk_db_write_failed",
                         "disk_container_storage" } do
      if count(ctx, n) > 0 then
        score = score + 0.2
        reasons[#reasons + 1] = n .. " in " .. where(ctx, n)
      end
    end
    if f.deleted_open > 0 and score > 0 then
      score = score + 0.1
      reasons[#reasons + 1] = "deleted files still open in " .. where(ctx, "disk_deleted_open")
    end
    if ctx.said("disk full", "no space left", "disk space", "out of space", "disk is full",
                "inode", "enospc", "filesystem full", "disk usage") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports a full disk"
    end
    if f.healthy_df and f.enospc == 0 then   -- df contradicts the report
      score = score * 0.5
      reasons[#reasons + 1] = "but df shows every filesystem below 90%"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      signal_finding(ctx, out, "disk_full", "Writes failed with No space left on device (ENOSPC)")
      if f.blocks then
        out:finding { text = string.format("Fullest filesystem: %s (%s) at %d%% used, %s free",
                        tostring(f.blocks.mount), tostring(f.blocks.fs), math.floor(f.blocks.pct),
                        tostring(f.blocks.avail or "?")),
                      evidence_id = f.blocks.evidence_id, filename = f.blocks.filename,
                      line = f.blocks.line }
      end
      if f.inodes then
        out:finding { text = string.format("Highest inode use: %s at %d%%",
                        tostring(f.inodes.mount), math.floor(f.inodes.pct)),
                      evidence_id = f.inodes.evidence_id, filename = f.inodes.filename,
                      line = f.inodes.line }
      end
      signal_finding(ctx, out, "disk_inodes_exhausted", "Inode exhaustion reported")
      signal_finding(ctx, out, "disk_pressure", "Node disk pressure / filesystem alert")
      signal_finding(ctx, out, "disk_deleted_open", "Deleted files still held open (lsof +L1)")
      signal_finding(ctx, out, "disk_db_write_failed", "The database could not write its files")
      signal_finding(ctx, out, "disk_container_storage", "Container runtime storage is full")
      signal_finding(ctx, out, "k8s_evicted", "Pods evicted (node low on resources)")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      -- Blocks used up by growth (logs, dumps, images, WAL): the common case.
      local growth = 0.4
      if f.blocks_full then growth = 0.7 elseif f.blocks_high then growth = 0.55 end
      if f.inodes_full and not f.blocks_high then growth = 0.15 end
      if f.deleted_open > 0 then growth = math.min(growth, 0.5) end
      out:hypothesis { key = "disk_data_growth", likelihood = growth,
        statement = "Data or logs grew until the filesystem ran out of blocks (unrotated logs, "
          .. "core/heap dumps, container images, database WAL retention)" }
      -- Deleted-but-open: df says full, du says much less.
      local deleted = f.deleted_open > 0 and 0.75 or 0.2
      out:hypothesis { key = "disk_deleted_open", likelihood = deleted, category = "code",
        statement = "Space is held by deleted files a process still has open (a log deleted "
          .. "instead of truncated, rotation without reopen): df is full but du is not" }
      local inode = 0.15
      if f.inodes_full or f.inode_words > 0 then inode = 0.8
      elseif f.inodes and f.inodes.pct < 50 then inode = 0.05 end
      out:hypothesis { key = "disk_inode_exhaustion", likelihood = inode,
        statement = "The filesystem ran out of inodes (millions of small files: sessions, "
          .. "cache, mail queue) while blocks are still free" }

      if f.blocks_high then
        out:evidence { hypothesis = "disk_data_growth", stance = "for",
          evidence_id = f.blocks.evidence_id, line = f.blocks.line,
          summary = string.format("df: %s is %d%% used", tostring(f.blocks.mount),
                                  math.floor(f.blocks.pct)) }
        out:evidence { hypothesis = "disk_inode_exhaustion", stance = "against",
          evidence_id = f.blocks.evidence_id, line = f.blocks.line,
          summary = "blocks are exhausted, so inodes are not the only limit" }
      elseif f.blocks then
        out:evidence { hypothesis = "disk_data_growth", stance = "against",
          evidence_id = f.blocks.evidence_id,
          summary = string.format("df: the fullest filesystem is only %d%% used",
                                  math.floor(f.blocks.pct)) }
      end
      if f.inodes then
        out:evidence { hypothesis = "disk_inode_exhaustion",
          stance = f.inodes.pct >= 95 and "for" or "against",
          evidence_id = f.inodes.evidence_id, line = f.inodes.line,
          summary = string.format("df -i: %s inodes %d%% used", tostring(f.inodes.mount),
                                  math.floor(f.inodes.pct)) }
      end
      if f.inode_words > 0 then
        local s = ctx.signals.disk_inodes_exhausted
        out:evidence { hypothesis = "disk_inode_exhaustion", stance = "for",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "inode exhaustion reported at " .. where(ctx, "disk_inodes_exhausted") }
      end
      if f.deleted_open > 0 then
        local s = ctx.signals.disk_deleted_open
        out:evidence { hypothesis = "disk_deleted_open", stance = "for",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "lsof shows deleted files still open: " .. where(ctx, "disk_deleted_open") }
      end
      if f.db_write > 0 then
        local s = ctx.signals.disk_db_write_failed
        out:evidence { hypothesis = "disk_data_growth", stance = "for",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "database writes fail; check WAL/binlog retention (replication slot)" }
      end
    end },

    { name = "knowledge", run = function(ctx, out)
      local f = facts(ctx)
      if f.inodes_full or f.inode_words > 0 then
        out:runbook("inode exhaustion df -i many small files", 3)
      else
        out:runbook("disk full no space left on device deleted open files log rotation", 3)
      end
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local has_blocks, has_inodes = false, false
      for _, ev in ipairs(ctx.command("df")) do
        for _, fs in ipairs(ev.summary and ev.summary.command
                            and ev.summary.command.filesystems or {}) do
          if fs.use_pct then has_blocks = true end
          if fs.inode_use_pct then has_inodes = true end
        end
      end
      if not has_blocks and f.pressure == 0 and f.docker == 0 then
        out:ask { label = "Show filesystem usage", command = "df -hT",
          why = "which filesystem is full, and how full", hypothesis = "disk_data_growth" }
      end
      if not has_inodes then
        out:ask { label = "Show inode usage", command = "df -i",
          why = "IUse% at 100% means inodes, not blocks, ran out",
          hypothesis = "disk_inode_exhaustion" }
      end
      out:ask { label = "Find what grew", hypothesis = "disk_data_growth",
        command = "du -xh --max-depth=2 " .. ((f.blocks and f.blocks.mount) or "/")
          .. " 2>/dev/null | sort -h | tail -20",
        why = "the biggest directories on the full filesystem (same filesystem only)" }
      if f.deleted_open == 0 then
        out:ask { label = "List deleted files still open", command = "sudo lsof -nP +L1",
          why = "space held by deleted files is freed only when the process closes them",
          hypothesis = "disk_deleted_open" }
      end
      if (f.pressure > 0 or f.docker > 0) and not has_blocks then
        out:ask { label = "Node filesystems used by the kubelet and the runtime",
          command = "df -h /var/lib/kubelet /var/lib/containerd /var/log; sudo crictl imagefsinfo",
          why = "DiskPressure is measured on nodefs (kubelet, logs) and imagefs (images)",
          hypothesis = "disk_data_growth" }
      end
      out:ask { label = "Check the journal size", command = "journalctl --disk-usage",
        why = "journald without SystemMaxUse grows in /var/log/journal",
        hypothesis = "disk_data_growth" }
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      local strong_log = f.enospc > 0 or f.pressure > 0 or f.db_write > 0
      if (f.inodes_full and (strong_log or f.inode_words > 0))
         or (f.inode_words > 0 and f.enospc > 0 and not f.blocks_high) then
        out:conclude { hypothesis = "disk_inode_exhaustion", severity = "high",
          confidence = f.inodes_full and f.enospc > 0 and 0.85 or 0.7,
          root_cause = string.format("The filesystem %s ran out of inodes%s: file creation "
            .. "fails with ENOSPC even though blocks may be free", tostring(f.inodes
            and f.inodes.mount or "?"), f.inodes and string.format(" (%d%% used)",
            math.floor(f.inodes.pct)) or "") }
      elseif f.deleted_open > 0 and (f.blocks_high or f.enospc > 0) then
        out:conclude { hypothesis = "disk_deleted_open", severity = "high", confidence = 0.75,
          root_cause = "Deleted files still held open by a running process keep the space "
            .. "allocated; the filesystem stays full until the process closes them" }
      elseif f.blocks_full and strong_log then
        out:conclude { hypothesis = "disk_data_growth", severity = "critical",
          confidence = f.blocks.pct >= 98 and 0.8 or 0.75,
          root_cause = string.format("%s filled up (%d%% used): writes fail with "
            .. "No space left on device; data or logs grew without a limit",
            tostring(f.blocks.mount), math.floor(f.blocks.pct)) }
      elseif f.blocks_full then
        out:conclude { hypothesis = "disk_data_growth", severity = "high", confidence = 0.6,
          root_cause = string.format("%s is %d%% full; what grew is not known yet",
            tostring(f.blocks.mount), math.floor(f.blocks.pct)) }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local mount = (f.blocks and f.blocks.mount) or "/"
      if f.deleted_open > 0 or not f.inodes_full then
        out:mitigate { title = "Release space held by deleted open files",
          command = "sudo lsof -nP +L1   # then: sudo sh -c ': > /proc/<pid>/fd/<fd>'",
          description = "Truncate the deleted file through procfs (or restart its process); "
            .. "deleting more files frees nothing while they are open",
          risk = "medium", undo = "none needed: the file was already deleted",
          verify = "df -h " .. mount }
      end
      if f.inodes_full or f.inode_words > 0 then
        out:mitigate { title = "Find and remove the small-file producer's backlog",
          command = "sudo find " .. ((f.inodes and f.inodes.mount) or "/")
            .. " -xdev -type d -printf '%h\\n' 2>/dev/null | sort | uniq -c | sort -n | tail",
          description = "Locate the directory with the most entries (session files, cache, "
            .. "mail queue), then delete old entries: find DIR -type f -mtime +7 -delete",
          risk = "medium", undo = "deleted files cannot be restored: archive them first",
          verify = "df -i" }
        out:solve { title = "Add a cleanup job for the small-file producer",
          description = "Expire sessions/cache entries in the application or a systemd timer; "
            .. "if the workload needs that many files, recreate the filesystem with more "
            .. "inodes (mkfs.ext4 -N) or use XFS",
          risk = "low", undo = "disable the timer", verify = "df -i stays below 80% for a week" }
      else
        out:mitigate { title = "Free space that is safe to lose",
          command = "sudo journalctl --vacuum-size=500M && sudo find /var/log -xdev -type f "
            .. "\\( -name '*.gz' -o -name '*.[0-9]' \\) -mtime +3 -delete",
          description = "Old rotated logs and the journal first; truncate a live log with "
            .. "truncate -s 0 FILE instead of deleting it; never delete database files by hand",
          risk = "medium", undo = "deleted rotated logs cannot be restored: copy them off first",
          verify = "df -h " .. mount }
        out:mitigate { title = "Grow the volume",
          command = "sudo growpart /dev/<disk> <partition> && sudo resize2fs /dev/<partition>",
          description = "When the cloud volume can be extended (xfs_growfs for XFS)",
          risk = "medium", undo = "a filesystem cannot be shrunk back easily: plan the size",
          verify = "df -h " .. mount }
        out:solve { title = "Cap log growth",
          command = "sudoedit /etc/logrotate.d/<app>   # maxsize 500M, rotate 7, copytruncate",
          description = "Rotate with copytruncate or a postrotate reopen signal; set "
            .. "SystemMaxUse=1G in /etc/systemd/journald.conf; cap container logs",
          risk = "low", undo = "restore the previous logrotate file",
          verify = "logrotate -d /etc/logrotate.d/<app>" }
        out:solve { title = "Alert on the fill rate, keep growing data on its own volume",
          description = "predict_linear(node_filesystem_avail_bytes[6h], 24*3600) < 0; move "
            .. "databases, queues and container storage off the root filesystem",
          risk = "low", undo = "remove the alert rule" }
      end
      if f.pressure > 0 or f.docker > 0 then
        out:mitigate { title = "Remove unused container images on the node",
          command = "sudo crictl rmi --prune   # docker hosts: docker image prune -a",
          description = "Images not used by any container; the kubelet's image GC does the "
            .. "same once below its threshold", risk = "low",
          undo = "images are pulled again when a pod needs them",
          verify = "kubectl describe node <node> | grep DiskPressure" }
      end
      if f.db_write > 0 then
        out:mitigate { title = "Let the database purge its own files",
          command = "psql -c 'SELECT slot_name, active FROM pg_replication_slots;'",
          description = "An inactive replication slot pins WAL forever: drop it with "
            .. "pg_drop_replication_slot(name) once the replica is confirmed gone; never rm WAL",
          risk = "high", undo = "the replica must be re-seeded after its slot is dropped" }
      end
    end },
  },
}
