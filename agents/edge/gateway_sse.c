/* GET /api/v1/events: the journal as Server-Sent Events (contracts/sse-and-metrics.md §a).
 * One feeder thread reads the journal (sn_journal_reader, from the newest entry at start)
 * and fans each entry out, as one CloudEvents JSON line, to the streams that are live.
 * A stream that resumes (Last-Event-ID or ?lastEventId=) or falls behind (more than
 * S_BUF_HIGH bytes unsent) is caught up from Redis with XRANGE (last id, feeder position]
 * by the same thread, then joins the live fan-out: one thread decides what each stream
 * gets, so a stream sees every entry once, in order. A cursor older than the first entry
 * kept gets an `event: gap` first. Each stream is a libmicrohttpd callback response whose
 * reader suspends the connection when its buffer is empty; the feeder resumes it when it
 * appends. Keep-alive comments every keepalive_ms. */
#include "gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentinel/sn_cloudevents.h"
#include "sentinel/sn_journal.h"
#include "sentinel/sn_log.h"

#define S_BUF_HIGH (1024 * 1024)   /* a live stream with more unsent goes back to catch-up */
#define S_BUF_CATCHUP (256 * 1024) /* catch up only below this */
#define S_CATCHUP_BATCH 200
#define S_READ_WAIT_MS 50
#define S_ENTRIES_PER_ROUND 256
#define S_CLOSE_WAIT_MS 3000
#define S_MAX_TYPES 8
#define S_BLOCK_SIZE (16 * 1024)

typedef struct s_client {
    struct gateway_sse *owner;
    struct MHD_Connection *conn;
    char *buf;
    size_t len, off, cap;
    bool is_suspended;
    bool is_gone;    /* MHD freed the response: conn is invalid */
    bool is_closing; /* the gateway ends the stream */
    bool is_active;  /* the feeder took it over */
    bool is_live;
    bool has_cursor;
    char last_id[SN_JOURNAL_ID_MAX];
    char *types[S_MAX_TYPES];
    size_t type_count;
    int64_t last_write_ms;
    struct s_client *next;
} s_client_t;

struct gateway_sse {
    gateway_t *gw;
    pthread_mutex_t mu; /* every client's fields and the list */
    s_client_t *clients;
    bool quit;
    pthread_t thread;
    bool has_thread;
    /* feeder-owned */
    sn_journal_reader_t *reader;
    char pos[SN_JOURNAL_ID_MAX]; /* the last journal entry the feeder has handled */
};

static void *s_feeder(void *arg);
static ssize_t s_read(void *cls, uint64_t pos, char *buf, size_t max);
static void s_free(void *cls);
static void s_append(s_client_t *c, const char *data, size_t len);
static void s_wake(s_client_t *c);
static void s_client_free(s_client_t *c);

gateway_sse_t *gateway_sse_new(gateway_t *gw)
{
    gateway_sse_t *self = sn_calloc(1, sizeof *self);
    self->gw = gw;
    pthread_mutex_init(&self->mu, NULL);
    if (pthread_create(&self->thread, NULL, s_feeder, self) != 0) {
        sn_error("gateway", "cannot start the SSE feeder thread");
        pthread_mutex_destroy(&self->mu);
        free(self);
        return NULL;
    }
    self->has_thread = true;
    return self;
}

static void s_stop_feeder(gateway_sse_t *self)
{
    if (!self->has_thread)
        return;
    pthread_mutex_lock(&self->mu);
    self->quit = true;
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->thread, NULL);
    self->has_thread = false;
}

void gateway_sse_close_all(gateway_sse_t *self)
{
    s_stop_feeder(self);
    pthread_mutex_lock(&self->mu);
    for (s_client_t *c = self->clients; c; c = c->next) {
        c->is_closing = true;
        s_wake(c);
    }
    pthread_mutex_unlock(&self->mu);
    int64_t deadline = sn_mono_ms() + S_CLOSE_WAIT_MS;
    while (__atomic_load_n(&self->gw->sse_count, __ATOMIC_ACQUIRE) > 0 && sn_mono_ms() < deadline) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL); /* shutdown only: waiting for MHD to let go of the streams */
    }
}

void gateway_sse_destroy(gateway_sse_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_sse_t *self = *self_p;
    s_stop_feeder(self);
    while (self->clients) {
        s_client_t *c = self->clients;
        self->clients = c->next;
        s_client_free(c);
    }
    sn_journal_reader_destroy(&self->reader);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

enum MHD_Result gateway_sse_open(gateway_sse_t *self, struct MHD_Connection *conn,
                                 const char *cursor, const char *types)
{
    s_client_t *c = sn_calloc(1, sizeof *c);
    c->owner = self;
    c->conn = conn;
    if (cursor) {
        c->has_cursor = true;
        sn_strlcpy(c->last_id, cursor, sizeof c->last_id);
    }
    if (types) {
        const char *p = types;
        while (*p && c->type_count < S_MAX_TYPES) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (n > 0)
                c->types[c->type_count++] = sn_strndup(p, n);
            p += n + (e ? 1 : 0);
        }
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, S_BLOCK_SIZE, s_read, c, s_free);
    if (!r) {
        s_client_free(c);
        __atomic_sub_fetch(&self->gw->sse_count, 1, __ATOMIC_RELEASE);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    pthread_mutex_lock(&self->mu);
    c->next = self->clients;
    self->clients = c;
    pthread_mutex_unlock(&self->mu);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    sn_metrics_add(self->gw->metrics, "sse_opened", 1);
    sn_info("gateway", "event stream opened cursor=%s types=%s", cursor ? cursor : "$",
            types ? types : "*");
    return ret;
}

/* ---- the MHD side ------------------------------------------------------------------------- */

static ssize_t s_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    s_client_t *c = cls;
    pthread_mutex_t *mu = &c->owner->mu;
    pthread_mutex_lock(mu);
    if (c->len > c->off) {
        size_t n = c->len - c->off;
        if (n > max)
            n = max;
        memcpy(buf, c->buf + c->off, n);
        c->off += n;
        if (c->off == c->len)
            c->off = c->len = 0;
        pthread_mutex_unlock(mu);
        return (ssize_t)n;
    }
    if (c->is_closing) {
        pthread_mutex_unlock(mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    c->is_suspended = true;
    MHD_suspend_connection(c->conn);
    pthread_mutex_unlock(mu);
    return 0;
}

/* MHD is done with the response (the client left or the stream ended): the connection is
 * invalid from here on; the feeder frees the client. */
static void s_free(void *cls)
{
    s_client_t *c = cls;
    gateway_sse_t *self = c->owner;
    pthread_mutex_lock(&self->mu);
    c->is_gone = true;
    c->conn = NULL;
    c->is_suspended = false;
    pthread_mutex_unlock(&self->mu);
    __atomic_sub_fetch(&self->gw->sse_count, 1, __ATOMIC_RELEASE);
    sn_metrics_add(self->gw->metrics, "sse_closed", 1);
}

/* ---- helpers (callers hold the mutex) ------------------------------------------------------ */

static void s_append(s_client_t *c, const char *data, size_t len)
{
    if (c->is_gone || c->is_closing)
        return;
    if (c->off > 0 && c->off == c->len)
        c->off = c->len = 0;
    if (c->len + len > c->cap) {
        if (c->off > 0) {
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->len + len > c->cap) {
            c->cap = (c->len + len) * 2;
            c->buf = sn_realloc(c->buf, c->cap);
        }
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    c->last_write_ms = sn_mono_ms();
}

static void s_wake(s_client_t *c)
{
    if (c->is_suspended && !c->is_gone && c->conn) {
        c->is_suspended = false;
        MHD_resume_connection(c->conn);
    }
}

static void s_client_free(s_client_t *c)
{
    for (size_t i = 0; i < c->type_count; i++)
        free(c->types[i]);
    free(c->buf);
    free(c);
}

static size_t s_unsent(const s_client_t *c)
{
    return c->len - c->off;
}

static bool s_wants(const s_client_t *c, const char *type, const char *ce_type)
{
    if (c->type_count == 0)
        return true;
    for (size_t i = 0; i < c->type_count; i++) {
        size_t n = strlen(c->types[i]);
        if ((type && strncmp(type, c->types[i], n) == 0) ||
            (ce_type && strncmp(ce_type, c->types[i], n) == 0))
            return true;
    }
    return false;
}

/* ---- frames ------------------------------------------------------------------------------- */

typedef struct {
    char *text; /* "id: ..\nevent: ..\ndata: ..\n\n" */
    size_t len;
    char ce_type[SN_CLOUDEVENTS_TYPE_MAX];
} s_frame_t;

/* The SSE frame of journal entry @id holding @env, or false if @env is NULL. */
static bool s_frame(gateway_sse_t *self, const char *id, const sn_envelope_t *env, s_frame_t *f)
{
    if (!env || !env->type || !env->id)
        return false;
    sn_cloudevents_opts_t opts = {.sequence = id, .api_base = self->gw->api_base};
    char *json = sn_cloudevents_dumps(env, &opts);
    sn_cloudevents_type(env, f->ce_type, sizeof f->ce_type);
    f->text = sn_strdupf("id: %s\nevent: %s\ndata: %s\n\n", id, f->ce_type, json);
    f->len = strlen(f->text);
    free(json);
    return true;
}

static char *s_gap_frame(const char *requested, const char *first)
{
    char ts[32];
    sn_cloudevents_time(sn_wall_ms(), ts, sizeof ts);
    char *id = sn_strdupf("gap-%s", requested);
    json_t *ce = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}}", "specversion",
                           SN_CLOUDEVENTS_SPECVERSION, "id", id, "source", "/sentinel/gateway",
                           "type", "dev.sentinel.gap", "time", ts, "datacontenttype",
                           "application/json", "data", "requestedId", requested, "firstId", first);
    free(id);
    SN_ASSERT(ce);
    char *json = json_dumps(ce, JSON_COMPACT);
    json_decref(ce);
    char *text = sn_strdupf("event: gap\ndata: %s\n\n", json);
    free(json);
    return text;
}

/* ---- the feeder --------------------------------------------------------------------------- */

static bool s_should_quit(gateway_sse_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool quit = self->quit;
    pthread_mutex_unlock(&self->mu);
    return quit;
}

/* Redis command on the events stream; the reply or NULL. */
static redisReply *s_stream_cmd(gateway_sse_t *self, const char *cmd, const char *a, const char *b,
                                int count)
{
    char *key = sn_strdupf("%s%s", sn_redis_ns(self->gw->redis), SN_JOURNAL_STREAM);
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    const char *argv[] = {cmd, key, a, b, "COUNT", n};
    redisReply *reply = NULL;
    sn_rc_t rc = sn_redis_cmd(self->gw->redis, SN_REDIS_MAIN, GATEWAY_REDIS_TIMEOUT_MS, &reply, 6,
                              argv, NULL);
    free(key);
    if (rc != SN_OK)
        return NULL;
    if (reply->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

/* Starts the journal reader after the newest entry, so the feeder knows its position. */
static void s_start_reader(gateway_sse_t *self)
{
    redisReply *r = s_stream_cmd(self, "XREVRANGE", "+", "-", 1);
    if (!r)
        return;
    const char *newest = NULL;
    if (r->elements > 0 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements >= 1 && r->element[0]->element[0]->type == REDIS_REPLY_STRING)
        newest = r->element[0]->element[0]->str;
    sn_strlcpy(self->pos, newest ? newest : "0-0", sizeof self->pos);
    freeReplyObject(r);
    const sn_config_t *cfg = self->gw->cfg;
    sn_redis_opts_t ropts = {.unix_path = cfg->redis.unix_path,
                             .host = cfg->redis.host,
                             .port = cfg->redis.port,
                             .namespace_ = cfg->namespace_,
                             .timeout_ms = cfg->redis.timeout_ms,
                             .name = "sse"};
    sn_journal_reader_opts_t o = {.redis = &ropts, .cursor = newest ? self->pos : "0"};
    self->reader = sn_journal_reader_new(&o);
    if (self->reader)
        sn_info("gateway", "event feeder started after=%s", self->pos);
}

/* Activates new streams: the retry hint, then live (no cursor) or catch-up. */
static void s_activate(gateway_sse_t *self)
{
    static const char hello[] = "retry: 3000\n\n";
    pthread_mutex_lock(&self->mu);
    for (s_client_t *c = self->clients; c; c = c->next) {
        if (c->is_active || c->is_gone)
            continue;
        c->is_active = true;
        s_append(c, hello, sizeof hello - 1);
        if (!c->has_cursor) {
            sn_strlcpy(c->last_id, self->pos, sizeof c->last_id);
            c->is_live = true;
        }
        s_wake(c);
    }
    pthread_mutex_unlock(&self->mu);
}

static void s_fan_out(gateway_sse_t *self, const sn_journal_entry_t *e)
{
    if (e->is_gap) {
        const char *first = e->env && e->env->body_case == SENTINEL__V1__ENVELOPE__BODY_GAP &&
                                    e->env->gap && e->env->gap->first_id
                                ? e->env->gap->first_id
                                : "";
        sn_warn("gateway", "the event feeder lost entries after=%s first_kept=%s", self->pos,
                first);
        char *text = s_gap_frame(self->pos, first);
        pthread_mutex_lock(&self->mu);
        for (s_client_t *c = self->clients; c; c = c->next)
            if (c->is_live) {
                s_append(c, text, strlen(text));
                s_wake(c);
            }
        pthread_mutex_unlock(&self->mu);
        free(text);
        return;
    }
    s_frame_t f = {0};
    bool has_frame = s_frame(self, e->id, e->env, &f);
    pthread_mutex_lock(&self->mu);
    for (s_client_t *c = self->clients; c && has_frame; c = c->next) {
        if (!c->is_live || c->is_gone || sn_journal_id_cmp(e->id, c->last_id) <= 0)
            continue;
        if (s_unsent(c) > S_BUF_HIGH) {
            c->is_live = false; /* too slow: it catches up from Redis once drained */
            continue;
        }
        if (s_wants(c, e->type, f.ce_type)) {
            s_append(c, f.text, f.len);
            s_wake(c);
        }
        sn_strlcpy(c->last_id, e->id, sizeof c->last_id);
    }
    pthread_mutex_unlock(&self->mu);
    free(f.text);
    sn_strlcpy(self->pos, e->id, sizeof self->pos);
}

/* One XRANGE batch for one stream that is behind. Runs Redis calls without the mutex;
 * only this thread changes last_id and is_live, so the copy stays valid. */
static void s_catch_up_one(gateway_sse_t *self, s_client_t *c)
{
    pthread_mutex_lock(&self->mu);
    char from[SN_JOURNAL_ID_MAX];
    sn_strlcpy(from, c->last_id, sizeof from);
    bool check_gap = c->has_cursor;
    c->has_cursor = false;
    pthread_mutex_unlock(&self->mu);

    bool is_zero = strcmp(from, "0") == 0 || strcmp(from, "0-0") == 0;
    if (check_gap && !is_zero) {
        redisReply *r = s_stream_cmd(self, "XRANGE", "-", "+", 1);
        if (!r) {
            pthread_mutex_lock(&self->mu);
            c->has_cursor = true; /* Redis did not answer: try again next round */
            pthread_mutex_unlock(&self->mu);
            return;
        }
        if (r->elements > 0 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements >= 1 && r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
            sn_journal_id_cmp(from, r->element[0]->element[0]->str) < 0) {
            char *text = s_gap_frame(from, r->element[0]->element[0]->str);
            sn_info("gateway", "event stream resumes before the retention requested=%s first=%s",
                    from, r->element[0]->element[0]->str);
            pthread_mutex_lock(&self->mu);
            s_append(c, text, strlen(text));
            s_wake(c);
            pthread_mutex_unlock(&self->mu);
            free(text);
        }
        freeReplyObject(r);
    }
    char start[SN_JOURNAL_ID_MAX + 1];
    snprintf(start, sizeof start, "%s%s", is_zero ? "" : "(", is_zero ? "-" : from);
    bool is_done = sn_journal_id_cmp(from, self->pos) >= 0 && !is_zero;
    redisReply *r = NULL;
    if (!is_done && strcmp(self->pos, "0-0") != 0) {
        r = s_stream_cmd(self, "XRANGE", start, self->pos, S_CATCHUP_BATCH);
        if (!r)
            return; /* next round */
    } else {
        is_done = true;
    }
    size_t got = r ? r->elements : 0;
    for (size_t i = 0; i < got; i++) {
        redisReply *item = r->element[i];
        if (item->type != REDIS_REPLY_ARRAY || item->elements < 2 ||
            item->element[0]->type != REDIS_REPLY_STRING ||
            item->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const char *id = item->element[0]->str;
        redisReply *fields = item->element[1];
        const char *type = NULL;
        const redisReply *raw = NULL;
        for (size_t k = 0; k + 1 < fields->elements; k += 2) {
            if (fields->element[k]->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(fields->element[k]->str, "type") == 0)
                type = fields->element[k + 1]->str;
            else if (strcmp(fields->element[k]->str, "env") == 0)
                raw = fields->element[k + 1];
        }
        sn_envelope_t *env = raw && raw->type == REDIS_REPLY_STRING
                                 ? sn_envelope_unpack(raw->str, raw->len, SN_MAX_FRAME_BYTES, NULL)
                                 : NULL;
        s_frame_t f = {0};
        bool has_frame = s_frame(self, id, env, &f);
        pthread_mutex_lock(&self->mu);
        if (has_frame && s_wants(c, type, f.ce_type))
            s_append(c, f.text, f.len);
        sn_strlcpy(c->last_id, id, sizeof c->last_id);
        pthread_mutex_unlock(&self->mu);
        free(f.text);
        sn_envelope_free(&env);
    }
    if (r && got < S_CATCHUP_BATCH)
        is_done = true;
    if (r && got > 0 && strcmp(r->element[got - 1]->element[0]->str, self->pos) == 0)
        is_done = true;
    if (r)
        freeReplyObject(r);
    pthread_mutex_lock(&self->mu);
    if (is_done) {
        /* Everything up to the feeder's position is queued: live from here. */
        if (sn_journal_id_cmp(c->last_id, self->pos) < 0 && strcmp(self->pos, "0-0") != 0)
            sn_strlcpy(c->last_id, self->pos, sizeof c->last_id);
        c->is_live = true;
    }
    s_wake(c);
    pthread_mutex_unlock(&self->mu);
}

static void s_catch_up(gateway_sse_t *self)
{
    for (;;) {
        s_client_t *todo = NULL;
        pthread_mutex_lock(&self->mu);
        for (s_client_t *c = self->clients; c && !todo; c = c->next)
            if (c->is_active && !c->is_live && !c->is_gone && !c->is_closing &&
                s_unsent(c) < S_BUF_CATCHUP)
                todo = c;
        pthread_mutex_unlock(&self->mu);
        if (!todo)
            return;
        /* Only this thread frees clients, so @todo stays valid. */
        s_catch_up_one(self, todo);
        pthread_mutex_lock(&self->mu);
        bool again = !todo->is_live && s_unsent(todo) < S_BUF_CATCHUP;
        pthread_mutex_unlock(&self->mu);
        if (again)
            return; /* Redis did not answer or more to read: next round, others first */
    }
}

/* Keep-alive comments, and frees the streams MHD let go of. */
static void s_housekeeping(gateway_sse_t *self)
{
    static const char ka[] = ":ka\n\n";
    int64_t now = sn_mono_ms();
    pthread_mutex_lock(&self->mu);
    s_client_t **pp = &self->clients;
    while (*pp) {
        s_client_t *c = *pp;
        if (c->is_gone) {
            *pp = c->next;
            s_client_free(c);
            continue;
        }
        if (c->is_active && now - c->last_write_ms >= self->gw->keepalive_ms) {
            s_append(c, ka, sizeof ka - 1);
            s_wake(c);
        }
        pp = &c->next;
    }
    pthread_mutex_unlock(&self->mu);
}

static void *s_feeder(void *arg)
{
    gateway_sse_t *self = arg;
    while (!s_should_quit(self)) {
        if (!self->reader) {
            s_start_reader(self);
            if (!self->reader) {
                struct timespec ts = {0, 200 * 1000 * 1000};
                nanosleep(&ts, NULL); /* Redis is down: retry at a slow pace */
                continue;
            }
        }
        s_activate(self);
        for (int i = 0; i < S_ENTRIES_PER_ROUND; i++) {
            sn_journal_entry_t e;
            if (sn_journal_reader_next(self->reader, i == 0 ? S_READ_WAIT_MS : 0, &e) != SN_OK)
                break;
            s_fan_out(self, &e);
            sn_journal_entry_fini(&e);
        }
        s_catch_up(self);
        s_housekeeping(self);
    }
    return NULL;
}
