/* sentinel-bench main: `sentinel-bench SCENARIO` with SCENARIO one of relay, rpc, journal,
 * failover, rss, pipeline or all; plus the helper processes the rss scenario starts
 * (names starting with an underscore). Also the shared reporting and /proc helpers of bench.h. */
#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <dirent.h>

#include "sentinel/sn_log.h"

typedef struct {
    const char *name;
    int (*run)(void);
    const char *summary;
} s_scenario_t;

static const s_scenario_t s_scenarios[] = {
    {"relay", bench_relay, "events through the broker vs zmq_proxy(XSUB, XPUB), plain and CURVE"},
    {"rpc", bench_rpc, "SNP/1 ping-pong and 256 in flight: broker vs a minimal ROUTER relay"},
    {"journal", bench_journal, "sn_journal_commit + bus publish vs pipelined XADD"},
    {"failover", bench_failover, "20 leader kills at random phases, ttl 3 s"},
    {"rss", bench_rss, "idle agent RSS, broker with 1000 peers, stopped subscriber growth"},
    {"pipeline", bench_pipeline, "run overhead (50 no-op runs), 100 runs on 20 projects, mttr"},
    {"scaleout", bench_scaleout, "100 Cloudflare deploys through 1 and 4 cloudflare-deployers"},
};

static void s_usage(void)
{
    fprintf(stderr, "usage: sentinel-bench SCENARIO\n");
    for (size_t i = 0; i < SN_ARRAY_LEN(s_scenarios); i++)
        fprintf(stderr, "  %-9s %s\n", s_scenarios[i].name, s_scenarios[i].summary);
    fprintf(stderr, "  %-9s every scenario in turn\n", "all");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage();
        return 2;
    }
    sn_log_init("bench", "bench");
    if (!getenv("SN_BENCH_VERBOSE"))
        sn_log_set_level(SN_LOG_WARN);
    if (strcmp(argv[1], "_bare") == 0)
        return bench_rss_bare_main(argc - 2, argv + 2);
    if (strcmp(argv[1], "_peers") == 0)
        return bench_rss_peers_main(argc - 2, argv + 2);
    if (strcmp(argv[1], "_sub") == 0)
        return bench_rss_sub_main(argc - 2, argv + 2);
    bool all = strcmp(argv[1], "all") == 0;
    int failed = 0, ran = 0;
    for (size_t i = 0; i < SN_ARRAY_LEN(s_scenarios); i++) {
        if (!all && strcmp(argv[1], s_scenarios[i].name) != 0)
            continue;
        ran++;
        int64_t t0 = sn_mono_ms();
        int rc = s_scenarios[i].run();
        bench_note("scenario %s finished in %.1f s rc=%d", s_scenarios[i].name,
                   (double)(sn_mono_ms() - t0) / 1000.0, rc);
        if (rc != 0)
            failed++;
    }
    if (!ran) {
        s_usage();
        return 2;
    }
    return failed ? 1 : 0;
}

void bench_figure(const char *name, double value, const char *unit)
{
    printf("figure %s %.6g %s\n", name, value, unit);
    fflush(stdout);
}

void bench_goal(const char *name, double value, bool is_max, double target)
{
    bool met = is_max ? value <= target : value >= target;
    printf("# goal %s %s %g: %s (%.4g)\n", name, is_max ? "<=" : ">=", target,
           met ? "met" : "MISSED", value);
    fflush(stdout);
}

void bench_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

double bench_median(const double *v, size_t n)
{
    SN_ASSERT(n > 0);
    double *c = sn_malloc(n * sizeof *c);
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, s_cmp_double);
    double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2.0;
    free(c);
    return m;
}

double bench_quantile(int64_t *v, size_t n, double q)
{
    SN_ASSERT(n > 0);
    qsort(v, n, sizeof *v, s_cmp_i64);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i < n ? i : n - 1];
}

long bench_status_kib(pid_t pid, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    size_t flen = strlen(field);
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            v = strtol(line + flen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

int bench_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

const char *bench_self_exe(void)
{
    static char path[4096];
    if (!path[0]) {
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        SN_ASSERT(n > 0);
        path[n] = '\0';
    }
    return path;
}

void bench_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            bench_note("cannot raise RLIMIT_NOFILE");
    }
}
