/* Integration-test mesh: redis-server, broker and agents as real processes. */
#include "sn_mesh.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"

static bool s_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    fputs(text, f);
    return fclose(f) == 0;
}

bool sn_mesh_start(sn_mesh_t *self, const char *tag, const char *extra_runtime_yaml)
{
    memset(self, 0, sizeof *self);
    if (!sn_test_redis_start(&self->redis))
        return false;
    self->dir = sn_test_tmpdir(tag);
    self->ns = sn_test_namespace(tag);
    self->rpc = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    self->pub = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    self->sub = sn_strdupf("tcp://127.0.0.1:%d", sn_test_free_port());
    self->config = sn_strdupf("%s/sentinel.yml", self->dir);
    self->broker_log = sn_strdupf("%s/broker.log", self->dir);
    char *yaml = sn_strdupf("namespace: \"%s\"\n"
                            "state_dir: %s/var\n"
                            "log_level: info\n"
                            "broker:\n"
                            "  rpc: %s\n  pub: %s\n  sub: %s\n"
                            "  heartbeat_ms: 250\n  heartbeat_liveness: 4\n"
                            "redis:\n  unix_path: %s\n  timeout_ms: 500\n"
                            "runtime:\n"
                            "  leader_ttl_ms: 1500\n"
                            "  shutdown_grace_ms: 3000\n"
                            "  agent_ttl_ms: 3000\n"
                            "%s",
                            self->ns, self->dir, self->rpc, self->pub, self->sub,
                            self->redis.unix_path, extra_runtime_yaml ? extra_runtime_yaml : "");
    bool ok = s_write_file(self->config, yaml);
    free(yaml);
    sn_source_init(&self->source, "test", "mesh");
    if (!ok || !sn_mesh_broker_start(self))
        return false;
    self->client = sn_rpc_new(self->rpc, NULL);
    if (!self->client)
        return false;
    sn_rpc_set_heartbeat(self->client, 250, 4);
    return true;
}

bool sn_mesh_broker_start(sn_mesh_t *self)
{
    char *bin = sn_test_bin("sentinel-broker");
    char *argv[] = {bin, "--config", self->config, NULL};
    self->broker = sn_test_spawn(argv, self->broker_log);
    free(bin);
    return self->broker > 0;
}

size_t sn_mesh_agent(sn_mesh_t *self, const char *role, const char *instance)
{
    return sn_mesh_agent_bin(self, "sentinel-test-agent", role, instance);
}

size_t sn_mesh_agent_bin(sn_mesh_t *self, const char *binary, const char *role,
                         const char *instance)
{
    SN_ASSERT(self->agent_count < SN_MESH_MAX_AGENTS);
    sn_mesh_agent_t *a = &self->agents[self->agent_count];
    sn_strlcpy(a->role, role, sizeof a->role);
    sn_strlcpy(a->instance, instance, sizeof a->instance);
    a->log = sn_strdupf("%s/%s.log", self->dir, instance);
    char *bin = sn_test_bin(binary);
    char *argv[] = {bin,          (char *)role,     "--config", self->config,
                    "--instance", (char *)instance, NULL};
    a->pid = sn_test_spawn(argv, a->log);
    free(bin);
    SN_ASSERT(a->pid > 0);
    return self->agent_count++;
}

sn_mesh_agent_t *sn_mesh_find(sn_mesh_t *self, const char *instance)
{
    for (size_t i = 0; i < self->agent_count; i++)
        if (strcmp(self->agents[i].instance, instance) == 0)
            return &self->agents[i];
    return NULL;
}

/* Prints a log file to stderr so a failing test shows what the process said. */
static void s_dump(const char *name, const char *path)
{
    char *text = sn_test_read_file(path);
    if (!text)
        return;
    size_t len = strlen(text);
    const char *tail = len > 6000 ? text + len - 6000 : text;
    fprintf(stderr, "---- %s ----\n%s", name, tail);
    free(text);
}

int sn_mesh_stop(sn_mesh_t *self)
{
    int bad = 0;
    sn_rpc_destroy(&self->client);
    for (size_t i = self->agent_count; i-- > 0;) {
        sn_mesh_agent_t *a = &self->agents[i];
        if (a->pid > 0 && sn_test_alive(a->pid)) {
            kill(a->pid, SIGCONT);
            int st = sn_test_stop(a->pid, SIGTERM, 5000);
            if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "agent %s did not exit 0 (status %d)\n", a->instance, st);
                bad++;
            }
        }
    }
    if (self->broker > 0 && sn_test_alive(self->broker)) {
        int st = sn_test_stop(self->broker, SIGTERM, 5000);
        if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "broker did not exit 0 (status %d)\n", st);
            bad++;
        }
    }
    if (bad || getenv("SN_MESH_DUMP")) {
        s_dump("broker", self->broker_log);
        for (size_t i = 0; i < self->agent_count; i++)
            s_dump(self->agents[i].instance, self->agents[i].log);
    }
    for (size_t i = 0; i < self->agent_count; i++)
        free(self->agents[i].log);
    sn_test_redis_destroy(&self->redis);
    sn_test_rmdir(self->dir);
    free(self->dir);
    free(self->config);
    free(self->ns);
    free(self->rpc);
    free(self->pub);
    free(self->sub);
    free(self->broker_log);
    return bad;
}

static sn_rc_t s_call(sn_mesh_t *self, const char *service, sn_envelope_t *env, int timeout_ms,
                      sn_envelope_t **reply, sn_nak_reason_t *nak)
{
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(env, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc =
        sn_rpc_call(self->client, service, bytes, len, timeout_ms, &out, &out_len, &reason);
    free(bytes);
    if (nak)
        *nak = reason;
    if (reply)
        *reply = NULL;
    if (rc == SN_OK && reply)
        *reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
    free(out);
    return rc;
}

sn_rc_t sn_mesh_call(sn_mesh_t *self, const char *service, sn_envelope_t *env, int timeout_ms,
                     sn_envelope_t **reply, sn_nak_reason_t *nak)
{
    return s_call(self, service, env, timeout_ms, reply, nak);
}

sn_rc_t sn_mesh_call_note(sn_mesh_t *self, const char *service, const char *text, int64_t n,
                          int timeout_ms, sn_envelope_t **reply, sn_nak_reason_t *nak)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &self->source, "test.call", id);
    Sentinel__V1__Note note = SENTINEL__V1__NOTE__INIT;
    note.text = (char *)text;
    note.n = n;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_NOTE;
    env.note = &note;
    return s_call(self, service, &env, timeout_ms, reply, nak);
}

typedef struct {
    sn_mesh_t *mesh;
    const char *service;
    int workers;
} s_service_wait_t;

static bool s_service_ready(void *arg)
{
    s_service_wait_t *w = arg;
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &w->mesh->source, "broker.services", id);
    sn_envelope_t *reply = NULL;
    if (s_call(w->mesh, "broker.services", &env, 500, &reply, NULL) != SN_OK || !reply)
        return false;
    bool ok = false;
    if (reply->body_case == SENTINEL__V1__ENVELOPE__BODY_SERVICES)
        for (size_t i = 0; i < reply->services->n_services; i++) {
            Sentinel__V1__ServiceInfo *s = reply->services->services[i];
            if (strcmp(s->name, w->service) == 0 && (int)s->workers >= w->workers &&
                s->idle_credit > 0)
                ok = true;
        }
    sn_envelope_free(&reply);
    return ok;
}

bool sn_mesh_wait_service(sn_mesh_t *self, const char *service, int workers, int timeout_ms)
{
    s_service_wait_t w = {self, service, workers};
    return sn_test_wait_for(s_service_ready, &w, timeout_ms);
}

char *sn_mesh_hget(sn_mesh_t *self, const char *key, const char *field)
{
    char *args = sn_strdupf("HGET '%s%s' '%s'", self->ns, key, field);
    char *out = sn_test_redis_cli(&self->redis, args);
    free(args);
    return out;
}

char *sn_mesh_get(sn_mesh_t *self, const char *key)
{
    char *args = sn_strdupf("GET '%s%s'", self->ns, key);
    char *out = sn_test_redis_cli(&self->redis, args);
    free(args);
    return out;
}

typedef struct {
    const char *path;
    const char *needle;
} s_log_wait_t;

static bool s_log_has(void *arg)
{
    s_log_wait_t *w = arg;
    return sn_test_count_in_file(w->path, w->needle) > 0;
}

bool sn_mesh_wait_log(sn_mesh_t *self, const char *instance, const char *needle, int timeout_ms)
{
    sn_mesh_agent_t *a = sn_mesh_find(self, instance);
    const char *path = a ? a->log : self->broker_log;
    s_log_wait_t w = {path, needle};
    return sn_test_wait_for(s_log_has, &w, timeout_ms);
}

sn_envelope_t **sn_mesh_journal(sn_mesh_t *self, sn_redis_t *redis, size_t *count)
{
    *count = 0;
    char *key = sn_strdupf("%s%s", self->ns, SN_JOURNAL_STREAM);
    const char *argv[] = {"XRANGE", key, "-", "+"};
    redisReply *r = NULL;
    sn_rc_t rc = sn_redis_cmd(redis, SN_REDIS_MAIN, 2000, &r, 4, argv, NULL);
    free(key);
    if (rc != SN_OK)
        return NULL;
    size_t cap = 16;
    sn_envelope_t **envs = sn_calloc(cap, sizeof *envs);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *fields = r->element[i]->element[1];
        for (size_t f = 0; f + 1 < fields->elements; f += 2) {
            if (strcmp(fields->element[f]->str, "env") != 0)
                continue;
            sn_envelope_t *env = sn_envelope_unpack(
                fields->element[f + 1]->str, fields->element[f + 1]->len, SN_MAX_FRAME_BYTES, NULL);
            if (!env)
                continue;
            if (*count == cap)
                envs = sn_realloc(envs, (cap *= 2) * sizeof *envs);
            envs[(*count)++] = env;
        }
    }
    freeReplyObject(r);
    return envs;
}

void sn_mesh_envelopes_free(sn_envelope_t **envs, size_t count)
{
    for (size_t i = 0; envs && i < count; i++)
        sn_envelope_free(&envs[i]);
    free(envs);
}
