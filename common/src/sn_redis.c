/* Redis access with hard deadlines: synchronous hiredis contexts with connect and I/O
 * timeouts, owned by one thread per channel, reached from any thread over inproc.
 *
 * Why this shape: a caller (the agent loop, a job thread) must never wait longer than
 * its deadline, whatever Redis does. A stuck hiredis read would block its thread, so the
 * caller never does the I/O itself: it sends the command to the channel's thread over an
 * inproc DEALER taken from a small pool and polls for the answer until its deadline. A
 * late answer stays on that DEALER and is recognised as stale (sequence number) and
 * freed by the next user of the socket. The reply object crosses threads as a pointer in
 * the message; every path that drops such a message frees it. Sockets move between
 * threads only through the pool's mutex (a full barrier, as libzmq requires). */
#include "sentinel/sn_redis.h"

#include <czmq.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_log.h"

#define S_DEFAULT_NS "sentinel:"
#define S_DEFAULT_TIMEOUT_MS 1000
#define S_BACKOFF_BASE_MS 50
#define S_BACKOFF_CAP_MS 1000
#define S_IDLE_POLL_MS 1000
#define S_MAX_ARGS 100000

typedef struct {
    char *name;
    char *body;
    char *code; /* "#!lua name=<name>\n" + body */
    bool loaded;
    bool logged_bad;
} s_lib_t;

typedef enum { S_STATE_NEW = 0, S_STATE_UP, S_STATE_DOWN } s_state_t;

struct sn_redis_conn {
    char *unix_path;
    char *host;
    int port;
    char *ns;
    char *name;
    int timeout_ms;
    redisContext *ctx;
    sn_backoff_t backoff;
    int64_t retry_at_ms;
    s_state_t state;
    bool was_up; /* was up at least once: the next up is a reconnect */
    uint64_t reconnects;
    s_lib_t *libs;
    size_t lib_count;
};

typedef struct {
    sn_redis_t *owner;
    sn_redis_chan_t chan;
    char *endpoint;
    zactor_t *actor;
    pthread_mutex_t pool_mutex;
    zsock_t **pool;
    size_t pool_len;
    size_t pool_cap;
} s_chan_t;

struct sn_redis {
    sn_redis_opts_t opts; /* strings below are our copies */
    char *unix_path;
    char *host;
    char *ns;
    s_chan_t chans[SN_REDIS_CHANNELS];
    pthread_mutex_t lib_mutex;
    s_lib_t *libs;
    size_t lib_count;
    uint64_t lib_gen;       /* atomic: bumped on every library change */
    uint64_t seq;           /* atomic: request sequence numbers */
    bool main_up;           /* atomic */
    sn_redis_stats_t stats; /* atomic fields */
};

static const char *s_chan_name[SN_REDIS_CHANNELS] = {"main", "lease"};

static void s_libs_set(s_lib_t **libs, size_t *count, const char *name, const char *lua,
                       bool *changed);
static void s_libs_free(s_lib_t *libs, size_t count);
static void s_actor(zsock_t *pipe, void *arg);
static zsock_t *s_pool_get(s_chan_t *ch);
static void s_pool_put(s_chan_t *ch, zsock_t *sock);
static void s_drain(zsock_t *sock);
static sn_rc_t s_conn_run(sn_redis_conn_t *self, int64_t deadline, redisReply **reply, int argc,
                          const char **argv, const size_t *argvlen);
static bool s_opts_ok(const sn_redis_opts_t *opts);

/* ---- sn_redis ------------------------------------------------------------------------ */

sn_redis_t *sn_redis_new(const sn_redis_opts_t *opts)
{
    SN_ASSERT(opts);
    if (!s_opts_ok(opts))
        return NULL;
    /* czmq's lazy init is not safe against two threads racing to create sockets. */
    zsys_init();
    sn_redis_t *self = sn_calloc(1, sizeof *self);
    self->unix_path = opts->unix_path ? sn_strdup(opts->unix_path) : NULL;
    self->host = opts->host ? sn_strdup(opts->host) : NULL;
    self->ns = sn_strdup(opts->namespace_ ? opts->namespace_ : S_DEFAULT_NS);
    self->opts.unix_path = self->unix_path;
    self->opts.host = self->host;
    self->opts.port = opts->port;
    self->opts.namespace_ = self->ns;
    self->opts.timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : S_DEFAULT_TIMEOUT_MS;
    pthread_mutex_init(&self->lib_mutex, NULL);
    for (int i = 0; i < SN_REDIS_CHANNELS; i++) {
        s_chan_t *ch = &self->chans[i];
        ch->owner = self;
        ch->chan = (sn_redis_chan_t)i;
        ch->endpoint = sn_strdupf("inproc://sn-redis-%p-%s", (void *)self, s_chan_name[i]);
        pthread_mutex_init(&ch->pool_mutex, NULL);
        ch->actor = zactor_new(s_actor, ch);
        SN_ASSERT(ch->actor);
    }
    return self;
}

void sn_redis_destroy(sn_redis_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_redis_t *self = *self_p;
    for (int i = 0; i < SN_REDIS_CHANNELS; i++)
        zactor_destroy(&self->chans[i].actor);
    for (int i = 0; i < SN_REDIS_CHANNELS; i++) {
        s_chan_t *ch = &self->chans[i];
        for (size_t k = 0; k < ch->pool_len; k++) {
            s_drain(ch->pool[k]);
            zsock_destroy(&ch->pool[k]);
        }
        free(ch->pool);
        free(ch->endpoint);
        pthread_mutex_destroy(&ch->pool_mutex);
    }
    s_libs_free(self->libs, self->lib_count);
    pthread_mutex_destroy(&self->lib_mutex);
    free(self->unix_path);
    free(self->host);
    free(self->ns);
    free(self);
    *self_p = NULL;
}

const char *sn_redis_ns(sn_redis_t *self)
{
    SN_ASSERT(self);
    return self->ns;
}

void sn_redis_add_library(sn_redis_t *self, const char *name, const char *lua)
{
    SN_ASSERT(self && name && *name && lua);
    bool changed = false;
    pthread_mutex_lock(&self->lib_mutex);
    s_libs_set(&self->libs, &self->lib_count, name, lua, &changed);
    if (changed)
        __atomic_add_fetch(&self->lib_gen, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&self->lib_mutex);
}

sn_rc_t sn_redis_cmd(sn_redis_t *self, sn_redis_chan_t chan, int timeout_ms, redisReply **reply,
                     int argc, const char **argv, const size_t *argvlen)
{
    SN_ASSERT(self && reply);
    *reply = NULL;
    if ((int)chan < 0 || (int)chan >= SN_REDIS_CHANNELS || argc <= 0 || argc > S_MAX_ARGS || !argv)
        return SN_ERROR;
    for (int i = 0; i < argc; i++)
        if (!argv[i])
            return SN_ERROR;
    if (timeout_ms <= 0)
        timeout_ms = self->opts.timeout_ms;
    __atomic_add_fetch(&self->stats.calls, 1, __ATOMIC_RELAXED);
    int64_t deadline = sn_mono_ms() + timeout_ms;
    uint64_t seq = __atomic_add_fetch(&self->seq, 1, __ATOMIC_RELAXED);
    s_chan_t *ch = &self->chans[chan];
    zsock_t *sock = s_pool_get(ch);
    void *handle = zsock_resolve(sock);
    sn_rc_t rc = SN_AGAIN;
    bool timed_out = false;

    /* Frames: [seq][deadline][arg]...; DONTWAIT: a full queue is a stuck thread. */
    if (zmq_send(handle, &seq, sizeof seq, ZMQ_SNDMORE | ZMQ_DONTWAIT) != (int)sizeof seq) {
        timed_out = true;
        goto out;
    }
    zmq_send(handle, &deadline, sizeof deadline, ZMQ_SNDMORE);
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        zmq_send(handle, argv[i], len, i + 1 < argc ? ZMQ_SNDMORE : 0);
    }
    for (;;) {
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        zmq_pollitem_t item = {handle, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, (long)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            timed_out = n == 0;
            break;
        }
        zmsg_t *msg = zmsg_recv(sock);
        if (!msg)
            continue;
        zframe_t *fseq = zmsg_first(msg);
        zframe_t *frc = zmsg_next(msg);
        zframe_t *fptr = zmsg_next(msg);
        SN_ASSERT(fseq && frc && fptr && zframe_size(fseq) == sizeof seq &&
                  zframe_size(frc) == sizeof(int32_t) && zframe_size(fptr) == sizeof(void *));
        uint64_t got_seq;
        int32_t got_rc;
        redisReply *got_reply;
        memcpy(&got_seq, zframe_data(fseq), sizeof got_seq);
        memcpy(&got_rc, zframe_data(frc), sizeof got_rc);
        memcpy(&got_reply, zframe_data(fptr), sizeof got_reply);
        zmsg_destroy(&msg);
        if (got_seq != seq) { /* a late answer to an earlier caller of this socket */
            if (got_reply)
                freeReplyObject(got_reply);
            continue;
        }
        rc = (sn_rc_t)got_rc;
        *reply = got_reply;
        break;
    }
out:
    s_pool_put(ch, sock);
    if (timed_out)
        __atomic_add_fetch(&self->stats.timeouts, 1, __ATOMIC_RELAXED);
    if (rc == SN_AGAIN)
        __atomic_add_fetch(&self->stats.again, 1, __ATOMIC_RELAXED);
    return rc;
}

sn_rc_t sn_redis_fcall(sn_redis_t *self, sn_redis_chan_t chan, int timeout_ms, redisReply **reply,
                       const char *fn, int nkeys, const char **keys, int nargs, const char **args,
                       const size_t *arglens)
{
    SN_ASSERT(self && reply);
    *reply = NULL;
    if (!fn || nkeys < 0 || nargs < 0 || nkeys + nargs > S_MAX_ARGS || (nkeys && !keys) ||
        (nargs && !args))
        return SN_ERROR;
    for (int i = 0; i < nkeys; i++)
        if (!keys[i])
            return SN_ERROR;
    int argc = 3 + nkeys + nargs;
    const char **argv = sn_calloc((size_t)argc, sizeof *argv);
    size_t *lens = sn_calloc((size_t)argc, sizeof *lens);
    char **owned = sn_calloc((size_t)nkeys + 1, sizeof *owned);
    char nk[16];
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[0] = "FCALL";
    argv[1] = fn;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++) {
        owned[i] = sn_strdupf("%s%s", self->ns, keys[i]);
        argv[3 + i] = owned[i];
    }
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (int i = 0; i < argc; i++) {
        int a = i - 3 - nkeys;
        if (a >= 0 && !args[a]) {
            free(argv);
            free(lens);
            for (int k = 0; k < nkeys; k++)
                free(owned[k]);
            free(owned);
            return SN_ERROR;
        }
        lens[i] = (a >= 0 && arglens) ? arglens[a] : strlen(argv[i]);
    }
    sn_rc_t rc = sn_redis_cmd(self, chan, timeout_ms, reply, argc, argv, lens);
    for (int i = 0; i < nkeys; i++)
        free(owned[i]);
    free(owned);
    free(argv);
    free(lens);
    return rc;
}

bool sn_redis_is_up(sn_redis_t *self)
{
    SN_ASSERT(self);
    return __atomic_load_n(&self->main_up, __ATOMIC_SEQ_CST);
}

void sn_redis_stats(sn_redis_t *self, sn_redis_stats_t *out)
{
    SN_ASSERT(self && out);
    out->calls = __atomic_load_n(&self->stats.calls, __ATOMIC_RELAXED);
    out->again = __atomic_load_n(&self->stats.again, __ATOMIC_RELAXED);
    out->timeouts = __atomic_load_n(&self->stats.timeouts, __ATOMIC_RELAXED);
    out->reconnects = __atomic_load_n(&self->stats.reconnects, __ATOMIC_RELAXED);
}

bool sn_redis_reply_is_transient(const redisReply *reply)
{
    static const char *prefixes[] = {"LOADING", "BUSY",     "TRYAGAIN", "MASTERDOWN",
                                     "MISCONF", "READONLY", "OOM"};
    if (!reply || reply->type != REDIS_REPLY_ERROR || !reply->str)
        return false;
    for (size_t i = 0; i < SN_ARRAY_LEN(prefixes); i++) {
        size_t n = strlen(prefixes[i]);
        if (reply->len >= n && strncmp(reply->str, prefixes[i], n) == 0 &&
            (reply->len == n || reply->str[n] == ' '))
            return true;
    }
    return false;
}

/* ---- sn_redis_conn ------------------------------------------------------------------- */

sn_redis_conn_t *sn_redis_conn_new(const sn_redis_opts_t *opts)
{
    SN_ASSERT(opts);
    if (!s_opts_ok(opts))
        return NULL;
    sn_redis_conn_t *self = sn_calloc(1, sizeof *self);
    self->unix_path = opts->unix_path ? sn_strdup(opts->unix_path) : NULL;
    self->host = opts->host ? sn_strdup(opts->host) : NULL;
    self->port = opts->port;
    self->ns = sn_strdup(opts->namespace_ ? opts->namespace_ : S_DEFAULT_NS);
    self->name = sn_strdup(opts->name ? opts->name : "conn");
    self->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : S_DEFAULT_TIMEOUT_MS;
    sn_backoff_init(&self->backoff, S_BACKOFF_BASE_MS, S_BACKOFF_CAP_MS);
    return self;
}

void sn_redis_conn_destroy(sn_redis_conn_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sn_redis_conn_t *self = *self_p;
    if (self->ctx)
        redisFree(self->ctx);
    s_libs_free(self->libs, self->lib_count);
    free(self->unix_path);
    free(self->host);
    free(self->ns);
    free(self->name);
    free(self);
    *self_p = NULL;
}

void sn_redis_conn_add_library(sn_redis_conn_t *self, const char *name, const char *lua)
{
    SN_ASSERT(self && name && *name && lua);
    bool changed = false;
    s_libs_set(&self->libs, &self->lib_count, name, lua, &changed);
}

/* SIGPIPE: hiredis writes with write(2), so a peer that closed would kill the process.
 * The signal is blocked around the I/O and, if it fired, consumed; the write then
 * fails with EPIPE, which hiredis reports as a connection error. */
typedef struct {
    sigset_t old;
    bool was_pending;
} s_sigpipe_t;

static void s_sigpipe_enter(s_sigpipe_t *s)
{
    sigset_t set, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &s->old);
    sigpending(&pend);
    s->was_pending = sigismember(&pend, SIGPIPE) == 1;
}

static void s_sigpipe_leave(s_sigpipe_t *s)
{
    sigset_t set, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pend);
    if (!s->was_pending && sigismember(&pend, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &s->old, NULL);
}

sn_rc_t sn_redis_conn_cmd(sn_redis_conn_t *self, int timeout_ms, redisReply **reply, int argc,
                          const char **argv, const size_t *argvlen)
{
    SN_ASSERT(self && reply);
    *reply = NULL;
    if (argc <= 0 || argc > S_MAX_ARGS || !argv)
        return SN_ERROR;
    for (int i = 0; i < argc; i++)
        if (!argv[i])
            return SN_ERROR;
    if (timeout_ms <= 0)
        timeout_ms = self->timeout_ms;
    s_sigpipe_t sp;
    s_sigpipe_enter(&sp);
    sn_rc_t rc = s_conn_run(self, sn_mono_ms() + timeout_ms, reply, argc, argv, argvlen);
    s_sigpipe_leave(&sp);
    return rc;
}

static sn_rc_t s_conn_connect(sn_redis_conn_t *self, int64_t deadline);

sn_rc_t sn_redis_conn_connect(sn_redis_conn_t *self, int timeout_ms)
{
    SN_ASSERT(self);
    if (timeout_ms <= 0)
        timeout_ms = self->timeout_ms;
    return s_conn_connect(self, sn_mono_ms() + timeout_ms);
}

bool sn_redis_conn_is_up(sn_redis_conn_t *self)
{
    SN_ASSERT(self);
    return self->ctx != NULL && self->state == S_STATE_UP;
}

int64_t sn_redis_conn_retry_at_ms(sn_redis_conn_t *self)
{
    SN_ASSERT(self);
    return self->ctx ? 0 : self->retry_at_ms;
}

const char *sn_redis_conn_ns(sn_redis_conn_t *self)
{
    SN_ASSERT(self);
    return self->ns;
}

uint64_t sn_redis_conn_reconnects(sn_redis_conn_t *self)
{
    SN_ASSERT(self);
    return self->reconnects;
}

/* ---- statics ------------------------------------------------------------------------- */

static bool s_opts_ok(const sn_redis_opts_t *opts)
{
    if (opts->unix_path && *opts->unix_path)
        return true;
    return opts->host && *opts->host && opts->port > 0 && opts->port < 65536;
}

static const char *s_where(sn_redis_conn_t *self, char *buf, size_t len)
{
    if (self->unix_path)
        snprintf(buf, len, "unix:%s", self->unix_path);
    else
        snprintf(buf, len, "%s:%d", self->host, self->port);
    return buf;
}

/* The context failed (or could not be made): discard it, schedule the next attempt and
 * log only if this changes the state. */
static void s_conn_down(sn_redis_conn_t *self, const char *why_in)
{
    char why[128]; /* @why_in may live in the context freed below */
    snprintf(why, sizeof why, "%s", why_in && *why_in ? why_in : "unknown error");
    if (self->ctx) {
        redisFree(self->ctx);
        self->ctx = NULL;
    }
    self->retry_at_ms = sn_mono_ms() + sn_backoff_next(&self->backoff);
    if (self->state != S_STATE_DOWN) {
        char where[300];
        sn_warn("redis", "%s: %s %s: %s", self->name,
                self->state == S_STATE_UP ? "lost connection to" : "cannot reach",
                s_where(self, where, sizeof where), why);
    }
    self->state = S_STATE_DOWN;
}

/* A command got an answer on the current context: the connection is proven. */
static void s_conn_up(sn_redis_conn_t *self)
{
    if (self->state == S_STATE_UP)
        return;
    char where[300];
    sn_info("redis", "%s: connected to %s", self->name, s_where(self, where, sizeof where));
    if (self->was_up)
        self->reconnects++;
    self->was_up = true;
    self->state = S_STATE_UP;
    sn_backoff_reset(&self->backoff);
}

static struct timeval s_tv(int64_t ms)
{
    if (ms < 1)
        ms = 1;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static sn_rc_t s_conn_connect(sn_redis_conn_t *self, int64_t deadline)
{
    if (self->ctx)
        return SN_OK;
    int64_t now = sn_mono_ms();
    if (now < self->retry_at_ms || now >= deadline)
        return SN_AGAIN;
    int64_t t = deadline - now;
    if (t > self->timeout_ms)
        t = self->timeout_ms;
    struct timeval tv = s_tv(t);
    redisContext *c = self->unix_path ? redisConnectUnixWithTimeout(self->unix_path, tv)
                                      : redisConnectWithTimeout(self->host, self->port, tv);
    if (!c || c->err) {
        s_conn_down(self, c ? c->errstr : "cannot allocate context");
        if (c)
            redisFree(c);
        return SN_AGAIN;
    }
    self->ctx = c;
    for (size_t i = 0; i < self->lib_count; i++)
        self->libs[i].loaded = false;
    return SN_OK;
}

/* One command on the live context within @deadline; NULL on failure (context dropped,
 * or nothing sent because the deadline had passed). */
static redisReply *s_conn_exec(sn_redis_conn_t *self, int64_t deadline, int argc, const char **argv,
                               const size_t *argvlen)
{
    int64_t left = deadline - sn_mono_ms();
    if (left <= 0)
        return NULL;
    if (redisSetTimeout(self->ctx, s_tv(left)) != REDIS_OK) {
        s_conn_down(self, self->ctx->errstr);
        return NULL;
    }
    redisReply *r = redisCommandArgv(self->ctx, argc, argv, argvlen);
    if (!r) {
        /* hiredis reports an I/O timeout as EAGAIN's text: say what it means. */
        const char *why = self->ctx->errstr;
        if (self->ctx->err == REDIS_ERR_IO && strstr(why, "temporarily unavailable"))
            why = "timed out";
        s_conn_down(self, why);
        return NULL;
    }
    s_conn_up(self);
    return r;
}

static sn_rc_t s_conn_load_libs(sn_redis_conn_t *self, int64_t deadline)
{
    for (size_t i = 0; i < self->lib_count; i++) {
        s_lib_t *lib = &self->libs[i];
        if (lib->loaded)
            continue;
        const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", lib->code};
        redisReply *r = s_conn_exec(self, deadline, 4, argv, NULL);
        if (!r)
            return SN_AGAIN;
        if (r->type == REDIS_REPLY_ERROR) {
            bool transient = sn_redis_reply_is_transient(r);
            if (!transient && !lib->logged_bad) {
                sn_error("redis", "%s: library %s refused: %s", self->name, lib->name, r->str);
                lib->logged_bad = true;
            }
            freeReplyObject(r);
            if (transient)
                return SN_AGAIN;
        } else {
            freeReplyObject(r);
        }
        lib->loaded = true;
    }
    return SN_OK;
}

static bool s_is_function_missing(const redisReply *r)
{
    static const char msg[] = "ERR Function not found";
    return r->type == REDIS_REPLY_ERROR && r->len >= sizeof msg - 1 &&
           memcmp(r->str, msg, sizeof msg - 1) == 0;
}

static sn_rc_t s_conn_run(sn_redis_conn_t *self, int64_t deadline, redisReply **reply, int argc,
                          const char **argv, const size_t *argvlen)
{
    if (s_conn_connect(self, deadline) != SN_OK)
        return SN_AGAIN;
    if (s_conn_load_libs(self, deadline) != SN_OK)
        return SN_AGAIN;
    redisReply *r = s_conn_exec(self, deadline, argc, argv, argvlen);
    if (!r)
        return SN_AGAIN;
    if (self->lib_count > 0 && s_is_function_missing(r)) {
        /* FUNCTION FLUSH (or a replica promoted without them): load and retry once. */
        freeReplyObject(r);
        for (size_t i = 0; i < self->lib_count; i++)
            self->libs[i].loaded = false;
        if (s_conn_load_libs(self, deadline) != SN_OK)
            return SN_AGAIN;
        r = s_conn_exec(self, deadline, argc, argv, argvlen);
        if (!r)
            return SN_AGAIN;
    }
    *reply = r;
    return SN_OK;
}

static void s_libs_set(s_lib_t **libs, size_t *count, const char *name, const char *lua,
                       bool *changed)
{
    for (size_t i = 0; i < *count; i++) {
        s_lib_t *lib = &(*libs)[i];
        if (strcmp(lib->name, name) != 0)
            continue;
        if (strcmp(lib->body, lua) == 0)
            return;
        free(lib->body);
        free(lib->code);
        lib->body = sn_strdup(lua);
        lib->code = sn_strdupf("#!lua name=%s\n%s", name, lua);
        lib->loaded = false;
        lib->logged_bad = false;
        *changed = true;
        return;
    }
    *libs = sn_realloc(*libs, (*count + 1) * sizeof **libs);
    s_lib_t *lib = &(*libs)[(*count)++];
    lib->name = sn_strdup(name);
    lib->body = sn_strdup(lua);
    lib->code = sn_strdupf("#!lua name=%s\n%s", name, lua);
    lib->loaded = false;
    lib->logged_bad = false;
    *changed = true;
}

static void s_libs_free(s_lib_t *libs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(libs[i].name);
        free(libs[i].body);
        free(libs[i].code);
    }
    free(libs);
}

/* Copies the shared library list into the thread's connection when it changed. */
static void s_sync_libs(sn_redis_t *self, sn_redis_conn_t *conn, uint64_t *gen)
{
    uint64_t cur = __atomic_load_n(&self->lib_gen, __ATOMIC_SEQ_CST);
    if (cur == *gen)
        return;
    pthread_mutex_lock(&self->lib_mutex);
    for (size_t i = 0; i < self->lib_count; i++)
        sn_redis_conn_add_library(conn, self->libs[i].name, self->libs[i].body);
    *gen = __atomic_load_n(&self->lib_gen, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&self->lib_mutex);
}

static void s_note_state(s_chan_t *ch, sn_redis_conn_t *conn, uint64_t *reconnects)
{
    sn_redis_t *self = ch->owner;
    if (ch->chan == SN_REDIS_MAIN)
        __atomic_store_n(&self->main_up, sn_redis_conn_is_up(conn), __ATOMIC_SEQ_CST);
    uint64_t r = sn_redis_conn_reconnects(conn);
    if (r != *reconnects) {
        __atomic_add_fetch(&self->stats.reconnects, r - *reconnects, __ATOMIC_RELAXED);
        *reconnects = r;
    }
}

/* One request from the ROUTER: [identity][seq][deadline][arg]... */
static void s_serve(s_chan_t *ch, zsock_t *router, sn_redis_conn_t *conn, uint64_t *gen)
{
    zmsg_t *msg = zmsg_recv(router);
    if (!msg)
        return;
    zframe_t *id = zmsg_pop(msg);
    zframe_t *fseq = zmsg_pop(msg);
    zframe_t *fdl = zmsg_pop(msg);
    SN_ASSERT(id && fseq && fdl && zframe_size(fseq) == sizeof(uint64_t) &&
              zframe_size(fdl) == sizeof(int64_t) && zmsg_size(msg) > 0);
    int64_t deadline;
    memcpy(&deadline, zframe_data(fdl), sizeof deadline);
    redisReply *reply = NULL;
    sn_rc_t rc = SN_AGAIN;
    int64_t left = deadline - sn_mono_ms();
    if (left > 0) { /* a request that waited past its deadline is not run at all */
        int argc = (int)zmsg_size(msg);
        const char **argv = sn_calloc((size_t)argc, sizeof *argv);
        size_t *lens = sn_calloc((size_t)argc, sizeof *lens);
        int i = 0;
        for (zframe_t *f = zmsg_first(msg); f; f = zmsg_next(msg), i++) {
            argv[i] = (const char *)zframe_data(f);
            lens[i] = zframe_size(f);
            if (!argv[i])
                argv[i] = ""; /* an empty frame may have no data pointer */
        }
        s_sync_libs(ch->owner, conn, gen);
        rc = sn_redis_conn_cmd(conn, (int)left, &reply, argc, argv, lens);
        free(argv);
        free(lens);
    }
    zmsg_destroy(&msg);
    zmsg_t *out = zmsg_new();
    zmsg_append(out, &id);
    zmsg_append(out, &fseq);
    int32_t rc32 = (int32_t)rc;
    zmsg_addmem(out, &rc32, sizeof rc32);
    zmsg_addmem(out, &reply, sizeof reply);
    zframe_destroy(&fdl);
    if (zmsg_send(&out, router) != 0) { /* caller's socket gone or full: drop the answer */
        zmsg_destroy(&out);
        if (reply)
            freeReplyObject(reply);
    }
}

static void s_actor(zsock_t *pipe, void *arg)
{
    s_chan_t *ch = arg;
    sn_redis_t *self = ch->owner;
    /* This thread only does Redis I/O: SIGPIPE stays blocked here for good. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    zsock_t *router = zsock_new(ZMQ_ROUTER);
    SN_ASSERT(router);
    zsock_set_router_mandatory(router, 1);
    zsock_set_sndtimeo(router, 0);
    SN_ASSERT(zsock_bind(router, "%s", ch->endpoint) == 0);
    sn_redis_opts_t o = self->opts;
    o.name = s_chan_name[ch->chan];
    sn_redis_conn_t *conn = sn_redis_conn_new(&o);
    SN_ASSERT(conn);
    uint64_t gen = 0, reconnects = 0;
    zsock_signal(pipe, 0);

    for (;;) {
        long wait = S_IDLE_POLL_MS;
        if (!sn_redis_conn_is_up(conn)) {
            int64_t until = sn_redis_conn_retry_at_ms(conn) - sn_mono_ms();
            wait = until < 0 ? 0 : (until < S_IDLE_POLL_MS ? (long)until : S_IDLE_POLL_MS);
        }
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
                                  {zsock_resolve(router), 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, 2, wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmsg_t *cmd = zmsg_recv(pipe);
            char *name = cmd ? zmsg_popstr(cmd) : NULL;
            bool term = !cmd || (name && strcmp(name, "$TERM") == 0);
            free(name);
            zmsg_destroy(&cmd);
            if (term)
                break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            s_serve(ch, router, conn, &gen);
            s_note_state(ch, conn, &reconnects);
            continue;
        }
        if (n == 0 && !sn_redis_conn_is_up(conn) &&
            sn_mono_ms() >= sn_redis_conn_retry_at_ms(conn)) {
            /* Idle and down: probe, so that is_up and the functions recover by themselves. */
            s_sync_libs(self, conn, &gen);
            redisReply *r = NULL;
            const char *ping[] = {"PING"};
            if (sn_redis_conn_cmd(conn, 0, &r, 1, ping, NULL) == SN_OK)
                freeReplyObject(r);
            s_note_state(ch, conn, &reconnects);
        }
    }
    sn_redis_conn_destroy(&conn);
    zsock_destroy(&router);
}

static zsock_t *s_pool_get(s_chan_t *ch)
{
    zsock_t *sock = NULL;
    pthread_mutex_lock(&ch->pool_mutex);
    if (ch->pool_len > 0) {
        sock = ch->pool[--ch->pool_len];
    } else {
        sock = zsock_new(ZMQ_DEALER);
        SN_ASSERT(sock);
        SN_ASSERT(zsock_connect(sock, "%s", ch->endpoint) == 0);
    }
    pthread_mutex_unlock(&ch->pool_mutex);
    return sock;
}

static void s_pool_put(s_chan_t *ch, zsock_t *sock)
{
    pthread_mutex_lock(&ch->pool_mutex);
    if (ch->pool_len == ch->pool_cap) {
        ch->pool_cap = ch->pool_cap ? ch->pool_cap * 2 : 4;
        ch->pool = sn_realloc(ch->pool, ch->pool_cap * sizeof *ch->pool);
    }
    ch->pool[ch->pool_len++] = sock;
    pthread_mutex_unlock(&ch->pool_mutex);
}

/* Frees the replies of answers nobody waited for. */
static void s_drain(zsock_t *sock)
{
    for (;;) {
        zmq_pollitem_t item = {zsock_resolve(sock), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 0) <= 0)
            return;
        zmsg_t *msg = zmsg_recv(sock);
        if (!msg)
            return;
        zframe_t *f = zmsg_last(msg);
        if (f && zframe_size(f) == sizeof(void *)) {
            redisReply *r;
            memcpy(&r, zframe_data(f), sizeof r);
            if (r)
                freeReplyObject(r);
        }
        zmsg_destroy(&msg);
    }
}
