/* resource-validator (FirebaseDeployExecutor): checks a Firebase artifact before anything
 * of it is uploaded (resource_validator.h lists the checks). Service firebase.validate:
 * DeployRequest op "validate" with the artifact's sha256 -> DeployResult ok, or ok=false
 * with every problem in `problems` and joined in `reason`; `upload_bytes` and
 * `function_count` describe what a deploy would upload (firebase-executor counts them
 * against the target's budgets). The artifact is extracted into a private temp dir under
 * <state_dir>/firebase-validate/ (removed afterwards), on a job thread. Read-only: no
 * ledger job, nothing written in Redis, so a retry is always safe. */
#include "firebase/resource_validator.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "infraguard/secret_scan.h"
#include "sentinel/sn_agent.h"
#include "sentinel/sn_artifact.h"
#include "sentinel/sn_deploy_op.h"
#include "sentinel/sn_id.h"
#include "sentinel/sn_log.h"

#define LOG_MODULE "resource-validator"
#define S_JSON_MAX_BYTES (4 << 20)
#define S_MAIN_MAX_BYTES (8 << 20)
#define S_MAX_DEPTH 64
#define S_NAME_MAX 128

/* ---- the report ---------------------------------------------------------------------------- */

void resource_validator_report_init(resource_validator_report_t *self)
{
    memset(self, 0, sizeof *self);
}

void resource_validator_report_fini(resource_validator_report_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++)
        free(self->problems[i]);
    free(self->problems);
    memset(self, 0, sizeof *self);
}

void resource_validator_report_add(resource_validator_report_t *self, const char *fmt, ...)
{
    if (self->count >= RESOURCE_VALIDATOR_MAX_PROBLEMS) {
        self->dropped++;
        return;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    self->problems = sn_realloc(self->problems, (self->count + 1) * sizeof *self->problems);
    self->problems[self->count++] = sn_strdup(buf);
}

size_t resource_validator_report_total(const resource_validator_report_t *self)
{
    return self->count + self->dropped;
}

char *resource_validator_report_join(const resource_validator_report_t *self)
{
    size_t len = 1 + 32;
    for (size_t i = 0; i < self->count; i++)
        len += strlen(self->problems[i]) + 2;
    char *out = sn_malloc(len);
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; i < self->count; i++)
        at += (size_t)snprintf(out + at, len - at, "%s%s", i ? "; " : "", self->problems[i]);
    if (self->dropped)
        snprintf(out + at, len - at, "; and %zu more", self->dropped);
    return out;
}

/* ---- small pure helpers ------------------------------------------------------------------- */

bool resource_validator_runtime_is_supported(const char *runtime)
{
    static const char *const ok[] = {"nodejs18", "nodejs20", "nodejs22", NULL};
    for (size_t i = 0; runtime && ok[i]; i++)
        if (strcmp(runtime, ok[i]) == 0)
            return true;
    return false;
}

int resource_validator_node_major(const char *v)
{
    if (!v)
        return -1;
    while (*v == ' ')
        v++;
    if (strncmp(v, ">=", 2) == 0)
        v += 2;
    else if (*v == '^' || *v == '~' || *v == '=')
        v++;
    while (*v == ' ')
        v++;
    if (*v < '0' || *v > '9')
        return -1;
    int major = 0;
    while (*v >= '0' && *v <= '9' && major < 1000)
        major = major * 10 + (*v++ - '0');
    /* What may follow one major: ".x", ".1.2", nothing. Anything else (a range with
     * "||", " - ", "<") names more than one. */
    for (; *v; v++)
        if (!((*v >= '0' && *v <= '9') || *v == '.' || *v == 'x' || *v == 'X' || *v == '*'))
            return -1;
    return major;
}

/* A relative path inside the tree: not empty, not absolute, no ".." component. */
static bool s_rel_path_is_safe(const char *p)
{
    if (!p || !*p || p[0] == '/' || strlen(p) > PATH_MAX / 2)
        return false;
    const char *s = p;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return false;
        s += n;
        while (*s == '/')
            s++;
    }
    return true;
}

static bool s_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Sum of the sizes of regular files under @dir (symlinks not followed). */
static uint64_t s_tree_bytes(const char *dir, int depth)
{
    if (depth > S_MAX_DEPTH)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t total = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = sn_strdupf("%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0) {
            if (S_ISREG(sb.st_mode))
                total += (uint64_t)sb.st_size;
            else if (S_ISDIR(sb.st_mode))
                total += s_tree_bytes(p, depth + 1);
        }
        free(p);
    }
    closedir(d);
    return total;
}

/* Loads JSON file @path: NULL with *is_missing when absent, NULL with a problem when
 * unreadable or malformed (named @shown). */
static json_t *s_load_json(const char *path, const char *shown, bool *is_missing,
                           resource_validator_report_t *out)
{
    *is_missing = false;
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        *is_missing = true;
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        resource_validator_report_add(out, "%s is not a regular file", shown);
        return NULL;
    }
    if (sb.st_size > S_JSON_MAX_BYTES) {
        resource_validator_report_add(out, "%s is larger than %d bytes", shown, S_JSON_MAX_BYTES);
        return NULL;
    }
    json_error_t err;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        resource_validator_report_add(out, "%s:%d:%d: invalid JSON: %s", shown, err.line,
                                      err.column, err.text);
    return j;
}

/* ---- lockfile ------------------------------------------------------------------------------- */

static size_t s_obj_size(const json_t *o)
{
    return json_is_object(o) ? json_object_size(o) : 0;
}

/* Compares the dependency map @field of package.json with the lock root's. */
static void s_compare_root_deps(const json_t *package, const json_t *root, const char *field,
                                const char *where, resource_validator_report_t *out)
{
    const json_t *want = json_object_get(package, field);
    const json_t *have = root ? json_object_get(root, field) : NULL;
    const char *name;
    const json_t *v;
    if (json_is_object(want)) {
        json_object_foreach((json_t *)want, name, v)
        {
            const json_t *h = json_is_object(have) ? json_object_get(have, name) : NULL;
            if (!h)
                resource_validator_report_add(out,
                                              "%s: package-lock.json is out of sync: %s '%s' "
                                              "is not in the lockfile",
                                              where, field, name);
            else if (json_is_string(v) && json_is_string(h) &&
                     strcmp(json_string_value(v), json_string_value(h)) != 0)
                resource_validator_report_add(out,
                                              "%s: package-lock.json is out of sync: %s '%s' is "
                                              "%s in package.json but %s in the lockfile",
                                              where, field, name, json_string_value(v),
                                              json_string_value(h));
        }
    }
    if (json_is_object(have)) {
        json_object_foreach((json_t *)have, name, v)
        {
            if (!json_is_object(want) || !json_object_get(want, name))
                resource_validator_report_add(out,
                                              "%s: package-lock.json is out of sync: %s '%s' is "
                                              "in the lockfile but not in package.json",
                                              where, field, name);
        }
    }
}

void resource_validator_check_lockfile(const json_t *package, const json_t *lock, const char *where,
                                       resource_validator_report_t *out)
{
    static const char *const fields[] = {"dependencies", "devDependencies"};
    size_t deps = s_obj_size(json_object_get(package, "dependencies")) +
                  s_obj_size(json_object_get(package, "devDependencies"));
    if (!lock) {
        if (deps > 0)
            resource_validator_report_add(out,
                                          "%s: package.json has dependencies but no "
                                          "package-lock.json",
                                          where);
        return;
    }
    if (!json_is_object(lock)) {
        resource_validator_report_add(out, "%s: package-lock.json is not a JSON object", where);
        return;
    }
    json_int_t version = json_integer_value(json_object_get(lock, "lockfileVersion"));
    const json_t *packages = json_object_get(lock, "packages");
    if (version >= 2 && json_is_object(packages)) {
        const json_t *root = json_object_get(packages, "");
        if (!json_is_object(root)) {
            resource_validator_report_add(out, "%s: package-lock.json has no root package entry",
                                          where);
            return;
        }
        for (size_t f = 0; f < SN_ARRAY_LEN(fields); f++)
            s_compare_root_deps(package, root, fields[f], where, out);
        for (size_t f = 0; f < SN_ARRAY_LEN(fields); f++) {
            const json_t *m = json_object_get(package, fields[f]);
            const char *name;
            const json_t *v;
            if (!json_is_object(m))
                continue;
            json_object_foreach((json_t *)m, name, v)
            {
                char key[S_NAME_MAX + 16];
                snprintf(key, sizeof key, "node_modules/%s", name);
                const json_t *entry = json_object_get(packages, key);
                if (!json_is_object(entry) || (!json_is_string(json_object_get(entry, "version")) &&
                                               !json_is_true(json_object_get(entry, "link"))))
                    resource_validator_report_add(out,
                                                  "%s: package-lock.json has no installed "
                                                  "entry for '%s' (run npm install)",
                                                  where, name);
            }
        }
        return;
    }
    if (version == 1) {
        const json_t *locked = json_object_get(lock, "dependencies");
        for (size_t f = 0; f < SN_ARRAY_LEN(fields); f++) {
            const json_t *m = json_object_get(package, fields[f]);
            const char *name;
            const json_t *v;
            if (!json_is_object(m))
                continue;
            json_object_foreach((json_t *)m, name, v)
            {
                const json_t *entry = json_is_object(locked) ? json_object_get(locked, name) : NULL;
                if (!json_is_object(entry) || !json_is_string(json_object_get(entry, "version")))
                    resource_validator_report_add(out,
                                                  "%s: package-lock.json is out of sync: '%s' "
                                                  "is not in the lockfile",
                                                  where, name);
            }
        }
        return;
    }
    resource_validator_report_add(out, "%s: package-lock.json has an unknown lockfileVersion",
                                  where);
}

/* ---- functions ------------------------------------------------------------------------------ */

/* Cloud Functions v2 ids: a lowercase letter, then lowercase letters, digits, hyphens;
 * at most 63 (the Functions API refuses anything else). */
static bool s_function_id_is_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 63 || !(id[0] >= 'a' && id[0] <= 'z'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

static bool s_is_ident(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '$';
}

/* True if @text (the package's main file) exports @name: `exports.NAME`,
 * `export const|let|var|function|async function|class NAME`, or NAME inside
 * `export { ... }` / `module.exports = { ... }`. */
static bool s_exports(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(text, name); p; p = strstr(p + 1, name)) {
        if ((p > text && s_is_ident(p[-1])) || s_is_ident(p[n]))
            continue;
        /* Look back over blanks and a keyword or punctuation on the same statement. */
        const char *b = p;
        while (b > text && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b - text >= 8 && strncmp(b - 8, "exports.", 8) == 0)
            return true;
        static const char *const kw[] = {"const", "let", "var", "function", "class", "function*"};
        for (size_t k = 0; k < SN_ARRAY_LEN(kw); k++) {
            size_t kl = strlen(kw[k]);
            if ((size_t)(b - text) < kl || strncmp(b - kl, kw[k], kl) != 0)
                continue;
            const char *line = b - kl;
            while (line > text && line[-1] != '\n' && line[-1] != ';')
                line--;
            while (*line == ' ' || *line == '\t')
                line++;
            if (strncmp(line, "export ", 7) == 0)
                return true;
        }
        /* Inside braces opened by `export {` or `module.exports = {`. */
        const char *open = NULL;
        for (const char *q = p; q > text; q--) {
            if (q[-1] == '}' || q[-1] == ';')
                break;
            if (q[-1] == '{') {
                open = q - 1;
                break;
            }
        }
        if (open) {
            const char *s = open;
            while (s > text && (s[-1] == ' ' || s[-1] == '\t' || s[-1] == '\n' || s[-1] == '='))
                s--;
            if ((s - text >= 6 && strncmp(s - 6, "export", 6) == 0) ||
                (s - text >= 7 && strncmp(s - 7, "exports", 7) == 0))
                return true;
        }
    }
    return false;
}

static char *s_read_text(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char *buf = sn_malloc(max + 1);
    size_t got = 0;
    ssize_t r;
    while (got < max && (r = read(fd, buf + got, max - got)) > 0)
        got += (size_t)r;
    close(fd);
    buf[got] = '\0';
    return buf;
}

/* One codebase: its source dir, package.json (engines, main), lockfile, endpoints. */
static void s_check_codebase(const char *root, const json_t *cb, size_t index,
                             resource_validator_report_t *out)
{
    const json_t *jsrc = json_object_get(cb, "source");
    const char *source = json_is_string(jsrc) ? json_string_value(jsrc) : "functions";
    char where[S_NAME_MAX + 32];
    snprintf(where, sizeof where, "functions[%zu] (%.*s)", index, S_NAME_MAX, source);
    if (jsrc && !json_is_string(jsrc)) {
        resource_validator_report_add(out, "%s: source must be a string", where);
        return;
    }
    if (!s_rel_path_is_safe(source)) {
        resource_validator_report_add(out, "%s: source must be a relative path inside the artifact",
                                      where);
        return;
    }
    char *dir = sn_strdupf("%s/%s", root, source);
    char *pkg_path = sn_strdupf("%s/package.json", dir);
    char *lock_path = sn_strdupf("%s/package-lock.json", dir);
    json_t *pkg = NULL, *lock = NULL;
    char *main_text = NULL;
    if (!s_is_dir(dir)) {
        resource_validator_report_add(out, "%s: source directory '%s' is not in the artifact",
                                      where, source);
        goto out;
    }
    out->upload_bytes += s_tree_bytes(dir, 0);

    const json_t *jrt = json_object_get(cb, "runtime");
    const char *runtime = json_is_string(jrt) ? json_string_value(jrt) : NULL;
    if (jrt && !json_is_string(jrt))
        resource_validator_report_add(out, "%s: runtime must be a string", where);
    else if (runtime && !resource_validator_runtime_is_supported(runtime))
        resource_validator_report_add(out,
                                      "%s: runtime '%.32s' is not supported (nodejs18, "
                                      "nodejs20, nodejs22)",
                                      where, runtime);

    bool is_missing = false;
    char shown[S_NAME_MAX + 32];
    snprintf(shown, sizeof shown, "%.*s/package.json", S_NAME_MAX, source);
    pkg = s_load_json(pkg_path, shown, &is_missing, out);
    if (is_missing)
        resource_validator_report_add(out, "%s: no package.json", where);
    if (pkg && !json_is_object(pkg)) {
        resource_validator_report_add(out, "%s: package.json is not a JSON object", where);
        json_decref(pkg);
        pkg = NULL;
    }
    if (pkg) {
        const json_t *engines = json_object_get(pkg, "engines");
        const json_t *node = json_is_object(engines) ? json_object_get(engines, "node") : NULL;
        if (node) {
            int major =
                json_is_string(node) ? resource_validator_node_major(json_string_value(node)) : -1;
            char rt[24];
            snprintf(rt, sizeof rt, "nodejs%d", major);
            if (major < 0 || !resource_validator_runtime_is_supported(rt))
                resource_validator_report_add(out,
                                              "%s: package.json engines.node '%.32s' is not a "
                                              "supported Node.js major (18, 20, 22)",
                                              where,
                                              json_is_string(node) ? json_string_value(node) : "?");
        } else if (!runtime) {
            resource_validator_report_add(out,
                                          "%s: no runtime: set functions.runtime in "
                                          "firebase.json or engines.node in package.json",
                                          where);
        }
        snprintf(shown, sizeof shown, "%.*s/package-lock.json", S_NAME_MAX, source);
        lock = s_load_json(lock_path, shown, &is_missing, out);
        if (lock || is_missing)
            resource_validator_check_lockfile(pkg, lock, where, out);
    }

    const json_t *endpoints = json_object_get(cb, "endpoints");
    if (endpoints && !json_is_object(endpoints)) {
        resource_validator_report_add(out, "%s: endpoints must be an object", where);
        goto out;
    }
    if (s_obj_size(endpoints) > 0) {
        const json_t *jmain = pkg ? json_object_get(pkg, "main") : NULL;
        const char *main = json_is_string(jmain) ? json_string_value(jmain) : "index.js";
        if (!s_rel_path_is_safe(main)) {
            resource_validator_report_add(out, "%s: package.json main must be a relative path",
                                          where);
        } else {
            char *mp = sn_strdupf("%s/%s", dir, main);
            main_text = s_read_text(mp, S_MAIN_MAX_BYTES);
            free(mp);
            if (!main_text)
                resource_validator_report_add(out, "%s: main file '%.*s' is not in the source",
                                              where, S_NAME_MAX, main);
        }
    }
    const char *id;
    const json_t *ep;
    json_object_foreach((json_t *)endpoints, id, ep)
    {
        out->function_count++;
        if (!s_function_id_is_valid(id)) {
            resource_validator_report_add(out, "%s: invalid function id '%.64s'", where, id);
            continue;
        }
        if (!json_is_object(ep)) {
            resource_validator_report_add(out, "%s: endpoint '%s' must be an object", where, id);
            continue;
        }
        const json_t *jentry = json_object_get(ep, "entryPoint");
        const char *entry = json_is_string(jentry) ? json_string_value(jentry) : id;
        if (main_text && !s_exports(main_text, entry))
            resource_validator_report_add(out,
                                          "%s: function '%s': entry point '%.64s' is not "
                                          "exported by the source",
                                          where, id, entry);
    }
out:
    free(main_text);
    json_decref(pkg);
    json_decref(lock);
    free(lock_path);
    free(pkg_path);
    free(dir);
}

/* True if some codebase of @functions declares endpoint @id. */
static bool s_declares(const json_t *functions, const char *id)
{
    if (json_is_object(functions)) {
        const json_t *eps = json_object_get(functions, "endpoints");
        return json_is_object(eps) && json_object_get(eps, id);
    }
    size_t i;
    const json_t *cb;
    json_array_foreach((json_t *)functions, i, cb)
    {
        const json_t *eps = json_object_get(cb, "endpoints");
        if (json_is_object(eps) && json_object_get(eps, id))
            return true;
    }
    return false;
}

/* ---- hosting -------------------------------------------------------------------------------- */

static bool s_has_one_matcher(const json_t *o)
{
    int n = 0;
    static const char *const keys[] = {"source", "glob", "regex"};
    for (size_t i = 0; i < SN_ARRAY_LEN(keys); i++) {
        const json_t *v = json_object_get(o, keys[i]);
        if (v)
            n += json_is_string(v) && *json_string_value(v) ? 1 : 100;
    }
    return n == 1;
}

static bool s_header_key_is_valid(const char *k)
{
    if (!*k)
        return false;
    for (; *k; k++) {
        unsigned char c = (unsigned char)*k;
        if (c <= 32 || c >= 127 || strchr("()<>@,;:\\\"/[]?={}", c))
            return false;
    }
    return true;
}

static void s_check_rewrites(const json_t *rewrites, const json_t *functions, const char *where,
                             resource_validator_report_t *out)
{
    if (!rewrites)
        return;
    if (!json_is_array(rewrites)) {
        resource_validator_report_add(out, "%s: rewrites must be an array", where);
        return;
    }
    size_t i;
    const json_t *r;
    json_array_foreach((json_t *)rewrites, i, r)
    {
        if (!json_is_object(r)) {
            resource_validator_report_add(out, "%s: rewrites[%zu] must be an object", where, i);
            continue;
        }
        if (!s_has_one_matcher(r))
            resource_validator_report_add(out,
                                          "%s: rewrites[%zu] needs exactly one of source, glob, "
                                          "regex",
                                          where, i);
        static const char *const dests[] = {"destination", "function", "run", "dynamicLinks"};
        int n = 0;
        for (size_t k = 0; k < SN_ARRAY_LEN(dests); k++)
            n += json_object_get(r, dests[k]) != NULL;
        if (n != 1) {
            resource_validator_report_add(out,
                                          "%s: rewrites[%zu] needs exactly one of destination, "
                                          "function, run, dynamicLinks",
                                          where, i);
            continue;
        }
        const json_t *dst = json_object_get(r, "destination");
        if (dst && (!json_is_string(dst) || !*json_string_value(dst)))
            resource_validator_report_add(out, "%s: rewrites[%zu].destination must be a path",
                                          where, i);
        const json_t *fn = json_object_get(r, "function");
        if (!fn)
            continue;
        const json_t *jid = json_is_object(fn) ? json_object_get(fn, "functionId") : fn;
        if (!json_is_string(jid) || !*json_string_value(jid)) {
            resource_validator_report_add(out, "%s: rewrites[%zu].function names no function",
                                          where, i);
            continue;
        }
        const char *id = json_string_value(jid);
        if (!functions)
            resource_validator_report_add(out,
                                          "%s: rewrites[%zu] goes to function '%.64s' but "
                                          "firebase.json declares no functions",
                                          where, i, id);
        else if (!s_declares(functions, id))
            resource_validator_report_add(out,
                                          "%s: rewrites[%zu] goes to function '%.64s', which "
                                          "the functions source does not declare",
                                          where, i, id);
    }
}

static void s_check_headers(const json_t *headers, const char *where,
                            resource_validator_report_t *out)
{
    if (!headers)
        return;
    if (!json_is_array(headers)) {
        resource_validator_report_add(out, "%s: headers must be an array", where);
        return;
    }
    size_t i;
    const json_t *h;
    json_array_foreach((json_t *)headers, i, h)
    {
        if (!json_is_object(h)) {
            resource_validator_report_add(out, "%s: headers[%zu] must be an object", where, i);
            continue;
        }
        if (!s_has_one_matcher(h))
            resource_validator_report_add(out,
                                          "%s: headers[%zu] needs exactly one of source, glob, "
                                          "regex",
                                          where, i);
        const json_t *list = json_object_get(h, "headers");
        if (!json_is_array(list) || json_array_size(list) == 0) {
            resource_validator_report_add(out, "%s: headers[%zu].headers must be a non-empty array",
                                          where, i);
            continue;
        }
        size_t k;
        const json_t *kv;
        json_array_foreach((json_t *)list, k, kv)
        {
            const json_t *key = json_object_get(kv, "key");
            const json_t *val = json_object_get(kv, "value");
            if (!json_is_string(key) || !s_header_key_is_valid(json_string_value(key)))
                resource_validator_report_add(out,
                                              "%s: headers[%zu].headers[%zu].key is not a valid "
                                              "header name",
                                              where, i, k);
            else if (!json_is_string(val) || strpbrk(json_string_value(val), "\r\n"))
                resource_validator_report_add(out,
                                              "%s: headers[%zu].headers[%zu] (%.64s): value must "
                                              "be a string without line breaks",
                                              where, i, k, json_string_value(key));
        }
    }
}

static void s_check_hosting(const char *root, const json_t *h, const json_t *functions,
                            const char *where, resource_validator_report_t *out)
{
    if (!json_is_object(h)) {
        resource_validator_report_add(out, "%s must be an object", where);
        return;
    }
    const json_t *pub = json_object_get(h, "public");
    if (!json_is_string(pub)) {
        resource_validator_report_add(out, "%s.public must name the directory to deploy", where);
    } else if (!s_rel_path_is_safe(json_string_value(pub))) {
        resource_validator_report_add(out, "%s.public must be a relative path inside the artifact",
                                      where);
    } else {
        char *dir = sn_strdupf("%s/%s", root, json_string_value(pub));
        if (!s_is_dir(dir))
            resource_validator_report_add(out, "%s.public: directory '%.*s' is not in the artifact",
                                          where, S_NAME_MAX, json_string_value(pub));
        else
            out->upload_bytes += s_tree_bytes(dir, 0);
        free(dir);
    }
    s_check_rewrites(json_object_get(h, "rewrites"), functions, where, out);
    s_check_headers(json_object_get(h, "headers"), where, out);
}

/* ---- the whole tree ------------------------------------------------------------------------- */

void resource_validator_check_config(const char *root, const json_t *config,
                                     resource_validator_report_t *out)
{
    if (!json_is_object(config)) {
        resource_validator_report_add(out, "firebase.json must be a JSON object");
        return;
    }
    const json_t *functions = json_object_get(config, "functions");
    if (functions && !json_is_object(functions) && !json_is_array(functions)) {
        resource_validator_report_add(out, "firebase.json functions must be an object or an array");
        functions = NULL;
    }
    const json_t *hosting = json_object_get(config, "hosting");
    if (json_is_array(hosting)) {
        size_t i;
        const json_t *h;
        json_array_foreach((json_t *)hosting, i, h)
        {
            char where[48];
            snprintf(where, sizeof where, "hosting[%zu]", i);
            s_check_hosting(root, h, functions, where, out);
        }
    } else if (hosting) {
        s_check_hosting(root, hosting, functions, "hosting", out);
    }
    if (json_is_object(functions)) {
        s_check_codebase(root, functions, 0, out);
    } else if (json_is_array(functions)) {
        size_t i;
        const json_t *cb;
        json_array_foreach((json_t *)functions, i, cb)
        {
            if (json_is_object(cb))
                s_check_codebase(root, cb, i, out);
            else
                resource_validator_report_add(out, "functions[%zu] must be an object", i);
        }
    }
}

void resource_validator_check_secrets(const char *root, resource_validator_report_t *out)
{
    secret_findings_t f;
    secret_findings_init(&f);
    if (secret_scan_dir(root, NULL, &f) != SN_OK) {
        resource_validator_report_add(out, "cannot scan the artifact for credentials");
    } else {
        for (size_t i = 0; i < f.count; i++)
            resource_validator_report_add(out, "credential in %.*s:%u (%s)", 200, f.items[i].file,
                                          f.items[i].line, f.items[i].kind);
        if (f.is_truncated)
            resource_validator_report_add(out, "more credentials than the scanner lists");
    }
    secret_findings_fini(&f);
}

void resource_validator_check_tree(const char *root, resource_validator_report_t *out)
{
    char *path = sn_strdupf("%s/firebase.json", root);
    bool is_missing = false;
    json_t *config = s_load_json(path, "firebase.json", &is_missing, out);
    free(path);
    if (config)
        resource_validator_check_config(root, config, out);
    else if (is_missing)
        out->upload_bytes += s_tree_bytes(root, 0); /* the whole tree is the public dir */
    json_decref(config);
    resource_validator_check_secrets(root, out);
}

/* ---- the role ------------------------------------------------------------------------------- */

typedef struct {
    sn_artifact_t *store;
    char *work_dir; /* <state_dir>/firebase-validate */
} s_state_t;

static bool s_name_is_valid(const char *s)
{
    if (!s || !*s || s[0] == '.' || strlen(s) > S_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!s_is_ident(*s) && *s != '.' && *s != '-')
            return false;
    return true;
}

static sn_rc_t s_init(sn_ctx_t *ctx, void **state)
{
    const sn_config_t *cfg = sn_ctx_config(ctx);
    const char *state_dir = cfg->state_dir ? cfg->state_dir : "./var";
    s_state_t *st = sn_calloc(1, sizeof *st);
    st->store = sn_deploy_op_store_new(ctx);
    st->work_dir = sn_strdupf("%s/firebase-validate", state_dir);
    *state = st;
    if (!st->store || (mkdir(st->work_dir, 0700) != 0 && errno != EEXIST)) {
        sn_error(LOG_MODULE, "cannot use work dir %s or the artifact store: %s", st->work_dir,
                 strerror(errno));
        return SN_ERROR;
    }
    sn_info(LOG_MODULE, "serving firebase.validate work=%s", st->work_dir);
    return SN_OK;
}

static void s_destroy(sn_ctx_t *ctx, void *state)
{
    (void)ctx;
    s_state_t *st = state;
    if (!st)
        return;
    sn_artifact_destroy(&st->store);
    free(st->work_dir);
    free(st);
}

static sn_rc_t s_job(sn_ctx_t *ctx, void *state, const sn_request_t *creq, sn_envelope_t *reply,
                     const char **nak_reason)
{
    (void)ctx;
    (void)nak_reason;
    sn_request_t *req = (sn_request_t *)creq;
    s_state_t *st = state;
    const Sentinel__V1__DeployRequest *in = sn_request_envelope(req)->deploy_request;
    Sentinel__V1__DeployResult *res = sn_request_alloc(req, sizeof *res);
    sentinel__v1__deploy_result__init(res);
    Sentinel__V1__Deploy *out = sn_request_alloc(req, sizeof *out);
    sentinel__v1__deploy__init(out);
    if (in->deploy)
        *out = *in->deploy; /* shallow: strings live in the request */
    res->deploy = out;
    reply->type = "deploy.result";
    reply->body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY_RESULT;
    reply->deploy_result = res;
    const char *deploy_id = in->deploy ? in->deploy->deploy_id : "";
    const char *op = in->op ? in->op : "";
    resource_validator_report_t rep;
    resource_validator_report_init(&rep);
    char *dir = NULL;
    int64_t t0 = sn_mono_ms();
    if (strcmp(op, "validate") != 0) {
        res->reason = "unknown op (validate)";
        goto answer;
    }
    if (!s_name_is_valid(deploy_id)) {
        res->reason = "invalid deploy id";
        goto answer;
    }
    if (!sn_artifact_sha_is_valid(in->artifact_sha256)) {
        res->reason = "invalid artifact sha256";
        goto answer;
    }
    char rnd[17];
    sn_random_hex(rnd, 8);
    dir = sn_strdupf("%s/%s-%s", st->work_dir, deploy_id, rnd);
    sn_rc_t rc = sn_artifact_extract(st->store, in->artifact_sha256, dir);
    if (rc != SN_OK) {
        res->is_transient = rc == SN_AGAIN;
        res->reason = rc == SN_DECLINED ? "artifact is not in the store on this host"
                      : rc == SN_AGAIN  ? "artifact could not be read"
                                        : "artifact is corrupted or unsafe (refused)";
        goto answer;
    }
    resource_validator_check_tree(dir, &rep);
    res->upload_bytes = rep.upload_bytes;
    res->function_count = rep.function_count;
    if (resource_validator_report_total(&rep) == 0) {
        res->ok = true;
        char *why = sn_strdupf("valid: %llu bytes to upload, %u functions",
                               (unsigned long long)rep.upload_bytes, rep.function_count);
        res->reason = sn_request_strdup(req, why);
        free(why);
    } else {
        char *joined = resource_validator_report_join(&rep);
        char *why = sn_strdupf("validation failed (%zu problems): %s",
                               resource_validator_report_total(&rep), joined);
        res->reason = sn_request_strdup(req, why);
        free(why);
        free(joined);
        res->n_problems = rep.count;
        res->problems = sn_request_alloc(req, (rep.count ? rep.count : 1) * sizeof(char *));
        for (size_t i = 0; i < rep.count; i++)
            res->problems[i] = sn_request_strdup(req, rep.problems[i]);
    }
answer:
    if (dir && sn_artifact_rmtree(dir) != SN_OK)
        sn_warn(LOG_MODULE, "cannot remove %s", dir);
    if (res->ok)
        sn_info(LOG_MODULE, "valid deploy=%s bytes=%llu functions=%u ms=%lld", deploy_id,
                (unsigned long long)rep.upload_bytes, rep.function_count,
                (long long)(sn_mono_ms() - t0));
    else
        sn_warn(LOG_MODULE, "refused deploy=%s problems=%zu reason=%s",
                s_name_is_valid(deploy_id) ? deploy_id : "(invalid)",
                resource_validator_report_total(&rep), res->reason);
    resource_validator_report_fini(&rep);
    free(dir);
    return SN_OK;
}

static void s_request(sn_ctx_t *ctx, void *state, sn_request_t *req)
{
    sn_deploy_op_defer(ctx, req, LOG_MODULE, s_job, state);
}

const sn_role_t resource_validator_role = {
    .name = "resource-validator",
    .agent = "FirebaseDeployExecutor",
    .summary = "checks a Firebase artifact (firebase.json, runtimes, lockfiles, credentials)",
    .services = (const char *const[]){"firebase.validate", NULL},
    .leadership = SN_LEADERSHIP_NONE,
    .credit = 2,
    .init = s_init,
    .on_request = s_request,
    .destroy = s_destroy,
};
