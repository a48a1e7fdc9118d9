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
    s_expect_error(
        "projects: []\n",
        "t.yml:1:1: projects: unknown key \"projects\" (valid keys: namespace, state_dir, "
        "log_level, broker, redis, runtime, processes)");
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
