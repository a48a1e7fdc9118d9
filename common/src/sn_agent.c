/* The agent runtime: one role in one process. The loop thread owns the broker sockets
 * (service worker, rpc client, bus publisher and subscriber), the leader lock and the
 * registration in Redis; job threads (one per unit of credit) run long work and post
 * results back through an eventfd. Each job thread has its own bus publisher, journal
 * and ledger, because a ZeroMQ socket belongs to one thread: an event a job commits is
 * published by that thread after Redis answered (the outbox rule). */
#include "sentinel/sn_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <openssl/crypto.h>

#include "sentinel/sn_audit.h"
#include "sentinel/sn_bus.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_leader.h"
#include "sentinel/sn_ledger.h"
#include "sentinel/sn_log.h"
#include "sentinel/sn_redis.h"
#include "sentinel/sn_rpc.h"
#include "sentinel/sn_worker.h"

#define SN_AGENT_MAX_CREDIT 64
#define SN_AGENT_REDIS_TIMEOUT_MS 500
#define SN_AGENT_FLUSH_TIMEOUT_MS 2000
#define SN_AGENT_CALL_GRACE_MS 1000

struct sn_request {
    sn_worker_ticket_t ticket;
    char service[SN_PROTO_MAX_NAME + 1];
    char principal[SN_PROTO_MAX_NAME + 1];
    int64_t deadline_at_ms;
    sn_envelope_t *env;
    void **allocs;
    size_t alloc_count;
    bool is_cancelled;
    /* deferred work */
    sn_job_fn *fn;
    void *fn_state;
    sn_rc_t rc;
    const char *nak_reason;
    uint8_t *reply;
    size_t reply_len;
    struct sn_request *next;      /* job queues */
    struct sn_request *next_live; /* the loop's list of requests in progress */
};

typedef struct s_call {
    uint64_t request_id;
    uint32_t attempt;
    int64_t local_deadline_ms;
    sn_call_done_fn *done;
    void *arg;
    struct s_call *next;
} s_call_t;

/* What a thread other than the loop needs to touch the mesh. */
typedef struct {
    sn_bus_pub_t *pub;
    sn_journal_t *journal;
    sn_ledger_t *ledger;
} s_thread_io_t;

struct sn_ctx {
    const sn_role_t *role;
    void *state;
    sn_config_t cfg;
    char *instance;
    char host[256];
    int64_t started_ms;
    sn_source_t source;
    sn_curve_keys_t curve;
    char curve_public[41];
    char curve_secret[41];
    bool has_curve;

    sn_redis_t *redis;
    sn_audit_t *audit;
    sn_leader_t *leader;
    sn_metrics_t *metrics;
    s_thread_io_t io; /* the loop thread's */
    sn_bus_sub_t *sub;
    sn_bus_sub_t *flush_sub;
    sn_worker_t *worker;
    sn_rpc_t *rpc;

    bool is_leader;
    uint64_t fence;
    int stopping; /* atomic */

    /* job threads */
    pthread_t threads[SN_AGENT_MAX_CREDIT];
    int thread_count;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sn_request_t *todo_head, *todo_tail;
    sn_request_t *done_head;
    int efd;
    int busy; /* requests deferred and not yet answered (loop thread) */
    bool threads_quit;

    sn_request_t *live;
    s_call_t *calls;
    int64_t next_role_tick_ms;
    int64_t next_leader_tick_ms;
    int64_t next_register_ms;
};

static __thread s_thread_io_t *s_tls_io;
static int s_signal_pipe[2] = {-1, -1};

static void s_on_signal(int sig);
static int s_usage(const char *argv0, const sn_role_t *const *roles, int code);
static sn_rc_t s_setup(sn_ctx_t *ctx);
static void s_teardown(sn_ctx_t *ctx);
static void s_run(sn_ctx_t *ctx);
static void s_shutdown(sn_ctx_t *ctx);
static sn_rc_t s_io_open(sn_ctx_t *ctx, s_thread_io_t *io);
static void s_io_close(s_thread_io_t *io);
static void s_ledger_publish(void *arg, const char *topic, const uint8_t *env, size_t len);
static void *s_job_thread(void *arg);
static void s_request_free(sn_request_t *req);
static void s_live_remove(sn_ctx_t *ctx, sn_request_t *req);
static void s_handle_worker(sn_ctx_t *ctx);
static void s_handle_rpc(sn_ctx_t *ctx);
static void s_handle_bus(sn_ctx_t *ctx);
static void s_handle_done(sn_ctx_t *ctx);
static void s_timers(sn_ctx_t *ctx, int64_t now);
static void s_leader_tick(sn_ctx_t *ctx);
static void s_set_serving(sn_ctx_t *ctx, bool is_serving);
static void s_register(sn_ctx_t *ctx);
static void s_record_leadership(sn_ctx_t *ctx, bool is_leader, const char *reason);
static void s_send_answer(sn_ctx_t *ctx, sn_request_t *req);
static void s_expire_calls(sn_ctx_t *ctx, int64_t now);
static void s_fail_calls(sn_ctx_t *ctx, const char *reason);
static int s_nak_code(const char *reason);

/* ---- the agent host -------------------------------------------------------------------- */

int sn_agent_main(int argc, char **argv, const sn_role_t *const *roles)
{
    const char *role_name = NULL, *config_path = NULL, *instance = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--list-roles") == 0) {
            for (size_t r = 0; roles[r]; r++)
                printf("%-22s %-24s %s\n", roles[r]->name, roles[r]->agent ? roles[r]->agent : "",
                       roles[r]->summary ? roles[r]->summary : "");
            return 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            return s_usage(argv[0], roles, 0);
        } else if ((strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0) && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(a, "--instance") == 0 && i + 1 < argc) {
            instance = argv[++i];
        } else if (a[0] != '-' && !role_name) {
            role_name = a;
        } else {
            fprintf(stderr, "sentinel-agent: unexpected argument '%s'\n", a);
            return s_usage(argv[0], roles, 2);
        }
    }
    if (!role_name || !config_path)
        return s_usage(argv[0], roles, 2);
    const sn_role_t *role = NULL;
    for (size_t r = 0; roles[r] && !role; r++)
        if (strcmp(roles[r]->name, role_name) == 0)
            role = roles[r];
    if (!role) {
        fprintf(stderr, "sentinel-agent: unknown role '%s' (see --list-roles)\n", role_name);
        return 2;
    }

    /* We own signal handling: czmq must not install its own (zeromq-notes §8.2). */
    zsys_handler_set(NULL);
    zsys_init();

    sn_ctx_t *ctx = sn_calloc(1, sizeof *ctx);
    ctx->role = role;
    ctx->efd = -1;
    char err[512];
    if (sn_config_load(config_path, &ctx->cfg, err, sizeof err) != SN_OK) {
        fprintf(stderr, "sentinel-agent: %s\n", err);
        free(ctx);
        return 1;
    }
    const char *host_env = getenv("SENTINEL_HOST");
    if (host_env && *host_env)
        sn_strlcpy(ctx->host, host_env, sizeof ctx->host);
    else
        gethostname(ctx->host, sizeof ctx->host - 1);
    ctx->instance = instance ? sn_strdup(instance) : sn_strdupf("%s-%d", ctx->host, (int)getpid());
    sn_log_init(role->name, ctx->instance);
    sn_log_level_t level;
    if (ctx->cfg.log_level && !getenv("SN_LOG_LEVEL") &&
        sn_log_parse_level(ctx->cfg.log_level, &level) == SN_OK)
        sn_log_set_level(level);

    int rc = 1;
    if (pipe2(s_signal_pipe, O_NONBLOCK | O_CLOEXEC) == 0) {
        struct sigaction sa = {.sa_handler = s_on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (s_setup(ctx) == SN_OK) {
            s_run(ctx);
            s_shutdown(ctx);
            rc = 0;
        }
    }
    s_teardown(ctx);
    return rc;
}

/* ---- context accessors ------------------------------------------------------------------- */

const sn_config_t *sn_ctx_config(sn_ctx_t *ctx)
{
    return &ctx->cfg;
}

const char *sn_ctx_role(sn_ctx_t *ctx)
{
    return ctx->role->name;
}

const char *sn_ctx_host(sn_ctx_t *ctx)
{
    return ctx->host;
}

const char *sn_ctx_instance(sn_ctx_t *ctx)
{
    return ctx->instance;
}

sn_source_t *sn_ctx_source(sn_ctx_t *ctx)
{
    return &ctx->source;
}

sn_redis_t *sn_ctx_redis(sn_ctx_t *ctx)
{
    return ctx->redis;
}

sn_ledger_t *sn_ctx_ledger(sn_ctx_t *ctx)
{
    return s_tls_io ? s_tls_io->ledger : ctx->io.ledger;
}

sn_journal_t *sn_ctx_journal(sn_ctx_t *ctx)
{
    return s_tls_io ? s_tls_io->journal : ctx->io.journal;
}

sn_audit_t *sn_ctx_audit(sn_ctx_t *ctx)
{
    return ctx->audit;
}

sn_metrics_t *sn_ctx_metrics(sn_ctx_t *ctx)
{
    return ctx->metrics;
}

bool sn_ctx_is_leader(sn_ctx_t *ctx)
{
    return ctx->leader && sn_leader_is_leader(ctx->leader);
}

uint64_t sn_ctx_fence(sn_ctx_t *ctx)
{
    return ctx->leader ? sn_leader_fence(ctx->leader) : 0;
}

bool sn_ctx_is_stopping(sn_ctx_t *ctx)
{
    return __atomic_load_n(&ctx->stopping, __ATOMIC_ACQUIRE) != 0;
}

void sn_ctx_publish(sn_ctx_t *ctx, const sn_envelope_t *env)
{
    s_thread_io_t *io = s_tls_io ? s_tls_io : &ctx->io;
    if (sn_bus_pub_send_env(io->pub, env) != SN_OK)
        sn_metrics_add(ctx->metrics, "bus_publish_failed", 1);
}

void sn_ctx_call(sn_ctx_t *ctx, const char *service, const sn_envelope_t *env, int deadline_ms,
                 uint32_t attempt, sn_call_done_fn *done, void *arg)
{
    SN_ASSERT(!s_tls_io); /* loop thread only */
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(env, &len);
    uint64_t request_id = 0;
    if (deadline_ms <= 0)
        deadline_ms = (int)SN_PROTO_DEFAULT_DEADLINE_MS;
    sn_rc_t rc =
        sn_rpc_send(ctx->rpc, service, bytes, len, (uint32_t)deadline_ms, attempt, &request_id);
    free(bytes);
    if (rc != SN_OK) {
        sn_metrics_add(ctx->metrics, "calls_failed", 1);
        if (done)
            done(ctx, arg, NULL, rc == SN_ERROR ? "invalid" : "overloaded");
        return;
    }
    sn_metrics_add(ctx->metrics, "calls_sent", 1);
    s_call_t *call = sn_calloc(1, sizeof *call);
    call->request_id = request_id;
    call->attempt = attempt;
    call->local_deadline_ms = sn_mono_ms() + deadline_ms + SN_AGENT_CALL_GRACE_MS;
    call->done = done;
    call->arg = arg;
    call->next = ctx->calls;
    ctx->calls = call;
}

/* ---- requests ------------------------------------------------------------------------------ */

const char *sn_request_service(const sn_request_t *req)
{
    return req->service;
}

const char *sn_request_principal(const sn_request_t *req)
{
    return req->principal;
}

uint32_t sn_request_attempt(const sn_request_t *req)
{
    return req->ticket.attempt;
}

int64_t sn_request_deadline_ms(const sn_request_t *req)
{
    return req->deadline_at_ms;
}

const sn_envelope_t *sn_request_envelope(const sn_request_t *req)
{
    return req->env;
}

void *sn_request_alloc(sn_request_t *req, size_t size)
{
    void *p = sn_calloc(1, size);
    req->allocs = sn_realloc(req->allocs, (req->alloc_count + 1) * sizeof *req->allocs);
    req->allocs[req->alloc_count++] = p;
    return p;
}

char *sn_request_strdup(sn_request_t *req, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = sn_request_alloc(req, n);
    memcpy(p, s, n);
    return p;
}

/* Stamps @reply as an answer to @req and packs it into req->reply. */
static void s_pack_reply(sn_ctx_t *ctx, sn_request_t *req, sn_envelope_t *reply)
{
    char id[SN_ID_LEN + 1];
    /* Keep the body the role set; stamp the attributes. */
    sn_envelope_t stamped;
    sn_envelope_stamp(&stamped, &ctx->source, reply->type && *reply->type ? reply->type : "reply",
                      id);
    stamped.subject = reply->subject;
    stamped.correlation_id = reply->correlation_id && *reply->correlation_id
                                 ? reply->correlation_id
                                 : req->env->correlation_id;
    stamped.causation_id = req->env->id;
    stamped.fence = reply->fence;
    stamped.n_labels = reply->n_labels;
    stamped.labels = reply->labels;
    stamped.body_case = reply->body_case;
    /* The oneof members share storage: copy the pointer through any member. */
    stamped.note = reply->note;
    req->reply = sn_envelope_pack(&stamped, &req->reply_len);
}

void sn_request_reply(sn_ctx_t *ctx, sn_request_t *req, sn_envelope_t *reply)
{
    s_pack_reply(ctx, req, reply);
    req->rc = SN_OK;
    s_send_answer(ctx, req);
}

void sn_request_nak(sn_ctx_t *ctx, sn_request_t *req, const char *reason)
{
    req->rc = SN_ERROR;
    req->nak_reason = reason;
    s_send_answer(ctx, req);
}

void sn_request_defer(sn_ctx_t *ctx, sn_request_t *req, sn_job_fn *fn, void *state)
{
    SN_ASSERT(fn);
    req->fn = fn;
    req->fn_state = state;
    ctx->busy++;
    pthread_mutex_lock(&ctx->mu);
    req->next = NULL;
    if (ctx->todo_tail)
        ctx->todo_tail->next = req;
    else
        ctx->todo_head = req;
    ctx->todo_tail = req;
    pthread_cond_signal(&ctx->cv);
    pthread_mutex_unlock(&ctx->mu);
}

/* ---- set-up and teardown ---------------------------------------------------------------- */

static void s_on_signal(int sig)
{
    int saved = errno;
    char c = (char)sig;
    if (write(s_signal_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a signal is already pending */
    }
    errno = saved;
}

static int s_usage(const char *argv0, const sn_role_t *const *roles, int code)
{
    fprintf(code ? stderr : stdout,
            "usage: %s ROLE --config FILE [--instance ID]\n"
            "       %s --list-roles\n",
            argv0, argv0);
    return code;
}

static bool s_load_curve(sn_ctx_t *ctx)
{
    const sn_broker_config_t *b = &ctx->cfg.broker;
    if (!b->curve)
        return true;
    if (!b->client_cert_file || !b->server_public_key) {
        sn_error("agent", "curve is on but broker.client_cert_file or server_public_key is unset");
        return false;
    }
    zcert_t *cert = zcert_load(b->client_cert_file);
    if (!cert) {
        sn_error("agent", "cannot load the client certificate file=%s", b->client_cert_file);
        return false;
    }
    sn_strlcpy(ctx->curve_public, zcert_public_txt(cert), sizeof ctx->curve_public);
    sn_strlcpy(ctx->curve_secret, zcert_secret_txt(cert), sizeof ctx->curve_secret);
    zcert_destroy(&cert);
    ctx->curve.server_public = b->server_public_key;
    ctx->curve.public_key = ctx->curve_public;
    ctx->curve.secret_key = ctx->curve_secret;
    ctx->has_curve = true;
    return true;
}

static void s_bus_opts(sn_ctx_t *ctx, sn_bus_opts_t *o, const char *endpoint)
{
    memset(o, 0, sizeof *o);
    o->endpoint = endpoint;
    o->max_frame_bytes = ctx->cfg.broker.max_frame_bytes;
    if (ctx->has_curve) {
        o->curve_server_key = ctx->curve.server_public;
        o->curve_public_key = ctx->curve.public_key;
        o->curve_secret_key = ctx->curve.secret_key;
    }
}

static sn_rc_t s_setup(sn_ctx_t *ctx)
{
    const sn_role_t *role = ctx->role;
    const sn_config_t *cfg = &ctx->cfg;
    ctx->started_ms = sn_wall_ms();
    sn_source_init(&ctx->source, role->name, ctx->instance);
    ctx->metrics = sn_metrics_new();
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_cond_init(&ctx->cv, NULL);
    ctx->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->efd < 0 || !s_load_curve(ctx))
        return SN_ERROR;

    sn_redis_opts_t ropts = {
        .unix_path = cfg->redis.unix_path,
        .host = cfg->redis.host,
        .port = cfg->redis.port,
        .namespace_ = cfg->namespace_,
        .timeout_ms = cfg->redis.timeout_ms,
    };
    ctx->redis = sn_redis_new(&ropts);
    if (!ctx->redis)
        return SN_ERROR;
    if (s_io_open(ctx, &ctx->io) != SN_OK)
        return SN_ERROR;
    /* The audit chain: one thread-safe handle per process. Without it (an unusable key
     * file) roles refuse side effects: sn_ctx_audit() is NULL and they fail closed. */
    sn_audit_opts_t aopts = {
        .redis = ctx->redis,
        .source = &ctx->source,
        .archive_path = cfg->audit_archive,
        .key_file = cfg->audit_key_file,
        .archive_every = 256,
    };
    if (cfg->state_dir && mkdir(cfg->state_dir, 0711) != 0 && errno != EEXIST)
        sn_warn("agent", "cannot create state_dir %s: %s", cfg->state_dir, strerror(errno));
    if (cfg->audit_archive && cfg->audit_key_file)
        ctx->audit = sn_audit_new(&aopts);

    sn_bus_opts_t bopts;
    s_bus_opts(ctx, &bopts, cfg->broker.sub);
    if (role->subscriptions && role->subscriptions[0]) {
        bopts.is_partial = true;
        ctx->sub = sn_bus_sub_new(&bopts);
        if (!ctx->sub)
            return SN_ERROR;
        for (size_t i = 0; role->subscriptions[i]; i++)
            sn_bus_sub_subscribe(ctx->sub, role->subscriptions[i]);
    }
    bopts.is_partial = true;
    ctx->flush_sub = sn_bus_sub_new(&bopts);
    if (!ctx->flush_sub)
        return SN_ERROR;
    sn_bus_sub_subscribe(ctx->flush_sub, SN_BUS_FLUSH_TYPE);

    ctx->rpc = sn_rpc_new(cfg->broker.rpc, ctx->has_curve ? &ctx->curve : NULL);
    if (!ctx->rpc)
        return SN_ERROR;
    sn_rpc_set_heartbeat(ctx->rpc, cfg->broker.heartbeat_ms, cfg->broker.heartbeat_liveness);
    sn_rpc_set_max_frame(ctx->rpc, cfg->broker.max_frame_bytes);

    int credit = role->credit > 0 ? role->credit : 1;
    if (credit > SN_AGENT_MAX_CREDIT)
        credit = SN_AGENT_MAX_CREDIT;
    if (role->services && role->services[0]) {
        ctx->worker = sn_worker_new(cfg->broker.rpc, ctx->has_curve ? &ctx->curve : NULL);
        if (!ctx->worker)
            return SN_ERROR;
        sn_worker_set_heartbeat(ctx->worker, cfg->broker.heartbeat_ms,
                                cfg->broker.heartbeat_liveness);
    }
    if (role->leadership != SN_LEADERSHIP_NONE) {
        ctx->leader =
            sn_leader_new(ctx->redis, role->name, ctx->instance, cfg->runtime.leader_ttl_ms);
        if (!ctx->leader)
            return SN_ERROR;
    }
    for (int i = 0; i < credit; i++) {
        if (pthread_create(&ctx->threads[i], NULL, s_job_thread, ctx) != 0) {
            sn_error("agent", "cannot start job thread: %s", strerror(errno));
            return SN_ERROR;
        }
        ctx->thread_count++;
    }
    if (role->init && role->init(ctx, &ctx->state) != SN_OK) {
        sn_error("agent", "role init failed");
        return SN_ERROR;
    }
    if (role->leadership != SN_LEADERSHIP_EXCLUSIVE)
        s_set_serving(ctx, true);
    sn_info("agent", "started role=%s agent=%s pid=%d credit=%d leadership=%s", role->name,
            role->agent ? role->agent : "-", (int)getpid(), credit,
            role->leadership == SN_LEADERSHIP_NONE        ? "none"
            : role->leadership == SN_LEADERSHIP_EXCLUSIVE ? "exclusive"
                                                          : "duty");
    return SN_OK;
}

static void s_teardown(sn_ctx_t *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    ctx->threads_quit = true;
    pthread_cond_broadcast(&ctx->cv);
    pthread_mutex_unlock(&ctx->mu);
    for (int i = 0; i < ctx->thread_count; i++)
        pthread_join(ctx->threads[i], NULL);
    while (ctx->todo_head) {
        sn_request_t *r = ctx->todo_head;
        ctx->todo_head = r->next;
        s_request_free(r);
    }
    while (ctx->done_head) {
        sn_request_t *r = ctx->done_head;
        ctx->done_head = r->next;
        s_request_free(r);
    }
    while (ctx->live) {
        sn_request_t *r = ctx->live;
        ctx->live = r->next_live;
        s_request_free(r);
    }
    while (ctx->calls) {
        s_call_t *c = ctx->calls;
        ctx->calls = c->next;
        free(c);
    }
    sn_leader_destroy(&ctx->leader);
    sn_audit_destroy(&ctx->audit);
    sn_worker_destroy(&ctx->worker);
    sn_rpc_destroy(&ctx->rpc);
    sn_bus_sub_destroy(&ctx->sub);
    sn_bus_sub_destroy(&ctx->flush_sub);
    s_io_close(&ctx->io);
    sn_redis_destroy(&ctx->redis);
    sn_metrics_destroy(&ctx->metrics);
    if (ctx->efd >= 0)
        close(ctx->efd);
    pthread_mutex_destroy(&ctx->mu);
    pthread_cond_destroy(&ctx->cv);
    OPENSSL_cleanse(ctx->curve_secret, sizeof ctx->curve_secret);
    sn_config_fini(&ctx->cfg);
    free(ctx->instance);
    free(ctx);
}

static sn_rc_t s_io_open(sn_ctx_t *ctx, s_thread_io_t *io)
{
    sn_bus_opts_t bopts;
    s_bus_opts(ctx, &bopts, ctx->cfg.broker.pub);
    io->pub = sn_bus_pub_new(&bopts);
    if (!io->pub)
        return SN_ERROR;
    sn_journal_opts_t jopts = {
        .redis = ctx->redis,
        .bus = io->pub,
        .source = &ctx->source,
        .max_len = ctx->cfg.runtime.journal_max_len,
    };
    io->journal = sn_journal_new(&jopts);
    io->ledger = sn_ledger_new(ctx->redis, &ctx->source);
    if (!io->journal || !io->ledger)
        return SN_ERROR;
    sn_ledger_set_publish(io->ledger, s_ledger_publish, io);
    sn_ledger_set_max_lease_ms(io->ledger, ctx->cfg.runtime.job_lease_max_ms);
    sn_ledger_set_events_maxlen(io->ledger, (long)ctx->cfg.runtime.journal_max_len);
    return SN_OK;
}

static void s_io_close(s_thread_io_t *io)
{
    sn_ledger_destroy(&io->ledger);
    sn_journal_destroy(&io->journal);
    sn_bus_pub_destroy(&io->pub);
}

/* Ledger events go out on the publisher of the thread that wrote them. */
static void s_ledger_publish(void *arg, const char *topic, const uint8_t *env, size_t len)
{
    s_thread_io_t *io = arg;
    if (sn_bus_pub_send(io->pub, topic, env, len) != SN_OK)
        sn_debug("agent", "bus publish failed topic=%s", topic);
}

/* ---- job threads ------------------------------------------------------------------------- */

static void *s_job_thread(void *arg)
{
    sn_ctx_t *ctx = arg;
    s_thread_io_t io = {0};
    bool has_io = s_io_open(ctx, &io) == SN_OK;
    if (has_io)
        s_tls_io = &io;
    for (;;) {
        pthread_mutex_lock(&ctx->mu);
        while (!ctx->todo_head && !ctx->threads_quit)
            pthread_cond_wait(&ctx->cv, &ctx->mu);
        sn_request_t *req = ctx->todo_head;
        if (!req) {
            pthread_mutex_unlock(&ctx->mu);
            break;
        }
        ctx->todo_head = req->next;
        if (!ctx->todo_head)
            ctx->todo_tail = NULL;
        pthread_mutex_unlock(&ctx->mu);

        if (!has_io) {
            req->rc = SN_AGAIN;
            req->nak_reason = "overloaded";
        } else {
            sn_envelope_t reply;
            sentinel__v1__envelope__init(&reply);
            req->nak_reason = "invalid";
            int64_t t0 = sn_mono_us();
            req->rc = req->fn(ctx, req->fn_state, req, &reply, &req->nak_reason);
            sn_metrics_observe_ms(ctx->metrics, "job_ms", (double)(sn_mono_us() - t0) / 1000.0);
            if (req->rc == SN_OK)
                s_pack_reply(ctx, req, &reply);
        }
        pthread_mutex_lock(&ctx->mu);
        req->next = ctx->done_head;
        ctx->done_head = req;
        pthread_mutex_unlock(&ctx->mu);
        uint64_t one = 1;
        if (write(ctx->efd, &one, sizeof one) < 0)
            sn_warn("agent", "eventfd write failed: %s", strerror(errno));
    }
    s_tls_io = NULL;
    s_io_close(&io);
    return NULL;
}

static void s_request_free(sn_request_t *req)
{
    if (!req)
        return;
    for (size_t i = 0; i < req->alloc_count; i++)
        free(req->allocs[i]);
    free(req->allocs);
    sn_envelope_free(&req->env);
    free(req->reply);
    free(req);
}

static void s_live_remove(sn_ctx_t *ctx, sn_request_t *req)
{
    for (sn_request_t **p = &ctx->live; *p; p = &(*p)->next_live)
        if (*p == req) {
            *p = req->next_live;
            return;
        }
}

static int s_nak_code(const char *reason)
{
    for (int r = 1; r <= SN_NAK_REASON_MAX; r++)
        if (reason && strcmp(reason, sn_nak_reason_name(r)) == 0)
            return r;
    return SN_NAK_INVALID;
}

/* Sends the answer of a finished request and frees it (loop thread). */
static void s_send_answer(sn_ctx_t *ctx, sn_request_t *req)
{
    s_live_remove(ctx, req);
    if (req->is_cancelled) {
        sn_metrics_add(ctx->metrics, "requests_cancelled", 1);
    } else if (ctx->worker) {
        sn_rc_t rc;
        if (req->rc == SN_OK) {
            rc = sn_worker_reply(ctx->worker, &req->ticket, req->reply, req->reply_len);
            sn_metrics_add(ctx->metrics, "requests_ok", 1);
        } else {
            rc = sn_worker_nak(ctx->worker, &req->ticket, s_nak_code(req->nak_reason));
            sn_metrics_add(ctx->metrics, "requests_nak", 1);
        }
        if (rc != SN_OK)
            sn_info("agent", "answer dropped service=%s request=%llu reason=%s", req->service,
                    (unsigned long long)req->ticket.request_id,
                    rc == SN_DECLINED ? "connection-replaced" : "socket-busy");
    }
    s_request_free(req);
}

/* ---- the loop --------------------------------------------------------------------------- */

static void s_run(sn_ctx_t *ctx)
{
    int64_t now = sn_mono_ms();
    ctx->next_role_tick_ms = now;
    ctx->next_leader_tick_ms = now;
    ctx->next_register_ms = now;
    while (!sn_ctx_is_stopping(ctx)) {
        zmq_pollitem_t items[6];
        int n = 0;
        int i_worker = -1, i_rpc = -1, i_sub = -1;
        items[n++] = (zmq_pollitem_t){.fd = s_signal_pipe[0], .events = ZMQ_POLLIN};
        items[n++] = (zmq_pollitem_t){.fd = ctx->efd, .events = ZMQ_POLLIN};
        if (ctx->worker) {
            i_worker = n;
            items[n++] =
                (zmq_pollitem_t){.socket = sn_worker_socket(ctx->worker), .events = ZMQ_POLLIN};
        }
        i_rpc = n;
        items[n++] = (zmq_pollitem_t){.socket = sn_rpc_socket(ctx->rpc), .events = ZMQ_POLLIN};
        if (ctx->sub) {
            i_sub = n;
            items[n++] = (zmq_pollitem_t){.socket = zsock_resolve(sn_bus_sub_sock(ctx->sub)),
                                          .events = ZMQ_POLLIN};
        }
        now = sn_mono_ms();
        int64_t wait = 1000;
        int64_t next[] = {ctx->next_role_tick_ms, ctx->next_register_ms,
                          ctx->leader ? ctx->next_leader_tick_ms : now + 1000};
        for (size_t k = 0; k < SN_ARRAY_LEN(next); k++)
            if (next[k] - now < wait)
                wait = next[k] - now;
        if (ctx->worker && sn_worker_timeout_ms(ctx->worker) < wait)
            wait = sn_worker_timeout_ms(ctx->worker);
        if (sn_rpc_timeout_ms(ctx->rpc) < wait)
            wait = sn_rpc_timeout_ms(ctx->rpc);
        if (ctx->calls && wait > 100)
            wait = 100;
        if (wait < 0)
            wait = 0;
        int rc = zmq_poll(items, n, (long)wait);
        if (rc < 0 && errno != EINTR) {
            sn_error("agent", "poll failed: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
            char sig = 0;
            while (read(s_signal_pipe[0], &sig, 1) == 1) {
            }
            sn_info("agent", "signal received: shutting down");
            __atomic_store_n(&ctx->stopping, 1, __ATOMIC_RELEASE);
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
            s_handle_done(ctx);
        if (i_worker >= 0)
            s_handle_worker(ctx); /* also runs heartbeats */
        (void)i_rpc;
        s_handle_rpc(ctx);
        if (i_sub >= 0 && (items[i_sub].revents & ZMQ_POLLIN))
            s_handle_bus(ctx);
        s_timers(ctx, sn_mono_ms());
    }
}

static void s_handle_worker(sn_ctx_t *ctx)
{
    for (int budget = 256; budget > 0; budget--) {
        sn_worker_event_t ev;
        if (sn_worker_recv(ctx->worker, &ev) != SN_OK)
            break;
        if (ev.type == SN_WORKER_CANCEL) {
            for (sn_request_t *r = ctx->live; r; r = r->next_live)
                if (r->ticket.request_id == ev.ticket.request_id &&
                    r->ticket.attempt == ev.ticket.attempt)
                    r->is_cancelled = true;
            sn_worker_event_fini(&ev);
            continue;
        }
        sn_request_t *req = sn_calloc(1, sizeof *req);
        req->ticket = ev.ticket;
        sn_strlcpy(req->service, ev.service, sizeof req->service);
        sn_strlcpy(req->principal, ev.principal, sizeof req->principal);
        req->deadline_at_ms = ev.deadline_at_ms;
        const char *why = NULL;
        req->env =
            sn_envelope_unpack(ev.body, ev.body_len, (size_t)ctx->cfg.broker.max_frame_bytes, &why);
        sn_worker_event_fini(&ev);
        req->next_live = ctx->live;
        ctx->live = req;
        sn_metrics_add(ctx->metrics, "requests", 1);
        if (!req->env) {
            sn_warn("agent", "refused request service=%s principal=%s reason=%s", req->service,
                    req->principal, why ? why : "?");
            sn_metrics_add(ctx->metrics, "requests_malformed", 1);
            sn_request_nak(ctx, req, "invalid");
        } else if (sn_ctx_is_stopping(ctx)) {
            sn_request_nak(ctx, req, "overloaded");
        } else if (!ctx->role->on_request) {
            sn_request_nak(ctx, req, "no-such-service");
        } else {
            ctx->role->on_request(ctx, ctx->state, req);
        }
    }
}

static void s_handle_done(sn_ctx_t *ctx)
{
    uint64_t v;
    if (read(ctx->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        sn_warn("agent", "eventfd read failed: %s", strerror(errno));
    pthread_mutex_lock(&ctx->mu);
    sn_request_t *list = ctx->done_head;
    ctx->done_head = NULL;
    pthread_mutex_unlock(&ctx->mu);
    while (list) {
        sn_request_t *req = list;
        list = req->next;
        ctx->busy--;
        s_send_answer(ctx, req);
    }
}

static void s_handle_rpc(sn_ctx_t *ctx)
{
    for (int budget = 256; budget > 0; budget--) {
        sn_rpc_result_t res;
        if (sn_rpc_recv(ctx->rpc, &res) != SN_OK)
            break;
        s_call_t *call = NULL;
        for (s_call_t **p = &ctx->calls; *p; p = &(*p)->next)
            if ((*p)->request_id == res.request_id) {
                call = *p;
                *p = call->next;
                break;
            }
        if (call && call->done) {
            if (res.is_nak) {
                call->done(ctx, call->arg, NULL, sn_nak_reason_name(res.reason));
            } else {
                const char *why = NULL;
                sn_envelope_t *env = sn_envelope_unpack(
                    res.body, res.body_len, (size_t)ctx->cfg.broker.max_frame_bytes, &why);
                call->done(ctx, call->arg, env, env ? NULL : "invalid");
                sn_envelope_free(&env);
            }
        }
        free(call);
        sn_rpc_result_fini(&res);
    }
}

static void s_handle_bus(sn_ctx_t *ctx)
{
    for (int budget = 256; budget > 0; budget--) {
        sn_bus_event_t ev;
        if (sn_bus_sub_recv(ctx->sub, 0, &ev) != SN_OK)
            break;
        if (ctx->role->on_event)
            ctx->role->on_event(ctx, ctx->state, ev.env);
        sn_bus_event_fini(&ev);
    }
}

static void s_expire_calls(sn_ctx_t *ctx, int64_t now)
{
    for (s_call_t **p = &ctx->calls; *p;) {
        s_call_t *call = *p;
        if (call->local_deadline_ms > now) {
            p = &call->next;
            continue;
        }
        *p = call->next;
        (void)sn_rpc_cancel(ctx->rpc, call->request_id, call->attempt);
        if (call->done)
            call->done(ctx, call->arg, NULL, "timeout");
        free(call);
    }
}

/* Answers every outstanding call with @reason, so roles get their arguments back. */
static void s_fail_calls(sn_ctx_t *ctx, const char *reason)
{
    while (ctx->calls) {
        s_call_t *call = ctx->calls;
        ctx->calls = call->next;
        (void)sn_rpc_cancel(ctx->rpc, call->request_id, call->attempt);
        if (call->done)
            call->done(ctx, call->arg, NULL, reason);
        free(call);
    }
}

static void s_timers(sn_ctx_t *ctx, int64_t now)
{
    if (ctx->calls)
        s_expire_calls(ctx, now);
    if (ctx->leader && now >= ctx->next_leader_tick_ms) {
        s_leader_tick(ctx);
        ctx->next_leader_tick_ms = sn_leader_next_tick_ms(ctx->leader);
    }
    if (now >= ctx->next_register_ms) {
        s_register(ctx);
        ctx->next_register_ms = sn_mono_ms() + ctx->cfg.runtime.agent_ttl_ms / 3;
    }
    if (now >= ctx->next_role_tick_ms) {
        int tick = ctx->role->tick_ms > 0 ? ctx->role->tick_ms : 1000;
        ctx->next_role_tick_ms = now + tick;
        if (ctx->role->on_tick)
            ctx->role->on_tick(ctx, ctx->state, sn_ctx_is_leader(ctx));
    }
}

/* "deploy.local.{host}" -> "deploy.local.<this host>". */
static void s_expand_service(sn_ctx_t *ctx, const char *pattern, char *out, size_t len)
{
    const char *mark = strstr(pattern, "{host}");
    if (!mark) {
        sn_strlcpy(out, pattern, len);
        return;
    }
    int n = snprintf(out, len, "%.*s%s%s", (int)(mark - pattern), pattern, ctx->host, mark + 6);
    if (n < 0 || (size_t)n >= len)
        out[0] = '\0'; /* too long a host: serve nothing rather than a wrong name */
}

static void s_set_serving(sn_ctx_t *ctx, bool is_serving)
{
    if (!ctx->worker)
        return;
    int credit = ctx->role->credit > 0 ? ctx->role->credit : 1;
    if (credit > SN_AGENT_MAX_CREDIT)
        credit = SN_AGENT_MAX_CREDIT;
    for (size_t i = 0; ctx->role->services[i]; i++) {
        char name[SN_PROTO_MAX_NAME + 1];
        s_expand_service(ctx, ctx->role->services[i], name, sizeof name);
        if (sn_worker_serve(ctx->worker, name, is_serving ? (uint32_t)credit : 0) != SN_OK)
            sn_error("agent", "cannot serve service=%s", name);
    }
}

static void s_leader_tick(sn_ctx_t *ctx)
{
    sn_leader_change_t change = sn_leader_tick(ctx->leader, sn_mono_ms());
    if (change == SN_LEADER_NONE) {
        /* A lock can lapse between ticks (frozen process): is_leader turns false without
         * a tick reporting it, so compare with what we last told the role. */
        if (ctx->is_leader && !sn_leader_is_leader(ctx->leader))
            change = SN_LEADER_STEPPED_DOWN;
        else
            return;
    }
    bool is_leader = change == SN_LEADER_ELECTED;
    ctx->is_leader = is_leader;
    ctx->fence = is_leader ? sn_leader_fence(ctx->leader) : 0;
    sn_info("agent", "%s fence=%llu", is_leader ? "elected leader" : "stepped down",
            (unsigned long long)ctx->fence);
    sn_metrics_add(ctx->metrics, is_leader ? "leader_terms" : "leader_stepdowns", 1);
    if (ctx->role->leadership == SN_LEADERSHIP_EXCLUSIVE)
        s_set_serving(ctx, is_leader);
    if (ctx->role->on_leadership)
        ctx->role->on_leadership(ctx, ctx->state, is_leader, ctx->fence);
    s_record_leadership(ctx, is_leader, is_leader ? "elected" : "lock-lost");
    s_register(ctx);
}

/* Journals a leader.elected / leader.stepped_down event (best effort: Redis may be the
 * reason we stepped down). */
static void s_record_leadership(sn_ctx_t *ctx, bool is_leader, const char *reason)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &ctx->source, is_leader ? "leader.elected" : "leader.stepped_down", id);
    Sentinel__V1__LeaderChange body = SENTINEL__V1__LEADER_CHANGE__INIT;
    body.role = (char *)ctx->role->name;
    body.instance = ctx->instance;
    body.fence = ctx->fence;
    body.is_leader = is_leader;
    body.reason = (char *)reason;
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_LEADER;
    env.leader = &body;
    env.fence = ctx->fence;
    env.subject = (char *)ctx->role->name;
    sn_journal_result_t res;
    if (sn_journal_commit(ctx->io.journal, NULL, NULL, 0, &env, &res) != SN_OK)
        sn_debug("agent", "leadership event not journaled");
}

static void s_counter_to_json(void *arg, const char *name, int64_t value)
{
    json_object_set_new(arg, name, json_integer(value));
}

/* Writes agent:<role>:<instance> with a short TTL; runs every agent_ttl / 3. */
static void s_register(sn_ctx_t *ctx)
{
    sn_redis_stats_t rs;
    sn_redis_stats(ctx->redis, &rs);
    sn_metrics_set(ctx->metrics, "redis_calls", (int64_t)rs.calls);
    sn_metrics_set(ctx->metrics, "redis_again", (int64_t)rs.again);
    sn_metrics_set(ctx->metrics, "redis_reconnects", (int64_t)rs.reconnects);
    if (ctx->worker)
        sn_metrics_set(ctx->metrics, "broker_connects", sn_worker_connects(ctx->worker));
    sn_metrics_set(ctx->metrics, "jobs_busy", ctx->busy);
    json_t *counters = json_object();
    sn_metrics_each(ctx->metrics, s_counter_to_json, counters);
    char *counters_json = json_dumps(counters, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(counters);

    char *key =
        sn_strdupf("%sagent:%s:%s", sn_redis_ns(ctx->redis), ctx->role->name, ctx->instance);
    char *pid = sn_strdupf("%d", (int)getpid());
    char *fence = sn_strdupf("%llu", (unsigned long long)ctx->fence);
    char *started = sn_strdupf("%lld", (long long)ctx->started_ms);
    char *seen = sn_strdupf("%lld", (long long)sn_wall_ms());
    char *ttl = sn_strdupf("%d", ctx->cfg.runtime.agent_ttl_ms);
    const char *argv[] = {
        "HSET",        key,           "role",       ctx->role->name,
        "instance",    ctx->instance, "host",       ctx->host,
        "pid",         pid,           "version",    SN_VERSION,
        "config_hash", ctx->cfg.hash, "leader",     sn_ctx_is_leader(ctx) ? "1" : "0",
        "fence",       fence,         "started_ms", started,
        "seen_ms",     seen,          "agent",      ctx->role->agent ? ctx->role->agent : "",
        "counters",    counters_json};
    redisReply *reply = NULL;
    if (sn_redis_cmd(ctx->redis, SN_REDIS_MAIN, SN_AGENT_REDIS_TIMEOUT_MS, &reply,
                     (int)SN_ARRAY_LEN(argv), argv, NULL) == SN_OK) {
        freeReplyObject(reply);
        const char *exp[] = {"PEXPIRE", key, ttl};
        reply = NULL;
        if (sn_redis_cmd(ctx->redis, SN_REDIS_MAIN, SN_AGENT_REDIS_TIMEOUT_MS, &reply, 3, exp,
                         NULL) == SN_OK)
            freeReplyObject(reply);
    }
    free(key);
    free(pid);
    free(fence);
    free(started);
    free(seen);
    free(ttl);
    free(counters_json);
}

/* Graceful shutdown (ARCHITECTURE §6): stop taking work, let jobs finish within the
 * grace period (a job still running after it is handed back by its lease lapsing),
 * flush the bus, release the lock, deregister. */
static void s_shutdown(sn_ctx_t *ctx)
{
    __atomic_store_n(&ctx->stopping, 1, __ATOMIC_RELEASE);
    s_set_serving(ctx, false);
    int64_t deadline = sn_mono_ms() + ctx->cfg.runtime.shutdown_grace_ms;
    while (ctx->busy > 0 && sn_mono_ms() < deadline) {
        zmq_pollitem_t items[2] = {{.fd = ctx->efd, .events = ZMQ_POLLIN}};
        int n = 1;
        if (ctx->worker)
            items[n++] =
                (zmq_pollitem_t){.socket = sn_worker_socket(ctx->worker), .events = ZMQ_POLLIN};
        if (zmq_poll(items, n, 50) > 0 && (items[0].revents & ZMQ_POLLIN))
            s_handle_done(ctx);
        if (ctx->worker)
            s_handle_worker(ctx);
    }
    if (ctx->busy > 0) {
        /* Jobs that did not finish are handed back: their leases lapse and the owning
         * leader re-dispatches them. Their threads are abandoned at exit. */
        sn_warn("agent", "grace period over jobs_running=%d: handing them back", ctx->busy);
        if (sn_bus_flush(ctx->io.pub, ctx->flush_sub, &ctx->source, SN_AGENT_FLUSH_TIMEOUT_MS, NULL,
                         NULL) != SN_OK)
            sn_warn("agent", "bus flush marker did not come back");
        _exit(0);
    }
    if (sn_bus_flush(ctx->io.pub, ctx->flush_sub, &ctx->source, SN_AGENT_FLUSH_TIMEOUT_MS, NULL,
                     NULL) != SN_OK)
        sn_warn("agent", "bus flush marker did not come back within %d ms",
                SN_AGENT_FLUSH_TIMEOUT_MS);
    if (ctx->leader && sn_leader_is_leader(ctx->leader)) {
        if (ctx->role->on_leadership)
            ctx->role->on_leadership(ctx, ctx->state, false, 0);
        s_record_leadership(ctx, false, "shutdown");
        if (sn_leader_release(ctx->leader) != SN_OK)
            sn_warn("agent", "leader lock not released: it lapses by its ttl");
    }
    s_fail_calls(ctx, "shutdown");
    if (ctx->role->destroy)
        ctx->role->destroy(ctx, ctx->state);
    ctx->state = NULL;
    char *key =
        sn_strdupf("%sagent:%s:%s", sn_redis_ns(ctx->redis), ctx->role->name, ctx->instance);
    const char *argv[] = {"DEL", key};
    redisReply *reply = NULL;
    if (sn_redis_cmd(ctx->redis, SN_REDIS_MAIN, SN_AGENT_REDIS_TIMEOUT_MS, &reply, 2, argv, NULL) ==
        SN_OK)
        freeReplyObject(reply);
    free(key);
    sn_info("agent", "stopped");
}
