/* Unit tests of resource-validator's checks (agents/firebase/resource_validator.c) on
 * small artifact trees written here: a good tree passes with its bytes and functions
 * counted; each broken rule (public dir, rewrites to undeclared or unexported functions,
 * malformed headers, unsupported runtimes and engines, missing or stale lockfiles, a
 * leaked credential, malformed JSON, unsafe paths) yields a problem naming it, and the
 * credential's value never appears in any problem. Fake credentials are assembled at
 * run time so this file does not look like a leak. */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebase/resource_validator.h"

static char *s_root;

/* ---- fixture trees ---------------------------------------------------------------------- */

static void s_write(const char *rel, const char *text)
{
    char *path = sn_strdupf("%s/%s", s_root, rel);
    /* Parents first. */
    for (char *p = path + strlen(s_root) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        (void)mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    free(path);
}

static const char *const s_good_config =
    "{\"hosting\": {\"public\": \"public\",\n"
    "  \"rewrites\": [{\"source\": \"/api/**\", \"function\": \"api\"},\n"
    "               {\"source\": \"/hook\", \"function\": {\"functionId\": \"hook\"}},\n"
    "               {\"source\": \"**\", \"destination\": \"/index.html\"}],\n"
    "  \"headers\": [{\"source\": \"**/*.js\", \"headers\": [{\"key\": \"Cache-Control\", "
    "\"value\": \"max-age=60\"}]}]},\n"
    " \"functions\": {\"source\": \"functions\", \"runtime\": \"nodejs20\",\n"
    "  \"endpoints\": {\"api\": {\"entryPoint\": \"api\"}, \"hook\": {}}}}\n";

static const char *const s_good_package =
    "{\"name\": \"fns\", \"main\": \"index.js\", \"engines\": {\"node\": \"20\"},\n"
    " \"dependencies\": {\"firebase-functions\": \"^5.0.0\"}}\n";

static const char *const s_good_lock =
    "{\"name\": \"fns\", \"lockfileVersion\": 3, \"packages\": {\n"
    "  \"\": {\"name\": \"fns\", \"dependencies\": {\"firebase-functions\": \"^5.0.0\"}},\n"
    "  \"node_modules/firebase-functions\": {\"version\": \"5.1.0\"}}}\n";

static const char *const s_good_index =
    "const functions = require('firebase-functions');\n"
    "exports.api = functions.https.onRequest((req, res) => res.send('ok'));\n"
    "exports.hook = functions.https.onRequest((req, res) => res.send('hook'));\n";

static void s_good_tree(void)
{
    s_write("firebase.json", s_good_config);
    s_write("public/index.html", "<h1>hello</h1>\n"); /* 15 bytes */
    s_write("public/app.js", "console.log(1);\n");    /* 16 bytes */
    s_write("functions/package.json", s_good_package);
    s_write("functions/package-lock.json", s_good_lock);
    s_write("functions/index.js", s_good_index);
}

static int s_setup(void **state)
{
    (void)state;
    s_root = sn_test_tmpdir("rvalid");
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    sn_test_rmdir(s_root);
    free(s_root);
    s_root = NULL;
    return 0;
}

/* Runs the whole check; returns the joined problems (caller frees). */
static char *s_check(resource_validator_report_t *rep)
{
    resource_validator_report_init(rep);
    resource_validator_check_tree(s_root, rep);
    return resource_validator_report_join(rep);
}

static void s_expect_problem(const char *needle)
{
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    if (!strstr(joined, needle))
        fail_msg("expected a problem containing \"%s\", got \"%s\"", needle, joined);
    free(joined);
    resource_validator_report_fini(&rep);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_resource_validator_good_tree_passes(void **state)
{
    (void)state;
    s_good_tree();
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    assert_string_equal(joined, "");
    assert_int_equal(resource_validator_report_total(&rep), 0);
    assert_int_equal(rep.function_count, 2);
    /* public (31 bytes) + the functions source (three files). */
    uint64_t fn_bytes = strlen(s_good_package) + strlen(s_good_lock) + strlen(s_good_index);
    assert_int_equal(rep.upload_bytes, 31 + fn_bytes);
    free(joined);
    resource_validator_report_fini(&rep);
}

static void test_resource_validator_no_config_is_a_static_site(void **state)
{
    (void)state;
    s_write("index.html", "<p>plain</p>\n");
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    assert_string_equal(joined, "");
    assert_int_equal(rep.upload_bytes, 13);
    assert_int_equal(rep.function_count, 0);
    free(joined);
    resource_validator_report_fini(&rep);
}

static void test_resource_validator_malformed_config(void **state)
{
    (void)state;
    s_write("firebase.json", "{\"hosting\": {\"public\": \"public\",}\n");
    s_expect_problem("firebase.json:1:");
    s_write("firebase.json", "[1, 2]");
    s_expect_problem("firebase.json must be a JSON object");
    s_write("firebase.json", "{\"hosting\": {\"public\": 1}, \"functions\": 7}");
    s_expect_problem("hosting.public must name the directory");
    s_expect_problem("functions must be an object or an array");
}

static void test_resource_validator_public_dir(void **state)
{
    (void)state;
    s_good_tree();
    s_write("firebase.json", "{\"hosting\": {\"public\": \"dist\"}}");
    s_expect_problem("hosting.public: directory 'dist' is not in the artifact");
    s_write("firebase.json", "{\"hosting\": {\"public\": \"../etc\"}}");
    s_expect_problem("hosting.public must be a relative path inside the artifact");
    s_write("firebase.json", "{\"hosting\": {\"public\": \"/etc\"}}");
    s_expect_problem("relative path");
    /* Multi-site: each entry is checked. */
    s_write("firebase.json", "{\"hosting\": [{\"public\": \"public\"}, {\"public\": \"nope\"}]}");
    s_expect_problem("hosting[1].public: directory 'nope'");
}

static void test_resource_validator_rewrites(void **state)
{
    (void)state;
    s_good_tree();
    s_write("firebase.json",
            "{\"hosting\": {\"public\": \"public\", \"rewrites\": [{\"source\": \"/x\", "
            "\"function\": \"ghost\"}]},\n"
            " \"functions\": {\"runtime\": \"nodejs20\", \"endpoints\": {\"api\": {}}}}");
    s_expect_problem("rewrites[0] goes to function 'ghost', which the functions source does not");
    s_write("firebase.json", "{\"hosting\": {\"public\": \"public\", \"rewrites\": [{\"source\": "
                             "\"/x\", \"function\": \"api\"}]}}");
    s_expect_problem("firebase.json declares no functions");
    s_write("firebase.json",
            "{\"hosting\": {\"public\": \"public\", \"rewrites\": [{\"source\": \"/x\", "
            "\"destination\": \"/a\", \"function\": \"api\"}, {\"destination\": \"/b\"}, 5]}}");
    s_expect_problem("rewrites[0] needs exactly one of destination, function, run");
    s_expect_problem("rewrites[1] needs exactly one of source, glob, regex");
    s_expect_problem("rewrites[2] must be an object");
    s_write("firebase.json", "{\"hosting\": {\"public\": \"public\", \"rewrites\": {}}}");
    s_expect_problem("rewrites must be an array");
}

static void test_resource_validator_function_not_exported(void **state)
{
    (void)state;
    s_good_tree();
    s_write("functions/index.js", "exports.api = 1;\n// hook is mentioned but not exported\n");
    s_expect_problem("function 'hook': entry point 'hook' is not exported");
    /* ES module syntax and export lists count. */
    s_write("functions/index.js", "export const api = 1;\nconst hook = 2;\nexport { hook };\n");
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    assert_string_equal(joined, "");
    free(joined);
    resource_validator_report_fini(&rep);
    s_write("functions/index.js", "const api = 1;\nmodule.exports = { api, hook: api };\n");
    joined = s_check(&rep);
    assert_string_equal(joined, "");
    free(joined);
    resource_validator_report_fini(&rep);
    char *index = sn_strdupf("%s/functions/index.js", s_root);
    assert_int_equal(unlink(index), 0);
    free(index);
    s_expect_problem("main file 'index.js' is not in the source");
    s_write("firebase.json", "{\"functions\": {\"runtime\": \"nodejs20\", \"endpoints\": "
                             "{\"9bad\": {}}}}");
    s_expect_problem("invalid function id '9bad'");
    s_write("firebase.json", "{\"functions\": {\"runtime\": \"nodejs20\", \"endpoints\": "
                             "{\"helloWorld\": {}}}}");
    s_expect_problem("invalid function id 'helloWorld'");
    s_write("firebase.json", "{\"functions\": {\"source\": \"fns\", \"runtime\": \"nodejs20\"}}");
    s_expect_problem("source directory 'fns' is not in the artifact");
}

static void test_resource_validator_headers(void **state)
{
    (void)state;
    s_good_tree();
    s_write("firebase.json",
            "{\"hosting\": {\"public\": \"public\", \"headers\": [\n"
            " {\"source\": \"**\", \"headers\": []},\n"
            " {\"headers\": [{\"key\": \"X-A\", \"value\": \"1\"}]},\n"
            " {\"source\": \"**\", \"headers\": [{\"key\": \"Bad Name\", \"value\": \"1\"}]},\n"
            " {\"source\": \"**\", \"headers\": [{\"key\": \"X-B\", \"value\": \"a\\r\\nb\"}]},\n"
            " {\"source\": \"**\", \"headers\": [{\"key\": \"X-C\", \"value\": 3}]}]}}");
    s_expect_problem("headers[0].headers must be a non-empty array");
    s_expect_problem("headers[1] needs exactly one of source, glob, regex");
    s_expect_problem("headers[2].headers[0].key is not a valid header name");
    s_expect_problem("headers[3].headers[0] (X-B): value must be a string without line breaks");
    s_expect_problem("headers[4].headers[0] (X-C)");
}

static void test_resource_validator_runtime_and_engines(void **state)
{
    (void)state;
    assert_true(resource_validator_runtime_is_supported("nodejs18"));
    assert_true(resource_validator_runtime_is_supported("nodejs22"));
    assert_false(resource_validator_runtime_is_supported("nodejs16"));
    assert_false(resource_validator_runtime_is_supported("python312"));
    assert_false(resource_validator_runtime_is_supported(NULL));
    assert_int_equal(resource_validator_node_major("20"), 20);
    assert_int_equal(resource_validator_node_major("20.x"), 20);
    assert_int_equal(resource_validator_node_major("^22.1.0"), 22);
    assert_int_equal(resource_validator_node_major(">=18"), 18);
    assert_int_equal(resource_validator_node_major("~18.2"), 18);
    assert_int_equal(resource_validator_node_major("18 || 20"), -1);
    assert_int_equal(resource_validator_node_major("*"), -1);
    assert_int_equal(resource_validator_node_major(""), -1);
    assert_int_equal(resource_validator_node_major(NULL), -1);

    s_good_tree();
    s_write("firebase.json", "{\"functions\": {\"runtime\": \"nodejs16\"}}");
    s_expect_problem("runtime 'nodejs16' is not supported");
    s_write("functions/package.json", "{\"engines\": {\"node\": \"16\"}, \"dependencies\": "
                                      "{\"firebase-functions\": \"^5.0.0\"}}");
    s_write("firebase.json", "{\"functions\": {}}");
    s_expect_problem("engines.node '16' is not a supported Node.js major");
    s_write("functions/package.json", "{\"dependencies\": {\"firebase-functions\": \"^5.0.0\"}}");
    s_expect_problem("no runtime: set functions.runtime");
    /* A runtime in firebase.json is enough. */
    s_write("firebase.json", "{\"functions\": {\"runtime\": \"nodejs22\"}}");
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    assert_string_equal(joined, "");
    free(joined);
    resource_validator_report_fini(&rep);
    char *pkg = sn_strdupf("%s/functions/package.json", s_root);
    assert_int_equal(unlink(pkg), 0);
    free(pkg);
    s_expect_problem("functions[0] (functions): no package.json");
}

static json_t *s_json(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j)
        fail_msg("bad test JSON: %s", err.text);
    return j;
}

static char *s_lock_problems(const char *package, const char *lock)
{
    json_t *p = s_json(package);
    json_t *l = lock ? s_json(lock) : NULL;
    resource_validator_report_t rep;
    resource_validator_report_init(&rep);
    resource_validator_check_lockfile(p, l, "fns", &rep);
    char *joined = resource_validator_report_join(&rep);
    resource_validator_report_fini(&rep);
    json_decref(p);
    json_decref(l);
    return joined;
}

static void s_expect_lock(const char *package, const char *lock, const char *needle)
{
    char *got = s_lock_problems(package, lock);
    if (needle ? !strstr(got, needle) : got[0] != '\0')
        fail_msg("lockfile check: expected \"%s\", got \"%s\"", needle ? needle : "(none)", got);
    free(got);
}

static void test_resource_validator_lockfile(void **state)
{
    (void)state;
    const char *pkg = "{\"dependencies\": {\"a\": \"^1.0.0\", \"b\": \"2.0.0\"}}";
    const char *in_sync = "{\"lockfileVersion\": 3, \"packages\": {\"\": {\"dependencies\": "
                          "{\"a\": \"^1.0.0\", \"b\": \"2.0.0\"}}, \"node_modules/a\": "
                          "{\"version\": \"1.2.0\"}, \"node_modules/b\": {\"version\": "
                          "\"2.0.0\"}}}";
    s_expect_lock(pkg, in_sync, NULL);
    s_expect_lock("{}", NULL, NULL); /* no dependencies: no lockfile needed */
    s_expect_lock(pkg, NULL, "package.json has dependencies but no package-lock.json");
    s_expect_lock("{\"dependencies\": {\"a\": \"^2.0.0\", \"b\": \"2.0.0\"}}", in_sync,
                  "dependencies 'a' is ^2.0.0 in package.json but ^1.0.0 in the lockfile");
    s_expect_lock("{\"dependencies\": {\"a\": \"^1.0.0\", \"b\": \"2.0.0\", \"c\": \"1\"}}",
                  in_sync, "dependencies 'c' is not in the lockfile");
    s_expect_lock("{\"dependencies\": {\"a\": \"^1.0.0\"}}", in_sync,
                  "dependencies 'b' is in the lockfile but not in package.json");
    s_expect_lock(pkg,
                  "{\"lockfileVersion\": 2, \"packages\": {\"\": {\"dependencies\": {\"a\": "
                  "\"^1.0.0\", \"b\": \"2.0.0\"}}, \"node_modules/a\": {\"version\": \"1\"}}}",
                  "no installed entry for 'b'");
    s_expect_lock("{\"devDependencies\": {\"t\": \"1\"}}",
                  "{\"lockfileVersion\": 3, \"packages\": {\"\": {}}}",
                  "devDependencies 't' is not in the lockfile");
    s_expect_lock(pkg, "{\"lockfileVersion\": 3, \"packages\": {}}", "no root package entry");
    s_expect_lock(pkg, "{\"lockfileVersion\": 1, \"dependencies\": {\"a\": {\"version\": \"1\"}}}",
                  "'b' is not in the lockfile");
    s_expect_lock("{\"dependencies\": {\"a\": \"1\"}}",
                  "{\"lockfileVersion\": 1, \"dependencies\": {\"a\": {\"version\": \"1\"}}}",
                  NULL);
    s_expect_lock(pkg, "{\"packages\": {}}", "unknown lockfileVersion");
    s_expect_lock(pkg, "[]", "package-lock.json is not a JSON object");

    /* In a tree: a stale lockfile and a malformed one. */
    s_good_tree();
    s_write("functions/package.json",
            "{\"engines\": {\"node\": \"20\"}, \"dependencies\": {\"firebase-functions\": "
            "\"^6.0.0\"}}");
    s_expect_problem("functions[0] (functions): package-lock.json is out of sync");
    s_write("functions/package-lock.json", "{nope");
    s_expect_problem("functions/package-lock.json:1:");
}

static void test_resource_validator_credentials(void **state)
{
    (void)state;
    s_good_tree();
    char ghp[64], text[160];
    snprintf(ghp, sizeof ghp, "%s%s", "gh", "p_R8fK2mQ9xZ4vT7wL1nB6cD3hJ5sA0eY8uG2i");
    snprintf(text, sizeof text, "const x = 1;\nconst token = \"%s\";\n", ghp);
    s_write("public/app.js", text);
    resource_validator_report_t rep;
    char *joined = s_check(&rep);
    assert_non_null(strstr(joined, "credential in public/app.js:2 (github-token)"));
    assert_null(strstr(joined, ghp));
    assert_null(strstr(joined, ghp + 4));
    free(joined);
    resource_validator_report_fini(&rep);
}

static void test_resource_validator_report_cap(void **state)
{
    (void)state;
    resource_validator_report_t rep;
    resource_validator_report_init(&rep);
    for (int i = 0; i < RESOURCE_VALIDATOR_MAX_PROBLEMS + 5; i++)
        resource_validator_report_add(&rep, "problem %d", i);
    assert_int_equal(rep.count, RESOURCE_VALIDATOR_MAX_PROBLEMS);
    assert_int_equal(resource_validator_report_total(&rep), RESOURCE_VALIDATOR_MAX_PROBLEMS + 5);
    char *joined = resource_validator_report_join(&rep);
    assert_non_null(strstr(joined, "problem 0; problem 1;"));
    assert_non_null(strstr(joined, "; and 5 more"));
    free(joined);
    resource_validator_report_fini(&rep);
    resource_validator_report_fini(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_resource_validator_good_tree_passes, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_no_config_is_a_static_site, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_malformed_config, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_public_dir, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_rewrites, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_function_not_exported, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_headers, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_runtime_and_engines, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_lockfile, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_resource_validator_credentials, s_setup, s_teardown),
        cmocka_unit_test(test_resource_validator_report_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
