/* sentinelctl silence: the notifier's silences (docs/notify-routing.md) through its
 * service notify.silence —
 *   silence add --match KEY=VALUE [--match ...] --for DURATION --comment TEXT
 *   silence list [--all]
 *   silence expire ID
 * The notifier validates matchers and durations (an Error reply exits 1); this file checks
 * only the shape of the command line (exit 2). */
#include "ctl.h"

#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_json.h"

#define S_SERVICE "notify.silence"
#define S_TIMEOUT_MS 10000
#define S_MAX_MATCHERS 16

enum { S_OPT_MATCH = 1200, S_OPT_FOR, S_OPT_COMMENT, S_OPT_ALL, S_OPT_BY };

typedef struct {
    const char *matchers[S_MAX_MATCHERS];
    size_t matcher_count;
    const char *duration;
    const char *comment;
    const char *by;
    bool is_all;
} s_args_t;

static int s_parse(ctl_opts_t *opts, int argc, char **argv, s_args_t *a);
static int s_call(const sn_config_t *cfg, Sentinel__V1__SilenceRequest *body,
                  sn_envelope_t **reply);
static void s_print(const ctl_opts_t *opts, const Sentinel__V1__SilenceList *list);
static void s_user(char *out, size_t len);

int ctl_cmd_silence(ctl_opts_t *opts, int argc, char **argv)
{
    s_args_t a;
    int code = s_parse(opts, argc, argv, &a);
    if (code >= 0)
        return code;
    if (opts->is_help) {
        printf("usage: sentinelctl silence add --match KEY=VALUE [--match ...] --for DURATION "
               "--comment TEXT [--by NAME]\n"
               "       sentinelctl silence list [--all]\n"
               "       sentinelctl silence expire ID\n"
               "  KEY is severity, project, environment, target, type (type=deploy.* matches a "
               "prefix) or alertname;\n"
               "  DURATION is like 90s, 30m, 2h, 1h30m or 1d; --all lists expired silences "
               "too.\n");
        return CTL_EXIT_OK;
    }
    int npos = argc - optind;
    const char *sub = npos >= 1 ? argv[optind] : NULL;
    if (!sub)
        return ctl_usage_error("silence", "expected 'add', 'list' or 'expire'");
    Sentinel__V1__SilenceRequest body = SENTINEL__V1__SILENCE_REQUEST__INIT;
    Sentinel__V1__Silence s = SENTINEL__V1__SILENCE__INIT;
    char user[64];
    if (strcmp(sub, "add") == 0) {
        if (npos != 1)
            return ctl_usage_error("silence", "add takes no positional arguments");
        if (a.matcher_count == 0)
            return ctl_usage_error("silence", "add needs at least one --match KEY=VALUE");
        if (!a.duration)
            return ctl_usage_error("silence", "add needs --for DURATION (e.g. 2h)");
        if (!a.comment || !a.comment[0])
            return ctl_usage_error("silence", "add needs --comment TEXT");
        for (size_t i = 0; i < a.matcher_count; i++)
            if (!strchr(a.matchers[i], '=') || a.matchers[i][0] == '=')
                return ctl_usage_error("silence", "--match takes KEY=VALUE, got '%s'",
                                       a.matchers[i]);
        if (!a.by) {
            s_user(user, sizeof user);
            a.by = user;
        }
        s.matchers = (char **)a.matchers;
        s.n_matchers = a.matcher_count;
        s.comment = (char *)a.comment;
        s.created_by = (char *)a.by;
        body.op = "create";
        body.silence = &s;
        body.duration = (char *)a.duration;
    } else if (strcmp(sub, "list") == 0) {
        if (npos != 1 || a.matcher_count || a.duration || a.comment)
            return ctl_usage_error("silence", "list takes only --all");
        body.op = "list";
        body.include_expired = a.is_all;
    } else if (strcmp(sub, "expire") == 0) {
        if (npos != 2)
            return ctl_usage_error("silence", "expire takes one silence ID");
        if (a.matcher_count || a.duration || a.comment)
            return ctl_usage_error("silence", "expire takes only the silence ID");
        body.op = "expire";
        body.id = argv[optind + 1];
    } else {
        return ctl_usage_error("silence", "unknown subcommand '%s' (add, list, expire)", sub);
    }
    sn_config_t cfg;
    if (ctl_config_load("silence", opts->config_path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    sn_envelope_t *reply = NULL;
    code = s_call(&cfg, &body, &reply);
    sn_config_fini(&cfg);
    if (code != CTL_EXIT_OK)
        return code;
    if (reply->body_case != SENTINEL__V1__ENVELOPE__BODY_SILENCE_LIST || !reply->silence_list) {
        ctl_err("silence", "%s answered something unexpected", S_SERVICE);
        sn_envelope_free(&reply);
        return CTL_EXIT_FAIL;
    }
    if (strcmp(sub, "add") == 0 && opts->format != CTL_FORMAT_JSON &&
        reply->silence_list->n_silences == 1)
        printf("%s\n", reply->silence_list->silences[0]->id);
    else
        s_print(opts, reply->silence_list);
    sn_envelope_free(&reply);
    return CTL_EXIT_OK;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static int s_parse(ctl_opts_t *opts, int argc, char **argv, s_args_t *a)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"match", required_argument, NULL, S_OPT_MATCH},
                                             {"for", required_argument, NULL, S_OPT_FOR},
                                             {"comment", required_argument, NULL, S_OPT_COMMENT},
                                             {"by", required_argument, NULL, S_OPT_BY},
                                             {"all", no_argument, NULL, S_OPT_ALL},
                                             {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof *a);
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "m:", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, "silence", c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        switch (c) {
        case 'm':
        case S_OPT_MATCH:
            if (a->matcher_count >= S_MAX_MATCHERS)
                return ctl_usage_error("silence", "at most %d --match", S_MAX_MATCHERS);
            a->matchers[a->matcher_count++] = optarg;
            break;
        case S_OPT_FOR:
            a->duration = optarg;
            break;
        case S_OPT_COMMENT:
            a->comment = optarg;
            break;
        case S_OPT_BY:
            a->by = optarg;
            break;
        case S_OPT_ALL:
            a->is_all = true;
            break;
        default:
            return ctl_bad_option("silence", c, argv);
        }
    }
    return -1;
}

static int s_call(const sn_config_t *cfg, Sentinel__V1__SilenceRequest *body, sn_envelope_t **reply)
{
    *reply = NULL;
    sn_rpc_t *rpc = ctl_rpc_new("silence", cfg);
    if (!rpc)
        return CTL_EXIT_FAIL;
    sn_source_t src;
    sn_source_init(&src, "ctl", "cli");
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &src, S_SERVICE, id);
    char user[64];
    s_user(user, sizeof user);
    sn_envelope_add_label(&env, "on_behalf_of", user);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_SILENCE_REQUEST;
    env.silence_request = body;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    sn_envelope_fini_labels(&env);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_rpc_call(rpc, S_SERVICE, bytes, len, S_TIMEOUT_MS, &out, &out_len, &nak);
    free(bytes);
    sn_rpc_destroy(&rpc);
    if (rc == SN_DECLINED) {
        ctl_err("silence", "%s refused: %s", S_SERVICE, sn_nak_reason_name(nak));
        return nak == SN_NAK_FORBIDDEN ? CTL_EXIT_AUTH : CTL_EXIT_FAIL;
    }
    if (rc != SN_OK) {
        ctl_err("silence", "%s: no answer within %d ms (is the notifier up?)", S_SERVICE,
                S_TIMEOUT_MS);
        return CTL_EXIT_FAIL;
    }
    *reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    if (!*reply) {
        ctl_err("silence", "%s: malformed reply", S_SERVICE);
        return CTL_EXIT_FAIL;
    }
    if ((*reply)->body_case == SENTINEL__V1__ENVELOPE__BODY_ERROR && (*reply)->error) {
        ctl_err("silence", "%s: %s", (*reply)->error->code ? (*reply)->error->code : "error",
                (*reply)->error->message ? (*reply)->error->message : "");
        sn_envelope_free(reply);
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

static void s_print(const ctl_opts_t *opts, const Sentinel__V1__SilenceList *list)
{
    if (opts->format == CTL_FORMAT_JSON) {
        json_t *doc = sn_json_from_message(&list->base);
        if (doc) {
            ctl_json_print(doc);
            json_decref(doc);
        }
        return;
    }
    static const char *const headers[] = {"ID",   "STATE",      "MATCHERS", "STARTS",
                                          "ENDS", "CREATED BY", "COMMENT",  NULL};
    ctl_table_t *t = ctl_table_new(headers);
    for (size_t i = 0; i < list->n_silences; i++) {
        const Sentinel__V1__Silence *s = list->silences[i];
        char matchers[512] = "", starts[48], ends[48];
        size_t used = 0;
        for (size_t k = 0; k < s->n_matchers && used < sizeof matchers; k++) {
            int w = snprintf(matchers + used, sizeof matchers - used, "%s%s", k ? "," : "",
                             s->matchers[k]);
            if (w < 0)
                break;
            used += (size_t)w;
        }
        ctl_format_time(s->starts_unix_ms, starts, sizeof starts);
        ctl_format_time(s->ends_unix_ms, ends, sizeof ends);
        const char *cells[] = {s->id ? s->id : "",
                               s->state ? s->state : "",
                               matchers,
                               starts,
                               ends,
                               s->created_by ? s->created_by : "",
                               s->comment ? s->comment : ""};
        ctl_table_add_row(t, cells, SN_ARRAY_LEN(cells));
    }
    ctl_table_print(t);
    ctl_table_destroy(&t);
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
