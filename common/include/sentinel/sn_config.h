/* sentinel.yml: read with libyaml's event parser against a declarative schema table, so
 * every error names file:line:column and the key; unknown keys and wrong types are
 * errors; `${env:NAME}` is resolved after parsing (`${secret:NAME}` is kept verbatim for
 * the secret store to resolve). This header fixes the mesh part of the file; later
 * sections (projects, targets, channels) add their own structs and schema rows. */
#ifndef SN_CONFIG_H
#define SN_CONFIG_H

#include "sentinel/sn_common.h"

/* A principal of the mesh: a CURVE public key and what it may do (ARCHITECTURE §9). */
typedef struct {
    char *name;        /* principal name, e.g. "buildpilot" */
    char *public_key;  /* Z85, 40 chars */
    char **publish;    /* topics it may publish (exact, or prefix ending in '*'); NULL-terminated */
    char **subscribe;  /* prefixes it may subscribe to; NULL-terminated */
    char **call;       /* services it may call; "*" = any; NULL-terminated */
    char **serve;      /* services it may serve; NULL-terminated */
} sn_principal_config_t;

typedef struct {
    char *rpc;                  /* default tcp://127.0.0.1:7700 */
    char *pub;                  /* default tcp://127.0.0.1:7701 */
    char *sub;                  /* default tcp://127.0.0.1:7702 */
    bool curve;                 /* CURVE on all three sockets */
    char *server_secret_file;   /* broker's zcert secret file (with curve) */
    char *server_public_key;    /* Z85, what clients pin (with curve) */
    char *client_cert_file;     /* this process's zcert secret file (with curve) */
    sn_principal_config_t *principals;
    size_t principal_count;
    char **revoked;             /* revoked public keys (Z85); NULL-terminated */
    int heartbeat_ms;           /* service-protocol heartbeat interval, default 1000 */
    int heartbeat_liveness;     /* missed heartbeats before a peer is dead, default 3 */
    int64_t max_frame_bytes;    /* ZMQ_MAXMSGSIZE, default 1 MiB */
} sn_broker_config_t;

typedef struct {
    bool embedded;              /* `redis: embedded`: sentinelctl up starts a private server */
    char *unix_path;            /* unix socket path (embedded: <state_dir>/redis.sock) */
    char *host;                 /* or TCP host, default 127.0.0.1 */
    int port;                   /* default 6379 */
    int timeout_ms;             /* per command, default 2000 */
} sn_redis_config_t;

/* One process `sentinelctl up` runs: a role and how many instances. */
typedef struct {
    char *role;
    int instances;              /* default 1 */
} sn_process_config_t;

typedef struct {
    int leader_ttl_ms;          /* default 5000 */
    int leader_renew_ms;        /* default ttl / 3 */
    int job_lease_ms;           /* default 30000 */
    int job_lease_max_ms;       /* hard maximum a lease may be renewed to, default 3600000 */
    int job_max_attempts;       /* default 5 */
    int shutdown_grace_ms;      /* default 10000 */
    int agent_ttl_ms;           /* agent:<role>:<instance> TTL, default 15000 */
    int64_t journal_max_len;    /* events stream cap by length, default 1000000 */
    int64_t journal_max_age_s;  /* events stream cap by age, default 30 days */
} sn_runtime_config_t;

typedef struct {
    char *path;                 /* the file it was read from */
    char *namespace_;           /* key prefix, default "sentinel:" */
    char *state_dir;            /* default ./var */
    char *log_level;            /* default "info" */
    sn_broker_config_t broker;
    sn_redis_config_t redis;
    sn_runtime_config_t runtime;
    sn_process_config_t *processes;
    size_t process_count;
    char hash[65];              /* sha256 hex of the file's bytes (agent registration) */
} sn_config_t;

/* Reads and validates @path into @cfg (caller's storage, zeroed by the call). On error
 * returns SN_ERROR, leaves @cfg zeroed (nothing to free) and writes
 * "file:line:column: key: message" into @err (may be NULL), e.g.
 * `sentinel.yml:12:5: broker.heartbeat_ms: expected an integer in [100, 60000] ...`.
 * Files over 1 MiB, YAML anchors/aliases, nesting deeper than 32 and more than one
 * document are refused. Integer `_ms`/`_s` keys also take durations ("250ms", "5s", "2m",
 * "1h", "1d"). After a successful load every string list is non-NULL (possibly empty),
 * leader_renew_ms defaults to leader_ttl_ms / 3, `redis: embedded` (or embedded: true)
 * sets unix_path to <state_dir>/redis.sock unless given; without a `redis` key the
 * server is external (embedded false) at 127.0.0.1:6379. Any thread; reads the
 * environment for ${env:NAME}. */
SN_NODISCARD sn_rc_t sn_config_load(const char *path, sn_config_t *cfg, char *err, size_t err_len);
/* The same from a string (for tests); @name stands in for the file name in errors. */
SN_NODISCARD sn_rc_t sn_config_load_string(const char *name, const char *yaml, size_t len,
                                           sn_config_t *cfg, char *err, size_t err_len);
/* Frees everything inside @cfg. NULL-safe, idempotent. */
void sn_config_fini(sn_config_t *cfg);

#endif
