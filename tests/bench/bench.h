/* sentinel-bench: the foundation benchmarks (docs/performance.md). Every goal is a ratio
 * against a raw baseline measured in the same invocation, as the median of BENCH_REPS
 * paired repetitions (absolute figures move by 40 % between runs on the shared machine;
 * paired ratios far less). A scenario prints `figure NAME VALUE UNIT` lines on stdout, a
 * `# goal ...` line per goal, and returns non-zero only if it could not measure. */
#ifndef SN_BENCH_H
#define SN_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sentinel/sn_common.h"

#define BENCH_REPS 5

/* ---- scenarios (bench_<name>.c) -------------------------------------------------------- */

int bench_relay(void);
int bench_rpc(void);
int bench_journal(void);
int bench_failover(void);
int bench_rss(void);
/* The whole product under `sentinelctl up` (issue 3): absolute goals, no baseline. */
int bench_pipeline(void);
/* cloudflare-deployer through 1 and 4 processes against the fake (issue 5). */
int bench_scaleout(void);

/* Helper processes the rss scenario re-executes this binary as (argv after the name). */
int bench_rss_bare_main(int argc, char **argv);
int bench_rss_peers_main(int argc, char **argv);
int bench_rss_sub_main(int argc, char **argv);

/* ---- reporting --------------------------------------------------------------------------- */

/* Prints `figure NAME VALUE UNIT` (flushed at once). */
void bench_figure(const char *name, double value, const char *unit);
/* Prints `# goal NAME OP TARGET: met|MISSED (VALUE)`; @is_max: the goal is value <= target. */
void bench_goal(const char *name, double value, bool is_max, double target);
/* Progress line on stderr, prefixed with "bench:". */
void bench_note(const char *fmt, ...) SN_PRINTF(1, 2);

/* Median of @n values (sorts a copy). */
double bench_median(const double *v, size_t n);
/* Value at quantile @q (0..1) of @n samples, sorted in place. */
double bench_quantile(int64_t *v, size_t n, double q);

/* ---- processes --------------------------------------------------------------------------- */

/* A field of /proc/PID/status in KiB ("RssAnon", "VmRSS", "VmHWM"); -1 if unreadable. */
long bench_status_kib(pid_t pid, const char *field);
/* Number of open file descriptors of @pid (-1 if unreadable). */
int bench_fd_count(pid_t pid);
/* Path of this executable (static storage). */
const char *bench_self_exe(void);
/* Raises RLIMIT_NOFILE to its hard limit (inherited by children). */
void bench_raise_nofile(void);

#endif
