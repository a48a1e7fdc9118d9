/* Unit tests for sn_config: a full file, defaults, every error kind with its exact
 * file:line:column, ${env:...} resolution, the `redis: embedded` scalar, the shipped
 * example, and hostile input (garbage, binary junk, deep nesting, oversized files). */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sentinel/sn_config.h"

#define KEY_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define KEY_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"

static char s_err[1024];

static sn_rc_t s_load(const char *yaml, sn_config_t *cfg)
{
    return sn_config_load_string("t.yml", yaml, strlen(yaml), cfg, s_err, sizeof s_err);
}

/* Loads @yaml, which must fail, and checks the message equals @expected. */
static void s_expect_error(const char *yaml, const char *expected)
{
    sn_config_t cfg;
    sn_rc_t rc = s_load(yaml, &cfg);
    if (rc == SN_OK || strcmp(s_err, expected) != 0)
        print_error("yaml:\n%s\nexpected: %s\n     got: %s (rc %d)\n", yaml, expected, s_err, rc);
    assert_int_equal(rc, SN_ERROR);
    assert_string_equal(s_err, expected);
    assert_null(cfg.path); /* zeroed on error */
    assert_null(cfg.broker.rpc);
    sn_config_fini(&cfg);
}

/* Loads @yaml, which must fail, with a message that starts with @prefix and contains @part. */
static void s_expect_error_like(const char *yaml, size_t len, const char *prefix, const char *part)
{
    sn_config_t cfg;
    sn_rc_t rc = sn_config_load_string("t.yml", yaml, len, &cfg, s_err, sizeof s_err);
    if (rc == SN_OK || strncmp(s_err, prefix, strlen(prefix)) != 0 || !strstr(s_err, part))
        print_error("expected prefix %s and %s, got: %s\n", prefix, part, s_err);
    assert_int_equal(rc, SN_ERROR);
    assert_int_equal(strncmp(s_err, prefix, strlen(prefix)), 0);
    assert_non_null(strstr(s_err, part));
    sn_config_fini(&cfg);
}

static void test_sn_config_full_file(void **state)
{
    const char *yaml = "namespace: \"prod:\"\n"
                       "state_dir: /var/lib/sentinel\n"
                       "log_level: debug\n"
                       "broker:\n"
                       "  rpc: tcp://0.0.0.0:7800\n"
                       "  pub: tcp://*:7801\n"
                       "  sub: ipc:///tmp/sub.sock\n"
                       "  curve: true\n"
                       "  server_secret_file: /etc/sentinel/broker.key_secret\n"
                       "  server_public_key: \"" KEY_A "\"\n"
                       "  client_cert_file: /etc/sentinel/client.key_secret\n"
                       "  principals:\n"
                       "    - name: buildpilot\n"
                       "      public_key: \"" KEY_B "\"\n"
                       "      publish: [run.*, build.finished]\n"
                       "      subscribe: [\"run.\"]\n"
                       "      call: ['*']\n"
                       "      serve:\n"
                       "        - deploy.cloudflare\n"
                       "        - deploy.firebase\n"
                       "    - name: watcher\n"
                       "      public_key: \"" KEY_A "\"\n"
                       "  revoked: [\"" KEY_B "\"]\n"
                       "  heartbeat_ms: 2s\n"
                       "  heartbeat_liveness: 5\n"
                       "  max_frame_bytes: 4194304\n"
                       "redis:\n"
                       "  embedded: false\n"
                       "  host: redis.internal\n"
                       "  port: 6380\n"
                       "  timeout_ms: 500ms\n"
                       "runtime:\n"
                       "  leader_ttl_ms: 9000\n"
                       "  leader_renew_ms: 3s\n"
                       "  job_lease_ms: 1m\n"
                       "  job_lease_max_ms: 2h\n"
                       "  job_max_attempts: 7\n"
                       "  shutdown_grace_ms: 0\n"
                       "  agent_ttl_ms: 20000\n"
                       "  journal_max_len: 5000000000\n"
                       "  journal_max_age_s: 7d\n"
                       "retention:\n"
                       "  runs_max_age_s: 30d\n"
                       "  dead_letters: 50\n"
                       "  work_dir_max_age_s: 2h\n"
                       "  gc_interval_s: 0\n"
                       "processes:\n"
                       "  - role: supervisor\n"
                       "  - {role: ci-runner, instances: 4}\n";
    sn_config_t cfg;
    assert_int_equal(s_load(yaml, &cfg), SN_OK);
    assert_string_equal(cfg.path, "t.yml");
    assert_string_equal(cfg.namespace_, "prod:");
    assert_string_equal(cfg.state_dir, "/var/lib/sentinel");
    assert_string_equal(cfg.log_level, "debug");
    sn_broker_config_t *b = &cfg.broker;
    assert_string_equal(b->rpc, "tcp://0.0.0.0:7800");
    assert_string_equal(b->pub, "tcp://*:7801");
    assert_string_equal(b->sub, "ipc:///tmp/sub.sock");
    assert_true(b->curve);
    assert_string_equal(b->server_secret_file, "/etc/sentinel/broker.key_secret");
    assert_string_equal(b->server_public_key, KEY_A);
    assert_string_equal(b->client_cert_file, "/etc/sentinel/client.key_secret");
    assert_int_equal(b->principal_count, 2);
    assert_string_equal(b->principals[0].name, "buildpilot");
    assert_string_equal(b->principals[0].public_key, KEY_B);
    assert_string_equal(b->principals[0].publish[0], "run.*");
    assert_string_equal(b->principals[0].publish[1], "build.finished");
    assert_null(b->principals[0].publish[2]);
    assert_string_equal(b->principals[0].subscribe[0], "run.");
    assert_string_equal(b->principals[0].call[0], "*");
    assert_string_equal(b->principals[0].serve[1], "deploy.firebase");
    assert_null(b->principals[0].serve[2]);
    assert_string_equal(b->principals[1].name, "watcher");
    assert_non_null(b->principals[1].publish); /* absent lists are empty, never NULL */
    assert_null(b->principals[1].publish[0]);
    assert_string_equal(b->revoked[0], KEY_B);
    assert_null(b->revoked[1]);
    assert_int_equal(b->heartbeat_ms, 2000);
    assert_int_equal(b->heartbeat_liveness, 5);
    assert_int_equal(b->max_frame_bytes, 4194304);
    assert_false(cfg.redis.embedded);
    assert_null(cfg.redis.unix_path);
    assert_string_equal(cfg.redis.host, "redis.internal");
    assert_int_equal(cfg.redis.port, 6380);
    assert_int_equal(cfg.redis.timeout_ms, 500);
    sn_runtime_config_t *rt = &cfg.runtime;
    assert_int_equal(rt->leader_ttl_ms, 9000);
    assert_int_equal(rt->leader_renew_ms, 3000);
    assert_int_equal(rt->job_lease_ms, 60000);
    assert_int_equal(rt->job_lease_max_ms, 7200000);
    assert_int_equal(rt->job_max_attempts, 7);
    assert_int_equal(rt->shutdown_grace_ms, 0);
    assert_int_equal(rt->agent_ttl_ms, 20000);
    assert_true(rt->journal_max_len == INT64_C(5000000000));
    assert_int_equal(rt->journal_max_age_s, 7 * 86400);
    assert_true(cfg.retention.runs_max_age_s == 30 * 86400);
    assert_true(cfg.retention.dead_letters == 50);
    assert_true(cfg.retention.work_dir_max_age_s == 2 * 3600);
    assert_true(cfg.retention.gc_interval_s == 0);
    assert_int_equal(cfg.process_count, 2);
    assert_string_equal(cfg.processes[0].role, "supervisor");
    assert_int_equal(cfg.processes[0].instances, 1);
    assert_string_equal(cfg.processes[1].role, "ci-runner");
    assert_int_equal(cfg.processes[1].instances, 4);
    assert_int_equal(strlen(cfg.hash), 64);
    sn_config_fini(&cfg);
    assert_null(cfg.namespace_);
    sn_config_fini(&cfg); /* idempotent */
    sn_config_fini(NULL);
}

static void test_sn_config_defaults_and_hash(void **state)
{
    sn_config_t cfg;
    assert_int_equal(s_load("namespace: x\n", &cfg), SN_OK);
    assert_string_equal(cfg.namespace_, "x");
    assert_string_equal(cfg.state_dir, "./var");
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.broker.rpc, "tcp://127.0.0.1:7700");
    assert_string_equal(cfg.broker.pub, "tcp://127.0.0.1:7701");
    assert_string_equal(cfg.broker.sub, "tcp://127.0.0.1:7702");
    assert_false(cfg.broker.curve);
    assert_null(cfg.broker.server_secret_file);
    assert_int_equal(cfg.broker.principal_count, 0);
    assert_non_null(cfg.broker.revoked);
    assert_null(cfg.broker.revoked[0]);
    assert_int_equal(cfg.broker.heartbeat_ms, 1000);
    assert_int_equal(cfg.broker.heartbeat_liveness, 3);
    assert_int_equal(cfg.broker.max_frame_bytes, 1048576);
    assert_false(cfg.redis.embedded);
    assert_string_equal(cfg.redis.host, "127.0.0.1");
    assert_int_equal(cfg.redis.port, 6379);
    assert_int_equal(cfg.redis.timeout_ms, 2000);
    assert_int_equal(cfg.runtime.leader_ttl_ms, 5000);
    assert_int_equal(cfg.runtime.leader_renew_ms, 5000 / 3);
    assert_int_equal(cfg.runtime.job_lease_ms, 30000);
    assert_int_equal(cfg.runtime.job_lease_max_ms, 3600000);
    assert_int_equal(cfg.runtime.job_max_attempts, 5);
    assert_int_equal(cfg.runtime.shutdown_grace_ms, 10000);
    assert_int_equal(cfg.runtime.agent_ttl_ms, 15000);
    assert_true(cfg.runtime.journal_max_len == 1000000);
    assert_true(cfg.runtime.journal_max_age_s == 30 * 86400);
    assert_true(cfg.retention.runs_max_age_s == 90 * 86400);
    assert_true(cfg.retention.dead_letters == 1000);
    assert_true(cfg.retention.work_dir_max_age_s == 86400);
    assert_true(cfg.retention.gc_interval_s == 86400);
    assert_int_equal(cfg.process_count, 0);
    assert_string_equal(cfg.hash,
                        "b250df6245c28f35a2dcaa2a90102b26d007860ad2aeb3072b89bcb1444a627a");
    sn_config_fini(&cfg);

    /* empty sections are all defaults */
    assert_int_equal(s_load("broker:\nruntime: {}\nprocesses:\n", &cfg), SN_OK);
    assert_int_equal(cfg.broker.heartbeat_ms, 1000);
    assert_int_equal(cfg.runtime.job_max_attempts, 5);
    sn_config_fini(&cfg);
}

static void test_sn_config_redis_forms(void **state)
{
    sn_config_t cfg;
    assert_int_equal(s_load("state_dir: /srv/s\nredis: embedded\n", &cfg), SN_OK);
    assert_true(cfg.redis.embedded);
    assert_string_equal(cfg.redis.unix_path, "/srv/s/redis.sock");
    assert_int_equal(cfg.redis.port, 6379);
    assert_int_equal(cfg.redis.timeout_ms, 2000);
    sn_config_fini(&cfg);

    assert_int_equal(s_load("redis:\n  embedded: true\n  unix_path: /run/r.sock\n", &cfg), SN_OK);
    assert_true(cfg.redis.embedded);
    assert_string_equal(cfg.redis.unix_path, "/run/r.sock");
    sn_config_fini(&cfg);

    s_expect_error("redis: external\n",
                   "t.yml:1:8: redis: expected \"embedded\" or a mapping, got \"external\"");
    s_expect_error("redis: [a]\n", "t.yml:1:8: redis: expected a mapping, got a sequence");
}

static void test_sn_config_example_loads(void **state)
{
    sn_config_t cfg;
    const char *path = SN_SOURCE_DIR "/examples/sentinel.yml";
    if (sn_config_load(path, &cfg, s_err, sizeof s_err) != SN_OK)
        print_error("%s\n", s_err);
    assert_string_equal(cfg.path, path);
    assert_true(cfg.redis.embedded);
    assert_string_equal(cfg.redis.unix_path, "./var/redis.sock");
    assert_string_equal(cfg.state_dir, "./var");
    assert_false(cfg.broker.curve);
    assert_string_equal(cfg.broker.rpc, "tcp://127.0.0.1:7700");
    assert_int_equal(cfg.runtime.leader_ttl_ms, 5000);
    assert_true(cfg.runtime.journal_max_age_s == 30 * 86400);
    /* the quick start's pipeline */
    assert_true(cfg.process_count >= 8);
    const sn_project_config_t *p = sn_config_project(&cfg, "hello");
    assert_non_null(p);
    assert_string_equal(p->repo, "./var/hello-site.git");
    assert_string_equal(p->build_steps[0], "./build.sh");
    assert_string_equal(p->build_output, "public");
    const sn_environment_config_t *staging = sn_config_environment(p, "staging");
    const sn_environment_config_t *prod = sn_config_environment(p, "production");
    assert_non_null(staging);
    assert_non_null(prod);
    assert_string_equal(staging->branch, "staging");
    assert_false(staging->approval.required);
    assert_string_equal(staging->targets[0], "hello-staging");
    assert_string_equal(prod->branch, "main");
    assert_true(prod->approval.required);
    assert_string_equal(prod->strategy, "blue-green");
    assert_string_equal(prod->promote_from, "staging");
    assert_string_equal(prod->targets[0], "hello-prod");
    const sn_target_config_t *t = sn_config_target(&cfg, "hello-staging");
    assert_non_null(t);
    assert_string_equal(t->url, "http://127.0.0.1:8080");
    assert_string_equal(t->preview_url, "http://127.0.0.1:8081");
    /* the check looks for text the site really contains */
    char *index = sn_test_read_file(SN_SOURCE_DIR "/examples/hello-site/src/index.html");
    assert_non_null(index);
    assert_non_null(t->check.body_contains);
    assert_non_null(strstr(index, t->check.body_contains));
    free(index);
    t = sn_config_target(&cfg, "hello-prod");
    assert_non_null(t);
    assert_string_equal(t->url, "http://127.0.0.1:8090");
    assert_string_equal(t->preview_url, "http://127.0.0.1:8091");
    assert_int_equal(cfg.channel_count, 2);
    assert_string_equal(cfg.channels[1].path, "./var/notifications.jsonl");
    assert_string_equal(cfg.gateway.listen, "127.0.0.1:8700");
    assert_int_equal(cfg.gateway.token_count, 0);
    assert_string_equal(cfg.artifact_dir, "./var/artifacts");
    assert_int_equal(access(SN_SOURCE_DIR "/examples/hello-site/build.sh", X_OK), 0);
    /* the hash is the file's: loading the same bytes as a string gives the same hash */
    char *text = sn_test_read_file(path);
    assert_non_null(text);
    sn_config_t again;
    assert_int_equal(sn_config_load_string("x", text, strlen(text), &again, s_err, sizeof s_err),
                     SN_OK);
    assert_string_equal(cfg.hash, again.hash);
    free(text);
    sn_config_fini(&again);
    sn_config_fini(&cfg);
}

static void test_sn_config_type_errors(void **state)
{
    s_expect_error("broker:\n  heartbeat_ms: fast\n",
                   "t.yml:2:17: broker.heartbeat_ms: expected an integer in [100, 60000] (ms) or a "
                   "duration such as \"250ms\", got \"fast\"");
    s_expect_error("broker:\n  heartbeat_ms: 50\n",
                   "t.yml:2:17: broker.heartbeat_ms: expected an integer in [100, 60000] (ms) or a "
                   "duration such as \"250ms\", got \"50\"");
    s_expect_error(
        "broker:\n  heartbeat_liveness: 0\n",
        "t.yml:2:23: broker.heartbeat_liveness: expected an integer in [1, 100], got \"0\"");
    s_expect_error("redis:\n  port: 99999999999999999999999\n",
                   "t.yml:2:9: redis.port: expected an integer in [1, 65535], got "
                   "\"99999999999999999999999\"");
    s_expect_error("runtime:\n  journal_max_age_s: 250ms\n",
                   "t.yml:2:22: runtime.journal_max_age_s: expected an integer in [60, 315360000] "
                   "(s) or a duration such as \"30d\", got \"250ms\"");
    s_expect_error("retention:\n  runs_max_age_s: 10m\n",
                   "t.yml:2:19: retention.runs_max_age_s: expected an integer in [3600, "
                   "315360000] (s) or a duration such as \"30d\", got \"10m\"");
    s_expect_error("retention:\n  dead_letters: -1\n",
                   "t.yml:2:17: retention.dead_letters: expected an integer in [0, 100000000], "
                   "got \"-1\"");
    s_expect_error("retention:\n  gc_interval_s: often\n",
                   "t.yml:2:18: retention.gc_interval_s: expected an integer in [0, 31536000] "
                   "(s) or a duration such as \"30d\", got \"often\"");
    s_expect_error("retention:\n  runs_days: 90\n",
                   "t.yml:2:3: retention.runs_days: unknown key \"runs_days\" (valid keys: "
                   "runs_max_age_s, dead_letters, work_dir_max_age_s, gc_interval_s)");
    s_expect_error("broker:\n  curve: maybe\n",
                   "t.yml:2:10: broker.curve: expected true or false, got \"maybe\"");
    s_expect_error(
        "log_level: loud\n",
        "t.yml:1:12: log_level: expected one of debug, info, warn, error, off, got \"loud\"");
    s_expect_error("broker: 5\n", "t.yml:1:9: broker: expected a mapping, got a scalar");
    s_expect_error("namespace: [a, b]\n",
                   "t.yml:1:12: namespace: expected a string, got a sequence");
    s_expect_error("namespace:\n", "t.yml:1:11: namespace: expected a string, got nothing");
    s_expect_error("broker:\n  revoked: abc\n",
                   "t.yml:2:12: broker.revoked: expected a list of strings, got a scalar");
    s_expect_error("broker:\n  revoked: [[x]]\n",
                   "t.yml:2:13: broker.revoked[0]: expected a string, got a sequence");
    s_expect_error("processes: {role: x}\n",
                   "t.yml:1:12: processes: expected a list of mappings, got a mapping");
    s_expect_error("processes:\n  - ci-runner\n",
                   "t.yml:2:5: processes[0]: expected a mapping, got a scalar");
    s_expect_error(
        "processes:\n  - role: a\n    instances: 65\n",
        "t.yml:3:16: processes[0].instances: expected an integer in [1, 64], got \"65\"");
    s_expect_error("namespace: \"a\\0b\"\n", "t.yml:1:12: namespace: string contains a NUL byte");
    s_expect_error("? [a]\n: b\n", "t.yml:1:3: a key must be a plain string, got a sequence");
    s_expect_error("- a\n- b\n", "t.yml:1:1: expected a mapping, got a sequence");
    /* a long value of escaped bytes is quoted within bounds (found by fuzz_config) */
    const char *tabs = "log_level: \"\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\"\n";
    s_expect_error_like(tabs, strlen(tabs),
                        "t.yml:1:12: log_level: expected one of debug, info, "
                        "warn, error, off, got \"\\x09\\x09",
                        "\\x09...\"");
}

static void test_sn_config_key_errors(void **state)
{
    s_expect_error("brokr:\n  rpc: x\n",
                   "t.yml:1:1: brokr: unknown key \"brokr\" (did you mean \"broker\"?)");
    s_expect_error("broker:\n  heartbeat: 5\n",
                   "t.yml:2:3: broker.heartbeat: unknown key \"heartbeat\" (did you mean "
                   "\"heartbeat_ms\"?)");
    s_expect_error("project: []\n",
                   "t.yml:1:1: project: unknown key \"project\" (did you mean \"projects\"?)");
    s_expect_error(
        "pipelines: []\n",
        "t.yml:1:1: pipelines: unknown key \"pipelines\" (valid keys: namespace, state_dir, "
        "log_level, broker, redis, runtime, retention, processes, projects, targets, channels, "
        "gateway, notify, github, "
        "artifact_dir, artifact_source, audit_archive, audit_key_file)");
    s_expect_error("namespace: a\nstate_dir: b\nnamespace: c\n",
                   "t.yml:3:1: namespace: duplicate key (first at line 1, column 1)");
    s_expect_error("runtime:\n  job_lease_ms: 1s\n  job_lease_ms: 2s\n",
                   "t.yml:3:3: runtime.job_lease_ms: duplicate key (first at line 2, column 3)");
    s_expect_error("broker:\n  principals:\n    - name: a\n",
                   "t.yml:3:7: broker.principals[0]: missing required key \"public_key\"");
    s_expect_error("processes:\n  - instances: 2\n",
                   "t.yml:2:5: processes[0]: missing required key \"role\"");
}

static void test_sn_config_cross_field_errors(void **state)
{
    s_expect_error("broker:\n  rpc: tcp://0.0.0.0:7700\n",
                   "t.yml:2:8: broker.rpc: tcp://0.0.0.0:7700 is not a loopback endpoint: binding "
                   "beyond this host requires broker.curve: true");
    s_expect_error("broker:\n  sub: tcp://*:7702\n",
                   "t.yml:2:8: broker.sub: tcp://*:7702 is not a loopback endpoint: binding "
                   "beyond this host requires broker.curve: true");
    s_expect_error("broker:\n  pub: tcp://127.0.0.1:7700\n",
                   "t.yml:2:8: broker.pub: the same endpoint as broker.rpc");
    s_expect_error("broker:\n  rpc: http://x:1\n",
                   "t.yml:2:8: broker.rpc: expected a ZeroMQ endpoint (tcp://host:port, ipc://path "
                   "or inproc://name), got \"http://x:1\"");
    s_expect_error("broker:\n  rpc: tcp://127.0.0.1:0\n",
                   "t.yml:2:8: broker.rpc: expected a ZeroMQ endpoint (tcp://host:port, ipc://path "
                   "or inproc://name), got \"tcp://127.0.0.1:0\"");
    s_expect_error(
        "broker:\n  curve: true\n",
        "t.yml:2:10: broker.curve: curve is on but broker.server_secret_file is not set");
    s_expect_error("broker:\n  principals:\n    - name: a\n      public_key: short\n",
                   "t.yml:4:19: broker.principals[0].public_key: expected a 40-character Z85 CURVE "
                   "public key, got \"short\"");
    s_expect_error("broker:\n  principals:\n    - name: a\n      public_key: \"" KEY_A "\"\n"
                   "    - name: a\n      public_key: \"" KEY_B "\"\n",
                   "t.yml:5:13: broker.principals[1].name: the same name as broker.principals[0]");
    s_expect_error(
        "broker:\n  revoked:\n    - \"" KEY_A "\"\n    - \"" KEY_A "~\"\n",
        "t.yml:4:7: broker.revoked[1]: expected a 40-character Z85 CURVE public key, got "
        "\"" KEY_A "...\"");
    s_expect_error("runtime:\n  leader_ttl_ms: 3000\n  leader_renew_ms: 3s\n",
                   "t.yml:3:20: runtime.leader_renew_ms: must be less than runtime.leader_ttl_ms "
                   "(3000), got 3000");
    s_expect_error("runtime:\n  job_lease_ms: 2h\n",
                   "t.yml:2:17: runtime.job_lease_ms: must not exceed runtime.job_lease_max_ms "
                   "(3600000), got 7200000");
    /* loopback forms are fine without curve */
    sn_config_t cfg;
    assert_int_equal(s_load("broker:\n  rpc: tcp://localhost:1\n  pub: tcp://[::1]:2\n"
                            "  sub: inproc://sub\n",
                            &cfg),
                     SN_OK);
    sn_config_fini(&cfg);
}

static void test_sn_config_env_resolution(void **state)
{
    setenv("SN_TEST_CFG_HOST", "redis.local", 1);
    setenv("SN_TEST_CFG_PORT", "6390", 1);
    unsetenv("SN_TEST_CFG_UNSET");
    sn_config_t cfg;
    assert_int_equal(s_load("namespace: \"a-${env:SN_TEST_CFG_HOST}-b:\"\n"
                            "state_dir: \"$${env:SN_TEST_CFG_HOST}/x\"\n"
                            "redis:\n"
                            "  host: ${env:SN_TEST_CFG_HOST}\n"
                            "  port: ${env:SN_TEST_CFG_PORT}\n"
                            "  unix_path: ${secret:redis-sock}\n",
                            &cfg),
                     SN_OK);
    assert_string_equal(cfg.namespace_, "a-redis.local-b:");
    assert_string_equal(cfg.state_dir, "${env:SN_TEST_CFG_HOST}/x");
    assert_string_equal(cfg.redis.host, "redis.local");
    assert_int_equal(cfg.redis.port, 6390);
    assert_string_equal(cfg.redis.unix_path, "${secret:redis-sock}");
    sn_config_fini(&cfg);

    s_expect_error("redis:\n  host: ${env:SN_TEST_CFG_UNSET}\n",
                   "t.yml:2:9: redis.host: environment variable SN_TEST_CFG_UNSET is not set");
    s_expect_error(
        "processes:\n  - role: \"x${env:SN_TEST_CFG_UNSET}\"\n",
        "t.yml:2:11: processes[0].role: environment variable SN_TEST_CFG_UNSET is not set");
    s_expect_error("namespace: ${foo}\n",
                   "t.yml:1:12: namespace: bad reference \"${foo}\": expected ${env:NAME} or "
                   "${secret:NAME} (\"$${\" for a literal)");
    s_expect_error("namespace: ${env:A B}\n",
                   "t.yml:1:12: namespace: bad reference \"${env:A B}\": expected ${env:NAME} or "
                   "${secret:NAME} (\"$${\" for a literal)");
    s_expect_error("namespace: x${env:A\n",
                   "t.yml:1:12: namespace: unterminated \"${\" (use \"$${\" for a literal)");
    /* a value from the environment is type-checked like any other */
    setenv("SN_TEST_CFG_PORT", "nope", 1);
    s_expect_error("redis:\n  port: ${env:SN_TEST_CFG_PORT}\n",
                   "t.yml:2:9: redis.port: expected an integer in [1, 65535], got "
                   "\"${env:SN_TEST_CFG_PORT}\"");
    unsetenv("SN_TEST_CFG_HOST");
    unsetenv("SN_TEST_CFG_PORT");
}

static void test_sn_config_yaml_errors(void **state)
{
    s_expect_error("a: b: c\n", "t.yml:1:5: YAML syntax error: mapping values are not allowed in "
                                "this context");
    s_expect_error_like("broker:\n  rpc: [\n", 17, "t.yml:3:1: YAML syntax error: ", "");
    s_expect_error_like("namespace: \"abc\n", 16,
                        "t.yml:2:1: YAML syntax error: ", "found unexpected end of stream");
    s_expect_error("namespace: &n x\nstate_dir: *n\n",
                   "t.yml:1:12: YAML anchors are not supported");
    s_expect_error("namespace: *n\n", "t.yml:1:12: YAML aliases are not supported");
    s_expect_error("namespace: a\n---\nnamespace: b\n",
                   "t.yml:2:1: a second YAML document: the file must hold exactly one");
}

static void test_sn_config_hostile_input(void **state)
{
    s_expect_error("", "t.yml:1:1: the file is empty: expected a mapping of settings");
    s_expect_error("# only a comment\n\n",
                   "t.yml:1:1: the file is empty: expected a mapping of settings");
    s_expect_error("~\n", "t.yml:1:1: the file is empty: expected a mapping of settings");
    s_expect_error("hello\n", "t.yml:1:1: expected a mapping, got a scalar");
    s_expect_error_like("namespace: \xff\xfe\n", 13, "t.yml:1:12: invalid input: ", "UTF-8");
    s_expect_error_like("namespace: a\0b\n", 14,
                        "t.yml:1:13: invalid input: ", "control characters are not allowed");

    /* random binary junk: never a crash, never SN_OK with junk */
    uint32_t seed = 12345;
    char junk[512];
    for (int round = 0; round < 300; round++) {
        size_t len = (size_t)(round % 97) * 5 + 1;
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            junk[i] = (char)(seed >> 16);
        }
        sn_config_t cfg;
        sn_rc_t rc = sn_config_load_string("junk", junk, len, &cfg, s_err, sizeof s_err);
        if (rc == SN_OK)
            sn_config_fini(&cfg);
        else
            assert_int_equal(strncmp(s_err, "junk:", 5), 0);
    }

    /* deep nesting: refused at the level that crosses the bound */
    size_t depth = 10000;
    char *deep = sn_malloc(2 * depth + 16);
    size_t o = 0;
    memcpy(deep, "namespace: ", 11);
    o = 11;
    for (size_t i = 0; i < depth; i++)
        deep[o++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[o++] = ']';
    deep[o] = '\0';
    s_expect_error_like(deep, o, "t.yml:1:", "nesting deeper than 32 levels, refused");
    free(deep);

    /* larger than 1 MiB: refused before parsing, as a string and as a file */
    size_t big_len = 1024 * 1024 + 1;
    char *big = sn_malloc(big_len);
    memset(big, '#', big_len);
    big[0] = '\n';
    s_expect_error_like(big, big_len, "t.yml: file is larger than 1048576 bytes", "refused");
    char *dir = sn_test_tmpdir("config");
    char *path = sn_strdupf("%s/big.yml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(big, 1, big_len, f), big_len);
    fclose(f);
    sn_config_t cfg;
    assert_int_equal(sn_config_load(path, &cfg, s_err, sizeof s_err), SN_ERROR);
    assert_non_null(strstr(s_err, "file is larger than 1048576 bytes, refused"));
    free(big);

    /* a missing file and a directory */
    char *missing = sn_strdupf("%s/missing.yml", dir);
    assert_int_equal(sn_config_load(missing, &cfg, s_err, sizeof s_err), SN_ERROR);
    assert_non_null(strstr(s_err, "missing.yml: cannot open: No such file or directory"));
    assert_int_equal(sn_config_load(dir, &cfg, s_err, sizeof s_err), SN_ERROR);
    assert_non_null(strstr(s_err, "cannot read"));
    sn_config_fini(&cfg);
    unlink(path);
    free(missing);
    free(path);
    sn_test_rmdir(dir);
    free(dir);

    /* a tiny error buffer truncates, never overflows; NULL err is allowed */
    char small[8];
    assert_int_equal(sn_config_load_string("t.yml", "x: 1", 4, &cfg, small, sizeof small),
                     SN_ERROR);
    assert_int_equal(strlen(small), 7);
    assert_int_equal(sn_config_load_string("t.yml", "x: 1", 4, &cfg, NULL, 0), SN_ERROR);
}

/* ---- the pipeline sections -------------------------------------------------------------- */

#define TOKEN_HASH "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static void test_sn_config_pipeline_full(void **state)
{
    const char *yaml =
        "state_dir: /srv/sentinel\n"
        "projects:\n"
        "  - name: web\n"
        "    source_type: local\n"
        "    repo: /srv/git/web.git\n"
        "    poll_interval_ms: 0\n"
        "    build_steps: [\"npm ci\", \"npm run build\"]\n"
        "    build_output: dist/site\n"
        "    build_timeout_s: 15m\n"
        "    build_user: builder\n"
        "    build_env: [\"NODE_ENV=production\", \"EMPTY=\"]\n"
        "    build_secrets: [NPM_TOKEN]\n"
        "    build_memory_mb: 4096\n"
        "    build_max_procs: 512\n"
        "    environments:\n"
        "      - name: staging\n"
        "        branch: develop\n"
        "        strategy: canary\n"
        "        supersede: false\n"
        "        targets: [web-staging]\n"
        "        step_timeout_s: 2m\n"
        "        approval_timeout_s: 1h\n"
        "      - name: production\n"
        "        branch: main\n"
        "        approval:\n"
        "          required: true\n"
        "          approvers: [alice, bob]\n"
        "          expiry_s: 2d\n"
        "        strategy: rolling\n"
        "        require_signed: true\n"
        "        promote_from: staging\n"
        "        targets: [web-prod, web-cmd]\n"
        "  - name: docs\n"
        "    repo: /srv/git/docs.git\n"
        "targets:\n"
        "  - name: web-staging\n"
        "    type: local_static\n"
        "    host: edge-1\n"
        "    listen: 127.0.0.1:9080\n"
        "    preview_listen: \"[::1]:9081\"\n"
        "    url: https://staging.example.com\n"
        "    preview_url: http://preview.example.com:9081/x\n"
        "    keep_releases: 3\n"
        "    command_timeout_ms: 1m\n"
        "    check:\n"
        "      path: /healthz\n"
        "      status: 204\n"
        "      body_contains: ok\n"
        "      max_latency_ms: 750ms\n"
        "      consecutive: 5\n"
        "      interval_ms: 1s\n"
        "      deadline_ms: 2m\n"
        "      dns_name: staging.example.com\n"
        "      dns_expect: 192.0.2.10\n"
        "      dns_resolvers: [\"127.0.0.1:5353\", \"[::1]:53\"]\n"
        "  - name: web-prod\n"
        "    type: local_static\n"
        "    listen: 0.0.0.0:80\n"
        "    preview_listen: 127.0.0.1:8081\n"
        "  - name: web-cmd\n"
        "    type: local_command\n"
        "    stage_command: ./stage.sh\n"
        "    promote_command: ./promote.sh\n"
        "    health_command: ./health.sh\n"
        "    rollback_command: ./rollback.sh\n"
        "channels:\n"
        "  - name: ops-log\n"
        "    type: log\n"
        "  - name: jsonl\n"
        "    type: file\n"
        "    path: /srv/notify.jsonl\n"
        "    min_severity: warning\n"
        "  - name: hook\n"
        "    type: webhook\n"
        "    url: https://hooks.example.com/s\n"
        "    secret: \"${env:SN_TEST_CFG_HOOK}\"\n"
        "    min_severity: critical\n"
        "    timeout_ms: 2s\n"
        "    max_attempts: 9\n"
        "  - name: hook2\n"
        "    type: webhook\n"
        "    url: http://127.0.0.1:9/h\n"
        "    secret: \"${secret:hooks/key}\"\n"
        "gateway:\n"
        "  listen: 0.0.0.0:8443\n"
        "  tokens:\n"
        "    - name: alice\n"
        "      sha256: " TOKEN_HASH "\n"
        "      role: admin\n"
        "    - {name: ci, sha256: \"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C"
        "15B0F00A09\", role: operator}\n"
        "  max_sse: 8\n"
        "  max_connections: 32\n"
        "  max_body_bytes: 65536\n"
        "artifact_dir: /data/artifacts\n"
        "audit_archive: /data/audit.log\n"
        "audit_key_file: /etc/sentinel/audit.key\n";
    setenv("SN_TEST_CFG_HOOK", "hook-key-value", 1);
    sn_config_t cfg;
    if (s_load(yaml, &cfg) != SN_OK)
        print_error("%s\n", s_err);
    unsetenv("SN_TEST_CFG_HOOK");

    assert_int_equal(cfg.project_count, 2);
    const sn_project_config_t *p = sn_config_project(&cfg, "web");
    assert_ptr_equal(p, &cfg.projects[0]);
    assert_string_equal(p->name, "web");
    assert_string_equal(p->source_type, "local");
    assert_string_equal(p->repo, "/srv/git/web.git");
    assert_int_equal(p->poll_interval_ms, 0);
    assert_string_equal(p->build_steps[0], "npm ci");
    assert_string_equal(p->build_steps[1], "npm run build");
    assert_null(p->build_steps[2]);
    assert_string_equal(p->build_output, "dist/site");
    assert_int_equal(p->build_timeout_s, 900);
    assert_string_equal(p->build_user, "builder");
    assert_string_equal(p->build_env[0], "NODE_ENV=production");
    assert_string_equal(p->build_env[1], "EMPTY=");
    assert_null(p->build_env[2]);
    assert_string_equal(p->build_secrets[0], "NPM_TOKEN");
    assert_null(p->build_secrets[1]);
    assert_true(p->build_memory_mb == 4096);
    assert_true(p->build_max_procs == 512);
    assert_int_equal(p->environment_count, 2);

    const sn_environment_config_t *e = sn_config_environment(p, "staging");
    assert_ptr_equal(e, &p->environments[0]);
    assert_string_equal(e->branch, "develop");
    assert_false(e->approval.required);
    assert_null(e->approval.approvers[0]);
    assert_int_equal(e->approval.expiry_s, 0);
    assert_string_equal(e->strategy, "canary");
    assert_false(e->supersede);
    assert_false(e->require_signed);
    assert_null(e->promote_from);
    assert_string_equal(e->targets[0], "web-staging");
    assert_null(e->targets[1]);
    assert_int_equal(e->step_timeout_s, 120);
    assert_int_equal(e->approval_timeout_s, 3600);

    e = sn_config_environment(p, "production");
    assert_ptr_equal(e, &p->environments[1]);
    assert_string_equal(e->branch, "main");
    assert_true(e->approval.required);
    assert_string_equal(e->approval.approvers[0], "alice");
    assert_string_equal(e->approval.approvers[1], "bob");
    assert_null(e->approval.approvers[2]);
    assert_int_equal(e->approval.expiry_s, 2 * 86400);
    assert_string_equal(e->strategy, "rolling");
    assert_true(e->supersede);
    assert_true(e->require_signed);
    assert_string_equal(e->promote_from, "staging");
    assert_string_equal(e->targets[0], "web-prod");
    assert_string_equal(e->targets[1], "web-cmd");
    assert_null(e->targets[2]);
    assert_int_equal(e->step_timeout_s, 600);
    assert_int_equal(e->approval_timeout_s, 86400);
    assert_null(sn_config_environment(p, "qa"));
    assert_null(sn_config_environment(NULL, "staging"));
    assert_null(sn_config_environment(p, NULL));

    p = sn_config_project(&cfg, "docs");
    assert_ptr_equal(p, &cfg.projects[1]);
    assert_string_equal(p->source_type, "local");
    assert_int_equal(p->environment_count, 0);
    assert_null(sn_config_project(&cfg, "nope"));
    assert_null(sn_config_project(NULL, "web"));

    assert_int_equal(cfg.target_count, 3);
    const sn_target_config_t *t = sn_config_target(&cfg, "web-staging");
    assert_ptr_equal(t, &cfg.targets[0]);
    assert_string_equal(t->type, "local_static");
    assert_string_equal(t->host, "edge-1");
    assert_string_equal(t->listen, "127.0.0.1:9080");
    assert_string_equal(t->preview_listen, "[::1]:9081");
    assert_string_equal(t->url, "https://staging.example.com");
    assert_string_equal(t->preview_url, "http://preview.example.com:9081/x");
    assert_int_equal(t->keep_releases, 3);
    assert_null(t->stage_command);
    assert_int_equal(t->command_timeout_ms, 60000);
    assert_string_equal(t->check.path, "/healthz");
    assert_int_equal(t->check.status, 204);
    assert_string_equal(t->check.body_contains, "ok");
    assert_int_equal(t->check.max_latency_ms, 750);
    assert_int_equal(t->check.consecutive, 5);
    assert_int_equal(t->check.interval_ms, 1000);
    assert_int_equal(t->check.deadline_ms, 120000);
    assert_string_equal(t->check.dns_name, "staging.example.com");
    assert_string_equal(t->check.dns_expect, "192.0.2.10");
    assert_string_equal(t->check.dns_resolvers[0], "127.0.0.1:5353");
    assert_string_equal(t->check.dns_resolvers[1], "[::1]:53");
    assert_null(t->check.dns_resolvers[2]);

    t = sn_config_target(&cfg, "web-prod");
    assert_ptr_equal(t, &cfg.targets[1]);
    assert_null(t->host);
    assert_string_equal(t->url, "http://0.0.0.0:80"); /* derived from listen */
    assert_string_equal(t->preview_url, "http://127.0.0.1:8081");

    t = sn_config_target(&cfg, "web-cmd");
    assert_ptr_equal(t, &cfg.targets[2]);
    assert_string_equal(t->type, "local_command");
    assert_null(t->listen);
    assert_null(t->url); /* nothing to derive it from */
    assert_null(t->preview_url);
    assert_string_equal(t->stage_command, "./stage.sh");
    assert_string_equal(t->promote_command, "./promote.sh");
    assert_string_equal(t->health_command, "./health.sh");
    assert_string_equal(t->rollback_command, "./rollback.sh");
    assert_null(sn_config_target(&cfg, "web"));
    assert_null(sn_config_target(NULL, "web"));

    assert_int_equal(cfg.channel_count, 4);
    assert_string_equal(cfg.channels[0].name, "ops-log");
    assert_string_equal(cfg.channels[0].type, "log");
    assert_null(cfg.channels[0].path);
    assert_string_equal(cfg.channels[1].type, "file");
    assert_string_equal(cfg.channels[1].path, "/srv/notify.jsonl");
    assert_string_equal(cfg.channels[1].min_severity, "warning");
    const sn_channel_config_t *c = &cfg.channels[2];
    assert_string_equal(c->type, "webhook");
    assert_string_equal(c->url, "https://hooks.example.com/s");
    assert_string_equal(c->secret, "hook-key-value"); /* ${env:...} resolved */
    assert_string_equal(c->min_severity, "critical");
    assert_int_equal(c->timeout_ms, 2000);
    assert_int_equal(c->max_attempts, 9);
    assert_string_equal(cfg.channels[3].secret, "${secret:hooks/key}"); /* kept verbatim */

    assert_string_equal(cfg.gateway.listen, "0.0.0.0:8443");
    assert_int_equal(cfg.gateway.token_count, 2);
    assert_string_equal(cfg.gateway.tokens[0].name, "alice");
    assert_string_equal(cfg.gateway.tokens[0].sha256, TOKEN_HASH);
    assert_string_equal(cfg.gateway.tokens[0].role, "admin");
    assert_string_equal(cfg.gateway.tokens[1].name, "ci");
    /* stored lower-case */
    assert_string_equal(cfg.gateway.tokens[1].sha256,
                        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a09");
    assert_string_equal(cfg.gateway.tokens[1].role, "operator");
    assert_int_equal(cfg.gateway.max_sse, 8);
    assert_int_equal(cfg.gateway.max_connections, 32);
    assert_true(cfg.gateway.max_body_bytes == 65536);
    assert_string_equal(cfg.artifact_dir, "/data/artifacts");
    assert_string_equal(cfg.audit_archive, "/data/audit.log");
    assert_string_equal(cfg.audit_key_file, "/etc/sentinel/audit.key");
    sn_config_fini(&cfg);
    sn_config_fini(&cfg); /* idempotent */
}

static void test_sn_config_pipeline_defaults(void **state)
{
    sn_config_t cfg;
    /* no pipeline keys at all */
    assert_int_equal(s_load("state_dir: /tmp/sn\n", &cfg), SN_OK);
    assert_int_equal(cfg.project_count, 0);
    assert_null(cfg.projects);
    assert_int_equal(cfg.target_count, 0);
    assert_int_equal(cfg.channel_count, 0);
    assert_string_equal(cfg.gateway.listen, "127.0.0.1:8700");
    assert_int_equal(cfg.gateway.token_count, 0);
    assert_int_equal(cfg.gateway.max_sse, 64);
    assert_int_equal(cfg.gateway.max_connections, 256);
    assert_true(cfg.gateway.max_body_bytes == 1048576);
    assert_string_equal(cfg.artifact_dir, "/tmp/sn/artifacts");
    assert_string_equal(cfg.audit_archive, "/tmp/sn/audit.log");
    assert_string_equal(cfg.audit_key_file, "/tmp/sn/audit.key");
    assert_null(sn_config_project(&cfg, "x"));
    assert_null(sn_config_target(&cfg, "x"));
    sn_config_fini(&cfg);

    /* the smallest of each */
    assert_int_equal(s_load("projects:\n"
                            "  - name: p\n"
                            "    repo: /r\n"
                            "    environments:\n"
                            "      - {name: e, branch: b}\n"
                            "targets:\n"
                            "  - {name: t, type: local_static, listen: \"127.0.0.1:1\", "
                            "preview_listen: \"127.0.0.1:2\"}\n"
                            "channels:\n"
                            "  - {name: c, type: log}\n"
                            "gateway:\n",
                            &cfg),
                     SN_OK);
    const sn_project_config_t *p = &cfg.projects[0];
    assert_string_equal(p->source_type, "local");
    assert_int_equal(p->poll_interval_ms, 5000);
    assert_non_null(p->build_steps);
    assert_null(p->build_steps[0]);
    assert_string_equal(p->build_output, ".");
    assert_int_equal(p->build_timeout_s, 600);
    assert_string_equal(p->build_user, "nobody");
    assert_null(p->build_env[0]);
    assert_null(p->build_secrets[0]);
    assert_true(p->build_memory_mb == 2048);
    assert_true(p->build_max_procs == 256);
    const sn_environment_config_t *e = &p->environments[0];
    assert_false(e->approval.required);
    assert_non_null(e->approval.approvers);
    assert_null(e->approval.approvers[0]);
    assert_int_equal(e->approval.expiry_s, 0);
    assert_string_equal(e->strategy, "blue-green");
    assert_true(e->supersede);
    assert_false(e->require_signed);
    assert_null(e->promote_from);
    assert_non_null(e->targets);
    assert_null(e->targets[0]); /* an environment without targets builds and verifies only */
    assert_int_equal(e->step_timeout_s, 600);
    assert_int_equal(e->approval_timeout_s, 86400);
    const sn_target_config_t *t = &cfg.targets[0];
    assert_null(t->host);
    assert_string_equal(t->url, "http://127.0.0.1:1");
    assert_string_equal(t->preview_url, "http://127.0.0.1:2");
    assert_int_equal(t->keep_releases, 5);
    assert_int_equal(t->command_timeout_ms, 120000);
    assert_string_equal(t->check.path, "/");
    assert_int_equal(t->check.status, 200);
    assert_null(t->check.body_contains);
    assert_int_equal(t->check.max_latency_ms, 2000);
    assert_int_equal(t->check.consecutive, 3);
    assert_int_equal(t->check.interval_ms, 500);
    assert_int_equal(t->check.deadline_ms, 30000);
    assert_null(t->check.dns_name);
    assert_null(t->check.dns_expect);
    assert_non_null(t->check.dns_resolvers);
    assert_null(t->check.dns_resolvers[0]);
    const sn_channel_config_t *c = &cfg.channels[0];
    assert_null(c->path);
    assert_null(c->url);
    assert_null(c->secret);
    assert_string_equal(c->min_severity, "info");
    assert_int_equal(c->timeout_ms, 5000);
    assert_int_equal(c->max_attempts, 5);
    assert_string_equal(cfg.gateway.listen, "127.0.0.1:8700");
    assert_string_equal(cfg.artifact_dir, "./var/artifacts");
    assert_string_equal(cfg.audit_archive, "./var/audit.log");
    assert_string_equal(cfg.audit_key_file, "./var/audit.key");
    sn_config_fini(&cfg);
}

/* Value errors caught by the schema rows. */
static void test_sn_config_pipeline_value_errors(void **state)
{
    s_expect_error("projects:\n  - repo: /r\n",
                   "t.yml:2:5: projects[0]: missing required key \"name\"");
    s_expect_error("projects:\n  - name: ../x\n    repo: /r\n",
                   "t.yml:2:11: projects[0].name: expected a name of 1 to 64 letters, digits, "
                   "'.', '_' or '-' starting with a letter or digit, got \"../x\"");
    s_expect_error(
        "projects:\n  - name: p\n    repo: /r\n    source_type: svn\n",
        "t.yml:4:18: projects[0].source_type: expected one of local, github, got \"svn\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    source_type: github\n",
                   "t.yml:2:5: projects[0]: source_type github needs \"github_repo\" (owner/name)");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_output: ../out\n",
                   "t.yml:4:19: projects[0].build_output: expected a relative path inside the "
                   "checkout (no \"..\"), got \"../out\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_output: /abs\n",
                   "t.yml:4:19: projects[0].build_output: expected a relative path inside the "
                   "checkout (no \"..\"), got \"/abs\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_env: [\"1X=y\"]\n",
                   "t.yml:4:17: projects[0].build_env[0]: expected NAME=value (NAME: letters, "
                   "digits and '_', not starting with a digit), got \"1X=y\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_env: [NOVALUE]\n",
                   "t.yml:4:17: projects[0].build_env[0]: expected NAME=value (NAME: letters, "
                   "digits and '_', not starting with a digit), got \"NOVALUE\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_secrets: [a-b]\n",
                   "t.yml:4:21: projects[0].build_secrets[0]: expected a variable name (letters, "
                   "digits and '_', not starting with a digit), got \"a-b\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    build_memory_mb: 8\n",
                   "t.yml:4:22: projects[0].build_memory_mb: expected an integer in [16, "
                   "1073741824], got \"8\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - name: e\n",
                   "t.yml:5:9: projects[0].environments[0]: missing required key \"branch\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, strategy: big-bang}\n",
                   "t.yml:5:40: projects[0].environments[0].strategy: expected one of blue-green, "
                   "canary, rolling, got \"big-bang\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, approval: {required: maybe}}\n",
                   "t.yml:5:51: projects[0].environments[0].approval.required: expected true or "
                   "false, got \"maybe\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, approval: {expiry: 1d}}\n",
                   "t.yml:5:41: projects[0].environments[0].approval.expiry: unknown key "
                   "\"expiry\" (did you mean \"expiry_s\"?)");
    s_expect_error("targets:\n  - {name: t, listen: \"127.0.0.1:1\"}\n",
                   "t.yml:2:5: targets[0]: missing required key \"type\"");
    s_expect_error("targets:\n  - {name: t, type: k8s}\n",
                   "t.yml:2:21: targets[0].type: expected one of local_static, local_command, "
                   "cloudflare_pages, firebase, railway, "
                   "got \"k8s\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, listen: \"8080\"}\n",
                   "t.yml:2:43: targets[0].listen: expected host:port (e.g. \"127.0.0.1:8080\" "
                   "or \"[::1]:8080\"), got \"8080\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, listen: \"h:70000\"}\n",
                   "t.yml:2:43: targets[0].listen: expected host:port (e.g. \"127.0.0.1:8080\" "
                   "or \"[::1]:8080\"), got \"h:70000\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, preview_listen: \"::1:80\"}\n",
                   "t.yml:2:51: targets[0].preview_listen: expected host:port (e.g. "
                   "\"127.0.0.1:8080\" or \"[::1]:8080\"), got \"::1:80\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, url: \"ftp://x\"}\n",
                   "t.yml:2:40: targets[0].url: expected an http:// or https:// URL, got "
                   "\"ftp://x\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, check: {path: health}}\n",
                   "t.yml:2:49: targets[0].check.path: expected a URL path starting with '/', got "
                   "\"health\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, check: {status: 99}}\n",
                   "t.yml:2:51: targets[0].check.status: expected an integer in [100, 599], got "
                   "\"99\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, check: {dns_resolvers: [x]}}\n",
                   "t.yml:2:59: targets[0].check.dns_resolvers[0]: expected host:port (e.g. "
                   "\"127.0.0.1:8080\" or \"[::1]:8080\"), got \"x\"");
    s_expect_error("channels:\n  - {name: c, type: sms}\n",
                   "t.yml:2:21: channels[0].type: expected one of log, file, webhook, telegram, "
                   "slack, discord, email, got \"sms\"");
    s_expect_error("channels:\n  - {name: c, type: log, min_severity: debug}\n",
                   "t.yml:2:40: channels[0].min_severity: expected one of info, warning, critical, "
                   "got \"debug\"");
    s_expect_error("channels:\n  - {name: c, type: webhook, url: \"file:///etc/passwd\"}\n",
                   /* the value is not printed: a chat webhook URL is a secret */
                   "t.yml:2:35: channels[0].url: expected an http(s):// or smtp(s):// URL");
    s_expect_error("gateway:\n  tokens:\n    - {name: a, sha256: abc, role: admin}\n",
                   "t.yml:3:25: gateway.tokens[0].sha256: expected the token's SHA-256 as 64 hex "
                   "characters, got \"abc\"");
    s_expect_error("gateway:\n  tokens:\n    - {name: a, sha256: " TOKEN_HASH ", role: root}\n",
                   "t.yml:3:97: gateway.tokens[0].role: expected one of viewer, operator, admin, "
                   "agent, got \"root\"");
    s_expect_error("gateway:\n  tokens:\n    - {name: a, sha256: " TOKEN_HASH "}\n",
                   "t.yml:3:7: gateway.tokens[0]: missing required key \"role\"");
    s_expect_error("gateway:\n  listen: 8700\n",
                   "t.yml:2:11: gateway.listen: expected host:port (e.g. \"127.0.0.1:8080\" or "
                   "\"[::1]:8080\"), got \"8700\"");
    s_expect_error("gateway:\n  max_sse: 0\n",
                   "t.yml:2:12: gateway.max_sse: expected an integer in [1, 100000], got \"0\"");
    s_expect_error("projects: {name: p}\n",
                   "t.yml:1:11: projects: expected a list of mappings, got a mapping");
}

#define S_TWO_TARGETS                                                                              \
    "targets:\n"                                                                                   \
    "  - {name: a, type: local_static, listen: \"127.0.0.1:1\", preview_listen: "                  \
    "\"127.0.0.1:2\"}\n"                                                                           \
    "  - {name: b, type: local_command, stage_command: s, promote_command: p}\n"

/* Cross-field errors, each with the position of the offending value. */
static void test_sn_config_pipeline_cross_errors(void **state)
{
    s_expect_error("projects:\n  - {name: p, repo: /r}\n  - {name: q, repo: /r}\n"
                   "  - {name: p, repo: /s}\n",
                   "t.yml:4:12: projects[2].name: duplicate name \"p\" (the same as projects[0])");
    s_expect_error(S_TWO_TARGETS "  - {name: a, type: local_command, stage_command: s, "
                                 "promote_command: p}\n",
                   "t.yml:4:12: targets[2].name: duplicate name \"a\" (the same as targets[0])");
    s_expect_error("channels:\n  - {name: c, type: log}\n  - {name: c, type: log}\n",
                   "t.yml:3:12: channels[1].name: duplicate name \"c\" (the same as channels[0])");
    s_expect_error("gateway:\n  tokens:\n"
                   "    - {name: a, sha256: " TOKEN_HASH ", role: admin}\n"
                   "    - {name: a, sha256: " TOKEN_HASH ", role: viewer}\n",
                   "t.yml:4:14: gateway.tokens[1].name: duplicate name \"a\" (the same as "
                   "gateway.tokens[0])");
    s_expect_error("gateway:\n  tokens:\n"
                   "    - {name: a, sha256: " TOKEN_HASH ", role: admin}\n"
                   "    - {name: b, sha256: \"" TOKEN_HASH "\", role: viewer}\n",
                   "t.yml:4:25: gateway.tokens[1].sha256: the same token hash as "
                   "gateway.tokens[0]");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b}\n      - {name: e, branch: c}\n",
                   "t.yml:6:16: projects[0].environments[1].name: duplicate name \"e\" (the same "
                   "as projects[0].environments[0])");
    s_expect_error("projects:\n  - name: p\n",
                   "t.yml:2:5: projects[0]: source_type local needs \"repo\" (the path of a git "
                   "repository)");
    s_expect_error(S_TWO_TARGETS "projects:\n  - name: p\n    repo: /r\n    environments:\n"
                                 "      - name: e\n        branch: b\n        targets: [a, c]\n",
                   "t.yml:10:22: projects[0].environments[0].targets[1]: no target named \"c\" "
                   "(targets: a, b)");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, targets: [x]}\n",
                   "t.yml:5:40: projects[0].environments[0].targets[0]: no target named \"x\" "
                   "(targets: none configured)");
    s_expect_error(S_TWO_TARGETS "projects:\n  - name: p\n    repo: /r\n    environments:\n"
                                 "      - {name: e, branch: b, targets: [b, a, b]}\n",
                   "t.yml:8:46: projects[0].environments[0].targets[2]: target \"b\" is listed "
                   "twice");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, promote_from: f}\n",
                   "t.yml:5:44: projects[0].environments[0].promote_from: no environment named "
                   "\"f\" in project \"p\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: e, branch: b, promote_from: e}\n",
                   "t.yml:5:44: projects[0].environments[0].promote_from: an environment cannot "
                   "promote from itself");
    /* promote_from names an environment of the SAME project */
    s_expect_error("projects:\n"
                   "  - {name: p, repo: /r, environments: [{name: staging, branch: s}]}\n"
                   "  - name: q\n    repo: /r\n    environments:\n"
                   "      - {name: prod, branch: m, promote_from: staging}\n",
                   "t.yml:6:47: projects[1].environments[0].promote_from: no environment named "
                   "\"staging\" in project \"q\"");
    s_expect_error("projects:\n  - name: p\n    repo: /r\n    environments:\n"
                   "      - {name: a, branch: x, promote_from: b}\n"
                   "      - {name: b, branch: y, promote_from: a}\n",
                   "t.yml:5:44: projects[0].environments[0].promote_from: promote_from forms a "
                   "cycle through \"b\"");
    s_expect_error("targets:\n  - name: t\n    type: local_static\n    listen: \"127.0.0.1:1\"\n",
                   "t.yml:2:5: targets[0]: a local_static target needs \"preview_listen\" "
                   "(host:port)");
    s_expect_error("targets:\n  - {name: t, type: local_static}\n",
                   "t.yml:2:5: targets[0]: a local_static target needs \"listen\" (host:port)");
    s_expect_error("targets:\n  - {name: t, type: local_command, stage_command: s}\n",
                   "t.yml:2:5: targets[0]: a local_command target needs \"promote_command\"");
    s_expect_error("targets:\n  - {name: t, type: local_command, promote_command: s}\n",
                   "t.yml:2:5: targets[0]: a local_command target needs \"stage_command\"");
    s_expect_error("targets:\n  - {name: t, type: local_static, listen: \"127.0.0.1:1\", "
                   "preview_listen: \"127.0.0.1:1\"}\n",
                   "t.yml:2:74: targets[0].preview_listen: 127.0.0.1:1 is already "
                   "targets[0].listen");
    s_expect_error(S_TWO_TARGETS "  - {name: c, type: local_static, listen: \"127.0.0.1:3\", "
                                 "preview_listen: \"127.0.0.1:2\"}\n",
                   "t.yml:4:74: targets[2].preview_listen: 127.0.0.1:2 is already "
                   "targets[0].preview_listen");
    s_expect_error("targets:\n  - {name: t, type: local_static, listen: \"127.0.0.1:8700\", "
                   "preview_listen: \"127.0.0.1:1\"}\n",
                   "t.yml:2:43: targets[0].listen: 127.0.0.1:8700 is already gateway.listen");
    s_expect_error("targets:\n  - {name: t, type: local_command, stage_command: s, "
                   "promote_command: p, check: {dns_expect: 1.2.3.4}}\n",
                   "t.yml:2:94: targets[0].check.dns_expect: dns_expect needs check.dns_name");
    s_expect_error("channels:\n  - {name: c, type: file}\n",
                   "t.yml:2:5: channels[0]: a file channel needs \"path\"");
    s_expect_error("channels:\n  - {name: c, type: webhook, secret: s}\n",
                   "t.yml:2:5: channels[0]: a webhook channel needs \"url\"");

    /* the same address on another host, or on another target type, is fine */
    sn_config_t cfg;
    const char *ok = "targets:\n"
                     "  - {name: a, type: local_static, listen: \"127.0.0.1:1\", preview_listen: "
                     "\"127.0.0.1:2\"}\n"
                     "  - {name: b, type: local_static, host: h2, listen: \"127.0.0.1:1\", "
                     "preview_listen: \"127.0.0.1:2\"}\n"
                     "  - {name: c, type: local_command, stage_command: s, promote_command: p, "
                     "url: \"http://127.0.0.1:1\"}\n"
                     "projects:\n"
                     "  - name: p\n    repo: /r\n    environments:\n"
                     "      - {name: s, branch: main, targets: [a]}\n"
                     "      - {name: m, branch: main, promote_from: s, targets: [b, c]}\n"
                     "      - {name: n, branch: main, promote_from: m}\n";
    if (s_load(ok, &cfg) != SN_OK)
        print_error("%s\n", s_err);
    assert_int_equal(cfg.target_count, 3);
    assert_string_equal(cfg.projects[0].environments[2].promote_from, "m");
    sn_config_fini(&cfg);
}

/* A resolved ${env:...} secret never appears in an error message. */
/* artifact_source: where a local-deployer fetches artifacts built on another host. */
/* Issue 4/5 sections: cloud targets, GitHub projects and connection, chat channels, the
 * notification route tree. */
static void test_sn_config_cloud_github_notify(void **state)
{
    (void)state;
    sn_config_t cfg;
    setenv("SN_TEST_CF_TOKEN", "cf-s3cr3t", 1);
    assert_int_equal(
        s_load("targets:\n"
               "  - {name: cf, type: cloudflare_pages, account_id: acc, project: site,\n"
               "     token: \"${env:SN_TEST_CF_TOKEN}\", budget_requests: 40}\n"
               "  - {name: rw, type: railway, service_id: s, environment_id: e, token: t,\n"
               "     token_kind: project, api_base: \"http://127.0.0.1:9/graphql/v2\"}\n"
               "  - {name: fb, type: firebase, project: proj, credentials_file: /k.json}\n"
               "projects:\n"
               "  - name: web\n"
               "    source_type: github\n"
               "    github_repo: octo-org/hello.site\n"
               "    environments:\n"
               "      - name: production\n"
               "        branch: main\n"
               "        required_workflows: [CI, e2e]\n"
               "        require_branch_protection: true\n"
               "        required_approvals: 1\n"
               "        targets: [cf, rw, fb]\n"
               "channels:\n"
               "  - {name: tg, type: telegram, token: \"1:abc\", chat_id: \"-100\"}\n"
               "  - {name: mail, type: email, url: \"smtp://127.0.0.1:2525\", from: s@x.org,\n"
               "     to: [ops@x.org]}\n"
               "  - {name: sl, type: slack, url: \"https://hooks.slack.com/services/T/B/X\"}\n"
               "notify:\n"
               "  route:\n"
               "    group_wait_ms: 2s\n"
               "    routes:\n"
               "      - match: [severity=critical]\n"
               "        channels: [tg, sl]\n"
               "        continue: true\n"
               "        routes:\n"
               "          - {match: [\"type=deploy.*\"], group_interval_ms: 1m}\n"
               "  inhibit_rules:\n"
               "    - {source_match: [severity=critical], target_match: [severity=warning],\n"
               "       equal: [project, environment]}\n"
               "github:\n"
               "  token: ghp_x\n"
               "  webhook_secret: s\n",
               &cfg),
        SN_OK);
    const sn_target_config_t *cf = sn_config_target(&cfg, "cf");
    assert_string_equal(cf->api_base, "https://api.cloudflare.com/client/v4");
    assert_string_equal(cf->token, "cf-s3cr3t");
    assert_int_equal(cf->budget_requests, 40);
    assert_int_equal(cf->budget_window_s, 300);
    assert_int_equal(cf->request_timeout_ms, 30000);
    assert_string_equal(cf->production_branch, "main");
    const sn_target_config_t *rw = sn_config_target(&cfg, "rw");
    assert_string_equal(rw->token_kind, "project");
    assert_string_equal(rw->api_base, "http://127.0.0.1:9/graphql/v2");
    const sn_target_config_t *fb = sn_config_target(&cfg, "fb");
    assert_string_equal(fb->site, "proj");
    assert_string_equal(fb->region, "us-central1");
    assert_string_equal(fb->functions_api_base, "https://cloudfunctions.googleapis.com/v2");
    char *svc = sn_config_deploy_service(cf, "h1");
    assert_string_equal(svc, "deploy.cloudflare");
    free(svc);
    svc = sn_config_deploy_service(fb, "h1");
    assert_string_equal(svc, "deploy.firebase");
    free(svc);
    assert_true(sn_config_target_is_cloud(rw));
    const sn_project_config_t *p = sn_config_project(&cfg, "web");
    assert_string_equal(p->artifact_from, "github");
    assert_string_equal(p->artifact_name, "site");
    const sn_environment_config_t *e = sn_config_environment(p, "production");
    assert_string_equal(e->required_workflows[1], "e2e");
    assert_true(e->require_branch_protection);
    assert_int_equal(e->required_approvals, 1);
    assert_string_equal(cfg.channels[0].api_base, "https://api.telegram.org");
    assert_true(cfg.channels[1].starttls);
    assert_string_equal(cfg.channels[1].to[0], "ops@x.org");
    const sn_route_config_t *root = &cfg.notify.route;
    assert_int_equal(root->group_wait_ms, 2000);
    assert_int_equal(root->group_interval_ms, 300000);
    assert_int_equal(root->repeat_interval_ms, 14400000);
    assert_string_equal(root->group_by[2], "type");
    assert_int_equal(root->route_count, 1);
    assert_true(root->routes[0].continue_);
    assert_int_equal(root->routes[0].group_wait_ms, -1); /* inherits */
    assert_int_equal(root->routes[0].routes[0].group_interval_ms, 60000);
    assert_string_equal(root->routes[0].routes[0].match[0], "type=deploy.*");
    assert_int_equal(cfg.notify.inhibit_count, 1);
    assert_string_equal(cfg.notify.inhibit_rules[0].equal[1], "environment");
    assert_string_equal(cfg.github.api_base, "https://api.github.com");
    assert_string_equal(cfg.github.public_url, "http://127.0.0.1:8700");
    assert_int_equal(cfg.github.max_wait_s, 900);
    sn_config_fini(&cfg);

    /* errors: never print a token */
    s_expect_error("targets:\n  - {name: cf, type: cloudflare_pages, account_id: a, project: p}\n",
                   "t.yml:2:5: targets[0]: a cloudflare_pages target needs \"token\"");
    s_expect_error("targets:\n  - {name: r, type: railway, service_id: s, token: t}\n",
                   "t.yml:2:5: targets[0]: a railway target needs \"environment_id\"");
    s_expect_error(
        "channels:\n  - {name: m, type: email, url: \"http://x\", from: a, to: [b]}\n",
        "t.yml:2:33: channels[0].url: an email channel needs an smtp:// or smtps:// URL");
    s_expect_error("channels:\n  - {name: w, type: webhook, url: \"smtp://x\"}\n",
                   "t.yml:2:35: channels[0].url: expected an http:// or https:// URL");
    s_expect_error("channels:\n  - {name: t, type: telegram, token: \"1:abc\"}\n",
                   "t.yml:2:5: channels[0]: a telegram channel needs \"chat_id\"");
    s_expect_error("notify:\n  route:\n    routes:\n      - channels: [nope]\n",
                   "t.yml:4:19: notify.route.routes[0].channels[0]: no channel named \"nope\"");
    s_expect_error("notify:\n  route:\n    match: [severity]\n",
                   "t.yml:3:13: notify.route.match[0]: expected key=value (e.g. severity=critical, "
                   "type=deploy.*), got \"severity\"");
    s_expect_error("projects:\n  - {name: p, source_type: github, github_repo: \"a/b/c\"}\n",
                   "t.yml:2:49: projects[0].github_repo: expected owner/name, got \"a/b/c\"");
    s_expect_error("github:\n  app_id: \"12\"\n",
                   "t.yml:2:11: github.app_id: a GitHub App needs \"installation_id\" and "
                   "\"private_key_file\"");
}

static void test_sn_config_artifact_source(void **state)
{
    sn_config_t cfg;
    /* absent: no fetching */
    assert_int_equal(s_load("state_dir: /tmp/sn\n", &cfg), SN_OK);
    assert_null(cfg.artifact_source.url);
    assert_null(cfg.artifact_source.token);
    assert_int_equal(cfg.artifact_source.timeout_ms, 600000);
    assert_int_equal(cfg.artifact_source.connect_timeout_ms, 10000);
    assert_true(cfg.artifact_source.max_bytes == INT64_C(8589934592));
    sn_config_fini(&cfg);

    /* every key, the token from the environment, durations, an agent token */
    setenv("SN_TEST_ARTIFACT_TOKEN", "tok-3x4mpl3", 1);
    assert_int_equal(s_load("artifact_source:\n"
                            "  url: http://buildhost:8700\n"
                            "  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n"
                            "  timeout_ms: 2m\n"
                            "  connect_timeout_ms: 3s\n"
                            "  max_bytes: 1048576\n"
                            "gateway:\n"
                            "  tokens:\n"
                            "    - {name: hostb, sha256: " TOKEN_HASH ", role: agent}\n",
                            &cfg),
                     SN_OK);
    assert_string_equal(cfg.artifact_source.url, "http://buildhost:8700");
    assert_string_equal(cfg.artifact_source.token, "tok-3x4mpl3");
    assert_int_equal(cfg.artifact_source.timeout_ms, 120000);
    assert_int_equal(cfg.artifact_source.connect_timeout_ms, 3000);
    assert_true(cfg.artifact_source.max_bytes == 1048576);
    assert_string_equal(cfg.gateway.tokens[0].role, "agent");
    sn_config_fini(&cfg);

    /* just the url */
    assert_int_equal(s_load("artifact_source: {url: \"https://a.example/\"}\n", &cfg), SN_OK);
    assert_string_equal(cfg.artifact_source.url, "https://a.example/");
    assert_null(cfg.artifact_source.token);
    sn_config_fini(&cfg);

    /* errors */
    s_expect_error("artifact_source:\n  url: \"file:///etc/passwd\"\n",
                   "t.yml:2:8: artifact_source.url: expected an http:// or https:// URL, got "
                   "\"file:///etc/passwd\"");
    s_expect_error("artifact_source:\n  timeout_ms: 0\n  url: http://x\n",
                   "t.yml:2:15: artifact_source.timeout_ms: expected an integer in [1000, "
                   "86400000] (ms) or a duration such as \"250ms\", got \"0\"");
    s_expect_error_like("artifact_source:\n  url: http://x\n  max_bytes: -1\n",
                        strlen("artifact_source:\n  url: http://x\n  max_bytes: -1\n"),
                        "t.yml:3:14: artifact_source.max_bytes:", "\"-1\"");
    s_expect_error_like("artifact_source:\n  url: http://x\n  tokn: abc\n",
                        strlen("artifact_source:\n  url: http://x\n  tokn: abc\n"),
                        "t.yml:3:3: artifact_source.tokn:", "unknown key");
    s_expect_error_like("artifact_source:\n  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n",
                        strlen("artifact_source:\n  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n"),
                        "t.yml:", "artifact_source: needs \"url\"");
    assert_null(strstr(s_err, "tok-3x4mpl3"));
    s_expect_error_like("artifact_source: http://x\n", strlen("artifact_source: http://x\n"),
                        "t.yml:1:18: artifact_source:", "mapping");
    /* the token never appears in an error, wherever the error is */
    const char *const bad[] = {
        "artifact_source:\n  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n  url: nope\n",
        "artifact_source:\n  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n  url: http://x\n"
        "  timeout_ms: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n",
        "artifact_source:\n  token: [\"${env:SN_TEST_ARTIFACT_TOKEN}\"]\n  url: http://x\n",
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        memset(s_err, 0, sizeof s_err);
        assert_int_equal(s_load(bad[i], &cfg), SN_ERROR);
        if (strstr(s_err, "tok-3x4mpl3"))
            print_error("case %zu leaked: %s\n", i, s_err);
        assert_null(strstr(s_err, "tok-3x4mpl3"));
        assert_true(strncmp(s_err, "t.yml:", 6) == 0);
    }
    unsetenv("SN_TEST_ARTIFACT_TOKEN");
    s_expect_error_like("artifact_source:\n  url: http://x\n"
                        "  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n",
                        strlen("artifact_source:\n  url: http://x\n"
                               "  token: \"${env:SN_TEST_ARTIFACT_TOKEN}\"\n"),
                        "t.yml:3:10: artifact_source.token:",
                        "environment variable SN_TEST_ARTIFACT_TOKEN is not set");
}

static void test_sn_config_secret_not_leaked(void **state)
{
    const char *value = "s3cr3t hook/KEY!0123456789";
    setenv("SN_TEST_CFG_SECRET", value, 1);
    const char *const bad[] = {
        /* the channel that holds the secret is itself invalid */
        "channels:\n  - {name: c, type: webhook, secret: \"${env:SN_TEST_CFG_SECRET}\"}\n",
        "channels:\n  - {name: c, type: webhook, secret: \"${env:SN_TEST_CFG_SECRET}\", "
        "url: \"${env:SN_TEST_CFG_SECRET}\"}\n",
        "channels:\n  - {name: c, type: webhook, secret: \"${env:SN_TEST_CFG_SECRET}\", "
        "min_severity: \"${env:SN_TEST_CFG_SECRET}\"}\n",
        "channels:\n  - {name: c, type: webhook, url: \"http://x\", "
        "secret: \"${env:SN_TEST_CFG_SECRET}\", timeout_ms: \"${env:SN_TEST_CFG_SECRET}\"}\n",
        "channels:\n  - {name: \"${env:SN_TEST_CFG_SECRET}\", type: log}\n",
        /* a later error in the same file */
        "channels:\n  - {name: c, type: webhook, url: \"http://x\", "
        "secret: \"${env:SN_TEST_CFG_SECRET}\"}\n  - {name: c, type: log}\n",
        "channels:\n  - {name: c, type: webhook, url: \"http://x\", "
        "secret: \"${env:SN_TEST_CFG_SECRET}\"}\ngateway:\n  listen: nope\n",
    };
    for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
        sn_config_t cfg;
        memset(s_err, 0, sizeof s_err);
        assert_int_equal(s_load(bad[i], &cfg), SN_ERROR);
        if (strstr(s_err, "s3cr3t"))
            print_error("case %zu leaked: %s\n", i, s_err);
        assert_null(strstr(s_err, "s3cr3t"));
        assert_true(strncmp(s_err, "t.yml:", 6) == 0);
    }
    /* and the good case resolves it */
    sn_config_t cfg;
    assert_int_equal(s_load("channels:\n  - {name: c, type: webhook, url: \"http://x\", "
                            "secret: \"${env:SN_TEST_CFG_SECRET}\"}\n",
                            &cfg),
                     SN_OK);
    assert_string_equal(cfg.channels[0].secret, value);
    sn_config_fini(&cfg);
    unsetenv("SN_TEST_CFG_SECRET");
    s_expect_error("channels:\n  - {name: c, type: webhook, url: \"http://x\", "
                   "secret: \"${env:SN_TEST_CFG_SECRET}\"}\n",
                   "t.yml:2:55: channels[0].secret: environment variable SN_TEST_CFG_SECRET is "
                   "not set");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_config_full_file),
        cmocka_unit_test(test_sn_config_defaults_and_hash),
        cmocka_unit_test(test_sn_config_redis_forms),
        cmocka_unit_test(test_sn_config_example_loads),
        cmocka_unit_test(test_sn_config_type_errors),
        cmocka_unit_test(test_sn_config_key_errors),
        cmocka_unit_test(test_sn_config_cross_field_errors),
        cmocka_unit_test(test_sn_config_env_resolution),
        cmocka_unit_test(test_sn_config_yaml_errors),
        cmocka_unit_test(test_sn_config_hostile_input),
        cmocka_unit_test(test_sn_config_pipeline_full),
        cmocka_unit_test(test_sn_config_pipeline_defaults),
        cmocka_unit_test(test_sn_config_pipeline_value_errors),
        cmocka_unit_test(test_sn_config_pipeline_cross_errors),
        cmocka_unit_test(test_sn_config_secret_not_leaked),
        cmocka_unit_test(test_sn_config_artifact_source),
        cmocka_unit_test(test_sn_config_cloud_github_notify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
