/* Unit tests for the notifier's routing (agents/edge/notify_route.c): labels from events,
 * matchers (prefix, unknown labels, bad input), the route tree (Alertmanager matching with
 * continue, inheritance of unset values, the legacy tree without a notify section, bad
 * configs refused), group keys, inhibition, the label encoding and durations. */
#include "sn_test.h"

#include <stdlib.h>
#include <string.h>

#include "notify_route.h"

static notify_labels_t s_labels(const char *sev, const char *project, const char *env,
                                const char *target, const char *type)
{
    notify_labels_t l;
    memset(&l, 0, sizeof l);
    assert_true(notify_severity_parse(sev, &l.severity));
    assert_true(notify_labels_set(&l, "severity", sev));
    assert_true(notify_labels_set(&l, "project", project));
    assert_true(notify_labels_set(&l, "environment", env));
    assert_true(notify_labels_set(&l, "target", target));
    assert_true(notify_labels_set(&l, "type", type));
    return l;
}

/* ---- labels ---------------------------------------------------------------------------- */

static void test_notify_route_labels_from_events(void **state)
{
    (void)state;
    sn_envelope_t env = SENTINEL__V1__ENVELOPE__INIT;
    Sentinel__V1__Deploy d = SENTINEL__V1__DEPLOY__INIT;
    d.project = "hello";
    d.environment = "production";
    d.target = "web";
    env.type = "deploy.failed";
    env.body_case = SENTINEL__V1__ENVELOPE__BODY_DEPLOY;
    env.deploy = &d;
    notify_labels_t l;
    assert_true(notify_labels_from_envelope(&env, &l));
    assert_int_equal(l.severity, NOTIFY_SEV_CRITICAL);
    assert_string_equal(notify_labels_get(&l, "severity"), "critical");
    assert_string_equal(notify_labels_get(&l, "project"), "hello");
    assert_string_equal(notify_labels_get(&l, "environment"), "production");
    assert_string_equal(notify_labels_get(&l, "target"), "web");
    assert_string_equal(notify_labels_get(&l, "type"), "deploy.failed");
    assert_string_equal(notify_labels_get(&l, "alertname"), "");
    assert_null(notify_labels_get(&l, "nope"));

    /* A run: project and environment from the body, the target from the subject. */
    Sentinel__V1__Run run = SENTINEL__V1__RUN__INIT;
    run.project = "hello";
    run.environment = "staging";
    sn_envelope_t e2 = SENTINEL__V1__ENVELOPE__INIT;
    e2.type = "run.succeeded";
    e2.subject = "other/prod/site";
    e2.body_case = SENTINEL__V1__ENVELOPE__BODY_RUN;
    e2.run = &run;
    assert_true(notify_labels_from_envelope(&e2, &l));
    assert_int_equal(l.severity, NOTIFY_SEV_INFO);
    assert_string_equal(notify_labels_get(&l, "project"), "hello");
    assert_string_equal(notify_labels_get(&l, "environment"), "staging");
    assert_string_equal(notify_labels_get(&l, "target"), "site");

    /* An alert: its own severity, alertname, labels from its label map. */
    Sentinel__V1__Alert a = SENTINEL__V1__ALERT__INIT;
    a.name = "disk";
    a.severity = "critical";
    Sentinel__V1__Alert__LabelsEntry le = SENTINEL__V1__ALERT__LABELS_ENTRY__INIT;
    le.key = "project";
    le.value = "hello";
    Sentinel__V1__Alert__LabelsEntry *les[] = {&le};
    a.labels = les;
    a.n_labels = 1;
    sn_envelope_t e3 = SENTINEL__V1__ENVELOPE__INIT;
    e3.type = "alert.raised";
    e3.body_case = SENTINEL__V1__ENVELOPE__BODY_ALERT;
    e3.alert = &a;
    assert_true(notify_labels_from_envelope(&e3, &l));
    assert_int_equal(l.severity, NOTIFY_SEV_CRITICAL);
    assert_string_equal(notify_labels_get(&l, "alertname"), "disk");
    assert_string_equal(notify_labels_get(&l, "project"), "hello");
    a.severity = "bogus"; /* unknown severity: warning */
    assert_true(notify_labels_from_envelope(&e3, &l));
    assert_int_equal(l.severity, NOTIFY_SEV_WARNING);

    /* Not notified: run.step, alert.resolved, no type. */
    e2.type = "run.step";
    assert_false(notify_labels_from_envelope(&e2, &l));
    e3.type = "alert.resolved";
    assert_false(notify_labels_from_envelope(&e3, &l));
    notify_labels_any(&e3, &l); /* but it has labels */
    assert_string_equal(notify_labels_get(&l, "alertname"), "disk");
    assert_string_equal(notify_labels_get(&l, "severity"), "info");
    e2.type = NULL;
    assert_false(notify_labels_from_envelope(&e2, &l));
    assert_false(notify_labels_set(&l, "bogus", "x"));
}

/* ---- matchers ---------------------------------------------------------------------------- */

static void test_notify_route_matchers(void **state)
{
    (void)state;
    notify_labels_t l = s_labels("critical", "hello", "production", "web", "deploy.failed");
    char *m1[] = {"type=deploy.*", "severity=critical", NULL};
    assert_true(notify_matchers_match(m1, &l));
    char *m2[] = {"type=deploy.*", "environment=staging", NULL};
    assert_false(notify_matchers_match(m2, &l));
    assert_true(notify_matchers_match(NULL, &l));
    char *none[] = {NULL};
    assert_true(notify_matchers_match(none, &l));
    /* A prefix includes its dot: "deploy.*" does not match "deployment.x" or "deploy". */
    notify_labels_t l2 = s_labels("info", "p", "e", "t", "deployment.x");
    char *m3[] = {"type=deploy.*", NULL};
    assert_false(notify_matchers_match(m3, &l2));
    notify_labels_t l3 = s_labels("info", "p", "e", "t", "deploy");
    assert_false(notify_matchers_match(m3, &l3));
    /* Exact otherwise. */
    char *m4[] = {"project=hell", NULL};
    assert_false(notify_matchers_match(m4, &l));
    /* Invalid matchers never hold. */
    char *bad1[] = {"nolabel", NULL};
    char *bad2[] = {"colour=red", NULL};
    char *bad3[] = {"project=", NULL};
    assert_false(notify_matchers_match(bad1, &l));
    assert_false(notify_matchers_match(bad2, &l));
    assert_false(notify_matchers_match(bad3, &l));

    char why[256];
    assert_int_equal(notify_matcher_check("project=hello", why, sizeof why), SN_OK);
    assert_int_equal(notify_matcher_check("type=deploy.*", why, sizeof why), SN_OK);
    assert_int_equal(notify_matcher_check("alertname=disk", why, sizeof why), SN_OK);
    assert_int_equal(notify_matcher_check("nolabel", why, sizeof why), SN_ERROR);
    assert_non_null(strstr(why, "key=value"));
    assert_int_equal(notify_matcher_check("colour=red", why, sizeof why), SN_ERROR);
    assert_non_null(strstr(why, "unknown label"));
    assert_int_equal(notify_matcher_check("project=", why, sizeof why), SN_ERROR);
    assert_int_equal(notify_matcher_check("severity=urgent", why, sizeof why), SN_ERROR);
    assert_int_equal(notify_matcher_check(NULL, why, sizeof why), SN_ERROR);
    assert_int_equal(notify_matcher_check("=x", why, sizeof why), SN_ERROR);
}

/* ---- the tree ------------------------------------------------------------------------------ */

static sn_channel_config_t s_channels[] = {
    {.name = "ops", .type = "log"},
    {.name = "chat", .type = "webhook"},
    {.name = "pager", .type = "webhook"},
};

static void s_cfg(sn_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->channels = s_channels;
    cfg->channel_count = SN_ARRAY_LEN(s_channels);
    cfg->notify.route.group_wait_ms = -1;
    cfg->notify.route.group_interval_ms = -1;
    cfg->notify.route.repeat_interval_ms = -1;
}

static void test_notify_route_legacy_without_notify_section(void **state)
{
    (void)state;
    sn_config_t cfg;
    s_cfg(&cfg);
    char why[256] = "";
    notify_tree_t *t = notify_tree_new(&cfg, why, sizeof why);
    assert_non_null(t);
    assert_true(notify_tree_is_legacy(t));
    const notify_route_t *root = notify_tree_root(t);
    assert_int_equal(root->channel_count, 3);
    assert_true(root->is_group_by_all);
    assert_int_equal(root->group_wait_ms, 0);
    assert_int_equal(root->group_interval_ms, 0);
    assert_int_equal(root->repeat_interval_ms, 0);
    size_t n = 0;
    notify_tree_inhibit_rules(t, &n);
    assert_int_equal(n, 0);
    /* Every event is its own group. */
    notify_labels_t l = s_labels("critical", "p", "e", "t", "run.failed");
    char k1[NOTIFY_GROUP_KEY_MAX], k2[NOTIFY_GROUP_KEY_MAX];
    notify_group_key(root, &l, "01AAA", k1);
    notify_group_key(root, &l, "01AAB", k2);
    assert_string_not_equal(k1, k2);
    notify_tree_destroy(&t);
    assert_null(t);
    notify_tree_destroy(&t); /* NULL-safe */

    /* The parser's root defaults alone are still "no notify section". */
    char *gb[] = {"project", "environment", "type", NULL};
    cfg.notify.route.group_by = gb;
    cfg.notify.route.group_wait_ms = NOTIFY_DEFAULT_GROUP_WAIT_MS;
    cfg.notify.route.group_interval_ms = NOTIFY_DEFAULT_GROUP_INTERVAL_MS;
    cfg.notify.route.repeat_interval_ms = NOTIFY_DEFAULT_REPEAT_INTERVAL_MS;
    t = notify_tree_new(&cfg, why, sizeof why);
    assert_true(notify_tree_is_legacy(t));
    notify_tree_destroy(&t);
    /* A different timer makes it a routed config with the root defaults. */
    cfg.notify.route.group_wait_ms = 1000;
    t = notify_tree_new(&cfg, why, sizeof why);
    assert_false(notify_tree_is_legacy(t));
    root = notify_tree_root(t);
    assert_int_equal(root->group_wait_ms, 1000);
    assert_int_equal(root->group_interval_ms, NOTIFY_DEFAULT_GROUP_INTERVAL_MS);
    assert_false(root->is_group_by_all);
    notify_tree_inhibit_rules(t, &n);
    assert_int_equal(n, 1); /* the default rule */
    notify_tree_destroy(&t);
}

/* root (every channel, 1s/10s/60s)
 *   r0.0 type=deploy.* severity=critical -> pager, continue, group_wait 0
 *        r0.0.0 environment=production (inherits everything)
 *   r0.1 type=deploy.* -> chat, group_by [project]
 *   r0.2 project=hello -> ops, repeat -1 */
typedef struct {
    sn_route_config_t root, kids[3], grandkid;
    char *m0[3], *m1[2], *m2[2], *mg[2];
    char *ch_pager[2], *ch_chat[2], *ch_ops[2];
    char *gb1[2];
    sn_config_t cfg;
} s_tree_fx_t;

static void s_tree_fx(s_tree_fx_t *fx)
{
    memset(fx, 0, sizeof *fx);
    s_cfg(&fx->cfg);
    fx->m0[0] = "type=deploy.*";
    fx->m0[1] = "severity=critical";
    fx->m1[0] = "type=deploy.*";
    fx->m2[0] = "project=hello";
    fx->mg[0] = "environment=production";
    fx->ch_pager[0] = "pager";
    fx->ch_chat[0] = "chat";
    fx->ch_ops[0] = "ops";
    fx->gb1[0] = "project";
    for (int i = 0; i < 3; i++) {
        fx->kids[i].group_wait_ms = -1;
        fx->kids[i].group_interval_ms = -1;
        fx->kids[i].repeat_interval_ms = -1;
    }
    fx->grandkid = (sn_route_config_t){
        .match = fx->mg, .group_wait_ms = -1, .group_interval_ms = -1, .repeat_interval_ms = -1};
    fx->kids[0].match = fx->m0;
    fx->kids[0].channels = fx->ch_pager;
    fx->kids[0].continue_ = true;
    fx->kids[0].group_wait_ms = 0;
    fx->kids[0].routes = &fx->grandkid;
    fx->kids[0].route_count = 1;
    fx->kids[1].match = fx->m1;
    fx->kids[1].channels = fx->ch_chat;
    fx->kids[1].group_by = fx->gb1;
    fx->kids[2].match = fx->m2;
    fx->kids[2].channels = fx->ch_ops;
    fx->root.group_wait_ms = 1000;
    fx->root.group_interval_ms = 10000;
    fx->root.repeat_interval_ms = 60000;
    fx->root.routes = fx->kids;
    fx->root.route_count = 3;
    fx->cfg.notify.route = fx->root;
}

static void test_notify_route_tree_matching_and_continue(void **state)
{
    (void)state;
    s_tree_fx_t fx;
    s_tree_fx(&fx);
    char why[256] = "";
    notify_tree_t *t = notify_tree_new(&fx.cfg, why, sizeof why);
    assert_non_null(t);
    assert_false(notify_tree_is_legacy(t));
    const notify_route_t *out[NOTIFY_MAX_MATCHED];

    /* A critical production deploy failure: r0.0.0 (via r0.0, continue) and r0.1. The
     * search stops at r0.1 (no continue): r0.2 is not reached even though it matches. */
    notify_labels_t l = s_labels("critical", "hello", "production", "web", "deploy.failed");
    size_t n = notify_tree_route(t, &l, out, NOTIFY_MAX_MATCHED);
    assert_int_equal(n, 2);
    assert_string_equal(out[0]->id, "r0.0.0");
    assert_string_equal(out[1]->id, "r0.1");

    /* Critical on staging: r0.0 itself (its child does not match) and r0.1. */
    l = s_labels("critical", "hello", "staging", "web", "deploy.failed");
    n = notify_tree_route(t, &l, out, NOTIFY_MAX_MATCHED);
    assert_int_equal(n, 2);
    assert_string_equal(out[0]->id, "r0.0");
    assert_string_equal(out[1]->id, "r0.1");

    /* An info deploy: only r0.1. */
    l = s_labels("info", "hello", "staging", "web", "deploy.promoted");
    n = notify_tree_route(t, &l, out, NOTIFY_MAX_MATCHED);
    assert_int_equal(n, 1);
    assert_string_equal(out[0]->id, "r0.1");

    /* A run of hello: r0.2. */
    l = s_labels("critical", "hello", "staging", "", "run.failed");
    n = notify_tree_route(t, &l, out, NOTIFY_MAX_MATCHED);
    assert_int_equal(n, 1);
    assert_string_equal(out[0]->id, "r0.2");

    /* Nothing matches: the root. */
    l = s_labels("critical", "other", "staging", "", "run.failed");
    n = notify_tree_route(t, &l, out, NOTIFY_MAX_MATCHED);
    assert_int_equal(n, 1);
    assert_string_equal(out[0]->id, "r0");

    /* @max bounds the result. */
    l = s_labels("critical", "hello", "production", "web", "deploy.failed");
    n = notify_tree_route(t, &l, out, 1);
    assert_int_equal(n, 1);
    assert_string_equal(out[0]->id, "r0.0.0");

    assert_non_null(notify_tree_find(t, "r0.0.0"));
    assert_null(notify_tree_find(t, "r0.9"));
    assert_null(notify_tree_find(t, NULL));
    notify_tree_destroy(&t);
}

static void test_notify_route_inheritance(void **state)
{
    (void)state;
    s_tree_fx_t fx;
    s_tree_fx(&fx);
    char why[256] = "";
    notify_tree_t *t = notify_tree_new(&fx.cfg, why, sizeof why);
    assert_non_null(t);
    const notify_route_t *root = notify_tree_root(t);
    assert_int_equal(root->channel_count, 3); /* root: every channel */
    assert_string_equal(root->group_by[0], "project");
    assert_string_equal(root->group_by[1], "environment");
    assert_string_equal(root->group_by[2], "type");
    assert_null(root->group_by[3]);
    const notify_route_t *r00 = notify_tree_find(t, "r0.0");
    assert_int_equal(r00->channel_count, 1);
    assert_string_equal(r00->channels[0], "pager");
    assert_int_equal(r00->group_wait_ms, 0);         /* its own 0 */
    assert_int_equal(r00->group_interval_ms, 10000); /* inherited */
    assert_int_equal(r00->repeat_interval_ms, 60000);
    assert_true(r00->is_continue);
    const notify_route_t *r000 = notify_tree_find(t, "r0.0.0");
    assert_string_equal(r000->channels[0], "pager"); /* from its parent, not the root */
    assert_int_equal(r000->channel_count, 1);
    assert_int_equal(r000->group_wait_ms, 0);
    assert_false(r000->is_continue); /* continue is not inherited */
    assert_string_equal(r000->group_by[2], "type");
    const notify_route_t *r01 = notify_tree_find(t, "r0.1");
    assert_string_equal(r01->group_by[0], "project");
    assert_null(r01->group_by[1]);
    assert_int_equal(r01->group_wait_ms, 1000);

    /* Group keys: same group_by values, same key; a different value, a different key; the
     * route is part of the key. */
    notify_labels_t a = s_labels("critical", "hello", "production", "web", "deploy.failed");
    notify_labels_t b = s_labels("critical", "hello", "production", "api", "deploy.failed");
    notify_labels_t c = s_labels("critical", "hello", "staging", "web", "deploy.failed");
    char ka[NOTIFY_GROUP_KEY_MAX], kb[NOTIFY_GROUP_KEY_MAX], kc[NOTIFY_GROUP_KEY_MAX];
    notify_group_key(r000, &a, "1", ka);
    notify_group_key(r000, &b, "2", kb);
    notify_group_key(r000, &c, "3", kc);
    assert_string_equal(ka, kb); /* target is not in group_by */
    assert_string_not_equal(ka, kc);
    assert_true(strncmp(ka, "r0.0.0-", 7) == 0);
    assert_int_equal(strlen(ka), 7 + 16);
    notify_group_key(r01, &c, "3", kc);
    notify_group_key(r01, &a, "1", kb);
    assert_string_equal(kb, kc); /* r0.1 groups by project only */
    assert_string_not_equal(ka, kb);
    /* Values are delimited: {project=a,environment=bc} differs from {ab, c}. */
    notify_labels_t d1 = s_labels("info", "a", "bc", "", "x");
    notify_labels_t d2 = s_labels("info", "ab", "c", "", "x");
    notify_group_key(root, &d1, "1", ka);
    notify_group_key(root, &d2, "1", kb);
    assert_string_not_equal(ka, kb);
    notify_tree_destroy(&t);
}

static void test_notify_route_bad_configs_refused(void **state)
{
    (void)state;
    char why[256];
    s_tree_fx_t fx;

    s_tree_fx(&fx);
    char *unknown[] = {"nobody", NULL};
    fx.kids[1].channels = unknown;
    fx.cfg.notify.route.routes = fx.kids;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    assert_non_null(strstr(why, "unknown channel"));

    s_tree_fx(&fx);
    char *badm[] = {"colour=red", NULL};
    fx.grandkid.match = badm;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    assert_non_null(strstr(why, "unknown label"));

    s_tree_fx(&fx);
    char *badgb[] = {"colour", NULL};
    fx.kids[2].group_by = badgb;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    assert_non_null(strstr(why, "group_by"));

    s_tree_fx(&fx);
    char *rootm[] = {"project=x", NULL};
    fx.cfg.notify.route.match = rootm;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    assert_non_null(strstr(why, "root"));

    s_tree_fx(&fx);
    char *bad_src[] = {"severity=urgent", NULL};
    char *eq[] = {"project", NULL};
    sn_inhibit_config_t rule = {.source_match = bad_src, .target_match = NULL, .equal = eq};
    fx.cfg.notify.inhibit_rules = &rule;
    fx.cfg.notify.inhibit_count = 1;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    char *ok_src[] = {"severity=critical", NULL};
    char *bad_eq[] = {"colour", NULL};
    rule.source_match = ok_src;
    rule.equal = bad_eq;
    assert_null(notify_tree_new(&fx.cfg, why, sizeof why));
    assert_non_null(strstr(why, "equal"));
    rule.equal = eq;
    notify_tree_t *t = notify_tree_new(&fx.cfg, why, sizeof why);
    assert_non_null(t);
    size_t n = 0;
    const sn_inhibit_config_t *rules = notify_tree_inhibit_rules(t, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(rules, &rule); /* configured rules replace the default */
    notify_tree_destroy(&t);
}

/* ---- inhibition ------------------------------------------------------------------------ */

static void test_notify_route_inhibition(void **state)
{
    (void)state;
    s_tree_fx_t fx;
    s_tree_fx(&fx);
    char why[256];
    notify_tree_t *t = notify_tree_new(&fx.cfg, why, sizeof why);
    size_t n = 0;
    const sn_inhibit_config_t *rules = notify_tree_inhibit_rules(t, &n);
    assert_int_equal(n, 1);
    const sn_inhibit_config_t *def = &rules[0];
    notify_labels_t src = s_labels("critical", "hello", "production", "web", "deploy.failed");
    notify_labels_t warn = s_labels("warning", "hello", "production", "web", "deploy.stuck");
    notify_labels_t warn_other_env = s_labels("warning", "hello", "staging", "web", "deploy.stuck");
    notify_labels_t crit = s_labels("critical", "hello", "production", "web", "run.failed");
    notify_labels_t info = s_labels("info", "hello", "production", "web", "deploy.promoted");
    assert_true(notify_is_inhibit_source(rules, n, &src));
    assert_false(notify_is_inhibit_source(rules, n, &crit)); /* run.* is not deploy.* */
    assert_false(notify_is_inhibit_source(rules, n, &warn));
    /* The default rule: a critical deploy failure mutes warnings of the same project and
     * environment, nothing else. */
    assert_true(notify_inhibits(def, &src, &warn, false));
    assert_false(notify_inhibits(def, &src, &warn_other_env, false));
    assert_false(notify_inhibits(def, &src, &crit, false));
    assert_false(notify_inhibits(def, &src, &info, false));
    assert_false(notify_inhibits(def, &warn, &warn, false));
    /* An alert never inhibits itself. */
    char *any[] = {"type=deploy.*", NULL};
    sn_inhibit_config_t wide = {.source_match = any, .target_match = any, .equal = NULL};
    assert_true(notify_inhibits(&wide, &src, &src, false));
    assert_false(notify_inhibits(&wide, &src, &src, true));
    /* equal: both empty counts as equal; one empty does not. */
    char *eqt[] = {"alertname", NULL};
    sn_inhibit_config_t r2 = {.source_match = any, .target_match = any, .equal = eqt};
    assert_true(notify_inhibits(&r2, &src, &warn, false));
    notify_labels_t named = warn;
    assert_true(notify_labels_set(&named, "alertname", "x"));
    assert_false(notify_inhibits(&r2, &src, &named, false));
    notify_tree_destroy(&t);
}

static void test_notify_route_label_encoding(void **state)
{
    (void)state;
    notify_labels_t l = s_labels("warning", "hello", "prod", "", "deploy.stuck");
    assert_true(notify_labels_set(&l, "alertname",
                                  "a\x1f"
                                  "b")); /* the separator is cleaned */
    char *enc = notify_labels_encode(&l);
    notify_labels_t back;
    assert_true(notify_labels_decode(enc, &back));
    assert_int_equal(back.severity, NOTIFY_SEV_WARNING);
    assert_string_equal(notify_labels_get(&back, "project"), "hello");
    assert_string_equal(notify_labels_get(&back, "target"), "");
    assert_string_equal(notify_labels_get(&back, "type"), "deploy.stuck");
    assert_string_equal(notify_labels_get(&back, "alertname"), "a b");
    free(enc);
    assert_false(notify_labels_decode(NULL, &back));
    assert_false(notify_labels_decode("", &back));
    assert_false(notify_labels_decode("7\x1f", &back));
    assert_false(notify_labels_decode("1\x1f"
                                      "a",
                                      &back)); /* too few */
    assert_false(notify_labels_decode("1\x1fw\x1fp\x1f"
                                      "e\x1ft\x1fty\x1f"
                                      "a\x1fz",
                                      &back)); /* too many */
    assert_true(notify_labels_decode("1\x1fw\x1fp\x1f"
                                     "e\x1ft\x1fty\x1f"
                                     "a",
                                     &back));
}

static void test_notify_route_durations(void **state)
{
    (void)state;
    int64_t ms = 0;
    assert_true(notify_duration_parse("2h", &ms));
    assert_int_equal(ms, 7200000);
    assert_true(notify_duration_parse("1h30m", &ms));
    assert_int_equal(ms, 5400000);
    assert_true(notify_duration_parse("90s", &ms));
    assert_int_equal(ms, 90000);
    assert_true(notify_duration_parse("1d", &ms));
    assert_int_equal(ms, 86400000);
    assert_true(notify_duration_parse("45", &ms));
    assert_int_equal(ms, 45000);
    assert_false(notify_duration_parse("", &ms));
    assert_false(notify_duration_parse(NULL, &ms));
    assert_false(notify_duration_parse("0s", &ms));
    assert_false(notify_duration_parse("2x", &ms));
    assert_false(notify_duration_parse("h", &ms));
    assert_false(notify_duration_parse("-1h", &ms));
    assert_false(notify_duration_parse("1h30", &ms));
    assert_false(notify_duration_parse("400d", &ms));
    assert_false(notify_duration_parse("99999999999999999999s", &ms));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_route_labels_from_events),
        cmocka_unit_test(test_notify_route_matchers),
        cmocka_unit_test(test_notify_route_legacy_without_notify_section),
        cmocka_unit_test(test_notify_route_tree_matching_and_continue),
        cmocka_unit_test(test_notify_route_inheritance),
        cmocka_unit_test(test_notify_route_bad_configs_refused),
        cmocka_unit_test(test_notify_route_inhibition),
        cmocka_unit_test(test_notify_route_label_encoding),
        cmocka_unit_test(test_notify_route_durations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
