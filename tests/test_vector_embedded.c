/* test_vector_embedded.c: the embedded vector store (providers/vector/embedded.c) without a VM:
 * upsert/replace/delete/search/filter/ids, the log replayed after a snapshot, a torn log tail cut
 * off, a corrupt record refused, and writers and readers on several threads at once. */
#include "check.h"
#include "embedded.h"
#include "embed.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIM 16

static char g_root[256];

static void vec_of(int i, unsigned char *out) {
  float v[DIM];
  for (int j = 0; j < DIM; j++) v[j] = sinf((float)i * 0.37f + (float)j);
  fm_embed_normalize(v, DIM);
  fm_embed_pack(v, DIM, out);
}

static int upsert_one(struct fm_vcoll *c, const char *id, int i, const char *meta) {
  unsigned char v[4 * DIM];
  vec_of(i, v);
  const char *ids[1] = {id};
  size_t idl[1] = {strlen(id)};
  const unsigned char *vs[1] = {v};
  const char *ms[1] = {meta};
  size_t ml[1] = {meta ? strlen(meta) : 0};
  struct fm_err err = {0};
  int rc = fm_vcoll_upsert(c, 1, ids, idl, vs, meta ? ms : NULL, ml, &err);
  if (rc != 1) fprintf(stderr, "upsert %s: %d %s\n", id, rc, err.msg);
  return rc;
}

static void path(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_root, name); }

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
  char cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  CHECK(system(cmd) == 0);
}

static void test_basic(void) {
  char dir[512];
  path(dir, sizeof dir, "basic");
  struct fm_vcoll_params p = {.snapshot_every = 50};
  struct fm_vcoll *c;
  struct fm_err err = {0};
  CHECK(fm_vcoll_open(dir, 0, &p, &c, &err) == FM_VEC_E_NOCOLL);
  CHECK(fm_vcoll_open(dir, DIM, &p, &c, &err) == 0);
  CHECK(fm_vcoll_dim(c) == DIM);
  struct fm_vcoll *again;
  CHECK(fm_vcoll_open(dir, DIM * 2, &p, &again, &err) == FM_VEC_E_DIM);
  CHECK(strstr(err.msg, "16") != NULL);
  char other[600]; /* another spelling of the same directory: the same collection */
  snprintf(other, sizeof other, "%s/./basic", g_root);
  CHECK(fm_vcoll_open(other, 0, &p, &again, &err) == 0);
  CHECK(again == c);
  fm_vcoll_release(again);
  char id[32], meta[64];
  for (int i = 0; i < 120; i++) {
    snprintf(id, sizeof id, "id%d", i);
    snprintf(meta, sizeof meta, "{\"i\":%d,\"scope\":\"%s\"}", i, i % 3 ? "global" : "personal");
    CHECK(upsert_one(c, id, i, meta) == 1);
  }
  CHECK(fm_vcoll_count(c) == 120);
  CHECK(upsert_one(c, "id7", 7, "{\"i\":-7}") == 1); /* replace */
  CHECK(fm_vcoll_count(c) == 120);
  const char *del[2] = {"id0", "nope"};
  size_t dell[2] = {3, 4};
  CHECK(fm_vcoll_delete(c, 2, del, dell, &err) == 1);
  CHECK(fm_vcoll_count(c) == 119);
  /* bad metadata and ids are refused before anything is written */
  CHECK(upsert_one(c, "bad", 1, "{\"x\":{}}") == FM_E_INVAL);
  CHECK(upsert_one(c, "bad", 1, "[1]") == FM_E_INVAL);
  CHECK(upsert_one(c, "", 1, NULL) == FM_E_INVAL);
  CHECK(fm_vcoll_count(c) == 119);
  /* search: the item's own vector first, score 1; filter alternatives */
  unsigned char q[4 * DIM];
  vec_of(42, q);
  struct fm_vresult *r;
  size_t n;
  CHECK(fm_vcoll_search(c, q, 5, NULL, 0, &r, &n, &err) == 0);
  CHECK(n == 5);
  if (n == 5) {
    CHECK_STR(r[0].id, "id42");
    CHECK(fabs(r[0].score - 1.0) < 1e-4);
    CHECK_STR(r[0].meta, "{\"i\":42,\"scope\":\"personal\"}");
    for (size_t i = 1; i < n; i++) CHECK(r[i].score <= r[i - 1].score && r[i].score >= 0);
  }
  fm_vresults_free(r, n);
  const char *f = "[{\"scope\":\"global\",\"i\":[42,43,44]},{\"i\":7}]";
  CHECK(fm_vcoll_search(c, q, 10, f, strlen(f), &r, &n, &err) == 0);
  CHECK(n == 2); /* 43 and 44 (42 is personal); id7 now has i = -7 */
  for (size_t i = 0; i < n; i++) CHECK(strcmp(r[i].id, "id43") == 0 || strcmp(r[i].id, "id44") == 0);
  fm_vresults_free(r, n);
  const char *badf = "{\"scope\":\"global\"}";
  CHECK(fm_vcoll_search(c, q, 10, badf, strlen(badf), &r, &n, &err) == FM_E_INVAL);
  /* get */
  unsigned char got[4 * DIM];
  char *m;
  CHECK(fm_vcoll_get(c, "id42", 4, got, &m) == 1);
  float gv[DIM], qv[DIM];
  fm_embed_unpack(got, DIM, gv);
  fm_embed_unpack(q, DIM, qv);
  double d = 0;
  for (int j = 0; j < DIM; j++) d += (double)gv[j] * qv[j];
  CHECK(fabs(d - 1.0) < 1e-5); /* the stored (normalised) vector is the one given */
  CHECK_STR(m, "{\"i\":42,\"scope\":\"personal\"}");
  free(m);
  CHECK(fm_vcoll_get(c, "id0", 3, got, &m) == 0);
  /* ids: every live id once */
  size_t total = 0;
  uint64_t after = 0;
  do {
    char **ids;
    size_t k;
    after = fm_vcoll_ids(c, after, 17, &ids, &k);
    total += k;
    for (size_t i = 0; i < k; i++) free(ids[i]);
    free(ids);
  } while (after);
  CHECK(total == 119);
  fm_vcoll_release(c);
}

static void test_replay_and_torn_tail(void) {
  char dir[512], copy[512];
  path(dir, sizeof dir, "basic");
  path(copy, sizeof copy, "copy");
  struct fm_vcoll_params p = {.snapshot_every = 50};
  struct fm_vcoll *c;
  struct fm_err err = {0};
  CHECK(fm_vcoll_open(dir, 0, &p, &c, &err) == 0); /* still open: the registry's reference */
  /* a copy of the files as a crash would leave them (no LOCK held, a torn record at the end) */
  sh("rm -rf %s && mkdir %s", copy, copy);
  sh("cp %s/collection.json %s/wal.log %s/CURRENT %s/snap-* %s/", dir, dir, dir, dir, copy);
  sh("printf '\\120\\000\\000\\000\\001\\002' >> %s/wal.log", copy);
  struct fm_vcoll *d;
  CHECK(fm_vcoll_open(copy, 0, &p, &d, &err) == 0);
  CHECK(fm_vcoll_count(d) == 119);
  char *m;
  unsigned char got[4 * DIM];
  CHECK(fm_vcoll_get(d, "id7", 3, got, &m) == 1);
  if (m) CHECK_STR(m, "{\"i\":-7}");
  free(m);
  CHECK(fm_vcoll_get(d, "id0", 3, got, &m) == 0);
  /* still writable after the cut, and the write survives a reopen */
  CHECK(upsert_one(d, "after", 500, NULL) == 1);
  fm_vcoll_release(d);
  fm_vcoll_release(c);
  fm_vcoll_close_all(); /* snapshots both */
  CHECK(fm_vcoll_open(copy, 0, &p, &d, &err) == 0);
  CHECK(fm_vcoll_count(d) == 120);
  CHECK(fm_vcoll_get(d, "after", 5, got, &m) == 1);
  free(m);
  fm_vcoll_release(d);
  fm_vcoll_close_all();
  /* a flipped byte inside a record: that record and what follows are cut, not misread */
  CHECK(fm_vcoll_open(copy, 0, &p, &d, &err) == 0);
  CHECK(upsert_one(d, "x1", 1, NULL) == 1);
  CHECK(upsert_one(d, "x2", 2, NULL) == 1);
  char cp2[512];
  path(cp2, sizeof cp2, "copy2");
  sh("rm -rf %s && cp -r %s %s && rm %s/LOCK", cp2, copy, cp2, cp2);
  sh("printf 'Z' | dd of=%s/wal.log bs=1 seek=40 conv=notrunc 2>/dev/null", cp2);
  struct fm_vcoll *e;
  CHECK(fm_vcoll_open(cp2, 0, &p, &e, &err) == 0);
  CHECK(fm_vcoll_count(e) == 120); /* x1's record is damaged: it and x2 are gone */
  CHECK(fm_vcoll_get(e, "x1", 2, got, &m) == 0);
  fm_vcoll_release(e);
  fm_vcoll_release(d);
  fm_vcoll_close_all();
}

struct worker {
  struct fm_vcoll *c;
  int id, n, writer;
  int fails;
};

static void *run(void *arg) {
  struct worker *w = arg;
  char id[32];
  for (int i = 0; i < w->n; i++) {
    if (w->writer) {
      snprintf(id, sizeof id, "t%d-%d", w->id, i);
      if (upsert_one(w->c, id, w->id * 1000 + i, "{\"t\":1}") != 1) w->fails++;
    } else {
      unsigned char q[4 * DIM];
      vec_of(i, q);
      struct fm_vresult *r;
      size_t n;
      struct fm_err err = {0};
      const char *f = "[{\"t\":1}]";
      if (fm_vcoll_search(w->c, q, 5, f, strlen(f), &r, &n, &err)) w->fails++;
      fm_vresults_free(r, n);
    }
  }
  return NULL;
}

static void test_threads(void) {
  char dir[512];
  path(dir, sizeof dir, "threads");
  struct fm_vcoll_params p = {.snapshot_every = 64};
  struct fm_vcoll *c;
  struct fm_err err = {0};
  CHECK(fm_vcoll_open(dir, DIM, &p, &c, &err) == 0);
  pthread_t th[6];
  struct worker w[6];
  for (int i = 0; i < 6; i++) {
    w[i] = (struct worker){c, i, 150, i < 4, 0};
    pthread_create(&th[i], NULL, run, &w[i]);
  }
  for (int i = 0; i < 6; i++) {
    pthread_join(th[i], NULL);
    CHECK(w[i].fails == 0);
  }
  CHECK(fm_vcoll_count(c) == 600);
  fm_vcoll_release(c);
  fm_vcoll_close_all();
  CHECK(fm_vcoll_open(dir, 0, &p, &c, &err) == 0);
  CHECK(fm_vcoll_count(c) == 600);
  unsigned char got[4 * DIM];
  char *m;
  CHECK(fm_vcoll_get(c, "t3-149", 6, got, &m) == 1);
  free(m);
  fm_vcoll_release(c);
  struct fm_err derr = {0};
  CHECK(fm_vcoll_drop(dir, &derr) == 0);
  CHECK(access(dir, F_OK) != 0);
  CHECK(fm_vcoll_open(dir, 0, &p, &c, &err) == FM_VEC_E_NOCOLL);
}

int main(void) {
  snprintf(g_root, sizeof g_root, "/tmp/fm-test-vector-XXXXXX");
  if (!mkdtemp(g_root)) return 1;
  test_basic();
  test_replay_and_torn_tail();
  test_threads();
  fm_vcoll_close_all();
  sh("rm -rf %s", g_root);
  return check_done();
}
