/* metrics.h: the process-wide metrics registry, rendered in the Prometheus text format.
 * All functions are thread-safe. Label sets are passed pre-rendered (`route="/x",method="GET"`),
 * built with fm_metrics_labels so values are escaped. */
#ifndef FM_METRICS_H
#define FM_METRICS_H

#include "buf.h"

#include <stddef.h>

enum fm_metric_type { FM_METRIC_COUNTER, FM_METRIC_GAUGE, FM_METRIC_HISTOGRAM };

/* Declares a family. Redeclaring the same name with the same type is a no-op (returns 0); a
 * different type returns FM_E_INVAL. `buckets` (ascending, without +Inf) only for histograms;
 * NULL means the default latency buckets. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*. */
int fm_metrics_register(const char *name, enum fm_metric_type type, const char *help,
                        const double *buckets, size_t nbuckets);

/* Adds v (>= 0) to a counter series. Returns 0, or FM_E_INVAL for an unknown name or wrong type. */
int fm_metrics_inc(const char *name, const char *labels, double v);
/* Sets a gauge series. */
int fm_metrics_set(const char *name, const char *labels, double v);
/* Adds v (any sign) to a gauge series. */
int fm_metrics_add(const char *name, const char *labels, double v);
/* Records one observation in a histogram series. */
int fm_metrics_observe(const char *name, const char *labels, double v);
/* Reads a counter or gauge series (0 when absent). */
double fm_metrics_get(const char *name, const char *labels);

/* Renders a label set from name/value pairs: keys[i]=values[i]. Escapes values. */
int fm_metrics_labels(struct fm_buf *out, const char *const *keys, const char *const *values,
                      size_t n);
/* Registers a function called at the start of every render (outside the registry lock) to set
 * gauges sampled at scrape time rather than on every request. One collector; NULL removes it. */
void fm_metrics_set_collector(void (*fn)(void));
/* Appends the whole registry in text exposition format 0.0.4. */
int fm_metrics_render(struct fm_buf *out);
/* Frees everything (tests and exit). */
void fm_metrics_reset(void);

#endif
