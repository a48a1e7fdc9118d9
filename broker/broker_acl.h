/* Who may do what on the broker (ARCHITECTURE §9): principals from the config, each with a
 * CURVE public key and grants (publish topics, subscribe prefixes, call and serve
 * services), plus the deny list of revoked keys. Owned and used by the broker thread; built
 * by the caller of broker_server_new. */
#ifndef BROKER_ACL_H
#define BROKER_ACL_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"

typedef struct broker_acl broker_acl_t;

/* Deep-copies the principals and revoked keys of @cfg. @curve tells whether peers are
 * identified by CURVE keys (deny by default) or are all "anonymous". */
broker_acl_t *broker_acl_new(const sn_broker_config_t *cfg);
/* Frees; NULL-safe; nulls *self_p. */
void broker_acl_destroy(broker_acl_t **self_p);

/* The principal name for a Z85 public key (borrowed), or NULL if unknown or revoked. */
const char *broker_acl_principal_for_key(broker_acl_t *self, const char *z85);
/* Adds @z85 to the deny list (copied). */
void broker_acl_revoke(broker_acl_t *self, const char *z85);
/* True if the principal's key is on the deny list (always false without CURVE). */
bool broker_acl_is_revoked(broker_acl_t *self, const char *principal);

/* Permission checks for @principal (NUL-terminated) on a byte string. */
bool broker_acl_may_publish(broker_acl_t *self, const char *principal, const void *topic,
                            size_t len);
bool broker_acl_may_subscribe(broker_acl_t *self, const char *principal, const void *prefix,
                              size_t len);
bool broker_acl_may_call(broker_acl_t *self, const char *principal, const void *service,
                         size_t len);
bool broker_acl_may_serve(broker_acl_t *self, const char *principal, const void *service,
                          size_t len);

/* True if @endpoint is loopback-only: tcp:// on 127.0.0.0/8, [::1] or localhost, or ipc://,
 * inproc://. */
bool broker_endpoint_is_loopback(const char *endpoint);

#endif
