# report.awk: the table and the ratios of bench/vector from the RESULT lines of one run
# (run.sh tags every line with data=<dist>). Input: $WORK/results.txt.
function v(k,   i) {
  for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2)
  return ""
}
function or_dash(x) { return x == "" ? "-" : x }
# QPS of system key at recall R on its swept curve (points in ef order, recall rising): log-linear
# interpolation between the last point below R and the first at or above it; "" when R is not
# reached. Sets the global below = 1 when even the smallest ef is above R (its QPS is returned).
# use_cpu: the curve of 1e6 / (CPU us per query) instead of the wall-clock QPS.
function qps_at(key, R, use_cpu,   i, t, a, b) {
  below = 0
  for (i = 1; i <= npts[key]; i++)
    if (prec[key, i] + 0 >= R) {
      b = use_cpu ? pc[key, i] : pq[key, i]
      if (b == "") return ""
      if (i == 1) { below = 1; return b + 0 }
      a = use_cpu ? pc[key, i - 1] : pq[key, i - 1]
      t = (R - prec[key, i - 1]) / (prec[key, i] - prec[key, i - 1])
      return exp(log(a) + t * (log(b) - log(a)))
    }
  return ""
}
function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
/^RESULT/ {
  sys = v("system"); mode = v("mode"); set = v("n") " " v("data")
  if (!(set in seen)) { seen[set] = 1; sets[++nsets] = set }
  key = set SUBSEP sys
  if (mode == "build") {
    build[key] = v("build_s"); bcpu[key] = v("build_cpu_s"); idx[key] = v("index_bytes"); hwm[key] = v("hwm_kib"); rss0[key] = v("rss_before_kib")
    next
  }
  if (mode == "persist") {
    persist[++np] = sprintf("| %-8s | %-9s | %-10s | %8s | %8s | %9.1f | %17s |", v("n"), v("data"), sys,
      v("save_s"), v("load_s"), v("file_bytes") / 1048576, v("recall_after_load"))
    next
  }
  row[++nrows] = $0
  if (mode == "exact") { eq[key] = v("qps"); ep50[key] = v("p50_us"); ep99[key] = v("p99_us"); emean[key] = v("mean_us"); ecpu[key] = v("cpu_us"); enq[set] = v("nq") }
  if (mode == "batch") { bq[key] = v("qps"); bcq[key] = v("cpu_us"); bnq[set] = v("batch_nq") }
  if (mode == "search") {
    if (!((key) in hs)) { hs[key] = 1; hsys[set] = hsys[set] " " sys }
    ns = ++npts[key]; pef[key, ns] = v("ef"); pq[key, ns] = v("qps"); prec[key, ns] = v("recall")
    pp50[key, ns] = v("p50_us"); pp99[key, ns] = v("p99_us")
    pc[key, ns] = (v("cpu_us") + 0 > 0) ? 1e6 / v("cpu_us") : ""
  }
}
END {
  print "Results (search single-threaded, k = 10; QPS: queries / wall time of the loop; CPU us/q: the"
  print "thread's CPU time per query (what the search ran, without time waiting for a CPU); p50/p99:"
  print "wall time per query in microseconds; build: one thread, wall seconds;"
  print "index MiB: what the library holds (fm_hnsw_memory; FAISS/hnswlib: vectors + links);"
  print "peak RSS: VmHWM of the whole process, the data file's base and queries included; RSS growth:"
  print "peak RSS minus the resident set after reading the data file, before building):"
  print ""
  printf "| %-8s | %-9s | %-10s | %-6s | %7s | %9s | %9s | %9s | %9s | %9s | %8s | %9s | %12s | %14s |\n", "n", "data", "system", "mode", "ef", "QPS", "CPU us/q", "p50 us", "p99 us", "recall@10", "build s", "index MiB", "peak RSS MiB", "RSS growth MiB"
  print "|----------|-----------|------------|--------|--------:|----------:|----------:|----------:|----------:|----------:|---------:|----------:|-------------:|---------------:|"
  for (r = 1; r <= nrows; r++) {
    $0 = row[r]
    sys = v("system"); mode = v("mode"); set = v("n") " " v("data"); key = set SUBSEP sys
    ef = v("ef"); if (mode == "batch") ef = "nq=" v("batch_nq")
    b = (mode == "batch") ? "-" : build[key]
    im = (mode == "batch") ? "-" : sprintf("%.0f", idx[key] / 1048576)
    pk = (mode == "batch") ? "-" : sprintf("%.0f", hwm[key] / 1024)
    gr = (mode == "batch") ? "-" : sprintf("%.0f", (hwm[key] - rss0[key]) / 1024)
    printf "| %-8s | %-9s | %-10s | %-6s | %7s | %9s | %9s | %9s | %9s | %9s | %8s | %9s | %12s | %14s |\n", v("n"), v("data"), sys, mode, or_dash(ef), v("qps"), or_dash(v("cpu_us")), or_dash(v("p50_us")), or_dash(v("p99_us")), v("recall"), b, im, pk, gr
  }
  if (np) {
    print ""
    print "Save and load of the built HNSW index (fm_hnsw_save: temp file, fsync, rename, fsync of the"
    print "directory; hnswlib saveIndex and FAISS write_index: plain writes, no fsync; loaded from the page cache):"
    print ""
    print "| n        | data      | system     |   save s |   load s |  file MiB | recall after load |"
    print "|----------|-----------|------------|---------:|---------:|----------:|------------------:|"
    for (i = 1; i <= np; i++) print persist[i]
  }
  print ""
  print "Ratios:"
  for (s = 1; s <= nsets; s++) {
    set = sets[s]; f = set SUBSEP "fm-exact"; p = set SUBSEP "faiss-flat"
    if ((f in eq) && (p in eq)) {
      printf "  exact  %-16s fm_vec_topk / FAISS IndexFlatIP, %s queries one at a time: QPS %s, mean latency %s, CPU per query %s, p50 %s, p99 %s\n", set, enq[set], ratio(eq[f], eq[p]), ratio(emean[f], emean[p]), ratio(ecpu[f], ecpu[p]), ratio(ep50[f], ep50[p]), ratio(ep99[f], ep99[p])
      printf "         %-16s target (fm within 1.2x of FAISS flat): wall mean latency %s, CPU per query %s\n", "", (emean[f] + 0 <= 1.2 * emean[p]) ? "MET" : "MISSED", (ecpu[f] + 0 <= 1.2 * ecpu[p]) ? "MET" : "MISSED"
      if ((f in bq) && (p in bq))
        printf "  exact  %-16s fm_vec_topk_batch / FAISS search(nq=%s) (BLAS): QPS %s, CPU per query %s\n", set, bnq[set], ratio(bq[f], bq[p]), ratio(bcq[f], bcq[p])
    }
  }
  for (s = 1; s <= nsets; s++) {
    set = sets[s]
    if (hsys[set] == "") continue
    nsys = split(substr(hsys[set], 2), ss, " ")
    printf "  hnsw   %-16s QPS (and CPU-time QPS = 1e6 / CPU us per query) at recall@10 = R, interpolated between the two swept ef around R (log QPS linear\n", set
    printf "         in recall; \"-\": R not reached at the largest ef; \">=\": already above R at the smallest ef):\n"
    for (ri = 1; ri <= 5; ri++) {
      R = (ri == 1) ? 0.50 : (ri == 2) ? 0.80 : (ri == 3) ? 0.90 : (ri == 4) ? 0.95 : 0.99
      line = sprintf("           R = %.2f:", R)
      delete at
      delete abv
      delete atc
      for (j = 1; j <= nsys; j++) {
        atc[ss[j]] = qps_at(set SUBSEP ss[j], R, 1)
        at[ss[j]] = qps_at(set SUBSEP ss[j], R, 0)
        abv[ss[j]] = below
        line = line sprintf("  %s %s", ss[j], at[ss[j]] == "" ? "-" : (below ? ">=" : "") sprintf("%.0f", at[ss[j]]) (atc[ss[j]] == "" ? "" : sprintf(" (CPU %.0f)", atc[ss[j]])))
      }
      if (abv["fm-hnsw"] || abv["hnswlib"])
        line = line "  -> no verdict (above R at the smallest ef)"
      else if (at["fm-hnsw"] != "" && at["hnswlib"] != "")
        line = line sprintf("  -> fm/hnswlib %s (%s); by CPU %s (%s)", ratio(at["fm-hnsw"], at["hnswlib"]), at["fm-hnsw"] + 0 >= at["hnswlib"] + 0 ? "MET" : "MISSED", ratio(atc["fm-hnsw"], atc["hnswlib"]), atc["fm-hnsw"] + 0 >= atc["hnswlib"] + 0 ? "MET" : "MISSED")
      else if (at["hnswlib"] != "" && at["fm-hnsw"] == "") line = line "  -> fm does not reach R: MISSED"
      print line
    }
    f = set SUBSEP "fm-hnsw"; h = set SUBSEP "hnswlib"
    line = "           same ef, fm/hnswlib QPS (recall fm, hnswlib):"
    for (i = 1; i <= npts[f] && i <= npts[h]; i++)
      if (pef[f, i] == pef[h, i])
        line = line sprintf("  ef %s: %s (%s, %s)", pef[f, i], ratio(pq[f, i], pq[h, i]), prec[f, i], prec[h, i])
    print line
    if ((set SUBSEP "hnswlib-avx2") in hs) {
      a = set SUBSEP "hnswlib-avx2"
      line = "           same ef, fm/hnswlib-avx2 QPS (recall fm, hnswlib-avx2):"
      for (i = 1; i <= npts[f] && i <= npts[a]; i++)
        if (pef[f, i] == pef[a, i])
          line = line sprintf("  ef %s: %s (%s, %s)", pef[f, i], ratio(pq[f, i], pq[a, i]), prec[f, i], prec[a, i])
      print line
    }
    printf "           build time fm/hnswlib %s (CPU %s), index memory fm/hnswlib %s, RSS growth fm/hnswlib %s\n", ratio(build[f], build[h]), ratio(bcpu[f], bcpu[h]), ratio(idx[f], idx[h]), ratio(hwm[f] - rss0[f], hwm[h] - rss0[h])
  }
}
