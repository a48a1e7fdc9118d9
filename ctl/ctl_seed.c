/* First start of `sentinelctl up`: a project whose repository does not exist yet and
 * that names `seed_from` gets a bare git repository made from those files (branches main
 * and staging, one commit) with a post-receive hook that tells build-validator about every
 * push (`sentinelctl notify push`). The quick start's hello-site comes up this way, so a
 * newcomer can clone it, change a line, push, and watch the run. Git runs as a child
 * process with an argument vector: no shell ever sees a path from the config. */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CTL_SEED_GIT_TIMEOUT_MS 30000

/* Runs argv (argv[0] looked up in PATH) in @cwd with output to /dev/null; true on exit 0
 * within the timeout. */
static bool s_run(const char *cwd, char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        execvp(argv[0], argv);
        _exit(127);
    }
    int64_t deadline = sn_mono_ms() + CTL_SEED_GIT_TIMEOUT_MS;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (sn_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return false;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static bool s_write_hook(const char *repo, const char *project, const char *config_path)
{
    char *path = sn_strdupf("%s/hooks/post-receive", repo);
    char *bin = ctl_bin_dir();
    char abs_config[PATH_MAX];
    if (!realpath(config_path, abs_config))
        sn_strlcpy(abs_config, config_path, sizeof abs_config);
    FILE *f = fopen(path, "w");
    bool ok = false;
    if (f) {
        /* Single quotes in the values would break the script: refuse them. */
        ok = !strchr(bin, '\'') && !strchr(abs_config, '\'') && !strchr(project, '\'');
        if (ok)
            fprintf(f,
                    "#!/bin/sh\n"
                    "# Written by sentinelctl up: tells Sentinel about every push.\n"
                    "while read old new ref; do\n"
                    "  '%s/sentinelctl' -c '%s' notify push --project '%s' --ref \"$ref\" "
                    "--sha \"$new\" || true\n"
                    "done\n",
                    bin, abs_config, project);
        ok = (fclose(f) == 0) && ok && chmod(path, 0755) == 0;
    }
    free(bin);
    free(path);
    return ok;
}

/* Creates @p->repo from @p->seed_from. */
static bool s_seed(const sn_project_config_t *p, const char *config_path, const char *state_dir)
{
    char *work = sn_strdupf("%s/seed-%s-XXXXXX", state_dir, p->name);
    if (!mkdtemp(work)) {
        ctl_err("up", "cannot create a temporary directory under %s: %s", state_dir,
                strerror(errno));
        free(work);
        return false;
    }
    char *src = sn_strdupf("%s/.", p->seed_from);
    char *const init_bare[] = {"git", "init", "-q", "--bare", "-b", "main", p->repo, NULL};
    char *const copy[] = {"cp", "-a", src, work, NULL};
    char *const init[] = {"git", "init", "-q", "-b", "main", NULL};
    char *const add[] = {"git", "add", "-A", NULL};
    char *const commit[] = {
        "git", "-c", "user.name=Sentinel",        "-c", "user.email=sentinel@localhost", "commit",
        "-q",  "-m", "First version of the site", NULL};
    char *const branch[] = {"git", "branch", "staging", NULL};
    bool ok = s_run(NULL, init_bare) && s_run(NULL, copy) && s_run(work, init) &&
              s_run(work, add) && s_run(work, commit) && s_run(work, branch);
    char *abs_repo = ok ? realpath(p->repo, NULL) : NULL; /* the push runs in @work */
    if (abs_repo) {
        char *const push[] = {"git", "push", "-q", abs_repo, "main", "staging", NULL};
        ok = s_run(work, push);
    }
    ok = ok && abs_repo;
    free(abs_repo);
    ok = ok && s_write_hook(p->repo, p->name, config_path);
    char *const rm[] = {"rm", "-rf", work, NULL};
    if (!s_run(NULL, rm))
        ctl_err("up", "could not remove %s", work);
    if (ok)
        ctl_err("up", "created repository %s for project %s from %s (branches main, staging)",
                p->repo, p->name, p->seed_from);
    else
        ctl_err("up", "could not create repository %s from %s (is git installed?)", p->repo,
                p->seed_from);
    free(src);
    free(work);
    return ok;
}

bool ctl_seed_repos(const sn_config_t *cfg, const char *config_path)
{
    bool ok = true;
    for (size_t i = 0; i < cfg->project_count; i++) {
        const sn_project_config_t *p = &cfg->projects[i];
        if (!p->seed_from || !p->repo)
            continue;
        struct stat st;
        if (stat(p->repo, &st) == 0)
            continue; /* only on first start */
        if (stat(p->seed_from, &st) != 0 || !S_ISDIR(st.st_mode)) {
            ctl_err("up", "project %s: seed_from %s is not a directory", p->name, p->seed_from);
            ok = false;
            continue;
        }
        ok = s_seed(p, config_path, cfg->state_dir) && ok;
    }
    return ok;
}

void ctl_up_banner(const sn_config_t *cfg, const char *config_path)
{
    fprintf(stderr, "\nSentinel is up (%s).\n", config_path);
    for (size_t i = 0; i < cfg->target_count; i++) {
        const sn_target_config_t *t = &cfg->targets[i];
        if (t->url)
            fprintf(stderr, "  %-16s live %s   preview %s\n", t->name, t->url,
                    t->preview_url ? t->preview_url : "-");
    }
    if (cfg->gateway.listen)
        fprintf(stderr, "  API              http://%s/api/v1/runs   events: /api/v1/events\n",
                cfg->gateway.listen);
    for (size_t i = 0; i < cfg->project_count; i++) {
        const sn_project_config_t *p = &cfg->projects[i];
        if (!p->repo)
            continue;
        fprintf(stderr,
                "\nProject %s (repository %s): every push to an environment's branch starts\n"
                "a run (the seeded staging branch is deployed first). Next:\n"
                "  sentinelctl -c %s runs                     # runs and their states\n"
                "  git clone %s work && cd work && git checkout staging\n"
                "  ...edit src/index.html, commit, git push   # a new staging run\n",
                p->name, p->repo, config_path, p->repo);
        for (size_t e = 0; e < p->environment_count; e++)
            if (p->environments[e].approval.required)
                fprintf(stderr,
                        "  sentinelctl -c %s deploy %s %s\n"
                        "  SENTINEL_USER=someone-else sentinelctl -c ... approve RUN   # not your "
                        "own\n",
                        config_path, p->name, p->environments[e].name);
    }
    fprintf(stderr, "Ctrl-C stops everything.\n\n");
}
