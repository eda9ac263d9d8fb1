/* err.h: error codes and a fixed-size error record that reporting never allocates. */
#ifndef FM_ERR_H
#define FM_ERR_H

#include <stddef.h>

enum {
  FM_OK = 0,
  FM_E_NOMEM = -1,   /* allocation failed */
  FM_E_INVAL = -2,   /* bad argument or setting */
  FM_E_IO = -3,      /* file or socket error */
  FM_E_LUA = -4,     /* Lua raised an error */
  FM_E_TIMEOUT = -5, /* a deadline passed */
  FM_E_TOOBIG = -6,  /* a size limit was exceeded */
  FM_E_CONNECT = -7, /* could not connect */
  FM_E_PROTO = -8,   /* the peer broke its protocol */
};

/* An error: a code and a message. Embedded by value; never needs freeing. */
struct fm_err {
  int code;
  char msg[512];
};

/* Sets err (when not NULL) and returns code, so callers can `return fm_err_set(...)`. */
int fm_err_set(struct fm_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A short stable name for a code ("timeout", "io", ...); never NULL. */
const char *fm_err_name(int code);

#endif
