/* `sentinelctl up`, the local supervisor, with real processes: the embedded redis-server,
 * the real sentinel-broker, and a stand-in agent (a shell script given through
 * SENTINEL_AGENT_BIN that records its pid and arguments and then sleeps), so that the
 * supervision itself is what is tested: start order and readiness, restart of a killed
 * child with a new pid, SIGTERM stopping everything in order with exit 0, SIGKILL after
 * the grace period, and clear failures when a binary is missing or the broker dies.
 * The last test runs the real sentinel-test-agent and checks the mesh through status and
 * call. */
#include "test_ctl_util.h"

#include <errno.h>
#include <limits.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

typedef struct {
    char *dir;       /* temp dir: config, scripts, capture files */
    char *state_dir; /* the config's state_dir */
    char *config;
    char *agent_bin;
    char *agent_env;
    char *out_path;
    char *err_path;
    pid_t pid; /* sentinelctl up */
} fixture_t;

/* The stand-in agent: `ROLE --config FILE --instance ID`. Role "stubborn" ignores
 * SIGTERM (so only SIGKILL ends it); every other role exec's sleep, keeping its pid. */
static const char s_agent_script[] = "#!/bin/sh\n"
                                     "[ \"$1\" = stubborn ] && trap '' TERM\n"
                                     "dir=$(dirname \"$0\")\n"
                                     "echo \"$@\" > \"$dir/$5.args\"\n"
                                     "echo $$ > \"$dir/$5.pid.tmp\"\n"
                                     "mv \"$dir/$5.pid.tmp\" \"$dir/$5.pid\"\n"
                                     "if [ \"$1\" = stubborn ]; then\n"
                                     "  while :; do sleep 1; done\n"
                                     "fi\n"
                                     "exec sleep 600\n";

static int s_setup(void **state)
{
    fixture_t *f = sn_calloc(1, sizeof *f);
    f->dir = sn_test_tmpdir("ctlup");
    f->state_dir = sn_strdupf("%s/var", f->dir);
    f->config = sn_strdupf("%s/sentinel.yml", f->dir);
    f->agent_bin = sn_strdupf("%s/agent.sh", f->dir);
    f->agent_env = sn_strdupf("SENTINEL_AGENT_BIN=%s", f->agent_bin);
    f->out_path = sn_strdupf("%s/up.out", f->dir);
    f->err_path = sn_strdupf("%s/up.err", f->dir);
    ctl_write_file(f->agent_bin, s_agent_script, true);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        ctl_wait(f->pid, 15000);
    }
    sn_test_rmdir(f->dir);
    free(f->dir);
    free(f->state_dir);
    free(f->config);
    free(f->agent_bin);
    free(f->agent_env);
    free(f->out_path);
    free(f->err_path);
    free(f);
    return 0;
}

static void s_write_config(fixture_t *f, bool is_embedded, const char *processes, int grace_ms)
{
    char *text = sn_strdupf(
        "namespace: \"tup%d:\"\n"
        "state_dir: %s\n"
        "broker:\n"
        "  rpc: tcp://127.0.0.1:%d\n"
        "  pub: tcp://127.0.0.1:%d\n"
        "  sub: tcp://127.0.0.1:%d\n"
        "%s"
        "runtime:\n"
        "  shutdown_grace_ms: %d\n"
        "processes:\n%s",
        (int)getpid(), f->state_dir, sn_test_free_port(), sn_test_free_port(), sn_test_free_port(),
        is_embedded ? "redis: embedded\n" : "redis:\n  unix_path: /nonexistent/redis.sock\n",
        grace_ms, processes);
    ctl_write_file(f->config, text, false);
    free(text);
}

static void s_start(fixture_t *f, const char *const *extra_env)
{
    const char *env[8] = {f->agent_env};
    for (size_t i = 0; extra_env && extra_env[i] && i < 6; i++)
        env[i + 1] = extra_env[i];
    f->pid = ctl_spawn((const char *[]){"up", f->config, NULL}, env, f->out_path, f->err_path);
    assert_true(f->pid > 0);
}

typedef struct {
    fixture_t *f;
    const char *needle;
    int count;
} log_wait_t;

static bool s_log_has(void *arg)
{
    log_wait_t *w = arg;
    return sn_test_count_in_file(w->f->err_path, w->needle) >= w->count;
}

static void s_wait_log(fixture_t *f, const char *needle, int count, int timeout_ms)
{
    log_wait_t w = {f, needle, count};
    if (!sn_test_wait_for(s_log_has, &w, timeout_ms)) {
        char *log = sn_test_read_file(f->err_path);
        print_error("waited %dms for '%s' x%d; up's stderr:\n%s\n", timeout_ms, needle, count,
                    log ? log : "(none)");
        free(log);
        fail();
    }
}

/* The pid an agent stand-in recorded, or 0. */
static pid_t s_agent_pid(fixture_t *f, const char *instance)
{
    char *path = sn_strdupf("%s/%s.pid", f->dir, instance);
    char *text = sn_test_read_file(path);
    free(path);
    int64_t pid = 0;
    if (text) {
        text[strcspn(text, "\n")] = '\0';
        if (sn_parse_i64(text, 1, INT32_MAX, &pid) != SN_OK)
            pid = 0;
    }
    free(text);
    return (pid_t)pid;
}

/* Every "started NAME pid=N" in up's log: the pids of all children it ever ran. */
static size_t s_started_pids(fixture_t *f, pid_t *pids, size_t max)
{
    char *log = sn_test_read_file(f->err_path);
    size_t n = 0;
    for (const char *p = log; p && n < max && (p = strstr(p, "up: started ")) != NULL; p++) {
        const char *eq = strstr(p, " pid=");
        const char *eol = strchr(p, '\n');
        if (!eq || (eol && eq > eol))
            continue;
        pids[n++] = (pid_t)strtol(eq + 5, NULL, 10);
    }
    free(log);
    return n;
}

static bool s_pid_gone(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

typedef struct {
    fixture_t *f;
    const char *instance;
    pid_t old;
} restart_wait_t;

static bool s_restarted(void *arg)
{
    restart_wait_t *w = arg;
    pid_t now = s_agent_pid(w->f, w->instance);
    return now > 0 && now != w->old && kill(now, 0) == 0;
}

static redisReply *s_redis(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, cmd);
    assert_non_null(r);
    return r;
}

static void s_expect_config(redisContext *c, const char *name, const char *value)
{
    char *cmd = sn_strdupf("CONFIG GET %s", name);
    redisReply *r = s_redis(c, cmd);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    assert_string_equal(r->element[1]->str, value);
    freeReplyObject(r);
    free(cmd);
}

/* The redis-server's pid, from INFO server. */
static pid_t s_redis_pid(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO server");
    pid_t pid = 0;
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "process_id:") : NULL;
    if (p)
        pid = (pid_t)strtol(p + strlen("process_id:"), NULL, 10);
    if (r)
        freeReplyObject(r);
    return pid;
}

typedef struct {
    const char *sock;
    pid_t old;
} redis_wait_t;

static bool s_redis_restarted(void *arg)
{
    redis_wait_t *w = arg;
    struct timeval tv = {0, 200 * 1000};
    redisContext *c = redisConnectUnixWithTimeout(w->sock, tv);
    pid_t pid = c && !c->err ? s_redis_pid(c) : 0;
    bool is_loaded = false; /* PING answers LOADING until the AOF is read */
    if (pid > 0) {
        redisReply *r = redisCommand(c, "PING");
        is_loaded = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return pid > 0 && pid != w->old && is_loaded;
}

static void test_ctl_up_runs_supervises_and_stops(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, true,
                   "  - role: test-echo\n    instances: 2\n"
                   "  - role: test-slow\n"
                   "  - role: test-leader\n",
                   5000);
    s_start(f, NULL);
    s_wait_log(f, "ready:", 1, 20000);

    /* The embedded redis answers on its socket in the state dir, as configured. */
    char *sock = sn_strdupf("%s/redis.sock", f->state_dir);
    struct stat st;
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectUnixWithTimeout(sock, tv);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *r = s_redis(c, "PING");
    assert_string_equal(r->str, "PONG");
    freeReplyObject(r);
    s_expect_config(c, "appendonly", "yes");
    s_expect_config(c, "appendfsync", "always");
    s_expect_config(c, "maxmemory-policy", "noeviction");
    s_expect_config(c, "port", "0");
    char *data_dir = sn_strdupf("%s/redis", f->state_dir);
    char real[PATH_MAX];
    assert_non_null(realpath(data_dir, real));
    s_expect_config(c, "dir", real);
    free(data_dir);
    redisFree(c);

    /* Four agent processes with the documented arguments. */
    const char *instances[] = {"test-echo-1", "test-echo-2", "test-slow-1", "test-leader-1"};
    for (size_t i = 0; i < SN_ARRAY_LEN(instances); i++) {
        restart_wait_t w = {f, instances[i], 0};
        assert_true(sn_test_wait_for(s_restarted, &w, 10000));
    }
    char *args_path = sn_strdupf("%s/test-echo-2.args", f->dir);
    char *args = sn_test_read_file(args_path);
    assert_non_null(args);
    char *expect = sn_strdupf("test-echo --config %s --instance test-echo-2\n", f->config);
    assert_string_equal(args, expect);
    free(expect);
    free(args);
    free(args_path);

    /* A second supervisor on the same state dir is refused. */
    ctl_result_t second = ctl_run_env(f->dir, (const char *[]){"up", f->config, NULL},
                                      (const char *[]){f->agent_env, NULL}, 15000);
    assert_int_equal(second.status, 1);
    assert_non_null(strstr(second.err, "another sentinelctl up"));
    ctl_result_fini(&second);

    /* kill -9 a child: it is logged and restarted with a new pid. */
    pid_t victim = s_agent_pid(f, "test-slow-1");
    assert_int_equal(kill(victim, SIGKILL), 0);
    restart_wait_t w = {f, "test-slow-1", victim};
    assert_true(sn_test_wait_for(s_restarted, &w, 5000));
    s_wait_log(f, "killed by signal 9", 1, 5000);
    s_wait_log(f, "started agent/test-slow-1", 2, 5000);

    /* kill -9 the embedded redis: it is restarted on the same socket, with its data. */
    c = redisConnectUnixWithTimeout(sock, tv);
    assert_non_null(c);
    r = s_redis(c, "SET survivor yes");
    freeReplyObject(r);
    redis_wait_t rw = {sock, s_redis_pid(c)};
    redisFree(c);
    assert_true(rw.old > 0);
    assert_int_equal(kill(rw.old, SIGKILL), 0);
    assert_true(sn_test_wait_for(s_redis_restarted, &rw, 10000));
    c = redisConnectUnixWithTimeout(sock, tv);
    assert_non_null(c);
    r = s_redis(c, "GET survivor");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "yes"); /* AOF with appendfsync always kept it */
    freeReplyObject(r);
    redisFree(c);
    s_wait_log(f, "started redis", 2, 5000);

    /* SIGTERM: every child goes, agents before the broker before redis, exit 0. */
    pid_t pids[32];
    size_t n = s_started_pids(f, pids, SN_ARRAY_LEN(pids));
    assert_int_equal(n, 8); /* redis, broker, 4 agents, 2 restarts */
    int64_t t0 = sn_mono_ms();
    assert_int_equal(kill(f->pid, SIGTERM), 0);
    int status = ctl_wait(f->pid, 15000);
    f->pid = 0;
    assert_int_equal(status, 0);
    assert_true(sn_mono_ms() - t0 < 10000);
    for (size_t i = 0; i < n; i++)
        assert_true(s_pid_gone(pids[i]));
    char *log = sn_test_read_file(f->err_path);
    const char *agent_stop = strstr(log, "agent/test-echo-1 pid=");
    const char *last_agent = strstr(log, "got ");
    assert_non_null(last_agent);
    const char *broker_stop = strstr(last_agent, "broker pid=");
    const char *redis_stop = strstr(last_agent, "redis pid=");
    assert_non_null(agent_stop);
    assert_non_null(broker_stop);
    assert_non_null(redis_stop);
    assert_true(strstr(last_agent, "agent/test-echo-1 pid=") < broker_stop);
    assert_true(broker_stop < redis_stop);
    assert_non_null(strstr(log, "stopped"));
    assert_null(strstr(last_agent, "SIGKILL")); /* everything obeyed SIGTERM */
    free(log);
    /* Redis is gone: nothing answers on the socket. */
    c = redisConnectUnixWithTimeout(sock, tv);
    assert_true(!c || c->err);
    if (c)
        redisFree(c);
    free(sock);
}

static void test_ctl_up_kills_after_grace(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, false, "  - role: stubborn\n", 500);
    s_start(f, NULL);
    s_wait_log(f, "ready:", 1, 20000);
    restart_wait_t w = {f, "stubborn-1", 0};
    assert_true(sn_test_wait_for(s_restarted, &w, 10000));
    pid_t stubborn = s_agent_pid(f, "stubborn-1");
    int64_t t0 = sn_mono_ms();
    assert_int_equal(kill(f->pid, SIGINT), 0);
    int status = ctl_wait(f->pid, 15000);
    f->pid = 0;
    assert_int_equal(status, 0);
    int64_t took = sn_mono_ms() - t0;
    assert_true(took >= 400); /* waited for the grace period... */
    assert_true(took < 5000); /* ...and no longer */
    assert_true(s_pid_gone(stubborn));
    assert_true(sn_test_count_in_file(f->err_path, "stubborn-1 pid=") >= 1);
    assert_true(sn_test_count_in_file(f->err_path, "SIGKILL") >= 1);
}

typedef struct {
    pid_t pids[2];
} gone_wait_t;

static bool s_all_gone(void *arg)
{
    gone_wait_t *w = arg;
    return s_pid_gone(w->pids[0]) && s_pid_gone(w->pids[1]);
}

/* A supervisor killed with SIGKILL cannot stop its children: they get SIGTERM from the
 * kernel (parent-death signal) and go, so no unsupervised agent is left to clash with the
 * next `up`. */
static void test_ctl_up_killed_leaves_no_children(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, false, "  - role: test-echo\n    instances: 2\n", 500);
    s_start(f, NULL);
    s_wait_log(f, "ready:", 1, 20000);
    gone_wait_t w;
    for (int i = 0; i < 2; i++) {
        char instance[32];
        snprintf(instance, sizeof instance, "test-echo-%d", i + 1);
        restart_wait_t rw = {f, instance, 0};
        assert_true(sn_test_wait_for(s_restarted, &rw, 10000));
        w.pids[i] = s_agent_pid(f, instance);
    }
    assert_int_equal(kill(f->pid, SIGKILL), 0);
    ctl_wait(f->pid, 5000);
    f->pid = 0;
    assert_true(sn_test_wait_for(s_all_gone, &w, 5000));
}

static void test_ctl_up_missing_binaries_fail(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, true, "  - role: test-echo\n", 1000);

    ctl_result_t r = ctl_run_env(
        f->dir, (const char *[]){"up", f->config, NULL},
        (const char *[]){f->agent_env, "SENTINEL_REDIS_SERVER=/nonexistent/redis-server", NULL},
        15000);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "redis-server not found"));
    assert_null(strstr(r.err, "started"));
    ctl_result_fini(&r);

    char *bin_dir = sn_strdupf("SENTINEL_BIN_DIR=%s", f->dir); /* no broker there */
    r = ctl_run_env(f->dir, (const char *[]){"up", f->config, NULL},
                    (const char *[]){f->agent_env, bin_dir, NULL}, 15000);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "sentinel-broker not found"));
    assert_null(strstr(r.err, "started"));
    ctl_result_fini(&r);
    free(bin_dir);

    r = ctl_run_env(f->dir, (const char *[]){"up", f->config, NULL},
                    (const char *[]){"SENTINEL_AGENT_BIN=/nonexistent/agent", NULL}, 15000);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "sentinel-agent not found"));
    ctl_result_fini(&r);

    char *missing = sn_strdupf("%s/missing.yml", f->dir);
    r = ctl_run(f->dir, (const char *[]){"up", missing, NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, missing));
    ctl_result_fini(&r);
    free(missing);
}

/* A broker that exits at once: up fails (exit 1) and stops the redis it started. */
static void test_ctl_up_broker_dying_at_start_fails_cleanly(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, true, "  - role: test-echo\n", 1000);
    char *broker = sn_strdupf("%s/broker.sh", f->dir);
    ctl_write_file(broker, "#!/bin/sh\necho 'stand-in broker: failing' >&2\nexit 3\n", true);
    char *env = sn_strdupf("SENTINEL_BROKER_BIN=%s", broker);
    ctl_result_t r = ctl_run_env(f->dir, (const char *[]){"up", f->config, NULL},
                                 (const char *[]){f->agent_env, env, NULL}, 20000);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "broker exited while starting"));
    assert_null(strstr(r.err, "ready:"));
    assert_null(strstr(r.err, "started agent"));
    /* The redis it started is gone. */
    const char *p = strstr(r.err, "started redis pid=");
    assert_non_null(p);
    pid_t redis_pid = (pid_t)strtol(p + strlen("started redis pid="), NULL, 10);
    assert_true(redis_pid > 0);
    assert_true(s_pid_gone(redis_pid));
    ctl_result_fini(&r);
    free(env);
    free(broker);
}

typedef struct {
    fixture_t *f;
    pid_t not_pid; /* wait for test-slow-1 with a pid other than this (0: any) */
    json_t *doc;   /* the last status document */
} mesh_wait_t;

/* `status -o json` answers with all four test agents registered (and test-slow-1 with
 * a pid other than not_pid) and test.echo served by two workers. */
static bool s_mesh_ready(void *arg)
{
    mesh_wait_t *w = arg;
    ctl_result_t r = ctl_run(w->f->dir, (const char *[]){"-c", w->f->config, "-o", "json", "status",
                                                         "--timeout", "500", NULL});
    json_decref(w->doc);
    w->doc = r.status == 0 ? json_loads(r.out, 0, NULL) : NULL;
    ctl_result_fini(&r);
    if (!w->doc)
        return false;
    json_t *agents = json_object_get(w->doc, "agents");
    size_t live = 0;
    bool slow_ok = false;
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *a = json_array_get(agents, i);
        pid_t pid = (pid_t)json_integer_value(json_object_get(a, "pid"));
        if (pid <= 0 || kill(pid, 0) != 0)
            continue;
        live++;
        if (strcmp(json_string_value(json_object_get(a, "instance")), "test-slow-1") == 0)
            slow_ok = pid != w->not_pid;
    }
    json_t *services = json_object_get(w->doc, "services");
    bool echo_ok = false;
    for (size_t i = 0; i < json_array_size(services); i++) {
        json_t *s = json_array_get(services, i);
        if (strcmp(json_string_value(json_object_get(s, "name")), "test.echo") == 0)
            echo_ok = json_integer_value(json_object_get(s, "workers")) == 2;
    }
    return live == 4 && slow_ok && echo_ok;
}

static pid_t s_status_pid(json_t *doc, const char *instance)
{
    json_t *agents = json_object_get(doc, "agents");
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *a = json_array_get(agents, i);
        if (strcmp(json_string_value(json_object_get(a, "instance")), instance) == 0)
            return (pid_t)json_integer_value(json_object_get(a, "pid"));
    }
    return 0;
}

/* The whole mesh for real: embedded redis, the broker and the test agent binary; status
 * sees the agents and services, call reaches test.echo, a killed agent comes back. */
static void test_ctl_up_with_test_agents(void **state)
{
    fixture_t *f = *state;
    s_write_config(f, true,
                   "  - role: test-echo\n    instances: 2\n"
                   "  - role: test-slow\n"
                   "  - role: test-leader\n",
                   5000);
    free(f->agent_env);
    f->agent_env = sn_strdupf("SENTINEL_AGENT_BIN=%s/sentinel-test-agent", SN_TEST_BIN_DIR);
    s_start(f, NULL);
    s_wait_log(f, "ready:", 1, 20000);
    mesh_wait_t w = {f, 0, NULL};
    assert_true(sn_test_wait_for(s_mesh_ready, &w, 20000));
    pid_t slow = s_status_pid(w.doc, "test-slow-1");
    assert_true(slow > 0);

    ctl_result_t r =
        ctl_run(f->dir, (const char *[]){"-c", f->config, "-o", "json", "call", "test.echo",
                                         "--data", "{\"note\":{\"text\":\"hi\"}}", NULL});
    assert_int_equal(r.status, 0);
    json_t *reply = json_loads(r.out, 0, NULL);
    assert_non_null(reply);
    assert_string_equal(json_string_value(json_object_get(reply, "type")), "test.echoed");
    json_t *note = json_object_get(reply, "note");
    assert_string_equal(json_string_value(json_object_get(note, "text")), "hi");
    const char *who =
        json_string_value(json_object_get(json_object_get(note, "attrs"), "instance"));
    assert_non_null(who);
    assert_true(strncmp(who, "test-echo-", 10) == 0);
    json_decref(reply);
    ctl_result_fini(&r);

    /* kill -9 an agent: the supervisor restarts it and it registers again. */
    assert_int_equal(kill(slow, SIGKILL), 0);
    w.not_pid = slow;
    assert_true(sn_test_wait_for(s_mesh_ready, &w, 20000));
    json_decref(w.doc);

    pid_t pids[32];
    size_t n = s_started_pids(f, pids, SN_ARRAY_LEN(pids));
    assert_int_equal(n, 7);
    assert_int_equal(kill(f->pid, SIGTERM), 0);
    assert_int_equal(ctl_wait(f->pid, 20000), 0);
    f->pid = 0;
    for (size_t i = 0; i < n; i++)
        assert_true(s_pid_gone(pids[i]));
    /* The agents stopped by themselves on SIGTERM: no SIGKILL was needed. */
    assert_int_equal(sn_test_count_in_file(f->err_path, "SIGKILL"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ctl_up_runs_supervises_and_stops, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_up_kills_after_grace, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_up_killed_leaves_no_children, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_up_missing_binaries_fail, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_up_broker_dying_at_start_fails_cleanly, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_ctl_up_with_test_agents, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
