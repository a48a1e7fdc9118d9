/* Envelopes: stamping the CloudEvents attributes (id, source, time, incarnation, seq)
 * and the only sanctioned way to decode one (size check first, checks after). */
#ifndef SN_ENVELOPE_H
#define SN_ENVELOPE_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_id.h"
#include "sentinel/v1/envelope.pb-c.h"

typedef Sentinel__V1__Envelope sn_envelope_t;

/* Largest frame any Sentinel socket accepts (ZMQ_MAXMSGSIZE) and largest event body. */
#define SN_MAX_FRAME_BYTES (1024 * 1024)
#define SN_MAX_EVENT_BYTES (64 * 1024)
#define SN_SOURCE_MAX 160

/* Who publishes: "sentinel/<role>/<instance>", a random incarnation per process start
 * and a sequence counter. A plain value struct; sn_source_next_seq is thread-safe. */
typedef struct {
    char name[SN_SOURCE_MAX];
    uint64_t incarnation;
    uint64_t seq; /* last sequence number handed out; accessed atomically */
} sn_source_t;

void sn_source_init(sn_source_t *self, const char *role, const char *instance);
uint64_t sn_source_next_seq(sn_source_t *self);

/* Initialises @env (caller's storage) and stamps id (written into @id_buf, which must
 * outlive @env), source, type, time, incarnation and the next seq. @type is borrowed. */
void sn_envelope_stamp(sn_envelope_t *env, sn_source_t *src, const char *type,
                       char id_buf[SN_ID_LEN + 1]);

/* Packs @env into a fresh heap buffer (caller frees); *len receives the size. */
uint8_t *sn_envelope_pack(const sn_envelope_t *env, size_t *len);

/* Decodes @len bytes. Refuses (NULL) an empty or larger-than-@max_len input, bytes that
 * do not parse, and an envelope without a valid id or a type. Caller frees the result
 * with sn_envelope_free. @why, if not NULL, receives a static reason on failure. */
sn_envelope_t *sn_envelope_unpack(const void *data, size_t len, size_t max_len, const char **why);

/* Frees an envelope returned by sn_envelope_unpack; NULL-safe, nulls *env_p. */
void sn_envelope_free(sn_envelope_t **env_p);

/* Sets label @key to @value on a stamped (caller-built) envelope. The strings are
 * borrowed; the label array is heap-allocated and freed by sn_envelope_fini_labels. */
void sn_envelope_add_label(sn_envelope_t *env, const char *key, const char *value);
void sn_envelope_fini_labels(sn_envelope_t *env);

/* Returns the value of label @key or NULL. */
const char *sn_envelope_label(const sn_envelope_t *env, const char *key);

#endif
