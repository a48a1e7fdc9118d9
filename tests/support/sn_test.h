/* Test support: temporary directories, a private redis-server, child processes,
 * free ports, and waiting for a condition with a deadline (never a fixed sleep). */
#ifndef SN_TEST_H
#define SN_TEST_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <cmocka.h>

#include "sentinel/sn_common.h"

/* A fresh directory under /tmp (caller frees the string; removed by sn_test_rmdir). */
char *sn_test_tmpdir(const char *tag);
void sn_test_rmdir(const char *path);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int sn_test_free_port(void);

/* A unique key namespace for this test ("t<pid>-<n>-<tag>:"); caller frees. */
char *sn_test_namespace(const char *tag);

/* A redis-server of the test's own: unix socket and TCP port in a temp dir, AOF on. */
typedef struct {
    char *dir;
    char *unix_path;
    int port;
    pid_t pid;
} sn_test_redis_t;

/* Starts it and waits until it answers PING (5 s deadline); false on failure. */
bool sn_test_redis_start(sn_test_redis_t *self);
/* SIGTERM, wait, keep the directory (so a restart finds its AOF). */
void sn_test_redis_stop(sn_test_redis_t *self);
/* Start again on the same socket, port and data directory. */
bool sn_test_redis_restart(sn_test_redis_t *self);
/* Stops if running and removes the directory. */
void sn_test_redis_destroy(sn_test_redis_t *self);
/* Runs one command through redis-cli -s and returns its trimmed output (caller frees). */
char *sn_test_redis_cli(sn_test_redis_t *self, const char *args);

/* A bare event forwarder like the broker's relay: XSUB (bound, subscribed upstream to
 * everything) for publishers at pub_ep, XPUB for subscribers at sub_ep, both on
 * tcp://127.0.0.1:*, zmq_proxy_steerable on a thread of its own. */
typedef struct {
    void *xsub, *xpub, *ctl_in, *ctl_out; /* zsock_t *; ctl_in is the proxy's end */
    pthread_t thread;
    char pub_ep[64];
    char sub_ep[64];
} sn_test_proxy_t;

/* Binds and starts it (running when this returns); false on failure. */
bool sn_test_proxy_start(sn_test_proxy_t *self);
/* Stops the thread (TERMINATE) and closes the sockets. */
void sn_test_proxy_stop(sn_test_proxy_t *self);

/* A child process: argv[0] is a path; stdout and stderr go to @log_path (appended) if
 * not NULL. Returns the pid or -1. */
pid_t sn_test_spawn(char *const argv[], const char *log_path);
/* Sends @sig and waits up to @timeout_ms for the exit; returns the exit status as
 * waitpid gives it, or -1 on timeout (the child is then killed with SIGKILL). */
int sn_test_stop(pid_t pid, int sig, int timeout_ms);
/* True if the process exists (and is not a zombie of ours). */
bool sn_test_alive(pid_t pid);

/* Polls @cond(arg) every few ms until true or @timeout_ms passes. */
bool sn_test_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms);

/* Path of a built binary ("sentinel-broker", ...) in the build's bin dir; caller frees. */
char *sn_test_bin(const char *name);

/* Reads a whole file (caller frees) or NULL. */
char *sn_test_read_file(const char *path);
/* Counts non-overlapping occurrences of @needle in file @path (0 if unreadable). */
int sn_test_count_in_file(const char *path, const char *needle);

#endif
