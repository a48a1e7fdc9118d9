/* build-validator (local mode): turns new commits of a local git repository into runs
 * and builds them (docs/pipeline.md).
 *
 * Sources. `source.push` (from `sentinelctl notify push` in a post-receive hook) and
 * the leader's ref polling both end in the same place on the loop thread: the commit
 * is claimed in Redis (`source:<project>:<ref>` set to the sha unless it already holds
 * it, one Redis Function, so instances and the two paths dedupe on (project, ref, sha)),
 * then `run.trigger` is called; if that call fails the claim is reverted so the commit
 * is seen again. Polling runs git on a thread of its own (the loop never waits for a
 * process) and hands what changed to the loop through a queue.
 *
 * Builds. `build.local` runs on a job thread: claim the ledger job (label job_id) before
 * any side effect, a clean work dir <state_dir>/builds/<run-id>/ with a fresh clone of
 * the commit, the project's steps one by one through sandbox.h (unprivileged user, clean
 * environment, limits, one timeout for the whole build that kills the process group),
 * output into <state_dir>/builds/<run-id>.log, the build output into the artifact store,
 * the job completed with its epoch, and a BuildResult. A failing step is never
 * transient; only infrastructure failures (I/O, clone of an existing repository) are.
 *
 * GitHub projects (source_type github) are handled by build_validator_github.c: verdicts
 * from the github.* journal events and polling, and for artifact_from github a build.local
 * that fetches the verified run's artifact instead of building. With artifact_from local,
 * the build below clones `repo` (the URL) at the verified commit. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#include "build_validator_github.h"
#include "sandbox.h"

#define S_ROLE "build-validator"
#define S_LIB "sentinel_source"
#define S_REDIS_TIMEOUT_MS 1000
#define S_TRIGGER_DEADLINE_MS 10000
#define S_GIT_TIMEOUT_MS 30000
#define S_CLONE_TIMEOUT_MS 300000
#define S_GIT_OUTPUT_MAX (1 << 20)
#define S_POLL_WAKE_MS 100
#define S_FSIZE_MB 8192
#define S_DEFAULT_TIMEOUT_S 600
#define S_DEFAULT_MEMORY_MB 2048
#define S_DEFAULT_MAX_PROCS 256
#define S_HEADS "refs/heads/"

/* clang-format off */
static const char s_lua[] =
    "local function s_claim(keys, args)\n"
    "  local old = redis.call('GET', keys[1])\n"
    "  if old == args[1] then return {0, old} end\n"
    "  redis.call('SET', keys[1], args[1])\n"
    "  return {1, old or ''}\n"
    "end\n"
    "local function s_revert(keys, args)\n"
    "  if redis.call('GET', keys[1]) ~= args[1] then return 0 end\n"
    "  if args[2] == '' then redis.call('DEL', keys[1]) else redis.call('SET', keys[1], args[2]) end\n"
    "  return 1\n"
    "end\n"
    "redis.register_function('sentinel_source_claim', s_claim)\n"
    "redis.register_function('sentinel_source_revert', s_revert)\n";
/* clang-format on */

/* A branch some environment of a project deploys from. */
typedef struct {
    const sn_project_config_t *project;
    char *ref;     /* refs/heads/<branch> */
    char last[65]; /* the poller's last report (guarded by mu) */
} s_watch_t;

/* A head the poller saw change, for the loop. */
typedef struct s_obs {
    char *project, *ref, *sha;
    struct s_obs *next;
} s_obs_t;

typedef struct s_bv s_bv_t;

/* A run.trigger call in flight (loop thread). */
typedef struct s_pending {
    s_bv_t *st;
    char *project, *ref, *sha, *old, *trigger;
    sn_request_t *req; /* a source.push waiting for the outcome, or NULL */
    struct s_pending *next;
} s_pending_t;

struct s_bv {
    const sn_config_t *cfg;
    sn_redis_t *redis;
    sn_artifact_t *store;
    char *builds_dir;
    char *git;
    s_watch_t *watches;
    size_t watch_count;
    s_pending_t *pending;

    pthread_t poller;
    bool has_poller;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit;           /* mu */
    bool is_leader;      /* mu */
    s_obs_t *obs;        /* mu, newest first */
    bv_github_t *github; /* GitHub projects (build_validator_github.c), or NULL */
};

/* One build on a job thread. */
typedef struct {
    sn_ctx_t *ctx;
    const char *job_id;
    uint64_t epoch;
    int64_t lease_ms;
    int64_t next_renew_ms;
    bool is_lease_lost;
} s_job_t;

static void *s_poll_thread(void *arg);
static void s_trigger(sn_ctx_t *ctx, s_bv_t *st, const char *project, const char *ref,
                      const char *sha, const char *trigger, sn_request_t *req);
static sn_rc_t s_build_job(sn_ctx_t *ctx, void *state, const sn_request_t *req,
                           sn_envelope_t *reply, const char **nak_reason);
static bool s_sha_is_valid(const char *sha);
static bool s_name_is_safe(const char *s);
static char *s_full_ref(const char *ref);
static bool s_project_uses_ref(const sn_project_config_t *p, const char *ref);
static void s_forget(s_bv_t *st, const char *project, const char *ref);

/* ---- lifecycle ---------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    s_bv_t *st = sn_calloc(1, sizeof *st);
    st->cfg = sn_ctx_config(ctx);
    st->redis = sn_ctx_redis(ctx);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    *state = st;
    sn_redis_add_library(st->redis, S_LIB, s_lua);
    const char *state_dir = st->cfg->state_dir ? st->cfg->state_dir : "./var";
    char *art = st->cfg->artifact_dir ? sn_strdup(st->cfg->artifact_dir)
                                      : sn_strdupf("%s/artifacts", state_dir);
    st->store = sn_artifact_new(art, st->redis);
    free(art);
    st->builds_dir = sn_strdupf("%s/builds", state_dir);
    if (mkdir(state_dir, 0755) != 0 && errno != EEXIST) {
        sn_error(S_ROLE, "cannot create state dir path=%s: %s", state_dir, strerror(errno));
        return SN_ERROR;
    }
    if (mkdir(st->builds_dir, 0711) != 0 && errno != EEXIST) {
        sn_error(S_ROLE, "cannot create builds dir path=%s: %s", st->builds_dir, strerror(errno));
        return SN_ERROR;
    }
    st->git = sandbox_find_program("git");
    if (!st->store || !st->git) {
        sn_error(S_ROLE, "%s", !st->git ? "git not found" : "artifact store unavailable");
        return SN_ERROR;
    }
    /* The branches to watch: every environment's branch of every local project. */
    for (size_t p = 0; p < st->cfg->project_count; p++) {
        const sn_project_config_t *proj = &st->cfg->projects[p];
        if (!proj->repo || (proj->source_type && strcmp(proj->source_type, "local") != 0))
            continue;
        for (size_t e = 0; e < proj->environment_count; e++) {
            const char *branch = proj->environments[e].branch;
            if (!branch || !*branch)
                continue;
            char *ref = s_full_ref(branch);
            bool dup = false;
            for (size_t w = 0; w < st->watch_count; w++)
                dup |= st->watches[w].project == proj && strcmp(st->watches[w].ref, ref) == 0;
            if (dup) {
                free(ref);
                continue;
            }
            st->watches = sn_realloc(st->watches, (st->watch_count + 1) * sizeof *st->watches);
            st->watches[st->watch_count++] = (s_watch_t){.project = proj, .ref = ref};
        }
    }
    if (bv_github_new(ctx, st->store, &st->github) != SN_OK)
        return SN_ERROR;
    if (pthread_create(&st->poller, NULL, s_poll_thread, st) != 0) {
        sn_error(S_ROLE, "cannot start the poller thread");
        return SN_ERROR;
    }
    st->has_poller = true;
    sn_info(S_ROLE, "ready watches=%zu builds=%s", st->watch_count, st->builds_dir);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_bv_t *st = state;
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    st->quit = true;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    if (st->has_poller)
        pthread_join(st->poller, NULL);
    bv_github_destroy(&st->github);
    while (st->obs) {
        s_obs_t *o = st->obs;
        st->obs = o->next;
        free(o->project);
        free(o->ref);
        free(o->sha);
        free(o);
    }
    /* Calls were all answered (shutdown) before destroy, so no pending entry is left. */
    SN_ASSERT(!st->pending);
    for (size_t w = 0; w < st->watch_count; w++)
        free(st->watches[w].ref);
    free(st->watches);
    sn_artifact_destroy(&st->store);
    free(st->builds_dir);
    free(st->git);
    pthread_cond_destroy(&st->cv);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* ---- requests ------------------------------------------------------------------------ */

static void s_ack(sn_ctx_t *ctx, sn_request_t *req, const char *id)
{
    Sentinel__V1__Ack *ack = sn_request_alloc(req, sizeof *ack);
    sentinel__v1__ack__init(ack);
    ack->id = sn_request_strdup(req, id);
    sn_envelope_t reply;
    sentinel__v1__envelope__init(&reply);
    reply.type = "source.accepted";
    reply.body_case = SENTINEL__V1__ENVELOPE__BODY_ACK;
    reply.ack = ack;
    sn_request_reply(ctx, req, &reply);
}

static void s_on_push(sn_ctx_t *ctx, s_bv_t *st, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__TriggerRequest *t =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_TRIGGER ? env->trigger : NULL;
    const sn_project_config_t *proj =
        t && t->project ? sn_config_project(st->cfg, t->project) : NULL;
    if (!t || !proj || !t->ref || !s_name_is_safe(t->ref) || !s_sha_is_valid(t->sha)) {
        sn_warn(S_ROLE, "push refused principal=%s reason=%s", sn_request_principal(req),
                !t      ? "no trigger body"
                : !proj ? "unknown project"
                        : "malformed ref or sha");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    char *ref = s_full_ref(t->ref);
    if (!s_project_uses_ref(proj, ref)) {
        sn_info(S_ROLE, "push ignored project=%s ref=%s reason=no environment deploys it",
                proj->name, ref);
        s_ack(ctx, req, "ignored");
    } else {
        s_trigger(ctx, st, proj->name, ref, t->sha, "push", req);
    }
    free(ref);
}

static void s_on_build(sn_ctx_t *ctx, s_bv_t *st, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__BuildRequest *b =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_BUILD_REQUEST ? env->build_request : NULL;
    const char *job_id = sn_envelope_label(env, "job_id");
    const char *why = NULL;
    if (!b)
        why = "no build_request body";
    else if (!b->run_id || !s_name_is_safe(b->run_id) || strchr(b->run_id, '/'))
        why = "malformed run id";
    else if (!b->project || !sn_config_project(st->cfg, b->project))
        why = "unknown project";
    else if (!s_sha_is_valid(b->sha))
        why = "malformed sha";
    else if (job_id && !sn_ledger_id_is_valid(job_id))
        why = "malformed job id";
    if (why) {
        sn_warn(S_ROLE, "build refused principal=%s reason=%s", sn_request_principal(req), why);
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_build_job, st);
}

static void s_on_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    s_bv_t *st = state;
    if (strcmp(sn_request_service(req), "source.push") == 0)
        s_on_push(ctx, st, req);
    else if (strcmp(sn_request_service(req), "build.local") == 0)
        s_on_build(ctx, st, req);
    else
        sn_request_nak(ctx, req, "no-such-service");
}

/* ---- sources: push and polling ---------------------------------------------------- */

static void s_on_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    s_bv_t *st = state;
    if (st->github)
        bv_github_tick(st->github, ctx, is_leader);
    pthread_mutex_lock(&st->mu);
    if (st->is_leader != is_leader) {
        st->is_leader = is_leader;
        pthread_cond_broadcast(&st->cv);
    }
    s_obs_t *list = st->obs;
    st->obs = NULL;
    pthread_mutex_unlock(&st->mu);
    /* Oldest first. */
    s_obs_t *rev = NULL;
    while (list) {
        s_obs_t *o = list;
        list = o->next;
        o->next = rev;
        rev = o;
    }
    while (rev) {
        s_obs_t *o = rev;
        rev = o->next;
        if (is_leader)
            s_trigger(ctx, st, o->project, o->ref, o->sha, "poll", NULL);
        else
            s_forget(st, o->project, o->ref);
        free(o->project);
        free(o->ref);
        free(o->sha);
        free(o);
    }
}

static void s_pending_free(s_pending_t *p)
{
    free(p->project);
    free(p->ref);
    free(p->sha);
    free(p->old);
    free(p->trigger);
    free(p);
}

static void s_trigger_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                           const char *nak_reason)
{
    s_pending_t *p = arg;
    s_bv_t *st = p->st;
    for (s_pending_t **pp = &st->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    bool ok = reply && (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN_REF ||
                        reply->body_case == SENTINEL__V1__ENVELOPE__BODY_ACK);
    if (ok) {
        const char *run_id = reply->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN_REF
                                 ? reply->run_ref->run_id
                                 : reply->ack->id;
        sn_info(S_ROLE, "run triggered project=%s ref=%s sha=%s trigger=%s run=%s", p->project,
                p->ref, p->sha, p->trigger, run_id ? run_id : "");
        if (p->req)
            s_ack(ctx, p->req, run_id && *run_id ? run_id : "triggered");
    } else {
        const char *why = nak_reason ? nak_reason : "unexpected reply";
        sn_warn(S_ROLE, "run.trigger failed project=%s ref=%s sha=%s reason=%s: will retry",
                p->project, p->ref, p->sha, why);
        /* Give the commit back, so that the next push or poll tries again. */
        char *key = sn_strdupf("source:%s:%s", p->project, p->ref);
        const char *keys[] = {key};
        const char *args[] = {p->sha, p->old};
        redisReply *r = NULL;
        if (sn_redis_fcall(st->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                           "sentinel_source_revert", 1, keys, 2, args, NULL) != SN_OK)
            sn_warn(S_ROLE, "cannot revert source key=%s", key);
        if (r)
            freeReplyObject(r);
        free(key);
        s_forget(st, p->project, p->ref);
        if (p->req)
            sn_request_nak(ctx, p->req,
                           nak_reason && strcmp(nak_reason, "invalid") != 0 &&
                                   strcmp(nak_reason, "shutdown") != 0
                               ? nak_reason
                               : "overloaded");
    }
    s_pending_free(p);
}

/* The one path of a new commit: dedupe, claim, call run.trigger. Loop thread. */
static void s_trigger(sn_ctx_t *ctx, s_bv_t *st, const char *project, const char *ref,
                      const char *sha, const char *trigger, sn_request_t *req)
{
    for (s_pending_t *p = st->pending; p; p = p->next)
        if (strcmp(p->project, project) == 0 && strcmp(p->ref, ref) == 0 &&
            strcmp(p->sha, sha) == 0) {
            if (req)
                s_ack(ctx, req, "in-progress");
            return;
        }
    char *key = sn_strdupf("source:%s:%s", project, ref);
    const char *keys[] = {key};
    const char *args[] = {sha};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(st->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                                "sentinel_source_claim", 1, keys, 1, args, NULL);
    free(key);
    bool is_claimed = false, is_dup = false;
    char *old = NULL;
    if (rc == SN_OK && r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING) {
        is_claimed = r->element[0]->integer == 1;
        is_dup = !is_claimed;
        old = sn_strdup(r->element[1]->str);
    }
    if (r)
        freeReplyObject(r);
    if (is_dup) {
        sn_debug(S_ROLE, "commit already seen project=%s ref=%s sha=%s", project, ref, sha);
        if (req)
            s_ack(ctx, req, "duplicate");
        free(old);
        return;
    }
    if (!is_claimed) {
        sn_warn(S_ROLE, "cannot record commit project=%s ref=%s sha=%s: redis unavailable", project,
                ref, sha);
        s_forget(st, project, ref);
        if (req)
            sn_request_nak(ctx, req, "overloaded");
        free(old);
        return;
    }
    sn_info(S_ROLE, "new commit project=%s ref=%s sha=%s trigger=%s", project, ref, sha, trigger);
    s_pending_t *p = sn_calloc(1, sizeof *p);
    *p = (s_pending_t){
        st,  sn_strdup(project), sn_strdup(ref), sn_strdup(sha), old, sn_strdup(trigger),
        req, st->pending};
    st->pending = p;
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    t.project = p->project;
    t.ref = p->ref;
    t.sha = p->sha;
    t.trigger = p->trigger;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "run.trigger", id);
    char *subject = sn_strdupf("%s/%s", project, ref);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &t;
    sn_ctx_call(ctx, "run.trigger", &env, S_TRIGGER_DEADLINE_MS, 1, s_trigger_done, p);
    free(subject);
}

/* Makes the poller report @ref of @project again on its next round. */
static void s_forget(s_bv_t *st, const char *project, const char *ref)
{
    pthread_mutex_lock(&st->mu);
    for (size_t w = 0; w < st->watch_count; w++)
        if (strcmp(st->watches[w].project->name, project) == 0 &&
            strcmp(st->watches[w].ref, ref) == 0)
            st->watches[w].last[0] = '\0';
    pthread_mutex_unlock(&st->mu);
}

/* One project's heads: `git for-each-ref` and a report for every watched ref that moved. */
static void s_poll_project(s_bv_t *st, const sn_project_config_t *proj)
{
    char *argv[] = {st->git, "-C", proj->repo, "for-each-ref", "--format=%(objectname) %(refname)",
                    S_HEADS, NULL};
    sandbox_opts_t o = {
        .out_fd = -1, .capture_max = S_GIT_OUTPUT_MAX, .timeout_ms = S_GIT_TIMEOUT_MS};
    sandbox_result_t res;
    if (sandbox_run(argv, &o, &res) != SN_OK)
        return;
    if (res.end != SANDBOX_EXITED || res.code != 0) {
        char why[64];
        sn_warn(S_ROLE, "polling failed project=%s repo=%s git %s", proj->name, proj->repo,
                sandbox_describe(&res, why, sizeof why));
        sandbox_result_fini(&res);
        return;
    }
    for (char *line = res.output, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = '\0';
        const char *sha = line, *ref = sp + 1;
        if (!s_sha_is_valid(sha))
            continue;
        pthread_mutex_lock(&st->mu);
        for (size_t w = 0; w < st->watch_count; w++) {
            s_watch_t *wa = &st->watches[w];
            if (wa->project != proj || strcmp(wa->ref, ref) != 0 || strcmp(wa->last, sha) == 0)
                continue;
            sn_strlcpy(wa->last, sha, sizeof wa->last);
            s_obs_t *ob = sn_calloc(1, sizeof *ob);
            *ob = (s_obs_t){sn_strdup(proj->name), sn_strdup(ref), sn_strdup(sha), st->obs};
            st->obs = ob;
        }
        pthread_mutex_unlock(&st->mu);
    }
    sandbox_result_fini(&res);
}

static void *s_poll_thread(void *arg)
{
    s_bv_t *st = arg;
    size_t n = st->cfg->project_count;
    int64_t *due = sn_calloc(n ? n : 1, sizeof *due);
    bool was_leader = false;
    pthread_mutex_lock(&st->mu);
    while (!st->quit) {
        bool is_leader = st->is_leader;
        if (is_leader && !was_leader) {
            /* A new term: report every head once; Redis says what is new. */
            for (size_t w = 0; w < st->watch_count; w++)
                st->watches[w].last[0] = '\0';
            for (size_t p = 0; p < n; p++)
                due[p] = 0;
        }
        was_leader = is_leader;
        if (is_leader) {
            for (size_t p = 0; p < n && !st->quit; p++) {
                const sn_project_config_t *proj = &st->cfg->projects[p];
                int64_t now = sn_mono_ms();
                if (proj->poll_interval_ms <= 0 || now < due[p])
                    continue;
                bool watched = false;
                for (size_t w = 0; w < st->watch_count; w++)
                    watched |= st->watches[w].project == proj;
                if (!watched)
                    continue;
                due[p] = now + proj->poll_interval_ms;
                pthread_mutex_unlock(&st->mu);
                s_poll_project(st, proj);
                pthread_mutex_lock(&st->mu);
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += S_POLL_WAKE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!st->quit)
            pthread_cond_timedwait(&st->cv, &st->mu, &ts);
    }
    pthread_mutex_unlock(&st->mu);
    free(due);
    return NULL;
}

/* ---- builds ------------------------------------------------------------------------- */

/* Renews the job's lease when due; false when the build must stop. */
static bool s_progress(void *arg)
{
    s_job_t *j = arg;
    if (sn_ctx_is_stopping(j->ctx))
        return false;
    if (!j->job_id || sn_mono_ms() < j->next_renew_ms)
        return true;
    sn_rc_t rc = sn_ledger_renew(sn_ctx_ledger(j->ctx), j->job_id, j->epoch, 0, NULL);
    if (rc == SN_DECLINED || rc == SN_ERROR) {
        sn_warn(S_ROLE, "lease lost job=%s epoch=%llu: stopping the build", j->job_id,
                (unsigned long long)j->epoch);
        j->is_lease_lost = true;
        return false;
    }
    /* SN_AGAIN: Redis blinked; the lease still runs, try again soon. */
    j->next_renew_ms = sn_mono_ms() + (rc == SN_OK ? j->lease_ms / 3 : 200);
    return true;
}

typedef struct {
    bool ok;
    bool is_transient;
    char reason[256];
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    uint64_t bytes;
} s_outcome_t;

static void s_fail(s_outcome_t *out, bool is_transient, const char *fmt, ...) SN_PRINTF(3, 4);

static void s_fail(s_outcome_t *out, bool is_transient, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
    out->ok = false;
    out->is_transient = is_transient;
}

/* The step environment: the declared variables and secrets, nothing of ours. */
static char **s_step_env(const sn_project_config_t *proj, const char *work,
                         const Sentinel__V1__BuildRequest *b, s_outcome_t *out)
{
    size_t n = 0;
    for (char **e = proj->build_env; e && *e; e++)
        n++;
    for (char **e = proj->build_secrets; e && *e; e++)
        n++;
    char **env = sn_calloc(n + 8, sizeof *env);
    size_t k = 0;
    env[k++] = sn_strdup("PATH=/usr/local/bin:/usr/bin:/bin");
    env[k++] = sn_strdupf("HOME=%s", work);
    env[k++] = sn_strdup("LANG=C.UTF-8");
    env[k++] = sn_strdupf("SENTINEL_COMMIT=%s", b->sha);
    env[k++] = sn_strdupf("SENTINEL_REF=%s", b->ref ? b->ref : "");
    env[k++] = sn_strdupf("SENTINEL_PROJECT=%s", b->project);
    for (char **e = proj->build_env; e && *e; e++) {
        if (!strchr(*e, '=') || **e == '=') {
            sn_warn(S_ROLE, "build_env entry without NAME= skipped project=%s", proj->name);
            continue;
        }
        env[k++] = sn_strdup(*e);
    }
    /* Secrets come from this process's environment (the secret store resolves them into
     * it); each value is registered for redaction from every log line. */
    for (char **e = proj->build_secrets; e && *e; e++) {
        const char *v = getenv(*e);
        if (!v) {
            s_fail(out, false, "secret %s is not available", *e);
            break;
        }
        if (strlen(v) >= 4)
            sn_log_add_secret(v);
        env[k++] = sn_strdupf("%s=%s", *e, v);
    }
    env[k] = NULL;
    return env;
}

static void s_env_free(char **env)
{
    for (char **e = env; e && *e; e++)
        free(*e);
    free(env);
}

static bool s_output_is_safe(const char *rel)
{
    if (!rel || !*rel || *rel == '/')
        return false;
    for (const char *p = rel; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += n;
        while (*p == '/')
            p++;
    }
    return true;
}

/* The build itself, everything after the claim. */
static void s_build(s_bv_t *st, s_job_t *job, const Sentinel__V1__BuildRequest *b, const char *work,
                    int log_fd, s_outcome_t *out)
{
    const sn_project_config_t *proj = sn_config_project(st->cfg, b->project);
    char why[64];
    if (sn_artifact_rmtree(work) != SN_OK || mkdir(work, 0700) != 0) {
        s_fail(out, true, "cannot prepare the work dir");
        return;
    }
    if (bv_github_builds_artifact(proj)) {
        /* GitHub built and tested it: deploy exactly the verified run's artifact. */
        bv_github_outcome_t go;
        if (!st->github) {
            s_fail(out, false, "GitHub mode is not running");
            return;
        }
        bv_github_fetch(st->github, b, work, log_fd, s_progress, job, &go);
        out->ok = go.ok;
        out->is_transient = go.is_transient;
        out->bytes = go.bytes;
        sn_strlcpy(out->sha, go.sha, sizeof out->sha);
        sn_strlcpy(out->reason, go.reason, sizeof out->reason);
        return;
    }
    /* Clone and checkout run as Sentinel (reading the repository), no shell. */
    char *clone[] = {st->git, "clone",    "--no-hardlinks", "--quiet",
                     "--",    proj->repo, (char *)work,     NULL};
    sandbox_opts_t go = {.out_fd = log_fd,
                         .timeout_ms = S_CLONE_TIMEOUT_MS,
                         .progress = s_progress,
                         .progress_arg = job,
                         .progress_ms = 200};
    sandbox_result_t res;
    if (sandbox_run(clone, &go, &res) != SN_OK) {
        s_fail(out, true, "cannot run git");
        return;
    }
    if (res.end != SANDBOX_EXITED || res.code != 0) {
        bool exists = access(proj->repo, R_OK) == 0;
        if (res.end == SANDBOX_ABORTED)
            s_fail(out, true, "aborted");
        else if (!exists)
            s_fail(out, false, "repository %s not found", proj->repo);
        else
            s_fail(out, true, "clone failed: git %s", sandbox_describe(&res, why, sizeof why));
        return;
    }
    char *checkout[] = {st->git,    "-C",      (char *)work, "-c",   "advice.detachedHead=false",
                        "checkout", "--quiet", "--detach",   b->sha, NULL};
    if (sandbox_run(checkout, &go, &res) != SN_OK) {
        s_fail(out, true, "cannot run git");
        return;
    }
    if (res.end != SANDBOX_EXITED || res.code != 0) {
        if (res.end == SANDBOX_ABORTED)
            s_fail(out, true, "aborted");
        else
            s_fail(out, false, "commit %s not found in %s", b->sha, proj->repo);
        return;
    }
    const char *user = proj->build_user && *proj->build_user ? proj->build_user : "nobody";
    if (geteuid() == 0) {
        uid_t uid;
        gid_t gid;
        if (sandbox_lookup_user(user, &uid, &gid) != SN_OK) {
            s_fail(out, false, "build user %s does not exist", user);
            return;
        }
        if (sandbox_chown_tree(work, uid, gid) != SN_OK) {
            s_fail(out, true, "cannot hand the work dir to %s", user);
            return;
        }
    }
    char **env = s_step_env(proj, work, b, out);
    if (out->reason[0]) {
        s_env_free(env);
        return;
    }
    int timeout_s = proj->build_timeout_s > 0 ? proj->build_timeout_s : S_DEFAULT_TIMEOUT_S;
    int64_t deadline = sn_mono_ms() + (int64_t)timeout_s * 1000;
    size_t n_steps = 0;
    for (char **s = proj->build_steps; s && *s; s++)
        n_steps++;
    for (size_t i = 0; i < n_steps; i++) {
        dprintf(log_fd, "==> step %zu/%zu: %s\n", i + 1, n_steps, proj->build_steps[i]);
        char *argv[] = {"/bin/sh", "-c", proj->build_steps[i], NULL};
        sandbox_opts_t so = {
            .cwd = work,
            .envp = env,
            .user = user,
            .rlimit_as_mb = proj->build_memory_mb > 0 ? proj->build_memory_mb : S_DEFAULT_MEMORY_MB,
            .rlimit_nproc = proj->build_max_procs > 0 ? proj->build_max_procs : S_DEFAULT_MAX_PROCS,
            .rlimit_fsize_mb = S_FSIZE_MB,
            .is_core_disabled = true,
            .out_fd = log_fd,
            .timeout_ms = deadline - sn_mono_ms() > 0 ? deadline - sn_mono_ms() : 1,
            .progress = s_progress,
            .progress_arg = job,
            .progress_ms = 200,
        };
        if (sandbox_run(argv, &so, &res) != SN_OK) {
            s_fail(out, true, "step %zu could not be started", i + 1);
            break;
        }
        dprintf(log_fd, "==> step %zu/%zu %s after %lld ms\n", i + 1, n_steps,
                sandbox_describe(&res, why, sizeof why), (long long)res.duration_ms);
        if (res.end == SANDBOX_TIMED_OUT)
            s_fail(out, false, "timed out after %d s", timeout_s);
        else if (res.end == SANDBOX_ABORTED)
            s_fail(out, true, "aborted");
        else if (res.end == SANDBOX_SIGNALED)
            s_fail(out, false, "step %zu killed by signal %d", i + 1, res.code);
        else if (res.code != 0)
            s_fail(out, false, "step %zu exited %d", i + 1, res.code);
        if (out->reason[0])
            break;
    }
    s_env_free(env);
    if (out->reason[0])
        return;
    const char *rel = proj->build_output && *proj->build_output ? proj->build_output : ".";
    if (!s_output_is_safe(rel)) {
        s_fail(out, false, "build_output %s leaves the checkout", rel);
        return;
    }
    char *dir = sn_strdupf("%s/%s", work, rel);
    char real_work[PATH_MAX], real_dir[PATH_MAX];
    struct stat sb;
    if (lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || !realpath(work, real_work) ||
        !realpath(dir, real_dir) || strncmp(real_dir, real_work, strlen(real_work)) != 0) {
        s_fail(out, false, "build output %s is missing or not a directory", rel);
        free(dir);
        return;
    }
    sn_rc_t rc = sn_artifact_put_dir(st->store, dir, out->sha, &out->bytes);
    free(dir);
    if (rc != SN_OK) {
        s_fail(out, rc == SN_AGAIN, "cannot store the build output");
        return;
    }
    dprintf(log_fd, "==> artifact sha256=%s bytes=%llu\n", out->sha,
            (unsigned long long)out->bytes);
    out->ok = true;
}

static sn_rc_t s_build_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq,
                           sn_envelope_t *reply, const char **nak_reason)
{
    s_bv_t *st = state;
    sn_request_t *req = (sn_request_t *)creq;
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__BuildRequest *b = env->build_request;
    s_job_t job = {.ctx = ctx, .job_id = sn_envelope_label(env, "job_id")};
    s_outcome_t out = {0};
    int64_t t0 = sn_mono_ms();
    bool is_claimed = false;
    if (job.job_id) {
        Sentinel__V1__JobSpec *spec = NULL;
        sn_rc_t rc = sn_ledger_claim(sn_ctx_ledger(ctx), job.job_id, sn_ctx_instance(ctx), 0,
                                     &job.epoch, &spec);
        if (rc != SN_OK) {
            sn_info(S_ROLE, "build not started run=%s job=%s claim=%s", b->run_id, job.job_id,
                    sn_rc_str(rc));
            s_fail(&out, rc == SN_AGAIN, "job %s not claimed (%s)", job.job_id, sn_rc_str(rc));
        } else {
            is_claimed = true;
            job.lease_ms = spec && spec->lease_ms > 0 ? spec->lease_ms : 30000;
            job.next_renew_ms = sn_mono_ms() + job.lease_ms / 3;
        }
        sn_ledger_spec_free(&spec);
    }
    char *work = sn_strdupf("%s/%s", st->builds_dir, b->run_id);
    char *log_path = sn_strdupf("%s/%s.log", st->builds_dir, b->run_id);
    if (!job.job_id || is_claimed) {
        sn_info(S_ROLE, "build started run=%s project=%s sha=%s job=%s", b->run_id, b->project,
                b->sha, job.job_id ? job.job_id : "-");
        int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
        if (log_fd < 0) {
            sn_error(S_ROLE, "cannot open build log path=%s: %s", log_path, strerror(errno));
            s_fail(&out, true, "cannot open the build log");
        } else {
            dprintf(log_fd, "==> sentinel build run=%s project=%s ref=%s sha=%s\n", b->run_id,
                    b->project, b->ref ? b->ref : "", b->sha);
            s_build(st, &job, b, work, log_fd, &out);
            if (!out.ok)
                dprintf(log_fd, "==> build failed: %s\n", out.reason);
            close(log_fd);
        }
        if (sn_artifact_rmtree(work) != SN_OK)
            sn_warn(S_ROLE, "work dir not removed path=%s", work);
    }
    int64_t duration = sn_mono_ms() - t0;
    bool is_stopped = sn_ctx_is_stopping(ctx) && !out.ok && strcmp(out.reason, "aborted") == 0;
    if (job.is_lease_lost || is_stopped) {
        /* Not ours any more (or shutting down): the ledger re-dispatches; no answer. */
        sn_info(S_ROLE, "build abandoned run=%s reason=%s", b->run_id,
                job.is_lease_lost ? "lease lost" : "shutdown");
        free(work);
        free(log_path);
        *nak_reason = "overloaded";
        return SN_AGAIN;
    }
    Sentinel__V1__BuildResult *r = sn_request_alloc(req, sizeof *r);
    sentinel__v1__build_result__init(r);
    r->ok = out.ok;
    r->artifact_sha256 = sn_request_strdup(req, out.ok ? out.sha : "");
    r->artifact_bytes = out.bytes;
    r->log_path = sn_request_strdup(req, log_path);
    r->reason = sn_request_strdup(req, out.reason);
    r->is_transient = out.is_transient;
    r->duration_ms = duration;
    if (out.ok)
        sn_info(S_ROLE, "build succeeded run=%s artifact=%s bytes=%llu duration_ms=%lld", b->run_id,
                out.sha, (unsigned long long)out.bytes, (long long)duration);
    else
        sn_info(S_ROLE, "build failed run=%s reason=\"%s\" transient=%d duration_ms=%lld",
                b->run_id, out.reason, out.is_transient, (long long)duration);
    if (is_claimed) {
        size_t len = sentinel__v1__build_result__get_packed_size(r);
        uint8_t *buf = sn_malloc(len ? len : 1);
        sentinel__v1__build_result__pack(r, buf);
        sn_rc_t rc =
            sn_ledger_complete(sn_ctx_ledger(ctx), job.job_id, job.epoch, out.ok, buf, len);
        free(buf);
        if (rc != SN_OK)
            sn_warn(S_ROLE, "job not completed job=%s epoch=%llu rc=%s", job.job_id,
                    (unsigned long long)job.epoch, sn_rc_str(rc));
    }
    reply->type = "build.result";
    reply->correlation_id = env->correlation_id;
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_BUILD_RESULT;
    reply->build_result = r;
    free(work);
    free(log_path);
    return SN_OK;
}

/* ---- helpers ----------------------------------------------------------------------------- */

static bool s_sha_is_valid(const char *sha)
{
    if (!sha)
        return false;
    size_t n = strlen(sha);
    if (n != 40 && n != 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f')))
            return false;
    return true;
}

/* A ref or id usable in a key, a path and an argv: [A-Za-z0-9._/-], no "..", no
 * leading '-' or '.', at most 200 bytes. */
static bool s_name_is_safe(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 200 || s[0] == '-' || s[0] == '.' || strstr(s, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '/'))
            return false;
    }
    return true;
}

static char *s_full_ref(const char *ref)
{
    return strncmp(ref, "refs/", 5) == 0 ? sn_strdup(ref) : sn_strdupf(S_HEADS "%s", ref);
}

static bool s_project_uses_ref(const sn_project_config_t *p, const char *ref)
{
    if (strncmp(ref, S_HEADS, strlen(S_HEADS)) != 0)
        return false;
    const char *branch = ref + strlen(S_HEADS);
    for (size_t e = 0; e < p->environment_count; e++)
        if (p->environments[e].branch && strcmp(p->environments[e].branch, branch) == 0)
            return true;
    return false;
}

const sn_role_t build_validator_role = {
    .name = S_ROLE,
    .agent = "InfraGuard",
    .summary = "local sources (ref polling, notify push) and sandboxed local builds",
    .services = (const char *const[]){"build.local", "source.push", NULL},
    .leadership = SN_LEADERSHIP_DUTY,
    .credit = 2,
    .tick_ms = 200,
    .init = s_init,
    .on_request = s_on_request,
    .on_tick = s_on_tick,
    .destroy = s_destroy,
};
