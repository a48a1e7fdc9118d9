/* A whole mesh for integration tests: a private redis-server, the broker as a process on
 * free ports, and agent processes of sentinel-test-agent, each logging to its own file in
 * the mesh's temp dir; plus an rpc client in the test process. */
#ifndef SN_MESH_H
#define SN_MESH_H

#include "sn_test.h"

#include "sentinel/sn_envelope.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_rpc.h"

#define SN_MESH_MAX_AGENTS 16

typedef struct {
    char role[64];
    char instance[64];
    char *log;
    pid_t pid;
} sn_mesh_agent_t;

typedef struct {
    sn_test_redis_t redis;
    char *dir;
    char *config;
    char *ns;
    char *rpc, *pub, *sub;
    char *broker_log;
    pid_t broker;
    sn_mesh_agent_t agents[SN_MESH_MAX_AGENTS];
    size_t agent_count;
    sn_rpc_t *client;
    sn_source_t source;
} sn_mesh_t;

/* Starts redis and the broker (heartbeat 200 ms x 3, leader ttl 1500 ms). @extra_yaml is
 * appended to the generated config (may be NULL). False on failure. */
bool sn_mesh_start(sn_mesh_t *self, const char *tag, const char *extra_runtime_yaml);
/* Stops every process (SIGTERM, checks exit 0 within 5 s) and removes the temp dir.
 * Returns the number of processes that did not exit 0 (agents and broker). */
int sn_mesh_stop(sn_mesh_t *self);

/* Starts an agent process of sentinel-test-agent for @role as @instance; returns its
 * index. */
size_t sn_mesh_agent(sn_mesh_t *self, const char *role, const char *instance);
/* The same from built binary @binary (e.g. "sentinel-agent" for the product roles). */
size_t sn_mesh_agent_bin(sn_mesh_t *self, const char *binary, const char *role,
                         const char *instance);
sn_mesh_agent_t *sn_mesh_find(sn_mesh_t *self, const char *instance);
/* (Re)starts the broker on the same endpoints. */
bool sn_mesh_broker_start(sn_mesh_t *self);

/* Waits until @service has at least @workers workers at the broker. */
bool sn_mesh_wait_service(sn_mesh_t *self, const char *service, int workers, int timeout_ms);

/* Calls @service with a Note body (@text, @n). SN_OK with *reply (free with
 * sn_envelope_free); SN_DECLINED with *nak; SN_AGAIN on timeout. */
sn_rc_t sn_mesh_call_note(sn_mesh_t *self, const char *service, const char *text, int64_t n,
                          int timeout_ms, sn_envelope_t **reply, sn_nak_reason_t *nak);

/* Calls @service with @env (borrowed; stamped by the caller). SN_OK with *reply (free with
 * sn_envelope_free; NULL if the reply did not parse); SN_DECLINED with *nak; SN_AGAIN on
 * timeout. @reply and @nak may be NULL. */
sn_rc_t sn_mesh_call(sn_mesh_t *self, const char *service, sn_envelope_t *env, int timeout_ms,
                     sn_envelope_t **reply, sn_nak_reason_t *nak);

/* redis-cli helpers on the mesh's namespace: HGET <ns>key field, GET <ns>key. */
char *sn_mesh_hget(sn_mesh_t *self, const char *key, const char *field);
char *sn_mesh_get(sn_mesh_t *self, const char *key);

/* The envelopes of the mesh's journal stream (<ns>events, its "env" fields) in journal
 * order, read with XRANGE through @redis (borrowed; keys not prefixed by it). An array of
 * *count envelopes (free with sn_mesh_envelopes_free; those that do not parse are left
 * out), or NULL with *count 0 if Redis did not answer. */
sn_envelope_t **sn_mesh_journal(sn_mesh_t *self, sn_redis_t *redis, size_t *count);
void sn_mesh_envelopes_free(sn_envelope_t **envs, size_t count);

/* Waits until the log of @instance contains @needle. */
bool sn_mesh_wait_log(sn_mesh_t *self, const char *instance, const char *needle, int timeout_ms);

#endif
