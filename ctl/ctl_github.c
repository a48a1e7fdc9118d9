/* sentinelctl github: `github rerun PROJECT RUN-ID` re-runs the failed jobs of a GitHub
 * Actions run (service github.rerun); `github dispatch PROJECT WORKFLOW REF [key=value...]`
 * starts a workflow_dispatch run (service github.dispatch). Both are answered by the
 * github-workflow role (docs/github.md); the exit code is 0 only when GitHub accepted. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl.h"
#include "sentinel/sn_envelope.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_rpc.h"

#define S_CMD "github"
#define S_DEFAULT_TIMEOUT_MS 120000 /* GitHub rate-limit waits are honoured by the role */
#define S_MAX_INPUTS 25

static int s_usage(void)
{
    printf("usage: sentinelctl github rerun PROJECT RUN-ID\n"
           "       sentinelctl github dispatch PROJECT WORKFLOW REF [key=value ...]\n"
           "  rerun     re-run the failed jobs of GitHub Actions run RUN-ID\n"
           "  dispatch  start WORKFLOW (id or file name, e.g. ci.yml) on REF with inputs\n"
           "options: --timeout MS (default %d), -o table|json, -c CONFIG\n",
           S_DEFAULT_TIMEOUT_MS);
    return CTL_EXIT_OK;
}

/* Calls @service with @req; prints the result; returns the exit code. */
static int s_call(ctl_opts_t *opts, const sn_config_t *cfg, const char *service,
                  Sentinel__V1__GithubRequest *req, int64_t timeout_ms)
{
    sn_rpc_t *rpc = ctl_rpc_new(S_CMD, cfg);
    if (!rpc)
        return CTL_EXIT_FAIL;
    sn_source_t src;
    sn_source_init(&src, "ctl", "cli");
    char id[SN_ID_LEN + 1];
    sn_envelope_t env;
    sn_envelope_stamp(&env, &src, service, id);
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_GITHUB_REQUEST;
    env.github_request = req;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t rc = sn_rpc_call(rpc, service, bytes, len, (int)timeout_ms, &out, &out_len, &nak);
    free(bytes);
    sn_rpc_destroy(&rpc);
    if (rc == SN_DECLINED) {
        ctl_err(S_CMD, "%s refused: %s", service, sn_nak_reason_name(nak));
        return nak == SN_NAK_FORBIDDEN ? CTL_EXIT_AUTH : CTL_EXIT_FAIL;
    }
    if (rc != SN_OK) {
        ctl_err(S_CMD, "%s: no answer within %" PRId64 " ms (is github-workflow running?)", service,
                timeout_ms);
        return CTL_EXIT_FAIL;
    }
    sn_envelope_t *reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    if (!reply || reply->body_case != SENTINEL__V1__ENVELOPE__BODY_GITHUB_RESULT) {
        if (reply && reply->body_case == SENTINEL__V1__ENVELOPE__BODY_ERROR)
            ctl_err(S_CMD, "%s: %s", reply->error->code, reply->error->message);
        else
            ctl_err(S_CMD, "%s: malformed reply", service);
        sn_envelope_free(&reply);
        return CTL_EXIT_FAIL;
    }
    const Sentinel__V1__GithubResult *res = reply->github_result;
    if (opts->format == CTL_FORMAT_JSON) {
        json_t *doc = sn_json_from_message(&res->base);
        if (doc) {
            ctl_json_print(doc);
            json_decref(doc);
        }
    } else if (res->ok) {
        if (strcmp(service, "github.rerun") == 0)
            printf("re-run of the failed jobs of run %" PRIu64 " requested\n",
                   res->workflow_run_id);
        else if (res->workflow_run_id)
            printf("dispatched: run %" PRIu64 " %s\n", res->workflow_run_id,
                   res->html_url ? res->html_url : "");
        else
            printf("dispatched\n");
    }
    int code = CTL_EXIT_OK;
    if (!res->ok) {
        ctl_err(S_CMD, "%s failed: %s%s", service, res->reason ? res->reason : "",
                res->is_transient ? " (transient: try again later)" : "");
        code = CTL_EXIT_FAIL;
    }
    sn_envelope_free(&reply);
    return code;
}

int ctl_cmd_github(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"timeout", required_argument, NULL, CTL_OPT_TIMEOUT},
                                             {NULL, 0, NULL, 0}};
    int64_t timeout_ms = S_DEFAULT_TIMEOUT_MS;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, S_CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == CTL_OPT_TIMEOUT) {
            if (sn_parse_i64(optarg, 1, 3600 * 1000, &timeout_ms) != SN_OK)
                return ctl_usage_error(S_CMD, "--timeout must be milliseconds, got '%s'", optarg);
            continue;
        }
        return ctl_bad_option(S_CMD, c, argv);
    }
    if (opts->is_help)
        return s_usage();
    int nargs = argc - optind;
    char **args = argv + optind;
    if (nargs < 1)
        return ctl_usage_error(S_CMD, "expected 'rerun' or 'dispatch'");
    Sentinel__V1__GithubRequest req = SENTINEL__V1__GITHUB_REQUEST__INIT;
    Sentinel__V1__GithubRequest__InputsEntry entries[S_MAX_INPUTS];
    Sentinel__V1__GithubRequest__InputsEntry *entry_ptrs[S_MAX_INPUTS];
    char *keys[S_MAX_INPUTS] = {0};
    const char *service;
    if (strcmp(args[0], "rerun") == 0) {
        if (nargs != 3)
            return ctl_usage_error(S_CMD, "usage: github rerun PROJECT RUN-ID");
        int64_t run_id = 0;
        if (sn_parse_i64(args[2], 1, INT64_MAX, &run_id) != SN_OK)
            return ctl_usage_error(S_CMD, "RUN-ID must be a positive number, got '%s'", args[2]);
        req.project = args[1];
        req.workflow_run_id = (uint64_t)run_id;
        service = "github.rerun";
    } else if (strcmp(args[0], "dispatch") == 0) {
        if (nargs < 4)
            return ctl_usage_error(S_CMD, "usage: github dispatch PROJECT WORKFLOW REF [k=v ...]");
        if (nargs - 4 > S_MAX_INPUTS)
            return ctl_usage_error(S_CMD, "at most %d inputs", S_MAX_INPUTS);
        req.project = args[1];
        req.workflow = args[2];
        req.ref = args[3];
        for (int i = 4; i < nargs; i++) {
            const char *eq = strchr(args[i], '=');
            if (!eq || eq == args[i]) {
                for (size_t k = 0; k < req.n_inputs; k++)
                    free(keys[k]);
                return ctl_usage_error(S_CMD, "input '%s' is not key=value", args[i]);
            }
            size_t n = req.n_inputs;
            sentinel__v1__github_request__inputs_entry__init(&entries[n]);
            keys[n] = sn_strndup(args[i], (size_t)(eq - args[i]));
            entries[n].key = keys[n];
            entries[n].value = (char *)(eq + 1);
            entry_ptrs[n] = &entries[n];
            req.n_inputs++;
        }
        req.inputs = req.n_inputs ? entry_ptrs : NULL;
        service = "github.dispatch";
    } else {
        return ctl_usage_error(S_CMD, "unknown subcommand '%s' (rerun, dispatch)", args[0]);
    }
    sn_config_t cfg;
    int code = CTL_EXIT_FAIL;
    if (ctl_config_load(S_CMD, opts->config_path, &cfg) == SN_OK) {
        code = s_call(opts, &cfg, service, &req, timeout_ms);
        sn_config_fini(&cfg);
    }
    for (size_t k = 0; k < req.n_inputs; k++)
        free(keys[k]);
    return code;
}
