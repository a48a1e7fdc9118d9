/* `sentinelctl call SERVICE --data JSON [--timeout MS]`: one service call through the
 * broker (docs/protocol.md §4) with sn_rpc_call, printing the reply envelope as JSON.
 *
 * --data is a JSON object. When every key in it names an Envelope field (proto or JSON
 * name: type, subject, labels, correlationId, a body such as note...), it is the
 * envelope, converted by sn_json; any other object is free JSON and travels as the text
 * of a Note body. What is not set is stamped here: id, source, time, incarnation, seq,
 * and the type, which defaults to the service name. */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_json.h"
#include "sentinel/sn_rpc.h"

#define CMD "call"
#define CTL_CALL_DEFAULT_TIMEOUT_MS 5000
#define CTL_CALL_MAX_TIMEOUT_MS 3600000

static void s_help(void);
static sn_envelope_t *s_build(const char *service, json_t *data, int *rc);
static bool s_is_envelope_shaped(json_t *data);
static bool s_is_camel_of(const char *key, const char *name);
static void s_set_string(char **slot, const char *value);

int ctl_cmd_call(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"data", required_argument, NULL, CTL_OPT_DATA},
                                             {"timeout", required_argument, NULL, CTL_OPT_TIMEOUT},
                                             {NULL, 0, NULL, 0}};
    const char *data_text = NULL;
    const char *timeout_text = NULL;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS "d:", longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == CTL_OPT_DATA || c == 'd')
            data_text = optarg;
        else if (c == CTL_OPT_TIMEOUT)
            timeout_text = optarg;
        else
            return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    if (optind >= argc)
        return ctl_usage_error(CMD, "missing SERVICE");
    const char *service = argv[optind++];
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!sn_proto_name_ok(service, strlen(service)))
        return ctl_usage_error(CMD, "bad service name '%s'", service);
    if (!data_text)
        return ctl_usage_error(CMD, "missing --data JSON");
    int64_t timeout_ms = CTL_CALL_DEFAULT_TIMEOUT_MS;
    if (timeout_text &&
        sn_parse_i64(timeout_text, 1, CTL_CALL_MAX_TIMEOUT_MS, &timeout_ms) != SN_OK)
        return ctl_usage_error(CMD, "--timeout must be milliseconds in [1, %d], got '%s'",
                               CTL_CALL_MAX_TIMEOUT_MS, timeout_text);
    json_error_t jerr;
    json_t *data = json_loads(data_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!data)
        return ctl_usage_error(CMD, "--data is not JSON: %d:%d: %s", jerr.line, jerr.column,
                               jerr.text);
    if (!json_is_object(data)) {
        json_decref(data);
        return ctl_usage_error(CMD, "--data must be a JSON object");
    }
    ctl_output_setup(opts->is_no_color);

    int rc = CTL_EXIT_OK;
    sn_envelope_t *req = s_build(service, data, &rc);
    json_decref(data);
    if (!req)
        return rc;
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(req, &len);
    protobuf_c_message_free_unpacked(&req->base, NULL);

    sn_config_t cfg;
    if (ctl_config_load(CMD, opts->config_path, &cfg) != SN_OK) {
        free(bytes);
        return CTL_EXIT_FAIL;
    }
    rc = CTL_EXIT_FAIL;
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    sn_rpc_t *rpc = ctl_rpc_new(CMD, &cfg);
    if (!rpc)
        goto out;
    sn_nak_reason_t nak = SN_NAK_NONE;
    sn_rc_t r = sn_rpc_call(rpc, service, bytes, len, (int)timeout_ms, &reply, &reply_len, &nak);
    if (r == SN_DECLINED) {
        ctl_err(CMD, "%s: NAK %s", service, sn_nak_reason_name(nak));
        rc = nak == SN_NAK_FORBIDDEN ? CTL_EXIT_AUTH : CTL_EXIT_FAIL;
        goto out;
    }
    if (r == SN_AGAIN) {
        ctl_err(CMD, "%s: no answer within %lldms (broker %s)", service, (long long)timeout_ms,
                cfg.broker.rpc);
        goto out;
    }
    if (r != SN_OK) {
        ctl_err(CMD, "%s: the request was refused locally", service);
        goto out;
    }
    const char *why = NULL;
    sn_envelope_t *env = sn_envelope_unpack(reply, reply_len, SN_MAX_FRAME_BYTES, &why);
    if (!env) {
        ctl_err(CMD, "%s: the reply is not a valid envelope (%s)", service, why ? why : "?");
        goto out;
    }
    char *text = sn_json_dumps_message(
        &env->base, opts->format == CTL_FORMAT_JSON ? JSON_COMPACT : JSON_INDENT(2));
    if (!text) {
        ctl_err(CMD, "%s: the reply cannot be rendered as JSON", service);
        sn_envelope_free(&env);
        goto out;
    }
    printf("%s\n", text);
    fflush(stdout);
    free(text);
    sn_envelope_free(&env);
    rc = CTL_EXIT_OK;
out:
    sn_rpc_destroy(&rpc);
    free(reply);
    free(bytes);
    sn_config_fini(&cfg);
    return rc;
}

static void s_help(void)
{
    printf(
        "usage: sentinelctl call SERVICE --data JSON [--timeout MS]\n\n"
        "Calls SERVICE through the broker (broker.rpc of the config) and prints the\n"
        "reply envelope as JSON (indented; one line with -o json).\n"
        "  -d, --data JSON   a JSON object: either envelope fields, by their JSON names\n"
        "                    {\"type\", \"subject\", \"correlationId\", \"causationId\",\n"
        "                    \"labels\": {..}, \"note\": {\"text\", \"n\", \"attrs\": {..}}} (the\n"
        "                    proto names, e.g. \"correlation_id\", are accepted too), or any\n"
        "                    other object, sent as the text of a Note body\n"
        "      --timeout MS  how long to wait for the answer (default %d)\n"
        "exit: 0 reply, 1 NAK/timeout/error, 2 usage, 4 NAK forbidden\n",
        CTL_CALL_DEFAULT_TIMEOUT_MS);
}

/* The request envelope (unpacked-style allocation: free with
 * protobuf_c_message_free_unpacked), or NULL with *rc set to the exit code. */
static sn_envelope_t *s_build(const char *service, json_t *data, int *rc)
{
    json_t *shaped = NULL;
    if (s_is_envelope_shaped(data)) {
        shaped = json_incref(data);
    } else {
        /* Free JSON travels as the text of a Note. */
        char *text = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS);
        SN_ASSERT(text);
        shaped = json_pack("{s:{s:s}}", "note", "text", text);
        free(text);
    }
    char err[256] = "";
    sn_envelope_t *env = (sn_envelope_t *)sn_json_to_message(&sentinel__v1__envelope__descriptor,
                                                             shaped, err, sizeof err);
    json_decref(shaped);
    if (!env) {
        *rc = ctl_usage_error(CMD, "--data: %s", err);
        return NULL;
    }
    /* What the caller did not set, stamped as sn_envelope_stamp would. */
    char id[SN_ID_LEN + 1];
    sn_id_new(id);
    char source[SN_SOURCE_MAX];
    snprintf(source, sizeof source, "sentinel/ctl/%d", (int)getpid());
    if (!env->id || !*env->id)
        s_set_string(&env->id, id);
    if (!env->source || !*env->source)
        s_set_string(&env->source, source);
    if (!env->type || !*env->type)
        s_set_string(&env->type, service);
    if (env->time_unix_ms == 0)
        env->time_unix_ms = sn_wall_ms();
    if (env->incarnation == 0)
        env->incarnation = sn_random_u64();
    if (env->seq == 0)
        env->seq = 1;
    return env;
}

/* True when every key names an Envelope field (proto or JSON name). */
static bool s_is_envelope_shaped(json_t *data)
{
    const ProtobufCMessageDescriptor *d = &sentinel__v1__envelope__descriptor;
    if (json_object_size(data) == 0)
        return false;
    const char *key;
    json_t *value;
    json_object_foreach(data, key, value)
    {
        (void)value;
        bool is_known = false;
        for (unsigned i = 0; i < d->n_fields && !is_known; i++)
            is_known = strcmp(key, d->fields[i].name) == 0 || s_is_camel_of(key, d->fields[i].name);
        if (!is_known)
            return false;
    }
    return true;
}

/* True if @key is the lowerCamelCase JSON name of proto field @name ("correlationId"). */
static bool s_is_camel_of(const char *key, const char *name)
{
    for (; *name; name++, key++) {
        char want = *name;
        if (want == '_' && name[1]) {
            name++;
            want = (char)(*name >= 'a' && *name <= 'z' ? *name - 'a' + 'A' : *name);
        }
        if (*key != want)
            return false;
    }
    return *key == '\0';
}

static void s_set_string(char **slot, const char *value)
{
    if (*slot && *slot != protobuf_c_empty_string)
        free(*slot);
    *slot = sn_strdup(value);
}
