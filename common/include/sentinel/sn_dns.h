/* DNS checks through c-ares: the A and AAAA addresses of a name, asked of configured
 * resolvers ("ip:port") or of the system's, within a hard timeout. Used by verification
 * (deployment-watcher) to see whether a name already resolves to the expected address.
 * Each call builds and destroys its own c-ares channel, so any thread may call it. */
#ifndef SN_DNS_H
#define SN_DNS_H

#include "sentinel/sn_common.h"

#define SN_DNS_MAX_ADDRS 16
#define SN_DNS_ADDR_MAX 46 /* INET6_ADDRSTRLEN */
#define SN_DNS_ERROR_MAX 128

/* What a lookup found (plain value struct, the caller's storage). */
typedef struct {
    char addrs[SN_DNS_MAX_ADDRS][SN_DNS_ADDR_MAX]; /* textual, A records first as returned */
    size_t count;
    char error[SN_DNS_ERROR_MAX]; /* why the lookup failed, else "" */
} sn_dns_result_t;

/* Resolves A and AAAA of @name. @resolvers: NULL-terminated "ip", "ip:port" or
 * "[ipv6]:port" strings (NULL or empty: the system's resolv.conf and hosts file); with
 * resolvers, only DNS is asked (no hosts file, no search domains). Returns within about
 * @timeout_ms (> 0). *out is zeroed first.
 * SN_OK: at least one address; SN_DECLINED: the name does not exist or has no A/AAAA
 * record; SN_AGAIN: timeout, refused, server failure; SN_ERROR: bad input (an empty or
 * malformed name, a resolver that is not ip[:port]). out->error says why. Any thread. */
SN_NODISCARD sn_rc_t sn_dns_resolve(const char *name, const char *const *resolvers, int timeout_ms,
                                    sn_dns_result_t *out);

/* True if @result holds @addr (compared as addresses: "::1" equals "0:0::1"). */
bool sn_dns_result_has(const sn_dns_result_t *result, const char *addr);

/* True if @resolver is "ip", "ip:port" or "[ipv6]:port" with a port in 1..65535. */
bool sn_dns_resolver_is_valid(const char *resolver);

#endif
