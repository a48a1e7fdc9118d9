/* Unit tests for the broker's permission table and loopback check. */
#include "sn_test.h"

#include <string.h>

#include "broker_acl.h"

#define KEY_A "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define KEY_B "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"

static broker_acl_t *s_acl(bool curve, bool with_anonymous)
{
    sn_principal_config_t p[2] = {
        {.name = "alice",
         .public_key = KEY_A,
         .publish = (char *[]){"deploy.*", "run.started", NULL},
         .subscribe = (char *[]){"deploy.", "", NULL},
         .call = (char *[]){"*", NULL},
         .serve = (char *[]){"echo", "deploy.*", NULL}},
        {.name = "anonymous",
         .public_key = KEY_B,
         .publish = (char *[]){NULL},
         .subscribe = (char *[]){"run.", NULL},
         .call = (char *[]){"echo", NULL},
         .serve = NULL},
    };
    sn_broker_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.curve = curve;
    cfg.principals = p;
    cfg.principal_count = with_anonymous ? 2 : 1;
    cfg.revoked = (char *[]){KEY_B, NULL};
    return broker_acl_new(&cfg);
}

static void test_broker_acl_grants(void **state)
{
    broker_acl_t *acl = s_acl(true, false);
    assert_true(broker_acl_may_publish(acl, "alice", "deploy.promoted", 15));
    assert_true(broker_acl_may_publish(acl, "alice", "run.started", 11));
    assert_false(broker_acl_may_publish(acl, "alice", "run.started.x", 13));
    assert_false(broker_acl_may_publish(acl, "alice", "secret", 6));
    assert_true(broker_acl_may_serve(acl, "alice", "deploy.cloudflare", 17));
    assert_false(broker_acl_may_serve(acl, "alice", "echo2", 5));
    assert_true(broker_acl_may_call(acl, "alice", "anything", 8));
    /* With CURVE an unknown principal may do nothing. */
    assert_false(broker_acl_may_call(acl, "mallory", "echo", 4));
    assert_false(broker_acl_may_call(acl, "anonymous", "echo", 4));
    /* Keys: known maps to its name; revoked or unknown maps to nothing. */
    assert_string_equal(broker_acl_principal_for_key(acl, KEY_A), "alice");
    assert_null(broker_acl_principal_for_key(acl, KEY_B));
    assert_null(broker_acl_principal_for_key(acl, NULL));
    assert_false(broker_acl_is_revoked(acl, "alice"));
    broker_acl_revoke(acl, KEY_A);
    assert_true(broker_acl_is_revoked(acl, "alice"));
    assert_null(broker_acl_principal_for_key(acl, KEY_A));
    assert_true(broker_acl_is_revoked(acl, "nobody"));
    broker_acl_destroy(&acl);
    assert_null(acl);
    broker_acl_destroy(&acl);
}

static void test_broker_acl_subscribe_prefixes(void **state)
{
    broker_acl_t *acl = s_acl(true, true);
    /* The requested prefix must start with a granted one. */
    assert_true(broker_acl_may_subscribe(acl, "anonymous", "run.", 4));
    assert_true(broker_acl_may_subscribe(acl, "anonymous", "run.started", 11));
    assert_false(broker_acl_may_subscribe(acl, "anonymous", "run", 3));
    assert_false(broker_acl_may_subscribe(acl, "anonymous", "", 0));
    assert_true(broker_acl_may_subscribe(acl, "alice", "", 0)); /* "" granted: everything */
    broker_acl_destroy(&acl);
}

static void test_broker_acl_without_curve(void **state)
{
    /* No principal named anonymous: anonymous may do everything. */
    broker_acl_t *acl = s_acl(false, false);
    assert_true(broker_acl_may_call(acl, "anonymous", "x", 1));
    assert_true(broker_acl_may_subscribe(acl, "anonymous", "", 0));
    assert_false(broker_acl_is_revoked(acl, "anonymous"));
    broker_acl_destroy(&acl);
    /* A configured anonymous principal's grants apply. */
    acl = s_acl(false, true);
    assert_true(broker_acl_may_call(acl, "anonymous", "echo", 4));
    assert_false(broker_acl_may_call(acl, "anonymous", "deploy", 6));
    assert_false(broker_acl_may_serve(acl, "anonymous", "echo", 4));
    assert_false(broker_acl_may_publish(acl, "anonymous", "run.x", 5));
    broker_acl_destroy(&acl);
}

static void test_broker_acl_loopback(void **state)
{
    assert_true(broker_endpoint_is_loopback("tcp://127.0.0.1:7700"));
    assert_true(broker_endpoint_is_loopback("tcp://127.1.2.3:*"));
    assert_true(broker_endpoint_is_loopback("tcp://[::1]:7700"));
    assert_true(broker_endpoint_is_loopback("tcp://localhost:7700"));
    assert_true(broker_endpoint_is_loopback("ipc:///tmp/x.sock"));
    assert_true(broker_endpoint_is_loopback("inproc://x"));
    assert_false(broker_endpoint_is_loopback("tcp://0.0.0.0:7700"));
    assert_false(broker_endpoint_is_loopback("tcp://*:7700"));
    assert_false(broker_endpoint_is_loopback("tcp://eth0:7700"));
    assert_false(broker_endpoint_is_loopback("tcp://127.0.0.1;10.0.0.1:7700"));
    assert_false(broker_endpoint_is_loopback("tcp://127.evil.com:7700"));
    assert_false(broker_endpoint_is_loopback("tcp://[::]:7700"));
    assert_false(broker_endpoint_is_loopback("pgm://127.0.0.1;239.192.1.1:5555"));
    assert_false(broker_endpoint_is_loopback("tcp://127.0.0.1"));
    assert_false(broker_endpoint_is_loopback(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_acl_grants),
        cmocka_unit_test(test_broker_acl_subscribe_prefixes),
        cmocka_unit_test(test_broker_acl_without_curve),
        cmocka_unit_test(test_broker_acl_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
