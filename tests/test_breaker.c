/* Unit tests for engine/breaker.c: the CLOSED/OPEN/HALF_OPEN state machine on an injected clock,
 * the single probe, stale outcomes, reset, classification, metrics, and many threads at once. */
#include "breaker.h"
#include "check.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdlib.h>

static double g_now = 1000.0;
static double fake_clock(void) { return g_now; }

static enum fm_breaker_state state_of(const char *name) {
  struct fm_breaker_info i;
  if (!fm_breaker_info(name, &i)) return (enum fm_breaker_state)-1;
  return i.state;
}

/* One request: acquire, and if allowed release with r. Returns whether it went through. */
static int call(const char *name, enum fm_breaker_result r) {
  struct fm_breaker_ticket t;
  if (!fm_breaker_acquire(name, &t, NULL)) return 0;
  fm_breaker_release(&t, r);
  return 1;
}

static void test_state_machine(void) {
  struct fm_breaker_config c = {1, 3, 10.0};
  fm_breaker_configure(&c);
  CHECK(state_of("llm") == (enum fm_breaker_state)-1); /* none until first used */
  /* failures below the threshold, then a success forgets them */
  CHECK(call("llm", FM_BREAKER_FAILURE) && call("llm", FM_BREAKER_FAILURE));
  struct fm_breaker_info i;
  CHECK(fm_breaker_info("llm", &i) && i.failures == 2 && i.state == FM_BREAKER_CLOSED);
  CHECK(call("llm", FM_BREAKER_SUCCESS));
  CHECK(fm_breaker_info("llm", &i) && i.failures == 0);
  /* neutral outcomes count for nothing */
  CHECK(call("llm", FM_BREAKER_FAILURE) && call("llm", FM_BREAKER_NEUTRAL));
  CHECK(call("llm", FM_BREAKER_FAILURE));
  CHECK(state_of("llm") == FM_BREAKER_CLOSED);
  CHECK(call("llm", FM_BREAKER_FAILURE)); /* third consecutive failure */
  CHECK(state_of("llm") == FM_BREAKER_OPEN);
  CHECK(fm_breaker_info("llm", &i) && i.opened_at > 0 && i.retry_in == 10.0);

  /* open: refused, with the time left */
  struct fm_breaker_ticket t, t2;
  double retry = -1;
  g_now += 4;
  CHECK(fm_breaker_acquire("llm", &t, &retry) == 0 && retry == 6.0);
  g_now += 5.999;
  CHECK(fm_breaker_acquire("llm", &t, &retry) == 0 && retry > 0 && retry < 0.01);

  /* after the timeout: exactly one probe */
  g_now += 0.001;
  CHECK(fm_breaker_acquire("llm", &t, &retry) == 1 && t.probe == 1);
  CHECK(state_of("llm") == FM_BREAKER_HALF_OPEN);
  CHECK(fm_breaker_acquire("llm", &t2, &retry) == 0 && retry == 0);
  CHECK(fm_breaker_info("llm", &i) && i.probe_in_flight == 1);
  /* the probe fails: open again, with a fresh timeout */
  g_now += 2;
  fm_breaker_release(&t, FM_BREAKER_FAILURE);
  CHECK(state_of("llm") == FM_BREAKER_OPEN);
  CHECK(fm_breaker_info("llm", &i) && i.retry_in == 10.0);
  g_now += 9;
  CHECK(call("llm", FM_BREAKER_SUCCESS) == 0);
  g_now += 1;
  /* a probe that was never sent frees its slot for the next request */
  CHECK(fm_breaker_acquire("llm", &t, NULL) == 1 && t.probe == 1);
  fm_breaker_release(&t, FM_BREAKER_NEUTRAL);
  CHECK(state_of("llm") == FM_BREAKER_HALF_OPEN);
  CHECK(fm_breaker_acquire("llm", &t, NULL) == 1 && t.probe == 1);
  fm_breaker_release(&t, FM_BREAKER_SUCCESS);
  CHECK(state_of("llm") == FM_BREAKER_CLOSED);
  CHECK(fm_breaker_info("llm", &i) && i.failures == 0 && i.retry_in == 0);
  /* closed -> open -> half_open -> open -> half_open -> closed */
  CHECK(i.transitions == 5);
  CHECK(fm_metrics_get("fm_breaker_state", "dependency=\"llm\"") == 0);
  CHECK(fm_metrics_get("fm_breaker_transitions_total",
                       "dependency=\"llm\",from=\"closed\",to=\"open\"") == 1);
  CHECK(fm_metrics_get("fm_breaker_transitions_total",
                       "dependency=\"llm\",from=\"half_open\",to=\"open\"") == 1);
  CHECK(fm_metrics_get("fm_breaker_transitions_total",
                       "dependency=\"llm\",from=\"open\",to=\"half_open\"") == 2);
  CHECK(fm_metrics_get("fm_breaker_transitions_total",
                       "dependency=\"llm\",from=\"half_open\",to=\"closed\"") == 1);
}

static void test_stale_outcomes_and_reset(void) {
  struct fm_breaker_config c = {1, 2, 5.0};
  fm_breaker_configure(&c);
  /* two requests in flight while the breaker opens: the late one cannot re-open or close it */
  struct fm_breaker_ticket a, b, late;
  CHECK(fm_breaker_acquire("s3", &a, NULL) && fm_breaker_acquire("s3", &b, NULL));
  CHECK(fm_breaker_acquire("s3", &late, NULL));
  fm_breaker_release(&a, FM_BREAKER_FAILURE);
  fm_breaker_release(&b, FM_BREAKER_FAILURE);
  CHECK(state_of("s3") == FM_BREAKER_OPEN);
  fm_breaker_release(&late, FM_BREAKER_SUCCESS);
  CHECK(state_of("s3") == FM_BREAKER_OPEN);
  fm_breaker_release(&late, FM_BREAKER_SUCCESS); /* a second release is a no-op */
  /* reset: closed at once; the running probe's outcome no longer counts */
  g_now += 5;
  struct fm_breaker_ticket probe;
  CHECK(fm_breaker_acquire("s3", &probe, NULL) && probe.probe);
  CHECK(fm_breaker_reset("s3") == 1);
  CHECK(state_of("s3") == FM_BREAKER_CLOSED);
  fm_breaker_release(&probe, FM_BREAKER_FAILURE);
  CHECK(state_of("s3") == FM_BREAKER_CLOSED);
  struct fm_breaker_info i;
  CHECK(fm_breaker_info("s3", &i) && i.failures == 0);
  CHECK(fm_breaker_reset("nope") == 0);
  CHECK(fm_metrics_get("fm_breaker_transitions_total",
                       "dependency=\"s3\",from=\"half_open\",to=\"closed\"") == 1);
}

static void test_names_list_disabled(void) {
  CHECK(fm_breaker_valid_name("api.openai.com:443"));
  CHECK(fm_breaker_valid_name("[::1]:8080"));
  CHECK(!fm_breaker_valid_name(""));
  CHECK(!fm_breaker_valid_name("a b"));
  CHECK(!fm_breaker_valid_name("a\"b"));
  char longname[FM_BREAKER_NAME_MAX + 2];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  CHECK(!fm_breaker_valid_name(longname));
  longname[FM_BREAKER_NAME_MAX] = '\0';
  CHECK(fm_breaker_valid_name(longname));
  /* an invalid name is let through unguarded */
  struct fm_breaker_ticket t;
  CHECK(fm_breaker_acquire("a b", &t, NULL) == 1 && t.b == NULL);

  struct fm_breaker_info *v;
  int n = fm_breaker_list(&v);
  CHECK(n == 2 && v && strcmp(v[0].name, "llm") == 0 && strcmp(v[1].name, "s3") == 0);
  free(v);

  /* disabled: nothing is created, nothing refused */
  struct fm_breaker_config off = {0, 1, 5.0};
  fm_breaker_configure(&off);
  for (int k = 0; k < 5; k++) CHECK(call("off", FM_BREAKER_FAILURE));
  CHECK(state_of("off") == (enum fm_breaker_state)-1);

  /* the registry is bounded: names past FM_BREAKER_MAX go unguarded */
  struct fm_breaker_config on = {1, 1, 5.0};
  fm_breaker_configure(&on);
  char name[32];
  for (int k = 0; k < FM_BREAKER_MAX; k++) {
    snprintf(name, sizeof name, "dep%d", k);
    call(name, FM_BREAKER_SUCCESS);
  }
  CHECK(fm_breaker_acquire("one-too-many", &t, NULL) == 1 && t.b == NULL);
  CHECK(state_of("one-too-many") == (enum fm_breaker_state)-1);
  fm_breaker_free_all();
  CHECK(fm_breaker_list(&v) == 0 && v == NULL);
}

static void test_classify(void) {
  CHECK(fm_breaker_classify(0, 200) == FM_BREAKER_SUCCESS);
  CHECK(fm_breaker_classify(0, 404) == FM_BREAKER_SUCCESS);
  CHECK(fm_breaker_classify(0, 429) == FM_BREAKER_SUCCESS);
  CHECK(fm_breaker_classify(0, 500) == FM_BREAKER_FAILURE);
  CHECK(fm_breaker_classify(0, 503) == FM_BREAKER_FAILURE);
  CHECK(fm_breaker_classify(FM_E_TIMEOUT, 0) == FM_BREAKER_FAILURE);
  CHECK(fm_breaker_classify(FM_E_CONNECT, 0) == FM_BREAKER_FAILURE);
  CHECK(fm_breaker_classify(FM_E_IO, 0) == FM_BREAKER_FAILURE);
  CHECK(fm_breaker_classify(FM_E_TOOBIG, 0) == FM_BREAKER_SUCCESS);
  CHECK(fm_breaker_classify(FM_E_INVAL, 0) == FM_BREAKER_NEUTRAL);
  CHECK(fm_breaker_classify(FM_E_NOMEM, 0) == FM_BREAKER_NEUTRAL);
}

/* Many threads ask for the probe of one half-open breaker at once: exactly one gets it. */
static pthread_barrier_t g_barrier;
static int g_probes;
static pthread_mutex_t g_probes_mu = PTHREAD_MUTEX_INITIALIZER;

static void *race(void *arg) {
  (void)arg;
  pthread_barrier_wait(&g_barrier);
  struct fm_breaker_ticket t;
  if (fm_breaker_acquire("race", &t, NULL)) {
    pthread_mutex_lock(&g_probes_mu);
    g_probes++;
    pthread_mutex_unlock(&g_probes_mu);
    pthread_barrier_wait(&g_barrier); /* hold the probe until everyone has asked */
    fm_breaker_release(&t, FM_BREAKER_SUCCESS);
  } else {
    pthread_barrier_wait(&g_barrier);
  }
  return NULL;
}

static void test_one_probe_across_threads(void) {
  struct fm_breaker_config c = {1, 1, 1.0};
  fm_breaker_configure(&c);
  CHECK(call("race", FM_BREAKER_FAILURE));
  CHECK(state_of("race") == FM_BREAKER_OPEN);
  g_now += 1;
  enum { N = 16 };
  pthread_t th[N];
  pthread_barrier_init(&g_barrier, NULL, N);
  for (int k = 0; k < N; k++) pthread_create(&th[k], NULL, race, NULL);
  for (int k = 0; k < N; k++) pthread_join(th[k], NULL);
  pthread_barrier_destroy(&g_barrier);
  CHECK(g_probes == 1);
  CHECK(state_of("race") == FM_BREAKER_CLOSED);
}

int main(void) {
  fm_log_set_level(FM_LOG_OFF);
  fm_breaker_set_clock(fake_clock);
  test_state_machine();
  test_stale_outcomes_and_reset();
  test_names_list_disabled();
  test_classify();
  test_one_probe_across_threads();
  fm_breaker_free_all();
  fm_breaker_set_clock(NULL);
  fm_metrics_reset();
  return check_done();
}
