/* embedded.h: the embedded vector store (VECTOR_DB_PROVIDER=embedded): per collection an HNSW
 * index (engine/vecmath) plus what the index does not hold, in C so every worker VM of the
 * process shares one state: the map from string ids to integer labels, each vector's metadata,
 * and the durability machinery.
 *
 * On disk, <dir> = <FM_DATA_DIR>/vectors/<collection>/ holds:
 *   collection.json       {"dim":..., "metric":"cosine", "m":..., ...}: written once, at creation
 *   LOCK                  flock'd by the process that has the collection open (one process only)
 *   wal.log               append-only log of upserts and deletes since the snapshot: a header,
 *                         then records [u32 length][u32 crc32][payload], fdatasync'd once per
 *                         call before the call returns (what is acknowledged is durable)
 *   CURRENT               the sequence number of the durable snapshot
 *   snap-<seq>.hnsw       the index (fm_hnsw_save) at that sequence number
 *   snap-<seq>.meta       ids, labels and metadata at that sequence number (crc32-checked)
 * Opening loads the snapshot CURRENT names and replays the log records with a higher sequence
 * number; a torn last record (a crash mid-write) fails its checksum and is cut off. After
 * snapshot_every records the log is snapshotted: the two snap files are written and fsync'd,
 * CURRENT is replaced (rename, directory fsync), and only then is the log emptied.
 *
 * Metadata is a flat JSON object of strings, numbers and booleans (at most 64 fields, 64 KiB).
 * Scores are cosine similarities mapped to 0..1 as (1 + cos) / 2.
 *
 * Thread safety: every function may be called from any thread. Writers (upsert, delete) of one
 * collection are serialised; searches run concurrently with each other and with writers. */
#ifndef FM_VECTOR_EMBEDDED_H
#define FM_VECTOR_EMBEDDED_H

#include "err.h"

#include <stddef.h>
#include <stdint.h>

/* Error codes beyond err.h's (fm_err.code). */
#define FM_VEC_E_DIM (-100)    /* dimension differs from the collection's */
#define FM_VEC_E_NOCOLL (-101) /* no such collection */
#define FM_VEC_E_BUSY (-102)   /* another process has the collection open */

struct fm_vcoll_params {
  size_t M, ef_construction, ef_search; /* 0: the index's defaults */
  int quantize;
  size_t snapshot_every; /* log records before a snapshot; 0: 20000 */
};

struct fm_vcoll;

struct fm_vresult {
  char *id;   /* malloc'd, NUL-terminated */
  char *meta; /* malloc'd JSON text */
  double score;
};

/* Opens (or with dim > 0 creates) the collection stored in dir, shared by the whole process: a
 * second open of the same dir returns the same collection with one more reference. dim > 0 and
 * an existing collection of another dimension: FM_VEC_E_DIM (err names both). dim 0 and no
 * collection: FM_VEC_E_NOCOLL. Other failures: FM_E_IO, FM_E_PROTO (a corrupt snapshot),
 * FM_VEC_E_BUSY, FM_E_NOMEM. Release the reference with fm_vcoll_release. */
int fm_vcoll_open(const char *dir, size_t dim, const struct fm_vcoll_params *p,
                  struct fm_vcoll **out, struct fm_err *err);
void fm_vcoll_release(struct fm_vcoll *c);

size_t fm_vcoll_dim(const struct fm_vcoll *c);
size_t fm_vcoll_count(struct fm_vcoll *c);

/* Upserts n items: ids[i] (idlen[i] bytes, 1..1024), vectors[i] (dim floats, packed
 * little-endian float32), metas[i] (JSON object text, metalen[i] bytes; NULL: {}). Everything is
 * validated first (nothing is written on a bad item: FM_E_INVAL, or FM_VEC_E_DIM), then logged
 * and fsync'd, then applied. Returns n, or a negative code with err set. */
int fm_vcoll_upsert(struct fm_vcoll *c, size_t n, const char *const *ids, const size_t *idlen,
                    const unsigned char *const *vectors, const char *const *metas,
                    const size_t *metalen, struct fm_err *err);
/* Deletes the ids that exist; returns how many did, or a negative code. */
int fm_vcoll_delete(struct fm_vcoll *c, size_t n, const char *const *ids, const size_t *idlen,
                    struct fm_err *err);

/* The k best matches of q (dim floats, packed) that pass filter (JSON text: a list of
 * alternatives, each an object field -> value or field -> [values]; NULL or "[]": no filter),
 * best first, in *out (malloc'd array of *nout results; free with fm_vresults_free). */
int fm_vcoll_search(struct fm_vcoll *c, const unsigned char *q, size_t k, const char *filter,
                    size_t filterlen, struct fm_vresult **out, size_t *nout, struct fm_err *err);
void fm_vresults_free(struct fm_vresult *r, size_t n);

/* One item: 1 and *meta (malloc'd JSON) and vec (dim floats, packed, room 4 x dim), or 0. */
int fm_vcoll_get(struct fm_vcoll *c, const char *id, size_t idlen, unsigned char *vec,
                 char **meta);

/* Ids in a stable order (insertion), after the cursor `after` (0: from the start), at most
 * limit: a malloc'd array of malloc'd ids in *out (free each and the array), their count in *n;
 * returns the cursor of the next page, or 0 when this page is the last. */
uint64_t fm_vcoll_ids(struct fm_vcoll *c, uint64_t after, size_t limit, char ***out, size_t *n);

/* Takes a snapshot now (tests, shutdown). 0 or an error. */
int fm_vcoll_snapshot(struct fm_vcoll *c, struct fm_err *err);

/* Drops the collection in dir: closes it and removes its files. 0 (also when it did not
 * exist), or FM_E_IO. References still held keep working on the closed in-memory state. */
int fm_vcoll_drop(const char *dir, struct fm_err *err);

/* Closes every collection (process exit; also registered with atexit on first open). */
void fm_vcoll_close_all(void);

#endif
