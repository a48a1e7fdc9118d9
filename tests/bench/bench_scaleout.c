/* scaleout: cloudflare-deployer is a worker role that scales with processes (issue 5
 * "What must be shown"). A mesh (redis-server, broker) and the fake Cloudflare API
 * (tests/fakes/fake_cloudflare.py) whose deployments take 200 ms to finish and whose
 * per-token budget is set high; one cloudflare_pages target (poll_interval_ms 20, budget
 * 100000 per 300 s). cloudflare-deployer has credit 1, so one process runs one deploy at
 * a time.
 *
 * Phase 1: one cloudflare-deployer process; phase 2: three more (four). Each phase first
 * runs one warm-up stage (the shared files are uploaded once, so every measured deploy
 * uploads only its own release identity), then sends 100 stage requests at once (distinct
 * deploy ids, each a new preview deployment) and measures the time until the last answer.
 * throughput(n) = 100 / seconds; scaleout_ratio_4 = throughput(4) / throughput(1), goal
 * >= 3.5. Every answer must be ok, and the fake must count exactly one deployment per
 * deploy id and no request over the budget. */
#include "bench.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "sn_mesh.h"

#include "sentinel/sn_artifact.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_http.h"

#define S_SERVICE "deploy.cloudflare"
#define S_JOBS 100
#define S_LATENCY_MS 200
#define S_PHASE_TIMEOUT_MS 120000
#define S_GOAL_RATIO 3.5

typedef struct {
    sn_mesh_t mesh;
    int port;
    pid_t fake;
    char *ready;
    char sha[SN_ARTIFACT_SHA_LEN + 1];
    sn_http_t *http;
} s_so_t;

static bool s_ready(void *arg)
{
    struct stat sb;
    return stat(arg, &sb) == 0 && sb.st_size > 0;
}

/* A DeployRequest stage for @deploy_id. */
static uint8_t *s_pack(s_so_t *so, const char *deploy_id, size_t *len)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &so->mesh.source, "deploy.request", id);
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.deploy_id = (char *)deploy_id;
    d.run_id = (char *)deploy_id;
    d.project = "bench";
    d.environment = "production";
    d.target = "cf";
    Sentinel__V1__DeployRequest req = SENTINEL__V1__DEPLOY_REQUEST__INIT;
    req.op = "stage";
    req.deploy = &d;
    req.artifact_sha256 = so->sha;
    req.commit = "c0ffee";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_REQUEST;
    env.deploy_request = &req;
    return sn_envelope_pack(&env, len);
}

/* Sends @n stage requests at once (ids <prefix><i>) and waits for every answer. Returns
 * the seconds from the first send to the last answer, or -1 (a failure is noted). */
static double s_phase(s_so_t *so, const char *prefix, int n)
{
    uint64_t *ids = sn_calloc((size_t)n, sizeof *ids);
    int64_t t0 = sn_mono_ms();
    for (int i = 0; i < n; i++) {
        char did[32];
        snprintf(did, sizeof did, "%s%d", prefix, i);
        size_t len = 0;
        uint8_t *bytes = s_pack(so, did, &len);
        sn_rc_t rc =
            sn_rpc_send(so->mesh.client, S_SERVICE, bytes, len, S_PHASE_TIMEOUT_MS, 1, &ids[i]);
        free(bytes);
        if (rc != SN_OK) {
            bench_note("scaleout: send failed");
            free(ids);
            return -1;
        }
    }
    int answered = 0, ok = 0;
    int64_t deadline = t0 + S_PHASE_TIMEOUT_MS;
    while (answered < n && sn_mono_ms() < deadline) {
        zmq_pollitem_t it = {sn_rpc_socket(so->mesh.client), 0, ZMQ_POLLIN, 0};
        (void)zmq_poll(&it, 1, 50);
        sn_rpc_result_t res;
        while (sn_rpc_recv(so->mesh.client, &res) == SN_OK) {
            bool mine = false;
            for (int i = 0; i < n && !mine; i++)
                mine = res.request_id == ids[i];
            if (mine) {
                answered++;
                sn_envelope_t *r = res.is_nak ? NULL
                                              : sn_envelope_unpack(res.body, res.body_len,
                                                                   SN_MAX_FRAME_BYTES, NULL);
                if (r && r->body_case == SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT &&
                    r->deploy_result->ok)
                    ok++;
                else if (ok + 5 > answered) /* note the first few */
                    bench_note("scaleout: a deploy failed: %s",
                               r && r->deploy_result ? r->deploy_result->reason : "nak");
                sn_envelope_free(&r);
            }
            sn_rpc_result_fini(&res);
        }
    }
    double secs = (double)(sn_mono_ms() - t0) / 1000.0;
    free(ids);
    if (answered != n || ok != n) {
        bench_note("scaleout: %s phase: %d answered, %d ok of %d", prefix, answered, ok, n);
        return -1;
    }
    return secs;
}

static json_t *s_stats(s_so_t *so)
{
    char *url = sn_strdupf("http://127.0.0.1:%d/__stats", so->port);
    sn_http_request_t req = {.url = url, .timeout_ms = 5000};
    sn_http_response_t resp;
    json_t *j = NULL;
    if (sn_http_perform(so->http, &req, &resp) == SN_OK && resp.status == 200)
        j = json_loadb(resp.body, resp.body_len, 0, NULL);
    sn_http_response_fini(&resp);
    free(url);
    return j;
}

static bool s_setup(s_so_t *so)
{
    so->port = sn_test_free_port();
    char *yaml = sn_strdupf("targets:\n"
                            "  - name: cf\n"
                            "    type: cloudflare_pages\n"
                            "    api_base: http://127.0.0.1:%d/client/v4\n"
                            "    token: tok-bench\n"
                            "    account_id: acct0123\n"
                            "    project: site\n"
                            "    poll_interval_ms: 20\n"
                            "    budget_requests: 100000\n"
                            "    budget_window_s: 300\n",
                            so->port);
    bool ok = sn_mesh_start(&so->mesh, "bench-scaleout", yaml);
    free(yaml);
    if (!ok)
        return false;
    so->http = sn_http_new();
    sn_config_t cfg;
    char err[256] = "";
    if (!so->http || sn_config_load(so->mesh.config, &cfg, err, sizeof err) != SN_OK) {
        bench_note("scaleout: config: %s", err);
        return false;
    }
    /* The artifact: a small site. */
    sn_artifact_t *store = sn_artifact_new(cfg.artifact_dir, NULL);
    char *src = sn_strdupf("%s/site", so->mesh.dir);
    char *css = sn_strdupf("%s/css", src);
    ok = store && mkdir(src, 0755) == 0 && mkdir(css, 0755) == 0;
    const char *files[][2] = {{"index.html", "<h1>bench</h1>\n"},
                              {"about.html", "<p>about</p>\n"},
                              {"css/site.css", "body { margin: 0; }\n"}};
    for (size_t i = 0; ok && i < SN_ARRAY_LEN(files); i++) {
        char *p = sn_strdupf("%s/%s", src, files[i][0]);
        FILE *f = fopen(p, "w");
        ok = f && fputs(files[i][1], f) >= 0;
        if (f && fclose(f) != 0)
            ok = false;
        free(p);
    }
    ok = ok && sn_artifact_put_dir(store, src, so->sha, NULL) == SN_OK;
    sn_artifact_destroy(&store);
    free(css);
    free(src);
    sn_config_fini(&cfg);
    if (!ok)
        return false;
    /* The fake: deployments take 200 ms, the budget is high. */
    so->ready = sn_strdupf("%s/fake.ready", so->mesh.dir);
    char *log = sn_strdupf("%s/fake.log", so->mesh.dir);
    char *script = sn_strdupf("%s/tests/fakes/fake_cloudflare.py", SN_SOURCE_DIR);
    char port_s[16], lat_s[16];
    snprintf(port_s, sizeof port_s, "%d", so->port);
    snprintf(lat_s, sizeof lat_s, "%d", S_LATENCY_MS);
    char *argv[] = {"/usr/bin/python3",
                    script,
                    "--port",
                    port_s,
                    "--ready",
                    so->ready,
                    "--token",
                    "tok-bench",
                    "--budget",
                    "1000000",
                    "--deploy-latency-ms",
                    lat_s,
                    NULL};
    so->fake = sn_test_spawn(argv, log);
    free(script);
    free(log);
    return so->fake > 0 && sn_test_wait_for(s_ready, so->ready, 10000);
}

static void s_spawn(s_so_t *so, int count)
{
    for (int i = 0; i < count; i++) {
        char instance[32];
        snprintf(instance, sizeof instance, "cf-%zu", so->mesh.agent_count + 1);
        sn_mesh_agent_bin(&so->mesh, "sentinel-agent", "cloudflare-deployer", instance);
    }
}

int bench_scaleout(void)
{
    s_so_t so;
    memset(&so, 0, sizeof so);
    int rc = 1;
    double secs1 = -1, secs4 = -1;
    if (!s_setup(&so)) {
        bench_note("scaleout: set-up failed");
        goto out;
    }
    s_spawn(&so, 1);
    if (!sn_mesh_wait_service(&so.mesh, S_SERVICE, 1, 15000) || s_phase(&so, "warm1-", 1) < 0)
        goto out;
    secs1 = s_phase(&so, "one-", S_JOBS);
    if (secs1 <= 0)
        goto out;
    s_spawn(&so, 3);
    if (!sn_mesh_wait_service(&so.mesh, S_SERVICE, 4, 15000) || s_phase(&so, "warm4-", 4) < 0)
        goto out;
    secs4 = s_phase(&so, "four-", S_JOBS);
    if (secs4 <= 0)
        goto out;
    json_t *st = s_stats(&so);
    long violations = (long)json_integer_value(json_object_get(st, "budget_violations"));
    long deployments = (long)json_integer_value(json_object_get(st, "deployments"));
    json_decref(st);
    double t1 = S_JOBS / secs1, t4 = S_JOBS / secs4;
    bench_figure("scaleout_throughput_1", t1, "deploys/s");
    bench_figure("scaleout_throughput_4", t4, "deploys/s");
    bench_figure("scaleout_deployments", (double)deployments, "deployments");
    bench_figure("scaleout_budget_violations", (double)violations, "requests");
    bench_figure("scaleout_ratio_4", t4 / t1, "x");
    bench_goal("scaleout_ratio_4", t4 / t1, false, S_GOAL_RATIO);
    /* 100 + 100 measured + 1 + 4 warm-up: one deployment per deploy id. */
    if (deployments != 2 * S_JOBS + 5 || violations != 0)
        bench_note("scaleout: %ld deployments (want %d), %ld budget violations", deployments,
                   2 * S_JOBS + 5, violations);
    else
        rc = 0;
out:
    if (so.fake > 0)
        (void)sn_test_stop(so.fake, SIGTERM, 5000);
    sn_http_destroy(&so.http);
    if (so.mesh.dir)
        sn_mesh_stop(&so.mesh);
    free(so.ready);
    return rc;
}
