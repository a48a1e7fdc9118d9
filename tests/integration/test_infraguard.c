/* infraguard's gates through the real mesh (redis-server, broker, two sentinel-agent
 * instances): gate 1 refuses a branch that does not deploy to the environment, an
 * unknown project or environment, an unknown commit and, where the environment requires
 * it, an unsigned commit (and accepts a commit signed with a key gpg trusts); gate 2
 * refuses an artifact with a private key, naming file and line, while the key text
 * appears in no reply, no process log and no journal entry. For a GitHub project gate 1
 * asks github-workflow's github.policy (against the GitHub fake) when the environment
 * requires branch protection: no answer yet NAKs the gate (buildpilot asks again), an
 * unprotected branch rejects it, a protected one passes. */
#include "sn_fake_github.h"
#include "sn_mesh.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sentinel/sn_artifact.h"

#define S_KEY_CANARY "SNKEYCANARYMIIEowIBAAKCAQEAq7BFUAkGF7"

typedef struct {
    sn_mesh_t mesh;
    char *tmp;
    char *repo;
    char *gnupg;
    char *staging_sha, *main_sha, *unsigned_sha, *signed_sha;
    sn_artifact_t *store;
    char clean_sha[65], leaky_sha[65];
    sn_fake_github_t github;
} s_fix_t;

static s_fix_t s_fix;

static void s_sh(const char *fmt, ...) SN_PRINTF(1, 2);

static void s_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    SN_ASSERT(vasprintf(&cmd, fmt, ap) >= 0);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    SN_ASSERT(rc == 0);
    free(cmd);
}

static char *s_capture(const char *fmt, ...) SN_PRINTF(1, 2);

/* The first line printed by a shell command (caller frees). */
static char *s_capture(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    SN_ASSERT(vasprintf(&cmd, fmt, ap) >= 0);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    SN_ASSERT(p);
    char buf[256] = "";
    if (!fgets(buf, sizeof buf, p))
        buf[0] = '\0';
    pclose(p);
    free(cmd);
    buf[strcspn(buf, "\n")] = '\0';
    return sn_strdup(buf);
}

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    SN_ASSERT(f);
    fputs(text, f);
    SN_ASSERT(fclose(f) == 0);
}

static int s_setup(void **state)
{
    (void)state;
    setenv("GIT_AUTHOR_NAME", "Sentinel Test", 1);
    setenv("GIT_AUTHOR_EMAIL", "sig@example.com", 1);
    setenv("GIT_COMMITTER_NAME", "Sentinel Test", 1);
    setenv("GIT_COMMITTER_EMAIL", "sig@example.com", 1);
    s_fix.tmp = sn_test_tmpdir("ig");
    /* A signing key of our own; the agents inherit GNUPGHOME and so trust it. */
    s_fix.gnupg = sn_strdupf("%s/gnupg", s_fix.tmp);
    SN_ASSERT(mkdir(s_fix.gnupg, 0700) == 0);
    setenv("GNUPGHOME", s_fix.gnupg, 1);
    s_sh("gpg --batch --quiet --pinentry-mode loopback --passphrase '' --quick-gen-key "
         "'Sentinel Test <sig@example.com>' ed25519 sign never 2>/dev/null");
    char *fpr = s_capture("gpg --list-secret-keys --with-colons | awk -F: '/^fpr/ {print $10; "
                          "exit}'");
    SN_ASSERT(strlen(fpr) == 40);

    s_fix.repo = sn_strdupf("%s/repo", s_fix.tmp);
    s_sh("git init -q -b main '%s' && cd '%s' && echo one > a.txt && git add -A && "
         "git commit -q -m one && git checkout -q -b staging && echo two > a.txt && "
         "git commit -q -am two && git checkout -q -b secure && echo three > a.txt && "
         "git commit -q -am unsigned && echo four > a.txt && "
         "git -c user.signingkey=%s commit -q -S -am signed",
         s_fix.repo, s_fix.repo, fpr);
    free(fpr);
    s_fix.main_sha = s_capture("git -C '%s' rev-parse main", s_fix.repo);
    s_fix.staging_sha = s_capture("git -C '%s' rev-parse staging", s_fix.repo);
    s_fix.unsigned_sha = s_capture("git -C '%s' rev-parse secure~1", s_fix.repo);
    s_fix.signed_sha = s_capture("git -C '%s' rev-parse secure", s_fix.repo);

    SN_ASSERT(sn_fake_github_start(&s_fix.github));
    char *yaml = sn_strdupf("github: {api_base: \"%s\", token: test-token, "
                            "request_timeout_ms: 2s, max_attempts: 2}\n"
                            "targets:\n"
                            "  - name: site\n    type: local_command\n"
                            "    stage_command: \"true\"\n    promote_command: \"true\"\n"
                            "projects:\n"
                            "  - name: web\n    repo: %s\n    poll_interval_ms: 0\n"
                            "    build_steps: [\"true\"]\n"
                            "    environments:\n"
                            "      - {name: staging, branch: staging, targets: [site]}\n"
                            "      - {name: production, branch: main, targets: [site]}\n"
                            "      - {name: secure, branch: secure, require_signed: true, "
                            "targets: [site]}\n"
                            "  - name: gh\n    source_type: github\n    github_repo: octo/gh\n"
                            "    poll_interval_ms: 0\n"
                            "    environments:\n"
                            "      - {name: prod, branch: main, require_branch_protection: true, "
                            "targets: [site]}\n"
                            "      - {name: dev, branch: dev, targets: [site]}\n",
                            s_fix.github.url, s_fix.repo);
    SN_ASSERT(sn_mesh_start(&s_fix.mesh, "ig", yaml));
    free(yaml);

    /* Two artifacts in the store: a clean site and one with a private key. */
    char *art = sn_strdupf("%s/var/artifacts", s_fix.mesh.dir);
    s_fix.store = sn_artifact_new(art, NULL);
    SN_ASSERT(s_fix.store);
    free(art);
    char *clean = sn_strdupf("%s/clean", s_fix.tmp);
    SN_ASSERT(mkdir(clean, 0755) == 0);
    char *p = sn_strdupf("%s/index.html", clean);
    s_write(p, "<h1>hello</h1>\n");
    free(p);
    uint64_t bytes = 0;
    SN_ASSERT(sn_artifact_put_dir(s_fix.store, clean, s_fix.clean_sha, &bytes) == SN_OK);
    char *leaky = sn_strdupf("%s/leaky", s_fix.tmp);
    s_sh("cp -R '%s' '%s' && mkdir '%s/keys'", clean, leaky, leaky);
    p = sn_strdupf("%s/keys/deploy.pem", leaky);
    s_write(p, "# deploy key\n\n-----BEGIN RSA PRIVATE KEY-----\n" S_KEY_CANARY
               "\n-----END RSA PRIVATE KEY-----\n");
    free(p);
    SN_ASSERT(sn_artifact_put_dir(s_fix.store, leaky, s_fix.leaky_sha, &bytes) == SN_OK);
    free(clean);
    free(leaky);

    (void)sn_mesh_agent_bin(&s_fix.mesh, "sentinel-agent", "infraguard", "ig1");
    (void)sn_mesh_agent_bin(&s_fix.mesh, "sentinel-agent", "infraguard", "ig2");
    SN_ASSERT(sn_mesh_wait_service(&s_fix.mesh, "gate.check", 2, 15000));
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = sn_mesh_stop(&s_fix.mesh);
    if (!sn_fake_github_stop(&s_fix.github))
        bad++;
    sn_artifact_destroy(&s_fix.store);
    if (system("gpgconf --kill gpg-agent >/dev/null 2>&1") != 0)
        fprintf(stderr, "gpg-agent not stopped\n");
    sn_test_rmdir(s_fix.tmp);
    free(s_fix.tmp);
    free(s_fix.repo);
    free(s_fix.gnupg);
    free(s_fix.main_sha);
    free(s_fix.staging_sha);
    free(s_fix.unsigned_sha);
    free(s_fix.signed_sha);
    return bad == 0 ? 0 : -1;
}

/* Calls gate.check; the reply (caller frees) or NULL with *nak. *raw (may be NULL)
 * receives the reply's bytes (caller frees). */
static sn_envelope_t *s_gate(const Sentinel__V1__GateRequest *g, sn_nak_reason_t *nak, char **raw)
{
    sn_envelope_t env;
    char id[SN_ID_LEN + 1];
    sn_envelope_stamp(&env, &s_fix.mesh.source, "gate.check", id);
    if (g) {
        env.body_case = SENTINEL__V1__ENVELOPE__BODY_GATE_REQUEST;
        env.gate_request = (Sentinel__V1__GateRequest *)g;
    }
    size_t len = 0;
    uint8_t *bytes = sn_envelope_pack(&env, &len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    sn_nak_reason_t reason = SN_NAK_NONE;
    sn_rc_t rc =
        sn_rpc_call(s_fix.mesh.client, "gate.check", bytes, len, 30000, &out, &out_len, &reason);
    free(bytes);
    if (nak)
        *nak = reason;
    sn_envelope_t *reply = NULL;
    if (rc == SN_OK) {
        reply = sn_envelope_unpack(out, out_len, SN_MAX_FRAME_BYTES, NULL);
        assert_non_null(reply);
        assert_int_equal(reply->body_case, SENTINEL__V1__ENVELOPE__BODY_GATE_RESULT);
        if (raw) {
            *raw = sn_malloc(out_len + 1);
            memcpy(*raw, out, out_len);
            (*raw)[out_len] = '\0';
            /* NULs inside the protobuf: make it searchable as text. */
            for (size_t i = 0; i < out_len; i++)
                if ((*raw)[i] == '\0')
                    (*raw)[i] = ' ';
        }
    }
    free(out);
    return reply;
}

static Sentinel__V1__GateRequest s_gate1(const char *project, const char *env, const char *ref,
                                         const char *sha)
{
    Sentinel__V1__GateRequest g = SENTINEL__V1__GATE_REQUEST__INIT;
    g.run_id = "run-gate-1";
    g.gate = 1;
    g.project = (char *)project;
    g.environment = (char *)env;
    g.ref = (char *)ref;
    g.sha = (char *)sha;
    return g;
}

/* Asserts the gate refused with a reason containing @needle. */
static void s_assert_refused(const Sentinel__V1__GateRequest *g, const char *needle)
{
    sn_envelope_t *reply = s_gate(g, NULL, NULL);
    assert_non_null(reply);
    const Sentinel__V1__GateResult *r = reply->gate_result;
    assert_false(r->ok);
    assert_true(r->n_reasons >= 1);
    bool found = false;
    for (size_t i = 0; i < r->n_reasons; i++)
        found |= strstr(r->reasons[i], needle) != NULL;
    if (!found)
        fprintf(stderr, "no reason contains \"%s\"; first: %s\n", needle, r->reasons[0]);
    assert_true(found);
    sn_envelope_free(&reply);
}

static void s_assert_passed(const Sentinel__V1__GateRequest *g)
{
    sn_envelope_t *reply = s_gate(g, NULL, NULL);
    assert_non_null(reply);
    if (!reply->gate_result->ok)
        fprintf(stderr, "refused: %s\n", reply->gate_result->reasons[0]);
    assert_true(reply->gate_result->ok);
    assert_int_equal(reply->gate_result->n_reasons, 0);
    assert_int_equal(reply->gate_result->n_findings, 0);
    sn_envelope_free(&reply);
}

static void test_infraguard_gate1_branch_and_config(void **state)
{
    (void)state;
    Sentinel__V1__GateRequest g =
        s_gate1("web", "staging", "refs/heads/staging", s_fix.staging_sha);
    s_assert_passed(&g);
    g = s_gate1("web", "staging", "staging", s_fix.staging_sha); /* short branch name */
    s_assert_passed(&g);
    g = s_gate1("web", "production", "refs/heads/main", s_fix.main_sha);
    s_assert_passed(&g);
    /* The staging branch does not deploy to production. */
    g = s_gate1("web", "production", "refs/heads/staging", s_fix.staging_sha);
    s_assert_refused(&g, "branch 'staging' does not deploy to production");
    g = s_gate1("web", "staging", "refs/tags/v1", s_fix.staging_sha);
    s_assert_refused(&g, "is not a branch");
    g = s_gate1("nope", "staging", "refs/heads/staging", s_fix.staging_sha);
    s_assert_refused(&g, "unknown project 'nope'");
    g = s_gate1("web", "qa", "refs/heads/staging", s_fix.staging_sha);
    s_assert_refused(&g, "unknown environment 'qa'");
    g = s_gate1("web", "staging", "refs/heads/staging", "0123456789abcdef0123456789abcdef01234567");
    s_assert_refused(&g, "not found");
    g = s_gate1("web", "staging", "refs/heads/staging", "--exec=evil");
    s_assert_refused(&g, "malformed commit id");
}

static void test_infraguard_gate1_signed_commits(void **state)
{
    (void)state;
    Sentinel__V1__GateRequest g = s_gate1("web", "secure", "refs/heads/secure", s_fix.unsigned_sha);
    s_assert_refused(&g, "no valid signature");
    g = s_gate1("web", "secure", "refs/heads/secure", s_fix.signed_sha);
    s_assert_passed(&g);
    /* Staging does not require signatures: the unsigned commit passes there. */
    g = s_gate1("web", "staging", "refs/heads/staging", s_fix.staging_sha);
    s_assert_passed(&g);
}

static Sentinel__V1__GateRequest s_gate2(const char *sha)
{
    Sentinel__V1__GateRequest g = SENTINEL__V1__GATE_REQUEST__INIT;
    g.run_id = "run-gate-2";
    g.gate = 2;
    g.project = "web";
    g.environment = "staging";
    g.artifact_sha256 = (char *)sha;
    return g;
}

static void test_infraguard_gate2_finds_leaked_key(void **state)
{
    (void)state;
    Sentinel__V1__GateRequest g = s_gate2(s_fix.clean_sha);
    s_assert_passed(&g);

    g = s_gate2(s_fix.leaky_sha);
    char *raw = NULL;
    sn_envelope_t *reply = s_gate(&g, NULL, &raw);
    assert_non_null(reply);
    const Sentinel__V1__GateResult *r = reply->gate_result;
    assert_false(r->ok);
    assert_int_equal(r->n_findings, 1);
    assert_string_equal(r->findings[0]->file, "keys/deploy.pem");
    assert_int_equal(r->findings[0]->line, 3);
    assert_string_equal(r->findings[0]->kind, "private-key");
    assert_int_equal(r->n_reasons, 1);
    assert_non_null(strstr(r->reasons[0], "keys/deploy.pem:3"));
    /* The key text is nowhere: not in the reply, no process log, no journal entry. */
    assert_null(strstr(raw, S_KEY_CANARY));
    for (size_t i = 0; i < r->n_reasons; i++)
        assert_null(strstr(r->reasons[i], S_KEY_CANARY));
    free(raw);
    sn_envelope_free(&reply);
    assert_true(sn_mesh_wait_log(&s_fix.mesh, "ig1", "gate 2", 1) ||
                sn_mesh_wait_log(&s_fix.mesh, "ig2", "gate 2", 5000));
    for (size_t i = 0; i < s_fix.mesh.agent_count; i++)
        assert_int_equal(sn_test_count_in_file(s_fix.mesh.agents[i].log, S_KEY_CANARY), 0);
    assert_int_equal(sn_test_count_in_file(s_fix.mesh.broker_log, S_KEY_CANARY), 0);
    char *args = sn_strdupf("XRANGE '%sevents' - +", s_fix.mesh.ns);
    char *journal = sn_test_redis_cli(&s_fix.mesh.redis, args);
    free(args);
    assert_non_null(journal);
    assert_null(strstr(journal, S_KEY_CANARY));
    free(journal);
    /* The finding itself is logged, by file and line. */
    bool logged = sn_mesh_wait_log(&s_fix.mesh, "ig1", "file=keys/deploy.pem line=3", 1) ||
                  sn_mesh_wait_log(&s_fix.mesh, "ig2", "file=keys/deploy.pem line=3", 5000);
    assert_true(logged);
}

static void test_infraguard_gate2_bad_artifacts(void **state)
{
    (void)state;
    Sentinel__V1__GateRequest g =
        s_gate2("0000000000000000000000000000000000000000000000000000000000000000");
    s_assert_refused(&g, "not in the store");
    g = s_gate2("../../etc/passwd");
    s_assert_refused(&g, "malformed artifact hash");
    /* An archive stored under a name that is not its hash. */
    const char *fake = "1111111111111111111111111111111111111111111111111111111111111111";
    char *src = sn_artifact_path(s_fix.store, s_fix.clean_sha);
    char *dst = sn_artifact_path(s_fix.store, fake);
    s_sh("cp '%s' '%s'", src, dst);
    g = s_gate2(fake);
    s_assert_refused(&g, "corrupted");
    /* Junk that is not a tar at all. */
    s_write(dst, "this is not a tar archive, just some text that is long enough");
    s_assert_refused(&g, "not a readable archive");
    unlink(dst);
    free(src);
    free(dst);
}

static void test_infraguard_refuses_bad_requests(void **state)
{
    (void)state;
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(s_gate(NULL, &nak, NULL));
    assert_int_equal(nak, SN_NAK_INVALID);
    Sentinel__V1__GateRequest g = s_gate2(s_fix.clean_sha);
    g.gate = 3;
    assert_null(s_gate(&g, &nak, NULL));
    assert_int_equal(nak, SN_NAK_INVALID);
    g.gate = 0;
    assert_null(s_gate(&g, &nak, NULL));
    assert_int_equal(nak, SN_NAK_INVALID);
    /* Empty fields: refused with reasons, not a crash. */
    Sentinel__V1__GateRequest empty = SENTINEL__V1__GATE_REQUEST__INIT;
    empty.gate = 1;
    s_assert_refused(&empty, "unknown project");
    empty.gate = 2;
    s_assert_refused(&empty, "malformed artifact hash");
}

#define S_GH_SHA "abcdefabcdefabcdefabcdefabcdefabcdefabcd"

static void test_infraguard_gate1_github_policy(void **state)
{
    (void)state;
    /* An environment without requirements never asks GitHub. */
    Sentinel__V1__GateRequest dev = s_gate1("gh", "dev", "refs/heads/dev", S_GH_SHA);
    s_assert_passed(&dev);
    /* prod requires protection, and github-workflow is not serving yet: no verdict, the
     * gate is NAKed (buildpilot asks again until the gate's deadline), never passed. */
    Sentinel__V1__GateRequest g = s_gate1("gh", "prod", "refs/heads/main", S_GH_SHA);
    sn_nak_reason_t nak = SN_NAK_NONE;
    assert_null(s_gate(&g, &nak, NULL));
    assert_int_equal(nak, SN_NAK_OVERLOADED);

    assert_true(sn_fake_github_control(&s_fix.github, "commit",
                                       "{\"repo\":\"octo/gh\",\"sha\":\"" S_GH_SHA
                                       "\",\"verified\":false,\"reason\":\"unsigned\"}"));
    (void)sn_mesh_agent_bin(&s_fix.mesh, "sentinel-agent", "github-workflow", "gw1");
    assert_true(sn_mesh_wait_service(&s_fix.mesh, "github.policy", 1, 15000));
    /* Unprotected main: rejected with GitHub's reason. */
    s_assert_refused(&g, "protect");
    /* Protected: passes. */
    assert_true(sn_fake_github_control(&s_fix.github, "protection",
                                       "{\"repo\":\"octo/gh\",\"branch\":\"main\","
                                       "\"protection\":{\"enforce_admins\":{\"enabled\":true}}}"));
    s_assert_passed(&g);
    /* GitHub failing for now (500s past the attempt budget): NAKed again, not passed. */
    assert_true(sn_fake_github_control(&s_fix.github, "fail",
                                       "{\"path\":\"/protection\",\"mode\":\"server\","
                                       "\"count\":10}"));
    nak = SN_NAK_NONE;
    assert_null(s_gate(&g, &nak, NULL));
    assert_int_equal(nak, SN_NAK_OVERLOADED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_infraguard_gate1_branch_and_config),
        cmocka_unit_test(test_infraguard_gate1_signed_commits),
        cmocka_unit_test(test_infraguard_gate2_finds_leaked_key),
        cmocka_unit_test(test_infraguard_gate2_bad_artifacts),
        cmocka_unit_test(test_infraguard_refuses_bad_requests),
        cmocka_unit_test(test_infraguard_gate1_github_policy),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
