/* The run commands of sentinelctl: reading runs from Redis (`runs`, `run show`, `run logs`,
 * `history`) and asking buildpilot to act (`deploy`, `approve`, `cancel`, `rollback`,
 * `freeze`, `unfreeze`) or build-validator to look at a push (`notify push`). Reads go
 * straight to Redis (docs/pipeline.md keys); every change goes through a service, so the
 * broker attaches the caller's principal and buildpilot alone decides. */
#include "ctl.h"

#include <ctype.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_rpc.h"

#define CTL_RUNS_TIMEOUT_MS 10000
#define CTL_DEPLOY_WAIT_MS (30 * 60 * 1000)

static volatile sig_atomic_t s_interrupted;

static void s_on_sigint(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

/* "RUN_SUCCEEDED" -> "succeeded" (static buffer per call site is fine: one line at a time). */
static const char *s_enum_name(const ProtobufCEnumDescriptor *desc, int value, const char *prefix,
                               char *buf, size_t len)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    if (!v) {
        snprintf(buf, len, "%d", value);
        return buf;
    }
    const char *name = v->name;
    size_t plen = strlen(prefix);
    if (strncmp(name, prefix, plen) == 0)
        name += plen;
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        buf[i] = (char)tolower((unsigned char)name[i]);
    buf[i] = '\0';
    return buf;
}

static const char *s_run_state(int state, char *buf, size_t len)
{
    return s_enum_name(&sentinel__v1__run_state__descriptor, state, "RUN_", buf, len);
}

static const char *s_step_state(int state, char *buf, size_t len)
{
    return s_enum_name(&sentinel__v1__step_state__descriptor, state, "STEP_", buf, len);
}

static bool s_is_terminal(int state)
{
    switch (state) {
    case SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED:
    case SENTINEL__V1__RUN_STATE__RUN_FAILED:
    case SENTINEL__V1__RUN_STATE__RUN_CANCELLED:
    case SENTINEL__V1__RUN_STATE__RUN_SUPERSEDED:
    case SENTINEL__V1__RUN_STATE__RUN_REJECTED:
    case SENTINEL__V1__RUN_STATE__RUN_ROLLED_BACK:
        return true;
    default:
        return false;
    }
}

/* Reads run:<id> (caller frees with protobuf_c_message_free_unpacked), or NULL. */
static Sentinel__V1__Run *s_load_run(redisContext *redis, const char *ns, const char *run_id)
{
    redisReply *r = redisCommand(redis, "HGET %srun:%s pb", ns, run_id);
    Sentinel__V1__Run *run = NULL;
    if (r && r->type == REDIS_REPLY_STRING && r->len > 0 && r->len <= SN_MAX_FRAME_BYTES)
        run = sentinel__v1__run__unpack(NULL, r->len, (const uint8_t *)r->str);
    if (r)
        freeReplyObject(r);
    return run;
}

/* Common option parsing for the run commands: global options plus a few of our own.
 * Returns -1 to continue, or an exit code. */
typedef struct {
    const char *project;
    const char *env;
    const char *ref;
    const char *sha;
    const char *to;
    int64_t limit;
    bool is_dry_run;
    bool is_detach;
    int64_t timeout_ms;
} s_args_t;

enum {
    S_OPT_PROJECT = 2000,
    S_OPT_ENV,
    S_OPT_REF,
    S_OPT_SHA,
    S_OPT_TO,
    S_OPT_LIMIT,
    S_OPT_DRY,
    S_OPT_DETACH,
    S_OPT_TIMEOUT
};

static int s_parse(ctl_opts_t *opts, const char *cmd, int argc, char **argv, s_args_t *a)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"project", required_argument, NULL, S_OPT_PROJECT},
                                             {"env", required_argument, NULL, S_OPT_ENV},
                                             {"ref", required_argument, NULL, S_OPT_REF},
                                             {"sha", required_argument, NULL, S_OPT_SHA},
                                             {"to", required_argument, NULL, S_OPT_TO},
                                             {"limit", required_argument, NULL, S_OPT_LIMIT},
                                             {"dry-run", no_argument, NULL, S_OPT_DRY},
                                             {"detach", no_argument, NULL, S_OPT_DETACH},
                                             {"timeout", required_argument, NULL, S_OPT_TIMEOUT},
                                             {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof *a);
    a->limit = 20;
    a->timeout_ms = CTL_DEPLOY_WAIT_MS;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "n:", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, cmd, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        switch (c) {
        case S_OPT_PROJECT:
            a->project = optarg;
            break;
        case S_OPT_ENV:
            a->env = optarg;
            break;
        case S_OPT_REF:
            a->ref = optarg;
            break;
        case S_OPT_SHA:
            a->sha = optarg;
            break;
        case S_OPT_TO:
            a->to = optarg;
            break;
        case S_OPT_DRY:
            a->is_dry_run = true;
            break;
        case S_OPT_DETACH:
            a->is_detach = true;
            break;
        case 'n':
        case S_OPT_LIMIT:
            if (sn_parse_i64(optarg, 1, 10000, &a->limit) != SN_OK)
                return ctl_usage_error(cmd, "--limit must be in [1, 10000], got '%s'", optarg);
            break;
        case S_OPT_TIMEOUT:
            if (sn_parse_i64(optarg, 1, 24 * 3600 * 1000, &a->timeout_ms) != SN_OK)
                return ctl_usage_error(cmd, "--timeout must be milliseconds, got '%s'", optarg);
            break;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    return -1;
}

/* The person at the keyboard: $SENTINEL_USER, else the login name, else the uid. */
static void s_user(char *out, size_t len)
{
    const char *env = getenv("SENTINEL_USER");
    struct passwd *pw = env && *env ? NULL : getpwuid(getuid());
    if (env && *env)
        snprintf(out, len, "%s", env);
    else if (pw && pw->pw_name)
        snprintf(out, len, "%s", pw->pw_name);
    else
        snprintf(out, len, "uid-%d", (int)getuid());
}

/* Sends @env to @service and decodes the reply. Returns an exit code; on success *reply
 * is the reply envelope (caller frees). */
static int s_call(const char *cmd, const sn_config_t *cfg, const char *service, sn_envelope_t *env,
                  sn_envelope_t **reply)
{
    *reply = NULL;
    sn_rpc_t *rpc = ctl_rpc_new(cmd, cfg);
    if (!rpc)
        return CTL_EXIT_FAIL;
    sn_source_t src;
    sn_source_init(&src, "ctl", "cli");
    char id[SN_ID_LEN + 1];
    const char *type = env->type;
    Sentinel__V1__Envelope stamped = *env;
    sn_envelope_stamp(&stamped, &src, type, id);
    stamped.body_case = env->body_case;
    stamped.trigger = env->trigger; /* oneof storage: copy through any member */
    /* Who asks. buildpilot honours it only where the broker cannot tell people apart
     * (no CURVE: every local caller is "anonymous"); with CURVE the key's principal rules. */
    char user[64];
    s_user(user, sizeof user);
    sn_envelope_add_label(&stamped, "on_behalf_of", user);
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&stamped, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_envelope_fini_labels(&stamped);
    sn_rc_t rc = sn_rpc_call(rpc, service, bytes, len, CTL_RUNS_TIMEOUT_MS, &out, &out_len, &nak);
    free(bytes);
    sn_rpc_destroy(&rpc);
    if (rc == SN_DECLINED) {
        ctl_err(cmd, "%s refused: %s", service, sn_nak_reason_name(nak));
        return nak == SN_NAK_FORBIDDEN ? CTL_EXIT_AUTH : CTL_EXIT_FAIL;
    }
    if (rc != SN_OK) {
        ctl_err(cmd, "%s: no answer within %d ms (is the mesh up?)", service, CTL_RUNS_TIMEOUT_MS);
        return CTL_EXIT_FAIL;
    }
    *reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    if (!*reply) {
        ctl_err(cmd, "%s: malformed reply", service);
        return CTL_EXIT_FAIL;
    }
    if ((*reply)->body_case == SENTINEL__V1__ENVELOPE__BODY_ERROR) {
        ctl_err(cmd, "%s: %s", (*reply)->error->code, (*reply)->error->message);
        int code = strcmp((*reply)->error->code, "forbidden") == 0 ? CTL_EXIT_AUTH : CTL_EXIT_FAIL;
        sn_envelope_free(reply);
        return code;
    }
    return CTL_EXIT_OK;
}

static void s_print_run_row(const Sentinel__V1__Run *run, ctl_table_t *t)
{
    char state[48], created[48], sha[13];
    s_run_state(run->state, state, sizeof state);
    ctl_format_time(run->created_unix_ms, created, sizeof created);
    snprintf(sha, sizeof sha, "%.12s", run->sha ? run->sha : "");
    const char *cells[] = {run->run_id,
                           run->project,
                           run->environment,
                           state,
                           sha,
                           created,
                           run->reason ? run->reason : ""};
    ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
}

static void s_print_json(const ProtobufCMessage *msg)
{
    json_t *doc = sn_json_from_message(msg);
    if (doc) {
        ctl_json_print(doc);
        json_decref(doc);
    }
}

/* ---- runs, run show, run logs, history ---------------------------------------------------- */

int ctl_cmd_runs(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, "runs", argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl runs [--project P] [--env E] [-n N]\n");
        return CTL_EXIT_OK;
    }
    sn_config_t cfg;
    if (ctl_config_load("runs", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    ctl_output_setup(opts->is_no_color);
    redisContext *redis = ctl_redis_connect("runs", &cfg);
    if (!redis) {
        sn_config_fini(&cfg);
        return CTL_EXIT_FAIL;
    }
    redisReply *ids = a.project ? redisCommand(redis, "ZREVRANGE %sruns:%s 0 %lld", cfg.namespace_,
                                               a.project, (long long)(a.limit * 4 - 1))
                                : redisCommand(redis, "ZREVRANGE %sruns:all 0 %lld", cfg.namespace_,
                                               (long long)(a.limit * 4 - 1));
    static const char *headers[] = {"RUN",    "PROJECT", "ENV",    "STATE",
                                    "COMMIT", "CREATED", "REASON", NULL};
    ctl_table_t *t = ctl_table_new(headers);
    int shown = 0;
    for (size_t i = 0; ids && ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
        if (shown >= a.limit)
            break;
        Sentinel__V1__Run *run = s_load_run(redis, cfg.namespace_, ids->element[i]->str);
        if (!run)
            continue;
        if (!a.env || strcmp(run->environment, a.env) == 0) {
            if (opts->format == CTL_FORMAT_JSON)
                s_print_json(&run->base);
            else
                s_print_run_row(run, t);
            shown++;
        }
        sentinel__v1__run__free_unpacked(run, NULL);
    }
    if (opts->format != CTL_FORMAT_JSON)
        ctl_table_print(t);
    ctl_table_destroy(&t);
    if (ids)
        freeReplyObject(ids);
    redisFree(redis);
    sn_config_fini(&cfg);
    return CTL_EXIT_OK;
}

static int s_run_show(ctl_opts_t *opts, const sn_config_t *cfg, redisContext *redis,
                      const char *run_id)
{
    Sentinel__V1__Run *run = s_load_run(redis, cfg->namespace_, run_id);
    if (!run) {
        ctl_err("run", "no run '%s'", run_id);
        return CTL_EXIT_FAIL;
    }
    if (opts->format == CTL_FORMAT_JSON) {
        s_print_json(&run->base);
    } else {
        char state[48];
        printf("run %s: %s/%s %s at %.12s (%s)\n", run->run_id, run->project, run->environment,
               s_run_state(run->state, state, sizeof state), run->sha ? run->sha : "",
               run->trigger ? run->trigger : "");
        if (run->reason && *run->reason)
            printf("reason: %s\n", run->reason);
        if (run->approval && run->approval->required)
            printf("approval: %s\n", run->approval->approved_by && *run->approval->approved_by
                                         ? run->approval->approved_by
                                         : "pending");
        static const char *headers[] = {"STEP", "STATE", "STARTED", "FINISHED", "REASON", NULL};
        ctl_table_t *t = ctl_table_new(headers);
        for (size_t i = 0; i < run->n_steps; i++) {
            Sentinel__V1__Step *s = run->steps[i];
            char st[32], started[48] = "", finished[48] = "";
            if (s->started_unix_ms)
                ctl_format_time(s->started_unix_ms, started, sizeof started);
            if (s->finished_unix_ms)
                ctl_format_time(s->finished_unix_ms, finished, sizeof finished);
            const char *cells[] = {s->name, s_step_state(s->state, st, sizeof st), started,
                                   finished, s->reason ? s->reason : ""};
            ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
        }
        ctl_table_print(t);
        ctl_table_destroy(&t);
        for (size_t i = 0; i < run->n_deploys; i++) {
            Sentinel__V1__Deploy *d = run->deploys[i];
            char phase[48];
            s_enum_name(&sentinel__v1__deploy_phase__descriptor, d->phase, "DEPLOY_", phase,
                        sizeof phase);
            printf("target %s: %s live=%s preview=%s%s%s\n", d->target, phase,
                   d->live_url ? d->live_url : "", d->preview_url ? d->preview_url : "",
                   d->error && *d->error ? " error=" : "", d->error ? d->error : "");
        }
    }
    sentinel__v1__run__free_unpacked(run, NULL);
    return CTL_EXIT_OK;
}

static int s_run_logs(const sn_config_t *cfg, const char *run_id)
{
    for (const char *p = run_id; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return ctl_usage_error("run", "bad run id '%s'", run_id);
    char *path = sn_strdupf("%s/builds/%s.log", cfg->state_dir, run_id);
    FILE *f = fopen(path, "r");
    if (!f) {
        ctl_err("run", "no build log for run '%s' (%s)", run_id, path);
        free(path);
        return CTL_EXIT_FAIL;
    }
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
    free(path);
    return CTL_EXIT_OK;
}

int ctl_cmd_run(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, "run", argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl run show RUN | run logs RUN\n");
        return CTL_EXIT_OK;
    }
    if (argc - optind != 2 || (strcmp(argv[optind], "show") && strcmp(argv[optind], "logs")))
        return ctl_usage_error("run", "expected 'show RUN' or 'logs RUN'");
    sn_config_t cfg;
    if (ctl_config_load("run", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    ctl_output_setup(opts->is_no_color);
    if (strcmp(argv[optind], "logs") == 0) {
        code = s_run_logs(&cfg, argv[optind + 1]);
    } else {
        redisContext *redis = ctl_redis_connect("run", &cfg);
        code = redis ? s_run_show(opts, &cfg, redis, argv[optind + 1]) : CTL_EXIT_FAIL;
        if (redis)
            redisFree(redis);
    }
    sn_config_fini(&cfg);
    return code;
}

int ctl_cmd_history(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, "history", argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl history PROJECT ENV\n");
        return CTL_EXIT_OK;
    }
    if (argc - optind != 2)
        return ctl_usage_error("history", "expected PROJECT ENV");
    const char *project = argv[optind], *env_name = argv[optind + 1];
    sn_config_t cfg;
    if (ctl_config_load("history", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    ctl_output_setup(opts->is_no_color);
    const sn_project_config_t *p = sn_config_project(&cfg, project);
    const sn_environment_config_t *e = p ? sn_config_environment(p, env_name) : NULL;
    if (!e) {
        ctl_err("history", "no environment %s/%s in %s", project, env_name, cfg.path);
        sn_config_fini(&cfg);
        return CTL_EXIT_FAIL;
    }
    redisContext *redis = ctl_redis_connect("history", &cfg);
    if (!redis) {
        sn_config_fini(&cfg);
        return CTL_EXIT_FAIL;
    }
    static const char *headers[] = {"TARGET", "#", "DEPLOY", "RUN", "COMMIT", "CREATED", NULL};
    ctl_table_t *t = ctl_table_new(headers);
    for (size_t ti = 0; e->targets && e->targets[ti]; ti++) {
        redisReply *r = redisCommand(redis, "LRANGE %srelease:%s:%s:%s 0 %lld", cfg.namespace_,
                                     project, env_name, e->targets[ti], (long long)a.limit - 1);
        for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            Sentinel__V1__ReleaseIdentity *rel = sentinel__v1__release_identity__unpack(
                NULL, r->element[i]->len, (const uint8_t *)r->element[i]->str);
            if (!rel)
                continue;
            if (opts->format == CTL_FORMAT_JSON) {
                s_print_json(&rel->base);
            } else {
                char idx[24], created[48], sha[13];
                snprintf(idx, sizeof idx, "%zu", i);
                snprintf(sha, sizeof sha, "%.12s", rel->commit);
                ctl_format_time(rel->created_unix_ms, created, sizeof created);
                const char *cells[] = {e->targets[ti], idx, rel->deploy_id,
                                       rel->run_id,    sha, created};
                ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
            }
            sentinel__v1__release_identity__free_unpacked(rel, NULL);
        }
        if (r)
            freeReplyObject(r);
    }
    if (opts->format != CTL_FORMAT_JSON)
        ctl_table_print(t);
    ctl_table_destroy(&t);
    redisFree(redis);
    sn_config_fini(&cfg);
    return CTL_EXIT_OK;
}

/* ---- changes through services ---------------------------------------------------------- */

/* Waits for @run_id to end, printing its state changes on stderr. */
static int s_wait_run(const char *cmd, const sn_config_t *cfg, const char *run_id,
                      int64_t timeout_ms)
{
    redisContext *redis = ctl_redis_connect(cmd, cfg);
    if (!redis)
        return CTL_EXIT_FAIL;
    struct sigaction sa = {.sa_handler = s_on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    int64_t deadline = sn_mono_ms() + timeout_ms;
    int last_state = -1;
    int code = CTL_EXIT_PENDING;
    while (!s_interrupted && sn_mono_ms() < deadline) {
        Sentinel__V1__Run *run = s_load_run(redis, cfg->namespace_, run_id);
        if (run) {
            if ((int)run->state != last_state) {
                char st[48];
                ctl_err(cmd, "run %s: %s%s%s", run_id, s_run_state(run->state, st, sizeof st),
                        run->reason && *run->reason ? ": " : "", run->reason ? run->reason : "");
                last_state = (int)run->state;
            }
            bool is_done = s_is_terminal(run->state);
            if (is_done)
                code = run->state == SENTINEL__V1__RUN_STATE__RUN_SUCCEEDED ? CTL_EXIT_OK
                                                                            : CTL_EXIT_WAITED;
            sentinel__v1__run__free_unpacked(run, NULL);
            if (is_done)
                break;
        }
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    redisFree(redis);
    if (s_interrupted)
        return CTL_EXIT_INTERRUPTED;
    if (code == CTL_EXIT_PENDING)
        ctl_err(cmd, "run %s still in progress after %lld ms", run_id, (long long)timeout_ms);
    return code;
}

/* Prints a run_ref reply and returns the run id (caller frees) or NULL. */
static char *s_print_ref(ctl_opts_t *opts, const sn_envelope_t *reply)
{
    if (reply->body_case != SENTINEL__V1__ENVELOPE__BODY_RUN_REF) {
        if (opts->format == CTL_FORMAT_JSON)
            s_print_json(&reply->base);
        return NULL;
    }
    const Sentinel__V1__RunRef *ref = reply->run_ref;
    if (opts->format == CTL_FORMAT_JSON) {
        s_print_json(&ref->base);
    } else {
        char st[48];
        printf("%s\t%s\t%s\n", ref->run_id, s_run_state(ref->state, st, sizeof st),
               ref->message ? ref->message : "");
    }
    return ref->run_id && *ref->run_id ? sn_strdup(ref->run_id) : NULL;
}

int ctl_cmd_deploy(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, "deploy", argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl deploy PROJECT ENV [--ref REF] [--sha SHA] [--dry-run] "
               "[--detach] [--timeout MS]\n"
               "exit: 0 live and verified, 3 the run failed, 8 still pending at --timeout\n");
        return CTL_EXIT_OK;
    }
    if (argc - optind != 2)
        return ctl_usage_error("deploy", "expected PROJECT ENV");
    sn_config_t cfg;
    if (ctl_config_load("deploy", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    ctl_output_setup(opts->is_no_color);
    Sentinel__V1__TriggerRequest trig = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    trig.project = argv[optind];
    trig.environment = argv[optind + 1];
    /* Without --ref: the head of the environment's branch. */
    const sn_project_config_t *proj = sn_config_project(&cfg, trig.project);
    const sn_environment_config_t *envc =
        proj ? sn_config_environment(proj, trig.environment) : NULL;
    if (!envc) {
        ctl_err("deploy", "no environment %s/%s in %s", trig.project, trig.environment, cfg.path);
        sn_config_fini(&cfg);
        return CTL_EXIT_FAIL;
    }
    char *branch_ref = sn_strdupf("refs/heads/%s", envc->branch);
    trig.ref = (char *)(a.ref ? a.ref : branch_ref);
    trig.sha = (char *)(a.sha ? a.sha : "");
    trig.trigger = "api";
    trig.dry_run = a.is_dry_run;
    sn_envelope_t env = SENTINEL__V1__ENVELOPE__INIT;
    env.type = "run.trigger";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &trig;
    sn_envelope_t *reply = NULL;
    code = s_call("deploy", &cfg, "run.trigger", &env, &reply);
    if (code == CTL_EXIT_OK) {
        char *run_id = s_print_ref(opts, reply);
        if (run_id && !a.is_detach && !a.is_dry_run)
            code = s_wait_run("deploy", &cfg, run_id, a.timeout_ms);
        free(run_id);
        sn_envelope_free(&reply);
    }
    free(branch_ref);
    sn_config_fini(&cfg);
    return code;
}

/* approve RUN | cancel RUN | rollback P E [--to RUN] | freeze P E | unfreeze P E */
static int s_control(ctl_opts_t *opts, int argc, char **argv, const char *action,
                     const char *service, bool is_env)
{
    s_args_t a;
    int code = s_parse(opts, action, argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf(is_env ? "usage: sentinelctl %s PROJECT ENV%s\n" : "usage: sentinelctl %s RUN%s\n",
               action, strcmp(action, "rollback") == 0 ? " [--to RUN]" : "");
        return CTL_EXIT_OK;
    }
    if (argc - optind != (is_env ? 2 : 1))
        return ctl_usage_error(action, is_env ? "expected PROJECT ENV" : "expected RUN");
    sn_config_t cfg;
    if (ctl_config_load(action, opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    ctl_output_setup(opts->is_no_color);
    Sentinel__V1__RunControl ctl = SENTINEL__V1__RUN_CONTROL__INIT;
    ctl.action = (char *)action;
    if (is_env) {
        ctl.project = argv[optind];
        ctl.environment = argv[optind + 1];
        ctl.to_run = (char *)(a.to ? a.to : "");
    } else {
        ctl.run_id = argv[optind];
    }
    sn_envelope_t env = SENTINEL__V1__ENVELOPE__INIT;
    env.type = (char *)service;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_CONTROL;
    env.control = &ctl;
    sn_envelope_t *reply = NULL;
    code = s_call(action, &cfg, service, &env, &reply);
    if (code == CTL_EXIT_OK) {
        char *run_id = s_print_ref(opts, reply);
        if (run_id && strcmp(action, "rollback") == 0 && !a.is_detach)
            code = s_wait_run(action, &cfg, run_id, a.timeout_ms);
        free(run_id);
        sn_envelope_free(&reply);
    }
    sn_config_fini(&cfg);
    return code;
}

int ctl_cmd_approve(ctl_opts_t *opts, int argc, char **argv)
{
    return s_control(opts, argc, argv, "approve", "run.approve", false);
}

int ctl_cmd_cancel(ctl_opts_t *opts, int argc, char **argv)
{
    return s_control(opts, argc, argv, "cancel", "run.cancel", false);
}

int ctl_cmd_rollback(ctl_opts_t *opts, int argc, char **argv)
{
    return s_control(opts, argc, argv, "rollback", "env.rollback", true);
}

int ctl_cmd_freeze(ctl_opts_t *opts, int argc, char **argv)
{
    return s_control(opts, argc, argv, "freeze", "env.freeze", true);
}

int ctl_cmd_unfreeze(ctl_opts_t *opts, int argc, char **argv)
{
    return s_control(opts, argc, argv, "unfreeze", "env.unfreeze", true);
}

/* notify push --project P --ref REF --sha SHA (for a post-receive hook). */
int ctl_cmd_notify(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, "notify", argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl notify push --project P --ref REF --sha SHA\n"
               "  in a git post-receive hook:\n"
               "    while read old new ref; do sentinelctl notify push --project P --ref \"$ref\" "
               "--sha \"$new\"; done\n");
        return CTL_EXIT_OK;
    }
    if (argc - optind != 1 || strcmp(argv[optind], "push") != 0)
        return ctl_usage_error("notify", "expected 'push'");
    if (!a.project || !a.ref || !a.sha)
        return ctl_usage_error("notify", "push needs --project, --ref and --sha");
    sn_config_t cfg;
    if (ctl_config_load("notify", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    Sentinel__V1__TriggerRequest trig = SENTINEL__V1__TRIGGER_REQUEST__INIT;
    trig.project = (char *)a.project;
    trig.ref = (char *)a.ref;
    trig.sha = (char *)a.sha;
    trig.trigger = "push";
    sn_envelope_t env = SENTINEL__V1__ENVELOPE__INIT;
    env.type = "source.push";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_TRIGGER;
    env.trigger = &trig;
    sn_envelope_t *reply = NULL;
    code = s_call("notify", &cfg, "source.push", &env, &reply);
    if (code == CTL_EXIT_OK) {
        if (opts->format == CTL_FORMAT_JSON)
            s_print_json(&reply->base);
        sn_envelope_free(&reply);
    }
    sn_config_fini(&cfg);
    return code;
}
