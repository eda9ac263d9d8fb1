#include "err.h"

#include <stdarg.h>
#include <stdio.h>

int fm_err_set(struct fm_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

const char *fm_err_name(int code) {
  switch (code) {
  case FM_OK: return "ok";
  case FM_E_NOMEM: return "nomem";
  case FM_E_INVAL: return "invalid";
  case FM_E_IO: return "io";
  case FM_E_LUA: return "lua";
  case FM_E_TIMEOUT: return "timeout";
  case FM_E_TOOBIG: return "too_large";
  case FM_E_CONNECT: return "connect";
  case FM_E_PROTO: return "protocol";
  default: return "error";
  }
}
