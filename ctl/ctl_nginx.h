/* nginx for the local_static targets of this host: `sentinelctl up` writes
 * <state_dir>/nginx/nginx.conf (a live server per target on `listen` serving
 * <state_dir>/sites/<target>/current, a preview server on `preview_listen` serving
 * .../preview) and runs `nginx -c <conf> -p <prefix> -e <error log>` as a supervised
 * child. The sites are served straight from the filesystem, so local-deployer can die
 * without the site noticing, and a symlink switch is seen by the next request (no open
 * file cache). Depends only on the config, so tests can use it without the rest of ctl.
 * Single-threaded (sentinelctl's main thread). */
#ifndef CTL_NGINX_H
#define CTL_NGINX_H

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"

/* The paths of a generated configuration (plain value struct; ctl_nginx_fini frees). */
typedef struct {
    char *prefix;    /* absolute <state_dir>/nginx, nginx's -p */
    char *conf;      /* <prefix>/nginx.conf */
    char *error_log; /* <prefix>/error.log, nginx's -e */
    char *pid_file;  /* <prefix>/nginx.pid */
    size_t servers;  /* server blocks written (2 per target) */
} ctl_nginx_t;

void ctl_nginx_fini(ctl_nginx_t *self);

/* The host name local-deployer uses: $SENTINEL_HOST, else gethostname(). Caller frees. */
char *ctl_nginx_host(void);

/* True if @cfg has a local_static target served on @host (its `host` empty or equal). */
bool ctl_nginx_is_needed(const sn_config_t *cfg, const char *host);

/* Writes the configuration for the local_static targets of @host in @cfg into
 * <state_dir>/nginx/nginx.conf (atomically: temp file + rename), creating the state,
 * nginx, temp and sites/<target> directories. *out (caller's, zeroed here) receives
 * the paths. SN_ERROR (logged, naming the target and key) for a target without a
 * valid listen / preview_listen address, a name unusable as a path, or a state_dir
 * nginx cannot quote; SN_AGAIN for file-system errors. */
SN_NODISCARD sn_rc_t ctl_nginx_write(const sn_config_t *cfg, const char *host, ctl_nginx_t *out);

/* The nginx binary: $SENTINEL_NGINX if set (must be executable), else `nginx` in PATH,
 * /usr/sbin or /usr/local/sbin. Caller frees; NULL if not found. */
char *ctl_nginx_find_binary(void);

/* True if every live and preview address of @host's local_static targets accepts a TCP
 * connection within 200 ms each (nginx is serving). */
bool ctl_nginx_is_ready(const sn_config_t *cfg, const char *host);

#endif
