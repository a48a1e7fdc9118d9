/* DNS lookups with c-ares 1.18: one channel per call, driven by poll() until the answer
 * or the deadline (then cancelled), so a silent resolver never holds a caller. */
#include "sentinel/sn_dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <ares.h>

#include "sentinel/sn_log.h"

#define S_NAME_MAX 253
#define S_MAX_RESOLVERS 8

typedef struct {
    bool is_done;
    int status;
    sn_dns_result_t *out;
} s_lookup_t;

static pthread_once_t s_ares_once = PTHREAD_ONCE_INIT;
static int s_ares_status = ARES_ENOTINITIALIZED;

static void s_ares_init(void);
static bool s_parse_resolver(const char *resolver, char *out, size_t out_len);
static bool s_name_is_valid(const char *name);
static void s_on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res);

sn_rc_t sn_dns_resolve(const char *name, const char *const *resolvers, int timeout_ms,
                       sn_dns_result_t *out)
{
    SN_ASSERT(out);
    memset(out, 0, sizeof *out);
    if (!s_name_is_valid(name)) {
        sn_strlcpy(out->error, "invalid name", sizeof out->error);
        return SN_ERROR;
    }
    if (timeout_ms <= 0) {
        sn_strlcpy(out->error, "no timeout", sizeof out->error);
        return SN_ERROR;
    }
    /* Resolvers as c-ares' "ip:port,[ip6]:port" list. */
    char csv[S_MAX_RESOLVERS * 56] = "";
    size_t nres = 0;
    for (size_t i = 0; resolvers && resolvers[i]; i++) {
        char one[56];
        if (nres == S_MAX_RESOLVERS || !s_parse_resolver(resolvers[i], one, sizeof one)) {
            snprintf(out->error, sizeof out->error, "invalid resolver \"%.40s\"", resolvers[i]);
            return SN_ERROR;
        }
        size_t used = strlen(csv);
        snprintf(csv + used, sizeof csv - used, "%s%s", nres ? "," : "", one);
        nres++;
    }
    pthread_once(&s_ares_once, s_ares_init);
    if (s_ares_status != ARES_SUCCESS) {
        snprintf(out->error, sizeof out->error, "c-ares: %s", ares_strerror(s_ares_status));
        return SN_AGAIN;
    }
    struct ares_options opts;
    memset(&opts, 0, sizeof opts);
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    opts.timeout = timeout_ms / 3 > 100 ? timeout_ms / 3 : 100;
    opts.tries = 3;
    if (nres > 0) {
        /* Only the configured resolvers: no hosts file, no search list. */
        opts.lookups = (char *)"b";
        opts.flags = ARES_FLAG_NOSEARCH;
        mask |= ARES_OPT_LOOKUPS | ARES_OPT_FLAGS;
    }
    ares_channel channel;
    int st = ares_init_options(&channel, &opts, mask);
    if (st != ARES_SUCCESS) {
        snprintf(out->error, sizeof out->error, "c-ares init: %s", ares_strerror(st));
        return SN_AGAIN;
    }
    if (nres > 0 && (st = ares_set_servers_ports_csv(channel, csv)) != ARES_SUCCESS) {
        snprintf(out->error, sizeof out->error, "resolvers: %s", ares_strerror(st));
        ares_destroy(channel);
        return SN_ERROR;
    }
    s_lookup_t lk = {.out = out};
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_flags = ARES_AI_NOSORT;
    ares_getaddrinfo(channel, name, NULL, &hints, s_on_addrinfo, &lk);
    int64_t deadline = sn_mono_ms() + timeout_ms;
    while (!lk.is_done) {
        int64_t left = deadline - sn_mono_ms();
        if (left <= 0) {
            ares_cancel(channel); /* runs the callback with ARES_ECANCELLED */
            break;
        }
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        int bits = ares_getsock(channel, socks, ARES_GETSOCK_MAXNUM);
        struct pollfd pfd[ARES_GETSOCK_MAXNUM];
        nfds_t n = 0;
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            short ev = 0;
            /* ARES_GETSOCK_WRITABLE shifts a signed 1 into the sign bit (UB): do it unsigned. */
            if ((unsigned)bits & (1u << i))
                ev |= POLLIN;
            if ((unsigned)bits & (1u << (i + ARES_GETSOCK_MAXNUM)))
                ev |= POLLOUT;
            if (ev)
                pfd[n++] = (struct pollfd){.fd = socks[i], .events = ev};
        }
        struct timeval maxtv = {left / 1000, (left % 1000) * 1000}, tv;
        struct timeval *tvp = ares_timeout(channel, &maxtv, &tv);
        int wait_ms = (int)(tvp->tv_sec * 1000 + tvp->tv_usec / 1000);
        if (wait_ms <= 0)
            wait_ms = 1;
        int r = poll(pfd, n, wait_ms);
        if (r <= 0) {
            ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
            continue;
        }
        for (nfds_t i = 0; i < n; i++) {
            ares_socket_t rfd =
                pfd[i].revents & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
            ares_socket_t wfd = pfd[i].revents & POLLOUT ? pfd[i].fd : ARES_SOCKET_BAD;
            if (rfd != ARES_SOCKET_BAD || wfd != ARES_SOCKET_BAD)
                ares_process_fd(channel, rfd, wfd);
        }
    }
    ares_destroy(channel);
    if (!lk.is_done)
        lk.status = ARES_ETIMEOUT;
    switch (lk.status) {
    case ARES_SUCCESS:
        if (out->count > 0)
            return SN_OK;
        sn_strlcpy(out->error, "no A or AAAA record", sizeof out->error);
        return SN_DECLINED;
    case ARES_ENOTFOUND:
    case ARES_ENODATA:
        snprintf(out->error, sizeof out->error, "%s", ares_strerror(lk.status));
        return SN_DECLINED;
    case ARES_ECANCELLED:
    case ARES_ETIMEOUT:
        snprintf(out->error, sizeof out->error, "timeout after %d ms", timeout_ms);
        return SN_AGAIN;
    case ARES_EBADNAME:
    case ARES_EBADFAMILY:
    case ARES_EBADFLAGS:
        snprintf(out->error, sizeof out->error, "%s", ares_strerror(lk.status));
        return SN_ERROR;
    default:
        snprintf(out->error, sizeof out->error, "%s", ares_strerror(lk.status));
        return SN_AGAIN;
    }
}

bool sn_dns_result_has(const sn_dns_result_t *result, const char *addr)
{
    if (!result || !addr)
        return false;
    unsigned char want[16], have[16];
    int family = strchr(addr, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(family, addr, want) != 1)
        return false;
    size_t len = family == AF_INET6 ? 16 : 4;
    for (size_t i = 0; i < result->count; i++) {
        int f = strchr(result->addrs[i], ':') ? AF_INET6 : AF_INET;
        if (f == family && inet_pton(f, result->addrs[i], have) == 1 &&
            memcmp(want, have, len) == 0)
            return true;
    }
    return false;
}

bool sn_dns_resolver_is_valid(const char *resolver)
{
    char buf[56];
    return s_parse_resolver(resolver, buf, sizeof buf);
}

/* ---- statics ---------------------------------------------------------------------------- */

static void s_ares_init(void)
{
    s_ares_status = ares_library_init(ARES_LIB_INIT_ALL);
    if (s_ares_status != ARES_SUCCESS)
        sn_error("dns", "ares_library_init failed: %s", ares_strerror(s_ares_status));
}

/* "ip" | "ip:port" | "[ip6]" | "[ip6]:port" | "ip6" -> "ip:port" / "[ip6]:port". */
static bool s_parse_resolver(const char *resolver, char *out, size_t out_len)
{
    if (!resolver || !*resolver || strlen(resolver) > 53)
        return false;
    char host[54];
    const char *port = NULL;
    if (resolver[0] == '[') {
        const char *close = strchr(resolver, ']');
        if (!close || close == resolver + 1)
            return false;
        size_t n = (size_t)(close - resolver - 1);
        memcpy(host, resolver + 1, n);
        host[n] = '\0';
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != '\0')
            return false;
    } else {
        const char *colon = strchr(resolver, ':');
        if (colon && strchr(colon + 1, ':')) {
            sn_strlcpy(host, resolver, sizeof host); /* bare IPv6, default port */
        } else {
            size_t n = colon ? (size_t)(colon - resolver) : strlen(resolver);
            memcpy(host, resolver, n);
            host[n] = '\0';
            if (colon)
                port = colon + 1;
        }
    }
    int64_t p = 53;
    if (port && sn_parse_i64(port, 1, 65535, &p) != SN_OK)
        return false;
    unsigned char bin[16];
    int n;
    if (inet_pton(AF_INET, host, bin) == 1)
        n = snprintf(out, out_len, "%s:%d", host, (int)p);
    else if (inet_pton(AF_INET6, host, bin) == 1)
        n = snprintf(out, out_len, "[%s]:%d", host, (int)p);
    else
        return false;
    return n > 0 && (size_t)n < out_len;
}

static bool s_name_is_valid(const char *name)
{
    if (!name || !*name || strlen(name) > S_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c >= 0x7f)
            return false;
    }
    return true;
}

static void s_on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    s_lookup_t *lk = arg;
    lk->is_done = true;
    lk->status = status;
    if (status == ARES_SUCCESS && res) {
        for (struct ares_addrinfo_node *n = res->nodes; n && lk->out->count < SN_DNS_MAX_ADDRS;
             n = n->ai_next) {
            const void *a = NULL;
            if (n->ai_family == AF_INET)
                a = &((const struct sockaddr_in *)(const void *)n->ai_addr)->sin_addr;
            else if (n->ai_family == AF_INET6)
                a = &((const struct sockaddr_in6 *)(const void *)n->ai_addr)->sin6_addr;
            if (a && inet_ntop(n->ai_family, a, lk->out->addrs[lk->out->count], SN_DNS_ADDR_MAX))
                lk->out->count++;
        }
    }
    if (res)
        ares_freeaddrinfo(res);
}
