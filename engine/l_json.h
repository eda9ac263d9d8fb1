/* l_json.h: JSON encoding of Lua values, shared by the fm.json and fm.log bindings. */
#ifndef FM_L_JSON_H
#define FM_L_JSON_H

#include "buf.h"

#include <lua.h>

/* Appends the JSON text of the value at idx to b. Raises a Lua error for values JSON cannot
 * hold (functions, NaN, nesting deeper than 128). */
void fm_json_encode_value(lua_State *L, int idx, struct fm_buf *b);

/* Pushes a userdata holding an empty buffer that is freed by __gc, so code that may raise
 * while filling it cannot leak. Returns the buffer (valid while the userdata is referenced). */
struct fm_buf *fm_json_guarded_buf(lua_State *L);

#endif
