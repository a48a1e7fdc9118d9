/* Unit tests for sn_gauth: the RS256 JWT assertion (header and claims decoded, the
 * signature verified with the public half of a key generated here), base64url, and every
 * refused key file (missing, not JSON, wrong type, no client_email, bad PEM, an EC key,
 * oversized). The token exchange is tested against the fake in
 * tests/integration/test_firebase_hosting.c. */
#include "sn_test.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sentinel/sn_gauth.h"
#include "sentinel/sn_json.h"

static char *s_dir;
static EVP_PKEY *s_key;

static char *s_pem_private(EVP_PKEY *key)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *out = sn_strndup(data, (size_t)n);
    BIO_free(b);
    return out;
}

/* Writes a key file with the given fields (NULL: left out); returns its path. */
static char *s_key_file(const char *name, const char *type, const char *email, const char *pem,
                        const char *token_uri)
{
    json_t *o = json_object();
    if (type)
        json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "project_id", json_string("demo-project"));
    json_object_set_new(o, "private_key_id", json_string("kid-123"));
    if (pem)
        json_object_set_new(o, "private_key", json_string(pem));
    if (email)
        json_object_set_new(o, "client_email", json_string(email));
    if (token_uri)
        json_object_set_new(o, "token_uri", json_string(token_uri));
    char *path = sn_strdupf("%s/%s", s_dir, name);
    assert_int_equal(json_dump_file(o, path, 0), 0);
    json_decref(o);
    return path;
}

static json_t *s_decode_part(const char *part, size_t len)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    assert_int_equal(sn_json_base64_decode(part, len, &raw, &raw_len), SN_OK);
    json_t *j = json_loadb((const char *)raw, raw_len, 0, NULL);
    free(raw);
    assert_non_null(j);
    return j;
}

static int s_setup(void **state)
{
    s_dir = sn_test_tmpdir("gauth");
    s_key = EVP_RSA_gen(2048);
    assert_non_null(s_key);
    return 0;
}

static int s_teardown(void **state)
{
    EVP_PKEY_free(s_key);
    sn_test_rmdir(s_dir);
    free(s_dir);
    return 0;
}

static void test_sn_gauth_assertion_is_a_verifiable_rs256_jwt(void **state)
{
    char *pem = s_pem_private(s_key);
    char *path = s_key_file("ok.json", "service_account", "deployer@demo.iam.gserviceaccount.com",
                            pem, "https://oauth2.example.test/token");
    sn_gauth_t *g = sn_gauth_new(path, NULL, NULL);
    assert_non_null(g);
    assert_string_equal(sn_gauth_token_uri(g), "https://oauth2.example.test/token");
    assert_string_equal(sn_gauth_client_email(g), "deployer@demo.iam.gserviceaccount.com");
    int64_t now = (int64_t)time(NULL);
    char *jwt = sn_gauth_assertion(g, now);
    assert_non_null(jwt);
    /* Three base64url parts, no padding, no '+' or '/'. */
    assert_null(strchr(jwt, '='));
    assert_null(strchr(jwt, '+'));
    assert_null(strchr(jwt, '/'));
    char *dot1 = strchr(jwt, '.');
    assert_non_null(dot1);
    char *dot2 = strchr(dot1 + 1, '.');
    assert_non_null(dot2);
    assert_null(strchr(dot2 + 1, '.'));
    json_t *hdr = s_decode_part(jwt, (size_t)(dot1 - jwt));
    assert_string_equal(json_string_value(json_object_get(hdr, "alg")), "RS256");
    assert_string_equal(json_string_value(json_object_get(hdr, "typ")), "JWT");
    assert_string_equal(json_string_value(json_object_get(hdr, "kid")), "kid-123");
    json_t *cl = s_decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    assert_string_equal(json_string_value(json_object_get(cl, "iss")),
                        "deployer@demo.iam.gserviceaccount.com");
    assert_string_equal(json_string_value(json_object_get(cl, "scope")), SN_GAUTH_SCOPE_CLOUD);
    assert_string_equal(json_string_value(json_object_get(cl, "aud")),
                        "https://oauth2.example.test/token");
    assert_int_equal(json_integer_value(json_object_get(cl, "iat")), now);
    assert_int_equal(json_integer_value(json_object_get(cl, "exp")), now + 3600);
    json_decref(hdr);
    json_decref(cl);

    /* The signature verifies with the public key over "header.claims"... */
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    assert_int_equal(sn_json_base64_decode(dot2 + 1, strlen(dot2 + 1), &sig, &sig_len), SN_OK);
    assert_int_equal(sig_len, 256);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, s_key), 1);
    assert_int_equal(
        EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)jwt, (size_t)(dot2 - jwt)), 1);
    EVP_MD_CTX_free(md);
    /* ...and not over anything else (the test can fail). */
    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, s_key), 1);
    assert_int_not_equal(
        EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)jwt, (size_t)(dot2 - jwt) - 1),
        1);
    EVP_MD_CTX_free(md);
    free(sig);
    free(jwt);
    sn_gauth_destroy(&g);
    assert_null(g);
    free(path);
    free(pem);
}

static void test_sn_gauth_token_uri_override_and_defaults(void **state)
{
    char *pem = s_pem_private(s_key);
    char *path = s_key_file("nouri.json", NULL, "a@b.c", pem, NULL);
    sn_gauth_t *g = sn_gauth_new(path, NULL, "https://www.googleapis.com/auth/firebase.hosting");
    assert_non_null(g);
    assert_string_equal(sn_gauth_token_uri(g), SN_GAUTH_DEFAULT_TOKEN_URI);
    char *jwt = sn_gauth_assertion(g, 1000);
    char *dot1 = strchr(jwt, '.'), *dot2 = strchr(dot1 + 1, '.');
    json_t *cl = s_decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    assert_string_equal(json_string_value(json_object_get(cl, "scope")),
                        "https://www.googleapis.com/auth/firebase.hosting");
    assert_string_equal(json_string_value(json_object_get(cl, "aud")), SN_GAUTH_DEFAULT_TOKEN_URI);
    json_decref(cl);
    free(jwt);
    sn_gauth_destroy(&g);
    g = sn_gauth_new(path, "http://127.0.0.1:1/token", NULL);
    assert_non_null(g);
    assert_string_equal(sn_gauth_token_uri(g), "http://127.0.0.1:1/token");
    sn_gauth_destroy(&g);
    sn_gauth_destroy(&g); /* NULL-safe */
    free(path);
    free(pem);
}

static void test_sn_gauth_refuses_bad_key_files(void **state)
{
    char *pem = s_pem_private(s_key);
    char *missing = sn_strdupf("%s/missing.json", s_dir);
    assert_null(sn_gauth_new(missing, NULL, NULL));
    free(missing);

    char *notjson = sn_strdupf("%s/notjson.json", s_dir);
    FILE *f = fopen(notjson, "w");
    fputs("{\"type\": \"service_account\", ", f);
    fclose(f);
    assert_null(sn_gauth_new(notjson, NULL, NULL));
    free(notjson);

    char *p = s_key_file("user.json", "authorized_user", "a@b.c", pem, NULL);
    assert_null(sn_gauth_new(p, NULL, NULL));
    free(p);
    p = s_key_file("noemail.json", "service_account", NULL, pem, NULL);
    assert_null(sn_gauth_new(p, NULL, NULL));
    free(p);
    p = s_key_file("nokey.json", "service_account", "a@b.c", NULL, NULL);
    assert_null(sn_gauth_new(p, NULL, NULL));
    free(p);
    p = s_key_file("badpem.json", "service_account", "a@b.c",
                   "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
                   NULL);
    assert_null(sn_gauth_new(p, NULL, NULL));
    free(p);

    /* An EC key is not RS256 material. */
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    assert_non_null(ec);
    char *ecpem = s_pem_private(ec);
    p = s_key_file("ec.json", "service_account", "a@b.c", ecpem, NULL);
    assert_null(sn_gauth_new(p, NULL, NULL));
    free(p);
    free(ecpem);
    EVP_PKEY_free(ec);

    /* Oversized. */
    char *big = sn_strdupf("%s/big.json", s_dir);
    f = fopen(big, "w");
    for (int i = 0; i < SN_GAUTH_MAX_KEY_FILE_BYTES + 10; i++)
        fputc(' ', f);
    fclose(f);
    assert_null(sn_gauth_new(big, NULL, NULL));
    free(big);
    /* A directory. */
    assert_null(sn_gauth_new(s_dir, NULL, NULL));
    free(pem);
}

static void test_sn_gauth_b64url_vectors(void **state)
{
    struct {
        const char *in;
        size_t len;
        const char *out;
    } v[] = {{"", 0, ""},
             {"f", 1, "Zg"},
             {"fo", 2, "Zm8"},
             {"foo", 3, "Zm9v"},
             {"foob", 4, "Zm9vYg"},
             {"fooba", 5, "Zm9vYmE"},
             {"foobar", 6, "Zm9vYmFy"},
             {"\xfb\xff", 2, "-_8"},
             {"\xff\xfe\xfd", 3, "__79"}};
    for (size_t i = 0; i < SN_ARRAY_LEN(v); i++) {
        char *s = sn_gauth_b64url(v[i].in, v[i].len);
        assert_string_equal(s, v[i].out);
        free(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sn_gauth_assertion_is_a_verifiable_rs256_jwt),
        cmocka_unit_test(test_sn_gauth_token_uri_override_and_defaults),
        cmocka_unit_test(test_sn_gauth_refuses_bad_key_files),
        cmocka_unit_test(test_sn_gauth_b64url_vectors),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
