/* sentinelctl: the command-line tool. main parses the global options that come before
 * the command, picks the command from a table and hands it the rest of the line; every
 * command also accepts the global options after its name. */
#include "ctl.h"

#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_log.h"

typedef struct {
    const char *name;
    int (*run)(ctl_opts_t *opts, int argc, char **argv);
    const char *summary;
} ctl_command_t;

static const ctl_command_t s_commands[] = {
    {"up", ctl_cmd_up, "run the local mesh (redis, broker, agents) and supervise it"},
    {"status", ctl_cmd_status, "registered agents and the broker's services"},
    {"events", ctl_cmd_events, "read (-f: follow) the event journal"},
    {"call", ctl_cmd_call, "call a service through the broker"},
    {"jobs", ctl_cmd_jobs, "open jobs of the job ledger (--dead: dead letters)"},
    {"runs", ctl_cmd_runs, "recent runs (--project, --env, -n)"},
    {"run", ctl_cmd_run, "run show RUN | run logs RUN"},
    {"deploy", ctl_cmd_deploy, "deploy PROJECT ENV [--ref] [--dry-run] [--detach]"},
    {"approve", ctl_cmd_approve, "approve RUN (not your own)"},
    {"cancel", ctl_cmd_cancel, "cancel RUN"},
    {"rollback", ctl_cmd_rollback, "rollback PROJECT ENV [--to RUN]"},
    {"freeze", ctl_cmd_freeze, "freeze PROJECT ENV: queue no new runs"},
    {"unfreeze", ctl_cmd_unfreeze, "unfreeze PROJECT ENV"},
    {"history", ctl_cmd_history, "history PROJECT ENV: released versions per target"},
    {"notify", ctl_cmd_notify, "notify push --project P --ref REF --sha SHA (git hook)"},
    {"silence", ctl_cmd_silence, "silence add --match K=V --for 2h --comment T | list | expire ID"},
    {"github", ctl_cmd_github, "github rerun PROJECT RUN | github dispatch PROJECT WF REF [k=v]"},
    {"audit", ctl_cmd_audit, "audit verify | audit tail [-n N]: the audit chain"},
    {"gc", ctl_cmd_gc, "apply the retentions (runs, jobs, journal, audit, artifacts) [--dry-run]"},
    {"config", ctl_cmd_config, "config check FILE: validate a config without starting"},
    {"keygen", ctl_cmd_keygen, "write a CURVE certificate pair into DIR"},
};

static void s_usage(FILE *out);

int main(int argc, char **argv)
{
    ctl_opts_t opts;
    ctl_opts_init(&opts);
    sn_log_init("ctl", "-");

    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(&opts, NULL, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == 'V') {
            printf("sentinelctl %s\n", SN_VERSION);
            return CTL_EXIT_OK;
        }
        return ctl_bad_option(NULL, c, argv);
    }
    if (optind >= argc) {
        if (opts.is_help) {
            s_usage(stdout);
            return CTL_EXIT_OK;
        }
        return ctl_usage_error(NULL, "missing command: usage: sentinelctl [options] COMMAND");
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        s_usage(stdout);
        return CTL_EXIT_OK;
    }
    for (size_t i = 0; i < SN_ARRAY_LEN(s_commands); i++) {
        if (strcmp(s_commands[i].name, name) != 0)
            continue;
        int sub_argc = argc - optind;
        char **sub_argv = argv + optind;
        optind = 0; /* glibc: re-initialise getopt for the command's own options */
        return s_commands[i].run(&opts, sub_argc, sub_argv);
    }
    return ctl_usage_error(NULL, "unknown command '%s'", name);
}

static void s_usage(FILE *out)
{
    fprintf(out, "usage: sentinelctl [-c FILE] [-o table|json] [--no-color] COMMAND [ARGS]\n\n"
                 "commands:\n");
    for (size_t i = 0; i < SN_ARRAY_LEN(s_commands); i++)
        fprintf(out, "  %-8s %s\n", s_commands[i].name, s_commands[i].summary);
    fprintf(out,
            "\nglobal options (also accepted after the command):\n"
            "  -c, --config FILE   config file (default $SENTINEL_CONFIG, else ./%s)\n"
            "  -o, --output FMT    table (default) or json (stable, one document per line)\n"
            "      --no-color      no color (also NO_COLOR, TERM=dumb, or stdout not a tty)\n"
            "  -h, --help          help for sentinelctl or for a command\n\n"
            "exit codes: 0 ok, 1 failure, 2 usage, 3 waited-for thing failed, 4 auth,\n"
            "            8 pending, 130 interrupted\n",
            CTL_DEFAULT_CONFIG);
}
