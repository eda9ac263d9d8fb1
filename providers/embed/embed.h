/* embed.h: the embedding layer (providers/embed). The built-in provider is plain C: hashing.c, a
 * deterministic feature-hashing embedder that needs no model. The OpenAI-compatible provider is
 * Lua over fm.http (lua/fm/embed.lua); this file also holds what it needs from C: turning an
 * /v1/embeddings answer into packed float32 vectors (openai.c) without building Lua tables of
 * thousands of numbers. The Lua binding is l_embed.c (fm.embed_core).
 *
 * Vectors cross into Lua as "packed" strings: dim little-endian IEEE-754 float32 values. */
#ifndef FM_EMBED_H
#define FM_EMBED_H

#include "err.h"

#include <stddef.h>
#include <stdint.h>

#define FM_EMBED_DIM_DEFAULT 384
#define FM_EMBED_DIM_MAX 8192 /* the largest vector any provider may return */

/* ---- hashing embedder (hashing.c) ------------------------------------------------------------
 * Tokenises text (lower-cased words: ASCII letters and digits and every non-ASCII letter; any
 * other character splits; a short list of English stop words is dropped), then hashes three
 * kinds of features into dim buckets with a 64-bit hash whose low bit gives the sign: word
 * unigrams (weight 1), word bigrams (0.7) and the character 3-grams of each word padded with
 * boundary marks (0.4, at most 48 a word). A feature's weight is multiplied by 1 + ln(tf); the
 * result is L2-normalised (text without a token gives the zero vector).
 * Deterministic across runs and machines; thread-safe; no global state. */

/* Embeds text (n bytes, any bytes: invalid UTF-8 is taken byte by byte) into out (dim floats).
 * dim must be 1..FM_EMBED_DIM_MAX. Returns the number of features hashed (0: a zero vector),
 * or FM_E_NOMEM. */
int fm_embed_hashing(const char *text, size_t n, size_t dim, float *out);

/* The 64-bit hash of the features (exposed for tests): deterministic, seeded. */
uint64_t fm_embed_hash64(const void *p, size_t n, uint64_t seed);

/* Tokenises text and calls fn(token, len, ud) for each lower-cased token that is kept (tests,
 * debugging). Returns the number of tokens. */
size_t fm_embed_tokens(const char *text, size_t n,
                       void (*fn)(const char *tok, size_t len, void *ud), void *ud);

/* Scales v to unit length; returns the norm it had. */
double fm_embed_normalize(float *v, size_t dim);

/* Writes dim floats as little-endian float32 into out (4 * dim bytes), and back. */
void fm_embed_pack(const float *v, size_t dim, unsigned char *out);
void fm_embed_unpack(const unsigned char *p, size_t dim, float *out);

/* ---- OpenAI-compatible answers (openai.c) ----------------------------------------------------
 * Parses an /v1/embeddings answer body: {"data":[{"index":i,"embedding":[...]}, ...]}. Items are
 * placed by "index" (their order when absent); there must be exactly n of them, every one with
 * the same dimension (and, when dim_expected is not 0, that one), finite numbers only. Each
 * vector is L2-normalised. On success *out is a malloc'd n x *dim matrix (caller frees) and 0 is
 * returned; otherwise FM_E_PROTO (the answer is not what the API documents) or FM_E_INVAL (a
 * dimension other than dim_expected: err says both) with err set, *out NULL. */
int fm_embed_openai_parse(const char *body, size_t len, size_t n, size_t dim_expected,
                          float **out, size_t *dim, struct fm_err *err);

#endif
