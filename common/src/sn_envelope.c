/* Envelope stamping and checked decoding. */
#include "sentinel/sn_envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sn_source_init(sn_source_t *self, const char *role, const char *instance)
{
    SN_ASSERT(self && role);
    memset(self, 0, sizeof *self);
    snprintf(self->name, sizeof self->name, "sentinel/%s/%s", role, instance ? instance : "0");
    self->incarnation = sn_random_u64();
}

uint64_t sn_source_next_seq(sn_source_t *self)
{
    return __atomic_add_fetch(&self->seq, 1, __ATOMIC_SEQ_CST);
}

void sn_envelope_stamp(sn_envelope_t *env, sn_source_t *src, const char *type,
                       char id_buf[SN_ID_LEN + 1])
{
    SN_ASSERT(env && src && type);
    sentinel__v1__envelope__init(env);
    sn_id_new(id_buf);
    env->id = id_buf;
    env->source = src->name;
    env->type = (char *)type;
    env->time_unix_ms = sn_wall_ms();
    env->incarnation = src->incarnation;
    env->seq = sn_source_next_seq(src);
}

uint8_t *sn_envelope_pack(const sn_envelope_t *env, size_t *len)
{
    size_t n = sentinel__v1__envelope__get_packed_size(env);
    uint8_t *buf = sn_malloc(n);
    size_t w = sentinel__v1__envelope__pack(env, buf);
    SN_ASSERT(w == n);
    *len = n;
    return buf;
}

sn_envelope_t *sn_envelope_unpack(const void *data, size_t len, size_t max_len, const char **why)
{
    const char *reason = NULL;
    sn_envelope_t *env = NULL;
    if (!data || len == 0) {
        reason = "empty";
        goto out;
    }
    if (len > max_len) {
        reason = "oversized";
        goto out;
    }
    env = sentinel__v1__envelope__unpack(NULL, len, data);
    if (!env) {
        reason = "unparsable";
        goto out;
    }
    if (!sn_id_is_valid(env->id)) {
        reason = "bad-id";
    } else if (!env->type || !*env->type || strlen(env->type) > 255) {
        reason = "bad-type";
    }
    if (reason)
        sn_envelope_free(&env);
out:
    if (why)
        *why = reason;
    return env;
}

void sn_envelope_free(sn_envelope_t **env_p)
{
    if (env_p && *env_p) {
        sentinel__v1__envelope__free_unpacked(*env_p, NULL);
        *env_p = NULL;
    }
}

void sn_envelope_add_label(sn_envelope_t *env, const char *key, const char *value)
{
    size_t n = env->n_labels;
    env->labels = sn_realloc(env->labels, (n + 1) * sizeof *env->labels);
    Sentinel__V1__Envelope__LabelsEntry *e = sn_malloc(sizeof *e);
    sentinel__v1__envelope__labels_entry__init(e);
    e->key = (char *)key;
    e->value = (char *)value;
    env->labels[n] = e;
    env->n_labels = n + 1;
}

void sn_envelope_fini_labels(sn_envelope_t *env)
{
    for (size_t i = 0; i < env->n_labels; i++)
        free(env->labels[i]);
    free(env->labels);
    env->labels = NULL;
    env->n_labels = 0;
}

const char *sn_envelope_label(const sn_envelope_t *env, const char *key)
{
    for (size_t i = 0; i < env->n_labels; i++)
        if (env->labels[i]->key && strcmp(env->labels[i]->key, key) == 0)
            return env->labels[i]->value;
    return NULL;
}
