/* build-validator, GitHub mode (docs/github-in.md): the part of the role that turns
 * GitHub workflow runs into build verdicts and fetches the verified run's artifact.
 * build_validator.c owns the role and calls in here from its init, tick, build job and
 * destroy. Threads: one thread of its own reads the github.* journal events (consumer
 * group, so each event is handled by one instance) and, on the leader, polls the
 * workflow runs of every configured branch; the decisions it takes (run.trigger,
 * build.failed) are handed to the loop thread, which makes the calls. */
#ifndef BUILD_VALIDATOR_GITHUB_H
#define BUILD_VALIDATOR_GITHUB_H

#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"

typedef struct bv_github bv_github_t;

/* What fetching a GitHub artifact produced (plain value, caller's storage). */
typedef struct {
    bool ok;
    bool is_transient;
    char reason[256];
    char sha[SN_ARTIFACT_SHA_LEN + 1]; /* the deterministic tar in the store */
    uint64_t bytes;
} bv_github_outcome_t;

/* Renews the build job's lease; false when the build must stop. */
typedef bool(bv_github_progress_fn)(void *arg);

/* Starts GitHub mode when some project has source_type github: *out set (NULL when there
 * is none: nothing to do). @store is borrowed. SN_ERROR (logged) when GitHub projects
 * exist but the `github:` section gives no usable client. Loop thread, from init. */
SN_NODISCARD sn_rc_t bv_github_new(sn_ctx_t *ctx, sn_artifact_t *store, bv_github_t **out);
/* Stops the thread, frees; NULL-safe; sets *self_p = NULL. From destroy. */
void bv_github_destroy(bv_github_t **self_p);
/* Every tick on the loop thread: tells the poller whether it leads and makes the calls
 * the thread decided (run.trigger, github.feedback then build.failed). */
void bv_github_tick(bv_github_t *self, sn_ctx_t *ctx, bool is_leader);
/* True if build.local of @proj fetches a GitHub Actions artifact (source_type github and
 * artifact_from github) instead of building. */
bool bv_github_builds_artifact(const sn_project_config_t *proj);
/* Job thread: the artifact of the run(s) that verified b->sha (b->workflow_run_ids, else
 * the record github:verified:<project>:<sha>), downloaded through its redirect without
 * the token into @work (an empty directory of the caller's), its digest checked when
 * GitHub gives one, unzipped and stored as a deterministic tar. Progress lines go to
 * @log_fd; @progress (may be NULL) is called between steps. */
void bv_github_fetch(bv_github_t *self, const Sentinel__V1__BuildRequest *b, const char *work,
                     int log_fd, bv_github_progress_fn *progress, void *progress_arg,
                     bv_github_outcome_t *out);

#endif
