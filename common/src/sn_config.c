/* sentinel.yml loader. libyaml's event parser (yaml_parser_parse) builds a small tree of
 * scalars, mappings and sequences that keeps every node's line and column; the tree is
 * then walked against a declarative schema table (one row per key: type, range, default,
 * offset into the config struct), so every error names file:line:column and the key path.
 * The same table drives defaults and sn_config_fini, so a new section is new rows.
 * Checks that span keys (unique names, environment -> target references, promote_from,
 * per-type requirements of targets and channels, listen clashes) run in s_finish once
 * every row has its value; they point at the offending node and never print a value that
 * came from ${env:...} (channel secrets). */
#include "sentinel/sn_config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <yaml.h>

#define S_MAX_BYTES (1024 * 1024) /* refuse bigger files */
#define S_MAX_DEPTH 32            /* nesting of mappings and sequences */
#define S_MAX_NODES 200000        /* a 1 MiB file holds fewer; a bound all the same */
#define S_PATH_LEN 512
#define S_Z85_CHARS                                                                                \
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

/* ---- the parsed tree ------------------------------------------------------------------ */

typedef enum { S_NODE_SCALAR, S_NODE_MAP, S_NODE_SEQ } s_node_type_t;

typedef struct s_node {
    s_node_type_t type;
    int line; /* 1-based */
    int col;  /* 1-based */
    bool is_plain;
    char *value; /* scalar bytes, NUL-terminated */
    size_t len;
    struct s_node **items; /* map: key, value, key, value...; seq: items */
    size_t count;
    size_t cap;
} s_node_t;

/* ---- the schema ----------------------------------------------------------------------- */

typedef enum {
    S_STR,      /* char * */
    S_INT,      /* int or int64_t (by width), in [min, max] */
    S_DURATION, /* int or int64_t in units of unit_ms; "250ms", "5s", "2m", "1h", "1d" or a bare
                   number */
    S_BOOL,     /* bool */
    S_ENUM,     /* char *, one of choices */
    S_STRLIST,  /* char **, NULL-terminated, never NULL after load */
    S_MAP,      /* an embedded struct described by section */
    S_SEQ,      /* an array of structs described by section, with a size_t count */
} s_kind_t;

typedef struct s_ctx s_ctx_t;
typedef struct s_section s_section_t;

/* Checks a string value; returns NULL if fine or a static explanation. */
typedef const char *(*s_check_fn)(const char *value);

typedef struct {
    const char *key;
    s_kind_t kind;
    size_t offset;
    size_t width; /* sizeof the member (ints) */
    int64_t min, max;
    int64_t unit_ms; /* durations: milliseconds per unit of the member */
    const char *def; /* default, written as it would be in the file; NULL: none */
    bool required;
    bool is_raw; /* no ${...} substitution (keys that may contain "${") */
    const char *const *choices;
    s_check_fn check;
    const s_section_t *section;
    size_t count_offset;
} s_field_t;

/* Called when a mapping-valued key holds a scalar instead (e.g. `redis: embedded`). */
typedef sn_rc_t (*s_scalar_fn)(s_ctx_t *ctx, const s_node_t *node, void *base, const char *path);

struct s_section {
    const s_field_t *fields;
    size_t field_count;
    size_t size; /* sizeof the struct, for sequence items */
    s_scalar_fn on_scalar;
};

struct s_ctx {
    const char *name;
    char *err;
    size_t err_len;
    s_node_t *root;
};

static const char *s_check_endpoint(const char *value);
static const char *s_check_z85(const char *value);
static sn_rc_t s_redis_scalar(s_ctx_t *ctx, const s_node_t *node, void *base, const char *path);

#define S_MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define S_ROW_STR(T, m, k, d, req)                                                                 \
    {                                                                                              \
        .key = (k), .kind = S_STR, .offset = offsetof(T, m), .def = (d), .required = (req)         \
    }
#define S_ROW_CHECKED(T, m, k, d, fn, raw)                                                         \
    {                                                                                              \
        .key = (k), .kind = S_STR, .offset = offsetof(T, m), .def = (d), .check = (fn),            \
        .is_raw = (raw)                                                                            \
    }
#define S_ROW_INT(T, m, k, lo, hi, d)                                                              \
    {                                                                                              \
        .key = (k), .kind = S_INT, .offset = offsetof(T, m), .width = S_MEMBER_SIZE(T, m),         \
        .min = (lo), .max = (hi), .def = (d)                                                       \
    }
#define S_ROW_DUR(T, m, k, unit, lo, hi, d)                                                        \
    {                                                                                              \
        .key = (k), .kind = S_DURATION, .offset = offsetof(T, m), .width = S_MEMBER_SIZE(T, m),    \
        .unit_ms = (unit), .min = (lo), .max = (hi), .def = (d)                                    \
    }
#define S_ROW_BOOL(T, m, k, d)                                                                     \
    {                                                                                              \
        .key = (k), .kind = S_BOOL, .offset = offsetof(T, m), .def = (d)                           \
    }
#define S_ROW_ENUM(T, m, k, ch, d)                                                                 \
    {                                                                                              \
        .key = (k), .kind = S_ENUM, .offset = offsetof(T, m), .choices = (ch), .def = (d)          \
    }
#define S_ROW_ENUM_REQ(T, m, k, ch)                                                                \
    {                                                                                              \
        .key = (k), .kind = S_ENUM, .offset = offsetof(T, m), .choices = (ch), .required = true    \
    }
/* A required `name` restricted to what is safe in a file name and a Redis key. */
#define S_ROW_NAME(T)                                                                              \
    {                                                                                              \
        .key = "name", .kind = S_STR, .offset = offsetof(T, name), .required = true,               \
        .check = s_check_name                                                                      \
    }
#define S_ROW_LIST(T, m, k, fn, raw)                                                               \
    {                                                                                              \
        .key = (k), .kind = S_STRLIST, .offset = offsetof(T, m), .check = (fn), .is_raw = (raw)    \
    }
#define S_ROW_MAP(T, m, k, sec)                                                                    \
    {                                                                                              \
        .key = (k), .kind = S_MAP, .offset = offsetof(T, m), .section = (sec)                      \
    }
#define S_ROW_SEQ(T, m, cnt, k, sec)                                                               \
    {                                                                                              \
        .key = (k), .kind = S_SEQ, .offset = offsetof(T, m), .count_offset = offsetof(T, cnt),     \
        .section = (sec)                                                                           \
    }
#define S_SECTION(T, rows, fn)                                                                     \
    {                                                                                              \
        (rows), SN_ARRAY_LEN(rows), sizeof(T), (fn)                                                \
    }

static const s_field_t s_principal_rows[] = {
    S_ROW_STR(sn_principal_config_t, name, "name", NULL, true),
    {.key = "public_key",
     .kind = S_STR,
     .offset = offsetof(sn_principal_config_t, public_key),
     .required = true,
     .is_raw = true,
     .check = s_check_z85},
    S_ROW_LIST(sn_principal_config_t, publish, "publish", NULL, false),
    S_ROW_LIST(sn_principal_config_t, subscribe, "subscribe", NULL, false),
    S_ROW_LIST(sn_principal_config_t, call, "call", NULL, false),
    S_ROW_LIST(sn_principal_config_t, serve, "serve", NULL, false),
};
static const s_section_t s_principal_section =
    S_SECTION(sn_principal_config_t, s_principal_rows, NULL);

static const s_field_t s_broker_rows[] = {
    S_ROW_CHECKED(sn_broker_config_t, rpc, "rpc", "tcp://127.0.0.1:7700", s_check_endpoint, false),
    S_ROW_CHECKED(sn_broker_config_t, pub, "pub", "tcp://127.0.0.1:7701", s_check_endpoint, false),
    S_ROW_CHECKED(sn_broker_config_t, sub, "sub", "tcp://127.0.0.1:7702", s_check_endpoint, false),
    S_ROW_BOOL(sn_broker_config_t, curve, "curve", "false"),
    S_ROW_STR(sn_broker_config_t, server_secret_file, "server_secret_file", NULL, false),
    S_ROW_CHECKED(sn_broker_config_t, server_public_key, "server_public_key", NULL, s_check_z85,
                  true),
    S_ROW_STR(sn_broker_config_t, client_cert_file, "client_cert_file", NULL, false),
    S_ROW_SEQ(sn_broker_config_t, principals, principal_count, "principals", &s_principal_section),
    S_ROW_LIST(sn_broker_config_t, revoked, "revoked", s_check_z85, true),
    S_ROW_DUR(sn_broker_config_t, heartbeat_ms, "heartbeat_ms", 1, 100, 60000, "1000"),
    S_ROW_INT(sn_broker_config_t, heartbeat_liveness, "heartbeat_liveness", 1, 100, "3"),
    S_ROW_INT(sn_broker_config_t, max_frame_bytes, "max_frame_bytes", 1024, INT64_C(1) << 30,
              "1048576"),
};
static const s_section_t s_broker_section = S_SECTION(sn_broker_config_t, s_broker_rows, NULL);

static const s_field_t s_redis_rows[] = {
    S_ROW_BOOL(sn_redis_config_t, embedded, "embedded", "false"),
    S_ROW_STR(sn_redis_config_t, unix_path, "unix_path", NULL, false),
    S_ROW_STR(sn_redis_config_t, host, "host", "127.0.0.1", false),
    S_ROW_INT(sn_redis_config_t, port, "port", 1, 65535, "6379"),
    S_ROW_DUR(sn_redis_config_t, timeout_ms, "timeout_ms", 1, 10, 600000, "2000"),
};
static const s_section_t s_redis_section =
    S_SECTION(sn_redis_config_t, s_redis_rows, s_redis_scalar);

#define S_DAY_MS INT64_C(86400000)
static const s_field_t s_runtime_rows[] = {
    S_ROW_DUR(sn_runtime_config_t, leader_ttl_ms, "leader_ttl_ms", 1, 100, 3600000, "5000"),
    /* default ttl / 3, filled in by s_finish */
    S_ROW_DUR(sn_runtime_config_t, leader_renew_ms, "leader_renew_ms", 1, 10, 3600000, NULL),
    S_ROW_DUR(sn_runtime_config_t, job_lease_ms, "job_lease_ms", 1, 100, S_DAY_MS, "30000"),
    S_ROW_DUR(sn_runtime_config_t, job_lease_max_ms, "job_lease_max_ms", 1, 100, 7 * S_DAY_MS,
              "3600000"),
    S_ROW_INT(sn_runtime_config_t, job_max_attempts, "job_max_attempts", 1, 1000, "5"),
    S_ROW_DUR(sn_runtime_config_t, shutdown_grace_ms, "shutdown_grace_ms", 1, 0, 600000, "10000"),
    S_ROW_DUR(sn_runtime_config_t, agent_ttl_ms, "agent_ttl_ms", 1, 1000, 3600000, "15000"),
    S_ROW_INT(sn_runtime_config_t, journal_max_len, "journal_max_len", 1, INT64_C(1000000000000),
              "1000000"),
    S_ROW_DUR(sn_runtime_config_t, journal_max_age_s, "journal_max_age_s", 1000, 60, 3650 * 86400,
              "30d"),
};
static const s_section_t s_runtime_section = S_SECTION(sn_runtime_config_t, s_runtime_rows, NULL);

static const s_field_t s_retention_rows[] = {
    S_ROW_DUR(sn_retention_config_t, runs_max_age_s, "runs_max_age_s", 1000, 3600, 3650 * 86400,
              "90d"),
    S_ROW_INT(sn_retention_config_t, dead_letters, "dead_letters", 0, 100000000, "1000"),
    S_ROW_DUR(sn_retention_config_t, work_dir_max_age_s, "work_dir_max_age_s", 1000, 60,
              3650 * 86400, "1d"),
    S_ROW_DUR(sn_retention_config_t, gc_interval_s, "gc_interval_s", 1000, 0, 365 * 86400, "1d"),
};
static const s_section_t s_retention_section =
    S_SECTION(sn_retention_config_t, s_retention_rows, NULL);

static const s_field_t s_process_rows[] = {
    S_ROW_STR(sn_process_config_t, role, "role", NULL, true),
    S_ROW_INT(sn_process_config_t, instances, "instances", 1, 64, "1"),
};
static const s_section_t s_process_section = S_SECTION(sn_process_config_t, s_process_rows, NULL);

/* ---- the pipeline (issue 3) ---------------------------------------------------------- */

static const char *s_check_name(const char *value);
static const char *s_check_hostport(const char *value);
static const char *s_check_http_url(const char *value);
static const char *s_check_env_assignment(const char *value);
static const char *s_check_env_name(const char *value);
static const char *s_check_relative_path(const char *value);
static const char *s_check_sha256(const char *value);
static const char *s_check_url_path(const char *value);

static const s_field_t s_check_rows[] = {
    S_ROW_CHECKED(sn_check_config_t, path, "path", "/", s_check_url_path, false),
    S_ROW_INT(sn_check_config_t, status, "status", 100, 599, "200"),
    S_ROW_STR(sn_check_config_t, body_contains, "body_contains", NULL, false),
    S_ROW_DUR(sn_check_config_t, max_latency_ms, "max_latency_ms", 1, 1, 600000, "2000"),
    S_ROW_INT(sn_check_config_t, consecutive, "consecutive", 1, 100, "3"),
    S_ROW_INT(sn_check_config_t, fail_after, "fail_after", 0, 1000, "0"),
    S_ROW_DUR(sn_check_config_t, interval_ms, "interval_ms", 1, 10, 600000, "500"),
    S_ROW_DUR(sn_check_config_t, deadline_ms, "deadline_ms", 1, 100, S_DAY_MS, "30000"),
    S_ROW_STR(sn_check_config_t, dns_name, "dns_name", NULL, false),
    S_ROW_STR(sn_check_config_t, dns_expect, "dns_expect", NULL, false),
    S_ROW_LIST(sn_check_config_t, dns_resolvers, "dns_resolvers", s_check_hostport, false),
};
static const s_section_t s_check_section = S_SECTION(sn_check_config_t, s_check_rows, NULL);

static const char *const s_target_types[] = {"local_static", "local_command", "cloudflare_pages",
                                             "firebase",     "railway",       NULL};
static const char *const s_token_kinds[] = {"bearer", "project", NULL};

static const s_field_t s_target_rows[] = {
    S_ROW_NAME(sn_target_config_t),
    S_ROW_ENUM_REQ(sn_target_config_t, type, "type", s_target_types),
    S_ROW_STR(sn_target_config_t, host, "host", NULL, false),
    S_ROW_CHECKED(sn_target_config_t, listen, "listen", NULL, s_check_hostport, false),
    S_ROW_CHECKED(sn_target_config_t, preview_listen, "preview_listen", NULL, s_check_hostport,
                  false),
    S_ROW_CHECKED(sn_target_config_t, url, "url", NULL, s_check_http_url, false),
    S_ROW_CHECKED(sn_target_config_t, preview_url, "preview_url", NULL, s_check_http_url, false),
    S_ROW_INT(sn_target_config_t, keep_releases, "keep_releases", 1, 1000, "5"),
    S_ROW_STR(sn_target_config_t, stage_command, "stage_command", NULL, false),
    S_ROW_STR(sn_target_config_t, promote_command, "promote_command", NULL, false),
    S_ROW_STR(sn_target_config_t, health_command, "health_command", NULL, false),
    S_ROW_STR(sn_target_config_t, rollback_command, "rollback_command", NULL, false),
    S_ROW_DUR(sn_target_config_t, command_timeout_ms, "command_timeout_ms", 1, 100, S_DAY_MS,
              "120000"),
    S_ROW_MAP(sn_target_config_t, check, "check", &s_check_section),
    S_ROW_CHECKED(sn_target_config_t, api_base, "api_base", NULL, s_check_http_url, false),
    S_ROW_STR(sn_target_config_t, token, "token", NULL, false),
    S_ROW_ENUM(sn_target_config_t, token_kind, "token_kind", s_token_kinds, "bearer"),
    S_ROW_STR(sn_target_config_t, account_id, "account_id", NULL, false),
    S_ROW_STR(sn_target_config_t, project, "project", NULL, false),
    S_ROW_STR(sn_target_config_t, production_branch, "production_branch", "main", false),
    S_ROW_STR(sn_target_config_t, service_id, "service_id", NULL, false),
    S_ROW_STR(sn_target_config_t, environment_id, "environment_id", NULL, false),
    S_ROW_STR(sn_target_config_t, site, "site", NULL, false),
    S_ROW_STR(sn_target_config_t, credentials_file, "credentials_file", NULL, false),
    S_ROW_CHECKED(sn_target_config_t, oauth_token_uri, "oauth_token_uri", NULL, s_check_http_url,
                  false),
    S_ROW_CHECKED(sn_target_config_t, functions_api_base, "functions_api_base", NULL,
                  s_check_http_url, false),
    S_ROW_STR(sn_target_config_t, region, "region", "us-central1", false),
    S_ROW_DUR(sn_target_config_t, request_timeout_ms, "request_timeout_ms", 1, 100, 3600000,
              "30000"),
    S_ROW_INT(sn_target_config_t, max_attempts, "max_attempts", 1, 100, "5"),
    S_ROW_DUR(sn_target_config_t, poll_interval_ms, "poll_interval_ms", 1, 10, 600000, "1000"),
    S_ROW_INT(sn_target_config_t, budget_requests, "budget_requests", 1, 100000000, "1200"),
    S_ROW_DUR(sn_target_config_t, budget_window_s, "budget_window_s", 1000, 1, 86400, "300"),
    S_ROW_INT(sn_target_config_t, budget_deploys_per_day, "budget_deploys_per_day", 0,
              INT64_C(1) << 40, "0"),
    S_ROW_INT(sn_target_config_t, budget_upload_bytes, "budget_upload_bytes", 0, INT64_C(1) << 50,
              "0"),
    S_ROW_INT(sn_target_config_t, budget_function_count, "budget_function_count", 0, 100000, "0"),
    S_ROW_DUR(sn_target_config_t, drift_check_interval_ms, "drift_check_interval_ms", 1, 50,
              S_DAY_MS, "60000"),
};
static const s_section_t s_target_section = S_SECTION(sn_target_config_t, s_target_rows, NULL);

static const s_field_t s_approval_rows[] = {
    S_ROW_BOOL(sn_approval_config_t, required, "required", "false"),
    S_ROW_LIST(sn_approval_config_t, approvers, "approvers", NULL, false),
    S_ROW_DUR(sn_approval_config_t, expiry_s, "expiry_s", 1000, 0, 365 * 86400, "0"),
};
static const s_section_t s_approval_section =
    S_SECTION(sn_approval_config_t, s_approval_rows, NULL);

static const char *const s_strategies[] = {"blue-green", "canary", "rolling", NULL};

static const s_field_t s_environment_rows[] = {
    S_ROW_NAME(sn_environment_config_t),
    S_ROW_STR(sn_environment_config_t, branch, "branch", NULL, true),
    S_ROW_MAP(sn_environment_config_t, approval, "approval", &s_approval_section),
    S_ROW_ENUM(sn_environment_config_t, strategy, "strategy", s_strategies, "blue-green"),
    S_ROW_BOOL(sn_environment_config_t, supersede, "supersede", "true"),
    S_ROW_BOOL(sn_environment_config_t, require_signed, "require_signed", "false"),
    S_ROW_STR(sn_environment_config_t, promote_from, "promote_from", NULL, false),
    S_ROW_LIST(sn_environment_config_t, targets, "targets", NULL, false),
    S_ROW_DUR(sn_environment_config_t, step_timeout_s, "step_timeout_s", 1000, 1, 7 * 86400, "600"),
    S_ROW_DUR(sn_environment_config_t, approval_timeout_s, "approval_timeout_s", 1000, 1,
              30 * 86400, "86400"),
    S_ROW_LIST(sn_environment_config_t, required_workflows, "required_workflows", NULL, false),
    S_ROW_BOOL(sn_environment_config_t, require_branch_protection, "require_branch_protection",
               "false"),
    S_ROW_INT(sn_environment_config_t, required_approvals, "required_approvals", 0, 100, "0"),
};
static const s_section_t s_environment_section =
    S_SECTION(sn_environment_config_t, s_environment_rows, NULL);

static const char *const s_source_types[] = {"local", "github", NULL};
static const char *const s_artifact_froms[] = {"github", "local", NULL};
static const char *s_check_github_repo(const char *value);

static const s_field_t s_project_rows[] = {
    S_ROW_NAME(sn_project_config_t),
    S_ROW_ENUM(sn_project_config_t, source_type, "source_type", s_source_types, "local"),
    S_ROW_STR(sn_project_config_t, repo, "repo", NULL, false),
    S_ROW_STR(sn_project_config_t, seed_from, "seed_from", NULL, false),
    S_ROW_DUR(sn_project_config_t, poll_interval_ms, "poll_interval_ms", 1, 0, S_DAY_MS, "5000"),
    S_ROW_LIST(sn_project_config_t, build_steps, "build_steps", NULL, false),
    S_ROW_CHECKED(sn_project_config_t, build_output, "build_output", ".", s_check_relative_path,
                  false),
    S_ROW_DUR(sn_project_config_t, build_timeout_s, "build_timeout_s", 1000, 1, 86400, "600"),
    S_ROW_CHECKED(sn_project_config_t, build_user, "build_user", "nobody", s_check_name, false),
    S_ROW_LIST(sn_project_config_t, build_env, "build_env", s_check_env_assignment, false),
    S_ROW_LIST(sn_project_config_t, build_secrets, "build_secrets", s_check_env_name, true),
    S_ROW_INT(sn_project_config_t, build_memory_mb, "build_memory_mb", 16, INT64_C(1) << 30,
              "2048"),
    S_ROW_INT(sn_project_config_t, build_max_procs, "build_max_procs", 1, 1000000, "256"),
    S_ROW_SEQ(sn_project_config_t, environments, environment_count, "environments",
              &s_environment_section),
    S_ROW_CHECKED(sn_project_config_t, github_repo, "github_repo", NULL, s_check_github_repo,
                  false),
    S_ROW_ENUM(sn_project_config_t, artifact_from, "artifact_from", s_artifact_froms, "github"),
    S_ROW_STR(sn_project_config_t, artifact_name, "artifact_name", "site", false),
};
static const s_section_t s_project_section = S_SECTION(sn_project_config_t, s_project_rows, NULL);

static const char *const s_channel_types[] = {"log",   "file",    "webhook", "telegram",
                                              "slack", "discord", "email",   NULL};
static const char *s_check_channel_url(const char *value);
static const char *const s_severities[] = {"info", "warning", "critical", NULL};

static const s_field_t s_channel_rows[] = {
    S_ROW_NAME(sn_channel_config_t),
    S_ROW_ENUM_REQ(sn_channel_config_t, type, "type", s_channel_types),
    S_ROW_STR(sn_channel_config_t, path, "path", NULL, false),
    /* checked in s_finish_channels, never printed: a Slack / Discord URL is a secret */
    S_ROW_STR(sn_channel_config_t, url, "url", NULL, false),
    S_ROW_STR(sn_channel_config_t, secret, "secret", NULL, false),
    S_ROW_ENUM(sn_channel_config_t, min_severity, "min_severity", s_severities, "info"),
    S_ROW_DUR(sn_channel_config_t, timeout_ms, "timeout_ms", 1, 100, 600000, "5000"),
    S_ROW_INT(sn_channel_config_t, max_attempts, "max_attempts", 1, 100, "5"),
    S_ROW_CHECKED(sn_channel_config_t, api_base, "api_base", NULL, s_check_http_url, false),
    S_ROW_STR(sn_channel_config_t, token, "token", NULL, false),
    S_ROW_STR(sn_channel_config_t, chat_id, "chat_id", NULL, false),
    S_ROW_STR(sn_channel_config_t, username, "username", NULL, false),
    S_ROW_STR(sn_channel_config_t, password, "password", NULL, false),
    S_ROW_STR(sn_channel_config_t, from, "from", NULL, false),
    S_ROW_LIST(sn_channel_config_t, to, "to", NULL, false),
    S_ROW_BOOL(sn_channel_config_t, starttls, "starttls", "true"),
    S_ROW_STR(sn_channel_config_t, ca_file, "ca_file", NULL, false),
};
static const s_section_t s_channel_section = S_SECTION(sn_channel_config_t, s_channel_rows, NULL);

/* Routes nest: the section refers to itself (a tentative definition, completed below). */
static const s_section_t s_route_section;
static const char *s_check_matcher(const char *value);

static const s_field_t s_route_rows[] = {
    S_ROW_LIST(sn_route_config_t, channels, "channels", s_check_name, false),
    S_ROW_LIST(sn_route_config_t, match, "match", s_check_matcher, false),
    S_ROW_LIST(sn_route_config_t, group_by, "group_by", NULL, false),
    S_ROW_DUR(sn_route_config_t, group_wait_ms, "group_wait_ms", 1, -1, S_DAY_MS, "-1"),
    S_ROW_DUR(sn_route_config_t, group_interval_ms, "group_interval_ms", 1, -1, 7 * S_DAY_MS, "-1"),
    S_ROW_DUR(sn_route_config_t, repeat_interval_ms, "repeat_interval_ms", 1, -1, 30 * S_DAY_MS,
              "-1"),
    S_ROW_BOOL(sn_route_config_t, continue_, "continue", "false"),
    S_ROW_SEQ(sn_route_config_t, routes, route_count, "routes", &s_route_section),
};
static const s_section_t s_route_section = S_SECTION(sn_route_config_t, s_route_rows, NULL);

static const s_field_t s_inhibit_rows[] = {
    S_ROW_LIST(sn_inhibit_config_t, source_match, "source_match", s_check_matcher, false),
    S_ROW_LIST(sn_inhibit_config_t, target_match, "target_match", s_check_matcher, false),
    S_ROW_LIST(sn_inhibit_config_t, equal, "equal", NULL, false),
};
static const s_section_t s_inhibit_section = S_SECTION(sn_inhibit_config_t, s_inhibit_rows, NULL);

static const s_field_t s_notify_rows[] = {
    S_ROW_MAP(sn_notify_config_t, route, "route", &s_route_section),
    S_ROW_SEQ(sn_notify_config_t, inhibit_rules, inhibit_count, "inhibit_rules",
              &s_inhibit_section),
};
static const s_section_t s_notify_section = S_SECTION(sn_notify_config_t, s_notify_rows, NULL);

/* Secrets (token, webhook_secret) have no check function: no error prints them. */
static const s_field_t s_github_rows[] = {
    S_ROW_CHECKED(sn_github_config_t, api_base, "api_base", "https://api.github.com",
                  s_check_http_url, false),
    S_ROW_STR(sn_github_config_t, token, "token", NULL, false),
    S_ROW_STR(sn_github_config_t, app_id, "app_id", NULL, false),
    S_ROW_STR(sn_github_config_t, installation_id, "installation_id", NULL, false),
    S_ROW_STR(sn_github_config_t, private_key_file, "private_key_file", NULL, false),
    S_ROW_STR(sn_github_config_t, webhook_secret, "webhook_secret", NULL, false),
    S_ROW_INT(sn_github_config_t, max_webhook_bytes, "max_webhook_bytes", 1024, INT64_C(1) << 30,
              "26214400"),
    S_ROW_DUR(sn_github_config_t, request_timeout_ms, "request_timeout_ms", 1, 100, 600000,
              "15000"),
    S_ROW_INT(sn_github_config_t, max_attempts, "max_attempts", 1, 100, "5"),
    S_ROW_DUR(sn_github_config_t, max_wait_s, "max_wait_s", 1000, 0, 86400, "900"),
    S_ROW_STR(sn_github_config_t, status_context, "status_context", "sentinel", false),
    S_ROW_CHECKED(sn_github_config_t, public_url, "public_url", NULL, s_check_http_url, false),
};
static const s_section_t s_github_section = S_SECTION(sn_github_config_t, s_github_rows, NULL);

static const char *const s_token_roles[] = {"viewer", "operator", "admin", "agent", NULL};

static const s_field_t s_token_rows[] = {
    S_ROW_NAME(sn_token_config_t),
    {.key = "sha256",
     .kind = S_STR,
     .offset = offsetof(sn_token_config_t, sha256),
     .required = true,
     .is_raw = true,
     .check = s_check_sha256},
    S_ROW_ENUM_REQ(sn_token_config_t, role, "role", s_token_roles),
};
static const s_section_t s_token_section = S_SECTION(sn_token_config_t, s_token_rows, NULL);

static const s_field_t s_gateway_rows[] = {
    S_ROW_CHECKED(sn_gateway_config_t, listen, "listen", "127.0.0.1:8700", s_check_hostport, false),
    S_ROW_SEQ(sn_gateway_config_t, tokens, token_count, "tokens", &s_token_section),
    S_ROW_INT(sn_gateway_config_t, max_sse, "max_sse", 1, 100000, "64"),
    S_ROW_INT(sn_gateway_config_t, max_connections, "max_connections", 1, 100000, "256"),
    S_ROW_INT(sn_gateway_config_t, max_body_bytes, "max_body_bytes", 1024, INT64_C(1) << 30,
              "1048576"),
};
static const s_section_t s_gateway_section = S_SECTION(sn_gateway_config_t, s_gateway_rows, NULL);

/* The token has no check function: no error message ever prints its value. */
static const s_field_t s_artifact_source_rows[] = {
    S_ROW_CHECKED(sn_artifact_source_config_t, url, "url", NULL, s_check_http_url, false),
    S_ROW_STR(sn_artifact_source_config_t, token, "token", NULL, false),
    S_ROW_DUR(sn_artifact_source_config_t, timeout_ms, "timeout_ms", 1, 1000, S_DAY_MS, "600000"),
    S_ROW_DUR(sn_artifact_source_config_t, connect_timeout_ms, "connect_timeout_ms", 1, 100, 600000,
              "10000"),
    S_ROW_INT(sn_artifact_source_config_t, max_bytes, "max_bytes", 1024, INT64_C(1) << 40,
              "8589934592"),
};
static const s_section_t s_artifact_source_section =
    S_SECTION(sn_artifact_source_config_t, s_artifact_source_rows, NULL);

static const char *const s_log_levels[] = {"debug", "info", "warn", "error", "off", NULL};

static const s_field_t s_top_rows[] = {
    S_ROW_STR(sn_config_t, namespace_, "namespace", "sentinel:", false),
    S_ROW_STR(sn_config_t, state_dir, "state_dir", "./var", false),
    S_ROW_ENUM(sn_config_t, log_level, "log_level", s_log_levels, "info"),
    S_ROW_MAP(sn_config_t, broker, "broker", &s_broker_section),
    S_ROW_MAP(sn_config_t, redis, "redis", &s_redis_section),
    S_ROW_MAP(sn_config_t, runtime, "runtime", &s_runtime_section),
    S_ROW_MAP(sn_config_t, retention, "retention", &s_retention_section),
    S_ROW_SEQ(sn_config_t, processes, process_count, "processes", &s_process_section),
    S_ROW_SEQ(sn_config_t, projects, project_count, "projects", &s_project_section),
    S_ROW_SEQ(sn_config_t, targets, target_count, "targets", &s_target_section),
    S_ROW_SEQ(sn_config_t, channels, channel_count, "channels", &s_channel_section),
    S_ROW_MAP(sn_config_t, gateway, "gateway", &s_gateway_section),
    S_ROW_MAP(sn_config_t, notify, "notify", &s_notify_section),
    S_ROW_MAP(sn_config_t, github, "github", &s_github_section),
    /* defaults under state_dir, filled in by s_finish */
    S_ROW_STR(sn_config_t, artifact_dir, "artifact_dir", NULL, false),
    S_ROW_MAP(sn_config_t, artifact_source, "artifact_source", &s_artifact_source_section),
    S_ROW_STR(sn_config_t, audit_archive, "audit_archive", NULL, false),
    S_ROW_STR(sn_config_t, audit_key_file, "audit_key_file", NULL, false),
};
static const s_section_t s_top_section = S_SECTION(sn_config_t, s_top_rows, NULL);

/* ---- statics -------------------------------------------------------------------------- */

static sn_rc_t s_fail(s_ctx_t *ctx, const s_node_t *node, const char *path, const char *fmt, ...)
    SN_PRINTF(4, 5);
static sn_rc_t s_parse_tree(s_ctx_t *ctx, const char *data, size_t len);
static bool s_is_null(const s_node_t *node);
static void s_node_free(s_node_t *node);
static sn_rc_t s_apply_section(s_ctx_t *ctx, const s_section_t *sec, const s_node_t *node,
                               void *base, const char *path);
static void s_free_section(const s_section_t *sec, void *base);
static sn_rc_t s_finish(s_ctx_t *ctx, sn_config_t *cfg);

/* ---- public --------------------------------------------------------------------------- */

sn_rc_t sn_config_load(const char *path, sn_config_t *cfg, char *err, size_t err_len)
{
    SN_ASSERT(path && cfg);
    memset(cfg, 0, sizeof(*cfg));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err && err_len)
            snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return SN_ERROR;
    }
    char *buf = sn_malloc(S_MAX_BYTES + 1);
    size_t len = 0;
    sn_rc_t rc = SN_OK;
    for (;;) {
        ssize_t n = read(fd, buf + len, S_MAX_BYTES + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (err && err_len)
                snprintf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
            rc = SN_ERROR;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > S_MAX_BYTES)
            break;
    }
    close(fd);
    if (rc == SN_OK)
        rc = sn_config_load_string(path, buf, len, cfg, err, err_len);
    free(buf);
    return rc;
}

sn_rc_t sn_config_load_string(const char *name, const char *yaml, size_t len, sn_config_t *cfg,
                              char *err, size_t err_len)
{
    SN_ASSERT(name && cfg && (yaml || len == 0));
    memset(cfg, 0, sizeof(*cfg));
    char dummy[1];
    s_ctx_t ctx = {.name = name,
                   .err = err && err_len ? err : dummy,
                   .err_len = err && err_len ? err_len : sizeof dummy};
    ctx.err[0] = '\0';
    if (len > S_MAX_BYTES) {
        snprintf(ctx.err, ctx.err_len, "%s: file is larger than %d bytes, refused", name,
                 S_MAX_BYTES);
        return SN_ERROR;
    }
    sn_rc_t rc = s_parse_tree(&ctx, yaml ? yaml : "", len);
    if (rc == SN_OK && (!ctx.root || s_is_null(ctx.root))) {
        snprintf(ctx.err, ctx.err_len, "%s:1:1: the file is empty: expected a mapping of settings",
                 name);
        rc = SN_ERROR;
    }
    if (rc == SN_OK)
        rc = s_apply_section(&ctx, &s_top_section, ctx.root, cfg, "");
    if (rc == SN_OK)
        rc = s_finish(&ctx, cfg);
    if (rc == SN_OK) {
        cfg->path = sn_strdup(name);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        SN_ASSERT(EVP_Digest(yaml ? yaml : "", len, md, &md_len, EVP_sha256(), NULL) == 1);
        SN_ASSERT(md_len == 32);
        for (unsigned int i = 0; i < md_len; i++)
            snprintf(cfg->hash + 2 * i, 3, "%02x", md[i]);
    } else {
        sn_config_fini(cfg);
    }
    s_node_free(ctx.root);
    return rc;
}

void sn_config_fini(sn_config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    s_free_section(&s_top_section, cfg);
    memset(cfg, 0, sizeof(*cfg));
}

const sn_project_config_t *sn_config_project(const sn_config_t *cfg, const char *name)
{
    for (size_t i = 0; cfg && name && i < cfg->project_count; i++)
        if (strcmp(cfg->projects[i].name, name) == 0)
            return &cfg->projects[i];
    return NULL;
}

const sn_environment_config_t *sn_config_environment(const sn_project_config_t *project,
                                                     const char *name)
{
    for (size_t i = 0; project && name && i < project->environment_count; i++)
        if (strcmp(project->environments[i].name, name) == 0)
            return &project->environments[i];
    return NULL;
}

char *sn_config_deploy_service(const sn_target_config_t *target, const char *default_host)
{
    SN_ASSERT(target);
    if (strcmp(target->type, "cloudflare_pages") == 0)
        return sn_strdup("deploy.cloudflare");
    if (strcmp(target->type, "railway") == 0)
        return sn_strdup("deploy.railway");
    if (strcmp(target->type, "firebase") == 0)
        return sn_strdup("deploy.firebase");
    const char *host = target->host && target->host[0] ? target->host : default_host;
    return sn_strdupf("deploy.local.%s", host ? host : "");
}

bool sn_config_target_is_cloud(const sn_target_config_t *target)
{
    return target &&
           (strcmp(target->type, "cloudflare_pages") == 0 || strcmp(target->type, "railway") == 0 ||
            strcmp(target->type, "firebase") == 0);
}

bool sn_config_target_has_preview(const sn_target_config_t *target)
{
    return !target || strcmp(target->type, "railway") != 0;
}

const sn_target_config_t *sn_config_target(const sn_config_t *cfg, const char *name)
{
    for (size_t i = 0; cfg && name && i < cfg->target_count; i++)
        if (strcmp(cfg->targets[i].name, name) == 0)
            return &cfg->targets[i];
    return NULL;
}

/* ---- errors --------------------------------------------------------------------------- */

static sn_rc_t s_fail(s_ctx_t *ctx, const s_node_t *node, const char *path, const char *fmt, ...)
{
    int line = node ? node->line : 1;
    int col = node ? node->col : 1;
    int n = snprintf(ctx->err, ctx->err_len, "%s:%d:%d: ", ctx->name, line, col);
    if (n < 0 || (size_t)n >= ctx->err_len)
        return SN_ERROR;
    size_t used = (size_t)n;
    if (path && *path) {
        n = snprintf(ctx->err + used, ctx->err_len - used, "%s: ", path);
        if (n < 0 || (size_t)n >= ctx->err_len - used)
            return SN_ERROR;
        used += (size_t)n;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err + used, ctx->err_len - used, fmt, ap);
    va_end(ap);
    return SN_ERROR;
}

/* Quotes @s for a message: printable ASCII, at most 40 characters, escapes otherwise. */
static const char *s_quote(const char *s, size_t len, char *buf, size_t buf_len)
{
    size_t o = 0;
    SN_ASSERT(buf_len >= 16);
    buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 9 >= buf_len || i >= 40) { /* room: an escape, "...", the quote, NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            buf[o++] = (char)c;
        } else {
            snprintf(buf + o, buf_len - o, "\\x%02x", c);
            o += 4;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* ---- the tree, from libyaml events ---------------------------------------------------- */

static s_node_t *s_node_new(s_node_type_t type, const yaml_mark_t *mark)
{
    s_node_t *n = sn_calloc(1, sizeof(*n));
    n->type = type;
    n->line = (int)mark->line + 1;
    n->col = (int)mark->column + 1;
    return n;
}

static void s_node_free(s_node_t *node)
{
    if (!node)
        return;
    for (size_t i = 0; i < node->count; i++)
        s_node_free(node->items[i]);
    free(node->items);
    free(node->value);
    free(node);
}

static void s_node_push(s_node_t *parent, s_node_t *child)
{
    if (parent->count == parent->cap) {
        parent->cap = parent->cap ? parent->cap * 2 : 8;
        parent->items = sn_realloc(parent->items, parent->cap * sizeof(*parent->items));
    }
    parent->items[parent->count++] = child;
}

/* Line and column (1-based) of byte @offset, for reader errors that carry only an offset. */
static void s_offset_to_mark(const char *data, size_t len, size_t offset, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        if (data[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static sn_rc_t s_yaml_error(s_ctx_t *ctx, yaml_parser_t *parser, const char *data, size_t len)
{
    const char *problem = parser->problem ? parser->problem : "unknown error";
    int line = (int)parser->problem_mark.line + 1;
    int col = (int)parser->problem_mark.column + 1;
    if (parser->error == YAML_READER_ERROR) {
        s_offset_to_mark(data, len, parser->problem_offset, &line, &col);
        snprintf(ctx->err, ctx->err_len, "%s:%d:%d: invalid input: %s (byte offset %zu)", ctx->name,
                 line, col, problem, parser->problem_offset);
    } else if (parser->context && (parser->context_mark.line != parser->problem_mark.line ||
                                   parser->context_mark.column != parser->problem_mark.column)) {
        snprintf(ctx->err, ctx->err_len, "%s:%d:%d: YAML syntax error: %s %s (line %d, column %d)",
                 ctx->name, line, col, problem, parser->context, (int)parser->context_mark.line + 1,
                 (int)parser->context_mark.column + 1);
    } else if (parser->context) {
        snprintf(ctx->err, ctx->err_len, "%s:%d:%d: YAML syntax error: %s %s", ctx->name, line, col,
                 problem, parser->context);
    } else {
        snprintf(ctx->err, ctx->err_len, "%s:%d:%d: YAML syntax error: %s", ctx->name, line, col,
                 problem);
    }
    return SN_ERROR;
}

static sn_rc_t s_parse_tree(s_ctx_t *ctx, const char *data, size_t len)
{
    yaml_parser_t parser;
    SN_ASSERT(yaml_parser_initialize(&parser) == 1);
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    s_node_t *stack[S_MAX_DEPTH];
    size_t depth = 0;
    size_t nodes = 0;
    int documents = 0;
    sn_rc_t rc = SN_OK;
    bool done = false;
    while (!done && rc == SN_OK) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = s_yaml_error(ctx, &parser, data, len);
            break;
        }
        s_node_t *node = NULL;
        int line = (int)ev.start_mark.line + 1;
        int col = (int)ev.start_mark.column + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1) {
                snprintf(ctx->err, ctx->err_len,
                         "%s:%d:%d: a second YAML document: the file must hold exactly one",
                         ctx->name, line, col);
                rc = SN_ERROR;
            }
            break;
        case YAML_ALIAS_EVENT:
            snprintf(ctx->err, ctx->err_len, "%s:%d:%d: YAML aliases are not supported", ctx->name,
                     line, col);
            rc = SN_ERROR;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT: {
            const yaml_char_t *anchor = ev.type == YAML_SCALAR_EVENT ? ev.data.scalar.anchor
                                        : ev.type == YAML_MAPPING_START_EVENT
                                            ? ev.data.mapping_start.anchor
                                            : ev.data.sequence_start.anchor;
            if (anchor) {
                snprintf(ctx->err, ctx->err_len, "%s:%d:%d: YAML anchors are not supported",
                         ctx->name, line, col);
                rc = SN_ERROR;
                break;
            }
            if (++nodes > S_MAX_NODES) {
                snprintf(ctx->err, ctx->err_len, "%s:%d:%d: too many YAML nodes (more than %d)",
                         ctx->name, line, col, S_MAX_NODES);
                rc = SN_ERROR;
                break;
            }
            if (ev.type == YAML_SCALAR_EVENT) {
                node = s_node_new(S_NODE_SCALAR, &ev.start_mark);
                node->len = ev.data.scalar.length;
                node->value = sn_malloc(node->len + 1);
                memcpy(node->value, ev.data.scalar.value, node->len);
                node->value[node->len] = '\0';
                node->is_plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            } else {
                node = s_node_new(ev.type == YAML_MAPPING_START_EVENT ? S_NODE_MAP : S_NODE_SEQ,
                                  &ev.start_mark);
            }
            if (depth > 0)
                s_node_push(stack[depth - 1], node);
            else if (!ctx->root)
                ctx->root = node;
            else
                SN_ASSERT(!"two root nodes in one document");
            if (node->type != S_NODE_SCALAR) {
                if (depth == S_MAX_DEPTH) {
                    snprintf(ctx->err, ctx->err_len,
                             "%s:%d:%d: nesting deeper than %d levels, refused", ctx->name, line,
                             col, S_MAX_DEPTH);
                    rc = SN_ERROR;
                    break;
                }
                stack[depth++] = node;
            }
            break;
        }
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            SN_ASSERT(depth > 0);
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return rc;
}

static const s_node_t *s_map_get(const s_node_t *map, const char *key)
{
    if (!map || map->type != S_NODE_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < map->count; i += 2) {
        const s_node_t *k = map->items[i];
        if (k->type == S_NODE_SCALAR && strcmp(k->value, key) == 0)
            return map->items[i + 1];
    }
    return NULL;
}

static bool s_is_null(const s_node_t *node)
{
    if (node->type != S_NODE_SCALAR || !node->is_plain)
        return false;
    return node->len == 0 || strcmp(node->value, "~") == 0 || strcmp(node->value, "null") == 0 ||
           strcmp(node->value, "Null") == 0 || strcmp(node->value, "NULL") == 0;
}

static const char *s_describe(const s_node_t *node)
{
    if (node->type == S_NODE_MAP)
        return "a mapping";
    if (node->type == S_NODE_SEQ)
        return "a sequence";
    return s_is_null(node) ? "nothing" : "a scalar";
}

/* ---- substitution --------------------------------------------------------------------- */

/* Resolves ${env:NAME} in @node's scalar into *out (fresh heap string); ${secret:NAME} is
 * kept verbatim for the secret store; $${ is a literal ${. */
static sn_rc_t s_expand(s_ctx_t *ctx, const s_node_t *node, const char *path, char **out)
{
    const char *s = node->value;
    size_t len = node->len;
    size_t cap = len + 1, o = 0;
    char *buf = sn_malloc(cap);
    for (size_t i = 0; i < len;) {
        const char *piece = s + i;
        size_t piece_len = 1;
        char *env_value = NULL;
        if (s[i] == '$' && i + 2 < len && s[i + 1] == '$' && s[i + 2] == '{') {
            piece_len = 2; /* "${" */
            piece = "${";
            i += 3;
        } else if (s[i] == '$' && i + 1 < len && s[i + 1] == '{') {
            const char *close = memchr(s + i, '}', len - i);
            if (!close) {
                free(buf);
                return s_fail(ctx, node, path, "unterminated \"${\" (use \"$${\" for a literal)");
            }
            size_t ref_len = (size_t)(close - (s + i)) + 1;
            const char *name = NULL;
            size_t name_len = 0;
            bool is_env = false;
            if (ref_len > 7 && strncmp(s + i, "${env:", 6) == 0) {
                is_env = true;
                name = s + i + 6;
                name_len = ref_len - 7;
            } else if (ref_len > 10 && strncmp(s + i, "${secret:", 9) == 0) {
                name = s + i + 9;
                name_len = ref_len - 10;
            }
            bool name_ok =
                name && name_len <= 128 && (isalpha((unsigned char)name[0]) || name[0] == '_');
            for (size_t k = 0; name_ok && k < name_len; k++)
                name_ok = isalnum((unsigned char)name[k]) || name[k] == '_' ||
                          (!is_env && (name[k] == '-' || name[k] == '.' || name[k] == '/'));
            if (!name_ok) {
                char q[64];
                free(buf);
                return s_fail(
                    ctx, node, path,
                    "bad reference %s: expected ${env:NAME} or ${secret:NAME} (\"$${\" for a "
                    "literal)",
                    s_quote(s + i, ref_len, q, sizeof q));
            }
            if (is_env) {
                char var[129];
                memcpy(var, name, name_len);
                var[name_len] = '\0';
                const char *v = getenv(var);
                if (!v) {
                    free(buf);
                    return s_fail(ctx, node, path, "environment variable %s is not set", var);
                }
                env_value = sn_strdup(v);
                piece = env_value;
                piece_len = strlen(env_value);
            } else {
                piece_len = ref_len; /* secret: verbatim */
            }
            i += ref_len;
        } else {
            i++;
        }
        if (o + piece_len + 1 > cap) {
            cap = (o + piece_len + 1) * 2;
            buf = sn_realloc(buf, cap);
        }
        memcpy(buf + o, piece, piece_len);
        o += piece_len;
        free(env_value);
    }
    buf[o] = '\0';
    if (strlen(buf) != o) {
        free(buf);
        return s_fail(ctx, node, path, "string contains a NUL byte");
    }
    *out = buf;
    return SN_OK;
}

/* ---- scalar conversions --------------------------------------------------------------- */

static bool s_parse_int(const char *s, int64_t *out)
{
    const char *p = s;
    bool neg = false;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (!isdigit((unsigned char)*p))
        return false;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (*p != '\0')
        return false;
    if (!neg && v > (uint64_t)INT64_MAX)
        return false;
    if (neg && v > (uint64_t)INT64_MAX + 1)
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* "250ms", "5s", "2m", "1h", "1d" in milliseconds, or a bare number of @unit_ms units.
 * "-1" (= -1 unit) is accepted for the keys whose range allows it ("inherit"). */
static bool s_parse_duration(const char *s, int64_t unit_ms, int64_t *out_ms)
{
    if (strcmp(s, "-1") == 0) {
        *out_ms = -unit_ms;
        return true;
    }
    size_t n = 0;
    while (isdigit((unsigned char)s[n]))
        n++;
    if (n == 0 || n > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    const char *suffix = s + n;
    int64_t mult;
    if (*suffix == '\0')
        mult = unit_ms;
    else if (strcmp(suffix, "ms") == 0)
        mult = 1;
    else if (strcmp(suffix, "s") == 0)
        mult = 1000;
    else if (strcmp(suffix, "m") == 0)
        mult = 60000;
    else if (strcmp(suffix, "h") == 0)
        mult = 3600000;
    else if (strcmp(suffix, "d") == 0)
        mult = 86400000;
    else
        return false;
    if (v > INT64_MAX / mult)
        return false;
    *out_ms = v * mult;
    return true;
}

static void s_store_int(void *slot, size_t width, int64_t v)
{
    if (width == sizeof(int64_t)) {
        int64_t x = v;
        memcpy(slot, &x, sizeof x);
    } else {
        SN_ASSERT(width == sizeof(int));
        SN_ASSERT(v >= INT_MIN && v <= INT_MAX);
        int x = (int)v;
        memcpy(slot, &x, sizeof x);
    }
}

static bool s_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < SN_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Converts one scalar text @text for @f into the struct at @base. @node is NULL for defaults. */
static sn_rc_t s_store_scalar(s_ctx_t *ctx, const s_field_t *f, const s_node_t *node,
                              const char *text, void *base, const char *path)
{
    char *slot = (char *)base + f->offset;
    char q[64];
    const char *raw = node ? node->value : text;
    size_t raw_len = node ? node->len : strlen(text);
    switch (f->kind) {
    case S_STR:
    case S_ENUM: {
        if (f->kind == S_ENUM) {
            bool ok = false;
            for (const char *const *c = f->choices; *c && !ok; c++)
                ok = strcmp(*c, text) == 0;
            if (!ok) {
                char list[256] = "";
                size_t o = 0;
                for (const char *const *c = f->choices; *c; c++) {
                    int n = snprintf(list + o, sizeof list - o, "%s%s", o ? ", " : "", *c);
                    if (n < 0 || (size_t)n >= sizeof list - o)
                        break;
                    o += (size_t)n;
                }
                return s_fail(ctx, node, path, "expected one of %s, got %s", list,
                              s_quote(raw, raw_len, q, sizeof q));
            }
        }
        if (f->check) {
            const char *why = f->check(text);
            if (why)
                return s_fail(ctx, node, path, "%s, got %s", why,
                              s_quote(raw, raw_len, q, sizeof q));
        }
        char **dst = (char **)(void *)slot;
        free(*dst);
        *dst = sn_strdup(text);
        return SN_OK;
    }
    case S_INT: {
        int64_t v = 0;
        if (!s_parse_int(text, &v) || v < f->min || v > f->max)
            return s_fail(ctx, node, path, "expected an integer in [%lld, %lld], got %s",
                          (long long)f->min, (long long)f->max, s_quote(raw, raw_len, q, sizeof q));
        s_store_int(slot, f->width, v);
        return SN_OK;
    }
    case S_DURATION: {
        int64_t ms = 0;
        bool ok = s_parse_duration(text, f->unit_ms, &ms) && ms % f->unit_ms == 0;
        int64_t v = ok ? ms / f->unit_ms : 0;
        if (!ok || v < f->min || v > f->max)
            return s_fail(ctx, node, path,
                          "expected an integer in [%lld, %lld] (%s) or a duration such as \"%s\", "
                          "got %s",
                          (long long)f->min, (long long)f->max, f->unit_ms == 1 ? "ms" : "s",
                          f->unit_ms == 1 ? "250ms" : "30d", s_quote(raw, raw_len, q, sizeof q));
        s_store_int(slot, f->width, v);
        return SN_OK;
    }
    case S_BOOL: {
        bool b = false;
        if (!s_parse_bool(text, &b))
            return s_fail(ctx, node, path, "expected true or false, got %s",
                          s_quote(raw, raw_len, q, sizeof q));
        memcpy(slot, &b, sizeof b);
        return SN_OK;
    }
    default:
        SN_ASSERT(!"not a scalar kind");
    }
    return SN_ERROR;
}

/* ---- walking the schema --------------------------------------------------------------- */

static size_t s_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return SIZE_MAX;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

static sn_rc_t s_unknown_key(s_ctx_t *ctx, const s_section_t *sec, const s_node_t *key,
                             const char *path)
{
    char full[S_PATH_LEN], q[64];
    snprintf(full, sizeof full, "%s%s%.64s", path, *path ? "." : "", key->value);
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < sec->field_count; i++) {
        size_t d = s_edit_distance(key->value, sec->fields[i].key);
        if (d < best_d) {
            best_d = d;
            best = sec->fields[i].key;
        }
    }
    if (best && best_d <= 3 && best_d < strlen(key->value))
        return s_fail(ctx, key, full, "unknown key %s (did you mean \"%s\"?)",
                      s_quote(key->value, key->len, q, sizeof q), best);
    char list[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < sec->field_count; i++) {
        int n = snprintf(list + o, sizeof list - o, "%s%s", o ? ", " : "", sec->fields[i].key);
        if (n < 0 || (size_t)n >= sizeof list - o)
            break;
        o += (size_t)n;
    }
    return s_fail(ctx, key, full, "unknown key %s (valid keys: %s)",
                  s_quote(key->value, key->len, q, sizeof q), list);
}

static sn_rc_t s_apply_field(s_ctx_t *ctx, const s_field_t *f, const s_node_t *val, void *base,
                             const char *path);

static sn_rc_t s_apply_default(s_ctx_t *ctx, const s_field_t *f, void *base, const char *path)
{
    char *slot = (char *)base + f->offset;
    switch (f->kind) {
    case S_MAP:
        return s_apply_section(ctx, f->section, NULL, slot, path);
    case S_STRLIST: {
        char ***dst = (char ***)(void *)slot;
        if (!*dst)
            *dst = sn_calloc(1, sizeof(char *));
        return SN_OK;
    }
    case S_SEQ:
        return SN_OK;
    default:
        return f->def ? s_store_scalar(ctx, f, NULL, f->def, base, path) : SN_OK;
    }
}

/* Applies mapping @node (NULL: absent, all defaults) to the struct at @base. */
static sn_rc_t s_apply_section(s_ctx_t *ctx, const s_section_t *sec, const s_node_t *node,
                               void *base, const char *path)
{
    const s_node_t *seen[64] = {0};
    SN_ASSERT(sec->field_count <= SN_ARRAY_LEN(seen));
    if (node && node->type == S_NODE_SCALAR && sec->on_scalar && !s_is_null(node))
        return sec->on_scalar(ctx, node, base, path);
    if (node && s_is_null(node))
        node = NULL; /* `broker:` with nothing after it: all defaults */
    if (node && node->type != S_NODE_MAP)
        return s_fail(ctx, node, path, "expected a mapping, got %s", s_describe(node));
    for (size_t i = 0; node && i + 1 < node->count; i += 2) {
        const s_node_t *key = node->items[i];
        const s_node_t *val = node->items[i + 1];
        if (key->type != S_NODE_SCALAR)
            return s_fail(ctx, key, path, "a key must be a plain string, got %s", s_describe(key));
        size_t fi = 0;
        while (fi < sec->field_count && strcmp(sec->fields[fi].key, key->value) != 0)
            fi++;
        if (fi == sec->field_count)
            return s_unknown_key(ctx, sec, key, path);
        char sub[S_PATH_LEN];
        snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", sec->fields[fi].key);
        if (seen[fi])
            return s_fail(ctx, key, sub, "duplicate key (first at line %d, column %d)",
                          seen[fi]->line, seen[fi]->col);
        seen[fi] = key;
        if (s_apply_field(ctx, &sec->fields[fi], val, base, sub) != SN_OK)
            return SN_ERROR;
    }
    for (size_t fi = 0; fi < sec->field_count; fi++) {
        if (seen[fi])
            continue;
        const s_field_t *f = &sec->fields[fi];
        char sub[S_PATH_LEN];
        snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", f->key);
        if (f->required)
            return s_fail(ctx, node ? node : ctx->root, path, "missing required key \"%s\"",
                          f->key);
        if (s_apply_default(ctx, f, base, sub) != SN_OK)
            return SN_ERROR;
    }
    return SN_OK;
}

static sn_rc_t s_scalar_text(s_ctx_t *ctx, const s_field_t *f, const s_node_t *val,
                             const char *path, const char *what, char **out)
{
    if (val->type != S_NODE_SCALAR || s_is_null(val))
        return s_fail(ctx, val, path, "expected %s, got %s", what, s_describe(val));
    if (f->is_raw) {
        if (strlen(val->value) != val->len)
            return s_fail(ctx, val, path, "string contains a NUL byte");
        *out = sn_strdup(val->value);
        return SN_OK;
    }
    return s_expand(ctx, val, path, out);
}

static sn_rc_t s_apply_field(s_ctx_t *ctx, const s_field_t *f, const s_node_t *val, void *base,
                             const char *path)
{
    char *slot = (char *)base + f->offset;
    switch (f->kind) {
    case S_MAP:
        return s_apply_section(ctx, f->section, val, slot, path);
    case S_STRLIST: {
        if (s_is_null(val))
            return s_apply_default(ctx, f, base, path);
        if (val->type != S_NODE_SEQ)
            return s_fail(ctx, val, path, "expected a list of strings, got %s", s_describe(val));
        char ***dst = (char ***)(void *)slot;
        SN_ASSERT(!*dst);
        *dst = sn_calloc(val->count + 1, sizeof(char *));
        for (size_t i = 0; i < val->count; i++) {
            char sub[S_PATH_LEN], q[64];
            if (snprintf(sub, sizeof sub, "%s[%zu]", path, i) >= (int)sizeof sub)
                sub[sizeof sub - 1] = '\0'; /* a truncated path still names the key */
            char *text = NULL;
            if (s_scalar_text(ctx, f, val->items[i], sub, "a string", &text) != SN_OK)
                return SN_ERROR;
            const char *why = f->check ? f->check(text) : NULL;
            if (why) {
                free(text);
                return s_fail(ctx, val->items[i], sub, "%s, got %s", why,
                              s_quote(val->items[i]->value, val->items[i]->len, q, sizeof q));
            }
            (*dst)[i] = text;
        }
        return SN_OK;
    }
    case S_SEQ: {
        if (s_is_null(val))
            return SN_OK;
        if (val->type != S_NODE_SEQ)
            return s_fail(ctx, val, path, "expected a list of mappings, got %s", s_describe(val));
        void **dst = (void **)(void *)slot;
        size_t *count = (size_t *)(void *)((char *)base + f->count_offset);
        SN_ASSERT(!*dst);
        *dst = sn_calloc(val->count ? val->count : 1, f->section->size);
        *count = val->count;
        for (size_t i = 0; i < val->count; i++) {
            char sub[S_PATH_LEN];
            if (snprintf(sub, sizeof sub, "%s[%zu]", path, i) >= (int)sizeof sub)
                sub[sizeof sub - 1] = '\0'; /* a truncated path still names the key */
            const s_node_t *item = val->items[i];
            if (item->type != S_NODE_MAP)
                return s_fail(ctx, item, sub, "expected a mapping, got %s", s_describe(item));
            if (s_apply_section(ctx, f->section, item, (char *)*dst + i * f->section->size, sub) !=
                SN_OK)
                return SN_ERROR;
        }
        return SN_OK;
    }
    default: {
        static const char *const what[] = {[S_STR] = "a string",
                                           [S_INT] = "an integer",
                                           [S_DURATION] = "a duration",
                                           [S_BOOL] = "true or false",
                                           [S_ENUM] = "a name"};
        char *text = NULL;
        if (s_scalar_text(ctx, f, val, path, what[f->kind], &text) != SN_OK)
            return SN_ERROR;
        sn_rc_t rc = s_store_scalar(ctx, f, val, text, base, path);
        free(text);
        return rc;
    }
    }
}

static void s_free_section(const s_section_t *sec, void *base)
{
    for (size_t fi = 0; fi < sec->field_count; fi++) {
        const s_field_t *f = &sec->fields[fi];
        char *slot = (char *)base + f->offset;
        switch (f->kind) {
        case S_STR:
        case S_ENUM: {
            char **p = (char **)(void *)slot;
            free(*p);
            *p = NULL;
            break;
        }
        case S_STRLIST: {
            char ***p = (char ***)(void *)slot;
            for (char **s = *p; s && *s; s++)
                free(*s);
            free(*p);
            *p = NULL;
            break;
        }
        case S_MAP:
            s_free_section(f->section, slot);
            break;
        case S_SEQ: {
            void **p = (void **)(void *)slot;
            size_t *count = (size_t *)(void *)((char *)base + f->count_offset);
            for (size_t i = 0; *p && i < *count; i++)
                s_free_section(f->section, (char *)*p + i * f->section->size);
            free(*p);
            *p = NULL;
            *count = 0;
            break;
        }
        default:
            break;
        }
    }
}

/* ---- custom forms and checks ---------------------------------------------------------- */

/* `redis: embedded`: a private server under state_dir, every other setting defaulted. */
static sn_rc_t s_redis_scalar(s_ctx_t *ctx, const s_node_t *node, void *base, const char *path)
{
    char q[64];
    if (strcmp(node->value, "embedded") != 0)
        return s_fail(ctx, node, path, "expected \"embedded\" or a mapping, got %s",
                      s_quote(node->value, node->len, q, sizeof q));
    if (s_apply_section(ctx, &s_redis_section, NULL, base, path) != SN_OK)
        return SN_ERROR;
    ((sn_redis_config_t *)base)->embedded = true;
    return SN_OK;
}

static const char *s_check_endpoint(const char *v)
{
    static const char *const why =
        "expected a ZeroMQ endpoint (tcp://host:port, ipc://path or inproc://name)";
    if (strncmp(v, "ipc://", 6) == 0)
        return v[6] ? NULL : why;
    if (strncmp(v, "inproc://", 9) == 0)
        return v[9] ? NULL : why;
    if (strncmp(v, "tcp://", 6) != 0)
        return why;
    const char *host = v + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host)
        return why;
    const char *port = colon + 1;
    if (strcmp(port, "*") == 0)
        return NULL;
    int64_t p = 0;
    if (!s_parse_int(port, &p) || p < 1 || p > 65535 || port[0] == '+' || port[0] == '-')
        return why;
    return NULL;
}

static const char *s_check_z85(const char *v)
{
    if (strlen(v) != 40 || strspn(v, S_Z85_CHARS) != 40)
        return "expected a 40-character Z85 CURVE public key";
    return NULL;
}

/* A name used in file names (sites/<target>) and Redis keys: no '/', no leading '.'. */
static const char *s_check_name(const char *v)
{
    size_t n = strlen(v);
    bool ok = n >= 1 && n <= 64 && isalnum((unsigned char)v[0]);
    for (size_t i = 1; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || v[i] == '.' || v[i] == '_' || v[i] == '-';
    return ok ? NULL
              : "expected a name of 1 to 64 letters, digits, '.', '_' or '-' starting with a "
                "letter or digit";
}

/* "host:port" or "[v6]:port", port 1..65535. */
static const char *s_check_hostport(const char *v)
{
    static const char *const why = "expected host:port (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")";
    const char *colon;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || close == v + 1 || close[1] != ':')
            return why;
        colon = close + 1;
    } else {
        colon = strchr(v, ':');
        if (!colon || colon == v || strchr(colon + 1, ':'))
            return why;
    }
    for (const char *p = v; p < colon; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p) || *p == '/')
            return why;
    const char *port = colon + 1;
    int64_t p = 0;
    if (!isdigit((unsigned char)port[0]) || !s_parse_int(port, &p) || p < 1 || p > 65535)
        return why;
    return NULL;
}

static const char *s_check_http_url(const char *v)
{
    static const char *const why = "expected an http:// or https:// URL";
    const char *rest = strncmp(v, "http://", 7) == 0    ? v + 7
                       : strncmp(v, "https://", 8) == 0 ? v + 8
                                                        : NULL;
    if (!rest || !rest[0] || rest[0] == '/')
        return why;
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return why;
    return NULL;
}

/* http(s) for webhook-like channels, smtp(s) for email; the type check is in s_finish. */
static const char *s_check_channel_url(const char *v)
{
    static const char *const why = "expected an http(s):// or smtp(s):// URL";
    const char *rest = strncmp(v, "smtp://", 7) == 0    ? v + 7
                       : strncmp(v, "smtps://", 8) == 0 ? v + 8
                                                        : NULL;
    if (!rest)
        return s_check_http_url(v) ? why : NULL;
    if (!rest[0] || rest[0] == '/')
        return why;
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return why;
    return NULL;
}

/* "owner/name": GitHub's characters (letters, digits, '-', '_', '.'), one slash. */
static const char *s_check_github_repo(const char *v)
{
    static const char *const why = "expected owner/name";
    const char *slash = strchr(v, '/');
    if (!slash || slash == v || !slash[1] || strchr(slash + 1, '/'))
        return why;
    for (const char *p = v; *p; p++)
        if (p != slash && !isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return why;
    return NULL;
}

/* "key=value" with a label key (severity, project, environment, target, type, or any
 * [a-z_]+) and a non-empty value. */
static const char *s_check_matcher(const char *v)
{
    static const char *const why = "expected key=value (e.g. severity=critical, type=deploy.*)";
    const char *eq = strchr(v, '=');
    if (!eq || eq == v || !eq[1])
        return why;
    for (const char *p = v; p < eq; p++)
        if (!islower((unsigned char)*p) && *p != '_')
            return why;
    return NULL;
}

static bool s_is_env_name(const char *v, size_t n)
{
    bool ok = n >= 1 && n <= 128 && (isalpha((unsigned char)v[0]) || v[0] == '_');
    for (size_t i = 1; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || v[i] == '_';
    return ok;
}

static const char *s_check_env_assignment(const char *v)
{
    const char *eq = strchr(v, '=');
    if (!eq || !s_is_env_name(v, (size_t)(eq - v)))
        return "expected NAME=value (NAME: letters, digits and '_', not starting with a digit)";
    return NULL;
}

static const char *s_check_env_name(const char *v)
{
    if (!s_is_env_name(v, strlen(v)))
        return "expected a variable name (letters, digits and '_', not starting with a digit)";
    return NULL;
}

/* A directory inside the checkout: relative, no ".." component. */
static const char *s_check_relative_path(const char *v)
{
    static const char *const why = "expected a relative path inside the checkout (no \"..\")";
    if (!v[0] || v[0] == '/')
        return why;
    for (const char *p = v; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return why;
        p += n;
        while (*p == '/')
            p++;
    }
    return NULL;
}

static const char *s_check_sha256(const char *v)
{
    if (strlen(v) != 64 || strspn(v, "0123456789abcdefABCDEF") != 64)
        return "expected the token's SHA-256 as 64 hex characters";
    return NULL;
}

static const char *s_check_url_path(const char *v)
{
    if (v[0] != '/')
        return "expected a URL path starting with '/'";
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return "expected a URL path without spaces or control characters";
    return NULL;
}

static bool s_endpoint_is_loopback(const char *v)
{
    if (strncmp(v, "tcp://", 6) != 0)
        return true; /* ipc:// and inproc:// never leave the host */
    const char *host = v + 6;
    size_t host_len = (size_t)(strrchr(host, ':') - host);
    if (host_len == 9 && strncmp(host, "localhost", 9) == 0)
        return true;
    if (host_len == 5 && strncmp(host, "[::1]", 5) == 0)
        return true;
    return host_len >= 4 && strncmp(host, "127.", 4) == 0;
}

/* A node by path under the root for cross-field messages; falls back to the nearest parent. */
static const s_node_t *s_locate(const s_ctx_t *ctx, const char *section, const char *key)
{
    const s_node_t *sec = s_map_get(ctx->root, section);
    const s_node_t *n = key ? s_map_get(sec, key) : NULL;
    if (n)
        return n;
    if (sec)
        return sec;
    return ctx->root;
}

/* ---- pipeline cross-field checks -------------------------------------------------------- */

static const s_node_t *s_seq_item(const s_node_t *seq, size_t i)
{
    return seq && seq->type == S_NODE_SEQ && i < seq->count ? seq->items[i] : NULL;
}

/* The value node of @key in mapping @map, else @map itself, else the root. */
static const s_node_t *s_at(const s_ctx_t *ctx, const s_node_t *map, const char *key)
{
    const s_node_t *n = key ? s_map_get(map, key) : NULL;
    return n ? n : map ? map : ctx->root;
}

/* Names of the @count structs of @size at @base (name is at @name_offset) are unique. */
static sn_rc_t s_unique_names(s_ctx_t *ctx, const void *base, size_t count, size_t size,
                              size_t name_offset, const s_node_t *seq, const char *path)
{
    for (size_t i = 0; i < count; i++) {
        const char *a = *(char *const *)(const void *)((const char *)base + i * size + name_offset);
        for (size_t j = 0; j < i; j++) {
            const char *b =
                *(char *const *)(const void *)((const char *)base + j * size + name_offset);
            if (strcmp(a, b) != 0)
                continue;
            char sub[S_PATH_LEN];
            snprintf(sub, sizeof sub, "%s[%zu].name", path, i);
            return s_fail(ctx, s_at(ctx, s_seq_item(seq, i), "name"), sub,
                          "duplicate name \"%s\" (the same as %s[%zu])", a, path, j);
        }
    }
    return SN_OK;
}

static bool s_same_host(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* A listen address of target @i (@which: 0 listen, 1 preview_listen) is not used twice. */
static sn_rc_t s_check_listen_clash(s_ctx_t *ctx, const sn_config_t *cfg, size_t i, int which,
                                    const s_node_t *tnodes)
{
    static const char *const keys[] = {"listen", "preview_listen"};
    const sn_target_config_t *t = &cfg->targets[i];
    const char *addr = which ? t->preview_listen : t->listen;
    char path[S_PATH_LEN];
    snprintf(path, sizeof path, "targets[%zu].%s", i, keys[which]);
    const s_node_t *at = s_at(ctx, s_seq_item(tnodes, i), keys[which]);
    if (!t->host && strcmp(addr, cfg->gateway.listen) == 0)
        return s_fail(ctx, at, path, "%s is already gateway.listen", addr);
    for (size_t j = 0; j <= i; j++) {
        const sn_target_config_t *o = &cfg->targets[j];
        if (strcmp(o->type, "local_static") != 0 || !s_same_host(t->host, o->host))
            continue;
        for (int w = 0; w < 2; w++) {
            if (j == i && w >= which)
                break;
            if (strcmp(addr, w ? o->preview_listen : o->listen) == 0)
                return s_fail(ctx, at, path, "%s is already targets[%zu].%s", addr, j, keys[w]);
        }
    }
    return SN_OK;
}

/* A cloud target: what its provider needs, and the provider's public base URLs. */
static sn_rc_t s_finish_cloud_target(s_ctx_t *ctx, sn_target_config_t *t, const s_node_t *tn,
                                     const char *path)
{
    const char *missing = NULL;
    const char *api = NULL;
    if (strcmp(t->type, "cloudflare_pages") == 0) {
        missing = !t->account_id ? "account_id"
                  : !t->project  ? "project"
                  : !t->token    ? "token"
                                 : NULL;
        api = "https://api.cloudflare.com/client/v4";
    } else if (strcmp(t->type, "railway") == 0) {
        missing = !t->service_id       ? "service_id"
                  : !t->environment_id ? "environment_id"
                  : !t->token          ? "token"
                                       : NULL;
        api = "https://backboard.railway.com/graphql/v2";
    } else { /* firebase */
        missing = !t->project ? "project" : !t->credentials_file ? "credentials_file" : NULL;
        api = "https://firebasehosting.googleapis.com/v1beta1";
        if (!t->site && t->project)
            t->site = sn_strdup(t->project);
        if (!t->functions_api_base)
            t->functions_api_base = sn_strdup("https://cloudfunctions.googleapis.com/v2");
    }
    if (missing) /* never print the values: token may hold a resolved secret */
        return s_fail(ctx, s_at(ctx, tn, NULL), path, "a %s target needs \"%s\"", t->type, missing);
    if (!t->api_base)
        t->api_base = sn_strdup(api);
    return SN_OK;
}

static sn_rc_t s_finish_targets(s_ctx_t *ctx, sn_config_t *cfg)
{
    const s_node_t *tnodes = s_map_get(ctx->root, "targets");
    if (s_unique_names(ctx, cfg->targets, cfg->target_count, sizeof(sn_target_config_t),
                       offsetof(sn_target_config_t, name), tnodes, "targets") != SN_OK)
        return SN_ERROR;
    for (size_t i = 0; i < cfg->target_count; i++) {
        sn_target_config_t *t = &cfg->targets[i];
        const s_node_t *tn = s_seq_item(tnodes, i);
        char path[S_PATH_LEN];
        snprintf(path, sizeof path, "targets[%zu]", i);
        if (strcmp(t->type, "local_static") == 0) {
            const char *missing = !t->listen           ? "listen"
                                  : !t->preview_listen ? "preview_listen"
                                                       : NULL;
            if (missing)
                return s_fail(ctx, s_at(ctx, tn, NULL), path,
                              "a local_static target needs \"%s\" (host:port)", missing);
            if (s_check_listen_clash(ctx, cfg, i, 0, tnodes) != SN_OK ||
                s_check_listen_clash(ctx, cfg, i, 1, tnodes) != SN_OK)
                return SN_ERROR;
        } else if (strcmp(t->type, "local_command") == 0) {
            const char *missing = !t->stage_command     ? "stage_command"
                                  : !t->promote_command ? "promote_command"
                                                        : NULL;
            if (missing)
                return s_fail(ctx, s_at(ctx, tn, NULL), path, "a local_command target needs \"%s\"",
                              missing);
        } else if (s_finish_cloud_target(ctx, t, tn, path) != SN_OK) {
            return SN_ERROR;
        }
        if (t->check.dns_expect && !t->check.dns_name) {
            snprintf(path, sizeof path, "targets[%zu].check.dns_expect", i);
            return s_fail(ctx, s_at(ctx, s_map_get(tn, "check"), "dns_expect"), path,
                          "dns_expect needs check.dns_name");
        }
        if (!t->url && t->listen)
            t->url = sn_strdupf("http://%s", t->listen);
        if (!t->preview_url && t->preview_listen)
            t->preview_url = sn_strdupf("http://%s", t->preview_listen);
    }
    return SN_OK;
}

static sn_rc_t s_finish_environment(s_ctx_t *ctx, const sn_config_t *cfg, size_t pi,
                                    const sn_project_config_t *p, size_t ei, const s_node_t *en)
{
    const sn_environment_config_t *e = &p->environments[ei];
    char path[S_PATH_LEN];
    const s_node_t *tlist = s_map_get(en, "targets");
    for (size_t k = 0; e->targets[k]; k++) {
        snprintf(path, sizeof path, "projects[%zu].environments[%zu].targets[%zu]", pi, ei, k);
        const s_node_t *at = s_seq_item(tlist, k);
        at = at ? at : s_at(ctx, en, "targets");
        if (!sn_config_target(cfg, e->targets[k])) {
            char list[256] = "";
            size_t o = 0;
            for (size_t t = 0; t < cfg->target_count; t++) {
                int n = snprintf(list + o, sizeof list - o, "%s%s", o ? ", " : "",
                                 cfg->targets[t].name);
                if (n < 0 || (size_t)n >= sizeof list - o)
                    break;
                o += (size_t)n;
            }
            return s_fail(ctx, at, path, "no target named \"%s\" (targets: %s)", e->targets[k],
                          o ? list : "none configured");
        }
        for (size_t j = 0; j < k; j++)
            if (strcmp(e->targets[j], e->targets[k]) == 0)
                return s_fail(ctx, at, path, "target \"%s\" is listed twice", e->targets[k]);
    }
    if (e->promote_from) {
        snprintf(path, sizeof path, "projects[%zu].environments[%zu].promote_from", pi, ei);
        const s_node_t *at = s_at(ctx, en, "promote_from");
        if (strcmp(e->promote_from, e->name) == 0)
            return s_fail(ctx, at, path, "an environment cannot promote from itself");
        if (!sn_config_environment(p, e->promote_from))
            return s_fail(ctx, at, path, "no environment named \"%s\" in project \"%s\"",
                          e->promote_from, p->name);
        /* follow the chain: it must end, not come back */
        const sn_environment_config_t *cur = e;
        for (size_t steps = 0; cur && cur->promote_from; steps++) {
            cur = sn_config_environment(p, cur->promote_from);
            if (cur == e || steps > p->environment_count)
                return s_fail(ctx, at, path, "promote_from forms a cycle through \"%s\"",
                              e->promote_from);
        }
    }
    return SN_OK;
}

static sn_rc_t s_finish_projects(s_ctx_t *ctx, sn_config_t *cfg)
{
    const s_node_t *pnodes = s_map_get(ctx->root, "projects");
    if (s_unique_names(ctx, cfg->projects, cfg->project_count, sizeof(sn_project_config_t),
                       offsetof(sn_project_config_t, name), pnodes, "projects") != SN_OK)
        return SN_ERROR;
    for (size_t i = 0; i < cfg->project_count; i++) {
        const sn_project_config_t *p = &cfg->projects[i];
        const s_node_t *pn = s_seq_item(pnodes, i);
        char path[S_PATH_LEN];
        snprintf(path, sizeof path, "projects[%zu]", i);
        if (strcmp(p->source_type, "local") == 0 && !p->repo)
            return s_fail(ctx, s_at(ctx, pn, NULL), path,
                          "source_type local needs \"repo\" (the path of a git repository)");
        if (strcmp(p->source_type, "github") == 0 && !p->github_repo)
            return s_fail(ctx, s_at(ctx, pn, NULL), path,
                          "source_type github needs \"github_repo\" (owner/name)");
        if (strcmp(p->source_type, "github") == 0 && strcmp(p->artifact_from, "local") == 0 &&
            !p->repo)
            return s_fail(ctx, s_at(ctx, pn, NULL), path,
                          "artifact_from local needs \"repo\" (the URL to clone)");
        snprintf(path, sizeof path, "projects[%zu].environments", i);
        const s_node_t *enodes = s_map_get(pn, "environments");
        if (s_unique_names(ctx, p->environments, p->environment_count,
                           sizeof(sn_environment_config_t), offsetof(sn_environment_config_t, name),
                           enodes, path) != SN_OK)
            return SN_ERROR;
        for (size_t j = 0; j < p->environment_count; j++)
            if (s_finish_environment(ctx, cfg, i, p, j, s_seq_item(enodes, j)) != SN_OK)
                return SN_ERROR;
    }
    return SN_OK;
}

static sn_rc_t s_finish_channels(s_ctx_t *ctx, sn_config_t *cfg)
{
    const s_node_t *cnodes = s_map_get(ctx->root, "channels");
    if (s_unique_names(ctx, cfg->channels, cfg->channel_count, sizeof(sn_channel_config_t),
                       offsetof(sn_channel_config_t, name), cnodes, "channels") != SN_OK)
        return SN_ERROR;
    for (size_t i = 0; i < cfg->channel_count; i++) {
        const sn_channel_config_t *c = &cfg->channels[i];
        char path[S_PATH_LEN];
        snprintf(path, sizeof path, "channels[%zu]", i);
        sn_channel_config_t *w = &cfg->channels[i];
        bool is_smtp =
            c->url && (strncmp(c->url, "smtp://", 7) == 0 || strncmp(c->url, "smtps://", 8) == 0);
        bool is_email = strcmp(c->type, "email") == 0;
        bool needs_url = strcmp(c->type, "webhook") == 0 || strcmp(c->type, "slack") == 0 ||
                         strcmp(c->type, "discord") == 0 || is_email;
        const char *missing = strcmp(c->type, "file") == 0 && !c->path          ? "path"
                              : needs_url && !c->url                            ? "url"
                              : strcmp(c->type, "telegram") == 0 && !c->token   ? "token"
                              : strcmp(c->type, "telegram") == 0 && !c->chat_id ? "chat_id"
                              : is_email && !c->from                            ? "from"
                              : is_email && !c->to[0]                           ? "to"
                                                                                : NULL;
        const s_node_t *cn = s_seq_item(cnodes, i);
        if (missing) /* never print the channel's values: secret may hold a resolved key */
            return s_fail(ctx, s_at(ctx, cn, NULL), path, "a %s channel needs \"%s\"", c->type,
                          missing);
        const char *bad_url = c->url ? s_check_channel_url(c->url) : NULL;
        if (bad_url) {
            snprintf(path, sizeof path, "channels[%zu].url", i);
            return s_fail(ctx, s_at(ctx, cn, "url"), path, "%s", bad_url);
        }
        if (c->url && is_email != is_smtp) {
            snprintf(path, sizeof path, "channels[%zu].url", i);
            return s_fail(ctx, s_at(ctx, cn, "url"), path,
                          is_email ? "an email channel needs an smtp:// or smtps:// URL"
                                   : "expected an http:// or https:// URL");
        }
        if (strcmp(c->type, "telegram") == 0 && !c->api_base)
            w->api_base = sn_strdup("https://api.telegram.org");
    }
    return SN_OK;
}

static sn_rc_t s_finish_gateway(s_ctx_t *ctx, sn_config_t *cfg)
{
    sn_gateway_config_t *g = &cfg->gateway;
    const s_node_t *tnodes = s_map_get(s_map_get(ctx->root, "gateway"), "tokens");
    if (s_unique_names(ctx, g->tokens, g->token_count, sizeof(sn_token_config_t),
                       offsetof(sn_token_config_t, name), tnodes, "gateway.tokens") != SN_OK)
        return SN_ERROR;
    for (size_t i = 0; i < g->token_count; i++) {
        for (char *c = g->tokens[i].sha256; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(g->tokens[i].sha256, g->tokens[j].sha256) != 0)
                continue;
            char path[S_PATH_LEN];
            snprintf(path, sizeof path, "gateway.tokens[%zu].sha256", i);
            return s_fail(ctx, s_at(ctx, s_seq_item(tnodes, i), "sha256"), path,
                          "the same token hash as gateway.tokens[%zu]", j);
        }
    }
    return SN_OK;
}

/* A route's channels must exist; the root's unset timings get Alertmanager's defaults. */
static sn_rc_t s_finish_route(s_ctx_t *ctx, const sn_config_t *cfg, const sn_route_config_t *r,
                              const s_node_t *rn, const char *path)
{
    for (size_t k = 0; r->channels[k]; k++) {
        bool found = false;
        for (size_t c = 0; c < cfg->channel_count && !found; c++)
            found = strcmp(cfg->channels[c].name, r->channels[k]) == 0;
        if (!found) {
            char p[S_PATH_LEN];
            snprintf(p, sizeof p, "%s.channels[%zu]", path, k);
            return s_fail(ctx, s_at(ctx, rn, "channels"), p, "no channel named \"%s\"",
                          r->channels[k]);
        }
    }
    const s_node_t *kids = s_map_get(rn, "routes");
    for (size_t i = 0; i < r->route_count; i++) {
        char p[S_PATH_LEN];
        snprintf(p, sizeof p, "%s.routes[%zu]", path, i);
        const s_node_t *kn = s_seq_item(kids, i);
        if (s_finish_route(ctx, cfg, &r->routes[i], kn ? kn : rn, p) != SN_OK)
            return SN_ERROR;
    }
    return SN_OK;
}

static sn_rc_t s_finish_notify(s_ctx_t *ctx, sn_config_t *cfg)
{
    sn_route_config_t *root = &cfg->notify.route;
    if (root->group_wait_ms < 0)
        root->group_wait_ms = 30000;
    if (root->group_interval_ms < 0)
        root->group_interval_ms = 300000;
    if (root->repeat_interval_ms < 0)
        root->repeat_interval_ms = 14400000;
    if (!root->group_by[0]) {
        free(root->group_by);
        root->group_by = sn_calloc(4, sizeof *root->group_by);
        root->group_by[0] = sn_strdup("project");
        root->group_by[1] = sn_strdup("environment");
        root->group_by[2] = sn_strdup("type");
    }
    const s_node_t *nn = s_map_get(ctx->root, "notify");
    const s_node_t *rn = s_map_get(nn, "route");
    return s_finish_route(ctx, cfg, root, rn ? rn : ctx->root, "notify.route");
}

/* The pipeline sections: cross-field checks and derived defaults. */
static sn_rc_t s_finish_pipeline(s_ctx_t *ctx, sn_config_t *cfg)
{
    if (s_finish_targets(ctx, cfg) != SN_OK || s_finish_projects(ctx, cfg) != SN_OK ||
        s_finish_channels(ctx, cfg) != SN_OK || s_finish_gateway(ctx, cfg) != SN_OK ||
        s_finish_notify(ctx, cfg) != SN_OK)
        return SN_ERROR;
    sn_github_config_t *gh = &cfg->github;
    if (gh->app_id && (!gh->installation_id || !gh->private_key_file))
        return s_fail(ctx, s_locate(ctx, "github", "app_id"), "github.app_id",
                      "a GitHub App needs \"installation_id\" and \"private_key_file\"");
    if (!gh->public_url)
        gh->public_url = sn_strdupf("http://%s", cfg->gateway.listen);
    const sn_artifact_source_config_t *as = &cfg->artifact_source;
    if (!as->url && s_map_get(ctx->root, "artifact_source") &&
        !s_is_null(s_map_get(ctx->root, "artifact_source")))
        return s_fail(ctx, s_locate(ctx, "artifact_source", NULL), "artifact_source",
                      "needs \"url\" (the gateway that serves the artifacts)");
    if (!cfg->artifact_dir)
        cfg->artifact_dir = sn_strdupf("%s/artifacts", cfg->state_dir);
    if (!cfg->audit_archive)
        cfg->audit_archive = sn_strdupf("%s/audit.log", cfg->state_dir);
    if (!cfg->audit_key_file)
        cfg->audit_key_file = sn_strdupf("%s/audit.key", cfg->state_dir);
    return SN_OK;
}

/* Cross-field checks and derived defaults, once every key has its value. */
static sn_rc_t s_finish(s_ctx_t *ctx, sn_config_t *cfg)
{
    sn_broker_config_t *b = &cfg->broker;
    sn_runtime_config_t *rt = &cfg->runtime;
    if (b->curve && !b->server_secret_file)
        return s_fail(ctx, s_locate(ctx, "broker", "curve"), "broker.curve",
                      "curve is on but broker.server_secret_file is not set");
    const char *names[] = {"rpc", "pub", "sub"};
    const char *eps[] = {b->rpc, b->pub, b->sub};
    for (size_t i = 0; i < 3; i++) {
        char path[32];
        snprintf(path, sizeof path, "broker.%s", names[i]);
        if (!b->curve && !s_endpoint_is_loopback(eps[i]))
            return s_fail(ctx, s_locate(ctx, "broker", names[i]), path,
                          "%s is not a loopback endpoint: binding beyond this host requires "
                          "broker.curve: true",
                          eps[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(eps[i], eps[j]) == 0)
                return s_fail(ctx, s_locate(ctx, "broker", names[i]), path,
                              "the same endpoint as broker.%s", names[j]);
    }
    const s_node_t *pnodes = s_map_get(s_map_get(ctx->root, "broker"), "principals");
    for (size_t i = 0; i < b->principal_count; i++) {
        for (size_t j = 0; j < i; j++) {
            const char *what =
                strcmp(b->principals[i].name, b->principals[j].name) == 0 ? "name"
                : strcmp(b->principals[i].public_key, b->principals[j].public_key) == 0
                    ? "public_key"
                    : NULL;
            if (what) {
                char path[64];
                snprintf(path, sizeof path, "broker.principals[%zu].%s", i, what);
                const s_node_t *at =
                    pnodes && i < pnodes->count ? s_map_get(pnodes->items[i], what) : NULL;
                return s_fail(ctx, at ? at : ctx->root, path,
                              "the same %s as broker.principals[%zu]", what, j);
            }
        }
    }
    if (rt->leader_renew_ms == 0)
        rt->leader_renew_ms = rt->leader_ttl_ms / 3;
    if (rt->leader_renew_ms >= rt->leader_ttl_ms)
        return s_fail(ctx, s_locate(ctx, "runtime", "leader_renew_ms"), "runtime.leader_renew_ms",
                      "must be less than runtime.leader_ttl_ms (%d), got %d", rt->leader_ttl_ms,
                      rt->leader_renew_ms);
    if (rt->job_lease_ms > rt->job_lease_max_ms)
        return s_fail(ctx, s_locate(ctx, "runtime", "job_lease_ms"), "runtime.job_lease_ms",
                      "must not exceed runtime.job_lease_max_ms (%d), got %d", rt->job_lease_max_ms,
                      rt->job_lease_ms);
    if (cfg->redis.embedded && !cfg->redis.unix_path)
        cfg->redis.unix_path = sn_strdupf("%s/redis.sock", cfg->state_dir);
    return s_finish_pipeline(ctx, cfg);
}
