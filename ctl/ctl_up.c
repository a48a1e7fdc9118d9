/* `sentinelctl up [FILE]`: the local supervisor. It starts the mesh of one host in order
 * — a private redis-server when the config says `redis: embedded` (waits for PING), the
 * broker (waits until its rpc endpoint accepts connections), then every configured agent
 * process — and keeps it running: a child that dies is logged with its status and started
 * again after an exponential backoff with jitter, reset once the child has stayed up for
 * a while. When the config has local_static targets on this host, nginx is started after
 * the broker with a configuration generated from the targets (ctl_nginx.c), before the
 * agents, so a site is served whatever happens to local-deployer. SIGINT, SIGTERM or
 * SIGHUP stop everything in reverse start order (agents, the broker, nginx, then redis),
 * each with SIGTERM and, after runtime.shutdown_grace_ms,
 * SIGKILL; a second signal skips the grace. Then it exits 0.
 *
 * Once ready, and then every retention.gc_interval_s, it runs `sentinelctl gc` as a
 * short-lived child of its own (never two at once), so the retentions apply without
 * blocking this loop; the child is stopped first at shutdown.
 *
 * Signals arrive on a signalfd; the loop is poll() on it with a timeout bounded by the
 * next scheduled restart, and children are reaped with waitpid(WNOHANG) after every
 * SIGCHLD, so no signal is missed and no zombie stays. Each child runs in its own
 * process group (a terminal's Ctrl-C reaches only the supervisor, which then stops the
 * children in order) and is signalled as a group, so its own children go too. Children
 * inherit stdout and stderr: their lines (one per event) pass straight through. */
#include "ctl.h"
#include "ctl_nginx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sentinel/sn_backoff.h"
#include "sentinel/sn_log.h"

#define CMD "up"
#define LOG_MODULE "up"

#define CTL_UP_REDIS_READY_MS 10000  /* deadline for the first PING answer */
#define CTL_UP_BROKER_READY_MS 10000 /* deadline for the rpc endpoint to accept */
#define CTL_UP_NGINX_READY_MS 10000  /* deadline for every site address to accept */
#define CTL_UP_READY_POLL_MS 20      /* how often a readiness check is retried */
#define CTL_UP_BACKOFF_BASE_MS 250
#define CTL_UP_BACKOFF_CAP_MS 30000
#define CTL_UP_STABLE_MS 10000   /* up this long: the next crash starts the backoff over */
#define CTL_UP_KILL_WAIT_MS 5000 /* after SIGKILL, how long to wait for the reaping */
#define CTL_UP_IDLE_POLL_MS 1000
#define CTL_UP_GC_FIRST_MAX_MS 60000 /* first gc after ready: min(this, the interval) */

/* In stop order, last first: s_stop_all stops the kinds from the highest down. */
typedef enum {
    CTL_CHILD_REDIS = 0,
    CTL_CHILD_NGINX,
    CTL_CHILD_BROKER,
    CTL_CHILD_AGENT
} ctl_child_kind_t;

typedef struct {
    char *name; /* "redis", "broker", "agent/<role>-<i>" */
    ctl_child_kind_t kind;
    char **argv; /* NULL-terminated, owned */
    pid_t pid;   /* 0 while not running */
    int64_t started_ms;
    int64_t restart_at_ms; /* 0: no restart scheduled */
    sn_backoff_t backoff;
    unsigned restarts;
} ctl_child_t;

typedef struct {
    sn_config_t cfg;
    char *config_path; /* absolute */
    char *redis_sock;  /* embedded only */
    char *host;        /* this host, for the local_static targets nginx serves */
    ctl_child_t *children;
    size_t child_count;
    int sfd; /* signalfd: SIGCHLD, SIGINT, SIGTERM, SIGHUP */
    sigset_t old_mask;
    int lock_fd;
    int stop_signals; /* stop signals received so far */
    ctl_child_t gc;   /* `sentinelctl gc`, spawned when gc.restart_at_ms is due */
} ctl_sup_t;

typedef enum { CTL_WAIT_READY, CTL_WAIT_FAILED, CTL_WAIT_STOP } ctl_wait_t;

static void s_help(void);
static int s_run(ctl_sup_t *sup);
static sn_rc_t s_prepare(ctl_sup_t *sup);
static ctl_child_t *s_add_child(ctl_sup_t *sup, ctl_child_kind_t kind, char *name, char **argv);
static sn_rc_t s_spawn(ctl_sup_t *sup, ctl_child_t *child);
static void s_handle_signals(ctl_sup_t *sup);
static void s_reap(ctl_sup_t *sup);
static void s_restart_due(ctl_sup_t *sup);
static int s_next_timeout(const ctl_sup_t *sup);
static ctl_wait_t s_wait_ready(ctl_sup_t *sup, ctl_child_t *child, bool (*ready)(ctl_sup_t *),
                               int timeout_ms);
static void s_stop_all(ctl_sup_t *sup);
static void s_free(ctl_sup_t *sup);
static bool s_redis_ready(ctl_sup_t *sup);
static bool s_broker_ready(ctl_sup_t *sup);
static bool s_nginx_ready(ctl_sup_t *sup);
static char *s_find_binary(const char *env, const char *name, bool is_in_bin_dir);
static sn_rc_t s_mkdirs(const char *path, mode_t mode);
static void s_describe_status(int status, char *buf, size_t len);
static char **s_argv(const char *first, ...);
static void s_gc_due(ctl_sup_t *sup);

int ctl_cmd_up(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {CTL_COMMON_LONGOPTS,
                                             {"foreground", no_argument, NULL, CTL_OPT_FOREGROUND},
                                             {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0 || c == CTL_OPT_FOREGROUND)
            continue;
        return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    const char *path = opts->is_config_explicit ? opts->config_path : CTL_DEFAULT_UP_CONFIG;
    if (optind < argc)
        path = argv[optind++];
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);

    sn_log_init("ctl", "up");
    ctl_sup_t sup = {.sfd = -1, .lock_fd = -1};
    if (ctl_config_load(CMD, path, &sup.cfg) != SN_OK)
        return CTL_EXIT_FAIL;
    char abs[PATH_MAX];
    sup.config_path = sn_strdup(realpath(path, abs) ? abs : path);
    sn_log_level_t level;
    if (!getenv("SN_LOG_LEVEL") && sn_log_parse_level(sup.cfg.log_level, &level) == SN_OK)
        sn_log_set_level(level);
    int rc = s_run(&sup);
    s_free(&sup);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl up [FILE] [--foreground]\n\n"
           "Runs the mesh of FILE (default: -c or $SENTINEL_CONFIG, else %s) in the\n"
           "foreground and supervises it: with `redis: embedded` a private redis-server on\n"
           "<state_dir>/redis.sock (AOF, appendfsync always, noeviction, no TCP), then\n"
           "sentinel-broker, then nginx when there are local_static targets (config in\n"
           "<state_dir>/nginx/nginx.conf), then every `processes:` entry as sentinel-agent\n"
           "ROLE --instance ROLE-<i>. Dead children are restarted with backoff.\n"
           "`sentinelctl gc` runs once ready and every retention.gc_interval_s.\n"
           "SIGINT/SIGTERM stop all in reverse order (grace: runtime.shutdown_grace_ms) and\n"
           "exit 0.\n\n"
           "environment: SENTINEL_BIN_DIR (where sentinel-broker and sentinel-agent are;\n"
           "default: next to sentinelctl), SENTINEL_BROKER_BIN, SENTINEL_AGENT_BIN,\n"
           "SENTINEL_REDIS_SERVER (default: redis-server from PATH), SENTINEL_NGINX (default:\n"
           "nginx from PATH or /usr/sbin), SENTINEL_HOST (this host's name for targets).\n",
           CTL_DEFAULT_UP_CONFIG);
}

static int s_run(ctl_sup_t *sup)
{
    /* Signals first, so that nothing that arrives during the start is lost. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, &sup->old_mask) != 0) {
        sn_error(LOG_MODULE, "sigprocmask: %s", strerror(errno));
        return CTL_EXIT_FAIL;
    }
    sup->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sup->sfd < 0) {
        sn_error(LOG_MODULE, "signalfd: %s", strerror(errno));
        return CTL_EXIT_FAIL;
    }
    signal(SIGPIPE, SIG_IGN);

    if (s_prepare(sup) != SN_OK)
        return CTL_EXIT_FAIL;

    int rc = CTL_EXIT_OK;
    for (size_t i = 0; i < sup->child_count; i++) {
        ctl_child_t *child = &sup->children[i];
        if (s_spawn(sup, child) != SN_OK) {
            rc = CTL_EXIT_FAIL;
            break;
        }
        ctl_wait_t w = CTL_WAIT_READY;
        if (child->kind == CTL_CHILD_REDIS)
            w = s_wait_ready(sup, child, s_redis_ready, CTL_UP_REDIS_READY_MS);
        else if (child->kind == CTL_CHILD_BROKER)
            w = s_wait_ready(sup, child, s_broker_ready, CTL_UP_BROKER_READY_MS);
        else if (child->kind == CTL_CHILD_NGINX)
            w = s_wait_ready(sup, child, s_nginx_ready, CTL_UP_NGINX_READY_MS);
        if (w == CTL_WAIT_FAILED) {
            rc = CTL_EXIT_FAIL;
            break;
        }
        if (w == CTL_WAIT_STOP)
            break;
    }
    if (rc == CTL_EXIT_OK && sup->stop_signals == 0) {
        size_t agents = 0;
        for (size_t i = 0; i < sup->child_count; i++)
            agents += sup->children[i].kind == CTL_CHILD_AGENT;
        sn_info(LOG_MODULE, "ready: redis=%s%s rpc=%s pub=%s sub=%s agents=%zu config=%s",
                sup->redis_sock ? "unix:" : "", sup->redis_sock ? sup->redis_sock : "external",
                sup->cfg.broker.rpc, sup->cfg.broker.pub, sup->cfg.broker.sub, agents,
                sup->config_path);
        ctl_up_banner(&sup->cfg, sup->config_path);
        int64_t gc_ms = sup->cfg.retention.gc_interval_s * 1000;
        if (gc_ms > 0)
            sup->gc.restart_at_ms =
                sn_mono_ms() + (gc_ms < CTL_UP_GC_FIRST_MAX_MS ? gc_ms : CTL_UP_GC_FIRST_MAX_MS);
        while (sup->stop_signals == 0) {
            struct pollfd pfd = {.fd = sup->sfd, .events = POLLIN};
            int n = poll(&pfd, 1, s_next_timeout(sup));
            if (n < 0 && errno != EINTR) {
                sn_error(LOG_MODULE, "poll: %s", strerror(errno));
                rc = CTL_EXIT_FAIL;
                break;
            }
            s_handle_signals(sup);
            if (sup->stop_signals == 0) {
                s_restart_due(sup);
                s_gc_due(sup);
            }
        }
    }
    if (sup->gc.pid > 0 && kill(-sup->gc.pid, SIGTERM) != 0)
        kill(sup->gc.pid, SIGTERM);
    sup->gc.restart_at_ms = 0;
    s_stop_all(sup);
    if (sup->gc.pid > 0) { /* still running after the agents' grace: it goes now */
        kill(-sup->gc.pid, SIGKILL);
        waitpid(sup->gc.pid, NULL, 0);
        sup->gc.pid = 0;
    }
    if (rc == CTL_EXIT_OK)
        sn_info(LOG_MODULE, "stopped");
    return rc;
}

/* Checks everything that can be checked before a process starts, then lists the
 * children in start order. */
static sn_rc_t s_prepare(ctl_sup_t *sup)
{
    const sn_config_t *cfg = &sup->cfg;
    const char *state_dir = cfg->state_dir ? cfg->state_dir : "./var";
    /* 0711: builds run as an unprivileged user in state_dir/builds/<run> and must be able to
     * traverse it; nothing in it can be listed, and every file keeps its own mode. */
    if (s_mkdirs(state_dir, 0711) != SN_OK)
        return SN_ERROR;

    /* One supervisor per state directory: two would fight over the same redis socket. */
    char *lock_path = sn_strdupf("%s/sentinelctl-up.lock", state_dir);
    sup->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sup->lock_fd < 0 || flock(sup->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        sn_error(LOG_MODULE, "another sentinelctl up runs with state_dir %s (lock %s: %s)",
                 state_dir, lock_path, strerror(errno));
        free(lock_path);
        return SN_ERROR;
    }
    free(lock_path);
    if (!ctl_seed_repos(cfg, sup->config_path))
        return SN_ERROR;

    char *redis_bin = NULL, *broker_bin = NULL, *agent_bin = NULL, *nginx_bin = NULL;
    ctl_nginx_t nginx = {0};
    sn_rc_t rc = SN_ERROR;
    if (cfg->redis.embedded) {
        redis_bin = s_find_binary("SENTINEL_REDIS_SERVER", "redis-server", false);
        if (!redis_bin) {
            sn_error(LOG_MODULE, "redis-server not found in PATH (install redis-server, or set "
                                 "SENTINEL_REDIS_SERVER); the config says redis: embedded");
            goto out;
        }
    }
    broker_bin = s_find_binary("SENTINEL_BROKER_BIN", "sentinel-broker", true);
    if (!broker_bin) {
        char *dir = ctl_bin_dir();
        sn_error(LOG_MODULE, "sentinel-broker not found in %s (set SENTINEL_BIN_DIR)", dir);
        free(dir);
        goto out;
    }
    if (cfg->process_count > 0) {
        agent_bin = s_find_binary("SENTINEL_AGENT_BIN", "sentinel-agent", true);
        if (!agent_bin) {
            char *dir = ctl_bin_dir();
            sn_error(LOG_MODULE,
                     "sentinel-agent not found in %s (set SENTINEL_BIN_DIR or "
                     "SENTINEL_AGENT_BIN)",
                     dir);
            free(dir);
            goto out;
        }
    }

    sup->host = ctl_nginx_host();
    bool has_sites = ctl_nginx_is_needed(cfg, sup->host);
    if (has_sites) {
        nginx_bin = ctl_nginx_find_binary();
        if (!nginx_bin) {
            sn_error(LOG_MODULE,
                     "nginx not found in PATH, /usr/sbin or /usr/local/sbin "
                     "(apt-get install nginx, or set SENTINEL_NGINX); the config "
                     "has local_static targets on host %s",
                     sup->host);
            goto out;
        }
        if (ctl_nginx_write(cfg, sup->host, &nginx) != SN_OK)
            goto out;
    }

    size_t total = 3;
    for (size_t i = 0; i < cfg->process_count; i++)
        total += (size_t)(cfg->processes[i].instances > 0 ? cfg->processes[i].instances : 1);
    sup->children = sn_calloc(total, sizeof(ctl_child_t));

    if (cfg->redis.embedded) {
        /* Absolute: redis-server changes into its data dir before it binds the socket. */
        char *sock = ctl_redis_socket_path(cfg);
        char cwd[PATH_MAX];
        if (sock[0] != '/' && getcwd(cwd, sizeof cwd)) {
            sup->redis_sock = sn_strdupf("%s/%s", cwd, sock);
            free(sock);
        } else {
            sup->redis_sock = sock;
        }
        if (strlen(sup->redis_sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            sn_error(LOG_MODULE,
                     "redis socket path %s is too long for a unix socket (max %zu): "
                     "use a shorter state_dir",
                     sup->redis_sock, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
            goto out;
        }
        char *data_dir = sn_strdupf("%s/redis", state_dir);
        if (s_mkdirs(data_dir, 0700) != SN_OK) {
            free(data_dir);
            goto out;
        }
        s_add_child(sup, CTL_CHILD_REDIS, sn_strdup("redis"),
                    s_argv(redis_bin, "--port", "0", "--unixsocket", sup->redis_sock,
                           "--unixsocketperm", "700", "--dir", data_dir, "--appendonly", "yes",
                           "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--save",
                           "", "--daemonize", "no", NULL));
        free(data_dir);
    }
    s_add_child(sup, CTL_CHILD_BROKER, sn_strdup("broker"),
                s_argv(broker_bin, "--config", sup->config_path, NULL));
    if (has_sites)
        s_add_child(
            sup, CTL_CHILD_NGINX, sn_strdup("nginx"),
            s_argv(nginx_bin, "-c", nginx.conf, "-p", nginx.prefix, "-e", nginx.error_log, NULL));
    for (size_t i = 0; i < cfg->process_count; i++) {
        const sn_process_config_t *p = &cfg->processes[i];
        int n = p->instances > 0 ? p->instances : 1;
        for (int k = 1; k <= n; k++) {
            char *instance = sn_strdupf("%s-%d", p->role, k);
            s_add_child(sup, CTL_CHILD_AGENT, sn_strdupf("agent/%s", instance),
                        s_argv(agent_bin, p->role, "--config", sup->config_path, "--instance",
                               instance, NULL));
            free(instance);
        }
    }
    rc = SN_OK;
out:
    free(redis_bin);
    free(broker_bin);
    free(agent_bin);
    free(nginx_bin);
    ctl_nginx_fini(&nginx);
    return rc;
}

static ctl_child_t *s_add_child(ctl_sup_t *sup, ctl_child_kind_t kind, char *name, char **argv)
{
    ctl_child_t *child = &sup->children[sup->child_count++];
    child->kind = kind;
    child->name = name;
    child->argv = argv;
    sn_backoff_init(&child->backoff, CTL_UP_BACKOFF_BASE_MS, CTL_UP_BACKOFF_CAP_MS);
    return child;
}

/* fork + exec with a close-on-exec pipe that carries exec's errno back, so that a
 * binary that cannot run is reported here, with the reason, not as a mystery exit 127. */
static sn_rc_t s_spawn(ctl_sup_t *sup, ctl_child_t *child)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        sn_error(LOG_MODULE, "pipe: %s", strerror(errno));
        return SN_ERROR;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        sn_error(LOG_MODULE, "fork for %s: %s", child->name, strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return SN_ERROR;
    }
    if (pid == 0) {
        /* The child: own process group, default signals, nothing blocked, no stdin; a
         * SIGTERM (a graceful stop) if the supervisor dies without stopping it, so a
         * killed `up` leaves no unsupervised agents behind (they would clash with the
         * next `up`). */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, &sup->old_mask, NULL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        execv(child->argv[0], child->argv);
        int err = errno;
        ssize_t w = write(pfd[1], &err, sizeof err);
        (void)w;
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so that a signal to the group cannot race the child */
    close(pfd[1]);
    int err = 0;
    ssize_t n;
    do
        n = read(pfd[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    close(pfd[0]);
    child->pid = pid;
    child->started_ms = sn_mono_ms();
    child->restart_at_ms = 0;
    if (n == (ssize_t)sizeof err) {
        sn_error(LOG_MODULE, "cannot run %s (%s): %s", child->name, child->argv[0], strerror(err));
        return SN_ERROR; /* the child exits 127 and is reaped by the loop */
    }
    sn_info(LOG_MODULE, "started %s pid=%d%s", child->name, (int)pid,
            child->restarts ? " (restart)" : "");
    return SN_OK;
}

static void s_handle_signals(ctl_sup_t *sup)
{
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(sup->sfd, &si, sizeof si);
        if (n != (ssize_t)sizeof si)
            break;
        if (si.ssi_signo == SIGCHLD)
            continue;
        sup->stop_signals++;
        if (sup->stop_signals == 1)
            sn_info(LOG_MODULE, "got %s: stopping", strsignal((int)si.ssi_signo));
        else
            sn_warn(LOG_MODULE, "got %s again: killing without grace",
                    strsignal((int)si.ssi_signo));
    }
    /* SIGCHLDs coalesce: reap in a loop, whatever was read, to find every exit. */
    s_reap(sup);
}

static void s_reap(ctl_sup_t *sup)
{
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        ctl_child_t *child = NULL;
        for (size_t i = 0; i < sup->child_count; i++)
            if (sup->children[i].pid == pid)
                child = &sup->children[i];
        char how[64];
        s_describe_status(status, how, sizeof how);
        if (!child && pid == sup->gc.pid) {
            sup->gc.pid = 0;
            if (sup->stop_signals > 0 || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
                sn_info(LOG_MODULE, "gc pid=%d %s", (int)pid, how);
            else
                sn_warn(LOG_MODULE, "gc pid=%d %s (see its lines above)", (int)pid, how);
        }
        if (!child)
            continue;
        int64_t now = sn_mono_ms();
        int64_t uptime = now - child->started_ms;
        child->pid = 0;
        if (sup->stop_signals > 0) {
            sn_info(LOG_MODULE, "%s pid=%d %s", child->name, (int)pid, how);
            continue;
        }
        if (uptime >= CTL_UP_STABLE_MS)
            sn_backoff_reset(&child->backoff);
        int64_t delay = sn_backoff_next(&child->backoff);
        child->restart_at_ms = now + delay;
        sn_warn(LOG_MODULE, "%s pid=%d %s after %lldms; restarting in %lldms (attempt %u)",
                child->name, (int)pid, how, (long long)uptime, (long long)delay,
                child->backoff.attempt);
    }
}

static void s_restart_due(ctl_sup_t *sup)
{
    int64_t now = sn_mono_ms();
    for (size_t i = 0; i < sup->child_count; i++) {
        ctl_child_t *child = &sup->children[i];
        if (child->pid != 0 || child->restart_at_ms == 0 || now < child->restart_at_ms)
            continue;
        child->restarts++;
        if (s_spawn(sup, child) != SN_OK) {
            /* Could not even start: try again later, with a longer delay. */
            child->restart_at_ms = now + sn_backoff_next(&child->backoff);
        }
    }
}

static int s_next_timeout(const ctl_sup_t *sup)
{
    int64_t now = sn_mono_ms();
    int64_t next = now + CTL_UP_IDLE_POLL_MS;
    if (sup->gc.pid == 0 && sup->gc.restart_at_ms != 0 && sup->gc.restart_at_ms < next)
        next = sup->gc.restart_at_ms;
    for (size_t i = 0; i < sup->child_count; i++) {
        const ctl_child_t *child = &sup->children[i];
        if (child->pid == 0 && child->restart_at_ms != 0 && child->restart_at_ms < next)
            next = child->restart_at_ms;
    }
    return next <= now ? 0 : (int)(next - now);
}

/* Spawns `sentinelctl gc -c CONFIG` when due and none runs, and schedules the next one
 * (retention.gc_interval_s later). A gc still running at its next time is left alone. */
static void s_gc_due(ctl_sup_t *sup)
{
    int64_t now = sn_mono_ms();
    if (sup->gc.restart_at_ms == 0 || now < sup->gc.restart_at_ms)
        return;
    if (sup->gc.pid != 0) {
        sup->gc.restart_at_ms = now + sup->cfg.retention.gc_interval_s * 1000;
        return;
    }
    if (!sup->gc.argv) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            sn_warn(LOG_MODULE, "gc not run: cannot find this executable: %s", strerror(errno));
            return;
        }
        exe[n] = '\0';
        sup->gc.name = sn_strdup("gc");
        sup->gc.argv = s_argv(exe, "gc", "-c", sup->config_path, NULL);
    }
    if (s_spawn(sup, &sup->gc) != SN_OK)
        sup->gc.pid = 0; /* the child (exit 127) is reaped as an unknown pid */
    sup->gc.restart_at_ms = now + sup->cfg.retention.gc_interval_s * 1000;
}

/* Waits until @ready says yes, @child dies (failure), a stop signal arrives, or the
 * deadline passes (failure). Other children that die meanwhile are restarted. */
static ctl_wait_t s_wait_ready(ctl_sup_t *sup, ctl_child_t *child, bool (*ready)(ctl_sup_t *),
                               int timeout_ms)
{
    int64_t deadline = sn_mono_ms() + timeout_ms;
    pid_t pid = child->pid;
    for (;;) {
        if (ready(sup)) {
            sn_info(LOG_MODULE, "%s is ready", child->name);
            return CTL_WAIT_READY;
        }
        struct pollfd pfd = {.fd = sup->sfd, .events = POLLIN};
        int n = poll(&pfd, 1, CTL_UP_READY_POLL_MS);
        if (n < 0 && errno != EINTR)
            return CTL_WAIT_FAILED;
        s_handle_signals(sup);
        if (sup->stop_signals > 0)
            return CTL_WAIT_STOP;
        if (child->pid != pid) {
            sn_error(LOG_MODULE, "%s exited while starting (see its output above)", child->name);
            child->restart_at_ms = 0;
            return CTL_WAIT_FAILED;
        }
        s_restart_due(sup);
        if (sn_mono_ms() >= deadline) {
            sn_error(LOG_MODULE, "%s is not ready after %dms", child->name, timeout_ms);
            return CTL_WAIT_FAILED;
        }
    }
}

/* Stops the children in reverse start order, one kind at a time (agents, broker,
 * redis): SIGTERM to each process group, SIGKILL to what is left after the grace. */
static void s_stop_all(ctl_sup_t *sup)
{
    int grace_ms = sup->cfg.runtime.shutdown_grace_ms > 0 ? sup->cfg.runtime.shutdown_grace_ms : 0;
    for (int kind = CTL_CHILD_AGENT; kind >= CTL_CHILD_REDIS; kind--) {
        size_t running = 0;
        for (size_t i = sup->child_count; i-- > 0;) {
            ctl_child_t *child = &sup->children[i];
            child->restart_at_ms = 0;
            if ((int)child->kind != kind || child->pid == 0)
                continue;
            if (kill(-child->pid, SIGTERM) != 0)
                kill(child->pid, SIGTERM);
            running++;
        }
        if (running == 0)
            continue;
        bool killed = false;
        int64_t deadline = sn_mono_ms() + grace_ms;
        for (;;) {
            s_reap(sup);
            running = 0;
            for (size_t i = 0; i < sup->child_count; i++)
                running += (int)sup->children[i].kind == kind && sup->children[i].pid != 0;
            if (running == 0)
                break;
            int64_t now = sn_mono_ms();
            bool impatient = sup->stop_signals >= 2;
            if (!killed && (now >= deadline || impatient)) {
                for (size_t i = 0; i < sup->child_count; i++) {
                    ctl_child_t *child = &sup->children[i];
                    if ((int)child->kind != kind || child->pid == 0)
                        continue;
                    sn_warn(LOG_MODULE, "%s pid=%d still running: SIGKILL", child->name,
                            (int)child->pid);
                    if (kill(-child->pid, SIGKILL) != 0)
                        kill(child->pid, SIGKILL);
                }
                killed = true;
                deadline = now + CTL_UP_KILL_WAIT_MS;
            } else if (killed && now >= deadline) {
                sn_error(LOG_MODULE, "children did not die after SIGKILL; giving up on them");
                break;
            }
            struct pollfd pfd = {.fd = sup->sfd, .events = POLLIN};
            int64_t wait_ms = deadline - sn_mono_ms();
            if (wait_ms > 100)
                wait_ms = 100;
            if (wait_ms < 0)
                wait_ms = 0;
            if (poll(&pfd, 1, (int)wait_ms) > 0) {
                struct signalfd_siginfo si;
                while (read(sup->sfd, &si, sizeof si) == (ssize_t)sizeof si)
                    if (si.ssi_signo != SIGCHLD)
                        sup->stop_signals++;
            }
        }
    }
}

static void s_free(ctl_sup_t *sup)
{
    for (size_t i = 0; i < sup->child_count; i++) {
        free(sup->children[i].name);
        for (char **a = sup->children[i].argv; a && *a; a++)
            free(*a);
        free(sup->children[i].argv);
    }
    free(sup->children);
    free(sup->gc.name);
    for (char **a = sup->gc.argv; a && *a; a++)
        free(*a);
    free(sup->gc.argv);
    free(sup->redis_sock);
    free(sup->host);
    free(sup->config_path);
    if (sup->sfd >= 0)
        close(sup->sfd);
    if (sup->lock_fd >= 0)
        close(sup->lock_fd);
    sn_config_fini(&sup->cfg);
}

/* PING on the unix socket answered with PONG. */
static bool s_redis_ready(ctl_sup_t *sup)
{
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200 * 1000};
    redisContext *c = redisConnectUnixWithTimeout(sup->redis_sock, tv);
    bool ok = false;
    if (c && !c->err && redisSetTimeout(c, tv) == REDIS_OK) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return ok;
}

/* Every live and preview address of this host's local_static targets accepts. */
static bool s_nginx_ready(ctl_sup_t *sup)
{
    return ctl_nginx_is_ready(&sup->cfg, sup->host);
}

/* The broker's rpc endpoint accepts a connection: a TCP or unix connect that succeeds
 * within 200 ms (the broker sees a peer that leaves during the handshake, which is
 * harmless). Other transports cannot be probed: alive for 300 ms is taken as ready. */
static bool s_broker_ready(ctl_sup_t *sup)
{
    const char *ep = sup->cfg.broker.rpc ? sup->cfg.broker.rpc : "tcp://127.0.0.1:7700";
    ctl_child_t *broker = NULL;
    for (size_t i = 0; i < sup->child_count; i++)
        if (sup->children[i].kind == CTL_CHILD_BROKER)
            broker = &sup->children[i];
    int fd = -1;
    bool ok = false;
    if (strncmp(ep, "ipc://", 6) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (!sn_strlcpy(sa.sun_path, ep + 6, sizeof sa.sun_path))
            return false;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0)
            close(fd);
        return ok;
    }
    if (strncmp(ep, "tcp://", 6) != 0)
        return broker && broker->pid && sn_mono_ms() - broker->started_ms >= 300;
    char host[256];
    if (!sn_strlcpy(host, ep + 6, sizeof host))
        return false;
    char *colon = strrchr(host, ':');
    if (!colon)
        return false;
    *colon = '\0';
    const char *port = colon + 1;
    if (strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
        sn_strlcpy(host, "127.0.0.1", sizeof host);
    if (host[0] == '[') { /* [::1] */
        size_t hl = strlen(host);
        if (hl > 2 && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        }
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return false;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) {
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r == 0) {
            ok = true;
        } else if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t len = sizeof err;
            ok = poll(&pfd, 1, 200) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
                 err == 0;
        }
        close(fd);
    }
    freeaddrinfo(ai);
    return ok;
}

/* $@env if set (must be executable), else @name in the sentinel bin dir (@is_in_bin_dir)
 * or in PATH. Caller frees; NULL if not found. */
static char *s_find_binary(const char *env, const char *name, bool is_in_bin_dir)
{
    const char *override = getenv(env);
    if (override && *override)
        return access(override, X_OK) == 0 ? sn_strdup(override) : NULL;
    if (is_in_bin_dir) {
        char *dir = ctl_bin_dir();
        char *path = sn_strdupf("%s/%s", dir, name);
        free(dir);
        if (access(path, X_OK) == 0)
            return path;
        free(path);
        return NULL;
    }
    const char *env_path = getenv("PATH");
    char *paths = sn_strdup(env_path && *env_path ? env_path : "/usr/local/bin:/usr/bin:/bin");
    char *found = NULL;
    for (char *dir = paths; dir && !found;) {
        char *colon = strchr(dir, ':');
        if (colon)
            *colon = '\0';
        char *path = sn_strdupf("%s/%s", *dir ? dir : ".", name);
        if (access(path, X_OK) == 0)
            found = path;
        else
            free(path);
        dir = colon ? colon + 1 : NULL;
    }
    free(paths);
    return found;
}

static sn_rc_t s_mkdirs(const char *path, mode_t mode)
{
    char *p = sn_strdup(path);
    sn_rc_t rc = SN_OK;
    for (char *s = p + 1;; s++) {
        bool end = *s == '\0';
        if (*s == '/' || end) {
            char saved = *s;
            *s = '\0';
            if (mkdir(p, mode) != 0 && errno != EEXIST) {
                sn_error(LOG_MODULE, "cannot create %s: %s", p, strerror(errno));
                rc = SN_ERROR;
                break;
            }
            *s = saved;
        }
        if (end)
            break;
    }
    free(p);
    return rc;
}

static void s_describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "ended (wait status 0x%x)", (unsigned)status);
}

/* A heap argv from a NULL-terminated list of strings (copied). */
static char **s_argv(const char *first, ...)
{
    size_t n = 1;
    va_list ap;
    va_start(ap, first);
    while (va_arg(ap, const char *))
        n++;
    va_end(ap);
    char **argv = sn_calloc(n + 1, sizeof(char *));
    argv[0] = sn_strdup(first);
    va_start(ap, first);
    for (size_t i = 1; i < n; i++)
        argv[i] = sn_strdup(va_arg(ap, const char *));
    va_end(ap);
    return argv;
}
