/* Helpers every sentinelctl command shares: global options, usage errors, loading the
 * config, a timeout-bounded Redis context and where the other binaries live. */
#include "ctl.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <czmq.h>

#define CTL_REDIS_TIMEOUT_DEFAULT_MS 2000

void ctl_opts_init(ctl_opts_t *opts)
{
    memset(opts, 0, sizeof *opts);
    const char *env = getenv("SENTINEL_CONFIG");
    if (env && *env) {
        opts->config_path = env;
        opts->is_config_explicit = true;
    } else {
        opts->config_path = CTL_DEFAULT_CONFIG;
    }
    opts->format = CTL_FORMAT_TABLE;
}

int ctl_opts_handle(ctl_opts_t *opts, const char *cmd, int c, const char *arg)
{
    switch (c) {
    case 'c':
        if (!arg || !*arg) {
            ctl_usage_error(cmd, "-c/--config needs a file");
            return -1;
        }
        opts->config_path = arg;
        opts->is_config_explicit = true;
        return 1;
    case 'o':
        if (!ctl_format_parse(arg, &opts->format)) {
            ctl_usage_error(cmd, "unknown output format '%s' (table or json)", arg ? arg : "");
            return -1;
        }
        return 1;
    case CTL_OPT_NO_COLOR:
        opts->is_no_color = true;
        return 1;
    case 'h':
        opts->is_help = true;
        return 1;
    default:
        return 0;
    }
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "sentinelctl %s: %s (see 'sentinelctl %s --help')\n", cmd, msg, cmd);
    else
        fprintf(stderr, "sentinelctl: %s (see 'sentinelctl --help')\n", msg);
    return CTL_EXIT_USAGE;
}

int ctl_bad_option(const char *cmd, int c, char **argv)
{
    const char *bad = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':')
        return ctl_usage_error(cmd, "option '%s' needs a value", bad);
    if (optopt && optopt < 256 && optopt != '?')
        return ctl_usage_error(cmd, "unknown option '-%c'", optopt);
    return ctl_usage_error(cmd, "unknown option '%s'", bad);
}

void ctl_err(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "sentinelctl %s: %s\n", cmd, msg);
    else
        fprintf(stderr, "sentinelctl: %s\n", msg);
}

sn_rc_t ctl_config_load(const char *cmd, const char *path, sn_config_t *cfg)
{
    char err[1024] = "";
    if (sn_config_load(path, cfg, err, sizeof err) != SN_OK) {
        fprintf(stderr, "%s\n", err[0] ? err : "config: cannot load");
        sn_config_fini(cfg);
        return SN_ERROR;
    }
    return SN_OK;
}

char *ctl_redis_socket_path(const sn_config_t *cfg)
{
    if (cfg->redis.unix_path && *cfg->redis.unix_path)
        return sn_strdup(cfg->redis.unix_path);
    if (cfg->redis.embedded)
        return sn_strdupf("%s/redis.sock", cfg->state_dir ? cfg->state_dir : "./var");
    return NULL;
}

redisContext *ctl_redis_connect(const char *cmd, const sn_config_t *cfg)
{
    int timeout_ms =
        cfg->redis.timeout_ms > 0 ? cfg->redis.timeout_ms : CTL_REDIS_TIMEOUT_DEFAULT_MS;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    char *sock = ctl_redis_socket_path(cfg);
    const char *host = cfg->redis.host && *cfg->redis.host ? cfg->redis.host : "127.0.0.1";
    int port = cfg->redis.port > 0 ? cfg->redis.port : 6379;
    redisContext *c =
        sock ? redisConnectUnixWithTimeout(sock, tv) : redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        if (sock)
            ctl_err(cmd, "cannot reach redis at unix:%s: %s", sock, c ? c->errstr : "no memory");
        else
            ctl_err(cmd, "cannot reach redis at %s:%d: %s", host, port,
                    c ? c->errstr : "no memory");
        if (c)
            redisFree(c);
        free(sock);
        return NULL;
    }
    free(sock);
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        ctl_err(cmd, "cannot set the redis timeout: %s", c->errstr);
        redisFree(c);
        return NULL;
    }
    return c;
}

char *ctl_bin_dir(void)
{
    const char *env = getenv("SENTINEL_BIN_DIR");
    if (env && *env)
        return sn_strdup(env);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return sn_strdup(".");
    exe[n] = '\0';
    return sn_strdup(dirname(exe));
}

sn_rpc_t *ctl_rpc_new(const char *cmd, const sn_config_t *cfg)
{
    const sn_broker_config_t *b = &cfg->broker;
    const char *ep = b->rpc ? b->rpc : "tcp://127.0.0.1:7700";
    sn_rpc_t *rpc = NULL;
    if (b->curve) {
        if (!b->client_cert_file || !b->server_public_key) {
            ctl_err(cmd, "broker.curve is on but broker.client_cert_file or "
                         "broker.server_public_key is not set");
            return NULL;
        }
        zcert_t *cert = zcert_load(b->client_cert_file);
        if (!cert) {
            ctl_err(cmd, "cannot load the certificate %s (see sentinelctl keygen)",
                    b->client_cert_file);
            return NULL;
        }
        sn_curve_keys_t keys = {.server_public = b->server_public_key,
                                .public_key = zcert_public_txt(cert),
                                .secret_key = zcert_secret_txt(cert)};
        rpc = sn_rpc_new(ep, &keys); /* copies the keys */
        zcert_destroy(&cert);
    } else {
        rpc = sn_rpc_new(ep, NULL);
    }
    if (!rpc) {
        ctl_err(cmd, "cannot set up a client for %s", ep);
        return NULL;
    }
    if (b->heartbeat_ms > 0 && b->heartbeat_liveness > 0)
        sn_rpc_set_heartbeat(rpc, b->heartbeat_ms, b->heartbeat_liveness);
    if (b->max_frame_bytes > 0)
        sn_rpc_set_max_frame(rpc, b->max_frame_bytes);
    return rpc;
}
