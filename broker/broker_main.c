/* sentinel-broker: a thin main around the broker actor (broker_server). Flags override the
 * config file: --rpc EP --pub EP --sub EP --config FILE --heartbeat-ms N. Stops cleanly on
 * SIGINT/SIGTERM with exit status 0. */
#include <czmq.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_server.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_log.h"

static void s_usage(void)
{
    fprintf(stderr, "usage: sentinel-broker [--config FILE] [--rpc EP] [--pub EP] [--sub EP] "
                    "[--heartbeat-ms N]\n");
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *rpc = NULL, *pub = NULL, *sub = NULL;
    int64_t heartbeat_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            s_usage();
            return 0;
        }
        if (!val) {
            s_usage();
            return 2;
        }
        if (strcmp(arg, "--config") == 0)
            config_path = val;
        else if (strcmp(arg, "--rpc") == 0)
            rpc = val;
        else if (strcmp(arg, "--pub") == 0)
            pub = val;
        else if (strcmp(arg, "--sub") == 0)
            sub = val;
        else if (strcmp(arg, "--heartbeat-ms") == 0) {
            if (sn_parse_i64(val, 10, 600000, &heartbeat_ms) != SN_OK) {
                fprintf(stderr, "sentinel-broker: bad --heartbeat-ms %s\n", val);
                return 2;
            }
        } else {
            s_usage();
            return 2;
        }
        i++;
    }
    sn_log_init("broker", "0");

    /* Signals are ours: block them in every thread and wait for them here. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    zsys_handler_set(NULL);

    sn_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    if (config_path) {
        char err[512];
        if (sn_config_load(config_path, &cfg, err, sizeof err) != SN_OK) {
            sn_error("broker", "config: %s", err);
            return 1;
        }
    }
    sn_broker_config_t bc = cfg.broker;
    if (rpc)
        bc.rpc = (char *)rpc;
    if (pub)
        bc.pub = (char *)pub;
    if (sub)
        bc.sub = (char *)sub;
    if (heartbeat_ms)
        bc.heartbeat_ms = (int)heartbeat_ms;
    broker_server_t *server = broker_server_new(&bc, NULL);
    sn_config_fini(&cfg);
    if (!server)
        return 1;
    int sig = 0;
    sigwait(&set, &sig);
    sn_info("broker", "signal %d, shutting down", sig);
    broker_server_destroy(&server);
    return 0;
}
