/* The GitHub fake (tests/fakes/fake_github.py) from C tests: start it on a free port (its
 * blob host on another), script it through its control API and read its request log. */
#ifndef SN_FAKE_GITHUB_H
#define SN_FAKE_GITHUB_H

#include <jansson.h>
#include <sys/types.h>

#include "sentinel/sn_common.h"

typedef struct {
    pid_t pid;
    int port;
    int blob_port;
    char *url; /* http://127.0.0.1:<port> */
    char *dir; /* owned temp dir (ready file, log) */
} sn_fake_github_t;

/* Starts the fake and waits for its ready file (10 s). False on failure. */
bool sn_fake_github_start(sn_fake_github_t *self);
/* SIGTERM (exit within 5 s) and frees; returns false if it did not exit cleanly. */
bool sn_fake_github_stop(sn_fake_github_t *self);
/* POST /__control/<what> with the JSON @body_json (text); true on 200. */
bool sn_fake_github_control(sn_fake_github_t *self, const char *what, const char *body_json);
/* As sn_fake_github_control with printf formatting of the body. */
bool sn_fake_github_controlf(sn_fake_github_t *self, const char *what, const char *fmt, ...)
    SN_PRINTF(3, 4);
/* GET /__stats, /__requests?path=@path_filter (NULL: all) or /__state: new references,
 * NULL on failure. */
json_t *sn_fake_github_stats(sn_fake_github_t *self);
json_t *sn_fake_github_requests(sn_fake_github_t *self, const char *path_filter);
json_t *sn_fake_github_state(sn_fake_github_t *self);
/* One integer of /__stats (-1 on failure). */
int64_t sn_fake_github_stat(sn_fake_github_t *self, const char *name);

#endif
