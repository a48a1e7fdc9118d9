/* pipeline: Sentinel's own overhead per run, 100 runs across 20 projects, and the local
 * mean time to recovery (issue 3 "Bench"; docs/performance.md "The pipeline").
 *
 * The whole product runs under `sentinelctl up` on a generated config (embedded redis,
 * broker, nginx, every product role with the e2e test's instance counts, default runtime
 * timings): 20 projects p00..p19, each a bare repository seeded from a tiny directory whose
 * prebuilt public/index.html is the artifact (build_steps ["true"]), each with one
 * environment (staging) and its own local_static target; plus project "mttr" whose live
 * `url` goes through tests/fakes/flaky_proxy.py. Checks: consecutive 1, interval 20 ms.
 *
 * Overhead of a terminal run (all times are the host's wall clock in ms: buildpilot writes
 * the run record, Redis TIME stamps the ledger jobs):
 *
 *   total    = finished - created_unix_ms, finished = max(updated_unix_ms, steps' finished)
 *   worker   = length of the union of [claimed_ms, updated_ms] of the run's ledger jobs
 *              (job:<run>.*: build, stage, verify_preview, promote, verify_live, rollback),
 *              clipped to [created, finished]: from the worker's claim to its completion
 *              write, i.e. the build commands (clone, checkout, steps, artifact store), the
 *              check polling and the deployer's actions
 *   overhead = total - worker
 *
 * Gates (gate.check calls to infraguard, no ledger job) count as Sentinel's own work:
 * they are reported beside the overhead (pipeline_gate_p50_ms) but not subtracted.
 *
 * Phases: (A) 50 runs of p00 one after another (commit, push, wait terminal);
 * (B) 5 rounds of one push to each of the 20 projects, every run of a round in flight at
 * once: all 100 must succeed; (C) 5 times: break the mttr target's live URL (the proxy
 * answers 503), push, and poll nginx's live port for /.well-known/sentinel-release.json
 * from a thread; mttr = first poll after the new release was seen that shows the previous
 * release again - the watcher's failed verdict (the verify_live job's completion time);
 * each repetition first deploys a good commit of mttr, the release to return to. */
#include "bench.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sn_e2e.h"

#define S_PROJECTS 20
#define S_SEQ_RUNS 50
#define S_ROUNDS 5
#define S_MTTR_REPS 5
#define S_RUN_TIMEOUT_MS 60000
#define S_MAX_JOBS 16
#define S_MAX_STEPS 16
#define S_GOAL_OVERHEAD_MS 100.0
#define S_GOAL_MTTR_MS 2000.0

typedef struct {
    char name[16];
    char *repo;  /* bare repository (created by sentinelctl up from the seed) */
    char *clone; /* the bench's working clone on branch staging */
    int live_port, preview_port;
    int commits;
} s_proj_t;

typedef struct {
    sn_e2e_t e; /* dir, config, state, log, ns, up, fake, redis: the e2e harness's fields */
    char *seed;
    char *flag; /* exists: the proxy in front of mttr's live site answers 503 */
    s_proj_t proj[S_PROJECTS + 1];
} s_pb_t;

#define S_MTTR (S_PROJECTS) /* index of project "mttr" */

/* One run taken apart. */
typedef struct {
    bool ok; /* measurable: terminal, timestamps present */
    int state;
    double total_ms, worker_ms, overhead_ms, gate_ms;
    /* per step (by index in the run record): started/finished relative to created, and
     * the job inside the step (claimed/updated relative to created; -1 if none) */
    size_t n_steps;
    char step[S_MAX_STEPS][24];
    double s_start[S_MAX_STEPS], s_end[S_MAX_STEPS];
    double j_claim[S_MAX_STEPS], j_done[S_MAX_STEPS], j_created[S_MAX_STEPS];
} s_sample_t;

/* ---- small helpers ------------------------------------------------------------------- */

static bool s_sh(const char *cmd)
{
    char *full = sn_strdupf("%s >/dev/null 2>&1", cmd);
    int rc = system(full);
    free(full);
    return rc == 0;
}

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A free port not among the @*n_used already handed out (appended to @used). */
static int s_unique_port(int *used, size_t *n_used)
{
    for (;;) {
        int p = sn_test_free_port();
        bool dup = false;
        for (size_t i = 0; i < *n_used; i++)
            dup |= used[i] == p;
        if (!dup) {
            used[(*n_used)++] = p;
            return p;
        }
    }
}

static const Sentinel__V1__Step *s_step(const Sentinel__V1__Run *run, const char *name)
{
    for (size_t i = 0; i < run->n_steps; i++)
        if (strcmp(run->steps[i]->name, name) == 0)
            return run->steps[i];
    return NULL;
}

static bool s_is_terminal(int state)
{
    return state >= SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
}

/* ---- start and stop ------------------------------------------------------------------ */

static bool s_write_seed(s_pb_t *b)
{
    b->seed = sn_strdupf("%s/seed", b->e.dir);
    char *pub = sn_strdupf("%s/public", b->seed);
    char *index = sn_strdupf("%s/index.html", pub);
    bool ok = mkdir(b->seed, 0755) == 0 && mkdir(pub, 0755) == 0;
    FILE *f = ok ? fopen(index, "w") : NULL;
    if (f) {
        fputs("<html><body>bench page 0</body></html>\n", f);
        fclose(f);
    }
    free(pub);
    free(index);
    return f != NULL;
}

static bool s_write_config(s_pb_t *b)
{
    int used[2 * (S_PROJECTS + 1) + 8];
    size_t n = 0;
    for (int i = 0; i <= S_PROJECTS; i++) {
        s_proj_t *p = &b->proj[i];
        if (i == S_MTTR)
            snprintf(p->name, sizeof p->name, "mttr");
        else
            snprintf(p->name, sizeof p->name, "p%02d", i);
        p->repo = sn_strdupf("%s/%s.git", b->e.state, p->name);
        p->clone = sn_strdupf("%s/clone-%s", b->e.dir, p->name);
        p->live_port = s_unique_port(used, &n);
        p->preview_port = s_unique_port(used, &n);
    }
    b->e.fake_port = s_unique_port(used, &n);
    b->e.gateway_port = s_unique_port(used, &n);
    int rpc = s_unique_port(used, &n);
    int pub = s_unique_port(used, &n);
    int sub = s_unique_port(used, &n);
    FILE *f = fopen(b->e.config, "w");
    if (!f)
        return false;
    fprintf(f,
            "namespace: \"%s\"\n"
            "state_dir: %s\n"
            "log_level: info\n"
            "broker:\n  rpc: tcp://127.0.0.1:%d\n  pub: tcp://127.0.0.1:%d\n"
            "  sub: tcp://127.0.0.1:%d\n"
            "redis: embedded\n"
            "processes:\n"
            "  - {role: buildpilot, instances: 2}\n"
            "  - {role: build-validator, instances: 1}\n"
            "  - {role: infraguard, instances: 1}\n"
            "  - {role: local-deployer, instances: 1}\n"
            "  - {role: deployment-watcher, instances: 1}\n"
            "  - {role: autoheal-executor, instances: 1}\n"
            "  - {role: notifier, instances: 2}\n"
            "  - {role: gateway, instances: 1}\n"
            "projects:\n",
            b->e.ns, b->e.state, rpc, pub, sub);
    for (int i = 0; i <= S_PROJECTS; i++)
        fprintf(f,
                "  - name: %s\n"
                "    repo: %s\n"
                "    seed_from: %s\n"
                "    poll_interval_ms: 60s\n"
                "    build_steps: [\"true\"]\n"
                "    build_output: public\n"
                "    build_timeout_s: 60\n"
                "    environments:\n"
                "      - name: staging\n"
                "        branch: staging\n"
                "        targets: [t-%s]\n"
                "        step_timeout_s: 60\n",
                b->proj[i].name, b->proj[i].repo, b->seed, b->proj[i].name);
    fprintf(f, "targets:\n");
    for (int i = 0; i <= S_PROJECTS; i++) {
        fprintf(f,
                "  - name: t-%s\n"
                "    type: local_static\n"
                "    listen: 127.0.0.1:%d\n"
                "    preview_listen: 127.0.0.1:%d\n",
                b->proj[i].name, b->proj[i].live_port, b->proj[i].preview_port);
        if (i == S_MTTR)
            fprintf(f, "    url: http://127.0.0.1:%d\n", b->e.fake_port);
        fprintf(f,
                "    check: {path: /, status: 200, body_contains: \"bench page\", "
                "consecutive: 1, interval_ms: 20, deadline_ms: %d}\n",
                i == S_MTTR ? 1000 : 10000);
    }
    fprintf(f,
            "channels:\n"
            "  - {name: log, type: log}\n"
            "  - {name: file, type: file, path: %s/notifications.jsonl}\n"
            "gateway:\n  listen: 127.0.0.1:%d\n",
            b->e.state, b->e.gateway_port);
    return fclose(f) == 0;
}

static bool s_ready(void *arg)
{
    s_pb_t *b = arg;
    if (sn_test_count_in_file(b->e.log, "elected leader") < 1)
        return false;
    for (int i = 0; i <= S_PROJECTS; i++) {
        long status = 0;
        char *body = sn_e2e_get(b->proj[i].preview_port, "/", &status);
        free(body);
        if (status == 0)
            return false;
    }
    return true;
}

static bool s_start(s_pb_t *b)
{
    memset(b, 0, sizeof *b);
    sn_e2e_t *e = &b->e;
    e->dir = sn_test_tmpdir("pbench");
    chmod(e->dir, 0711); /* builds run as nobody under <dir>/var/builds */
    e->state = sn_strdupf("%s/var", e->dir);
    e->config = sn_strdupf("%s/sentinel.yml", e->dir);
    e->repo = sn_strdup("");
    e->clone = sn_strdup("");
    e->log = sn_strdupf("%s/up.log", e->dir);
    e->ns = sn_strdupf("pbench%d:", (int)getpid());
    b->flag = sn_strdupf("%s/live-broken", e->dir);
    if (!s_write_seed(b) || !s_write_config(b)) {
        bench_note("pipeline: cannot write the config under %s", e->dir);
        return false;
    }
    char *fake = sn_strdupf("%s/tests/fakes/flaky_proxy.py", SN_SOURCE_DIR);
    char *port = sn_strdupf("%d", e->fake_port);
    char *upstream = sn_strdupf("http://127.0.0.1:%d", b->proj[S_MTTR].live_port);
    char *fake_log = sn_strdupf("%s/flaky_proxy.log", e->dir);
    char *fake_argv[] = {"/usr/bin/python3", fake,          "--port", port, "--upstream",
                         upstream,           "--fail-flag", b->flag,  NULL};
    e->fake = sn_test_spawn(fake_argv, fake_log);
    free(fake);
    free(port);
    free(upstream);
    free(fake_log);
    char *ctl = sn_test_bin("sentinelctl");
    char *argv[] = {ctl, "up", e->config, NULL};
    e->up = sn_test_spawn(argv, e->log);
    free(ctl);
    if (e->up <= 0 || !sn_test_wait_for(s_ready, b, 90000)) {
        bench_note("pipeline: sentinelctl up did not come up (log %s)", e->log);
        return false;
    }
    char *sock = sn_strdupf("%s/redis.sock", e->state);
    struct timeval tv = {5, 0};
    e->redis = redisConnectUnixWithTimeout(sock, tv);
    free(sock);
    if (!e->redis || e->redis->err) {
        bench_note("pipeline: cannot connect to the embedded redis");
        return false;
    }
    redisSetTimeout(e->redis, tv);
    for (int i = 0; i <= S_PROJECTS; i++) {
        s_proj_t *p = &b->proj[i];
        char *cmd = sn_strdupf("git clone -q -b staging '%s' '%s' && cd '%s' && git config "
                               "user.email bench@example.com && git config user.name Bench",
                               p->repo, p->clone, p->clone);
        bool ok = s_sh(cmd);
        free(cmd);
        if (!ok) {
            bench_note("pipeline: cannot clone %s", p->repo);
            return false;
        }
    }
    return true;
}

static void s_stop(s_pb_t *b)
{
    if (b->e.dir) {
        int code = sn_e2e_stop(&b->e); /* frees the e2e fields, removes the dir */
        if (code != 0)
            bench_note("pipeline: sentinelctl up exited %d", code);
    }
    for (int i = 0; i <= S_PROJECTS; i++) {
        free(b->proj[i].repo);
        free(b->proj[i].clone);
    }
    free(b->seed);
    free(b->flag);
}

/* ---- runs -------------------------------------------------------------------------------- */

/* Commits a new page to the project's staging branch and pushes (the post-receive hook
 * tells Sentinel). Returns the sha (caller frees) or NULL. */
static char *s_push(s_proj_t *p)
{
    p->commits++;
    char *cmd = sn_strdupf("cd '%s' && printf '<html><body>bench page %d</body></html>\\n' > "
                           "public/index.html && git commit -qam 'page %d' && git push -q "
                           "origin staging 2>/dev/null && git rev-parse HEAD",
                           p->clone, p->commits, p->commits);
    FILE *f = popen(cmd, "r");
    free(cmd);
    if (!f)
        return NULL;
    char sha[64] = "";
    if (!fgets(sha, sizeof sha, f))
        sha[0] = '\0';
    int rc = pclose(f);
    sha[strcspn(sha, "\n")] = '\0';
    return rc == 0 && strlen(sha) == 40 ? sn_strdup(sha) : NULL;
}

/* The id of the newest run of @project for @sha (NULL: any), or NULL. */
static char *s_find_run_id(s_pb_t *b, const char *project, const char *sha)
{
    redisReply *ids = redisCommand(b->e.redis, "ZREVRANGE %sruns:%s 0 10", b->e.ns, project);
    char *found = NULL;
    for (size_t i = 0; ids && ids->type == REDIS_REPLY_ARRAY && i < ids->elements && !found; i++) {
        Sentinel__V1__Run *run = sn_e2e_load_run(&b->e, ids->element[i]->str);
        if (run && (!sha || strcmp(run->sha, sha) == 0))
            found = sn_strdup(run->run_id);
        if (run)
            sentinel__v1__run__free_unpacked(run, NULL);
    }
    if (ids)
        freeReplyObject(ids);
    return found;
}

/* Waits for the run of @project at @sha to exist and end; returns it or NULL (timeout). */
static Sentinel__V1__Run *s_wait_run(s_pb_t *b, const char *project, const char *sha,
                                     int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    char *id = NULL;
    while (sn_mono_ms() < deadline) {
        if (b->e.redis->err) {
            bench_note("pipeline: redis connection lost: %s", b->e.redis->errstr);
            break;
        }
        if (!id)
            id = s_find_run_id(b, project, sha);
        if (id) {
            Sentinel__V1__Run *run = sn_e2e_load_run(&b->e, id);
            if (run && s_is_terminal(run->state)) {
                free(id);
                return run;
            }
            if (run)
                sentinel__v1__run__free_unpacked(run, NULL);
        }
        s_nap_ms(10);
    }
    free(id);
    return NULL;
}

typedef struct {
    double a, b;
} s_span_t;

static int s_cmp_span(const void *x, const void *y)
{
    const s_span_t *p = x, *q = y;
    return p->a < q->a ? -1 : p->a > q->a ? 1 : 0;
}

static double s_hget_num(redisContext *rc, const char *key, const char *field)
{
    redisReply *r = redisCommand(rc, "HGET %s %s", key, field);
    double v = (r && r->type == REDIS_REPLY_STRING) ? strtod(r->str, NULL) : 0;
    if (r)
        freeReplyObject(r);
    return v;
}

/* Ledger job kinds (buildpilot's work tags) and the run step each belongs to. */
static const char *const s_kinds[][2] = {
    {"build", "build"},     {"stage", "stage"},       {"vpreview", "verify_preview"},
    {"promote", "promote"}, {"vlive", "verify_live"}, {"rollback", "rollback"},
};

/* Index of step @name in @s, or -1. */
static int s_step_index(const s_sample_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_steps; i++)
        if (strcmp(s->step[i], name) == 0)
            return (int)i;
    return -1;
}

/* Takes a terminal run apart (see the file comment for the formula). */
static void s_analyse(s_pb_t *b, const Sentinel__V1__Run *run, s_sample_t *out)
{
    memset(out, 0, sizeof *out);
    out->state = run->state;
    double created = (double)run->created_unix_ms, finished = (double)run->updated_unix_ms;
    for (size_t i = 0; i < run->n_steps; i++)
        if ((double)run->steps[i]->finished_unix_ms > finished)
            finished = (double)run->steps[i]->finished_unix_ms;
    if (created <= 0 || finished < created)
        return;
    out->total_ms = finished - created;
    for (size_t s = 0; s < S_MAX_STEPS; s++)
        out->j_claim[s] = out->j_done[s] = out->j_created[s] = -1;

    /* The run's ledger jobs. */
    s_span_t spans[S_MAX_JOBS];
    size_t n_spans = 0;
    redisReply *keys = redisCommand(b->e.redis, "KEYS %sjob:%s.*", b->e.ns, run->run_id);
    for (size_t i = 0; keys && keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
        const char *key = keys->element[i]->str;
        double claimed = s_hget_num(b->e.redis, key, "claimed_ms");
        double updated = s_hget_num(b->e.redis, key, "updated_ms");
        double jcreated = s_hget_num(b->e.redis, key, "created_ms");
        if (claimed <= 0 || updated < claimed || n_spans == S_MAX_JOBS)
            continue;
        spans[n_spans++] = (s_span_t){claimed, updated};
        /* The step the job belongs to, by the job's kind (buildpilot's work tag). */
        redisReply *kind = redisCommand(b->e.redis, "HGET %s kind", key);
        const char *step = NULL;
        for (size_t k = 0; kind && kind->type == REDIS_REPLY_STRING && k < SN_ARRAY_LEN(s_kinds);
             k++)
            if (strcmp(kind->str, s_kinds[k][0]) == 0)
                step = s_kinds[k][1];
        for (size_t s = 0; step && s < run->n_steps && s < S_MAX_STEPS; s++)
            if (strcmp(run->steps[s]->name, step) == 0) {
                out->j_claim[s] = claimed - created;
                out->j_done[s] = updated - created;
                out->j_created[s] = jcreated - created;
            }
        if (!step)
            bench_note("pipeline: job %s of unknown kind %s", key,
                       kind && kind->type == REDIS_REPLY_STRING ? kind->str : "?");
        if (kind)
            freeReplyObject(kind);
    }
    if (keys)
        freeReplyObject(keys);
    qsort(spans, n_spans, sizeof *spans, s_cmp_span);
    double worker = 0, cur_a = 0, cur_b = -1;
    for (size_t i = 0; i < n_spans; i++) {
        double a = spans[i].a < created ? created : spans[i].a;
        double z = spans[i].b > finished ? finished : spans[i].b;
        if (z <= a)
            continue;
        if (a > cur_b) {
            if (cur_b > cur_a)
                worker += cur_b - cur_a;
            cur_a = a, cur_b = z;
        } else if (z > cur_b) {
            cur_b = z;
        }
    }
    if (cur_b > cur_a)
        worker += cur_b - cur_a;
    out->worker_ms = worker;
    out->overhead_ms = out->total_ms - worker;
    const Sentinel__V1__Step *g1 = s_step(run, "gate1"), *g2 = s_step(run, "gate2");
    if (g1 && g1->finished_unix_ms >= g1->started_unix_ms && g1->started_unix_ms > 0)
        out->gate_ms += (double)(g1->finished_unix_ms - g1->started_unix_ms);
    if (g2 && g2->finished_unix_ms >= g2->started_unix_ms && g2->started_unix_ms > 0)
        out->gate_ms += (double)(g2->finished_unix_ms - g2->started_unix_ms);
    out->n_steps = run->n_steps < S_MAX_STEPS ? run->n_steps : S_MAX_STEPS;
    for (size_t s = 0; s < out->n_steps; s++) {
        const Sentinel__V1__Step *st = run->steps[s];
        snprintf(out->step[s], sizeof out->step[s], "%s", st->name);
        out->s_start[s] = st->started_unix_ms > 0 ? (double)st->started_unix_ms - created : -1;
        out->s_end[s] = st->finished_unix_ms > 0 ? (double)st->finished_unix_ms - created : -1;
    }
    out->ok = true;
}

static void s_print_timeline(const char *what, const s_sample_t *s)
{
    bench_note("%s: total %.0f ms, worker %.0f ms, overhead %.0f ms (gates %.0f ms)", what,
               s->total_ms, s->worker_ms, s->overhead_ms, s->gate_ms);
    for (size_t i = 0; i < s->n_steps; i++) {
        if (s->s_start[i] < 0)
            continue;
        if (s->j_claim[i] >= 0)
            bench_note("  %-15s %6.0f .. %6.0f   job created %6.0f claimed %6.0f done %6.0f",
                       s->step[i], s->s_start[i], s->s_end[i], s->j_created[i], s->j_claim[i],
                       s->j_done[i]);
        else
            bench_note("  %-15s %6.0f .. %6.0f", s->step[i], s->s_start[i], s->s_end[i]);
    }
}

/* Where the overhead goes over a set of samples with the same step list: per step, the
 * median gap before it (previous step finished -> started), the median time from the step's
 * start to its job's claim, and from the job's completion to the step's end. */
static void s_breakdown(const s_sample_t *v, size_t n)
{
    if (n == 0)
        return;
    double *tmp = sn_malloc(n * sizeof *tmp);
    const s_sample_t *ref = &v[0];
    for (size_t s = 0; s < ref->n_steps; s++) {
        size_t k = 0, kj = 0;
        double gap, in_step, dispatch = -1, result = -1;
        for (size_t i = 0; i < n; i++) {
            if (v[i].n_steps != ref->n_steps || v[i].s_start[s] < 0)
                continue;
            double prev = 0;
            for (size_t q = 0; q < s; q++)
                if (v[i].s_end[q] > prev)
                    prev = v[i].s_end[q];
            tmp[k++] = v[i].s_start[s] - prev;
        }
        if (k == 0)
            continue;
        gap = bench_median(tmp, k);
        k = 0;
        for (size_t i = 0; i < n; i++)
            if (v[i].n_steps == ref->n_steps && v[i].s_start[s] >= 0)
                tmp[k++] = v[i].s_end[s] - v[i].s_start[s];
        in_step = bench_median(tmp, k);
        for (size_t i = 0; i < n; i++)
            if (v[i].n_steps == ref->n_steps && v[i].j_claim[s] >= 0)
                tmp[kj++] = v[i].j_claim[s] - v[i].s_start[s];
        if (kj) {
            dispatch = bench_median(tmp, kj);
            kj = 0;
            for (size_t i = 0; i < n; i++)
                if (v[i].n_steps == ref->n_steps && v[i].j_claim[s] >= 0)
                    tmp[kj++] = v[i].s_end[s] - v[i].j_done[s];
            result = bench_median(tmp, kj);
        }
        if (dispatch >= 0)
            bench_note("  %-15s gap before %5.1f  step %6.1f  (start->claim %5.1f, "
                       "done->step end %5.1f)",
                       ref->step[s], gap, in_step, dispatch, result);
        else
            bench_note("  %-15s gap before %5.1f  step %6.1f", ref->step[s], gap, in_step);
    }
    free(tmp);
}

/* ---- phases ------------------------------------------------------------------------------ */

/* Waits for the seeded run of every project. */
static bool s_wait_seeded(s_pb_t *b)
{
    for (int i = 0; i <= S_PROJECTS; i++) {
        Sentinel__V1__Run *run = s_wait_run(b, b->proj[i].name, NULL, 120000);
        if (!run) {
            bench_note("pipeline: the seeded run of %s did not end", b->proj[i].name);
            return false;
        }
        bool ok = run->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
        if (!ok)
            bench_note("pipeline: the seeded run of %s ended %d: %s", b->proj[i].name, run->state,
                       run->reason);
        sentinel__v1__run__free_unpacked(run, NULL);
        if (!ok)
            return false;
    }
    return true;
}

static int s_cmp_sample_overhead(const void *x, const void *y)
{
    const s_sample_t *p = x, *q = y;
    return p->overhead_ms < q->overhead_ms ? -1 : p->overhead_ms > q->overhead_ms ? 1 : 0;
}

static void s_report_samples(const char *prefix, s_sample_t *v, size_t n)
{
    int64_t *ov = sn_malloc(n * sizeof *ov), *tot = sn_malloc(n * sizeof *tot);
    int64_t *gate = sn_malloc(n * sizeof *gate), *wk = sn_malloc(n * sizeof *wk);
    int64_t *nog = sn_malloc(n * sizeof *nog);
    for (size_t i = 0; i < n; i++) {
        nog[i] = (int64_t)(v[i].overhead_ms - v[i].gate_ms);
        ov[i] = (int64_t)v[i].overhead_ms;
        tot[i] = (int64_t)v[i].total_ms;
        gate[i] = (int64_t)v[i].gate_ms;
        wk[i] = (int64_t)v[i].worker_ms;
    }
    char name[96];
    snprintf(name, sizeof name, "%s_overhead_p50_ms", prefix);
    bench_figure(name, bench_quantile(ov, n, 0.5), "ms");
    snprintf(name, sizeof name, "%s_overhead_p90_ms", prefix);
    bench_figure(name, bench_quantile(ov, n, 0.9), "ms");
    snprintf(name, sizeof name, "%s_overhead_max_ms", prefix);
    bench_figure(name, bench_quantile(ov, n, 1.0), "ms");
    snprintf(name, sizeof name, "%s_overhead_excl_gates_p50_ms", prefix);
    bench_figure(name, bench_quantile(nog, n, 0.5), "ms");
    snprintf(name, sizeof name, "%s_gate_p50_ms", prefix);
    bench_figure(name, bench_quantile(gate, n, 0.5), "ms");
    snprintf(name, sizeof name, "%s_worker_p50_ms", prefix);
    bench_figure(name, bench_quantile(wk, n, 0.5), "ms");
    snprintf(name, sizeof name, "%s_run_total_p50_ms", prefix);
    bench_figure(name, bench_quantile(tot, n, 0.5), "ms");
    snprintf(name, sizeof name, "%s_run_total_p90_ms", prefix);
    bench_figure(name, bench_quantile(tot, n, 0.9), "ms");
    free(ov);
    free(tot);
    free(gate);
    free(wk);
    free(nog);
}

/* XLEN of stream @name under the namespace (0 if absent or unreadable). */
static long long s_xlen(s_pb_t *b, const char *name)
{
    redisReply *r = redisCommand(b->e.redis, "XLEN %s%s", b->e.ns, name);
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    if (r)
        freeReplyObject(r);
    return n;
}

/* (A) S_SEQ_RUNS runs of p00, one at a time. */
static bool s_phase_sequential(s_pb_t *b)
{
    s_sample_t *v = sn_calloc(S_SEQ_RUNS, sizeof *v);
    size_t n = 0;
    int failed = 0;
    int64_t *push_ms = sn_calloc(S_SEQ_RUNS, sizeof *push_ms);
    size_t n_push = 0;
    double events[S_SEQ_RUNS], audits[S_SEQ_RUNS];
    size_t n_xlen = 0;
    bool measured = true;
    for (int r = 0; r < S_SEQ_RUNS; r++) {
        long long ev0 = s_xlen(b, "events"), au0 = s_xlen(b, "audit");
        int64_t t_push = sn_wall_ms();
        char *sha = s_push(&b->proj[0]);
        if (!sha) {
            bench_note("pipeline: push %d failed", r);
            measured = false;
            break;
        }
        Sentinel__V1__Run *run = s_wait_run(b, b->proj[0].name, sha, S_RUN_TIMEOUT_MS);
        free(sha);
        if (!run) {
            bench_note("pipeline: run %d did not end within %d ms", r, S_RUN_TIMEOUT_MS);
            measured = false;
            break;
        }
        if (run->state != SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED) {
            bench_note("pipeline: run %d ended %d: %s", r, run->state, run->reason);
            failed++;
        } else {
            s_analyse(b, run, &v[n]);
            if (v[n].ok) {
                push_ms[n_push++] = run->created_unix_ms - t_push;
                n++;
            }
            /* Nothing else runs: what the stream grew by is this run's (plus the notifier's
             * and the ledger's entries it caused). */
            events[n_xlen] = (double)(s_xlen(b, "events") - ev0);
            audits[n_xlen++] = (double)(s_xlen(b, "audit") - au0);
        }
        sentinel__v1__run__free_unpacked(run, NULL);
    }
    bench_note("sequential: %zu measured runs, %d failed", n, failed);
    if (n > 0) {
        s_sample_t *sorted = sn_malloc(n * sizeof *sorted);
        memcpy(sorted, v, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, s_cmp_sample_overhead);
        s_print_timeline("median-overhead run", &sorted[n / 2]);
        s_print_timeline("worst-overhead run", &sorted[n - 1]);
        free(sorted);
        bench_note("per step, medians over %zu runs (ms; the gap is Sentinel's, and so are "
                   "start->claim and done->step end):",
                   n);
        s_breakdown(v, n);
        s_report_samples("pipeline", v, n);
        bench_figure("pipeline_push_to_run_p50_ms", bench_quantile(push_ms, n_push, 0.5), "ms");
        bench_figure("pipeline_seq_runs_failed", failed, "runs");
        if (n_xlen) {
            bench_figure("pipeline_journal_entries_per_run", bench_median(events, n_xlen),
                         "entries");
            bench_figure("pipeline_audit_records_per_run", bench_median(audits, n_xlen), "records");
        }
        int64_t *ov = sn_malloc(n * sizeof *ov);
        for (size_t i = 0; i < n; i++)
            ov[i] = (int64_t)v[i].overhead_ms;
        bench_goal("pipeline_overhead_p50_ms", bench_quantile(ov, n, 0.5), true,
                   S_GOAL_OVERHEAD_MS);
        free(ov);
    }
    free(push_ms);
    free(v);
    return measured && n >= S_SEQ_RUNS / 2;
}

/* (B) S_ROUNDS rounds of one push to each of the 20 projects. */
static bool s_phase_many(s_pb_t *b)
{
    s_sample_t *v = sn_calloc(S_ROUNDS * S_PROJECTS, sizeof *v);
    size_t n = 0;
    int succeeded = 0, other = 0, lost = 0;
    int64_t t0 = sn_mono_ms();
    for (int r = 0; r < S_ROUNDS; r++) {
        char *sha[S_PROJECTS];
        for (int i = 0; i < S_PROJECTS; i++) {
            sha[i] = s_push(&b->proj[i]);
            if (!sha[i])
                bench_note("pipeline: push to %s failed", b->proj[i].name);
        }
        for (int i = 0; i < S_PROJECTS; i++) {
            Sentinel__V1__Run *run =
                sha[i] ? s_wait_run(b, b->proj[i].name, sha[i], S_RUN_TIMEOUT_MS) : NULL;
            free(sha[i]);
            if (!run) {
                lost++;
                continue;
            }
            if (run->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED) {
                succeeded++;
                s_analyse(b, run, &v[n]);
                if (v[n].ok)
                    n++;
            } else {
                other++;
                bench_note("pipeline: %s run ended %d: %s", b->proj[i].name, run->state,
                           run->reason);
            }
            sentinel__v1__run__free_unpacked(run, NULL);
        }
    }
    double wall_s = (double)(sn_mono_ms() - t0) / 1000.0;
    bench_note("20 projects: %d succeeded, %d ended otherwise, %d did not end, in %.1f s",
               succeeded, other, lost, wall_s);
    bench_figure("pipeline_many_runs_succeeded", succeeded, "runs");
    bench_figure("pipeline_many_wall_s", wall_s, "s");
    bench_figure("pipeline_many_runs_per_min", (double)succeeded * 60.0 / wall_s, "runs/min");
    if (n > 0)
        s_report_samples("pipeline_many", v, n);
    bench_goal("pipeline_many_runs_succeeded", succeeded, false, S_ROUNDS * S_PROJECTS);
    free(v);
    return true;
}

/* The live site's identity poller of the mttr phase. */
#define S_OBS_MAX 200000

typedef struct {
    int port;
    volatile int stop;
    char old_id[64], new_id[64]; /* deploy ids; new_id set once known */
    pthread_mutex_t mu;
    /* observations: wall ms and what was served (0 old, 1 other, 2 error) */
    int64_t *t;
    unsigned char *what;
    size_t n;
} s_poller_t;

static void *s_poll_loop(void *arg)
{
    s_poller_t *p = arg;
    while (!p->stop) {
        long status = 0;
        char *body = sn_e2e_get(p->port, "/.well-known/sentinel-release.json", &status);
        int64_t now = sn_wall_ms();
        unsigned char what = 2;
        if (status == 200 && body)
            what = strstr(body, p->old_id) ? 0 : 1;
        free(body);
        pthread_mutex_lock(&p->mu);
        if (p->n < S_OBS_MAX) {
            p->t[p->n] = now;
            p->what[p->n] = what;
            p->n++;
        }
        pthread_mutex_unlock(&p->mu);
        s_nap_ms(1); /* pacing only: a GET on loopback takes about a millisecond */
    }
    return NULL;
}

/* The deploy id the live port of @port serves (caller frees) or NULL. */
static char *s_live_deploy(int port)
{
    long status = 0;
    char *body = sn_e2e_get(port, "/.well-known/sentinel-release.json", &status);
    char *id = NULL;
    const char *k = body && status == 200 ? strstr(body, "\"deployId\"") : NULL;
    if (k && (k = strchr(k + 10, '"'))) {
        const char *z = strchr(k + 1, '"');
        if (z)
            id = sn_strndup(k + 1, (size_t)(z - k - 1));
    }
    free(body);
    return id;
}

/* (C) S_MTTR_REPS live failures of project mttr. */
static bool s_phase_mttr(s_pb_t *b)
{
    s_proj_t *p = &b->proj[S_MTTR];
    double mttr[S_MTTR_REPS], mttr_step[S_MTTR_REPS], detect[S_MTTR_REPS];
    size_t n = 0;
    bool measured = true;
    for (int r = 0; r < S_MTTR_REPS && measured; r++) {
        /* A good release first, so that the one to return to is always the newest before
         * the failing one (see docs/performance.md: with keep_releases failed releases in
         * a row, local-deployer prunes the rollback target). */
        char *good = s_push(p);
        Sentinel__V1__Run *gr = good ? s_wait_run(b, p->name, good, S_RUN_TIMEOUT_MS) : NULL;
        free(good);
        bool good_ok = gr && gr->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED;
        if (gr)
            sentinel__v1__run__free_unpacked(gr, NULL);
        if (!good_ok) {
            bench_note("mttr: the good run before repetition %d did not succeed", r);
            measured = false;
            break;
        }
        char *old = s_live_deploy(p->live_port);
        if (!old) {
            bench_note("mttr: the live site serves no identity");
            measured = false;
            break;
        }
        s_poller_t poll = {.port = p->live_port};
        snprintf(poll.old_id, sizeof poll.old_id, "%s", old);
        free(old);
        pthread_mutex_init(&poll.mu, NULL);
        poll.t = sn_malloc(S_OBS_MAX * sizeof *poll.t);
        poll.what = sn_malloc(S_OBS_MAX);
        pthread_t th;
        pthread_create(&th, NULL, s_poll_loop, &poll);
        FILE *f = fopen(b->flag, "w");
        if (f)
            fclose(f);
        char *sha = s_push(p);
        Sentinel__V1__Run *run = sha ? s_wait_run(b, p->name, sha, S_RUN_TIMEOUT_MS) : NULL;
        free(sha);
        /* Let the poller see a little of what serves after the run ended. */
        int64_t until = sn_mono_ms() + 200;
        while (sn_mono_ms() < until)
            s_nap_ms(10);
        poll.stop = 1;
        pthread_join(th, NULL);
        unlink(b->flag);
        if (!run || run->state != SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK) {
            bench_note("mttr: run %s", run ? run->reason : "did not end");
            measured = false;
        } else {
            const Sentinel__V1__Step *vl = s_step(run, "verify_live");
            s_sample_t smp;
            s_analyse(b, run, &smp);
            int vi = s_step_index(&smp, "verify_live");
            /* The watcher's verdict: the verify_live job's completion. */
            double verdict =
                vi >= 0 && smp.j_done[vi] >= 0 ? (double)run->created_unix_ms + smp.j_done[vi] : 0;
            /* First observation of the old release after the last one of anything else. */
            int64_t restored = 0, last_other = 0, first_new = 0;
            for (size_t i = 0; i < poll.n; i++) {
                if (poll.what[i] != 0) {
                    last_other = poll.t[i];
                    restored = 0;
                    if (!first_new && poll.what[i] == 1)
                        first_new = poll.t[i];
                } else if (last_other && !restored) {
                    restored = poll.t[i];
                }
            }
            if (!vl || verdict <= 0 || !first_new || !restored) {
                bench_note("mttr: not observed (verdict %.0f, new seen %lld, restored %lld)",
                           verdict, (long long)first_new, (long long)restored);
                measured = false;
            } else {
                mttr[n] = (double)restored - verdict;
                mttr_step[n] = (double)(restored - vl->finished_unix_ms);
                detect[n] = verdict - (double)first_new;
                bench_note("mttr %d: new release seen %+lld ms, verdict %+.0f ms, step end "
                           "%+lld ms, previous release again %+lld ms (from run created; "
                           "%zu polls, last other %+lld)",
                           r, (long long)(first_new - run->created_unix_ms),
                           verdict - (double)run->created_unix_ms,
                           (long long)(vl->finished_unix_ms - run->created_unix_ms),
                           (long long)(restored - run->created_unix_ms), poll.n,
                           (long long)(last_other - run->created_unix_ms));
                if (r == 0)
                    s_print_timeline("mttr run", &smp);
                n++;
            }
        }
        if (run)
            sentinel__v1__run__free_unpacked(run, NULL);
        free(poll.t);
        free(poll.what);
        pthread_mutex_destroy(&poll.mu);
    }
    if (n == 0)
        return false;
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = mttr[i] > worst ? mttr[i] : worst;
    bench_figure("mttr_local_ms", bench_median(mttr, n), "ms");
    bench_figure("mttr_local_worst_ms", worst, "ms");
    bench_figure("mttr_from_step_end_ms", bench_median(mttr_step, n), "ms");
    bench_figure("mttr_detect_ms", bench_median(detect, n), "ms");
    bench_goal("mttr_local_ms", bench_median(mttr, n), true, S_GOAL_MTTR_MS);
    return measured;
}

int bench_pipeline(void)
{
    bench_raise_nofile();
    /* hiredis writes with write(2): a closed connection must be an error, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    s_pb_t *b = sn_calloc(1, sizeof *b);
    int rc = 1;
    int64_t t0 = sn_mono_ms();
    if (!s_start(b))
        goto out;
    if (!s_wait_seeded(b))
        goto out;
    bench_note("pipeline: up with %d projects, seeded runs done in %.1f s", S_PROJECTS + 1,
               (double)(sn_mono_ms() - t0) / 1000.0);
    bool ok = s_phase_sequential(b);
    ok = s_phase_many(b) && ok;
    ok = s_phase_mttr(b) && ok;
    rc = ok ? 0 : 1;
out:
    if (rc != 0 && b->e.dir) {
        setenv("SN_E2E_KEEP", "1", 0);
        bench_note("pipeline: kept %s", b->e.dir);
    }
    s_stop(b);
    free(b);
    return rc;
}
