/* Starting and scripting tests/fakes/fake_github.py from C tests. */
#include "sn_fake_github.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sentinel/sn_http.h"
#include "sn_test.h"

static bool s_ready(void *arg)
{
    struct stat st;
    return stat((const char *)arg, &st) == 0 && st.st_size > 0;
}

bool sn_fake_github_start(sn_fake_github_t *self)
{
    memset(self, 0, sizeof *self);
    self->dir = sn_test_tmpdir("fakegh");
    self->port = sn_test_free_port();
    char *script = sn_strdupf("%s/tests/fakes/fake_github.py", SN_SOURCE_DIR);
    char *ready = sn_strdupf("%s/ready", self->dir);
    char *log = sn_strdupf("%s/fake.log", self->dir);
    char *port_s = sn_strdupf("%d", self->port);
    char *argv[] = {"/usr/bin/python3", script, "--port", port_s, "--ready", ready, NULL};
    self->pid = sn_test_spawn(argv, log);
    bool ok = self->pid > 0 && sn_test_wait_for(s_ready, ready, 10000);
    if (ok) {
        char *text = sn_test_read_file(ready);
        ok = text && sscanf(text, "%*d %d", &self->blob_port) == 1;
        free(text);
    }
    self->url = sn_strdupf("http://127.0.0.1:%d", self->port);
    free(script);
    free(ready);
    free(log);
    free(port_s);
    return ok;
}

bool sn_fake_github_stop(sn_fake_github_t *self)
{
    bool ok = true;
    if (self->pid > 0 && sn_test_stop(self->pid, SIGTERM, 5000) != 0)
        ok = false;
    self->pid = 0;
    if (self->dir)
        sn_test_rmdir(self->dir);
    free(self->dir);
    free(self->url);
    self->dir = self->url = NULL;
    return ok;
}

static char *s_fetch(sn_fake_github_t *self, const char *method, const char *path, const char *body,
                     long *status)
{
    sn_http_t *http = sn_http_new();
    char *url = sn_strdupf("%s%s", self->url, path);
    sn_http_request_t req = {.method = method,
                             .url = url,
                             .body = body,
                             .body_len = body ? strlen(body) : 0,
                             .timeout_ms = 10000,
                             .max_body_bytes = 64 * 1024 * 1024};
    sn_http_response_t resp;
    char *out = NULL;
    *status = 0;
    if (sn_http_perform(http, &req, &resp) == SN_OK) {
        *status = resp.status;
        out = sn_strndup(resp.body, resp.body_len);
    }
    sn_http_response_fini(&resp);
    sn_http_destroy(&http);
    free(url);
    return out;
}

bool sn_fake_github_control(sn_fake_github_t *self, const char *what, const char *body_json)
{
    char *path = sn_strdupf("/__control/%s", what);
    long status = 0;
    char *out = s_fetch(self, "POST", path, body_json ? body_json : "{}", &status);
    if (status != 200)
        fprintf(stderr, "fake_github control %s refused: %s\n", what, out ? out : "(none)");
    free(out);
    free(path);
    return status == 200;
}

bool sn_fake_github_controlf(sn_fake_github_t *self, const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *body = NULL;
    if (vasprintf(&body, fmt, ap) < 0)
        body = NULL;
    va_end(ap);
    bool ok = body && sn_fake_github_control(self, what, body);
    free(body);
    return ok;
}

static json_t *s_get_json(sn_fake_github_t *self, const char *path)
{
    long status = 0;
    char *out = s_fetch(self, "GET", path, NULL, &status);
    json_t *j = out && status == 200 ? json_loads(out, 0, NULL) : NULL;
    free(out);
    return j;
}

json_t *sn_fake_github_stats(sn_fake_github_t *self)
{
    return s_get_json(self, "/__stats");
}

json_t *sn_fake_github_requests(sn_fake_github_t *self, const char *path_filter)
{
    char *path = sn_strdupf("/__requests?path=%s", path_filter ? path_filter : "");
    json_t *j = s_get_json(self, path);
    free(path);
    return j;
}

json_t *sn_fake_github_state(sn_fake_github_t *self)
{
    return s_get_json(self, "/__state");
}

int64_t sn_fake_github_stat(sn_fake_github_t *self, const char *name)
{
    json_t *j = sn_fake_github_stats(self);
    json_t *v = json_object_get(j, name);
    int64_t n = json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
    json_decref(j);
    return n;
}
