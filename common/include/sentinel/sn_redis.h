/* Redis access with hard deadlines. hiredis 0.14's async API has no timeouts, so every
 * process talks to Redis through synchronous contexts (connect and I/O timeouts set)
 * owned by Redis threads, one per channel: SN_REDIS_MAIN for queries and SN_REDIS_LEASE
 * for lock and lease renewals, so that a slow query never costs a lock. Any thread
 * reaches them over inproc with a deadline and gets SN_AGAIN when the deadline passes,
 * even if Redis or the Redis thread is stuck. After any error a context is discarded
 * and reconnected with backoff; Redis Function libraries registered here are loaded on
 * every (re)connect and again when a call finds a function missing (FUNCTION FLUSH).
 *
 * sn_redis_conn_t is the plain building block: one context owned by one thread, with
 * timeouts, reconnect and library loading (the journal reader uses one for XREAD BLOCK).
 * Both need no Redis at construction; they connect when used. */
#ifndef SN_REDIS_H
#define SN_REDIS_H

#include <hiredis/hiredis.h>

#include "sentinel/sn_common.h"

typedef struct sn_redis sn_redis_t;
typedef struct sn_redis_conn sn_redis_conn_t;

/* Where Redis is: @unix_path if set, else @host:@port. @namespace_ is the key prefix
 * (default "sentinel:"), @timeout_ms the default call and connect timeout (default
 * 1000). @name only labels log lines (default "main"/"lease" or "conn"). Strings are
 * copied by the constructors. */
typedef struct {
    const char *unix_path;
    const char *host;
    int port;
    const char *namespace_;
    int timeout_ms;
    const char *name;
} sn_redis_opts_t;

typedef enum {
    SN_REDIS_MAIN = 0,  /* queries, scripts, fenced writes */
    SN_REDIS_LEASE = 1, /* lock and lease acquire / renew / release only */
} sn_redis_chan_t;

#define SN_REDIS_CHANNELS 2

/* Counters since sn_redis_new (read with sn_redis_stats; monotonic). */
typedef struct {
    uint64_t calls;      /* sn_redis_cmd / sn_redis_fcall calls */
    uint64_t again;      /* calls that returned SN_AGAIN (timeouts included) */
    uint64_t timeouts;   /* calls whose deadline passed before an answer */
    uint64_t reconnects; /* successful connects after a lost or failed connection */
} sn_redis_stats_t;

/* ---- sn_redis: shared, any thread ----------------------------------------------------- */

/* Starts one Redis thread per channel (fully up when this returns) and returns the
 * handle; Redis need not be up. NULL if @opts is unusable (no unix_path and no host).
 * Call from any thread; the handle must outlive every caller. */
sn_redis_t *sn_redis_new(const sn_redis_opts_t *opts);

/* Stops the threads (waits for a command in progress, at most its timeout), frees all,
 * sets *self_p = NULL. NULL-safe. Call from the thread that called sn_redis_new, when no
 * call is in progress on any other thread. */
void sn_redis_destroy(sn_redis_t **self_p);

/* The key prefix, e.g. "sentinel:" (owned by @self). */
const char *sn_redis_ns(sn_redis_t *self);

/* Registers Redis Function library @name with Lua body @lua (both copied; the body
 * is the code after the "#!lua name=<name>" line, which is added here). It is loaded
 * with FUNCTION LOAD REPLACE on every (re)connect of every channel, and again (then
 * the call is retried once) when a call gets "Function not found". Registering the
 * same name again replaces the body; an identical body is a no-op. Any thread. */
void sn_redis_add_library(sn_redis_t *self, const char *name, const char *lua);

/* Runs one command, binary-safe (@argvlen may be NULL for C strings), on channel
 * @chan within @timeout_ms (<= 0: the default). SN_OK with *reply set, also when the
 * reply is a Redis error reply (the caller inspects it and frees every reply with
 * freeReplyObject); SN_AGAIN on timeout or connection trouble (*reply NULL; the
 * command may or may not have run); SN_ERROR on bad arguments. Any thread. */
SN_NODISCARD sn_rc_t sn_redis_cmd(sn_redis_t *self, sn_redis_chan_t chan, int timeout_ms,
                                  redisReply **reply, int argc, const char **argv,
                                  const size_t *argvlen);

/* FCALL @fn with @nkeys keys, each prefixed here with the namespace, and @nargs
 * arguments (@arglens may be NULL for C strings). Results as sn_redis_cmd. */
SN_NODISCARD sn_rc_t sn_redis_fcall(sn_redis_t *self, sn_redis_chan_t chan, int timeout_ms,
                                    redisReply **reply, const char *fn, int nkeys,
                                    const char **keys, int nargs, const char **args,
                                    const size_t *arglens);

/* True while the main channel's last connect or command succeeded. Any thread. */
bool sn_redis_is_up(sn_redis_t *self);

/* Copies the counters into *out. Any thread. */
void sn_redis_stats(sn_redis_t *self, sn_redis_stats_t *out);

/* True if @reply is an error reply that a retry may cure (LOADING, BUSY, TRYAGAIN,
 * MASTERDOWN, MISCONF, READONLY, OOM). NULL-safe (false). */
bool sn_redis_reply_is_transient(const redisReply *reply);

/* ---- sn_redis_conn: one context, one owning thread -------------------------------------- */

/* A connection for the calling thread alone (e.g. XREAD BLOCK). Does not connect yet.
 * NULL if @opts is unusable. */
sn_redis_conn_t *sn_redis_conn_new(const sn_redis_opts_t *opts);

/* Closes and frees; NULL-safe; sets *self_p = NULL. Owning thread only. */
void sn_redis_conn_destroy(sn_redis_conn_t **self_p);

/* As sn_redis_add_library, for this connection only. Owning thread only. */
void sn_redis_conn_add_library(sn_redis_conn_t *self, const char *name, const char *lua);

/* Connects if needed (unless a backoff delay since the last failure is still running:
 * then SN_AGAIN at once), loads pending libraries, runs the command with I/O timeouts
 * so that it takes at most about @timeout_ms (<= 0: the default; for XREAD BLOCK pass
 * more than the block time). Results as sn_redis_cmd. On any connection error or
 * timeout the context is discarded (next call reconnects after a jittered backoff).
 * Logs once per state change (connected / lost), never per failed call. */
SN_NODISCARD sn_rc_t sn_redis_conn_cmd(sn_redis_conn_t *self, int timeout_ms, redisReply **reply,
                                       int argc, const char **argv, const size_t *argvlen);

/* Connects now if not connected and no backoff delay is running. SN_OK if connected. */
SN_NODISCARD sn_rc_t sn_redis_conn_connect(sn_redis_conn_t *self, int timeout_ms);

/* True while connected. */
bool sn_redis_conn_is_up(sn_redis_conn_t *self);

/* Monotonic ms at which a reconnect may be tried (0 when connected). */
int64_t sn_redis_conn_retry_at_ms(sn_redis_conn_t *self);

/* The key prefix (owned by @self). */
const char *sn_redis_conn_ns(sn_redis_conn_t *self);

/* Successful connects after the first (counts reconnects). */
uint64_t sn_redis_conn_reconnects(sn_redis_conn_t *self);

#endif
