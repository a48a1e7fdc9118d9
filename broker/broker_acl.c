/* Broker permissions. Matching rules (docs/protocol.md §6): publish grants are exact
 * topics or prefixes ending in '*'; a subscription is allowed when the requested prefix
 * starts with a granted prefix; call and serve grants are exact names, '*' for any, or a
 * prefix ending in '*'. Without CURVE every peer is "anonymous", allowed everything unless
 * a principal of that name is configured. */
#include "broker_acl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    char *key;
    char **publish, **subscribe, **call, **serve;
} s_principal_t;

struct broker_acl {
    bool curve;
    s_principal_t *principals;
    size_t count;
    char **revoked;
    size_t revoked_count;
};

static char **s_strv_dup(char **v);
static void s_strv_free(char **v);
static const s_principal_t *s_find(broker_acl_t *self, const char *principal);
static bool s_name_match(char **grants, const void *name, size_t len);
static bool s_allowed(broker_acl_t *self, const char *principal, int which, const void *s,
                      size_t len);

broker_acl_t *broker_acl_new(const sn_broker_config_t *cfg)
{
    SN_ASSERT(cfg);
    broker_acl_t *self = sn_calloc(1, sizeof *self);
    self->curve = cfg->curve;
    self->count = cfg->principal_count;
    self->principals = sn_calloc(self->count ? self->count : 1, sizeof *self->principals);
    for (size_t i = 0; i < self->count; i++) {
        const sn_principal_config_t *p = &cfg->principals[i];
        s_principal_t *d = &self->principals[i];
        d->name = sn_strdup(p->name ? p->name : "");
        d->key = sn_strdup(p->public_key ? p->public_key : "");
        d->publish = s_strv_dup(p->publish);
        d->subscribe = s_strv_dup(p->subscribe);
        d->call = s_strv_dup(p->call);
        d->serve = s_strv_dup(p->serve);
    }
    self->revoked = s_strv_dup(cfg->revoked);
    while (self->revoked[self->revoked_count])
        self->revoked_count++;
    return self;
}

void broker_acl_destroy(broker_acl_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_acl_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++) {
        s_principal_t *d = &self->principals[i];
        free(d->name);
        free(d->key);
        s_strv_free(d->publish);
        s_strv_free(d->subscribe);
        s_strv_free(d->call);
        s_strv_free(d->serve);
    }
    free(self->principals);
    s_strv_free(self->revoked);
    free(self);
    *self_p = NULL;
}

const char *broker_acl_principal_for_key(broker_acl_t *self, const char *z85)
{
    if (!z85)
        return NULL;
    for (size_t i = 0; i < self->revoked_count; i++)
        if (strcmp(self->revoked[i], z85) == 0)
            return NULL;
    for (size_t i = 0; i < self->count; i++)
        if (strcmp(self->principals[i].key, z85) == 0)
            return self->principals[i].name;
    return NULL;
}

void broker_acl_revoke(broker_acl_t *self, const char *z85)
{
    SN_ASSERT(self && z85);
    self->revoked = sn_realloc(self->revoked, (self->revoked_count + 2) * sizeof(char *));
    self->revoked[self->revoked_count++] = sn_strdup(z85);
    self->revoked[self->revoked_count] = NULL;
}

bool broker_acl_is_revoked(broker_acl_t *self, const char *principal)
{
    if (!self->curve)
        return false;
    const s_principal_t *p = s_find(self, principal);
    if (!p)
        return true; /* a CURVE peer we cannot map is never trusted */
    for (size_t i = 0; i < self->revoked_count; i++)
        if (strcmp(self->revoked[i], p->key) == 0)
            return true;
    return false;
}

bool broker_acl_may_publish(broker_acl_t *self, const char *principal, const void *topic,
                            size_t len)
{
    return s_allowed(self, principal, 0, topic, len);
}

bool broker_acl_may_subscribe(broker_acl_t *self, const char *principal, const void *prefix,
                              size_t len)
{
    return s_allowed(self, principal, 1, prefix, len);
}

bool broker_acl_may_call(broker_acl_t *self, const char *principal, const void *service, size_t len)
{
    return s_allowed(self, principal, 2, service, len);
}

bool broker_acl_may_serve(broker_acl_t *self, const char *principal, const void *service,
                          size_t len)
{
    return s_allowed(self, principal, 3, service, len);
}

bool broker_endpoint_is_loopback(const char *ep)
{
    if (!ep)
        return false;
    if (strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0)
        return true;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    const char *host = ep + 6;
    if (strncmp(host, "127.", 4) == 0) {
        /* 127.a.b.c followed by ':' only (no interface names such as 127.0.0.1;eth0). */
        const char *colon = strchr(host, ':');
        if (!colon)
            return false;
        for (const char *p = host; p < colon; p++)
            if (!((*p >= '0' && *p <= '9') || *p == '.'))
                return false;
        return true;
    }
    if (strncmp(host, "[::1]:", 6) == 0)
        return true;
    if (strncmp(host, "localhost:", 10) == 0)
        return true;
    return false;
}

static const s_principal_t *s_find(broker_acl_t *self, const char *principal)
{
    for (size_t i = 0; i < self->count; i++)
        if (strcmp(self->principals[i].name, principal) == 0)
            return &self->principals[i];
    return NULL;
}

static bool s_allowed(broker_acl_t *self, const char *principal, int which, const void *s,
                      size_t len)
{
    const s_principal_t *p = s_find(self, principal ? principal : "");
    if (!p)
        return !self->curve && strcmp(principal ? principal : "", "anonymous") == 0;
    if (which == 1) {
        /* The requested prefix must start with a granted prefix. */
        for (char **g = p->subscribe; g && *g; g++) {
            size_t gl = strlen(*g);
            if (gl <= len && memcmp(*g, s, gl) == 0)
                return true;
        }
        return false;
    }
    char **grants = which == 0 ? p->publish : which == 2 ? p->call : p->serve;
    return s_name_match(grants, s, len);
}

static bool s_name_match(char **grants, const void *name, size_t len)
{
    for (char **g = grants; g && *g; g++) {
        size_t gl = strlen(*g);
        if (gl > 0 && (*g)[gl - 1] == '*') {
            if (gl - 1 <= len && memcmp(*g, name, gl - 1) == 0)
                return true;
        } else if (gl == len && memcmp(*g, name, len) == 0) {
            return true;
        }
    }
    return false;
}

static char **s_strv_dup(char **v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = sn_calloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = sn_strdup(v[i]);
    return out;
}

static void s_strv_free(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}
