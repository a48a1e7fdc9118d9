/* Unit tests of the leaked-credential scanner (agents/infraguard/secret_scan.c): every
 * kind is found on the right file and line, look-alikes are not, the value never appears
 * in any output string, and odd input (binary junk, huge lines, no final newline,
 * malformed tar) is handled within bounds. The fake credentials are assembled at run
 * time so that this source file itself does not look like a leak. */
#include "sn_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "secret_scan.h"

/* ---- fake credentials ---------------------------------------------------------------- */

static char s_aws_id[32], s_aws_secret[64], s_ghp[64], s_pat[128], s_slack[64];

static void s_make_secrets(void)
{
    snprintf(s_aws_id, sizeof s_aws_id, "%s%s", "AK", "IAQ3EGRHXJ7ZK2MW4P");
    snprintf(s_aws_secret, sizeof s_aws_secret, "%s%s", "wJalrXUtnFEMI/K7MDENG/",
             "bPxRfiCYzq8Kd3mT9s");
    snprintf(s_ghp, sizeof s_ghp, "%s%s", "gh", "p_R8fK2mQ9xZ4vT7wL1nB6cD3hJ5sA0eY8uG2i");
    char tail[83];
    for (int i = 0; i < 82; i++)
        tail[i] = "A1b2C3d4E5_"[i % 11];
    tail[82] = '\0';
    snprintf(s_pat, sizeof s_pat, "%s%s", "github_", "pat_");
    strncat(s_pat, tail, sizeof s_pat - strlen(s_pat) - 1);
    snprintf(s_slack, sizeof s_slack, "%s%s", "xo", "xb-2048123456-9876543210-AbCdEfGhIjKl");
}

static int s_setup(void **state)
{
    (void)state;
    s_make_secrets();
    return 0;
}

/* Asserts that no output string of @f contains @secret. */
static void s_assert_no_value(const secret_findings_t *f, const char *secret)
{
    for (size_t i = 0; i < f->count; i++) {
        assert_null(strstr(f->items[i].file, secret));
        assert_null(strstr(f->items[i].kind, secret));
    }
}

static const secret_finding_t *s_find(const secret_findings_t *f, const char *kind)
{
    for (size_t i = 0; i < f->count; i++)
        if (strcmp(f->items[i].kind, kind) == 0)
            return &f->items[i];
    return NULL;
}

static void s_scan_text(const char *name, const char *text, secret_findings_t *f)
{
    secret_findings_init(f);
    secret_scan_buffer(name, (const uint8_t *)text, strlen(text), f);
}

/* ---- every kind ---------------------------------------------------------------------- */

static void test_secret_scan_finds_pem_private_key(void **state)
{
    (void)state;
    const char *text = "line one\n"
                       "line two\n"
                       "-----BEGIN RSA PRIVATE KEY-----\n"
                       "MIIEpAIBAAKCAQEA7xVQ\n"
                       "-----END RSA PRIVATE KEY-----\n";
    secret_findings_t f;
    s_scan_text("keys/id_rsa", text, &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "private-key");
    assert_string_equal(f.items[0].file, "keys/id_rsa");
    assert_int_equal(f.items[0].line, 3);
    s_assert_no_value(&f, "MIIEpAIBAAKCAQEA7xVQ");
    secret_findings_fini(&f);

    s_scan_text("a", "x\n-----BEGIN PRIVATE KEY-----\nabc", &f);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.items[0].line, 2);
    secret_findings_fini(&f);
    s_scan_text("a", "-----BEGIN EC PRIVATE KEY-----", &f);
    assert_int_equal(f.count, 1);
    secret_findings_fini(&f);
    s_scan_text("a", "\n\n-----BEGIN PGP PRIVATE KEY BLOCK-----\n", &f);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.items[0].line, 3);
    secret_findings_fini(&f);
}

static void test_secret_scan_finds_openssh_key(void **state)
{
    (void)state;
    secret_findings_t f;
    s_scan_text("home/.ssh/id_ed25519",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n", &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "openssh-private-key");
    assert_int_equal(f.items[0].line, 1);
    secret_findings_fini(&f);
}

static void test_secret_scan_finds_aws_keys(void **state)
{
    (void)state;
    char *text = sn_strdupf("[default]\n"
                            "aws_access_key_id = %s\n"
                            "region = eu-west-1\n"
                            "key2 = %s\n",
                            s_aws_id, s_aws_secret);
    secret_findings_t f;
    s_scan_text("config/credentials", text, &f);
    assert_int_equal(f.count, 2);
    const secret_finding_t *id = s_find(&f, "aws-access-key");
    const secret_finding_t *sec = s_find(&f, "aws-secret-key");
    assert_non_null(id);
    assert_non_null(sec);
    assert_int_equal(id->line, 2);
    assert_int_equal(sec->line, 4);
    s_assert_no_value(&f, s_aws_id);
    s_assert_no_value(&f, s_aws_secret);
    secret_findings_fini(&f);
    free(text);

    /* The secret before the id, within a few lines. */
    text = sn_strdupf("s: \"%s\"\n\n\"id\": \"%s\"\n", s_aws_secret, s_aws_id);
    s_scan_text("app.json", text, &f);
    assert_int_equal(f.count, 2);
    assert_int_equal(s_find(&f, "aws-secret-key")->line, 1);
    assert_int_equal(s_find(&f, "aws-access-key")->line, 3);
    secret_findings_fini(&f);
    free(text);

    /* The secret alone, named by its key. */
    text = sn_strdupf("export AWS_SECRET_ACCESS_KEY=%s\n", s_aws_secret);
    s_scan_text("env.sh", text, &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "aws-secret-key");
    secret_findings_fini(&f);
    free(text);
}

static void test_secret_scan_finds_github_tokens(void **state)
{
    (void)state;
    const char *prefixes[] = {"ghp_", "gho_", "ghu_", "ghs_", "ghr_"};
    for (size_t i = 0; i < SN_ARRAY_LEN(prefixes); i++) {
        char *text = sn_strdupf("token:\n  value: %s%s\n", prefixes[i], s_ghp + 4);
        secret_findings_t f;
        s_scan_text("ci.yml", text, &f);
        assert_int_equal(f.count, 1);
        assert_string_equal(f.items[0].kind, "github-token");
        assert_int_equal(f.items[0].line, 2);
        s_assert_no_value(&f, s_ghp + 4);
        secret_findings_fini(&f);
        free(text);
    }
    char *text = sn_strdupf("a\nb\nGITHUB_TOKEN=%s", s_pat);
    secret_findings_t f;
    s_scan_text(".env", text, &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "github-token");
    assert_int_equal(f.items[0].line, 3);
    s_assert_no_value(&f, s_pat);
    secret_findings_fini(&f);
    free(text);
}

static void test_secret_scan_finds_slack_token(void **state)
{
    (void)state;
    char *text = sn_strdupf("const hook = '%s';\n", s_slack);
    secret_findings_t f;
    s_scan_text("js/app.js", text, &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "slack-token");
    assert_int_equal(f.items[0].line, 1);
    s_assert_no_value(&f, s_slack);
    secret_findings_fini(&f);
    free(text);
}

static void test_secret_scan_finds_service_account_json(void **state)
{
    (void)state;
    const char *text = "{\n"
                       "  \"type\": \"service_account\",\n"
                       "  \"project_id\": \"demo\",\n"
                       "  \"private_key_id\": \"abc\",\n"
                       "  \"private_key\" : \"-----BEGIN PRIVATE KEY-----\\nMIIEvQ\\n\",\n"
                       "  \"client_email\": \"x@demo.iam.gserviceaccount.com\"\n"
                       "}\n";
    secret_findings_t f;
    s_scan_text("firebase/sa.json", text, &f);
    const secret_finding_t *sa = s_find(&f, "gcp-service-account");
    assert_non_null(sa);
    assert_int_equal(sa->line, 5);
    assert_non_null(s_find(&f, "private-key"));
    s_assert_no_value(&f, "MIIEvQ");
    secret_findings_fini(&f);
}

/* ---- no false positives -------------------------------------------------------------- */

static void test_secret_scan_ignores_look_alikes(void **state)
{
    (void)state;
    char long_ghp[80], inner_ghp[80], short_pat[40];
    snprintf(long_ghp, sizeof long_ghp, "%sX", s_ghp);       /* 37 characters after ghp_ */
    snprintf(inner_ghp, sizeof inner_ghp, "my%s", s_ghp);    /* inside a word */
    snprintf(short_pat, sizeof short_pat, "github_pat_abc"); /* too short */
    char *text = sn_strdupf(
        "The quick brown fox jumps over the lazy dog.\n"
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC "
        "KEY-----\n"
        "-----BEGIN CERTIFICATE-----\n"
        "-----BEGIN private key-----\n"
        "See the docs on how to handle a PRIVATE KEY safely.\n"
        "AKIA1234 is too short, akiaqwertyuiopasdfgh is lowercase, XAKIAQ3EGRHXJ7ZK2MW4PLN\n"
        "AKIAQ3EGRHXJ7ZK2MW4PLNQ is too long\n"
        "ghp_short gho_ ghx_R8fK2mQ9xZ4vT7wL1nB6cD3hJ5sA0eY8uG2i\n"
        "%s %s %s\n"
        "xoxo-hugs-and-kisses xoxb- xoxb-abcdefghijklmnop xoxq-1234567890123\n"
        "{\"type\": \"user\", \"private_key_id\": \"1\"}\n"
        "commit 3f786850e387550fdab836ed7e6dc881de23001b\n"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
        "base64 blob QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNDU2Nzg5MA== ok\n",
        long_ghp, inner_ghp, short_pat);
    secret_findings_t f;
    s_scan_text("README.md", text, &f);
    for (size_t i = 0; i < f.count; i++)
        fprintf(stderr, "unexpected finding %s:%u %s\n", f.items[i].file, f.items[i].line,
                f.items[i].kind);
    assert_int_equal(f.count, 0);
    secret_findings_fini(&f);
    free(text);
}

static void test_secret_scan_aws_secret_needs_context(void **state)
{
    (void)state;
    /* A secret-shaped value far from any access key id and not named: not reported. */
    char *text = sn_strdupf("value = %s\n\n\n\n\n\n\n\n%s\n", s_aws_secret, "nothing here");
    secret_findings_t f;
    s_scan_text("x.txt", text, &f);
    assert_int_equal(f.count, 0);
    secret_findings_fini(&f);
    free(text);
    /* An access key id and a secret ten lines later: only the id. */
    text = sn_strdupf("%s\n\n\n\n\n\n\n\n\n\nv=%s\n", s_aws_id, s_aws_secret);
    s_scan_text("x.txt", text, &f);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].kind, "aws-access-key");
    secret_findings_fini(&f);
    free(text);
}

/* ---- odd input ----------------------------------------------------------------------- */

static void test_secret_scan_handles_binary_junk(void **state)
{
    (void)state;
    size_t len = 1 << 20;
    uint8_t *buf = sn_malloc(len);
    uint32_t x = 12345;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    secret_findings_t f;
    secret_findings_init(&f);
    secret_scan_buffer("blob.bin", buf, len, &f);
    assert_int_equal(f.count, 0);
    secret_findings_fini(&f);
    /* A key embedded in the junk, after a NUL and between newlines, is still found. */
    const char *key = "\n-----BEGIN OPENSSH PRIVATE KEY-----\n";
    memcpy(buf + 1000, key, strlen(key));
    buf[10] = '\0';
    secret_findings_init(&f);
    secret_scan_buffer("blob.bin", buf, len, &f);
    assert_non_null(s_find(&f, "openssh-private-key"));
    secret_findings_fini(&f);
    /* Every prefix of a token cut at the end of the buffer is handled. */
    for (size_t n = 0; n <= strlen(s_ghp); n++) {
        secret_findings_init(&f);
        secret_scan_buffer("cut", (const uint8_t *)s_ghp, n, &f);
        assert_int_equal(f.count, n == strlen(s_ghp) ? 1 : 0);
        secret_findings_fini(&f);
    }
    free(buf);
}

static void test_secret_scan_handles_huge_line(void **state)
{
    (void)state;
    size_t len = 8u << 20;
    size_t tok = strlen(s_ghp);
    uint8_t *buf = sn_malloc(len + tok + 2);
    memset(buf, 'a', len);
    buf[len] = ' ';
    memcpy(buf + len + 1, s_ghp, tok); /* ends without newline */
    int64_t t0 = sn_mono_ms();
    secret_findings_t f;
    secret_findings_init(&f);
    secret_scan_buffer("min.js", buf, len + 1 + tok, &f);
    assert_true(sn_mono_ms() - t0 < 10000);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.items[0].line, 1);
    assert_string_equal(f.items[0].kind, "github-token");
    secret_findings_fini(&f);
    /* A huge base64-like run (no boundaries) costs linear time and finds nothing. */
    for (size_t i = 0; i < len; i++)
        buf[i] = "Ab1/"[i % 4];
    secret_findings_init(&f);
    secret_scan_buffer("b64", buf, len, &f);
    assert_int_equal(f.count, 0);
    secret_findings_fini(&f);
    free(buf);
}

static void test_secret_scan_finding_cap(void **state)
{
    (void)state;
    size_t n = SECRET_SCAN_MAX_FINDINGS + 50;
    size_t cap = n * 40;
    char *text = sn_malloc(cap);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(text + k, cap - k, "-----BEGIN PRIVATE KEY-----\n");
    secret_findings_t f;
    s_scan_text("many", text, &f);
    assert_int_equal(f.count, SECRET_SCAN_MAX_FINDINGS);
    assert_true(f.is_truncated);
    secret_findings_fini(&f);
    free(text);
}

/* ---- directories and archives ------------------------------------------------------------ */

static void s_write(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_secret_scan_dir_skips_symlinks(void **state)
{
    (void)state;
    char *root = sn_test_tmpdir("scan-dir");
    char *outside = sn_test_tmpdir("scan-outside");
    char *p = sn_strdupf("%s/secret.pem", outside);
    s_write(p, "-----BEGIN PRIVATE KEY-----\n");
    free(p);
    p = sn_strdupf("%s/site", root);
    assert_int_equal(mkdir(p, 0755), 0);
    free(p);
    p = sn_strdupf("%s/site/index.html", root);
    s_write(p, "<html>\nhello\n</html>\n");
    free(p);
    p = sn_strdupf("%s/site/deep", root);
    assert_int_equal(mkdir(p, 0755), 0);
    free(p);
    p = sn_strdupf("%s/site/deep/conf.txt", root);
    char *text = sn_strdupf("a\nb\ntoken=%s\n", s_ghp);
    s_write(p, text);
    free(text);
    free(p);
    char *link = sn_strdupf("%s/site/link.pem", root);
    char *target = sn_strdupf("%s/secret.pem", outside);
    assert_int_equal(symlink(target, link), 0);
    char *dlink = sn_strdupf("%s/site/outdir", root);
    assert_int_equal(symlink(outside, dlink), 0);

    secret_findings_t f;
    secret_findings_init(&f);
    assert_int_equal(secret_scan_dir(root, NULL, &f), SN_OK);
    assert_int_equal(f.count, 1);
    assert_string_equal(f.items[0].file, "site/deep/conf.txt");
    assert_int_equal(f.items[0].line, 3);
    assert_int_equal(f.files_scanned, 2);
    assert_int_equal(f.files_skipped, 2);
    secret_findings_fini(&f);

    /* Bounded: a secret beyond max_file_bytes is not read. */
    secret_scan_opts_t opts = {.max_file_bytes = 3};
    secret_findings_init(&f);
    assert_int_equal(secret_scan_dir(root, &opts, &f), SN_OK);
    assert_int_equal(f.count, 0);
    secret_findings_fini(&f);

    secret_findings_init(&f);
    char *missing = sn_strdupf("%s/nope", root);
    assert_int_equal(secret_scan_dir(missing, NULL, &f), SN_ERROR);
    assert_int_equal(secret_scan_dir(link, NULL, &f), SN_ERROR); /* a symlink as root */
    secret_findings_fini(&f);
    free(missing);
    free(link);
    free(dlink);
    free(target);
    sn_test_rmdir(root);
    sn_test_rmdir(outside);
    free(root);
    free(outside);
}

/* One ustar header block for @name (<100 bytes) of @size bytes and @type. */
static void s_tar_header(uint8_t *h, const char *name, size_t size, char type)
{
    memset(h, 0, 512);
    memcpy(h, name, strlen(name));
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    SN_ASSERT(size <= UINT32_MAX); /* fits 11 octal digits; tests use small files */
    snprintf((char *)h + 124, 12, "%011o", (unsigned)size);
    snprintf((char *)h + 136, 12, "%011o", 0);
    h[156] = (uint8_t)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
}

/* Appends an entry to a growing archive. */
static void s_tar_add(uint8_t **buf, size_t *len, const char *name, const char *data, char type)
{
    size_t n = data ? strlen(data) : 0;
    size_t padded = (n + 511) / 512 * 512;
    *buf = sn_realloc(*buf, *len + 512 + padded);
    s_tar_header(*buf + *len, name, n, type);
    memset(*buf + *len + 512, 0, padded);
    if (n)
        memcpy(*buf + *len + 512, data, n);
    *len += 512 + padded;
}

static void s_tar_end(uint8_t **buf, size_t *len)
{
    *buf = sn_realloc(*buf, *len + 1024);
    memset(*buf + *len, 0, 1024);
    *len += 1024;
}

static void test_secret_scan_tar_entries(void **state)
{
    (void)state;
    uint8_t *tar = NULL;
    size_t len = 0;
    char *conf = sn_strdupf("one\ntwo\nthree %s\n", s_slack);
    s_tar_add(&tar, &len, "./", NULL, '5');
    s_tar_add(&tar, &len, "./index.html", "<html>hi</html>\n", '0');
    s_tar_add(&tar, &len, "./js/conf.js", conf, '0');
    s_tar_add(&tar, &len, "./key-link", NULL, '2');
    /* A pax header renaming the next entry. */
    s_tar_add(&tar, &len, "PaxHeaders/x", "31 path=very/long/name/key.pem\n", 'x');
    s_tar_add(&tar, &len, "short", "\n-----BEGIN RSA PRIVATE KEY-----\n", '0');
    s_tar_end(&tar, &len);

    secret_findings_t f;
    secret_findings_init(&f);
    assert_int_equal(secret_scan_tar_buffer(tar, len, NULL, &f), SN_OK);
    assert_int_equal(f.count, 2);
    const secret_finding_t *slack = s_find(&f, "slack-token");
    assert_non_null(slack);
    assert_string_equal(slack->file, "js/conf.js");
    assert_int_equal(slack->line, 3);
    const secret_finding_t *pem = s_find(&f, "private-key");
    assert_non_null(pem);
    assert_string_equal(pem->file, "very/long/name/key.pem");
    assert_int_equal(pem->line, 2);
    s_assert_no_value(&f, s_slack);
    secret_findings_fini(&f);

    /* The same archive from a file: the hash covers every byte. */
    char *dir = sn_test_tmpdir("scan-tar");
    char *path = sn_strdupf("%s/a.tar", dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(tar, 1, len, fp), len);
    fclose(fp);
    char hex[65];
    secret_findings_init(&f);
    assert_int_equal(secret_scan_tar(path, NULL, &f, hex), SN_OK);
    assert_int_equal(f.count, 2);
    secret_findings_fini(&f);
    unsigned char md[32];
    unsigned int md_len = 0;
    EVP_Digest(tar, len, md, &md_len, EVP_sha256(), NULL);
    char want[65];
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(hex, want);

    /* A bad checksum, a truncated entry, an absent file: refused. */
    uint8_t *bad = sn_malloc(len);
    memcpy(bad, tar, len);
    bad[512 + 3] ^= 1; /* the name of the second entry */
    secret_findings_init(&f);
    assert_int_equal(secret_scan_tar_buffer(bad, len, NULL, &f), SN_ERROR);
    assert_int_equal(secret_scan_tar_buffer(tar, 512 * 3 + 100, NULL, &f), SN_ERROR);
    char *missing = sn_strdupf("%s/missing.tar", dir);
    assert_int_equal(secret_scan_tar(missing, NULL, &f, hex), SN_ERROR);
    secret_findings_fini(&f);
    free(missing);
    free(bad);
    free(path);
    sn_test_rmdir(dir);
    free(dir);
    free(conf);
    free(tar);
}

static void test_secret_scan_tar_from_gnu_tar(void **state)
{
    (void)state;
    char *dir = sn_test_tmpdir("scan-gnutar");
    char *sub = sn_strdupf("%s/out/a-rather-long-directory-name-for-the-test-of-long-names/"
                           "another-long-directory-name-to-pass-one-hundred-bytes",
                           dir);
    char *cmd = sn_strdupf("mkdir -p '%s'", sub);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    char *p = sn_strdupf("%s/deploy.env", sub);
    char *text = sn_strdupf("A=1\nAWS_ACCESS_KEY_ID=%s\n", s_aws_id);
    s_write(p, text);
    free(text);
    free(p);
    char *tar = sn_strdupf("%s/out.tar", dir);
    cmd = sn_strdupf("tar -C '%s/out' -cf '%s' . && tar -C '%s/out' --format=pax -cf '%s.pax' .",
                     dir, tar, dir, tar);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    for (int k = 0; k < 2; k++) {
        char *path = k ? sn_strdupf("%s.pax", tar) : sn_strdup(tar);
        secret_findings_t f;
        secret_findings_init(&f);
        assert_int_equal(secret_scan_tar(path, NULL, &f, NULL), SN_OK);
        assert_int_equal(f.count, 1);
        assert_string_equal(f.items[0].kind, "aws-access-key");
        assert_int_equal(f.items[0].line, 2);
        assert_non_null(strstr(f.items[0].file, "pass-one-hundred-bytes/deploy.env"));
        s_assert_no_value(&f, s_aws_id);
        secret_findings_fini(&f);
        free(path);
    }
    free(tar);
    free(sub);
    sn_test_rmdir(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_scan_finds_pem_private_key),
        cmocka_unit_test(test_secret_scan_finds_openssh_key),
        cmocka_unit_test(test_secret_scan_finds_aws_keys),
        cmocka_unit_test(test_secret_scan_finds_github_tokens),
        cmocka_unit_test(test_secret_scan_finds_slack_token),
        cmocka_unit_test(test_secret_scan_finds_service_account_json),
        cmocka_unit_test(test_secret_scan_ignores_look_alikes),
        cmocka_unit_test(test_secret_scan_aws_secret_needs_context),
        cmocka_unit_test(test_secret_scan_handles_binary_junk),
        cmocka_unit_test(test_secret_scan_handles_huge_line),
        cmocka_unit_test(test_secret_scan_finding_cap),
        cmocka_unit_test(test_secret_scan_dir_skips_symlinks),
        cmocka_unit_test(test_secret_scan_tar_entries),
        cmocka_unit_test(test_secret_scan_tar_from_gnu_tar),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
