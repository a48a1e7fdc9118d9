/* local-deployer (BuildPilot): releases on this host. It serves deploy.local.<host> with
 * DeployRequest ops for the targets whose `host` is this host (or empty):
 *
 *  - stage: extract the artifact into <state_dir>/sites/<target>/releases/<deploy-id>/
 *    (through a temp dir renamed into place, so a release dir is always whole), write
 *    its identity at .well-known/sentinel-release.json, point `preview` at it;
 *  - promote: point `current` at the release and push its identity onto
 *    release:<project>:<env>:<target> (newest first, at most keep_releases, never twice);
 *  - rollback: point `current` at to_release_id, or at the release promoted before the
 *    request's deploy (the next entry of that list).
 *
 * Every symlink switch is a new symlink under a temp name renamed over the old one, so
 * nginx (which serves the sites straight from the filesystem, see ctl/ctl_nginx.c) sees
 * either the old or the new release, never nothing; killing this process never touches
 * the site. Ops are idempotent on the deploy id, serialised per target, and run on job
 * threads. A request whose envelope carries label `job_id` is a ledger job: it is claimed
 * before any side effect, its lease renewed while a command runs, and it is completed
 * with the packed DeployResult (a retry of a finished job gets that stored result).
 *
 * An artifact missing from this host's store (it was built on another host) is fetched
 * from the gateway named by `artifact_source` (GET <url>/api/v1/artifacts/<sha256>,
 * streamed to a temp file in the store, its sha256 checked before it is renamed into
 * place: a tampered or truncated download is refused, retried once, then the stage fails
 * naming the hash mismatch). The token is sent, never logged.
 *
 * local_command targets run the user's stage / promote / health / rollback commands with
 * /bin/sh -c in their own process group (a timeout kills the group), with only
 * SENTINEL_* variables and PATH in their environment; the artifact is still extracted
 * into the release dir, which they get as SENTINEL_RELEASE_DIR. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_http.h"
#include "sentinel/sn_crypto.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define LOG_MODULE "local-deployer"
#define IDENTITY_PATH ".well-known/sentinel-release.json"
#define IDENTITY_MAX_BYTES (64 * 1024)
#define DEFAULT_KEEP_RELEASES 5
#define DEFAULT_COMMAND_TIMEOUT_MS 120000
#define COMMAND_KILL_GRACE_MS 2000
#define REDIS_TIMEOUT_MS 2000
#define FETCH_ATTEMPTS 2
#define FETCH_ERROR_BODY_BYTES 4096

/* LPUSH unless an identical entry is already in the list; LTRIM to ARGV[2]. */
static const char *const s_push_lua =
    "local items = redis.call('LRANGE', KEYS[1], 0, -1)\n"
    "for _, v in ipairs(items) do if v == ARGV[1] then return 0 end end\n"
    "redis.call('LPUSH', KEYS[1], ARGV[1])\n"
    "redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)\n"
    "return 1\n";

typedef struct {
    const sn_target_config_t *cfg; /* borrowed from the runtime's config */
    pthread_mutex_t mu;            /* one op at a time per target */
} s_target_t;

typedef struct {
    const sn_config_t *cfg;
    char *host;
    char *instance;
    char *sites_dir; /* absolute <state_dir>/sites */
    sn_artifact_t *store;
    s_target_t *targets;
    size_t target_count;
} s_state_t;

/* One op being served (job thread). */
typedef struct {
    sn_ctx_t *ctx;
    s_state_t *st;
    sn_request_t *req;
    const Sentinel__V1__DeployRequest *in;
    const Sentinel__V1__Deploy *dep;
    const sn_target_config_t *target;
    char *site_dir;                  /* <sites>/<target> */
    sn_deploy_op_t *dop;             /* the answer and the ledger job (request-owned) */
    Sentinel__V1__DeployResult *res; /* the reply body (request-owned memory) */
    Sentinel__V1__Deploy *out;
} s_op_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static void s_destroy(sn_ctx_t *ctx, void *state);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void s_stage(s_op_t *op);
static void s_promote(s_op_t *op);
static void s_rollback(s_op_t *op);
static char *s_release_dir(s_op_t *op, const char *release_id);
static Sentinel__V1__ReleaseIdentity *s_read_identity(const char *release_dir);
static sn_rc_t s_write_identity(const char *release_dir,
                                const Sentinel__V1__ReleaseIdentity *identity);
static sn_rc_t s_switch_link(const char *site_dir, const char *link, const char *release_id);
static char *s_read_link(const char *site_dir, const char *link);
static void s_prune(s_op_t *op);
static sn_rc_t s_run_command(s_op_t *op, const char *what, const char *command,
                             const char *release_id, const char *release_dir);
static sn_rc_t s_fetch(s_op_t *op, const char *sha);
static char *s_list_key(s_op_t *op);
static sn_rc_t s_list_read(s_op_t *op, Sentinel__V1__ReleaseIdentity ***items, size_t *count);
static void s_list_free(Sentinel__V1__ReleaseIdentity **items, size_t count);
static void s_fsync_dir(const char *path);
static const char *s_url(sn_request_t *req, const char *url, const char *listen);

const sn_role_t local_deployer_role = {
    .name = "local-deployer",
    .agent = "BuildPilot",
    .summary = "stages, promotes and rolls back releases on this host (nginx or commands)",
    .services = (const char *const[]){"deploy.local.{host}", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    const char *state_dir = cfg->state_dir ? cfg->state_dir : "./var";
    char *sites = sn_strdupf("%s/sites", state_dir);
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->cfg = cfg;
    st->host = sn_strdup(sn_ctx_host(ctx));
    st->instance = sn_strdup(sn_ctx_instance(ctx));
    st->store = sn_deploy_op_store_new(ctx); /* NULL: logged */
    /* The store created state_dir if needed; sites lives next to it. */
    char abs[PATH_MAX];
    if (st->store && (mkdir(sites, 0755) == 0 || errno == EEXIST) && realpath(sites, abs))
        st->sites_dir = sn_strdup(abs);
    else if (st->store)
        sn_error(LOG_MODULE, "cannot use sites dir %s: %s", sites, strerror(errno));
    free(sites);
    st->target_count = cfg->target_count;
    st->targets = sn_calloc(cfg->target_count ? cfg->target_count : 1, sizeof *st->targets);
    size_t mine = 0;
    for (size_t i = 0; i < cfg->target_count; i++) {
        st->targets[i].cfg = &cfg->targets[i];
        pthread_mutex_init(&st->targets[i].mu, NULL);
        const char *h = cfg->targets[i].host;
        mine += !h || !*h || strcmp(h, st->host) == 0;
    }
    *state = st;
    if (!st->sites_dir)
        return SN_ERROR;
    sn_info(LOG_MODULE, "serving host=%s targets=%zu sites=%s artifacts=%s", st->host, mine,
            st->sites_dir, sn_artifact_dir(st->store));
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    for (size_t i = 0; i < st->target_count; i++)
        pthread_mutex_destroy(&st->targets[i].mu);
    free(st->targets);
    sn_artifact_destroy(&st->store);
    free(st->sites_dir);
    free(st->host);
    free(st->instance);
    free(st);
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    sn_deploy_op_defer(ctx, req, LOG_MODULE, s_job, state);
}

/* ---- the job ----------------------------------------------------------------------------- */

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq, sn_envelope_t *reply,
                     const char **nak_reason)
{
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    s_op_t op = {.ctx = ctx, .st = st, .req = req, .in = in};
    op.dop = sn_deploy_op_begin(ctx, req, reply, LOG_MODULE);
    op.dep = sn_deploy_op_deploy(op.dop);
    op.res = sn_deploy_op_result(op.dop);
    op.out = sn_deploy_op_out(op.dop);
    const char *opname = in->op && *in->op ? in->op : "";
    bool is_known_op = strcmp(opname, "stage") == 0 || strcmp(opname, "promote") == 0 ||
                       strcmp(opname, "rollback") == 0;
    int64_t t0 = sn_mono_ms();

    /* A ledger job is claimed before anything else happens. */
    sn_deploy_op_claim_t claim =
        sn_deploy_op_claim(op.dop, st->instance, is_known_op ? opname : "unknown-op");
    if (claim == SN_DEPLOY_OP_ANSWERED)
        return SN_OK;
    if (claim == SN_DEPLOY_OP_REFUSED)
        goto log;

    /* Validation: everything that names a path is checked before it is used. */
    const char *tname = op.dep->target;
    if (!is_known_op) {
        sn_deploy_op_fail(op.dop, false, "unknown op '%s' (stage, promote, rollback)",
                          sn_deploy_op_name_shown(opname));
    } else if (!in->deploy) {
        sn_deploy_op_fail(op.dop, false, "missing deploy");
    } else if (!sn_deploy_op_name_is_valid(op.dep->deploy_id) &&
               !(strcmp(opname, "rollback") == 0 && !*op.dep->deploy_id)) {
        sn_deploy_op_fail(op.dop, false, "invalid deploy id");
    } else if (!sn_deploy_op_name_is_valid(tname)) {
        sn_deploy_op_fail(op.dop, false, "invalid target name");
    } else if (!sn_deploy_op_name_is_valid(op.dep->project) ||
               !sn_deploy_op_name_is_valid(op.dep->environment)) {
        sn_deploy_op_fail(op.dop, false, "invalid project or environment");
    } else {
        s_target_t *t = NULL;
        for (size_t i = 0; i < st->target_count && !t; i++)
            if (st->targets[i].cfg->name && strcmp(st->targets[i].cfg->name, tname) == 0)
                t = &st->targets[i];
        const char *type = t && t->cfg->type ? t->cfg->type : "";
        if (!t) {
            sn_deploy_op_fail(op.dop, false, "unknown target '%s'", tname);
        } else if (t->cfg->host && *t->cfg->host && strcmp(t->cfg->host, st->host) != 0) {
            sn_deploy_op_fail(op.dop, false, "target '%s' is served on host %s, not %s", tname,
                              t->cfg->host, st->host);
        } else if (strcmp(type, "local_static") != 0 && strcmp(type, "local_command") != 0) {
            sn_deploy_op_fail(op.dop, false,
                              "target '%s' has type '%s', not local_static or local_command", tname,
                              type);
        } else {
            op.target = t->cfg;
            op.site_dir = sn_strdupf("%s/%s", st->sites_dir, tname);
            op.out->provider = (char *)type;
            pthread_mutex_lock(&t->mu);
            if (mkdir(op.site_dir, 0755) != 0 && errno != EEXIST) {
                sn_deploy_op_fail(op.dop, true, "cannot create %s: %s", op.site_dir,
                                  strerror(errno));
            } else {
                char *rel = sn_strdupf("%s/releases", op.site_dir);
                if (mkdir(rel, 0755) != 0 && errno != EEXIST)
                    sn_deploy_op_fail(op.dop, true, "cannot create %s: %s", rel, strerror(errno));
                free(rel);
            }
            if (op.res->ok) {
                if (strcmp(opname, "stage") == 0)
                    s_stage(&op);
                else if (strcmp(opname, "promote") == 0)
                    s_promote(&op);
                else
                    s_rollback(&op);
            }
            if (op.res->ok)
                s_prune(&op);
            pthread_mutex_unlock(&t->mu);
        }
    }
    sn_deploy_op_finish(op.dop);
    sn_deploy_op_complete(op.dop, opname);
log:
    free(op.site_dir);
    /* Only validated names reach the log line (no injected spaces or newlines). */
    opname = is_known_op ? opname : "unknown-op";
    const char *job_id = sn_deploy_op_job_shown(op.dop);
    if (op.res->ok)
        sn_info(LOG_MODULE, "%s ok target=%s deploy=%s release=%s previous=%s job=%s ms=%lld",
                opname, sn_deploy_op_name_shown(op.dep->target),
                sn_deploy_op_name_shown(op.dep->deploy_id),
                op.out->release_id ? op.out->release_id : "",
                op.out->previous_release_id ? op.out->previous_release_id : "", job_id,
                (long long)(sn_mono_ms() - t0));
    else
        sn_warn(LOG_MODULE, "%s failed target=%s deploy=%s job=%s transient=%d reason=%s", opname,
                sn_deploy_op_name_shown(op.dep->target), sn_deploy_op_name_shown(op.dep->deploy_id),
                job_id, op.res->is_transient, op.res->reason);
    (void)nak_reason;
    return SN_OK;
}

/* ---- ops --------------------------------------------------------------------------------- */

static bool s_same_identity(const Sentinel__V1__ReleaseIdentity *a, const Sentinel__V1__Deploy *d,
                            const char *commit)
{
    return a && strcmp(a->deploy_id, d->deploy_id) == 0 && strcmp(a->commit, commit) == 0 &&
           strcmp(a->project, d->project) == 0 && strcmp(a->environment, d->environment) == 0 &&
           strcmp(a->target, d->target) == 0;
}

static void s_stage(s_op_t *op)
{
    const Sentinel__V1__Deploy *d = op->dep;
    const char *commit = op->in->commit ? op->in->commit : "";
    const char *sha = op->in->artifact_sha256;
    char *dir = s_release_dir(op, d->deploy_id);
    char *tmp = NULL;
    Sentinel__V1__ReleaseIdentity *have = s_read_identity(dir);
    bool is_local_command = strcmp(op->target->type, "local_command") == 0;
    struct stat sb;
    if (have) {
        if (!s_same_identity(have, d, commit)) {
            sn_deploy_op_fail(op->dop, false, "release %s exists with another identity",
                              d->deploy_id);
            goto out;
        }
        /* Already staged (a retry): make sure preview points at it, answer ok. */
    } else if (lstat(dir, &sb) == 0) {
        sn_deploy_op_fail(op->dop, false, "release dir %s exists without an identity",
                          d->deploy_id);
        goto out;
    } else {
        if (!sn_artifact_sha_is_valid(sha)) {
            sn_deploy_op_fail(op->dop, false, "invalid artifact sha256");
            goto out;
        }
        if (!sn_artifact_exists(op->st->store, sha) && s_fetch(op, sha) != SN_OK)
            goto out; /* the reason is set */
        char rnd[17];
        sn_random_hex(rnd, 8);
        tmp = sn_strdupf("%s/releases/.stage-%s-%s", op->site_dir, d->deploy_id, rnd);
        sn_rc_t rc = sn_artifact_extract(op->st->store, sha, tmp);
        if (rc != SN_OK) {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN,
                              rc == SN_DECLINED ? "artifact %s is not in the store"
                              : rc == SN_AGAIN  ? "artifact %s could not be read"
                                                : "artifact %s is corrupted or unsafe (refused)",
                              sha);
            goto out;
        }
        Sentinel__V1__ReleaseIdentity id;
        sn_deploy_op_identity(op->dop, &id);
        if (s_write_identity(tmp, &id) != SN_OK) {
            sn_deploy_op_fail(op->dop, true, "cannot write the release identity");
            goto out;
        }
        if (rename(tmp, dir) != 0) {
            sn_deploy_op_fail(op->dop, true, "cannot move release into place: %s", strerror(errno));
            goto out;
        }
        free(tmp);
        tmp = NULL;
        char *releases = sn_strdupf("%s/releases", op->site_dir);
        s_fsync_dir(releases);
        free(releases);
        if (is_local_command && op->target->stage_command && *op->target->stage_command &&
            s_run_command(op, "stage", op->target->stage_command, d->deploy_id, dir) != SN_OK) {
            /* Nothing half-staged stays behind: a retry stages again. */
            if (sn_artifact_rmtree(dir) != SN_OK)
                sn_warn(LOG_MODULE, "cannot remove failed release %s", dir);
            goto out;
        }
    }
    if (!is_local_command) {
        if (s_switch_link(op->site_dir, "preview", d->deploy_id) != SN_OK) {
            sn_deploy_op_fail(op->dop, true, "cannot switch the preview link");
            goto out;
        }
        op->out->preview_url =
            (char *)s_url(op->req, op->target->preview_url, op->target->preview_listen);
    } else if (op->target->preview_url) {
        op->out->preview_url = op->target->preview_url;
    }
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_STAGED;
    op->out->release_id = d->deploy_id;
    op->out->staged_unix_ms = have ? have->created_unix_ms : sn_wall_ms();
out:
    if (tmp && sn_artifact_rmtree(tmp) != SN_OK)
        sn_warn(LOG_MODULE, "cannot remove %s", tmp);
    if (have)
        sentinel__v1__release_identity__free_unpacked(have, NULL);
    free(tmp);
    free(dir);
}

/* Finds @release_id in the list; its index or -1. */
static long s_list_find(Sentinel__V1__ReleaseIdentity **items, size_t count, const char *id)
{
    for (size_t i = 0; i < count; i++)
        if (id && strcmp(items[i]->deploy_id, id) == 0)
            return (long)i;
    return -1;
}

static void s_promote(s_op_t *op)
{
    const Sentinel__V1__Deploy *d = op->dep;
    bool is_local_command = strcmp(op->target->type, "local_command") == 0;
    char *dir = s_release_dir(op, d->deploy_id);
    Sentinel__V1__ReleaseIdentity *id = s_read_identity(dir);
    char *current = s_read_link(op->site_dir, "current");
    Sentinel__V1__ReleaseIdentity **items = NULL;
    size_t count = 0;
    char *key = NULL;
    uint8_t *packed = NULL;
    if (!id || strcmp(id->deploy_id, d->deploy_id) != 0) {
        sn_deploy_op_fail(op->dop, false, "release %s is not staged here", d->deploy_id);
        goto out;
    }
    bool is_live = current && strcmp(current, d->deploy_id) == 0;
    if (is_local_command && !is_live) {
        if (op->target->promote_command && *op->target->promote_command &&
            s_run_command(op, "promote", op->target->promote_command, d->deploy_id, dir) != SN_OK)
            goto out;
        if (op->target->health_command && *op->target->health_command &&
            s_run_command(op, "health", op->target->health_command, d->deploy_id, dir) != SN_OK)
            goto out;
    }
    if (!is_live && s_switch_link(op->site_dir, "current", d->deploy_id) != SN_OK) {
        sn_deploy_op_fail(op->dop, true, "cannot switch the current link");
        goto out;
    }
    /* The history: pushed once per deploy id (the script compares whole entries, and an
     * identity's bytes never change once staged). */
    size_t len = sentinel__v1__release_identity__get_packed_size(id);
    packed = sn_malloc(len ? len : 1);
    sentinel__v1__release_identity__pack(id, packed);
    key = s_list_key(op);
    int keep = op->target->keep_releases > 0 ? op->target->keep_releases : DEFAULT_KEEP_RELEASES;
    char keep_s[16];
    snprintf(keep_s, sizeof keep_s, "%d", keep);
    const char *argv[] = {"EVAL", s_push_lua, "1", key, (const char *)packed, keep_s};
    size_t lens[] = {4, strlen(s_push_lua), 1, strlen(key), len, strlen(keep_s)};
    redisReply *r = NULL;
    sn_rc_t rc =
        sn_redis_cmd(sn_ctx_redis(op->ctx), SN_REDIS_MAIN, REDIS_TIMEOUT_MS, &r, 6, argv, lens);
    bool is_pushed = rc == SN_OK && r->type == REDIS_REPLY_INTEGER;
    if (r && r->type == REDIS_REPLY_ERROR)
        sn_error(LOG_MODULE, "release history push refused: %s", r->str);
    if (r)
        freeReplyObject(r);
    if (!is_pushed) {
        sn_deploy_op_fail(op->dop, true,
                          "release %s is live but not recorded in the history (redis)",
                          d->deploy_id);
        goto out;
    }
    /* previous_release_id: what was live before, or (on a retry, when we are live
     * already) the entry after ours in the history. */
    if (current && !is_live) {
        op->out->previous_release_id = sn_request_strdup(op->req, current);
    } else if (s_list_read(op, &items, &count) == SN_OK) {
        long at = s_list_find(items, count, d->deploy_id);
        if (at >= 0 && (size_t)at + 1 < count)
            op->out->previous_release_id = sn_request_strdup(op->req, items[at + 1]->deploy_id);
    }
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_LIVE;
    op->out->release_id = d->deploy_id;
    op->out->promoted_unix_ms = sn_wall_ms();
    op->out->live_url = (char *)s_url(op->req, op->target->url, op->target->listen);
out:
    s_list_free(items, count);
    free(packed);
    free(key);
    free(current);
    if (id)
        sentinel__v1__release_identity__free_unpacked(id, NULL);
    free(dir);
}

static void s_rollback(s_op_t *op)
{
    const Sentinel__V1__Deploy *d = op->dep;
    const char *to = op->in->to_release_id;
    bool is_local_command = strcmp(op->target->type, "local_command") == 0;
    char *current = s_read_link(op->site_dir, "current");
    Sentinel__V1__ReleaseIdentity **items = NULL;
    size_t count = 0;
    char *dir = NULL;
    char *target = NULL;
    if (to && *to) {
        if (!sn_deploy_op_name_is_valid(to)) {
            sn_deploy_op_fail(op->dop, false, "invalid to_release_id");
            goto out;
        }
        target = sn_strdup(to);
    } else {
        sn_rc_t rc = s_list_read(op, &items, &count);
        if (rc != SN_OK) {
            sn_deploy_op_fail(op->dop, rc == SN_AGAIN, "cannot read the release history");
            goto out;
        }
        /* Back from the request's deploy (a retry lands on the same release), or from
         * what is live when the request names no deploy. */
        const char *from = d->deploy_id && *d->deploy_id ? d->deploy_id : current;
        long at = s_list_find(items, count, from);
        if (at >= 0 && (size_t)at + 1 < count) {
            target = sn_strdup(items[at + 1]->deploy_id);
        } else if (at < 0 && from && current && strcmp(from, current) == 0 && count > 0 &&
                   strcmp(items[0]->deploy_id, from) != 0) {
            /* Live but never recorded (promote failed half-way): back to the newest. */
            target = sn_strdup(items[0]->deploy_id);
        } else if (at < 0 && d->deploy_id && *d->deploy_id &&
                   !(current && strcmp(current, d->deploy_id) == 0)) {
            /* That deploy never went live: nothing to undo. */
            op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
            op->out->release_id = current ? sn_request_strdup(op->req, current) : "";
            op->out->live_url = (char *)s_url(op->req, op->target->url, op->target->listen);
            goto out;
        } else {
            sn_deploy_op_fail(op->dop, false, "no release before %s in the history",
                              from ? from : "(nothing live)");
            goto out;
        }
    }
    dir = s_release_dir(op, target);
    Sentinel__V1__ReleaseIdentity *id = s_read_identity(dir);
    bool is_there = id && strcmp(id->deploy_id, target) == 0;
    if (id)
        sentinel__v1__release_identity__free_unpacked(id, NULL);
    if (!is_there) {
        sn_deploy_op_fail(op->dop, false, "release %s is no longer on this host", target);
        goto out;
    }
    bool is_live = current && strcmp(current, target) == 0;
    if (is_local_command && !is_live) {
        if (op->target->rollback_command && *op->target->rollback_command &&
            s_run_command(op, "rollback", op->target->rollback_command, target, dir) != SN_OK)
            goto out;
        if (op->target->health_command && *op->target->health_command &&
            s_run_command(op, "health", op->target->health_command, target, dir) != SN_OK)
            goto out;
    }
    if (!is_live && s_switch_link(op->site_dir, "current", target) != SN_OK) {
        sn_deploy_op_fail(op->dop, true, "cannot switch the current link");
        goto out;
    }
    op->out->phase = SENTINEL__V1__DEPLOY_PHASE__DEPLOY_ROLLED_BACK;
    op->out->release_id = sn_request_strdup(op->req, target);
    if (current && !is_live)
        op->out->previous_release_id = sn_request_strdup(op->req, current);
    op->out->live_url = (char *)s_url(op->req, op->target->url, op->target->listen);
out:
    s_list_free(items, count);
    free(target);
    free(dir);
    free(current);
}

/* ---- files ------------------------------------------------------------------------------- */

/* 1..128 characters of [A-Za-z0-9._-], not starting with '.': safe as a path component
 * and as part of a Redis key. */
/* @name if it is a valid name, else a placeholder: for log lines. */
static char *s_release_dir(s_op_t *op, const char *release_id)
{
    return sn_strdupf("%s/releases/%s", op->site_dir, release_id);
}

static Sentinel__V1__ReleaseIdentity *s_read_identity(const char *release_dir)
{
    char *path = sn_strdupf("%s/" IDENTITY_PATH, release_dir);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return NULL;
    char *buf = sn_malloc(IDENTITY_MAX_BYTES);
    ssize_t n = read(fd, buf, IDENTITY_MAX_BYTES);
    close(fd);
    Sentinel__V1__ReleaseIdentity *id = NULL;
    if (n > 0 && n < IDENTITY_MAX_BYTES) {
        char err[256];
        id = (Sentinel__V1__ReleaseIdentity *)sn_json_parse_message(
            &sentinel__v1__release_identity__descriptor, buf, (size_t)n, err, sizeof err);
        if (!id)
            sn_warn(LOG_MODULE, "unreadable identity in %s: %s", release_dir, err);
    }
    free(buf);
    return id;
}

static sn_rc_t s_write_identity(const char *release_dir,
                                const Sentinel__V1__ReleaseIdentity *identity)
{
    int dfd = open(release_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return SN_ERROR;
    sn_rc_t rc = SN_ERROR;
    int wk = -1, fd = -1;
    char *json = sn_json_dumps_message(&identity->base, JSON_COMPACT);
    if (!json)
        goto out;
    if (mkdirat(dfd, ".well-known", 0755) != 0 && errno != EEXIST)
        goto out;
    /* O_NOFOLLOW: an artifact may not redirect the identity through a symlink. */
    wk = openat(dfd, ".well-known", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (wk < 0)
        goto out;
    if (unlinkat(wk, "sentinel-release.json", 0) != 0 && errno != ENOENT)
        goto out;
    fd = openat(wk, "sentinel-release.json", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0644);
    if (fd < 0)
        goto out;
    size_t len = strlen(json);
    json[len] = '\0';
    if (write(fd, json, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd) != 0)
        goto out;
    rc = SN_OK;
out:
    if (rc != SN_OK)
        sn_error(LOG_MODULE, "cannot write %s/" IDENTITY_PATH ": %s", release_dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (wk >= 0)
        close(wk);
    free(json);
    close(dfd);
    return rc;
}

/* Points <site>/<link> at releases/<release_id> atomically: a new symlink under a temp
 * name, renamed over the old one (rename(2) replaces it in one step). */
static sn_rc_t s_switch_link(const char *site_dir, const char *link, const char *release_id)
{
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *target = sn_strdupf("releases/%s", release_id);
    char *tmp = sn_strdupf("%s/.%s.%s", site_dir, link, rnd);
    char *path = sn_strdupf("%s/%s", site_dir, link);
    sn_rc_t rc = SN_OK;
    if (symlink(target, tmp) != 0 || rename(tmp, path) != 0) {
        sn_error(LOG_MODULE, "cannot point %s at %s: %s", path, target, strerror(errno));
        unlink(tmp);
        rc = SN_AGAIN;
    } else {
        s_fsync_dir(site_dir);
    }
    free(target);
    free(tmp);
    free(path);
    return rc;
}

/* The release id <site>/<link> points at (caller frees), or NULL. */
static char *s_read_link(const char *site_dir, const char *link)
{
    char *path = sn_strdupf("%s/%s", site_dir, link);
    char buf[PATH_MAX];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    free(path);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    const char *slash = strrchr(buf, '/');
    const char *id = slash ? slash + 1 : buf;
    return sn_deploy_op_name_is_valid(id) ? sn_strdup(id) : NULL;
}

typedef struct {
    char *name;
    int64_t created_ms;
} s_rel_t;

static int s_rel_newest_first(const void *a, const void *b)
{
    const s_rel_t *x = a, *y = b;
    if (x->created_ms != y->created_ms)
        return x->created_ms > y->created_ms ? -1 : 1;
    return strcmp(y->name, x->name);
}

/* Keeps the newest keep_releases releases and whatever current and preview point at;
 * removes the rest, and temp dirs of stages that died (we hold the target's lock, so
 * none of them is in progress). */
static void s_prune(s_op_t *op)
{
    char *releases = sn_strdupf("%s/releases", op->site_dir);
    DIR *dir = opendir(releases);
    if (!dir) {
        free(releases);
        return;
    }
    char *current = s_read_link(op->site_dir, "current");
    char *preview = s_read_link(op->site_dir, "preview");
    s_rel_t *rels = NULL;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = sn_strdupf("%s/%s", releases, e->d_name);
        if (strncmp(e->d_name, ".stage-", 7) == 0) {
            if (sn_artifact_rmtree(path) == SN_OK)
                sn_info(LOG_MODULE, "removed an interrupted stage %s", path);
        } else if (sn_deploy_op_name_is_valid(e->d_name)) {
            Sentinel__V1__ReleaseIdentity *id = s_read_identity(path);
            rels = sn_realloc(rels, (count + 1) * sizeof *rels);
            rels[count].name = sn_strdup(e->d_name);
            rels[count].created_ms = id ? id->created_unix_ms : 0;
            count++;
            if (id)
                sentinel__v1__release_identity__free_unpacked(id, NULL);
        }
        free(path);
    }
    closedir(dir);
    qsort(rels, count, sizeof *rels, s_rel_newest_first);
    size_t keep =
        (size_t)(op->target->keep_releases > 0 ? op->target->keep_releases : DEFAULT_KEEP_RELEASES);
    /* The release to return to is never pruned: after keep_releases failed releases in a
     * row it is the oldest on disk, and a rollback must still find it. */
    const char *back_out = op->out ? op->out->previous_release_id : NULL;
    const char *back_in = op->dep ? op->dep->previous_release_id : NULL;
    for (size_t i = 0; i < count; i++) {
        bool is_pinned = (current && strcmp(rels[i].name, current) == 0) ||
                         (preview && strcmp(rels[i].name, preview) == 0) ||
                         (back_out && strcmp(rels[i].name, back_out) == 0) ||
                         (back_in && strcmp(rels[i].name, back_in) == 0);
        if (i >= keep && !is_pinned) {
            char *path = sn_strdupf("%s/%s", releases, rels[i].name);
            if (sn_artifact_rmtree(path) == SN_OK)
                sn_info(LOG_MODULE, "removed old release target=%s release=%s", op->dep->target,
                        rels[i].name);
            free(path);
        }
        free(rels[i].name);
    }
    free(rels);
    free(current);
    free(preview);
    free(releases);
}

static void s_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fsync(fd) != 0)
        sn_warn(LOG_MODULE, "fsync %s: %s", path, strerror(errno));
    close(fd);
}

/* @url if set, else http://@listen (request-owned string), else "". */
static const char *s_url(sn_request_t *req, const char *url, const char *listen)
{
    if (url && *url)
        return url;
    if (!listen || !*listen)
        return "";
    char *s = sn_strdupf("http://%s/", listen);
    char *out = sn_request_strdup(req, s);
    free(s);
    return out;
}

/* ---- the release history (Redis) ----------------------------------------------------------- */

static char *s_list_key(s_op_t *op)
{
    return sn_strdupf("%srelease:%s:%s:%s", sn_redis_ns(sn_ctx_redis(op->ctx)), op->dep->project,
                      op->dep->environment, op->dep->target);
}

static sn_rc_t s_list_read(s_op_t *op, Sentinel__V1__ReleaseIdentity ***items, size_t *count)
{
    *items = NULL;
    *count = 0;
    char *key = s_list_key(op);
    const char *argv[] = {"LRANGE", key, "0", "-1"};
    redisReply *r = NULL;
    sn_rc_t rc =
        sn_redis_cmd(sn_ctx_redis(op->ctx), SN_REDIS_MAIN, REDIS_TIMEOUT_MS, &r, 4, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return SN_AGAIN;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return SN_ERROR;
    }
    *items = sn_calloc(r->elements ? r->elements : 1, sizeof **items);
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        Sentinel__V1__ReleaseIdentity *id =
            sentinel__v1__release_identity__unpack(NULL, e->len, (const uint8_t *)e->str);
        if (id)
            (*items)[(*count)++] = id;
    }
    freeReplyObject(r);
    return SN_OK;
}

static void s_list_free(Sentinel__V1__ReleaseIdentity **items, size_t count)
{
    for (size_t i = 0; i < count; i++)
        sentinel__v1__release_identity__free_unpacked(items[i], NULL);
    free(items);
}

/* ---- user commands (local_command) ----------------------------------------------------------- */

/* Runs `/bin/sh -c @command` in the release dir, in its own process group, with a
 * clean environment; a timeout (or shutdown, or a lost lease) kills the group. SN_OK if
 * it exited 0; otherwise the result is marked failed with the reason. */
static sn_rc_t s_run_command(s_op_t *op, const char *what, const char *command,
                             const char *release_id, const char *release_dir)
{
    const Sentinel__V1__Deploy *d = op->dep;
    const char *path_env = getenv("PATH");
    char *envp[] = {
        sn_strdupf("PATH=%s", path_env && *path_env ? path_env : "/usr/local/bin:/usr/bin:/bin"),
        sn_strdupf("SENTINEL_RELEASE_DIR=%s", release_dir),
        sn_strdupf("SENTINEL_DEPLOY_ID=%s", release_id),
        sn_strdupf("SENTINEL_COMMIT=%s", op->in->commit ? op->in->commit : ""),
        sn_strdupf("SENTINEL_ENVIRONMENT=%s", d->environment),
        sn_strdupf("SENTINEL_PROJECT=%s", d->project),
        sn_strdupf("SENTINEL_TARGET=%s", d->target),
        sn_strdupf("SENTINEL_OP=%s", what),
        NULL,
    };
    int timeout_ms = op->target->command_timeout_ms > 0 ? op->target->command_timeout_ms
                                                        : DEFAULT_COMMAND_TIMEOUT_MS;
    sn_rc_t rc = SN_ERROR;
    int64_t t0 = sn_mono_ms();
    pid_t pid = fork();
    if (pid < 0) {
        sn_deploy_op_fail(op->dop, true, "%s command: fork: %s", what, strerror(errno));
        goto out;
    }
    if (pid == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        dup2(STDERR_FILENO, STDOUT_FILENO); /* the command's output joins the agent's log */
        close_range(3, ~0U, 0);
        if (chdir(release_dir) != 0)
            _exit(126);
        char *argv[] = {"sh", "-c", (char *)command, NULL};
        execve("/bin/sh", argv, envp);
        _exit(127);
    }
    setpgid(pid, pid);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int status = 0;
    int64_t kill_at_ms = 0; /* SIGKILL after the grace, once SIGTERM went out */
    const char *why = NULL;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        int64_t now = sn_mono_ms();
        sn_deploy_op_renew(op->dop);
        if (!why) {
            if (now - t0 >= timeout_ms)
                why = "timed out";
            else if (sn_ctx_is_stopping(op->ctx))
                why = "interrupted by shutdown";
            else if (sn_deploy_op_is_lease_lost(op->dop))
                why = "stopped: job lease lost";
            if (why) {
                kill(-pid, SIGTERM);
                kill_at_ms = now + COMMAND_KILL_GRACE_MS;
            }
        } else if (now >= kill_at_ms) {
            kill(-pid, SIGKILL);
        }
        if (pidfd >= 0) {
            struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
            (void)poll(&pfd, 1, 100);
        } else {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (pidfd >= 0)
        close(pidfd);
    kill(-pid, SIGKILL); /* anything the command left running in its group */
    int64_t ms = sn_mono_ms() - t0;
    if (why) {
        sn_deploy_op_fail(op->dop, !sn_deploy_op_is_lease_lost(op->dop),
                          "%s command %s after %lldms", what, why, (long long)ms);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        sn_info(LOG_MODULE, "%s command ok target=%s release=%s ms=%lld", what, d->target,
                release_id, (long long)ms);
        rc = SN_OK;
    } else if (WIFEXITED(status)) {
        sn_deploy_op_fail(op->dop, false, "%s command exited with status %d", what,
                          WEXITSTATUS(status));
    } else {
        sn_deploy_op_fail(op->dop, false, "%s command killed by signal %d", what,
                          WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
out:
    for (size_t i = 0; envp[i]; i++)
        free(envp[i]);
    return rc;
}

/* ---- fetching an artifact from another host's gateway --------------------------------------- */

/* Keeps the job's lease while a long download runs; stops it on shutdown or a lost lease. */
static bool s_fetch_progress(void *arg, uint64_t received)
{
    (void)received;
    s_op_t *op = arg;
    sn_deploy_op_renew(op->dop);
    return !sn_deploy_op_is_lease_lost(op->dop) && !sn_ctx_is_stopping(op->ctx);
}

/* One attempt: downloads into a temp file in the store and imports it. SN_OK: stored;
 * SN_ERROR: a refusal no retry cures (4xx, over max_bytes), *why set; SN_AGAIN: a
 * transient failure or a hash mismatch, *why set (a retry may cure a truncation). */
static sn_rc_t s_fetch_once(s_op_t *op, sn_http_t *http, const char *url, const char *sha,
                            char *why, size_t why_len)
{
    const sn_artifact_source_config_t *src = &op->st->cfg->artifact_source;
    char rnd[17];
    sn_random_hex(rnd, 8);
    char *tmp = sn_strdupf("%s/.tmp-fetch-%s.tar", sn_artifact_dir(op->st->store), rnd);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(why, why_len, "cannot create a temp file in the artifact store: %s",
                 strerror(errno));
        free(tmp);
        return SN_AGAIN;
    }
    char *auth =
        src->token && *src->token ? sn_strdupf("Authorization: Bearer %s", src->token) : NULL;
    const char *headers[] = {"Accept: application/x-tar", auth, NULL};
    sn_http_request_t req = {
        .url = url,
        .headers = headers,
        .timeout_ms = src->timeout_ms > 0 ? src->timeout_ms : 600000,
        .connect_timeout_ms = src->connect_timeout_ms > 0 ? src->connect_timeout_ms : 10000,
        .max_body_bytes = FETCH_ERROR_BODY_BYTES,
    };
    uint64_t max_bytes = src->max_bytes > 0 ? (uint64_t)src->max_bytes : UINT64_C(1) << 33;
    sn_http_response_t resp;
    uint64_t written = 0;
    sn_rc_t rc = sn_http_download(http, &req, fd, max_bytes, s_fetch_progress, op, &written, &resp);
    if (auth) {
        sn_crypto_cleanse(auth, strlen(auth));
        free(auth);
    }
    bool is_answer = resp.status != 0 && (resp.status < 200 || resp.status >= 300);
    if (close(fd) != 0 && rc == SN_OK) {
        snprintf(why, why_len, "cannot write the download: %s", strerror(errno));
        rc = SN_AGAIN;
    } else if (is_answer || (rc == SN_OK && resp.status != 200)) {
        /* Judged by the status (its body may have passed the small error cap). 4xx: the
         * source will say the same again; 5xx and others may pass. */
        rc = resp.status >= 400 && resp.status < 500 ? SN_ERROR : SN_AGAIN;
        snprintf(why, why_len, "the artifact source answered %ld%s", resp.status,
                 resp.status == 404                         ? " (no such artifact there)"
                 : resp.status == 401 || resp.status == 403 ? " (the token was refused)"
                                                            : "");
    } else if (rc != SN_OK) {
        snprintf(why, why_len, "download failed: %s",
                 resp.is_too_large ? "larger than artifact_source.max_bytes"
                 : resp.error[0]   ? resp.error
                                   : "error");
    } else {
        char got[SN_ARTIFACT_SHA_LEN + 1] = "";
        rc = sn_artifact_import_file(op->st->store, tmp, sha, got);
        if (rc == SN_ERROR) {
            snprintf(why, why_len,
                     "hash mismatch: the download (%llu bytes) hashes to sha256=%s, not %s "
                     "(tampered or truncated; refused)",
                     (unsigned long long)written, got[0] ? got : "?", sha);
            rc = SN_AGAIN; /* a truncation may not happen twice */
        } else if (rc != SN_OK) {
            snprintf(why, why_len, "cannot store the download");
        }
    }
    sn_http_response_fini(&resp);
    if (rc != SN_OK)
        unlink(tmp);
    free(tmp);
    return rc;
}

/* Fetches artifact @sha from artifact_source into the store. SN_OK: it is there now;
 * otherwise the result is marked failed with the reason. */
static sn_rc_t s_fetch(s_op_t *op, const char *sha)
{
    const sn_artifact_source_config_t *src = &op->st->cfg->artifact_source;
    if (!src->url) {
        sn_deploy_op_fail(op->dop, false,
                          "artifact %s is not in the store (no artifact_source to fetch it from)",
                          sha);
        return SN_ERROR;
    }
    sn_http_t *http = sn_http_new();
    if (!http) {
        sn_deploy_op_fail(op->dop, true,
                          "artifact %s is not in the store and no HTTP client could be made", sha);
        return SN_AGAIN;
    }
    size_t n = strlen(src->url);
    while (n > 0 && src->url[n - 1] == '/')
        n--;
    char *url = sn_strdupf("%.*s/api/v1/artifacts/%s", (int)n, src->url, sha);
    char *shown = sn_http_redact_url(url);
    char why[512] = "";
    sn_rc_t rc = SN_AGAIN;
    bool was_mismatch = false;
    int64_t t0 = sn_mono_ms();
    for (int attempt = 1; attempt <= FETCH_ATTEMPTS && rc == SN_AGAIN; attempt++) {
        rc = s_fetch_once(op, http, url, sha, why, sizeof why);
        was_mismatch = rc == SN_AGAIN && strncmp(why, "hash mismatch", 13) == 0;
        if (rc != SN_OK)
            sn_warn(LOG_MODULE, "fetch sha256=%s from=%s attempt=%d/%d failed: %s", sha, shown,
                    attempt, FETCH_ATTEMPTS, why);
        if (sn_deploy_op_is_lease_lost(op->dop) || sn_ctx_is_stopping(op->ctx))
            break;
    }
    if (rc == SN_OK) {
        sn_info(LOG_MODULE, "fetched artifact sha256=%s from=%s ms=%lld", sha, shown,
                (long long)(sn_mono_ms() - t0));
    } else {
        /* A hash mismatch twice is a refusal (the source serves other bytes), not a blip. */
        sn_deploy_op_fail(op->dop, rc == SN_AGAIN && !was_mismatch,
                          "artifact %s not fetched from %s: %s", sha, shown, why);
    }
    free(shown);
    free(url);
    sn_http_destroy(&http);
    return rc == SN_OK ? SN_OK : SN_ERROR;
}
