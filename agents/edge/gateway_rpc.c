/* The gateway's service calls: one thread owns a broker client (sn_rpc) of its own,
 * because the runtime's sn_ctx_call is loop-thread only and HTTP handlers run on MHD
 * threads. Handlers queue a call (mutex + eventfd) and suspend their connection; this
 * thread sends it with its deadline, and on the REPLY, the NAK or the local deadline
 * (deadline + grace) fills the result and runs the call's done callback, which resumes
 * the connection. Every call is answered exactly once, also at shutdown. */
#include "gateway.h"

#include <czmq.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "sentinel/sn_log.h"
#include "sentinel/sn_rpc.h"

#define S_GRACE_MS 1000
#define S_POLL_MAX_MS 200

struct gateway_rpc {
    const sn_config_t *cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int efd;
    bool quit;       /* under mu */
    int start_state; /* under mu: 0 starting, 1 up, -1 failed */
    gateway_call_t *head, *tail;
    /* thread-owned */
    sn_rpc_t *rpc;
    gateway_call_t *outstanding;
    sn_curve_keys_t curve;
    char curve_public[41];
    char curve_secret[41];
    bool has_curve;
};

static void *s_thread(void *arg);
static void s_finish(gateway_call_t *call, sn_rc_t rc, sn_nak_reason_t nak);

gateway_rpc_t *gateway_rpc_new(const sn_config_t *cfg)
{
    gateway_rpc_t *self = sn_calloc(1, sizeof *self);
    self->cfg = cfg;
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    const sn_broker_config_t *b = &cfg->broker;
    if (b->curve) {
        zcert_t *cert = b->client_cert_file ? zcert_load(b->client_cert_file) : NULL;
        if (!cert || !b->server_public_key) {
            sn_error("gateway", "curve is on but the client certificate cannot be loaded");
            zcert_destroy(&cert);
            gateway_rpc_destroy(&self);
            return NULL;
        }
        sn_strlcpy(self->curve_public, zcert_public_txt(cert), sizeof self->curve_public);
        sn_strlcpy(self->curve_secret, zcert_secret_txt(cert), sizeof self->curve_secret);
        zcert_destroy(&cert);
        self->curve.server_public = b->server_public_key;
        self->curve.public_key = self->curve_public;
        self->curve.secret_key = self->curve_secret;
        self->has_curve = true;
    }
    if (self->efd < 0 || pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        sn_error("gateway", "cannot start the rpc thread: %s", strerror(errno));
        if (self->efd >= 0)
            close(self->efd);
        self->efd = -1;
        pthread_mutex_destroy(&self->mu);
        pthread_cond_destroy(&self->cv);
        free(self);
        return NULL;
    }
    pthread_mutex_lock(&self->mu);
    while (self->start_state == 0)
        pthread_cond_wait(&self->cv, &self->mu);
    bool ok = self->start_state > 0;
    pthread_mutex_unlock(&self->mu);
    if (!ok) {
        gateway_rpc_destroy(&self);
        return NULL;
    }
    return self;
}

void gateway_rpc_destroy(gateway_rpc_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_rpc_t *self = *self_p;
    if (self->efd >= 0) {
        pthread_mutex_lock(&self->mu);
        self->quit = true;
        pthread_mutex_unlock(&self->mu);
        uint64_t one = 1;
        if (write(self->efd, &one, sizeof one) < 0) {
            /* the counter is saturated: the thread is awake anyway */
        }
        pthread_join(self->thread, NULL);
        close(self->efd);
        pthread_mutex_destroy(&self->mu);
        pthread_cond_destroy(&self->cv);
    }
    sn_crypto_cleanse(self->curve_secret, sizeof self->curve_secret);
    free(self);
    *self_p = NULL;
}

void gateway_rpc_submit(gateway_rpc_t *self, gateway_call_t *call)
{
    call->next = NULL;
    pthread_mutex_lock(&self->mu);
    bool quit = self->quit;
    if (!quit) {
        if (self->tail)
            self->tail->next = call;
        else
            self->head = call;
        self->tail = call;
    }
    pthread_mutex_unlock(&self->mu);
    if (quit) {
        s_finish(call, SN_AGAIN, SN_NAK_NONE);
        return;
    }
    uint64_t one = 1;
    if (write(self->efd, &one, sizeof one) < 0) {
        /* saturated: a wake-up is pending */
    }
}

void gateway_call_free(gateway_call_t **call_p)
{
    if (!call_p || !*call_p)
        return;
    gateway_call_t *call = *call_p;
    free(call->service);
    free(call->body);
    free(call->reply);
    free(call);
    *call_p = NULL;
}

/* ---- the thread ---------------------------------------------------------------------------- */

static void s_finish(gateway_call_t *call, sn_rc_t rc, sn_nak_reason_t nak)
{
    call->rc = rc;
    call->nak = nak;
    __atomic_store_n(&call->is_done, true, __ATOMIC_RELEASE);
    if (call->done)
        call->done(call, call->arg);
}

static void s_send_queued(gateway_rpc_t *self)
{
    pthread_mutex_lock(&self->mu);
    gateway_call_t *list = self->head;
    self->head = self->tail = NULL;
    pthread_mutex_unlock(&self->mu);
    while (list) {
        gateway_call_t *call = list;
        list = list->next;
        call->next = NULL;
        int deadline = call->deadline_ms > 0 ? call->deadline_ms : GATEWAY_CALL_DEADLINE_MS;
        sn_rc_t rc = sn_rpc_send(self->rpc, call->service, call->body, call->body_len,
                                 (uint32_t)deadline, 1, &call->request_id);
        if (rc != SN_OK) {
            sn_warn("gateway", "cannot send service=%s: %s", call->service, sn_rc_str(rc));
            s_finish(call, rc == SN_ERROR ? SN_DECLINED : SN_AGAIN,
                     rc == SN_ERROR ? SN_NAK_INVALID : SN_NAK_OVERLOADED);
            continue;
        }
        call->local_deadline_ms = sn_mono_ms() + deadline + S_GRACE_MS;
        call->next = self->outstanding;
        self->outstanding = call;
    }
}

static gateway_call_t *s_take(gateway_rpc_t *self, uint64_t request_id)
{
    for (gateway_call_t **pp = &self->outstanding; *pp; pp = &(*pp)->next) {
        if ((*pp)->request_id == request_id) {
            gateway_call_t *call = *pp;
            *pp = call->next;
            call->next = NULL;
            return call;
        }
    }
    return NULL;
}

static void s_receive(gateway_rpc_t *self)
{
    sn_rpc_result_t res;
    while (sn_rpc_recv(self->rpc, &res) == SN_OK) {
        gateway_call_t *call = s_take(self, res.request_id);
        if (call) {
            if (res.is_nak) {
                s_finish(call, SN_DECLINED, res.reason);
            } else {
                call->reply = res.body;
                call->reply_len = res.body_len;
                res.body = NULL;
                s_finish(call, SN_OK, SN_NAK_NONE);
            }
        }
        sn_rpc_result_fini(&res);
    }
}

static void s_expire(gateway_rpc_t *self, int64_t now)
{
    gateway_call_t **pp = &self->outstanding;
    while (*pp) {
        gateway_call_t *call = *pp;
        if (now < call->local_deadline_ms) {
            pp = &call->next;
            continue;
        }
        *pp = call->next;
        call->next = NULL;
        (void)sn_rpc_cancel(self->rpc, call->request_id, 1);
        s_finish(call, SN_AGAIN, SN_NAK_NONE);
    }
}

static void *s_thread(void *arg)
{
    gateway_rpc_t *self = arg;
    self->rpc = sn_rpc_new(self->cfg->broker.rpc, self->has_curve ? &self->curve : NULL);
    if (self->rpc) {
        sn_rpc_set_heartbeat(self->rpc, self->cfg->broker.heartbeat_ms,
                             self->cfg->broker.heartbeat_liveness);
        sn_rpc_set_max_frame(self->rpc, self->cfg->broker.max_frame_bytes);
    }
    pthread_mutex_lock(&self->mu);
    self->start_state = self->rpc ? 1 : -1;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    if (!self->rpc)
        return NULL;
    for (;;) {
        pthread_mutex_lock(&self->mu);
        bool quit = self->quit;
        pthread_mutex_unlock(&self->mu);
        if (quit)
            break;
        int64_t now = sn_mono_ms();
        int timeout = sn_rpc_timeout_ms(self->rpc);
        if (timeout < 0 || timeout > S_POLL_MAX_MS)
            timeout = S_POLL_MAX_MS;
        for (gateway_call_t *c = self->outstanding; c; c = c->next)
            if (c->local_deadline_ms - now < timeout)
                timeout = c->local_deadline_ms - now > 0 ? (int)(c->local_deadline_ms - now) : 0;
        zmq_pollitem_t items[2] = {
            {.socket = sn_rpc_socket(self->rpc), .events = ZMQ_POLLIN},
            {.fd = self->efd, .events = ZMQ_POLLIN},
        };
        if (zmq_poll(items, 2, timeout) > 0 && (items[1].revents & ZMQ_POLLIN)) {
            uint64_t n;
            if (read(self->efd, &n, sizeof n) < 0) {
                /* EAGAIN: nothing to drain */
            }
        }
        s_send_queued(self);
        s_receive(self);
        s_expire(self, sn_mono_ms());
    }
    /* Shutdown: everything still queued or in flight is answered "unavailable". */
    pthread_mutex_lock(&self->mu);
    gateway_call_t *queued = self->head;
    self->head = self->tail = NULL;
    pthread_mutex_unlock(&self->mu);
    while (queued) {
        gateway_call_t *call = queued;
        queued = call->next;
        call->next = NULL;
        s_finish(call, SN_AGAIN, SN_NAK_NONE);
    }
    while (self->outstanding) {
        gateway_call_t *call = self->outstanding;
        self->outstanding = call->next;
        call->next = NULL;
        (void)sn_rpc_cancel(self->rpc, call->request_id, 1);
        s_finish(call, SN_AGAIN, SN_NAK_NONE);
    }
    sn_rpc_destroy(&self->rpc);
    return NULL;
}
