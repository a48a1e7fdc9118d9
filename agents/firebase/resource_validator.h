/* resource-validator's checks (FirebaseDeployExecutor), as pure functions over an
 * extracted artifact tree, so that they are unit-tested without a mesh. The role
 * (resource_validator.c, service firebase.validate) extracts the artifact and runs
 * resource_validator_check_tree on it before anything is uploaded.
 *
 * What is checked (docs/firebase-executor.md §validation):
 *  - firebase.json (optional: without it the whole tree is the Hosting public dir):
 *    valid JSON; every hosting entry's `public` is a relative directory that exists;
 *    rewrites have a source/glob/regex and exactly one destination, and a rewrite to a
 *    function names a function the functions config declares; headers entries have a
 *    source/glob/regex and a non-empty list of {key, value} with a token key and a value
 *    without line breaks;
 *  - functions (firebase.json `functions`, an object or an array of codebases, as
 *    docs/firebase.md defines it): each codebase's `source` directory exists, its
 *    `runtime` (or package.json engines.node when runtime is unset) is a supported
 *    Node.js (nodejs18, nodejs20, nodejs22), each declared endpoint has a valid id and its
 *    entryPoint is exported by the package's main file;
 *  - package.json / package-lock.json of each codebase: a lockfile exists when there are
 *    dependencies, its root entry lists exactly package.json's dependencies and
 *    devDependencies, and every dependency has an installed entry;
 *  - no credentials in any file to upload (infraguard's secret scanner: file, line and
 *    kind only, never the value).
 * Any thread. */
#ifndef RESOURCE_VALIDATOR_H
#define RESOURCE_VALIDATOR_H

#include <jansson.h>

#include "sentinel/sn_common.h"

#define RESOURCE_VALIDATOR_MAX_PROBLEMS 64

/* What a validation found (plain value struct: _init / _fini). Problems are one line
 * each, secret-free; after RESOURCE_VALIDATOR_MAX_PROBLEMS the rest are only counted. */
typedef struct {
    char **problems;
    size_t count;            /* problems kept */
    size_t dropped;          /* problems beyond the cap */
    uint64_t upload_bytes;   /* bytes of the files to upload (public dirs + function sources) */
    uint32_t function_count; /* endpoints declared */
} resource_validator_report_t;

void resource_validator_report_init(resource_validator_report_t *self);
/* Frees the problems; the struct is zeroed. NULL-safe. */
void resource_validator_report_fini(resource_validator_report_t *self);
/* Appends one problem (formatted, copied). */
void resource_validator_report_add(resource_validator_report_t *self, const char *fmt, ...)
    SN_PRINTF(2, 3);
/* Total problems found (kept + dropped). */
size_t resource_validator_report_total(const resource_validator_report_t *self);
/* The problems joined with "; " (plus "; and N more" when some were dropped), for a
 * DeployResult reason. Caller frees; "" when there are none. */
char *resource_validator_report_join(const resource_validator_report_t *self);

/* True for the Cloud Functions runtimes accepted: "nodejs18", "nodejs20", "nodejs22". */
bool resource_validator_runtime_is_supported(const char *runtime);

/* The Node.js major of a package.json engines.node value ("20", "20.x", "^20.1.0",
 * ">=18", "~22"), or -1 if it names no single major (empty, "*", "18 || 20", junk). */
int resource_validator_node_major(const char *engines_node);

/* Checks a package's lockfile against its manifest (both borrowed; @lock NULL: no
 * lockfile). @where names the package in the problems (e.g. "functions"). */
void resource_validator_check_lockfile(const json_t *package, const json_t *lock, const char *where,
                                       resource_validator_report_t *out);

/* Checks the firebase.json document @config (borrowed) against the tree at @root:
 * hosting, rewrites, headers, functions codebases (runtime, engines, lockfile, exports).
 * Adds the upload bytes and function count to @out. */
void resource_validator_check_config(const char *root, const json_t *config,
                                     resource_validator_report_t *out);

/* Scans every file under @root for credentials (one problem per finding). */
void resource_validator_check_secrets(const char *root, resource_validator_report_t *out);

/* Everything: reads @root/firebase.json if present (else counts the whole tree as the
 * public dir), then resource_validator_check_config and _check_secrets. */
void resource_validator_check_tree(const char *root, resource_validator_report_t *out);

#endif
