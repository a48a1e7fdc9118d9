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
    char *name;       /* principal name, e.g. "buildpilot" */
    char *public_key; /* Z85, 40 chars */
    char **publish;   /* topics it may publish (exact, or prefix ending in '*'); NULL-terminated */
    char **subscribe; /* prefixes it may subscribe to; NULL-terminated */
    char **call;      /* services it may call; "*" = any; NULL-terminated */
    char **serve;     /* services it may serve; NULL-terminated */
} sn_principal_config_t;

typedef struct {
    char *rpc;                /* default tcp://127.0.0.1:7700 */
    char *pub;                /* default tcp://127.0.0.1:7701 */
    char *sub;                /* default tcp://127.0.0.1:7702 */
    bool curve;               /* CURVE on all three sockets */
    char *server_secret_file; /* broker's zcert secret file (with curve) */
    char *server_public_key;  /* Z85, what clients pin (with curve) */
    char *client_cert_file;   /* this process's zcert secret file (with curve) */
    sn_principal_config_t *principals;
    size_t principal_count;
    char **revoked;          /* revoked public keys (Z85); NULL-terminated */
    int heartbeat_ms;        /* service-protocol heartbeat interval, default 1000 */
    int heartbeat_liveness;  /* missed heartbeats before a peer is dead, default 3 */
    int64_t max_frame_bytes; /* ZMQ_MAXMSGSIZE, default 1 MiB */
} sn_broker_config_t;

typedef struct {
    bool embedded;   /* `redis: embedded`: sentinelctl up starts a private server */
    char *unix_path; /* unix socket path (embedded: <state_dir>/redis.sock) */
    char *host;      /* or TCP host, default 127.0.0.1 */
    int port;        /* default 6379 */
    int timeout_ms;  /* per command, default 2000 */
} sn_redis_config_t;

/* One process `sentinelctl up` runs: a role and how many instances. */
typedef struct {
    char *role;
    int instances; /* default 1 */
} sn_process_config_t;

typedef struct {
    int leader_ttl_ms;         /* default 5000 */
    int leader_renew_ms;       /* default ttl / 3 */
    int job_lease_ms;          /* default 30000 */
    int job_lease_max_ms;      /* hard maximum a lease may be renewed to, default 3600000 */
    int job_max_attempts;      /* default 5 */
    int shutdown_grace_ms;     /* default 10000 */
    int agent_ttl_ms;          /* agent:<role>:<instance> TTL, default 15000 */
    int64_t journal_max_len;   /* events stream cap by length, default 1000000 */
    int64_t journal_max_age_s; /* events stream cap by age, default 30 days */
} sn_runtime_config_t;

/* What `sentinelctl gc` keeps (docs/redis.md, the retention column). */
typedef struct {
    int64_t runs_max_age_s;     /* terminal runs with their deploys, jobs, approvals and build
                                   logs, by last update; default 90 days, at least 1 hour */
    int64_t dead_letters;       /* newest entries kept in jobs:dead, default 1000 */
    int64_t work_dir_max_age_s; /* leftover build work dirs, default 1 day */
    int64_t gc_interval_s;      /* how often `sentinelctl up` runs gc (and once when ready);
                                   0 = never; default 1 day */
} sn_retention_config_t;

/* ---- the pipeline (issue 3): projects, environments, targets, notification, API ---- */

/* HTTP verification of a release (deployment-watcher). */
typedef struct {
    char *path;           /* default "/" */
    int status;           /* expected status, default 200 */
    char *body_contains;  /* optional */
    int max_latency_ms;   /* default 2000 */
    int consecutive;      /* successes in a row, default 3 */
    int interval_ms;      /* default 500 */
    int deadline_ms;      /* default 30000 */
    int fail_after;       /* failed attempts in a row that fail it at once; 0 = only the
                             deadline (default) */
    char *dns_name;       /* optional DNS check through c-ares */
    char *dns_expect;     /* expected A/AAAA address */
    char **dns_resolvers; /* "127.0.0.1:53"; NULL-terminated, empty = system */
} sn_check_config_t;

/* A deploy target. type "local_static": nginx serves <state_dir>/sites/<name>/current on
 * listen and the staged release on preview_listen. type "local_command": the user's
 * commands (run with SENTINEL_RELEASE_DIR, SENTINEL_DEPLOY_ID, SENTINEL_COMMIT,
 * SENTINEL_ENVIRONMENT in their environment). */
typedef struct {
    char *name;
    char *type;           /* local_static | local_command (cloud types come later) */
    char *host;           /* the host whose local-deployer serves it; default: this host */
    char *listen;         /* local_static: "127.0.0.1:8080" */
    char *preview_listen; /* local_static: "127.0.0.1:8081" */
    char *url;            /* live URL for checks; default http://<listen> */
    char *preview_url;    /* default http://<preview_listen> */
    int keep_releases;    /* default 5 */
    char *stage_command;  /* local_command */
    char *promote_command;
    char *health_command;
    char *rollback_command;
    int command_timeout_ms; /* default 120000 */
    sn_check_config_t check;
    /* Cloud targets (issue 5): type cloudflare_pages | firebase | railway. Every client
     * takes its base URL from here so tests point it at a loopback fake. */
    char *api_base;                 /* provider API base; default the provider's public one:
                                       cloudflare https://api.cloudflare.com/client/v4, railway
                                       https://backboard.railway.com/graphql/v2, firebase hosting
                                       https://firebasehosting.googleapis.com/v1beta1 */
    char *token;                    /* cloudflare / railway API token, usually ${env:...}; never
                                       logged, never in an error message */
    char *token_kind;               /* railway: "bearer" (account/workspace token, default) |
                                       "project" (Project-Access-Token header) */
    char *account_id;               /* cloudflare */
    char *project;                  /* cloudflare: Pages project name; railway: project id;
                                       firebase: Google Cloud project id */
    char *production_branch;        /* cloudflare: default "main" */
    char *service_id;               /* railway */
    char *environment_id;           /* railway */
    char *site;                     /* firebase Hosting site id; default = project */
    char *credentials_file;         /* firebase: service-account key JSON file */
    char *oauth_token_uri;          /* firebase: overrides the key file's token_uri (tests) */
    char *functions_api_base;       /* firebase: default https://cloudfunctions.googleapis.com/v2 */
    char *region;                   /* firebase functions: default "us-central1" */
    int request_timeout_ms;         /* each provider API call, default 30000 */
    int max_attempts;               /* attempts per call (only calls safe to repeat), default 5 */
    int poll_interval_ms;           /* following a deployment / operation, default 1000 */
    int budget_requests;            /* requests per credential per window, shared by every
                                       process through Redis; default 1200 (cloudflare's) */
    int budget_window_s;            /* default 300 */
    int64_t budget_deploys_per_day; /* firebase resource budgets; 0 = none */
    int64_t budget_upload_bytes;    /* upload bytes per day; 0 = none */
    int budget_function_count;      /* 0 = none */
    int drift_check_interval_ms;    /* firebase: cloud-sync-sentinel's watch, default 60000 */
} sn_target_config_t;

typedef struct {
    bool required;    /* default false */
    char **approvers; /* principals or token names; empty = any operator */
    int expiry_s;     /* 0 = never */
} sn_approval_config_t;

typedef struct {
    char *name;   /* "staging" */
    char *branch; /* "staging" */
    sn_approval_config_t approval;
    char *strategy;         /* blue-green (default) | canary | rolling */
    bool supersede;         /* a newer run supersedes older queued ones; default true */
    bool require_signed;    /* gate 1: git verify-commit */
    char *promote_from;     /* environment whose verified artifact is promoted (e.g. "staging") */
    char **targets;         /* target names; NULL-terminated */
    int step_timeout_s;     /* default deadline per step, default 600 */
    int approval_timeout_s; /* how long a run waits for approval, default 86400 */
    /* GitHub projects (issue 4). require_signed means GitHub's commit verification. */
    char **required_workflows;      /* workflow names that must conclude success on the
                                       head commit; empty = every workflow run seen for
                                       the commit (at least one) */
    bool require_branch_protection; /* the environment's branch must be protected */
    int required_approvals;         /* approving reviews on the PR that brought the commit */
} sn_environment_config_t;

typedef struct {
    char *name;
    char *source_type;       /* "local" | "github" */
    char *repo;              /* local: path of the git repository; github with
                                artifact_from local: the clone URL */
    char *github_repo;       /* github: "owner/name"; webhooks from any other repository
                                are refused (the allow-list) */
    char *artifact_from;     /* github: "github" (the verified run's Actions artifact,
                                default) | "local" (build the verified commit here) */
    char *artifact_name;     /* github: the Actions artifact's name, default "site" */
    char *seed_from;         /* if repo does not exist, `sentinelctl up` creates it (bare,
                                branches main and staging, a post-receive hook) from this
                                directory's files; the quick start uses examples/hello-site */
    int poll_interval_ms;    /* ref polling, default 5000; 0 = only notify push */
    char **build_steps;      /* shell commands run in the checkout; NULL-terminated */
    char *build_output;      /* directory (relative to the checkout) that is the artifact */
    int build_timeout_s;     /* default 600 */
    char *build_user;        /* unprivileged user for build steps, default "nobody" */
    char **build_env;        /* "NAME=value" declared variables; NULL-terminated */
    char **build_secrets;    /* secret names made available as env; NULL-terminated */
    int64_t build_memory_mb; /* RLIMIT_AS, default 2048 */
    int64_t build_max_procs; /* RLIMIT_NPROC, default 256 */
    sn_environment_config_t *environments;
    size_t environment_count;
} sn_project_config_t;

/* A notification channel. */
typedef struct {
    char *name;
    char *type;         /* log | file | webhook | telegram | slack | discord | email */
    char *path;         /* file: JSON lines */
    char *url;          /* webhook, slack and discord (the webhook URL: a secret, never
                           logged); email: smtp://host:port or smtps://host:port */
    char *secret;       /* webhook HMAC key, usually ${env:...} or ${secret:...} */
    char *min_severity; /* info | warning | critical, default info */
    int timeout_ms;     /* default 5000 */
    int max_attempts;   /* default 5 */
    char *api_base;     /* telegram: default https://api.telegram.org */
    char *token;        /* telegram bot token (in the URL path: never logged) */
    char *chat_id;      /* telegram */
    char *username;     /* email: SMTP AUTH */
    char *password;     /* email */
    char *from;         /* email: From address */
    char **to;          /* email: recipients; NULL-terminated */
    bool starttls;      /* email over smtp://: require STARTTLS (default true) */
    char *ca_file;      /* email: CA bundle to verify the server with (default: the
                           system's) */
} sn_channel_config_t;

/* A notification route (Alertmanager's model). Matchers are "key=value" over the labels
 * severity, project, environment, target and type ("type=deploy.*" matches a prefix);
 * every matcher must hold. A child inherits what it leaves unset (-1 / empty). */
typedef struct sn_route_config sn_route_config_t;
struct sn_route_config {
    char **channels;        /* channel names; empty = the parent's (root: every channel) */
    char **match;           /* "key=value"; NULL-terminated */
    char **group_by;        /* label names; root default [project, environment, type] */
    int group_wait_ms;      /* root default 30000 */
    int group_interval_ms;  /* root default 300000 */
    int repeat_interval_ms; /* root default 14400000 */
    bool continue_;         /* `continue`: keep matching siblings after this one */
    sn_route_config_t *routes;
    size_t route_count;
};

/* A source alert matching source_match mutes target alerts matching target_match that
 * have the same values for the labels in equal. */
typedef struct {
    char **source_match;
    char **target_match;
    char **equal;
} sn_inhibit_config_t;

typedef struct {
    sn_route_config_t route; /* `notify.route`, the root */
    sn_inhibit_config_t *inhibit_rules;
    size_t inhibit_count;
} sn_notify_config_t;

/* GitHub (issue 4): one connection, used by the gateway (webhooks), build-validator
 * (polling, artifacts) and github-workflow (statuses, deployments, feedback, policy). */
typedef struct {
    char *api_base; /* default https://api.github.com */
    char *token;    /* Bearer token (PAT / GITHUB_TOKEN); or a GitHub App: */
    char *app_id;   /* the JWT's iss */
    char *installation_id;
    char *private_key_file;    /* the App's PEM key */
    char *webhook_secret;      /* X-Hub-Signature-256 key; webhooks refused (401) without it */
    int64_t max_webhook_bytes; /* default 26214400 (GitHub caps payloads at 25 MB) */
    int request_timeout_ms;    /* default 15000 */
    int max_attempts;          /* default 5 */
    int max_wait_s;            /* longest rate-limit wait honoured, default 900 */
    char *status_context;      /* commit status context, default "sentinel" */
    char *public_url;          /* Sentinel's API base for target_url links, default
                                  http://<gateway.listen> */
} sn_github_config_t;

/* An API token: stored hashed (sha256 hex), with a role. Role "agent" is for the
 * deployers of other hosts: it may fetch artifacts (GET/HEAD /api/v1/artifacts/{sha256})
 * and nothing else. */
typedef struct {
    char *name;
    char *sha256; /* hex digest of the token */
    char *role;   /* viewer | operator | admin | agent */
} sn_token_config_t;

typedef struct {
    char *listen; /* default 127.0.0.1:8700 */
    sn_token_config_t *tokens;
    size_t token_count;
    int max_sse;            /* default 64 */
    int max_connections;    /* default 256 */
    int64_t max_body_bytes; /* default 1 MiB */
} sn_gateway_config_t;

/* Where a local-deployer fetches an artifact that is not in its own store: the gateway of
 * the host that built it (GET <url>/api/v1/artifacts/<sha256>). Absent (url NULL): no
 * fetching, a missing artifact fails the stage. */
typedef struct {
    char *url;              /* "http://buildhost:8700" (http or https) */
    char *token;            /* Bearer token (role agent or viewer), usually
                               ${env:SENTINEL_ARTIFACT_TOKEN}; never logged; may be NULL */
    int timeout_ms;         /* whole download, default 600000 */
    int connect_timeout_ms; /* default 10000 */
    int64_t max_bytes;      /* largest artifact accepted, default 8 GiB */
} sn_artifact_source_config_t;

typedef struct {
    char *path;       /* the file it was read from */
    char *namespace_; /* key prefix, default "sentinel:" */
    char *state_dir;  /* default ./var */
    char *log_level;  /* default "info" */
    sn_broker_config_t broker;
    sn_redis_config_t redis;
    sn_runtime_config_t runtime;
    sn_retention_config_t retention;
    sn_process_config_t *processes;
    size_t process_count;
    sn_project_config_t *projects;
    size_t project_count;
    sn_target_config_t *targets;
    size_t target_count;
    sn_channel_config_t *channels;
    size_t channel_count;
    sn_gateway_config_t gateway;
    sn_notify_config_t notify;                   /* `notify:` */
    sn_github_config_t github;                   /* `github:` */
    char *artifact_dir;                          /* default <state_dir>/artifacts */
    sn_artifact_source_config_t artifact_source; /* `artifact_source:` */
    char *audit_archive;                         /* default <state_dir>/audit.log */
    char *audit_key_file; /* head-signing key, default <state_dir>/audit.key */
    char hash[65];        /* sha256 hex of the file's bytes (agent registration) */
} sn_config_t;

/* Lookups (borrowed results, NULL if absent). */
const sn_project_config_t *sn_config_project(const sn_config_t *cfg, const char *name);
const sn_environment_config_t *sn_config_environment(const sn_project_config_t *project,
                                                     const char *name);
const sn_target_config_t *sn_config_target(const sn_config_t *cfg, const char *name);

/* The service that deploys @target: "deploy.local.<host>" for local_static and
 * local_command (<host> = the target's host, else @default_host), "deploy.cloudflare",
 * "deploy.railway", "deploy.firebase" (firebase-sync). Caller frees. */
char *sn_config_deploy_service(const sn_target_config_t *target, const char *default_host);
/* True for the cloud types (cloudflare_pages, firebase, railway). */
bool sn_config_target_is_cloud(const sn_target_config_t *target);
/* False for a target whose provider has no preview (railway): its stage is its live
 * deploy, so a failing run rolls it back once staged. */
bool sn_config_target_has_preview(const sn_target_config_t *target);

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
