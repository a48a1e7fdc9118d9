/* github-workflow (BuildPilot): GitHub out (docs/github.md). Two halves:
 *
 * Services (job threads, one sn_github client shared): github.rerun (re-run the failed
 * jobs of an Actions run), github.dispatch (workflow_dispatch), github.feedback (the
 * failed jobs of a run, their conclusion, the failing step and the tail of the job's
 * log), github.policy (branch protection of the environment's branch, approving reviews
 * on the pull request that brought the commit, the commit's signature verification, and
 * the verdict against the environment's requirements). Bodies: GithubRequest ->
 * GithubResult (github.proto).
 *
 * The journal half: replicas consume the journal through the consumer group
 * "github-workflow" (each entry handled by one replica, reclaimed from a dead one) and,
 * for runs of projects with source_type github, write commit statuses (context
 * "<status_context>/<environment>": pending at run.started, success at run.succeeded,
 * failure at run.failed / run.rolled_back / run.rejected, error at run.cancelled /
 * run.superseded; target_url <public_url>/api/v1/runs/<id>) and Deployments (one per run
 * and environment at its first deploy.staged with status in_progress; success with
 * environment_url = the live URL at run.succeeded, and then `inactive` on the deployment
 * it replaced; failure at deploy.failed / deploy.rolled_back / a failed run). We send
 * auto_inactive false and mark the replaced deployment ourselves, because GitHub's
 * auto_inactive skips production environments.
 *
 * State in Redis (namespace-relative, 30 days): github:run:<run-id> hash (sha, repo,
 * project, environment, status_rank, deployment_id, deploy_rank, env_url);
 * github:env:<project>:<env> hash (deployment_id, run_id: the last successful one);
 * github:done:<event-id> (an event fully handled, 7 days). Ranks never go down, so an
 * event handled late (reclaimed from a dead replica) cannot turn a success back into
 * pending. A transient GitHub failure leaves the entry pending in the group (it comes
 * back when reclaimed); a permanent one is logged and acknowledged.
 *
 * Threads: the loop thread starts and stops the journal thread and defers requests;
 * the journal thread owns the reader and may block (every call has a timeout). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "sentinel/sn_agent.h"
#include "sentinel/sn_github.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"

#define S_ROLE "github-workflow"
#define S_MODULE "github"
#define S_GROUP "github-workflow"
#define S_REDIS_TIMEOUT_MS 1000
#define S_NEXT_WAIT_MS 200
#define S_MIN_CLAIM_IDLE_MS 5000
#define S_RUN_TTL_S "2592000" /* 30 days */
#define S_DONE_TTL_S "604800" /* 7 days */
#define S_DEFAULT_TAIL 4096
#define S_MAX_TAIL (64 * 1024)
#define S_MAX_FEEDBACK_JOBS 10
#define S_MAX_ITEMS 1000

/* Ranks of the commit status and of the deployment: they only go up. */
#define S_RANK_PENDING 1
#define S_RANK_FINAL 2

typedef enum { S_DONE, S_RETRY } s_outcome_t;

typedef struct {
    sn_ctx_t *ctx;
    sn_github_t *gh; /* NULL when `github:` is not usable: services refuse */
    char *public_url;
    const char *context;
    int claim_idle_ms;
    pthread_t thread;
    bool has_thread;
    int quit;                    /* atomic */
    sn_journal_reader_t *reader; /* journal thread only */
} s_state_t;

static sn_rc_t s_init(sn_ctx_t *ctx, void **state);
static void s_destroy(sn_ctx_t *ctx, void *state);
static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req);
static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *req, sn_envelope_t *reply,
                     const char **nak_reason);
static void *s_run(void *arg);
#define S_MAX_EVENT_AGE_MS (3600LL * 1000) /* older events are history, not news */

static s_outcome_t s_handle(s_state_t *st, const sn_envelope_t *env);
static bool s_should_stop(void *arg);

static const char *const s_services[] = {"github.rerun", "github.dispatch", "github.feedback",
                                         "github.policy", NULL};

const sn_role_t github_workflow_role = {
    .name = S_ROLE,
    .agent = "BuildPilot",
    .summary = "GitHub out: commit statuses, deployments, feedback, re-runs, dispatch, policy",
    .services = s_services,
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};

/* ---- lifecycle ------------------------------------------------------------------------- */

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->ctx = ctx;
    sn_github_opts_t o = {.should_stop = s_should_stop, .should_stop_arg = st};
    const sn_github_config_t *ghc = &cfg->github;
    bool has_credentials = (ghc->token && ghc->token[0]) || (ghc->app_id && ghc->app_id[0]);
    st->gh = has_credentials ? sn_github_new(ghc, &o) : NULL; /* logs why when it fails */
    if (!st->gh)
        sn_warn(S_MODULE, "github: no usable credentials; services refuse and statuses are "
                          "skipped");
    if (cfg->github.public_url && cfg->github.public_url[0])
        st->public_url = sn_strdup(cfg->github.public_url);
    else
        st->public_url = sn_strdupf("http://%s", cfg->gateway.listen && cfg->gateway.listen[0]
                                                     ? cfg->gateway.listen
                                                     : "127.0.0.1:8700");
    size_t n = strlen(st->public_url);
    while (n > 0 && st->public_url[n - 1] == '/')
        st->public_url[--n] = '\0';
    st->context = cfg->github.status_context && cfg->github.status_context[0]
                      ? cfg->github.status_context
                      : "sentinel";
    int ttl = cfg->runtime.agent_ttl_ms > 0 ? cfg->runtime.agent_ttl_ms : 15000;
    st->claim_idle_ms = 2 * ttl > S_MIN_CLAIM_IDLE_MS ? 2 * ttl : S_MIN_CLAIM_IDLE_MS;
    if (pthread_create(&st->thread, NULL, s_run, st) != 0) {
        sn_error(S_MODULE, "cannot start the journal thread: %s", strerror(errno));
        sn_github_destroy(&st->gh);
        free(st->public_url);
        free(st);
        return SN_ERROR;
    }
    st->has_thread = true;
    sn_info(S_MODULE, "github-workflow up: api=%s group=%s consumer=%s context=%s",
            cfg->github.api_base ? cfg->github.api_base : "(none)", S_GROUP, sn_ctx_instance(ctx),
            st->context);
    *state = st;
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    s_state_t *st = state;
    if (!st)
        return;
    __atomic_store_n(&st->quit, 1, __ATOMIC_RELEASE);
    if (st->has_thread)
        pthread_join(st->thread, NULL);
    sn_github_destroy(&st->gh);
    free(st->public_url);
    free(st);
}

static bool s_should_stop(void *arg)
{
    s_state_t *st = arg;
    return __atomic_load_n(&st->quit, __ATOMIC_ACQUIRE) || sn_ctx_is_stopping(st->ctx);
}

/* ---- services -------------------------------------------------------------------------------- */

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    const sn_envelope_t *env = sn_request_envelope(req);
    if (env->body_case != SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST || !env->github_request) {
        sn_info(S_MODULE, "refused %s: body is not a github_request", sn_request_service(req));
        sn_request_nak(ctx, req, "invalid");
        return;
    }
    sn_request_defer(ctx, req, s_job, state);
}

/* The result of a failed GitHub call. */
static void s_fail(Sentinel__V1__GithubResult *res, sn_request_t *req, sn_rc_t rc,
                   const sn_github_response_t *r, const char *what)
{
    res->ok = false;
    res->is_transient = rc == SN_AGAIN;
    res->is_permission_denied = r->is_permission_denied;
    res->status = (uint32_t)r->status;
    char *reason = sn_strdupf("%s: %s%s (status %ld)", what,
                              r->is_rate_limited ? "rate limited: " : "", r->message, r->status);
    res->reason = sn_request_strdup(req, reason);
    free(reason);
}

static void s_rerun(s_state_t *st, sn_request_t *req, const char *repo,
                    const Sentinel__V1__GithubRequest *in, Sentinel__V1__GithubResult *res)
{
    if (in->workflow_run_id == 0) {
        res->reason = "workflow_run_id is required";
        return;
    }
    char *path = sn_strdupf("/repos/%s/actions/runs/%" PRIu64 "/rerun-failed-jobs", repo,
                            in->workflow_run_id);
    sn_github_response_t r;
    sn_rc_t rc = sn_github_request(st->gh, "POST", path, NULL, 0, &r);
    if (rc == SN_OK) {
        res->ok = true;
        res->workflow_run_id = in->workflow_run_id;
        res->status = (uint32_t)r.status;
        sn_info(S_MODULE, "re-run of the failed jobs of %s run %" PRIu64 " requested", repo,
                in->workflow_run_id);
    } else {
        s_fail(res, req, rc, &r, "rerun-failed-jobs");
        sn_warn(S_MODULE, "re-run of %s run %" PRIu64 " refused: %s", repo, in->workflow_run_id,
                res->reason);
    }
    sn_github_response_fini(&r);
    free(path);
}

static void s_dispatch(s_state_t *st, sn_request_t *req, const char *repo,
                       const Sentinel__V1__GithubRequest *in, Sentinel__V1__GithubResult *res)
{
    if (!in->workflow || !in->workflow[0] || !in->ref || !in->ref[0]) {
        res->reason = "workflow and ref are required";
        return;
    }
    if (in->n_inputs > 25) {
        res->reason = "at most 25 inputs";
        return;
    }
    json_t *inputs = json_object();
    for (size_t i = 0; i < in->n_inputs; i++)
        json_object_set_new(inputs, in->inputs[i]->key, json_string(in->inputs[i]->value));
    json_t *body =
        json_pack("{s:s,s:o,s:b}", "ref", in->ref, "inputs", inputs, "return_run_details", 1);
    char *wf = sn_github_escape(in->workflow);
    char *path = sn_strdupf("/repos/%s/actions/workflows/%s/dispatches", repo, wf);
    free(wf);
    sn_github_response_t r;
    sn_rc_t rc = sn_github_request(st->gh, "POST", path, body, 0, &r);
    if (rc == SN_OK) {
        res->ok = true;
        res->status = (uint32_t)r.status;
        json_t *id = json_object_get(r.json, "workflow_run_id"); /* 200; 204 has none */
        if (json_is_integer(id))
            res->workflow_run_id = (uint64_t)json_integer_value(id);
        const char *u = json_string_value(json_object_get(r.json, "run_url"));
        const char *h = json_string_value(json_object_get(r.json, "html_url"));
        if (u)
            res->run_url = sn_request_strdup(req, u);
        if (h)
            res->html_url = sn_request_strdup(req, h);
        sn_info(S_MODULE, "workflow %s dispatched on %s ref=%s run=%" PRIu64, in->workflow, repo,
                in->ref, res->workflow_run_id);
    } else {
        s_fail(res, req, rc, &r, "dispatch");
        sn_warn(S_MODULE, "dispatch of %s on %s refused: %s", in->workflow, repo, res->reason);
    }
    sn_github_response_fini(&r);
    json_decref(body);
    free(path);
}

static bool s_is_failed_conclusion(const char *c)
{
    return c && (strcmp(c, "failure") == 0 || strcmp(c, "timed_out") == 0 ||
                 strcmp(c, "cancelled") == 0 || strcmp(c, "action_required") == 0 ||
                 strcmp(c, "startup_failure") == 0);
}

static void s_feedback(s_state_t *st, sn_request_t *req, const char *repo,
                       const Sentinel__V1__GithubRequest *in, Sentinel__V1__GithubResult *res)
{
    if (in->workflow_run_id == 0) {
        res->reason = "workflow_run_id is required";
        return;
    }
    size_t tail = in->log_tail_bytes ? in->log_tail_bytes : S_DEFAULT_TAIL;
    if (tail > S_MAX_TAIL)
        tail = S_MAX_TAIL;
    char *path = sn_strdupf("/repos/%s/actions/runs/%" PRIu64, repo, in->workflow_run_id);
    sn_github_response_t r;
    sn_rc_t rc = sn_github_request(st->gh, "GET", path, NULL, 0, &r);
    free(path);
    if (rc != SN_OK) {
        s_fail(res, req, rc, &r, "get run");
        sn_github_response_fini(&r);
        return;
    }
    const char *conclusion = json_string_value(json_object_get(r.json, "conclusion"));
    res->conclusion = sn_request_strdup(req, conclusion ? conclusion : "");
    sn_github_response_fini(&r);
    path = sn_strdupf("/repos/%s/actions/runs/%" PRIu64 "/jobs?filter=latest&per_page=100", repo,
                      in->workflow_run_id);
    json_t *jobs = NULL;
    rc = sn_github_list(st->gh, path, "jobs", S_MAX_ITEMS, &jobs, &r);
    free(path);
    if (rc != SN_OK) {
        s_fail(res, req, rc, &r, "list jobs");
        sn_github_response_fini(&r);
        return;
    }
    sn_github_response_fini(&r);
    res->jobs = sn_request_alloc(req, S_MAX_FEEDBACK_JOBS * sizeof *res->jobs);
    size_t i;
    json_t *job;
    json_array_foreach(jobs, i, job)
    {
        const char *jc = json_string_value(json_object_get(job, "conclusion"));
        if (!s_is_failed_conclusion(jc) || res->n_jobs >= S_MAX_FEEDBACK_JOBS)
            continue;
        Sentinel__V1__GithubJobFeedback *f = sn_request_alloc(req, sizeof *f);
        sentinel__v1__github_job_feedback__init(f);
        f->job_id = (uint64_t)json_integer_value(json_object_get(job, "id"));
        const char *name = json_string_value(json_object_get(job, "name"));
        const char *html = json_string_value(json_object_get(job, "html_url"));
        f->name = sn_request_strdup(req, name ? name : "");
        f->conclusion = sn_request_strdup(req, jc);
        f->html_url = sn_request_strdup(req, html ? html : "");
        size_t k;
        json_t *step;
        json_array_foreach(json_object_get(job, "steps"), k, step)
        {
            const char *sc = json_string_value(json_object_get(step, "conclusion"));
            if (s_is_failed_conclusion(sc)) {
                const char *sname = json_string_value(json_object_get(step, "name"));
                f->failed_step = sn_request_strdup(req, sname ? sname : "");
                f->failed_step_number =
                    (uint32_t)json_integer_value(json_object_get(step, "number"));
                break;
            }
        }
        char *lpath = sn_strdupf("/repos/%s/actions/jobs/%" PRIu64 "/logs", repo, f->job_id);
        char *text = NULL;
        sn_github_response_t lr;
        if (sn_github_fetch_tail(st->gh, lpath, tail, &text, &lr) == SN_OK) {
            f->log_tail = sn_request_strdup(req, text);
        } else {
            sn_warn(S_MODULE, "log of job %" PRIu64 " unavailable: %s", f->job_id, lr.message);
            f->log_tail = "";
        }
        free(text);
        sn_github_response_fini(&lr);
        free(lpath);
        res->jobs[res->n_jobs++] = f;
    }
    json_decref(jobs);
    res->workflow_run_id = in->workflow_run_id;
    res->ok = true;
    sn_info(S_MODULE, "feedback for %s run %" PRIu64 ": conclusion=%s failed_jobs=%zu", repo,
            in->workflow_run_id, res->conclusion, res->n_jobs);
}

/* Appends a violation line to the policy (request memory). */
static void s_violation(sn_request_t *req, Sentinel__V1__GithubPolicy *p, char **lines,
                        const char *text)
{
    lines[p->n_violations++] = sn_request_strdup(req, text);
}

static void s_policy(s_state_t *st, sn_request_t *req, const char *repo,
                     const sn_project_config_t *proj, const Sentinel__V1__GithubRequest *in,
                     Sentinel__V1__GithubResult *res)
{
    const sn_environment_config_t *envc =
        in->environment && in->environment[0] ? sn_config_environment(proj, in->environment) : NULL;
    if (!envc || !in->sha || !in->sha[0]) {
        res->reason = "a known environment and sha are required";
        return;
    }
    Sentinel__V1__GithubPolicy *p = sn_request_alloc(req, sizeof *p);
    sentinel__v1__github_policy__init(p);
    res->policy = p;
    const char *branch = envc->branch && envc->branch[0] ? envc->branch : envc->name;
    p->branch = sn_request_strdup(req, branch);
    sn_github_response_t r;
    sn_rc_t rc;

    /* 1. branch protection (404 = not protected, or no access to see it) */
    char *b = sn_github_escape(branch);
    char *path = sn_strdupf("/repos/%s/branches/%s/protection", repo, b);
    free(b);
    rc = sn_github_request(st->gh, "GET", path, NULL, 0, &r);
    free(path);
    if (rc == SN_OK) {
        p->branch_protected = true;
        json_t *prr = json_object_get(r.json, "required_pull_request_reviews");
        p->required_approving_review_count =
            (uint32_t)json_integer_value(json_object_get(prr, "required_approving_review_count"));
        p->enforce_admins =
            json_is_true(json_object_get(json_object_get(r.json, "enforce_admins"), "enabled"));
        p->required_signatures = json_is_true(
            json_object_get(json_object_get(r.json, "required_signatures"), "enabled"));
        json_t *ctxs =
            json_object_get(json_object_get(r.json, "required_status_checks"), "contexts");
        size_t n = json_array_size(ctxs);
        p->required_status_checks = sn_request_alloc(req, (n ? n : 1) * sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            const char *c = json_string_value(json_array_get(ctxs, i));
            if (c)
                p->required_status_checks[p->n_required_status_checks++] =
                    sn_request_strdup(req, c);
        }
    } else if (rc == SN_ERROR && r.status == 404) {
        p->branch_protected = false;
    } else {
        s_fail(res, req, rc, &r, "branch protection");
        sn_github_response_fini(&r);
        return;
    }
    sn_github_response_fini(&r);

    /* 2. the pull request that brought the commit, and its approving reviews */
    path = sn_strdupf("/repos/%s/commits/%s/pulls", repo, in->sha);
    json_t *pulls = NULL;
    rc = sn_github_list(st->gh, path, NULL, 100, &pulls, &r);
    free(path);
    if (rc != SN_OK) {
        s_fail(res, req, rc, &r, "pull requests of the commit");
        sn_github_response_fini(&r);
        return;
    }
    sn_github_response_fini(&r);
    json_t *pr = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(pulls, i, v)
    {
        const char *merge = json_string_value(json_object_get(v, "merge_commit_sha"));
        if (!pr || (merge && strcmp(merge, in->sha) == 0))
            pr = v; /* prefer the PR whose merge commit this is */
    }
    char **approvers = NULL;
    if (pr) {
        p->pull_number = (uint32_t)json_integer_value(json_object_get(pr, "number"));
        path = sn_strdupf("/repos/%s/pulls/%u/reviews?per_page=100", repo, p->pull_number);
        json_t *reviews = NULL;
        rc = sn_github_list(st->gh, path, NULL, S_MAX_ITEMS, &reviews, &r);
        free(path);
        if (rc != SN_OK) {
            s_fail(res, req, rc, &r, "reviews");
            sn_github_response_fini(&r);
            json_decref(pulls);
            return;
        }
        sn_github_response_fini(&r);
        /* the latest deciding review of each user counts (COMMENTED decides nothing) */
        json_t *latest = json_object();
        json_array_foreach(reviews, i, v)
        {
            const char *state = json_string_value(json_object_get(v, "state"));
            const char *login =
                json_string_value(json_object_get(json_object_get(v, "user"), "login"));
            if (!state || !login || strcmp(state, "COMMENTED") == 0 ||
                strcmp(state, "PENDING") == 0)
                continue;
            json_object_set_new(latest, login, json_string(state));
        }
        approvers = sn_request_alloc(req, (json_object_size(latest) + 1) * sizeof(char *));
        const char *login;
        json_object_foreach(latest, login, v)
        {
            if (strcmp(json_string_value(v), "APPROVED") == 0)
                approvers[p->n_approvers++] = sn_request_strdup(req, login);
        }
        p->approvers = approvers;
        p->approvals = (uint32_t)p->n_approvers;
        json_decref(latest);
        json_decref(reviews);
    }
    json_decref(pulls);

    /* 3. the commit's signature verification */
    path = sn_strdupf("/repos/%s/commits/%s", repo, in->sha);
    rc = sn_github_request(st->gh, "GET", path, NULL, 0, &r);
    free(path);
    if (rc != SN_OK) {
        s_fail(res, req, rc, &r, "commit");
        sn_github_response_fini(&r);
        return;
    }
    json_t *ver = json_object_get(json_object_get(r.json, "commit"), "verification");
    p->signature_verified = json_is_true(json_object_get(ver, "verified"));
    const char *reason = json_string_value(json_object_get(ver, "reason"));
    p->signature_reason = sn_request_strdup(req, reason ? reason : "");
    sn_github_response_fini(&r);

    /* the verdict against the environment's requirements */
    char **lines = sn_request_alloc(req, 3 * sizeof(char *));
    p->violations = lines;
    char buf[160];
    if (envc->require_branch_protection && !p->branch_protected) {
        snprintf(buf, sizeof buf, "branch %.80s is not protected", branch);
        s_violation(req, p, lines, buf);
    }
    if (envc->required_approvals > 0 && p->approvals < (uint32_t)envc->required_approvals) {
        snprintf(buf, sizeof buf, "%u approving review(s), %d required%s", p->approvals,
                 envc->required_approvals, p->pull_number ? "" : " (no pull request)");
        s_violation(req, p, lines, buf);
    }
    if (envc->require_signed && !p->signature_verified) {
        snprintf(buf, sizeof buf, "commit signature not verified (%.60s)", p->signature_reason);
        s_violation(req, p, lines, buf);
    }
    p->satisfied = p->n_violations == 0;
    res->ok = true;
    sn_info(S_MODULE,
            "policy of %s@%.12s for %s: protected=%d approvals=%u pr=%u signed=%d satisfied=%d",
            repo, in->sha, envc->name, p->branch_protected, p->approvals, p->pull_number,
            p->signature_verified, p->satisfied);
}

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq, sn_envelope_t *reply,
                     const char **nak_reason)
{
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__GithubRequest *in = sn_request_envelope(req)->github_request;
    const char *service = sn_request_service(req);
    Sentinel__V1__GithubResult *res = sn_request_alloc(req, sizeof *res);
    sentinel__v1__github_result__init(res);
    reply->type = "github.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT;
    reply->github_result = res;
    (void)nak_reason;
    const sn_project_config_t *proj =
        in->project && in->project[0] ? sn_config_project(sn_ctx_config(ctx), in->project) : NULL;
    if (!st->gh) {
        res->reason = "github is not configured on this agent";
        return SN_OK;
    }
    if (!proj || !proj->source_type || strcmp(proj->source_type, "github") != 0 ||
        !proj->github_repo || !proj->github_repo[0]) {
        res->reason = "unknown project, or not a github project";
        sn_info(S_MODULE, "%s refused: project %s is not a github project", service,
                in->project ? in->project : "");
        return SN_OK;
    }
    if (strcmp(service, "github.rerun") == 0)
        s_rerun(st, req, proj->github_repo, in, res);
    else if (strcmp(service, "github.dispatch") == 0)
        s_dispatch(st, req, proj->github_repo, in, res);
    else if (strcmp(service, "github.feedback") == 0)
        s_feedback(st, req, proj->github_repo, in, res);
    else
        s_policy(st, req, proj->github_repo, proj, in, res);
    return SN_OK;
}

/* ---- Redis --------------------------------------------------------------------------------- */

/* "<ns><prefix><a>" or "<ns><prefix><a>:<b>" (caller frees). */
static char *s_key(s_state_t *st, const char *prefix, const char *a, const char *b)
{
    const char *ns = sn_redis_ns(sn_ctx_redis(st->ctx));
    return b ? sn_strdupf("%s%s%s:%s", ns, prefix, a, b) : sn_strdupf("%s%s%s", ns, prefix, a);
}

/* Runs a command; SN_OK with *reply (not an error reply), else SN_AGAIN (logged once). */
static sn_rc_t s_cmd(s_state_t *st, redisReply **reply, int argc, const char **argv)
{
    *reply = NULL;
    if (sn_redis_cmd(sn_ctx_redis(st->ctx), SN_REDIS_MAIN, S_REDIS_TIMEOUT_MS, reply, argc, argv,
                     NULL) != SN_OK)
        return SN_AGAIN;
    if ((*reply)->type == REDIS_REPLY_ERROR) {
        sn_warn(S_MODULE, "redis refused %s: %s", argv[0], (*reply)->str);
        freeReplyObject(*reply);
        *reply = NULL;
        return SN_AGAIN;
    }
    return SN_OK;
}

/* HGET: a copy (caller frees) or NULL when absent; SN_AGAIN when Redis is away. */
static sn_rc_t s_hget(s_state_t *st, const char *key, const char *field, char **out)
{
    redisReply *r;
    *out = NULL;
    if (s_cmd(st, &r, 3, (const char *[]){"HGET", key, field}) != SN_OK)
        return SN_AGAIN;
    if (r->type == REDIS_REPLY_STRING)
        *out = sn_strndup(r->str, r->len);
    freeReplyObject(r);
    return SN_OK;
}

static sn_rc_t s_hset(s_state_t *st, const char *key, const char *field, const char *value)
{
    redisReply *r;
    if (s_cmd(st, &r, 4, (const char *[]){"HSET", key, field, value}) != SN_OK)
        return SN_AGAIN;
    freeReplyObject(r);
    if (s_cmd(st, &r, 3, (const char *[]){"EXPIRE", key, S_RUN_TTL_S}) != SN_OK)
        return SN_AGAIN;
    freeReplyObject(r);
    return SN_OK;
}

static int s_hget_int(s_state_t *st, const char *key, const char *field, sn_rc_t *rc)
{
    char *v = NULL;
    *rc = s_hget(st, key, field, &v);
    int64_t n = 0;
    if (v && sn_parse_i64(v, 0, 1000, &n) != SN_OK)
        n = 0;
    free(v);
    return (int)n;
}

/* ---- the journal half --------------------------------------------------------------------- */

static void *s_run(void *arg)
{
    s_state_t *st = arg;
    const sn_config_t *cfg = sn_ctx_config(st->ctx);
    sn_redis_opts_t ro = {
        .unix_path = cfg->redis.unix_path,
        .host = cfg->redis.host,
        .port = cfg->redis.port,
        .namespace_ = cfg->namespace_,
        .timeout_ms = cfg->redis.timeout_ms,
        .name = "github",
    };
    sn_journal_reader_opts_t jo = {
        .redis = &ro,
        /* A new group starts at the beginning of the journal (the process may start after
         * the first runs did: `sentinelctl up` starts every role at once); events older
         * than S_MAX_EVENT_AGE_MS are skipped, so a first start on an old journal does not
         * replay history onto GitHub. Later starts resume where the group is. */
        .cursor = "0",
        .batch = 16,
        .group = S_GROUP,
        .consumer = sn_ctx_instance(st->ctx),
        .claim_idle_ms = st->claim_idle_ms,
    };
    st->reader = sn_journal_reader_new(&jo);
    if (!st->reader) {
        sn_error(S_MODULE, "cannot start the journal reader");
        return NULL;
    }
    while (!s_should_stop(st)) {
        sn_journal_entry_t e;
        if (sn_journal_reader_next(st->reader, S_NEXT_WAIT_MS, &e) != SN_OK)
            continue;
        s_outcome_t out = S_DONE;
        if (!e.is_gap && e.env)
            out = s_handle(st, e.env);
        if (out == S_DONE && e.id[0] && sn_journal_reader_ack(st->reader, e.id) != SN_OK)
            sn_debug(S_MODULE, "ack of %s refused", e.id);
        sn_journal_entry_fini(&e);
    }
    sn_journal_reader_destroy(&st->reader);
    return NULL;
}

/* buildpilot's record of the run (run:<id> `pb`): *out (free with
 * sentinel__v1__run__free_unpacked) or NULL when absent; SN_AGAIN when Redis is away. */
static sn_rc_t s_load_run(s_state_t *st, const char *run_id, Sentinel__V1__Run **out)
{
    *out = NULL;
    char *rkey = s_key(st, "run:", run_id, NULL);
    redisReply *r;
    sn_rc_t rc = s_cmd(st, &r, 3, (const char *[]){"HGET", rkey, "pb"});
    free(rkey);
    if (rc != SN_OK)
        return SN_AGAIN;
    if (r->type == REDIS_REPLY_STRING)
        *out = sentinel__v1__run__unpack(NULL, r->len, (const uint8_t *)r->str);
    freeReplyObject(r);
    return SN_OK;
}

/* What one event is about. */
typedef struct {
    const char *run_id;
    const char *project;
    const char *environment;
    const char *repo;
    char *sha;     /* owned */
    char *run_key; /* owned: github:run:<id> */
} s_subject_t;

static void s_subject_fini(s_subject_t *s)
{
    free(s->sha);
    free(s->run_key);
}

/* Creates a commit status unless one of the same or a later rank was written. */
static s_outcome_t s_commit_status(s_state_t *st, s_subject_t *s, const char *state, int rank,
                                   const char *description)
{
    sn_rc_t rrc;
    int cur = s_hget_int(st, s->run_key, "status_rank", &rrc);
    if (rrc != SN_OK)
        return S_RETRY;
    if (cur >= rank && rank != 0)
        return S_DONE;
    char *context = sn_strdupf("%s/%s", st->context, s->environment);
    char *target = sn_strdupf("%s/api/v1/runs/%s", st->public_url, s->run_id);
    json_t *body = json_pack("{s:s,s:s,s:s,s:s}", "state", state, "target_url", target,
                             "description", description, "context", context);
    char *path = sn_strdupf("/repos/%s/statuses/%s", s->repo, s->sha);
    sn_github_response_t r;
    /* a status repeated is harmless: the latest per context counts */
    sn_rc_t rc = sn_github_request(st->gh, "POST", path, body, SN_GITHUB_RETRY_UNSAFE, &r);
    s_outcome_t out = S_DONE;
    if (rc == SN_OK) {
        char rk[8];
        snprintf(rk, sizeof rk, "%d", rank);
        if (s_hset(st, s->run_key, "status_rank", rk) != SN_OK)
            out = S_RETRY;
        sn_info(S_MODULE, "commit status %s on %s@%.12s context=%s run=%s", state, s->repo, s->sha,
                context, s->run_id);
    } else if (rc == SN_AGAIN) {
        sn_warn(S_MODULE, "commit status %s for run %s failed (will retry): %s", state, s->run_id,
                r.message);
        out = S_RETRY;
    } else {
        sn_error(S_MODULE, "commit status %s for run %s refused: status=%ld %s", state, s->run_id,
                 r.status, r.message);
    }
    sn_github_response_fini(&r);
    free(path);
    json_decref(body);
    free(target);
    free(context);
    return out;
}

/* Posts a deployment status on deployment @id. */
static sn_rc_t s_deployment_status(s_state_t *st, s_subject_t *s, const char *id, const char *state,
                                   const char *env_url, const char *description,
                                   sn_github_response_t *r)
{
    char *log_url = sn_strdupf("%s/api/v1/runs/%s", st->public_url, s->run_id);
    json_t *body =
        json_pack("{s:s,s:s,s:s,s:s,s:b}", "state", state, "log_url", log_url, "description",
                  description, "environment", s->environment, "auto_inactive", 0);
    if (env_url && env_url[0])
        json_object_set_new(body, "environment_url", json_string(env_url));
    char *path = sn_strdupf("/repos/%s/deployments/%s/statuses", s->repo, id);
    sn_rc_t rc = sn_github_request(st->gh, "POST", path, body, SN_GITHUB_RETRY_UNSAFE, r);
    if (rc == SN_OK)
        sn_info(S_MODULE, "deployment %s of %s/%s: %s%s%s", id, s->repo, s->environment, state,
                env_url && env_url[0] ? " url=" : "", env_url ? env_url : "");
    else
        sn_warn(S_MODULE, "deployment status %s on %s failed: status=%ld %s", state, id, r->status,
                r->message);
    free(path);
    json_decref(body);
    free(log_url);
    return rc;
}

/* Moves this run's deployment to @state (rank @rank) if it has one and is below it. */
static s_outcome_t s_deployment_final(s_state_t *st, s_subject_t *s, const char *state)
{
    char *id = NULL;
    if (s_hget(st, s->run_key, "deployment_id", &id) != SN_OK)
        return S_RETRY;
    if (!id)
        return S_DONE; /* nothing was deployed */
    sn_rc_t rrc;
    int cur = s_hget_int(st, s->run_key, "deploy_rank", &rrc);
    s_outcome_t out = S_DONE;
    if (rrc != SN_OK) {
        out = S_RETRY;
    } else if (cur < S_RANK_FINAL) {
        char *env_url = NULL;
        bool is_success = strcmp(state, "success") == 0;
        if (is_success && s_hget(st, s->run_key, "env_url", &env_url) != SN_OK) {
            free(id);
            return S_RETRY;
        }
        if (is_success && !env_url) {
            /* deploy.promoted may be handled by another replica after this event: the
             * run's record has the live URLs too */
            Sentinel__V1__Run *rec = NULL;
            if (s_load_run(st, s->run_id, &rec) != SN_OK) {
                free(id);
                return S_RETRY;
            }
            for (size_t i = 0; rec && i < rec->n_deploys && !env_url; i++)
                if (rec->deploys[i]->live_url && rec->deploys[i]->live_url[0])
                    env_url = sn_strdup(rec->deploys[i]->live_url);
            if (rec)
                sentinel__v1__run__free_unpacked(rec, NULL);
        }
        sn_github_response_t r;
        sn_rc_t rc = s_deployment_status(
            st, s, id, state, is_success ? env_url : NULL,
            is_success ? "deployed and verified by Sentinel" : "failed in Sentinel", &r);
        sn_github_response_fini(&r);
        free(env_url);
        if (rc == SN_AGAIN) {
            out = S_RETRY;
        } else if (rc == SN_OK) {
            if (s_hset(st, s->run_key, "deploy_rank", "2") != SN_OK)
                out = S_RETRY;
        }
        if (out == S_DONE && rc == SN_OK && is_success) {
            /* the deployment it replaces goes inactive; then it is the current one */
            char *ekey = s_key(st, "github:env:", s->project, s->environment);
            char *prev = NULL;
            if (s_hget(st, ekey, "deployment_id", &prev) != SN_OK) {
                out = S_RETRY;
            } else {
                if (prev && strcmp(prev, id) != 0) {
                    sn_rc_t prc = s_deployment_status(st, s, prev, "inactive", NULL,
                                                      "replaced by a newer deployment", &r);
                    if (prc == SN_AGAIN)
                        out = S_RETRY;
                    sn_github_response_fini(&r);
                }
                if (out == S_DONE && (s_hset(st, ekey, "deployment_id", id) != SN_OK ||
                                      s_hset(st, ekey, "run_id", s->run_id) != SN_OK))
                    out = S_RETRY;
            }
            free(prev);
            free(ekey);
        }
    }
    free(id);
    return out;
}

/* The first deploy.staged of a run: its deployment, in_progress. */
static s_outcome_t s_deployment_create(s_state_t *st, s_subject_t *s, const Sentinel__V1__Deploy *d)
{
    char *id = NULL;
    if (s_hget(st, s->run_key, "deployment_id", &id) != SN_OK)
        return S_RETRY;
    if (id) {
        free(id);
        return S_DONE; /* the run's deployment exists (an earlier target) */
    }
    bool is_production = strcmp(s->environment, "production") == 0;
    char *desc = sn_strdupf("Sentinel run %s", s->run_id);
    json_t *body =
        json_pack("{s:s,s:s,s:b,s:[],s:s,s:s,s:b,s:b,s:{s:s,s:s,s:s}}", "ref", s->sha, "task",
                  "deploy", "auto_merge", 0, "required_contexts", "environment", s->environment,
                  "description", desc, "transient_environment", 0, "production_environment",
                  is_production, "payload", "run_id", s->run_id, "deploy_id",
                  d->deploy_id ? d->deploy_id : "", "target", d->target ? d->target : "");
    free(desc);
    char *path = sn_strdupf("/repos/%s/deployments", s->repo);
    sn_github_response_t r;
    /* not repeated after a 5xx: that could create two deployments */
    sn_rc_t rc = sn_github_request(st->gh, "POST", path, body, 0, &r);
    free(path);
    json_decref(body);
    s_outcome_t out = S_DONE;
    if (rc == SN_OK && r.status == 201 && json_is_integer(json_object_get(r.json, "id"))) {
        char buf[32];
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(r.json, "id")));
        sn_github_response_fini(&r);
        if (s_hset(st, s->run_key, "deployment_id", buf) != SN_OK)
            return S_RETRY;
        sn_info(S_MODULE, "deployment %s created for %s@%.12s environment=%s run=%s", buf, s->repo,
                s->sha, s->environment, s->run_id);
        rc = s_deployment_status(st, s, buf, "in_progress", NULL, "Sentinel is deploying", &r);
        if (rc == SN_OK && s_hset(st, s->run_key, "deploy_rank", "1") != SN_OK)
            out = S_RETRY;
        if (rc == SN_AGAIN)
            out = S_RETRY;
    } else if (rc == SN_AGAIN || (rc == SN_OK && r.status == 202)) {
        sn_warn(S_MODULE, "deployment for run %s not created yet (status %ld): %s", s->run_id,
                r.status, r.message);
        out = S_RETRY;
    } else {
        sn_error(S_MODULE, "deployment for run %s refused: status=%ld %s", s->run_id, r.status,
                 r.message);
    }
    sn_github_response_fini(&r);
    return out;
}

/* Fills @s from the event; false when the event is not for us (not a github project). */
static bool s_subject(s_state_t *st, const sn_envelope_t *env, s_subject_t *s, bool *retry)
{
    memset(s, 0, sizeof *s);
    *retry = false;
    const Sentinel__V1__Run *run =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN ? env->run : NULL;
    const Sentinel__V1__Deploy *dep =
        env->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY ? env->deploy : NULL;
    if (run) {
        s->run_id = run->run_id;
        s->project = run->project;
        s->environment = run->environment;
    } else if (dep) {
        s->run_id = dep->run_id;
        s->project = dep->project;
        s->environment = dep->environment;
    } else {
        return false;
    }
    if (!s->run_id || !s->run_id[0] || !s->project || !s->environment || !s->environment[0])
        return false;
    const sn_project_config_t *proj = sn_config_project(sn_ctx_config(st->ctx), s->project);
    if (!proj || !proj->source_type || strcmp(proj->source_type, "github") != 0 ||
        !proj->github_repo || !proj->github_repo[0])
        return false;
    s->repo = proj->github_repo;
    s->run_key = s_key(st, "github:run:", s->run_id, NULL);
    if (run && run->sha && run->sha[0]) {
        s->sha = sn_strdup(run->sha);
        if (s_hset(st, s->run_key, "sha", run->sha) != SN_OK) {
            *retry = true;
            return false;
        }
        return true;
    }
    if (s_hget(st, s->run_key, "sha", &s->sha) != SN_OK) {
        *retry = true;
        return false;
    }
    if (!s->sha) { /* the run was not seen starting: its record tells */
        Sentinel__V1__Run *rec = NULL;
        if (s_load_run(st, s->run_id, &rec) != SN_OK) {
            *retry = true;
            return false;
        }
        if (rec && rec->sha && rec->sha[0])
            s->sha = sn_strdup(rec->sha);
        if (rec)
            sentinel__v1__run__free_unpacked(rec, NULL);
    }
    if (!s->sha) {
        sn_warn(S_MODULE, "%s for run %s: commit unknown; skipped", env->type, s->run_id);
        return false;
    }
    return true;
}

static s_outcome_t s_handle(s_state_t *st, const sn_envelope_t *env)
{
    const char *t = env->type ? env->type : "";
    if (strncmp(t, "run.", 4) != 0 && strncmp(t, "deploy.", 7) != 0)
        return S_DONE;
    if (env->time_unix_ms > 0 && sn_wall_ms() - env->time_unix_ms > S_MAX_EVENT_AGE_MS)
        return S_DONE;
    if (!st->gh)
        return S_DONE;
    s_subject_t s;
    bool retry = false;
    if (!s_subject(st, env, &s, &retry)) {
        s_subject_fini(&s);
        return retry ? S_RETRY : S_DONE;
    }
    char *done_key = s_key(st, "github:done:", env->id ? env->id : "", NULL);
    redisReply *r;
    s_outcome_t out = S_DONE;
    if (s_cmd(st, &r, 2, (const char *[]){"EXISTS", done_key}) != SN_OK) {
        out = S_RETRY;
        goto finish;
    }
    bool is_done = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (is_done)
        goto finish;
    const char *reason = env->body_case == SENTINEL__V1__ENVELOPE__BODY_RUN && env->run->reason &&
                                 env->run->reason[0]
                             ? env->run->reason
                             : NULL;
    char desc[141];
    if (strcmp(t, "run.started") == 0) {
        snprintf(desc, sizeof desc, "Sentinel run %.60s started", s.run_id);
        out = s_commit_status(st, &s, "pending", S_RANK_PENDING, desc);
    } else if (strcmp(t, "run.succeeded") == 0) {
        out = s_deployment_final(st, &s, "success");
        snprintf(desc, sizeof desc, "Sentinel run %.60s succeeded", s.run_id);
        if (out == S_DONE)
            out = s_commit_status(st, &s, "success", S_RANK_FINAL, desc);
    } else if (strcmp(t, "run.failed") == 0 || strcmp(t, "run.rolled_back") == 0 ||
               strcmp(t, "run.rejected") == 0) {
        out = s_deployment_final(st, &s, "failure");
        snprintf(desc, sizeof desc, "%.20s: %.110s", t + 4, reason ? reason : "see the run");
        if (out == S_DONE)
            out = s_commit_status(st, &s, "failure", S_RANK_FINAL, desc);
    } else if (strcmp(t, "run.cancelled") == 0 || strcmp(t, "run.superseded") == 0) {
        out = s_deployment_final(st, &s, "error");
        snprintf(desc, sizeof desc, "Sentinel run %.60s %.20s", s.run_id, t + 4);
        if (out == S_DONE)
            out = s_commit_status(st, &s, "error", S_RANK_FINAL, desc);
    } else if (strcmp(t, "deploy.staged") == 0) {
        out = s_deployment_create(st, &s, env->deploy);
    } else if (strcmp(t, "deploy.promoted") == 0 || strcmp(t, "deploy.verified") == 0) {
        const char *url = env->deploy->live_url;
        if (url && url[0] && s_hset(st, s.run_key, "env_url", url) != SN_OK)
            out = S_RETRY;
    } else if (strcmp(t, "deploy.failed") == 0 || strcmp(t, "deploy.rolled_back") == 0) {
        out = s_deployment_final(st, &s, "failure");
    }
    if (out == S_DONE &&
        s_cmd(st, &r, 5, (const char *[]){"SET", done_key, "1", "EX", S_DONE_TTL_S}) == SN_OK)
        freeReplyObject(r);
finish:
    free(done_key);
    s_subject_fini(&s);
    return out;
}
