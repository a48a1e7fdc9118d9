/* build-validator, GitHub mode (docs/github-in.md).
 *
 * Sources. The gateway records each accepted webhook as `github.<event>` in the journal;
 * this module's thread reads them through the consumer group "build-validator-github"
 * (each event handled by one instance, reclaimed if that instance dies). Webhooks are
 * hints: the leader also polls the workflow runs of every environment's branch every
 * poll_interval_ms (a conditional GET with the ETag: a 304 costs no rate limit, and the
 * cached answer is evaluated again, so a trigger that failed is retried), so a lost
 * delivery never loses a deploy. A completed check_suite on a watched branch makes any
 * instance look up that commit's runs at once.
 *
 * State (Redis, under the namespace): github:wf:<project>:<sha> holds, per workflow name,
 * the newest run seen for that commit ("<run id> <attempt> <status> <conclusion>"; a
 * newer run or attempt replaces an older one, a completed run never goes back to running)
 * — one Redis Function updates it and returns the whole hash, so webhook and poll and
 * several instances agree; github:head:<project>:<branch> is the branch head from the
 * last push. Verdict per environment of that branch: every required workflow (or, with
 * none configured, every workflow seen for the commit, at least one) concluded success
 * -> the commit is claimed with build-validator's own `sentinel_source_claim` on
 * source:<project>:<ref>:<environment> (dedupe on project/ref/sha as in local mode: the
 * same delivery twice, or webhook and poll, give one run) and run.trigger is called with
 * the verifying run ids; github:verified:<project>:<sha> keeps those ids for build.local.
 * A required workflow that concluded anything but success -> build.failed (once per run
 * attempt: github:failed:...), with the failure feedback of service github.feedback when
 * it answers in time. A commit that is not the branch head (a newer push is known) is
 * never triggered.
 *
 * The artifact. build.local of a project with artifact_from github lists the verified
 * run's artifacts by artifact_name, downloads the zip through its short-lived redirect
 * without the token (sn_github_download), checks the zip's sha256 against GitHub's
 * `digest` when there is one, checks the artifact belongs to the commit, unzips it
 * (zip_reader.c) and stores the files as a deterministic tar (sn_artifact_put_dir), so
 * the bytes tested are the bytes deployed. */
#include "build_validator_github.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_github.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#include "zip_reader.h"

#define S_MOD "build-validator"
#define S_LIB "sentinel_github_bv"
#define S_GROUP "build-validator-github"
#define S_REDIS_TIMEOUT_MS 1000
#define S_TRIGGER_DEADLINE_MS 10000
#define S_FEEDBACK_DEADLINE_MS 8000
#define S_STATE_TTL_MS (30LL * 24 * 3600 * 1000)
#define S_MAX_EVENT_AGE_MS (6LL * 3600 * 1000) /* older events only feed state via polling */
#define S_POLL_PER_PAGE 50
#define S_NEXT_WAIT_MS 100
#define S_POLL_BACKOFF_MAX_MS 60000
#define S_MAX_RUNS 16
#define S_FEEDBACK_MAX 2048
#define S_DEFAULT_MAX_ARTIFACT (INT64_C(8) << 30)

/* clang-format off */
static const char s_lua[] =
    "local function s_wf(keys, args)\n"
    "  local cur = redis.call('HGET', keys[1], args[1])\n"
    "  local take = true\n"
    "  if cur then\n"
    "    local id, att, st = string.match(cur, '^(%d+) (%d+) (%S+)')\n"
    "    if id then\n"
    "      local nid, natt = tonumber(args[2]), tonumber(args[3])\n"
    "      id, att = tonumber(id), tonumber(att)\n"
    "      if nid < id or (nid == id and natt < att) then take = false\n"
    "      elseif nid == id and natt == att and st == 'completed' and args[4] ~= 'completed' then\n"
    "        take = false\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if take then\n"
    "    redis.call('HSET', keys[1], args[1], args[2] .. ' ' .. args[3] .. ' ' .. args[4] .. ' ' .. args[5])\n"
    "    redis.call('PEXPIRE', keys[1], args[6])\n"
    "  end\n"
    "  return redis.call('HGETALL', keys[1])\n"
    "end\n"
    "redis.register_function('sentinel_github_wf', s_wf)\n";
/* clang-format on */

/* A branch some environment of a GitHub project deploys from (poller thread). */
typedef struct {
    const sn_project_config_t *project;
    char *branch;
    int64_t due_ms;
    int64_t backoff_ms;
    bool is_failing;
} s_watch_t;

typedef enum { S_TRIGGER, S_FAILED } s_kind_t;

/* A decision of the thread for the loop. */
typedef struct s_intent {
    s_kind_t kind;
    struct bv_github *gh;
    char *project, *environment, *ref, *sha, *old, *repo, *branch, *workflow, *conclusion;
    char *source; /* "webhook" | "poll" */
    uint64_t run_ids[S_MAX_RUNS];
    size_t n_run_ids;
    uint32_t attempt;
    struct s_intent *next;
} s_intent_t;

/* One workflow's newest run on a commit. */
typedef struct {
    char name[128];
    uint64_t run_id;
    uint32_t attempt;
    char status[32];
    char conclusion[32];
} s_wf_t;

struct bv_github {
    sn_ctx_t *ctx;
    const sn_config_t *cfg;
    sn_redis_t *redis;
    sn_artifact_t *store;
    sn_github_t *api;
    sn_journal_reader_t *reader;
    s_watch_t *watches;
    size_t watch_count;
    pthread_t thread;
    bool has_thread;
    pthread_mutex_t mu;
    bool quit;            /* mu */
    bool is_leader;       /* mu */
    s_intent_t *intents;  /* mu, newest first */
    s_intent_t *inflight; /* loop thread */
};

static void *s_thread(void *arg);
static bool s_should_stop(void *arg);
static void s_intent_free(s_intent_t *in);
static bool s_sha_ok(const char *sha);

/* ---- lifecycle ---------------------------------------------------------------------------- */

bool bv_github_builds_artifact(const sn_project_config_t *proj)
{
    return proj && proj->source_type && strcmp(proj->source_type, "github") == 0 &&
           (!proj->artifact_from || strcmp(proj->artifact_from, "github") == 0);
}

static bool s_is_github(const sn_project_config_t *p)
{
    return p->source_type && strcmp(p->source_type, "github") == 0 && p->github_repo;
}

sn_rc_t bv_github_new(sn_ctx_t *ctx, sn_artifact_t *store, bv_github_t **out)
{
    *out = NULL;
    const sn_config_t *cfg = sn_ctx_config(ctx);
    size_t n = 0;
    for (size_t p = 0; p < cfg->project_count; p++)
        n += s_is_github(&cfg->projects[p]);
    if (n == 0)
        return SN_OK;
    bv_github_t *self = sn_calloc(1, sizeof *self);
    self->ctx = ctx;
    self->cfg = cfg;
    self->redis = sn_ctx_redis(ctx);
    self->store = store;
    pthread_mutex_init(&self->mu, NULL);
    sn_redis_add_library(self->redis, S_LIB, s_lua);
    sn_github_opts_t go = {.should_stop = s_should_stop, .should_stop_arg = self};
    self->api = sn_github_new(&cfg->github, &go);
    if (!self->api) {
        sn_error(S_MOD, "GitHub projects need a usable github: section (api_base and a token "
                        "or an App)");
        bv_github_destroy(&self);
        return SN_ERROR;
    }
    for (size_t p = 0; p < cfg->project_count; p++) {
        const sn_project_config_t *proj = &cfg->projects[p];
        if (!s_is_github(proj))
            continue;
        for (size_t e = 0; e < proj->environment_count; e++) {
            const char *branch = proj->environments[e].branch;
            bool dup = !branch || !*branch;
            for (size_t w = 0; w < self->watch_count && !dup; w++)
                dup = self->watches[w].project == proj &&
                      strcmp(self->watches[w].branch, branch) == 0;
            if (dup)
                continue;
            self->watches =
                sn_realloc(self->watches, (self->watch_count + 1) * sizeof *self->watches);
            self->watches[self->watch_count++] =
                (s_watch_t){.project = proj, .branch = sn_strdup(branch)};
        }
    }
    sn_redis_opts_t ro = {
        .unix_path = cfg->redis.unix_path,
        .host = cfg->redis.host,
        .port = cfg->redis.port,
        .namespace_ = cfg->namespace_,
        .timeout_ms = cfg->redis.timeout_ms,
        .name = "github",
    };
    /* "0": a group created now starts with the github events already recorded (the
     * gateway may have accepted deliveries before build-validator first ran); events
     * older than S_MAX_EVENT_AGE_MS are skipped, polling covers them. */
    sn_journal_reader_opts_t jo = {
        .redis = &ro,
        .cursor = "0",
        .group = S_GROUP,
        .consumer = sn_ctx_instance(ctx),
    };
    self->reader = sn_journal_reader_new(&jo);
    if (!self->reader || pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        sn_error(S_MOD, "cannot start the GitHub reader");
        bv_github_destroy(&self);
        return SN_ERROR;
    }
    self->has_thread = true;
    sn_info(S_MOD, "github mode projects=%zu branches=%zu", n, self->watch_count);
    *out = self;
    return SN_OK;
}

void bv_github_destroy(bv_github_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    bv_github_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->quit = true;
    pthread_mutex_unlock(&self->mu);
    if (self->has_thread)
        pthread_join(self->thread, NULL);
    sn_journal_reader_destroy(&self->reader);
    sn_github_destroy(&self->api);
    while (self->intents) {
        s_intent_t *in = self->intents;
        self->intents = in->next;
        s_intent_free(in);
    }
    /* Calls in flight were all answered before destroy (the runtime's shutdown). */
    while (self->inflight) {
        s_intent_t *in = self->inflight;
        self->inflight = in->next;
        s_intent_free(in);
    }
    for (size_t w = 0; w < self->watch_count; w++)
        free(self->watches[w].branch);
    free(self->watches);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

static bool s_should_stop(void *arg)
{
    bv_github_t *self = arg;
    pthread_mutex_lock(&self->mu);
    bool quit = self->quit;
    pthread_mutex_unlock(&self->mu);
    return quit || sn_ctx_is_stopping(self->ctx);
}

/* ---- the loop side: calls ---------------------------------------------------------------- */

static void s_inflight_remove(bv_github_t *self, s_intent_t *in)
{
    for (s_intent_t **pp = &self->inflight; *pp; pp = &(*pp)->next)
        if (*pp == in) {
            *pp = in->next;
            return;
        }
}

static void s_trigger_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                           const char *nak_reason)
{
    s_intent_t *in = arg;
    bv_github_t *self = in->gh;
    s_inflight_remove(self, in);
    bool ok = reply && (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN_REF ||
                        reply->body_case == SENTINEL__V1__ENVELOPE__BODY_ACK);
    if (ok) {
        const char *run_id = reply->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN_REF
                                 ? reply->run_ref->run_id
                                 : reply->ack->id;
        sn_info(S_MOD,
                "run triggered project=%s env=%s ref=%s sha=%s trigger=github source=%s "
                "workflow_run=%" PRIu64 " run=%s",
                in->project, in->environment, in->ref, in->sha, in->source, in->run_ids[0],
                run_id ? run_id : "");
    } else {
        sn_warn(S_MOD,
                "run.trigger failed project=%s env=%s sha=%s reason=%s: retried by the "
                "next poll",
                in->project, in->environment, in->sha,
                nak_reason ? nak_reason : "unexpected reply");
        char *key = sn_strdupf("source:%s:%s:%s", in->project, in->ref, in->environment);
        const char *keys[] = {key};
        const char *args[] = {in->sha, in->old ? in->old : ""};
        redisReply *r = NULL;
        if (sn_redis_fcall(self->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                           "sentinel_source_revert", 1, keys, 2, args, NULL) != SN_OK)
            sn_warn(S_MOD, "cannot revert source key=%s", key);
        if (r)
            freeReplyObject(r);
        free(key);
    }
    s_intent_free(in);
}

static void s_call_trigger(bv_github_t *self, sn_ctx_t *ctx, s_intent_t *in)
{
    Sentinel__V1__TriggerRequest t = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    t.project = in->project;
    t.environment = in->environment;
    t.ref = in->ref;
    t.sha = in->sha;
    t.trigger = "github";
    t.n_workflow_run_ids = in->n_run_ids;
    t.workflow_run_ids = in->run_ids;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "run.trigger", id);
    char *subject = sn_strdupf("%s/%s", in->project, in->environment);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &t;
    in->next = self->inflight;
    self->inflight = in;
    sn_ctx_call(ctx, "run.trigger", &env, S_TRIGGER_DEADLINE_MS, 1, s_trigger_done, in);
    free(subject);
}

/* The feedback's text from github-workflow's GithubResult: each failed job, its failed
 * step and the end of its log; else (another body) the reply as JSON. Truncated; caller
 * frees. NULL when there is nothing to say. */
static char *s_feedback_text(const sn_envelope_t *reply)
{
    if (!reply)
        return NULL;
    char *text = NULL;
    if (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT) {
        const Sentinel__V1__GithubResult *r = reply->github_result;
        if (!r->ok)
            return r->reason && *r->reason ? sn_strdupf("no feedback (%s)", r->reason) : NULL;
        size_t cap = S_FEEDBACK_MAX + 1, used = 0;
        text = sn_calloc(1, cap);
        for (size_t i = 0; i < r->n_jobs && used + 1 < cap; i++) {
            const Sentinel__V1__GithubJobFeedback *j = r->jobs[i];
            const char *tail = j->log_tail ? j->log_tail : "";
            size_t tl = strlen(tail);
            if (tl > 512)
                tail += tl - 512; /* the end is what explains the failure */
            int n = snprintf(text + used, cap - used, "%sjob %s %s%s%s%s%s", i ? "; " : "",
                             j->name ? j->name : "?", j->conclusion ? j->conclusion : "?",
                             j->failed_step && *j->failed_step ? " at step " : "",
                             j->failed_step ? j->failed_step : "", *tail ? ": " : "", tail);
            if (n < 0)
                break;
            used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
        }
        if (!*text) {
            free(text);
            return NULL;
        }
        return text;
    }
    if (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_NOTE && reply->note->text)
        text = sn_strdup(reply->note->text);
    else
        text = sn_json_dumps_message(&reply->base, JSON_COMPACT);
    if (text && strlen(text) > S_FEEDBACK_MAX)
        text[S_FEEDBACK_MAX] = '\0';
    return text;
}

static void s_feedback_done(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                            const char *nak_reason)
{
    s_intent_t *in = arg;
    bv_github_t *self = in->gh;
    s_inflight_remove(self, in);
    char *feedback = s_feedback_text(reply);
    char *reason = sn_strdupf("workflow %s concluded %s on %s (run %" PRIu64 " attempt %u)%s%s",
                              in->workflow, in->conclusion, in->sha, in->run_ids[0], in->attempt,
                              feedback ? ": " : "", feedback ? feedback : "");
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.project = in->project;
    run.environment = in->environment;
    run.ref = in->ref;
    run.sha = in->sha;
    run.state = SENTINEL__V1__RUN_STATE__RUN_FAILED;
    run.trigger = "github";
    run.reason = reason;
    run.created_unix_ms = sn_wall_ms();
    run.updated_unix_ms = run.created_unix_ms;
    run.n_workflow_run_ids = in->n_run_ids;
    run.workflow_run_ids = in->run_ids;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "build.failed", id);
    char *subject = sn_strdupf("%s/%s", in->project, in->environment);
    char run_id[24];
    snprintf(run_id, sizeof run_id, "%" PRIu64, in->run_ids[0]);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
    env.run = &run;
    sn_envelope_add_label(&env, "source", "github");
    sn_envelope_add_label(&env, "workflow", in->workflow);
    sn_envelope_add_label(&env, "workflow_run_id", run_id);
    sn_envelope_add_label(&env, "conclusion", in->conclusion);
    sn_envelope_add_label(&env, "feedback", feedback ? "yes" : nak_reason ? nak_reason : "none");
    sn_journal_result_t res;
    sn_rc_t rc = sn_journal_commit(sn_ctx_journal(ctx), NULL, NULL, 0, &env, &res);
    if (rc == SN_OK)
        sn_info(S_MOD,
                "build.failed project=%s env=%s sha=%s workflow=%s conclusion=%s "
                "workflow_run=%" PRIu64 " feedback=%s",
                in->project, in->environment, in->sha, in->workflow, in->conclusion, in->run_ids[0],
                feedback     ? "yes"
                : nak_reason ? nak_reason
                             : "none");
    else
        sn_warn(S_MOD, "build.failed not journaled project=%s sha=%s: %s", in->project, in->sha,
                sn_rc_str(rc));
    sn_envelope_fini_labels(&env);
    free(subject);
    free(reason);
    free(feedback);
    s_intent_free(in);
}

static void s_call_feedback(bv_github_t *self, sn_ctx_t *ctx, s_intent_t *in)
{
    Sentinel__V1__GithubRequest rq = SENTINEL__V1__GITHUB_REQUEST__INIT;
    rq.project = in->project;
    rq.workflow_run_id = in->run_ids[0];
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "github.feedback", id);
    char *subject = sn_strdupf("%s/%s", in->project, in->environment);
    env.subject = subject;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST;
    env.github_request = &rq;
    in->next = self->inflight;
    self->inflight = in;
    sn_ctx_call(ctx, "github.feedback", &env, S_FEEDBACK_DEADLINE_MS, 1, s_feedback_done, in);
    free(subject);
}

void bv_github_tick(bv_github_t *self, sn_ctx_t *ctx, bool is_leader)
{
    pthread_mutex_lock(&self->mu);
    self->is_leader = is_leader;
    s_intent_t *list = self->intents;
    self->intents = NULL;
    pthread_mutex_unlock(&self->mu);
    s_intent_t *rev = NULL; /* oldest first */
    while (list) {
        s_intent_t *in = list;
        list = in->next;
        in->next = rev;
        rev = in;
    }
    while (rev) {
        s_intent_t *in = rev;
        rev = in->next;
        in->next = NULL;
        if (in->kind == S_TRIGGER)
            s_call_trigger(self, ctx, in);
        else
            s_call_feedback(self, ctx, in);
    }
}

/* ---- the thread: observations and verdicts ---------------------------------------------- */

static void s_queue(bv_github_t *self, s_intent_t *in)
{
    in->gh = self;
    pthread_mutex_lock(&self->mu);
    in->next = self->intents;
    self->intents = in;
    pthread_mutex_unlock(&self->mu);
}

/* A Redis command with C-string arguments; the reply (caller frees) or NULL. */
static redisReply *s_cmd(bv_github_t *self, int argc, const char **argv)
{
    redisReply *r = NULL;
    if (sn_redis_cmd(self->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r, argc, argv, NULL) != SN_OK)
        return NULL;
    if (r->type == REDIS_REPLY_ERROR) {
        sn_warn(S_MOD, "redis refused %s: %s", argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static char *s_key(bv_github_t *self, const char *fmt, ...) SN_PRINTF(2, 3);

static char *s_key(bv_github_t *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *rel = NULL;
    if (vasprintf(&rel, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *key = sn_strdupf("%s%s", sn_redis_ns(self->redis), rel);
    free(rel);
    return key;
}

typedef enum { S_PENDING, S_SUCCESS, S_FAIL } s_verdict_t;

static bool s_is_failure(const char *conclusion)
{
    return strcmp(conclusion, "success") != 0 && strcmp(conclusion, "neutral") != 0 &&
           strcmp(conclusion, "skipped") != 0 && strcmp(conclusion, "-") != 0;
}

/* The verdict of environment @e over the newest runs @wfs of a commit. On S_SUCCESS the
 * verifying runs are in @ids; on S_FAIL *failed is the workflow that failed. */
static s_verdict_t s_verdict(const sn_environment_config_t *e, const s_wf_t *wfs, size_t n,
                             uint64_t *ids, size_t *n_ids, const s_wf_t **failed)
{
    *n_ids = 0;
    bool has_required = e->required_workflows && e->required_workflows[0];
    bool is_pending = false;
    if (has_required) {
        for (char **req = e->required_workflows; *req; req++) {
            const s_wf_t *w = NULL;
            for (size_t i = 0; i < n && !w; i++)
                if (strcmp(wfs[i].name, *req) == 0)
                    w = &wfs[i];
            if (!w || strcmp(w->status, "completed") != 0) {
                is_pending = true;
                continue;
            }
            if (strcmp(w->conclusion, "success") != 0) {
                *failed = w;
                return S_FAIL;
            }
            if (*n_ids < S_MAX_RUNS)
                ids[(*n_ids)++] = w->run_id;
        }
        return is_pending ? S_PENDING : S_SUCCESS;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(wfs[i].status, "completed") != 0) {
            is_pending = true;
            continue;
        }
        if (s_is_failure(wfs[i].conclusion)) {
            *failed = &wfs[i];
            return S_FAIL;
        }
        if (strcmp(wfs[i].conclusion, "success") == 0 && *n_ids < S_MAX_RUNS)
            ids[(*n_ids)++] = wfs[i].run_id;
    }
    return is_pending || *n_ids == 0 ? S_PENDING : S_SUCCESS;
}

/* True unless a push told us a different head for the branch. */
static bool s_is_head(bv_github_t *self, const char *project, const char *branch, const char *sha)
{
    char *key = s_key(self, "github:head:%s:%s", project, branch);
    const char *argv[] = {"GET", key};
    redisReply *r = s_cmd(self, 2, argv);
    free(key);
    bool ok = !r || r->type != REDIS_REPLY_STRING || strcmp(r->str, sha) == 0;
    if (r)
        freeReplyObject(r);
    return ok;
}

static void s_decide(bv_github_t *self, const sn_project_config_t *proj,
                     const sn_environment_config_t *e, const char *branch, const char *sha,
                     const s_wf_t *wfs, size_t n, const char *source)
{
    uint64_t ids[S_MAX_RUNS];
    size_t n_ids = 0;
    const s_wf_t *failed = NULL;
    s_verdict_t v = s_verdict(e, wfs, n, ids, &n_ids, &failed);
    if (v == S_PENDING)
        return;
    if (!s_is_head(self, proj->name, branch, sha)) {
        sn_debug(S_MOD, "verdict ignored project=%s sha=%s: not the head of %s", proj->name, sha,
                 branch);
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)S_STATE_TTL_MS);
    s_intent_t *in = sn_calloc(1, sizeof *in);
    in->project = sn_strdup(proj->name);
    in->environment = sn_strdup(e->name);
    in->ref = sn_strdupf("refs/heads/%s", branch);
    in->sha = sn_strdup(sha);
    in->repo = sn_strdup(proj->github_repo);
    in->branch = sn_strdup(branch);
    in->source = sn_strdup(source);
    if (v == S_FAIL) {
        char *key = s_key(self, "github:failed:%s:%s:%" PRIu64 ":%u", proj->name, e->name,
                          failed->run_id, failed->attempt);
        const char *argv[] = {"SET", key, sha, "NX", "PX", ttl};
        redisReply *r = s_cmd(self, 6, argv);
        bool is_new = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        free(key);
        if (!is_new) {
            s_intent_free(in);
            return;
        }
        in->kind = S_FAILED;
        in->workflow = sn_strdup(failed->name);
        in->conclusion = sn_strdup(failed->conclusion);
        in->run_ids[0] = failed->run_id;
        in->n_run_ids = 1;
        in->attempt = failed->attempt;
        sn_info(S_MOD,
                "build verdict failure project=%s env=%s sha=%s workflow=%s conclusion=%s "
                "source=%s",
                proj->name, e->name, sha, failed->name, failed->conclusion, source);
        s_queue(self, in);
        return;
    }
    /* Success: remember the verifying runs for build.local, then claim the commit. */
    char list[S_MAX_RUNS * 21 + 1] = "";
    for (size_t i = 0; i < n_ids; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%" PRIu64, i ? "," : "", ids[i]);
        in->run_ids[i] = ids[i];
    }
    in->n_run_ids = n_ids;
    char *vkey = s_key(self, "github:verified:%s:%s", proj->name, sha);
    const char *vargv[] = {"SET", vkey, list, "PX", ttl};
    redisReply *vr = s_cmd(self, 5, vargv);
    free(vkey);
    if (!vr) {
        s_intent_free(in);
        return; /* Redis away: the next poll evaluates again */
    }
    freeReplyObject(vr);
    char *ckey = sn_strdupf("source:%s:%s:%s", proj->name, in->ref, e->name);
    const char *keys[] = {ckey};
    const char *args[] = {sha};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                                "sentinel_source_claim", 1, keys, 1, args, NULL);
    free(ckey);
    bool is_claimed = false;
    if (rc == SN_OK && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING) {
        is_claimed = r->element[0]->integer == 1;
        in->old = sn_strdup(r->element[1]->str);
    }
    if (r)
        freeReplyObject(r);
    if (!is_claimed) {
        sn_debug(S_MOD, "commit already triggered project=%s env=%s sha=%s", proj->name, e->name,
                 sha);
        s_intent_free(in);
        return;
    }
    in->kind = S_TRIGGER;
    sn_info(S_MOD, "build verdict success project=%s env=%s sha=%s runs=%s source=%s", proj->name,
            e->name, sha, list, source);
    s_queue(self, in);
}

/* One workflow run observed (webhook or poll): record it, then decide for every
 * environment of @proj on @branch. */
static void s_observe(bv_github_t *self, const sn_project_config_t *proj, const char *branch,
                      const char *sha, const char *workflow, uint64_t run_id, uint32_t attempt,
                      const char *status, const char *conclusion, const char *source)
{
    bool is_watched = false;
    for (size_t e = 0; e < proj->environment_count; e++)
        is_watched |=
            proj->environments[e].branch && strcmp(proj->environments[e].branch, branch) == 0;
    if (!is_watched || !s_sha_ok(sha) || !workflow || !*workflow || run_id == 0 || !status ||
        !*status || strchr(status, ' '))
        return;
    const char *concl = conclusion && *conclusion && !strchr(conclusion, ' ') ? conclusion : "-";
    char *key = sn_strdupf("github:wf:%s:%s", proj->name, sha);
    char id[24], att[16], ttl[24];
    snprintf(id, sizeof id, "%" PRIu64, run_id);
    snprintf(att, sizeof att, "%u", attempt ? attempt : 1);
    snprintf(ttl, sizeof ttl, "%lld", (long long)S_STATE_TTL_MS);
    const char *keys[] = {key};
    const char *args[] = {workflow, id, att, status, concl, ttl};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_fcall(self->redis, SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, &r,
                                "sentinel_github_wf", 1, keys, 6, args, NULL);
    free(key);
    if (rc != SN_OK || r->type != REDIS_REPLY_ARRAY) {
        if (rc == SN_OK)
            sn_warn(S_MOD, "workflow state not recorded: %s",
                    r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (r)
            freeReplyObject(r);
        return;
    }
    size_t n = r->elements / 2;
    s_wf_t *wfs = sn_calloc(n ? n : 1, sizeof *wfs);
    size_t k = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        if (r->element[i]->type != REDIS_REPLY_STRING ||
            r->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        s_wf_t *w = &wfs[k];
        sn_strlcpy(w->name, r->element[i]->str, sizeof w->name);
        if (sscanf(r->element[i + 1]->str, "%" SCNu64 " %u %31s %31s", &w->run_id, &w->attempt,
                   w->status, w->conclusion) == 4)
            k++;
    }
    freeReplyObject(r);
    for (size_t e = 0; e < proj->environment_count; e++)
        if (proj->environments[e].branch && strcmp(proj->environments[e].branch, branch) == 0)
            s_decide(self, proj, &proj->environments[e], branch, sha, wfs, k, source);
    free(wfs);
}

/* The runs in @runs (a workflow_runs array) of the newest commit on @branch (or of @sha
 * when given), observed. */
static void s_observe_runs(bv_github_t *self, const sn_project_config_t *proj, const char *branch,
                           const char *sha, json_t *runs, const char *source)
{
    const char *head = sha;
    size_t i;
    json_t *run;
    json_array_foreach(runs, i, run)
    {
        const char *b = json_string_value(json_object_get(run, "head_branch"));
        const char *s = json_string_value(json_object_get(run, "head_sha"));
        if (!b || !s || (branch && strcmp(b, branch) != 0))
            continue;
        if (!head)
            head = s; /* newest first: the first run names the newest commit */
        if (strcmp(s, head) != 0)
            continue;
        const char *name = json_string_value(json_object_get(run, "name"));
        if (!name || !*name)
            name = json_string_value(json_object_get(run, "path"));
        json_t *id = json_object_get(run, "id");
        json_t *att = json_object_get(run, "run_attempt");
        s_observe(self, proj, b, s, name,
                  json_is_integer(id) && json_integer_value(id) > 0
                      ? (uint64_t)json_integer_value(id)
                      : 0,
                  json_is_integer(att) ? (uint32_t)json_integer_value(att) : 1,
                  json_string_value(json_object_get(run, "status")),
                  json_string_value(json_object_get(run, "conclusion")), source);
    }
}

static void s_lookup_sha(bv_github_t *self, const sn_project_config_t *proj, const char *sha)
{
    char *path = sn_strdupf("/repos/%s/actions/runs?head_sha=%s&per_page=%d", proj->github_repo,
                            sha, S_POLL_PER_PAGE);
    sn_github_response_t resp;
    sn_rc_t rc = sn_github_request(self->api, "GET", path, NULL, 0, &resp);
    if (rc == SN_OK && resp.json)
        s_observe_runs(self, proj, NULL, sha, json_object_get(resp.json, "workflow_runs"),
                       "webhook");
    else
        sn_warn(S_MOD, "runs of %s not listed project=%s status=%ld: %s", sha, proj->name,
                resp.status, resp.message);
    sn_github_response_fini(&resp);
    free(path);
}

static void s_handle_event(bv_github_t *self, const sn_envelope_t *env)
{
    const Sentinel__V1__GithubEvent *ev = env->github_event;
    if (!ev->repo || env->time_unix_ms < sn_wall_ms() - S_MAX_EVENT_AGE_MS)
        return;
    for (size_t p = 0; p < self->cfg->project_count; p++) {
        const sn_project_config_t *proj = &self->cfg->projects[p];
        if (!s_is_github(proj) || strcasecmp(proj->github_repo, ev->repo) != 0)
            continue;
        const char *event = ev->event ? ev->event : "";
        if (strcmp(event, "workflow_run") == 0) {
            s_observe(self, proj, ev->head_branch ? ev->head_branch : "", ev->head_sha,
                      ev->workflow_name, ev->run_id, ev->run_attempt, ev->status, ev->conclusion,
                      "webhook");
        } else if (strcmp(event, "push") == 0 && !ev->deleted && ev->head_branch &&
                   *ev->head_branch && s_sha_ok(ev->head_sha)) {
            char *key = s_key(self, "github:head:%s:%s", proj->name, ev->head_branch);
            char ttl[24];
            snprintf(ttl, sizeof ttl, "%lld", (long long)S_STATE_TTL_MS);
            const char *argv[] = {"SET", key, ev->head_sha, "PX", ttl};
            redisReply *r = s_cmd(self, 5, argv);
            if (r)
                freeReplyObject(r);
            free(key);
            sn_debug(S_MOD, "head project=%s branch=%s sha=%s", proj->name, ev->head_branch,
                     ev->head_sha);
        } else if (strcmp(event, "check_suite") == 0 && ev->status &&
                   strcmp(ev->status, "completed") == 0 && s_sha_ok(ev->head_sha)) {
            bool is_watched = false;
            for (size_t w = 0; w < self->watch_count; w++)
                is_watched |= self->watches[w].project == proj && ev->head_branch &&
                              strcmp(self->watches[w].branch, ev->head_branch) == 0;
            if (is_watched)
                s_lookup_sha(self, proj, ev->head_sha);
        }
    }
}

static void s_poll(bv_github_t *self, s_watch_t *w)
{
    const sn_project_config_t *proj = w->project;
    char *branch = sn_github_escape(w->branch);
    char *path = sn_strdupf("/repos/%s/actions/runs?branch=%s&per_page=%d", proj->github_repo,
                            branch, S_POLL_PER_PAGE);
    free(branch);
    sn_github_response_t resp;
    sn_rc_t rc = sn_github_request(self->api, "GET", path, NULL, 0, &resp);
    free(path);
    sn_metrics_t *m = sn_ctx_metrics(self->ctx);
    int64_t interval = proj->poll_interval_ms > 0 ? proj->poll_interval_ms : 5000;
    if (rc == SN_OK && resp.json) {
        sn_metrics_add(m, resp.is_not_modified ? "github_polls_not_modified" : "github_polls", 1);
        if (w->is_failing)
            sn_info(S_MOD, "polling works again project=%s branch=%s", proj->name, w->branch);
        w->is_failing = false;
        w->backoff_ms = 0;
        w->due_ms = sn_mono_ms() + interval;
        s_observe_runs(self, proj, w->branch, NULL, json_object_get(resp.json, "workflow_runs"),
                       "poll");
    } else {
        sn_metrics_add(m, "github_poll_failures", 1);
        if (!w->is_failing)
            sn_warn(S_MOD, "polling failed project=%s branch=%s status=%ld: %s", proj->name,
                    w->branch, resp.status, resp.message);
        w->is_failing = true;
        w->backoff_ms = w->backoff_ms ? w->backoff_ms * 2 : interval;
        if (w->backoff_ms > S_POLL_BACKOFF_MAX_MS)
            w->backoff_ms = S_POLL_BACKOFF_MAX_MS;
        w->due_ms = sn_mono_ms() + w->backoff_ms;
    }
    sn_github_response_fini(&resp);
}

static void *s_thread(void *arg)
{
    bv_github_t *self = arg;
    bool was_leader = false;
    while (!s_should_stop(self)) {
        sn_journal_entry_t e;
        if (sn_journal_reader_next(self->reader, S_NEXT_WAIT_MS, &e) == SN_OK) {
            if (!e.is_gap && e.env &&
                e.env->body_case == SENTINEL__V1__ENVELOPE__BODY_GITHUB_EVENT && e.type &&
                strncmp(e.type, "github.", 7) == 0)
                s_handle_event(self, e.env);
            if (e.id[0] && sn_journal_reader_ack(self->reader, e.id) != SN_OK)
                sn_debug(S_MOD, "ack of %s refused", e.id);
            sn_journal_entry_fini(&e);
        }
        pthread_mutex_lock(&self->mu);
        bool is_leader = self->is_leader;
        pthread_mutex_unlock(&self->mu);
        if (is_leader && !was_leader)
            for (size_t w = 0; w < self->watch_count; w++)
                self->watches[w].due_ms = 0; /* a new term polls at once */
        was_leader = is_leader;
        for (size_t w = 0; is_leader && w < self->watch_count && !s_should_stop(self); w++) {
            s_watch_t *wa = &self->watches[w];
            if (wa->project->poll_interval_ms > 0 && sn_mono_ms() >= wa->due_ms)
                s_poll(self, wa);
        }
    }
    return NULL;
}

/* ---- the artifact -------------------------------------------------------------------------- */

static void s_out_fail(bv_github_outcome_t *out, bool is_transient, const char *fmt, ...)
    SN_PRINTF(3, 4);

static void s_out_fail(bv_github_outcome_t *out, bool is_transient, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
    out->ok = false;
    out->is_transient = is_transient;
}

/* The verifying run ids of @b: the request's, else build-validator's record. */
static size_t s_run_ids(bv_github_t *self, const Sentinel__V1__BuildRequest *b, uint64_t *ids)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n_workflow_run_ids && n < S_MAX_RUNS; i++)
        ids[n++] = b->workflow_run_ids[i];
    if (n)
        return n;
    char *key = s_key(self, "github:verified:%s:%s", b->project, b->sha);
    const char *argv[] = {"GET", key};
    redisReply *r = s_cmd(self, 2, argv);
    free(key);
    if (r && r->type == REDIS_REPLY_STRING) {
        for (char *p = r->str; *p && n < S_MAX_RUNS;) {
            char *end = NULL;
            unsigned long long v = strtoull(p, &end, 10);
            if (end == p)
                break;
            if (v)
                ids[n++] = v;
            p = *end == ',' ? end + 1 : end;
        }
    }
    if (r)
        freeReplyObject(r);
    return n;
}

/* The first unexpired artifact named @name of run @run_id: its id and digest (heap,
 * may be NULL). SN_DECLINED: none; else as sn_github_list. */
static sn_rc_t s_find_artifact(bv_github_t *self, const char *repo, uint64_t run_id,
                               const char *name, const char *sha, uint64_t *artifact_id,
                               char **digest, char *why, size_t why_len)
{
    char *esc = sn_github_escape(name);
    char *path = sn_strdupf("/repos/%s/actions/runs/%" PRIu64 "/artifacts?name=%s&per_page=100",
                            repo, run_id, esc);
    free(esc);
    json_t *items = NULL;
    sn_github_response_t resp;
    sn_rc_t rc = sn_github_list(self->api, path, "artifacts", 1000, &items, &resp);
    free(path);
    if (rc != SN_OK) {
        snprintf(why, why_len, "artifacts of run %" PRIu64 " not listed (status %ld: %.120s)",
                 run_id, resp.status, resp.message);
        sn_github_response_fini(&resp);
        return rc;
    }
    sn_github_response_fini(&resp);
    rc = SN_DECLINED;
    snprintf(why, why_len, "run %" PRIu64 " has no artifact named %s", run_id, name);
    size_t i;
    json_t *a;
    json_array_foreach(items, i, a)
    {
        const char *n = json_string_value(json_object_get(a, "name"));
        json_t *id = json_object_get(a, "id");
        if (!n || strcmp(n, name) != 0 || !json_is_integer(id) || json_integer_value(id) <= 0)
            continue;
        if (json_is_true(json_object_get(a, "expired"))) {
            snprintf(why, why_len, "artifact %s of run %" PRIu64 " has expired", name, run_id);
            rc = SN_ERROR;
            continue;
        }
        const char *art_sha =
            json_string_value(json_object_get(json_object_get(a, "workflow_run"), "head_sha"));
        if (art_sha && strcmp(art_sha, sha) != 0) {
            snprintf(why, why_len, "artifact %s of run %" PRIu64 " was built from %s, not %s", name,
                     run_id, art_sha, sha);
            rc = SN_ERROR;
            continue;
        }
        *artifact_id = (uint64_t)json_integer_value(id);
        const char *d = json_string_value(json_object_get(a, "digest"));
        *digest = d ? sn_strdup(d) : NULL;
        rc = SN_OK;
        break;
    }
    json_decref(items);
    return rc;
}

void bv_github_fetch(bv_github_t *self, const Sentinel__V1__BuildRequest *b, const char *work,
                     int log_fd, bv_github_progress_fn *progress, void *progress_arg,
                     bv_github_outcome_t *out)
{
    memset(out, 0, sizeof *out);
    const sn_project_config_t *proj = sn_config_project(self->cfg, b->project);
    const char *name = proj->artifact_name && *proj->artifact_name ? proj->artifact_name : "site";
    uint64_t ids[S_MAX_RUNS];
    size_t n = s_run_ids(self, b, ids);
    if (n == 0) {
        s_out_fail(out, false, "no verified workflow run of %s is known", b->sha);
        return;
    }
    uint64_t artifact_id = 0, run_id = 0;
    char *digest = NULL;
    char why[256] = "";
    sn_rc_t rc = SN_DECLINED;
    for (size_t i = 0; i < n && rc != SN_OK; i++) {
        if (progress && !progress(progress_arg)) {
            s_out_fail(out, true, "aborted");
            return;
        }
        rc = s_find_artifact(self, proj->github_repo, ids[i], name, b->sha, &artifact_id, &digest,
                             why, sizeof why);
        run_id = ids[i];
        if (rc == SN_AGAIN)
            break;
    }
    if (rc != SN_OK) {
        s_out_fail(out, rc == SN_AGAIN, "%s", why);
        return;
    }
    dprintf(log_fd, "==> github artifact %s id=%" PRIu64 " of run %" PRIu64 " digest=%s\n", name,
            artifact_id, run_id, digest ? digest : "(none)");
    char *zip = sn_strdupf("%s/artifact.zip", work);
    char *files_dir = sn_strdupf("%s/files", work);
    int fd = open(zip, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        s_out_fail(out, true, "cannot create %s: %s", zip, strerror(errno));
        goto out;
    }
    char *path =
        sn_strdupf("/repos/%s/actions/artifacts/%" PRIu64 "/zip", proj->github_repo, artifact_id);
    int64_t max = self->cfg->artifact_source.max_bytes > 0 ? self->cfg->artifact_source.max_bytes
                                                           : S_DEFAULT_MAX_ARTIFACT;
    uint64_t written = 0;
    sn_github_response_t resp;
    rc = sn_github_download(self->api, path, fd, (uint64_t)max, &written, &resp);
    free(path);
    if (rc != SN_OK) {
        s_out_fail(out, rc == SN_AGAIN, "artifact %" PRIu64 " not downloaded (status %ld: %s)",
                   artifact_id, resp.status, resp.message);
        sn_github_response_fini(&resp);
        close(fd);
        goto out;
    }
    sn_github_response_fini(&resp);
    char zip_sha[SN_ARTIFACT_SHA_LEN + 1];
    uint64_t zip_bytes = 0;
    rc = sn_artifact_hash_fd(fd, zip_sha, &zip_bytes);
    close(fd);
    if (rc != SN_OK) {
        s_out_fail(out, true, "cannot hash the downloaded zip");
        goto out;
    }
    dprintf(log_fd, "==> downloaded zip bytes=%" PRIu64 " sha256=%s\n", zip_bytes, zip_sha);
    if (digest) {
        if (strncmp(digest, "sha256:", 7) != 0) {
            dprintf(log_fd, "==> digest %s is not sha256: not checked\n", digest);
        } else if (strcasecmp(digest + 7, zip_sha) != 0) {
            sn_warn(S_MOD,
                    "artifact digest mismatch project=%s run=%" PRIu64 " artifact=%" PRIu64
                    " expected=%s got=sha256:%s",
                    b->project, run_id, artifact_id, digest, zip_sha);
            s_out_fail(out, false,
                       "artifact %" PRIu64 " does not match its digest (%s, got sha256:%s)",
                       artifact_id, digest, zip_sha);
            goto out;
        }
    }
    if (progress && !progress(progress_arg)) {
        s_out_fail(out, true, "aborted");
        goto out;
    }
    if (mkdir(files_dir, 0755) != 0) {
        s_out_fail(out, true, "cannot create %s: %s", files_dir, strerror(errno));
        goto out;
    }
    char zerr[200];
    size_t files = 0;
    rc = zip_reader_extract(zip, files_dir, (uint64_t)max, &files, zerr, sizeof zerr);
    if (rc != SN_OK) {
        s_out_fail(out, rc == SN_AGAIN, "artifact %" PRIu64 " not unzipped: %s", artifact_id, zerr);
        goto out;
    }
    rc = sn_artifact_put_dir(self->store, files_dir, out->sha, &out->bytes);
    if (rc != SN_OK) {
        s_out_fail(out, rc == SN_AGAIN, "cannot store the artifact");
        goto out;
    }
    dprintf(log_fd, "==> unzipped files=%zu, stored as artifact sha256=%s bytes=%" PRIu64 "\n",
            files, out->sha, out->bytes);
    sn_info(S_MOD,
            "github artifact stored project=%s sha=%s run=%" PRIu64 " artifact=%" PRIu64
            " zip_sha256=%s digest=%s tar=%s",
            b->project, b->sha, run_id, artifact_id, zip_sha, digest ? "checked" : "absent",
            out->sha);
    out->ok = true;
out:
    free(digest);
    free(zip);
    free(files_dir);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void s_intent_free(s_intent_t *in)
{
    if (!in)
        return;
    free(in->project);
    free(in->environment);
    free(in->ref);
    free(in->sha);
    free(in->old);
    free(in->repo);
    free(in->branch);
    free(in->workflow);
    free(in->conclusion);
    free(in->source);
    free(in);
}

static bool s_sha_ok(const char *sha)
{
    if (!sha || strlen(sha) != 40)
        return false;
    for (const char *p = sha; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}
