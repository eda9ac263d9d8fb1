#!/usr/bin/env bash
# bench/vector/run.sh -- exact and HNSW search of engine/vecmath against FAISS and hnswlib, in the
# same run, on the same generated vectors (384 dimensions, unit length, inner product).
#
#   exact  fm_vec_topk (vec_fm.c, linked against libfmcore.a) vs FAISS IndexFlatIP (vec_faiss.cpp):
#          the queries one at a time (k = 10), then one batched call (fm_vec_topk_batch vs
#          IndexFlatIP::search with nq > 1, which FAISS hands to BLAS). FAISS's top-10 is the ground
#          truth; ours is checked against it (same sets, scores within 1e-5).
#   hnsw   fm_hnsw (vec_fm.c) vs hnswlib HierarchicalNSW (vec_hnswlib.cpp) vs FAISS IndexHNSWFlat
#          (vec_faiss.cpp), M = 16, efConstruction = 200, built with one thread; efSearch swept over
#          EF_LIST; QPS, p50/p99 and recall@10 per ef; then the index saved and loaded again.
#   Every system runs in its own process (so its peak RSS is its own); search is single-threaded
#   everywhere (FAISS: omp_set_num_threads(1)). Each harness prints RESULT lines; this script
#   collects them, prints one table and the ratios (fm / FAISS flat; fm / hnswlib at matched recall).
#
# Environment:
#   SIZES="100000 1000000"   base vectors per data set
#   NQ=1000 DIM=384 SEED=42  queries per data set, dimensions, generator seed
#   EXACT_DISTS="normal"     data for the exact comparison (gen_vectors.c: normal = the issue's
#                            random normal vectors; latentR = near an R-dimensional subspace)
#   HNSW_DISTS="normal latent32"  data for the HNSW comparison (exact runs there too: ground truth)
#   HNSW_MAX_N=100000        HNSW only for sizes up to this (a 1M single-thread build takes long)
#   FAISS_HNSW_DISTS="latent32" FAISS_HNSW_MAX_N=100000  where FAISS HNSW runs too (its build is
#                            11x hnswlib's here)
#   EF_LIST="16,32,64,128,256,512"  M=16 EF_CONSTRUCTION=200
#   HNSWLIB_AVX2=0           1: also hnswlib built with -O2 -mavx2 -mfma (no AVX-512: the SIMD our
#                            kernels use), as system hnswlib-avx2
#   QUANTIZE=0               1: also fm_hnsw with quantize = 1 (int8 traversal, float rescoring)
#   EXACT_NQ_LARGE=200       queries for the exact runs when n >= 1000000 (one query scans 1.5 GB)
#   BATCH_NQ=auto            queries in the batched exact call (auto: min(NQ, 1e8 / n))
#   BUILD_DIR=build-bench-vec  Release build of libfmcore.a
#   WORK=$TMPDIR/fm-bench-vector  data files and results.txt (kept for the next run; KEEP=0
#                            removes them); REPORT_ONLY=1 prints the report of the last run again
# Compiler flags for all three harnesses: CFLAGS="-O2 -march=native" (hnswlib picks its SIMD at
# compile time from them; FAISS is Debian's prebuilt libfaiss.a; the engine's kernels are compiled
# by CMake and pick AVX2+FMA at run time).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SIZES="${SIZES:-100000 1000000}"
NQ="${NQ:-1000}"
DIM="${DIM:-384}"
SEED="${SEED:-42}"
EXACT_DISTS="${EXACT_DISTS-normal}"
HNSW_DISTS="${HNSW_DISTS:-normal latent32}"
HNSW_MAX_N="${HNSW_MAX_N:-100000}"
FAISS_HNSW_DISTS="${FAISS_HNSW_DISTS-latent32}"
FAISS_HNSW_MAX_N="${FAISS_HNSW_MAX_N:-100000}"
EF_LIST="${EF_LIST:-16,32,64,128,256,512}"
M="${M:-16}"
EF_CONSTRUCTION="${EF_CONSTRUCTION:-200}"
QUANTIZE="${QUANTIZE:-0}"
HNSWLIB_AVX2="${HNSWLIB_AVX2:-0}"
EXACT_NQ_LARGE="${EXACT_NQ_LARGE:-200}"
BATCH_NQ="${BATCH_NQ:-auto}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench-vec}"
WORK="${WORK:-${TMPDIR:-/tmp}/fm-bench-vector}"
KEEP="${KEEP:-1}"
CFLAGS="${CFLAGS:--O2 -march=native}"

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "== $*"; }
has() { case " $1 " in *" $2 "*) return 0 ;; *) return 1 ;; esac; }
for c in cmake cc g++ pkg-config awk; do command -v "$c" >/dev/null || die "$c not found"; done
[ -f /usr/include/faiss/IndexHNSW.h ] || die "FAISS headers not found (apt-get install libfaiss-dev)"
[ -f /usr/include/hnswlib/hnswlib.h ] || die "hnswlib not found (apt-get install libhnswlib-dev)"
mkdir -p "$WORK"
RES="$WORK/results.txt"
if [ "${REPORT_ONLY:-0}" = 1 ]; then awk -f "$HERE/report.awk" "$RES"; exit 0; fi
: >"$RES"

# --- build ------------------------------------------------------------------------------------------
log "building libfmcore.a in ${BUILD_DIR#"$ROOT"/} (Release) and the harnesses ($CFLAGS)"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j2 --target fmcore >/dev/null
LIBS="$(pkg-config --libs lua5.4 libmicrohttpd libcurl jansson libedit sqlite3 libpq hiredis \
  libsodium libhs) -lpthread -lm -lstdc++"
# shellcheck disable=SC2086
{
  cc $CFLAGS -std=c11 -Wall -Wextra -o "$WORK/gen_vectors" "$HERE/gen_vectors.c" -lm
  cc $CFLAGS -std=c11 -Wall -Wextra -I"$ROOT/engine" -I"$ROOT/engine/vecmath" -o "$WORK/vec_fm" \
    "$HERE/vec_fm.c" "$BUILD_DIR/libfmcore.a" $LIBS
  g++ $CFLAGS -std=c++17 -Wall -Wextra -o "$WORK/vec_hnswlib" "$HERE/vec_hnswlib.cpp"
  [ "$HNSWLIB_AVX2" = 1 ] &&
    g++ -O2 -mavx2 -mfma -std=c++17 -Wall -Wextra -o "$WORK/vec_hnswlib_avx2" "$HERE/vec_hnswlib.cpp"
  g++ $CFLAGS -std=c++17 -Wall -Wextra -fopenmp -o "$WORK/vec_faiss" "$HERE/vec_faiss.cpp" \
    -lfaiss -llapack -lblas
}

START_S="$(date +%s)"
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(uname -sr)," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "versions: FAISS $(dpkg-query -W -f='${Version}' libfaiss-dev 2>/dev/null), hnswlib" \
  "$(dpkg-query -W -f='${Version}' libhnswlib-dev 2>/dev/null), BLAS $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)," \
  "$(cc --version | head -n1)"
echo "engine/vecmath sources (sha1, first 12): $(cd "$ROOT" && sha1sum engine/vecmath/*.c engine/vecmath/*.h | awk '{printf "%s %s  ", substr($1, 1, 12), $2}')"
echo "git HEAD: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" status --porcelain -- engine/vecmath 2>/dev/null | grep -q . && echo ' (engine/vecmath has uncommitted changes)')"
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

CUR_DIST=""
run() { # label, command...: prints its RESULT lines and keeps them (tagged data=CUR_DIST), fails loudly
  local label="$1" t0 out rc=0
  shift
  t0="$(date +%s)"
  out="$("$@" 2>"$WORK/stderr.txt")" || rc=$?
  grep '^RESULT' <<<"$out" | sed "s/^RESULT /RESULT data=$CUR_DIST /" | tee -a "$RES" | sed 's/^RESULT /   /'
  [ "$rc" = 0 ] || { cat "$WORK/stderr.txt" >&2; die "$label failed (exit $rc)"; }
  echo "   ($label: $(( $(date +%s) - t0 )) s)"
}

for n in $SIZES; do
  for dist in $(echo "$EXACT_DISTS $HNSW_DISTS" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    do_hnsw=0
    has "$HNSW_DISTS" "$dist" && [ "$n" -le "$HNSW_MAX_N" ] && do_hnsw=1
    has "$EXACT_DISTS" "$dist" || [ "$do_hnsw" = 1 ] || continue
    CUR_DIST="$dist"
    data="$WORK/v-$n-$NQ-$DIM-$SEED-$dist.bin"
    need=$(( n * DIM * 4 * 3 / 1048576 ))
    avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
    [ "$avail" -gt "$need" ] || die "n=$n needs about $need MiB free (3 copies of the vectors), $avail MiB available"
    if [ ! -s "$data" ]; then
      log "generating $n + $NQ vectors ($dist, dim $DIM, seed $SEED)"
      "$WORK/gen_vectors" "$n" "$NQ" "$DIM" "$SEED" "$dist" "$data.tmp" && mv "$data.tmp" "$data"
    fi
    cat "$data" >/dev/null # page cache: every process reads the same file
    exact_nq="$NQ"
    [ "$n" -ge 1000000 ] && [ "$do_hnsw" = 0 ] && exact_nq="$EXACT_NQ_LARGE"
    bnq="$BATCH_NQ"
    [ "$bnq" = auto ] && bnq=$(( 100000000 / n < exact_nq ? 100000000 / n : exact_nq ))
    gt="$WORK/gt-$n-$dist.ids"
    log "n=$n $dist: exact search, $exact_nq queries one at a time, then $bnq in one call"
    VEC_NQ="$exact_nq" run faiss-flat "$WORK/vec_faiss" flat "$data" "$gt" "$bnq"
    VEC_NQ="$exact_nq" run fm-exact "$WORK/vec_fm" exact "$data" "$WORK/fm-$n-$dist.ids" "$gt" "$bnq"
    if [ "$do_hnsw" = 1 ]; then
      log "n=$n $dist: HNSW M=$M efConstruction=$EF_CONSTRUCTION, ef $EF_LIST"
      run hnswlib "$WORK/vec_hnswlib" "$data" "$gt" "$M" "$EF_CONSTRUCTION" "$EF_LIST" "$WORK/hnswlib.idx"
      if [ "$HNSWLIB_AVX2" = 1 ]; then
        VEC_NAME=hnswlib-avx2 run hnswlib-avx2 "$WORK/vec_hnswlib_avx2" "$data" "$gt" "$M" "$EF_CONSTRUCTION" "$EF_LIST" "$WORK/hnswlib.idx"
      fi
      run fm-hnsw "$WORK/vec_fm" hnsw "$data" "$gt" "$M" "$EF_CONSTRUCTION" "$EF_LIST" "$WORK/fm.idx" 0
      [ "$QUANTIZE" = 1 ] &&
        run fm-hnsw-q8 "$WORK/vec_fm" hnsw "$data" "$gt" "$M" "$EF_CONSTRUCTION" "$EF_LIST" "$WORK/fm.idx" 1
      if has "$FAISS_HNSW_DISTS" "$dist" && [ "$n" -le "$FAISS_HNSW_MAX_N" ]; then
        run faiss-hnsw "$WORK/vec_faiss" hnsw "$data" "$gt" "$M" "$EF_CONSTRUCTION" "$EF_LIST" "$WORK/faiss.idx"
      fi
    fi
    [ "$KEEP" = 1 ] || rm -f "$data"
  done
done
echo
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg); run took $(( $(date +%s) - START_S )) s"
echo

# --- report -------------------------------------------------------------------------------------------
awk -f "$HERE/report.awk" "$RES"
[ "$KEEP" = 1 ] || rm -rf "$WORK"
