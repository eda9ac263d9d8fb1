/* storage.h: the file storage provider layer (uploads, evidence). One driver table (struct
 * fm_storage_driver) with one .c per provider: local.c (a directory, the default) and s3.c (S3 and
 * S3-compatible servers on libcurl, signed with libcurl's own AWS SigV4). storage.c holds what they
 * share (errors, key rules, the process's store); sigv4.c the query-string presigner; the Lua
 * binding is l_storage.c (fm.storage).
 *
 * Keys: 1..1024 bytes of [A-Za-z0-9_/.-], no "..", no leading or doubled "/", no path component
 * starting with "."; checked on every call, so a key can never name a path outside the uploads
 * directory. Keys of new objects are generated (prefix "/" 32 random hex), never taken from a file
 * name.
 *
 * Every driver call returns 0 (or a documented non-negative result), or -1 with the error set:
 * a code (FM_STORAGE_*) and a message that says which bucket or directory and why. */
#ifndef FM_STORAGE_H
#define FM_STORAGE_H

#include "err.h"
#include "http.h"

#include <stddef.h>
#include <stdint.h>

enum fm_storage_backend { FM_STORAGE_LOCAL = 1, FM_STORAGE_S3 = 2 };

/* ---- errors -------------------------------------------------------------------------------- */

#define FM_STORAGE_NOT_FOUND "STORAGE_NOT_FOUND"
#define FM_STORAGE_DENIED "STORAGE_DENIED"           /* 403, credentials refused */
#define FM_STORAGE_UNAVAILABLE "STORAGE_UNAVAILABLE" /* connect, timeout, 5xx, breaker open */
#define FM_STORAGE_INVALID "STORAGE_INVALID"         /* bad key or prefix */
#define FM_STORAGE_UNSUPPORTED "STORAGE_UNSUPPORTED"
#define FM_STORAGE_ERROR "STORAGE_ERROR"
#define FM_STORAGE_TOO_LARGE "STORAGE_TOO_LARGE" /* get_string past max_bytes */

struct fm_storage_error {
  char code[24];
  char msg[512];
};

/* Sets e (when not NULL) and returns -1. */
int fm_storage_fail(struct fm_storage_error *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- keys ---------------------------------------------------------------------------------- */

#define FM_STORAGE_KEY_MAX 1024

/* 1 when key follows the key rules above, else 0. */
int fm_storage_valid_key(const char *key);
/* 1 when prefix is 1..512 bytes of [a-z0-9_/-], no "..", no leading, trailing or doubled "/". */
int fm_storage_valid_prefix(const char *prefix);
/* Writes prefix "/" 32 random hex into out. 0, or -1 (bad prefix, no randomness) with e set. */
int fm_storage_new_key(const char *prefix, char *out, size_t outsz, struct fm_storage_error *e);

/* ---- settings ------------------------------------------------------------------------------ */

#define FM_STORAGE_STR_MAX 1024

struct fm_storage_config {
  enum fm_storage_backend backend;
  char uploads_dir[FM_STORAGE_STR_MAX]; /* local */
  /* s3 */
  char bucket[256];
  char region[64];
  char access_key[256];
  char secret_key[256];
  char session_token[2048];
  char endpoint[FM_STORAGE_STR_MAX]; /* scheme://host[:port], no trailing "/"; empty: AWS */
  int path_style;
  size_t multipart_threshold; /* bytes: a file this large or larger goes multipart */
  size_t part_size;           /* bytes, >= 5 MiB */
  double timeout_s;           /* one request (an object's GET streams longer: no total cap) */
  int max_retries;            /* retries after the first attempt on 5xx, throttling, network */
  char breaker[64];           /* circuit-breaker dependency name ("s3") */
};

/* ---- objects ------------------------------------------------------------------------------- */

struct fm_storage_info {
  uint64_t size;
  char etag[128];
  int64_t last_modified; /* unix seconds */
  char content_type[256];
};

struct fm_storage_entry {
  char *key; /* malloc'd */
  uint64_t size;
  int64_t last_modified;
};

void fm_storage_entries_free(struct fm_storage_entry *v, size_t n);

/* ---- drivers ------------------------------------------------------------------------------- */

struct fm_storage_handle; /* a driver's store: thread-safe */

struct fm_storage_driver {
  const char *name; /* "local" | "s3" */
  int (*open)(const struct fm_storage_config *cfg, struct fm_storage_handle **out,
              struct fm_err *err);
  void (*close)(struct fm_storage_handle *h);
  /* Stores the file at path (read only) under key; info gets size and etag. */
  int (*put_file)(struct fm_storage_handle *h, const char *key, const char *path,
                  const char *content_type, struct fm_storage_info *info,
                  struct fm_storage_error *e);
  int (*put_mem)(struct fm_storage_handle *h, const char *key, const void *data, size_t n,
                 const char *content_type, struct fm_storage_info *info,
                 struct fm_storage_error *e);
  /* The whole object into out (malloc'd, *n bytes); more than max bytes fails TOO_LARGE. */
  int (*get_mem)(struct fm_storage_handle *h, const char *key, size_t max, char **out, size_t *n,
                 struct fm_storage_error *e);
  /* Streams the object into a new file at path (written beside it, then renamed). */
  int (*get_file)(struct fm_storage_handle *h, const char *key, const char *path,
                  struct fm_storage_error *e);
  int (*head)(struct fm_storage_handle *h, const char *key, struct fm_storage_info *info,
              struct fm_storage_error *e);
  /* A missing key is not an error. */
  int (*del)(struct fm_storage_handle *h, const char *key, struct fm_storage_error *e);
  /* Keys under prefix ("" for all) sorted, strictly after `after` (may be NULL), at most limit;
   * *more set when there may be more. */
  int (*list)(struct fm_storage_handle *h, const char *prefix, const char *after, int limit,
              struct fm_storage_entry **out, size_t *n, int *more, struct fm_storage_error *e);
  /* A URL anyone may GET for expires_s seconds; NULL: unsupported. */
  int (*presign)(struct fm_storage_handle *h, const char *key, long expires_s, char *out,
                 size_t outsz, struct fm_storage_error *e);
  int (*ping)(struct fm_storage_handle *h, struct fm_storage_error *e);
  /* Opens the object for streaming as an HTTP response body: fills s (fd or callback, size)
   * and info. The caller owns s from then on (http.c closes it). */
  int (*open_stream)(struct fm_storage_handle *h, const char *key, struct fm_resp_stream *s,
                     struct fm_storage_info *info, struct fm_storage_error *e);
};

extern const struct fm_storage_driver fm_storage_local_driver;
extern const struct fm_storage_driver fm_storage_s3_driver;

/* ---- the store ----------------------------------------------------------------------------- */

struct fm_storage {
  const struct fm_storage_driver *drv;
  struct fm_storage_handle *h;
  struct fm_storage_config cfg;
};

/* Opens the store cfg names (local: creates the directory; s3: checks the settings, no network).
 * 0 and *out, or an error. */
int fm_storage_open(const struct fm_storage_config *cfg, struct fm_storage **out,
                    struct fm_err *err);
void fm_storage_close(struct fm_storage *st);

/* Counts one operation in fm_storage_operations_total{backend,op,result}. */
void fm_storage_count(const struct fm_storage *st, const char *op, int ok);

/* The process's store: opened by `faultmaven serve` before the workers start, closed after they
 * stop; in `faultmaven exec`, opened by fm.storage on first use. */
struct fm_storage *fm_storage_global(void);
void fm_storage_global_set(struct fm_storage *st);
void fm_storage_global_close(void);

/* l_storage.c: opens the process's store from fm.settings, read in vm (serve, before workers). */
struct fm_vm;
int fm_storage_open_from_settings(struct fm_vm *vm, struct fm_err *err);

/* ---- SigV4 (sigv4.c) ----------------------------------------------------------------------- */

/* Lower-case hex SHA-256 of data into out[65]. */
void fm_sigv4_sha256_hex(const void *data, size_t n, char out[65]);
/* The signing key HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date8), region), service), "aws4_request"). */
void fm_sigv4_signing_key(const char *secret, const char *date8, const char *region,
                          const char *service, unsigned char key[32]);
/* The string to sign for a canonical request: "AWS4-HMAC-SHA256\n" amz_date "\n" scope "\n"
 * hex(sha256(canonical)). Appends to out. 0 or FM_E_NOMEM. */
int fm_sigv4_string_to_sign(const char *amz_date, const char *scope, const char *canonical,
                            struct fm_buf *out);
/* Lower-case hex HMAC-SHA256(key, msg) into out[65]. */
void fm_sigv4_hmac_hex(const unsigned char key[32], const char *msg, size_t n, char out[65]);
/* URI-encodes s the SigV4 way (unreserved A-Za-z0-9-._~ kept; "/" kept when keep_slash). */
int fm_sigv4_uri_encode(const char *s, int keep_slash, struct fm_buf *out);

struct fm_sigv4_presign {
  const char *method;      /* "GET" */
  const char *scheme;      /* "https" */
  const char *host;        /* Host header value (with :port when not the default) */
  const char *path;        /* absolute, unencoded ("/bucket/key" or "/key") */
  const char *access_key, *secret_key, *session_token; /* token may be NULL or "" */
  const char *region, *service;
  const char *amz_date; /* YYYYMMDDTHHMMSSZ */
  long expires_s;       /* 1..604800 */
};

/* Builds a query-string-signed URL (UNSIGNED-PAYLOAD, SignedHeaders=host). Fills url; when
 * canonical / sts are not NULL, also the canonical request and string to sign (for tests).
 * 0 or FM_E_INVAL / FM_E_NOMEM. */
int fm_sigv4_presign_url(const struct fm_sigv4_presign *p, struct fm_buf *url,
                         struct fm_buf *canonical, struct fm_buf *sts, struct fm_err *err);

#endif
