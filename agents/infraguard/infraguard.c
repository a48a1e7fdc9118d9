/* infraguard: the policy gates of a run (ARCHITECTURE §7), served by every instance
 * on `gate.check` (docs/pipeline.md).
 *
 * Gate 1, before any build command: the project, the environment and its targets exist
 * in the loaded configuration; the ref's branch is the environment's branch; the commit
 * exists in the project's repository and, when the environment requires it, carries a
 * signature `git verify-commit` accepts. Gate 2, on the artifact: the archive in the
 * store is read directly (no extraction, so nothing of it can point outside), its
 * SHA-256 must match its name, and every regular file is scanned for leaked credentials
 * (secret_scan.h). A rejection lists every reason; a finding names file, line and kind,
 * never the value, in the reply as in the log.
 *
 * A GitHub project's commit is not in a local repository: gate 1 checks its branch and,
 * when the environment requires any (require_branch_protection, required_approvals,
 * require_signed), GitHub's policy facts from github-workflow's `github.policy` — asked
 * on the loop thread before the job runs. An unsatisfied verdict or a definite failure
 * (permission, unknown commit) rejects the run with GitHub's reasons; no answer yet (the
 * role not serving, GitHub rate-limited or down) NAKs the gate, which buildpilot asks
 * again until the gate's deadline: fail closed, never open.
 *
 * Both gates run on job threads (git and the scan block). The leader duty — decisions
 * about incidents outside runs — has no incident source yet; the hook logs leadership. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_log.h"

#include "sandbox.h"
#include "secret_scan.h"

#define S_ROLE "infraguard"
#define S_GIT_TIMEOUT_MS 30000
#define S_HEADS "refs/heads/"
#define S_MAX_REASONS 32
#define S_POLICY_DEADLINE_MS 30000

typedef struct {
    const sn_config_t *cfg;
    sn_artifact_t *store;
    char *git;
} s_ig_t;

/* The reasons of a result being built (strings owned by the request). */
typedef struct {
    sn_request_t *req;
    char *items[S_MAX_REASONS];
    size_t count;
} s_reasons_t;

/* What github.policy answered for a gate-1 request (allocated with the request). */
typedef struct {
    s_ig_t *st;
    sn_request_t *req;
    const char *run_id; /* borrowed from the request */
    bool is_asked;      /* the environment requires policy facts */
    bool is_answered;
    bool satisfied;
    char *reason; /* why no verdict (a NAK, a GitHub failure) */
    char **violations;
    size_t violation_count;
} s_policy_t;

static void s_reason(s_reasons_t *r, const char *fmt, ...) SN_PRINTF(2, 3);
static void s_ask_policy(sn_ctx_t *ctx, s_ig_t *st, sn_request_t *req,
                         const Sentinel__V1__GateRequest *g);
static sn_rc_t s_gate_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                          const char **nak_reason);
static bool s_hex_is_valid(const char *s, size_t n1, size_t n2);
static int s_git(s_ig_t *st, const char *repo, char *const *args);

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    s_ig_t *st = sn_calloc(1, sizeof *st);
    *state = st;
    st->cfg = sn_ctx_config(ctx);
    const char *state_dir = st->cfg->state_dir ? st->cfg->state_dir : "./var";
    char *art = st->cfg->artifact_dir ? sn_strdup(st->cfg->artifact_dir)
                                      : sn_strdupf("%s/artifacts", state_dir);
    st->store = sn_artifact_new(art, NULL);
    free(art);
    st->git = sandbox_find_program("git");
    if (!st->store || !st->git) {
        sn_error(S_ROLE, "%s", !st->git ? "git not found" : "artifact store unavailable");
        return SN_ERROR;
    }
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_ig_t *st = state;
    if (!st)
        return;
    sn_artifact_destroy(&st->store);
    free(st->git);
    free(st);
}

static void s_on_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    const Sentinel__V1__GateRequest *g =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_GATE_REQUEST ? env->gate_request : NULL;
    if (!g || (g->gate != 1 && g->gate != 2)) {
        sn_warn(S_ROLE, "gate request refused principal=%s reason=%s", sn_request_principal(req),
                g ? "unknown gate" : "no gate_request body");
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    s_ig_t *st = state;
    const sn_project_config_t *proj = g->project ? sn_config_project(st->cfg, g->project) : NULL;
    const sn_environment_config_t *e =
        proj && g->environment ? sn_config_environment(proj, g->environment) : NULL;
    if (g->gate == 1 && e && strcmp(proj->source_type, "github") == 0 &&
        (e->require_signed || e->require_branch_protection || e->required_approvals > 0)) {
        s_ask_policy(ctx, st, req, g);
        return;
    }
    s_policy_t *none = sn_request_alloc(req, sizeof *none);
    memset(none, 0, sizeof *none);
    none->st = st;
    sn_request_defer(ctx, req, s_gate_job, none);
}

static void s_on_policy(sn_ctx_t *ctx, void *arg, const sn_envelope_t *reply,
                        const char *nak_reason)
{
    s_policy_t *p = arg;
    sn_request_t *req = p->req;
    const Sentinel__V1__GithubResult *res =
        reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT
            ? reply->github_result
            : NULL;
    if (!res || (!res->ok && res->is_transient)) {
        /* github-workflow not (yet) serving, busy, or GitHub unavailable for now: no
         * verdict either way. NAK, so buildpilot asks again until the gate's deadline. */
        sn_warn(S_ROLE, "gate 1 waits for GitHub policy facts run=%s: %s", p->run_id,
                res          ? (res->reason ? res->reason : "transient")
                : nak_reason ? nak_reason
                             : "?");
        sn_request_nak(ctx, req, "overloaded");
        return;
    }
    if (!res->ok || !res->policy) {
        p->reason =
            sn_request_strdup(req, res->reason && *res->reason ? res->reason : "no policy facts");
    } else {
        p->is_answered = true;
        p->satisfied = res->policy->satisfied;
        size_t n = res->policy->n_violations;
        p->violations = sn_request_alloc(req, (n ? n : 1) * sizeof *p->violations);
        for (size_t i = 0; i < n; i++)
            p->violations[i] = sn_request_strdup(req, res->policy->violations[i]);
        p->violation_count = n;
    }
    sn_request_defer(ctx, req, s_gate_job, p);
}

/* Asks github.policy for the facts of @g's commit; the gate job runs when it answers. */
static void s_ask_policy(sn_ctx_t *ctx, s_ig_t *st, sn_request_t *req,
                         const Sentinel__V1__GateRequest *g)
{
    s_policy_t *p = sn_request_alloc(req, sizeof *p);
    memset(p, 0, sizeof *p);
    p->st = st;
    p->req = req;
    p->run_id = g->run_id ? g->run_id : "";
    p->is_asked = true;
    Sentinel__V1__GithubRequest gr = SENTINEL__V1__GITHUB_REQUEST__INIT;
    gr.project = g->project;
    gr.environment = g->environment;
    gr.sha = g->sha;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, sn_ctx_source(ctx), "github.request", id);
    env.correlation_id = g->run_id;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST;
    env.github_request = &gr;
    int64_t left = sn_request_deadline_ms(req) - sn_mono_ms() - 1000;
    int deadline = left > S_POLICY_DEADLINE_MS ? S_POLICY_DEADLINE_MS
                   : left < 1000               ? 1000
                                               : (int)left;
    sn_ctx_call(ctx, "github.policy", &env, deadline, 1, s_on_policy, p);
}

static void s_on_tick(sn_ctx_t *ctx, void *state, bool is_leader)
{
    /* The leader's duty: incidents outside runs. No incident source exists yet. */
    (void)ctx;
    (void)state;
    (void)is_leader;
}

static void s_on_leadership(sn_ctx_t *ctx, void *state, bool is_leader, uint64_t fence)
{
    sn_info(S_ROLE, "%s incident duty fence=%llu", is_leader ? "took" : "left",
            (unsigned long long)fence);
}

/* ---- gate 1 ------------------------------------------------------------------------- */

static void s_gate1(s_ig_t *st, const Sentinel__V1__GateRequest *g, const s_policy_t *policy,
                    s_reasons_t *r)
{
    const sn_project_config_t *proj = g->project ? sn_config_project(st->cfg, g->project) : NULL;
    if (!proj) {
        s_reason(r, "unknown project '%s'", g->project ? g->project : "");
        return;
    }
    const sn_environment_config_t *env =
        g->environment ? sn_config_environment(proj, g->environment) : NULL;
    if (!env) {
        s_reason(r, "unknown environment '%s' in project %s", g->environment ? g->environment : "",
                 proj->name);
        return;
    }
    for (char **t = env->targets; t && *t; t++)
        if (!sn_config_target(st->cfg, *t))
            s_reason(r, "environment %s names unknown target '%s'", env->name, *t);
    const char *ref = g->ref ? g->ref : "";
    const char *branch = ref;
    if (strncmp(ref, S_HEADS, strlen(S_HEADS)) == 0)
        branch = ref + strlen(S_HEADS);
    else if (strncmp(ref, "refs/", 5) == 0)
        branch = NULL;
    if (!branch || !*branch)
        s_reason(r, "ref '%s' is not a branch", ref);
    else if (!env->branch || strcmp(branch, env->branch) != 0)
        s_reason(r, "branch '%s' does not deploy to %s (its branch is '%s')", branch, env->name,
                 env->branch ? env->branch : "");
    if (!s_hex_is_valid(g->sha, 40, 64)) {
        s_reason(r, "malformed commit id");
        return;
    }
    if (strcmp(proj->source_type, "github") == 0) {
        if (!policy->is_asked)
            return;
        if (!policy->is_answered) {
            s_reason(r, "GitHub policy facts unavailable (%s): %s requires them", policy->reason,
                     env->name);
            return;
        }
        for (size_t i = 0; i < policy->violation_count; i++)
            s_reason(r, "%s", policy->violations[i]);
        if (!policy->satisfied && policy->violation_count == 0)
            s_reason(r, "GitHub policy of %s not satisfied", env->name);
        return;
    }
    const char *repo = proj->repo && *proj->repo ? proj->repo : g->source_path;
    if (!repo || !*repo) {
        s_reason(r, "project %s has no repository", proj->name);
        return;
    }
    char *obj = sn_strdupf("%s^{commit}", g->sha);
    char *exists[] = {"cat-file", "-e", obj, NULL};
    int rc = s_git(st, repo, exists);
    free(obj);
    if (rc != 0) {
        s_reason(r, "commit %s not found in %s", g->sha, repo);
        return;
    }
    if (env->require_signed) {
        char *verify[] = {"verify-commit", g->sha, NULL};
        if (s_git(st, repo, verify) != 0)
            s_reason(r, "commit %s has no valid signature (require_signed)", g->sha);
    }
}

/* ---- gate 2 ------------------------------------------------------------------------- */

static void s_gate2(s_ig_t *st, const Sentinel__V1__GateRequest *g, s_reasons_t *r,
                    secret_findings_t *f)
{
    if (!sn_artifact_sha_is_valid(g->artifact_sha256)) {
        s_reason(r, "malformed artifact hash");
        return;
    }
    if (!sn_artifact_exists(st->store, g->artifact_sha256)) {
        s_reason(r, "artifact %s is not in the store", g->artifact_sha256);
        return;
    }
    char *path = sn_artifact_path(st->store, g->artifact_sha256);
    char sha[65] = "";
    sn_rc_t rc = secret_scan_tar(path, NULL, f, sha);
    free(path);
    if (rc != SN_OK) {
        s_reason(r, "artifact %s is not a readable archive", g->artifact_sha256);
        return;
    }
    if (strcmp(sha, g->artifact_sha256) != 0) {
        s_reason(r, "artifact %s is corrupted (its content hashes differently)",
                 g->artifact_sha256);
        return;
    }
    for (size_t i = 0; i < f->count; i++)
        s_reason(r, "leaked credential (%s) in %s:%u", f->items[i].kind, f->items[i].file,
                 f->items[i].line);
    if (f->is_truncated)
        s_reason(r, "more leaked credentials than listed");
}

static sn_rc_t s_gate_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq,
                          sn_envelope_t *reply, const char **nak_reason)
{
    const s_policy_t *policy = state;
    s_ig_t *st = policy->st;
    sn_request_t *req = (sn_request_t *)creq;
    const Sentinel__V1__GateRequest *g = sn_request_envelope(req)->gate_request;
    const char *run = g->run_id ? g->run_id : "";
    s_reasons_t r = {.req = req};
    secret_findings_t f;
    secret_findings_init(&f);
    if (g->gate == 1)
        s_gate1(st, g, policy, &r);
    else
        s_gate2(st, g, &r, &f);

    Sentinel__V1__GateResult *res = sn_request_alloc(req, sizeof *res);
    sentinel__v1__gate_result__init(res);
    res->ok = r.count == 0;
    res->n_reasons = r.count;
    res->reasons = sn_request_alloc(req, (r.count ? r.count : 1) * sizeof *res->reasons);
    memcpy(res->reasons, r.items, r.count * sizeof *res->reasons);
    res->n_findings = f.count;
    res->findings = sn_request_alloc(req, (f.count ? f.count : 1) * sizeof *res->findings);
    for (size_t i = 0; i < f.count; i++) {
        Sentinel__V1__Finding *fi = sn_request_alloc(req, sizeof *fi);
        sentinel__v1__finding__init(fi);
        fi->file = sn_request_strdup(req, f.items[i].file);
        fi->line = f.items[i].line;
        fi->kind = sn_request_strdup(req, f.items[i].kind);
        res->findings[i] = fi;
        sn_warn(S_ROLE, "gate 2 finding run=%s kind=%s file=%s line=%u", run, fi->kind, fi->file,
                fi->line);
    }
    if (res->ok)
        sn_info(S_ROLE, "gate %u passed run=%s project=%s", g->gate, run,
                g->project ? g->project : "");
    else
        sn_info(S_ROLE, "gate %u rejected run=%s project=%s reasons=%zu first=\"%s\"", g->gate, run,
                g->project ? g->project : "", r.count, r.items[0]);
    secret_findings_fini(&f);
    reply->type = "gate.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT;
    reply->gate_result = res;
    return SN_OK;
}

/* ---- helpers ------------------------------------------------------------------------ */

static void s_reason(s_reasons_t *r, const char *fmt, ...)
{
    if (r->count >= S_MAX_REASONS)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r->items[r->count++] = sn_request_strdup(r->req, buf);
}

static bool s_hex_is_valid(const char *s, size_t n1, size_t n2)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n != n1 && n != n2)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* Runs `git -C @repo @args...` (no shell); its exit status, or -1 if it did not exit. */
static int s_git(s_ig_t *st, const char *repo, char *const *args)
{
    char *argv[16];
    size_t n = 0;
    argv[n++] = st->git;
    argv[n++] = "-C";
    argv[n++] = (char *)repo;
    for (size_t i = 0; args[i] && n < SN_ARRAY_LEN(argv) - 1; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    sandbox_opts_t o = {.out_fd = -1, .timeout_ms = S_GIT_TIMEOUT_MS};
    sandbox_result_t res;
    if (sandbox_run(argv, &o, &res) != SN_OK)
        return -1;
    int code = res.end == SANDBOX_EXITED ? res.code : -1;
    sandbox_result_fini(&res);
    return code;
}

const sn_role_t infraguard_role = {
    .name = S_ROLE,
    .agent = "InfraGuard",
    .summary = "policy gates: branch, signature and config before the build; leaked "
               "credentials in the artifact",
    .services = (const char *const[]){"gate.check", NULL},
    .leadership = SN_LEADERSHIP_DUTY,
    .credit = 2,
    .init = s_init,
    .on_request = s_on_request,
    .on_tick = s_on_tick,
    .on_leadership = s_on_leadership,
    .destroy = s_destroy,
};
