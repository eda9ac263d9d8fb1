/* local.c: the local storage driver: objects are files under the uploads directory
 * (FM_UPLOADS_DIR, default <data dir>/uploads), at the path their key names.
 *
 * Durability: an object is written to a temp file in <uploads>/.tmp, fsync'd, renamed into place
 * and its directory fsync'd (and the directories above it, up to the uploads directory, when the
 * write created them): after put returns, the object survives a crash whole, and a crash before
 * leaves no partial object (only a temp file, removed at the next start). The content type and
 * the etag (the first 32 hex digits of the SHA-256) ride in extended attributes where the file
 * system has them (user.fm.content_type, user.fm.etag); elsewhere head() says
 * application/octet-stream and an empty etag. */
#include "storage.h"

#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

struct fm_storage_handle {
  char dir[PATH_MAX];
  char tmp[PATH_MAX + 8];
};

#define XATTR_CTYPE "user.fm.content_type"
#define XATTR_ETAG "user.fm.etag"

static int local_open(const struct fm_storage_config *cfg, struct fm_storage_handle **out,
                      struct fm_err *err) {
  if (!cfg->uploads_dir[0]) return fm_err_set(err, FM_E_INVAL, "FM_UPLOADS_DIR: empty");
  struct fm_storage_handle *h = calloc(1, sizeof *h);
  if (!h) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (fm_mkdirs(cfg->uploads_dir, 0750, err)) goto fail;
  if (!realpath(cfg->uploads_dir, h->dir)) {
    fm_err_set(err, FM_E_IO, "FM_UPLOADS_DIR %s: %s", cfg->uploads_dir, strerror(errno));
    goto fail;
  }
  snprintf(h->tmp, sizeof h->tmp, "%s/.tmp", h->dir);
  if (fm_mkdirs(h->tmp, 0700, err)) goto fail;
  fm_clean_dir(h->tmp); /* what a crash left behind: never a visible object */
  *out = h;
  return 0;
fail:
  free(h);
  return err && err->code ? err->code : FM_E_IO;
}

static void local_close(struct fm_storage_handle *h) { free(h); }

static int path_of(struct fm_storage_handle *h, const char *key, char *out, size_t outsz,
                   struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  int n = snprintf(out, outsz, "%s/%s", h->dir, key);
  if (n < 0 || (size_t)n >= outsz) return fm_storage_fail(e, FM_STORAGE_INVALID, "key too long");
  return 0;
}

static int io_fail(struct fm_storage_error *e, const char *what, const char *path, int errnum) {
  const char *code = errnum == ENOENT ? FM_STORAGE_NOT_FOUND
                     : errnum == EACCES || errnum == EPERM ? FM_STORAGE_DENIED
                                                            : FM_STORAGE_ERROR;
  return fm_storage_fail(e, code, "%s %s: %s", what, path, strerror(errnum));
}

static int fsync_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* mkdir -p of the directories of key under h->dir, fsyncing each parent of a directory made. */
static int make_parents(struct fm_storage_handle *h, const char *key, struct fm_storage_error *e) {
  char path[PATH_MAX];
  size_t base = strlen(h->dir);
  int pn = snprintf(path, sizeof path, "%s/%s", h->dir, key);
  if (pn < 0 || (size_t)pn >= sizeof path)
    return fm_storage_fail(e, FM_STORAGE_INVALID, "key too long");
  for (char *p = path + base + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(path, 0750) == 0) {
      char *slash = strrchr(path, '/');
      *slash = '\0';
      fsync_dir(path); /* the new entry is durable in its parent */
      *slash = '/';
    } else if (errno != EEXIST) {
      return io_fail(e, "mkdir", path, errno);
    }
    *p = '/';
  }
  return 0;
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

struct writer {
  int fd;
  char tmp[PATH_MAX + 64];
  crypto_hash_sha256_state sha;
  uint64_t size;
};

static int writer_open(struct fm_storage_handle *h, struct writer *w, struct fm_storage_error *e) {
  snprintf(w->tmp, sizeof w->tmp, "%s/put-XXXXXX", h->tmp);
  w->fd = mkostemp(w->tmp, O_CLOEXEC);
  if (w->fd < 0) return io_fail(e, "create a temp file in", h->tmp, errno);
  fchmod(w->fd, 0640);
  crypto_hash_sha256_init(&w->sha);
  w->size = 0;
  return 0;
}

static int writer_add(struct writer *w, const void *p, size_t n, struct fm_storage_error *e) {
  if (write_all(w->fd, p, n)) return io_fail(e, "write", w->tmp, errno);
  crypto_hash_sha256_update(&w->sha, p, n);
  w->size += n;
  return 0;
}

static void writer_abort(struct writer *w) {
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
  unlink(w->tmp);
}

/* fsync, attributes, rename into place, fsync the directory. */
static int writer_commit(struct fm_storage_handle *h, struct writer *w, const char *key,
                         const char *ctype, struct fm_storage_info *info,
                         struct fm_storage_error *e) {
  char path[PATH_MAX];
  unsigned char d[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&w->sha, d);
  memset(info, 0, sizeof *info);
  for (int i = 0; i < 16; i++) snprintf(info->etag + 2 * i, 3, "%02x", d[i]);
  info->size = w->size;
  snprintf(info->content_type, sizeof info->content_type, "%s",
           ctype && *ctype ? ctype : "application/octet-stream");
  /* attributes are best effort: a file system without user xattrs still stores the bytes */
  fsetxattr(w->fd, XATTR_CTYPE, info->content_type, strlen(info->content_type), 0);
  fsetxattr(w->fd, XATTR_ETAG, info->etag, strlen(info->etag), 0);
  if (fsync(w->fd)) {
    int en = errno;
    writer_abort(w);
    return io_fail(e, "fsync", w->tmp, en);
  }
  close(w->fd);
  w->fd = -1;
  if (path_of(h, key, path, sizeof path, e) || make_parents(h, key, e)) {
    writer_abort(w);
    return -1;
  }
  if (rename(w->tmp, path)) {
    int en = errno;
    writer_abort(w);
    return io_fail(e, "rename into", path, en);
  }
  char *slash = strrchr(path, '/');
  *slash = '\0';
  if (fsync_dir(path)) return io_fail(e, "fsync the directory", path, errno);
  info->last_modified = (int64_t)fm_time_now();
  return 0;
}

static int local_put_file(struct fm_storage_handle *h, const char *key, const char *src,
                          const char *ctype, struct fm_storage_info *info,
                          struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) return io_fail(e, "open", src, errno);
  struct writer w;
  if (writer_open(h, &w, e)) {
    close(in);
    return -1;
  }
  enum { BUF = 1 << 20 };
  char *buf = malloc(BUF);
  if (!buf) {
    close(in);
    writer_abort(&w);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
  }
  int rc = 0;
  for (;;) {
    ssize_t r = read(in, buf, BUF);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = io_fail(e, "read", src, errno);
      break;
    }
    if (r == 0) break;
    if ((rc = writer_add(&w, buf, (size_t)r, e))) break;
  }
  free(buf);
  close(in);
  if (rc) {
    writer_abort(&w);
    return rc;
  }
  return writer_commit(h, &w, key, ctype, info, e);
}

static int local_put_mem(struct fm_storage_handle *h, const char *key, const void *data, size_t n,
                         const char *ctype, struct fm_storage_info *info,
                         struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  struct writer w;
  if (writer_open(h, &w, e)) return -1;
  if (writer_add(&w, data, n, e)) {
    writer_abort(&w);
    return -1;
  }
  return writer_commit(h, &w, key, ctype, info, e);
}

static int open_key(struct fm_storage_handle *h, const char *key, struct stat *st,
                    struct fm_storage_error *e) {
  char path[PATH_MAX];
  if (path_of(h, key, path, sizeof path, e)) return -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
      return fm_storage_fail(e, FM_STORAGE_NOT_FOUND, "no object %s", key);
    return io_fail(e, "open", path, errno);
  }
  if (fstat(fd, st) || !S_ISREG(st->st_mode)) {
    close(fd);
    return fm_storage_fail(e, FM_STORAGE_NOT_FOUND, "no object %s", key);
  }
  return fd;
}

static int local_get_mem(struct fm_storage_handle *h, const char *key, size_t max, char **out,
                         size_t *n, struct fm_storage_error *e) {
  struct stat st;
  int fd = open_key(h, key, &st, e);
  if (fd < 0) return -1;
  if ((uint64_t)st.st_size > max) {
    close(fd);
    return fm_storage_fail(e, FM_STORAGE_TOO_LARGE, "object %s is %lld bytes, more than %zu", key,
                           (long long)st.st_size, max);
  }
  size_t size = (size_t)st.st_size;
  char *buf = malloc(size + 1);
  if (!buf) {
    close(fd);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
  }
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  *n = got;
  return 0;
}

static int local_get_file(struct fm_storage_handle *h, const char *key, const char *dst,
                          struct fm_storage_error *e) {
  struct stat st;
  int fd = open_key(h, key, &st, e);
  if (fd < 0) return -1;
  char tmp[PATH_MAX + 16];
  snprintf(tmp, sizeof tmp, "%s.XXXXXX", dst);
  int out = mkostemp(tmp, O_CLOEXEC);
  if (out < 0) {
    int en = errno;
    close(fd);
    return io_fail(e, "create", tmp, en);
  }
  int rc = 0;
  char buf[1 << 16];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = io_fail(e, "read", key, errno);
      break;
    }
    if (r == 0) break;
    if (write_all(out, buf, (size_t)r)) {
      rc = io_fail(e, "write", tmp, errno);
      break;
    }
  }
  close(fd);
  if (close(out) && !rc) rc = io_fail(e, "write", tmp, errno);
  if (!rc && rename(tmp, dst)) rc = io_fail(e, "rename into", dst, errno);
  if (rc) unlink(tmp);
  return rc;
}

static void fill_info(int fd, const struct stat *st, struct fm_storage_info *info) {
  memset(info, 0, sizeof *info);
  info->size = (uint64_t)st->st_size;
  info->last_modified = (int64_t)st->st_mtime;
  ssize_t n = fgetxattr(fd, XATTR_CTYPE, info->content_type, sizeof info->content_type - 1);
  if (n <= 0) snprintf(info->content_type, sizeof info->content_type, "application/octet-stream");
  else info->content_type[n] = '\0';
  n = fgetxattr(fd, XATTR_ETAG, info->etag, sizeof info->etag - 1);
  info->etag[n > 0 ? n : 0] = '\0';
}

static int local_head(struct fm_storage_handle *h, const char *key, struct fm_storage_info *info,
                      struct fm_storage_error *e) {
  struct stat st;
  int fd = open_key(h, key, &st, e);
  if (fd < 0) return -1;
  fill_info(fd, &st, info);
  close(fd);
  return 0;
}

static int local_del(struct fm_storage_handle *h, const char *key, struct fm_storage_error *e) {
  char path[PATH_MAX];
  if (path_of(h, key, path, sizeof path, e)) return -1;
  if (unlink(path) && errno != ENOENT && errno != ENOTDIR) return io_fail(e, "remove", path, errno);
  return 0;
}

/* ---- list ---------------------------------------------------------------------------------- */

struct listing {
  struct fm_storage_entry *v;
  size_t n, cap;
  int oom;
};

static void walk(const char *root, size_t rootlen, const char *dir, const char *prefix,
                 struct listing *l, int depth) {
  if (depth > 32 || l->oom) return;
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue; /* ., .., .tmp and anything hidden */
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) continue;
    struct stat st;
    if (lstat(path, &st)) continue;
    const char *key = path + rootlen + 1;
    if (S_ISDIR(st.st_mode)) {
      /* descend only where keys under prefix can be */
      size_t kl = strlen(key), pl = strlen(prefix);
      if (strncmp(key, prefix, kl < pl ? kl : pl) == 0)
        walk(root, rootlen, path, prefix, l, depth + 1);
      continue;
    }
    if (!S_ISREG(st.st_mode) || strncmp(key, prefix, strlen(prefix)) != 0) continue;
    if (!fm_storage_valid_key(key)) continue;
    if (l->n == l->cap) {
      size_t nc = l->cap ? l->cap * 2 : 64;
      struct fm_storage_entry *nv = realloc(l->v, nc * sizeof *nv);
      if (!nv) {
        l->oom = 1;
        break;
      }
      l->v = nv;
      l->cap = nc;
    }
    struct fm_storage_entry *en = &l->v[l->n];
    en->key = strdup(key);
    if (!en->key) {
      l->oom = 1;
      break;
    }
    en->size = (uint64_t)st.st_size;
    en->last_modified = (int64_t)st.st_mtime;
    l->n++;
  }
  closedir(d);
}

static int by_key(const void *a, const void *b) {
  return strcmp(((const struct fm_storage_entry *)a)->key,
                ((const struct fm_storage_entry *)b)->key);
}

static int local_list(struct fm_storage_handle *h, const char *prefix, const char *after,
                      int limit, struct fm_storage_entry **out, size_t *n, int *more,
                      struct fm_storage_error *e) {
  struct listing l = {0};
  walk(h->dir, strlen(h->dir), h->dir, prefix ? prefix : "", &l, 0);
  if (l.oom) {
    fm_storage_entries_free(l.v, l.n);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
  }
  if (l.n) qsort(l.v, l.n, sizeof *l.v, by_key);
  /* keep the keys after `after`, at most limit */
  size_t first = 0;
  if (after)
    while (first < l.n && strcmp(l.v[first].key, after) <= 0) first++;
  size_t keep = l.n - first;
  if (limit >= 0 && keep > (size_t)limit) keep = (size_t)limit;
  *more = first + keep < l.n;
  for (size_t i = 0; i < first; i++) free(l.v[i].key);
  for (size_t i = first + keep; i < l.n; i++) free(l.v[i].key);
  if (first && keep) memmove(l.v, l.v + first, keep * sizeof *l.v);
  *out = l.v;
  *n = keep;
  if (!keep) {
    free(l.v);
    *out = NULL;
  }
  return 0;
}

static int local_ping(struct fm_storage_handle *h, struct fm_storage_error *e) {
  struct writer w;
  if (writer_open(h, &w, e)) return -1;
  int rc = writer_add(&w, "ok", 2, e);
  if (!rc && fsync(w.fd)) rc = io_fail(e, "fsync", w.tmp, errno);
  writer_abort(&w);
  return rc;
}

static int local_open_stream(struct fm_storage_handle *h, const char *key,
                             struct fm_resp_stream *s, struct fm_storage_info *info,
                             struct fm_storage_error *e) {
  struct stat st;
  int fd = open_key(h, key, &st, e);
  if (fd < 0) return -1;
  fill_info(fd, &st, info);
  memset(s, 0, sizeof *s);
  s->fd = fd; /* libmicrohttpd sends it (sendfile) and closes it */
  s->size = (uint64_t)st.st_size;
  return 0;
}

const struct fm_storage_driver fm_storage_local_driver = {
    .name = "local",
    .open = local_open,
    .close = local_close,
    .put_file = local_put_file,
    .put_mem = local_put_mem,
    .get_mem = local_get_mem,
    .get_file = local_get_file,
    .head = local_head,
    .del = local_del,
    .list = local_list,
    .presign = NULL,
    .ping = local_ping,
    .open_stream = local_open_stream,
};
