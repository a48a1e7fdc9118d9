/* Test support helpers. */
#include "sn_test.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SN_TEST_BIN_DIR
#define SN_TEST_BIN_DIR "."
#endif

char *sn_test_tmpdir(const char *tag)
{
    char *path = sn_strdupf("/tmp/sn-%s-XXXXXX", tag ? tag : "test");
    SN_ASSERT(mkdtemp(path) != NULL);
    return path;
}

void sn_test_rmdir(const char *path)
{
    if (!path || strncmp(path, "/tmp/sn-", 8) != 0)
        return;
    char *cmd = sn_strdupf("rm -rf '%s'", path);
    int rc = system(cmd);
    (void)rc;
    free(cmd);
}

int sn_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    SN_ASSERT(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SN_ASSERT(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    SN_ASSERT(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

char *sn_test_namespace(const char *tag)
{
    static int n;
    return sn_strdupf("t%d-%d-%s:", (int)getpid(), ++n, tag ? tag : "x");
}

static bool s_redis_ping(void *arg)
{
    sn_test_redis_t *self = arg;
    char *out = sn_test_redis_cli(self, "PING");
    bool ok = out && strcmp(out, "PONG") == 0;
    free(out);
    return ok;
}

static bool s_redis_launch(sn_test_redis_t *self)
{
    char *port = sn_strdupf("%d", self->port);
    char *log = sn_strdupf("%s/redis.log", self->dir);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--unixsocket",
                    self->unix_path,
                    "--unixsocketperm",
                    "700",
                    "--dir",
                    self->dir,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                    NULL};
    self->pid = sn_test_spawn(argv, log);
    bool ok = self->pid > 0 && sn_test_wait_for(s_redis_ping, self, 5000);
    free(port);
    free(log);
    return ok;
}

bool sn_test_redis_start(sn_test_redis_t *self)
{
    memset(self, 0, sizeof *self);
    self->dir = sn_test_tmpdir("redis");
    self->unix_path = sn_strdupf("%s/redis.sock", self->dir);
    self->port = sn_test_free_port();
    return s_redis_launch(self);
}

void sn_test_redis_stop(sn_test_redis_t *self)
{
    if (self->pid > 0)
        sn_test_stop(self->pid, SIGTERM, 5000);
    self->pid = 0;
}

bool sn_test_redis_restart(sn_test_redis_t *self)
{
    sn_test_redis_stop(self);
    return s_redis_launch(self);
}

void sn_test_redis_destroy(sn_test_redis_t *self)
{
    sn_test_redis_stop(self);
    sn_test_rmdir(self->dir);
    free(self->dir);
    free(self->unix_path);
    memset(self, 0, sizeof *self);
}

char *sn_test_redis_cli(sn_test_redis_t *self, const char *args)
{
    char *cmd = sn_strdupf("redis-cli -s '%s' %s 2>/dev/null", self->unix_path, args);
    FILE *p = popen(cmd, "r");
    free(cmd);
    if (!p)
        return NULL;
    size_t cap = 4096, len = 0;
    char *out = sn_malloc(cap);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2)
            out = sn_realloc(out, cap *= 2);
    }
    out[len] = '\0';
    pclose(p);
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == ' '))
        out[--len] = '\0';
    return out;
}

pid_t sn_test_spawn(char *const argv[], const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        /* A test that fails (cmocka jumps out of it) or dies leaves no process behind:
         * they get SIGTERM when the test binary exits. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        if (log_path) {
            int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int sn_test_stop(pid_t pid, int sig, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    int64_t deadline = sn_mono_ms() + timeout_ms;
    int status = 0;
    while (sn_mono_ms() < deadline) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

bool sn_test_alive(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid)
        return false;
    return kill(pid, 0) == 0;
}

bool sn_test_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (sn_mono_ms() >= deadline)
            return false;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

char *sn_test_bin(const char *name)
{
    return sn_strdupf("%s/%s", SN_TEST_BIN_DIR, name);
}

char *sn_test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = sn_malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2)
            buf = sn_realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

int sn_test_count_in_file(const char *path, const char *needle)
{
    char *text = sn_test_read_file(path);
    if (!text)
        return 0;
    int count = 0;
    size_t nlen = strlen(needle);
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += nlen)
        count++;
    free(text);
    return count;
}

static void *s_proxy_run(void *arg)
{
    sn_test_proxy_t *self = arg;
    zmq_proxy_steerable(zsock_resolve(self->xsub), zsock_resolve(self->xpub), NULL,
                        zsock_resolve(self->ctl_in));
    return NULL;
}

bool sn_test_proxy_start(sn_test_proxy_t *self)
{
    static int n;
    memset(self, 0, sizeof *self);
    zsock_t *xsub = zsock_new(ZMQ_XSUB), *xpub = zsock_new(ZMQ_XPUB);
    zsock_t *ctl_in = zsock_new(ZMQ_PAIR), *ctl_out = zsock_new(ZMQ_PAIR);
    self->xsub = xsub;
    self->xpub = xpub;
    self->ctl_in = ctl_in;
    self->ctl_out = ctl_out;
    int pub_port = zsock_bind(xsub, "tcp://127.0.0.1:*");
    int sub_port = zsock_bind(xpub, "tcp://127.0.0.1:*");
    if (pub_port <= 0 || sub_port <= 0)
        goto fail;
    snprintf(self->pub_ep, sizeof self->pub_ep, "tcp://127.0.0.1:%d", pub_port);
    snprintf(self->sub_ep, sizeof self->sub_ep, "tcp://127.0.0.1:%d", sub_port);
    uint8_t all = 1; /* subscribe upstream to everything, as the broker does */
    if (zmq_send(zsock_resolve(xsub), &all, 1, 0) != 1)
        goto fail;
    char ctl[64];
    snprintf(ctl, sizeof ctl, "inproc://sn-test-proxy-%d-%d", (int)getpid(), n++);
    if (zsock_bind(ctl_in, "%s", ctl) != 0 || zsock_connect(ctl_out, "%s", ctl) != 0)
        goto fail;
    if (pthread_create(&self->thread, NULL, s_proxy_run, self) != 0)
        goto fail;
    return true;
fail:
    zsock_destroy(&xsub);
    zsock_destroy(&xpub);
    zsock_destroy(&ctl_in);
    zsock_destroy(&ctl_out);
    memset(self, 0, sizeof *self);
    return false;
}

void sn_test_proxy_stop(sn_test_proxy_t *self)
{
    zstr_send(self->ctl_out, "TERMINATE");
    pthread_join(self->thread, NULL);
    zsock_t *socks[] = {self->xsub, self->xpub, self->ctl_in, self->ctl_out};
    for (size_t i = 0; i < SN_ARRAY_LEN(socks); i++)
        zsock_destroy(&socks[i]);
    memset(self, 0, sizeof *self);
}
