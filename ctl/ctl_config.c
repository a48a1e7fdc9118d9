/* `sentinelctl config check [FILE]`: validates a config without starting anything and
 * prints "ok" and a summary, or the loader's "file:line:col: key: message" on stderr. */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

#define CMD "config"

static void s_help(void);
static int s_check(ctl_opts_t *opts, const char *path);
static void s_print_table(const sn_config_t *cfg, const char *path);
static void s_warn_missing_roles(const sn_config_t *cfg);
static void s_print_json(const sn_config_t *cfg, const char *path);

int ctl_cmd_config(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS, {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled == 0)
            return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    ctl_output_setup(opts->is_no_color);
    if (optind >= argc)
        return ctl_usage_error(CMD, "missing subcommand (check)");
    const char *sub = argv[optind++];
    if (strcmp(sub, "check") != 0)
        return ctl_usage_error(CMD, "unknown subcommand '%s' (check)", sub);
    const char *path = opts->config_path;
    if (optind < argc)
        path = argv[optind++];
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    return s_check(opts, path);
}

static void s_help(void)
{
    printf("usage: sentinelctl config check [FILE]\n\n"
           "Validates FILE (default: -c, $SENTINEL_CONFIG, else ./%s) without starting\n"
           "anything. Prints \"ok\" and a summary on stdout and exits 0, or prints\n"
           "\"file:line:column: key: message\" on stderr and exits 1.\n"
           "  -o json   {\"ok\":true,\"file\":...,\"namespace\":...,\"processes\":[...],...}\n",
           CTL_DEFAULT_CONFIG);
}

static int s_check(ctl_opts_t *opts, const char *path)
{
    sn_config_t cfg;
    if (ctl_config_load(CMD, path, &cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    if (opts->format == CTL_FORMAT_JSON)
        s_print_json(&cfg, path);
    else
        s_print_table(&cfg, path);
    s_warn_missing_roles(&cfg);
    sn_config_fini(&cfg);
    return CTL_EXIT_OK;
}

static bool s_has_role(const sn_config_t *cfg, const char *role)
{
    for (size_t i = 0; i < cfg->process_count; i++)
        if (cfg->processes[i].role && strcmp(cfg->processes[i].role, role) == 0)
            return true;
    return false;
}

/* A target type whose deployer roles are not in `processes:` is a warning (on stderr), not
 * an error: those roles may run on other hosts. */
static void s_warn_missing_roles(const sn_config_t *cfg)
{
    static const struct {
        const char *type;
        const char *roles[7];
    } needs[] = {
        {"local_static", {"local-deployer", NULL}},
        {"local_command", {"local-deployer", NULL}},
        {"cloudflare_pages", {"cloudflare-deployer", NULL}},
        {"railway", {"railway-bridge", NULL}},
        {"firebase",
         {"firebase-sync", "firebase-executor", "resource-validator", "hosting-propagator",
          "function-handler", NULL}},
    };
    if (cfg->process_count == 0)
        return; /* no local supervision configured at all */
    for (size_t k = 0; k < SN_ARRAY_LEN(needs); k++) {
        bool used = false;
        for (size_t t = 0; t < cfg->target_count && !used; t++)
            used = strcmp(cfg->targets[t].type, needs[k].type) == 0;
        for (size_t r = 0; used && needs[k].roles[r]; r++)
            if (!s_has_role(cfg, needs[k].roles[r]))
                fprintf(stderr,
                        "%s: warning: %s targets need role %s, which processes: does not "
                        "start here (fine if it runs on another host)\n",
                        CMD, needs[k].type, needs[k].roles[r]);
    }
    bool github = false;
    for (size_t p = 0; p < cfg->project_count && !github; p++)
        github = strcmp(cfg->projects[p].source_type, "github") == 0;
    if (github && !s_has_role(cfg, "github-workflow"))
        fprintf(stderr,
                "%s: warning: github projects need role github-workflow (statuses, policy "
                "facts), which processes: does not start here\n",
                CMD);
}

static void s_print_table(const sn_config_t *cfg, const char *path)
{
    printf("%sok%s: %s\n", ctl_color("green"), ctl_color("reset"), path);
    const char *headers[] = {"KEY", "VALUE", NULL};
    ctl_table_t *t = ctl_table_new(headers);
    char *sock = ctl_redis_socket_path(cfg);
    char *redis =
        cfg->redis.embedded ? sn_strdupf("embedded (unix:%s)", sock)
        : sock              ? sn_strdupf("unix:%s", sock)
               : sn_strdupf("%s:%d", cfg->redis.host ? cfg->redis.host : "-", cfg->redis.port);
    char *broker =
        sn_strdupf("rpc=%s pub=%s sub=%s curve=%s", cfg->broker.rpc ? cfg->broker.rpc : "-",
                   cfg->broker.pub ? cfg->broker.pub : "-", cfg->broker.sub ? cfg->broker.sub : "-",
                   cfg->broker.curve ? "on" : "off");
    size_t instances = 0;
    size_t cap = 64;
    char *roles = sn_calloc(1, cap);
    for (size_t i = 0; i < cfg->process_count; i++) {
        instances += (size_t)cfg->processes[i].instances;
        char *item = sn_strdupf("%s%s x%d", i ? ", " : "", cfg->processes[i].role,
                                cfg->processes[i].instances);
        size_t need = strlen(roles) + strlen(item) + 1;
        if (need > cap) {
            while (need > cap)
                cap *= 2;
            roles = sn_realloc(roles, cap);
        }
        memcpy(roles + strlen(roles), item, strlen(item) + 1);
        free(item);
    }
    char *procs = sn_strdupf("%zu roles, %zu instances%s%s", cfg->process_count, instances,
                             cfg->process_count ? ": " : "", roles);
    const char *rows[][2] = {
        {"namespace", cfg->namespace_},
        {"state_dir", cfg->state_dir},
        {"redis", redis},
        {"broker", broker},
        {"processes", procs},
        {"hash", cfg->hash},
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(rows); i++)
        ctl_table_add_row(t, rows[i], SN_ARRAY_LEN(rows[i]));
    ctl_table_print(t);
    ctl_table_destroy(&t);
    free(sock);
    free(redis);
    free(broker);
    free(roles);
    free(procs);
}

static void s_print_json(const sn_config_t *cfg, const char *path)
{
    json_t *procs = json_array();
    for (size_t i = 0; i < cfg->process_count; i++)
        json_array_append_new(procs, json_pack("{s:s?, s:i}", "role", cfg->processes[i].role,
                                               "instances", cfg->processes[i].instances));
    char *sock = ctl_redis_socket_path(cfg);
    json_t *doc = json_pack(
        "{s:b, s:s, s:s?, s:s?, s:s, s:{s:b, s:s?, s:s?, s:i}, s:{s:s?, s:s?, s:s?, s:b}, s:o}",
        "ok", 1, "file", path, "namespace", cfg->namespace_, "state_dir", cfg->state_dir, "hash",
        cfg->hash, "redis", "embedded", cfg->redis.embedded, "unix_path", sock, "host",
        cfg->redis.host, "port", cfg->redis.port, "broker", "rpc", cfg->broker.rpc, "pub",
        cfg->broker.pub, "sub", cfg->broker.sub, "curve", cfg->broker.curve, "processes", procs);
    SN_ASSERT(doc);
    ctl_json_print(doc);
    json_decref(doc);
    free(sock);
}
