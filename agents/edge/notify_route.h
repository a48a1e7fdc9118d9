/* The notifier's routing as pure functions (docs/notify-routing.md): the labels an event
 * is routed by, Alertmanager's route tree compiled from cfg->notify (matchers, `continue`,
 * inheritance of unset values), group keys, inhibition rules and silence matchers. No
 * Redis, no clock: notifier.c feeds them and tests/unit/test_notify_route.c checks them.
 *
 * Labels: severity, project, environment, target, type, and alertname (alert.raised /
 * alert.resolved only). A matcher is "key=value" over those names; "type=deploy.*" (a
 * value ending in ".*") matches a prefix including the dot. Every matcher of a list must
 * hold; an empty list matches everything. */
#ifndef NOTIFY_ROUTE_H
#define NOTIFY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_config.h"
#include "sentinel/sn_envelope.h"

#define NOTIFY_LABEL_COUNT 6
#define NOTIFY_LABEL_MAX 128 /* bytes of a label value, NUL included (longer is cut) */
#define NOTIFY_GROUP_KEY_MAX 96
#define NOTIFY_MAX_MATCHED 16 /* routes one event can reach (continue) */

/* Defaults of the root route, also what -1/0 at the root means. */
#define NOTIFY_DEFAULT_GROUP_WAIT_MS 30000
#define NOTIFY_DEFAULT_GROUP_INTERVAL_MS 300000
#define NOTIFY_DEFAULT_REPEAT_INTERVAL_MS 14400000

typedef enum {
    NOTIFY_SEV_INFO = 0,
    NOTIFY_SEV_WARNING = 1,
    NOTIFY_SEV_CRITICAL = 2,
} notify_severity_t;

/* The label names, in this order, are the indexes of notify_labels_t.v. */
extern const char *const notify_label_names[NOTIFY_LABEL_COUNT];

typedef struct {
    char v[NOTIFY_LABEL_COUNT][NOTIFY_LABEL_MAX]; /* "" when the event has none */
    notify_severity_t severity;
} notify_labels_t;

/* The value of label @name ("" if the event has none), or NULL for an unknown name. */
const char *notify_labels_get(const notify_labels_t *l, const char *name);
/* Sets label @name (known names only; false otherwise). Values are cut to fit. */
bool notify_labels_set(notify_labels_t *l, const char *name, const char *value);

/* Parses "info" | "warning" | "critical". False on anything else. */
bool notify_severity_parse(const char *name, notify_severity_t *out);
const char *notify_severity_name(notify_severity_t s);

/* The labels of a journal event: severity from the event type (docs/pipeline.md; an
 * alert.raised carries its own, warning if unset), project/environment/target from the
 * run, deploy or alert body (alert labels "project", "environment", "target") and else
 * from the subject "<project>/<environment>/<target>". False when the event type is not
 * notified at all (then @out is unspecified). alert.resolved is not notified but has
 * labels: use notify_labels_any for resolving events. */
bool notify_labels_from_envelope(const sn_envelope_t *env, notify_labels_t *out);
/* The same labels for any event, severity info when the type has none. */
void notify_labels_any(const sn_envelope_t *env, notify_labels_t *out);

/* SN_OK if @m is a valid matcher (known label, '=', non-empty value; a severity value
 * must be a severity); SN_ERROR with the reason in @why otherwise. */
SN_NODISCARD sn_rc_t notify_matcher_check(const char *m, char *why, size_t why_len);
/* True if every matcher of the NULL-terminated @match (NULL: none) holds for @l.
 * An invalid matcher never holds. */
bool notify_matchers_match(char *const *match, const notify_labels_t *l);

/* ---- the route tree -------------------------------------------------------------------- */

/* One route with everything inherited resolved. Borrowed from its tree. */
typedef struct notify_route notify_route_t;
struct notify_route {
    char id[64];           /* "r0" root, "r0.1" its second child, ... */
    char **match;          /* borrowed from the config; NULL-terminated or NULL */
    const char **channels; /* resolved channel names, NULL-terminated */
    size_t channel_count;
    const char **group_by; /* resolved, NULL-terminated; {"..."}: every event alone */
    bool is_group_by_all;  /* group_by "..." */
    int group_wait_ms;
    int group_interval_ms;
    int repeat_interval_ms;
    bool is_continue;
    notify_route_t *children;
    size_t child_count;
};

typedef struct notify_tree notify_tree_t;

/* Compiles cfg->notify over cfg->channels (borrowed: the config must outlive the tree).
 * Root defaults: every channel, group_by [project, environment, type], the
 * NOTIFY_DEFAULT_* timers; a child inherits channels/group_by when empty and timers when
 * < 0. Without a notify section (no routes, matchers, channels or inhibit rules and
 * root values unset or default) the tree is "legacy": one root route sending every event
 * alone and at once (group_by "...", all timers 0) — the notifier's behaviour before
 * routing. NULL with @why filled on a bad matcher or an unknown channel name. */
notify_tree_t *notify_tree_new(const sn_config_t *cfg, char *why, size_t why_len);
/* Frees; NULL-safe; sets *self_p = NULL. */
void notify_tree_destroy(notify_tree_t **self_p);
const notify_route_t *notify_tree_root(const notify_tree_t *self);
bool notify_tree_is_legacy(const notify_tree_t *self);
/* The route with id @id, or NULL. */
const notify_route_t *notify_tree_find(const notify_tree_t *self, const char *id);
/* The inhibit rules in force: the configured ones, else (not legacy) the default rule
 * (source severity=critical + type=deploy.*, target severity=warning, equal project,
 * environment); legacy: none. Borrowed. */
const sn_inhibit_config_t *notify_tree_inhibit_rules(const notify_tree_t *self, size_t *count);

/* Alertmanager's matching: the root always matches; a route's children are tried in
 * order, a matching child is descended into, and the search among siblings stops at the
 * first match unless that child has `continue`; a route none of whose children match is
 * itself the result. Fills @out (up to @max) and returns how many routes matched
 * (at least 1). */
size_t notify_tree_route(const notify_tree_t *self, const notify_labels_t *l,
                         const notify_route_t **out, size_t max);

/* The group an event of labels @l joins on route @r: "<route id>-<16 hex>" where the hex
 * is a digest of the group_by label values (@event_id for group_by "..."). Writes at most
 * NOTIFY_GROUP_KEY_MAX bytes into @out. */
void notify_group_key(const notify_route_t *r, const notify_labels_t *l, const char *event_id,
                      char out[NOTIFY_GROUP_KEY_MAX]);

/* ---- inhibition ----------------------------------------------------------------------- */

/* True if an active source alert of labels @src mutes @target under @rule: @src matches
 * source_match, @target matches target_match, they agree on every `equal` label (both
 * empty counts as equal, as in Alertmanager) and they are not the same alert (@same). */
bool notify_inhibits(const sn_inhibit_config_t *rule, const notify_labels_t *src,
                     const notify_labels_t *target, bool same);
/* True if @l matches the source side of any of @rules. */
bool notify_is_inhibit_source(const sn_inhibit_config_t *rules, size_t count,
                              const notify_labels_t *l);

/* ---- encoding of labels (the inhibitor set in Redis) ---------------------------------- */

/* "<sev>\x1f<v0>\x1f...": a compact form of @l. Caller frees. */
char *notify_labels_encode(const notify_labels_t *l);
/* Inverse of notify_labels_encode. False on junk. */
bool notify_labels_decode(const char *s, notify_labels_t *out);

/* ---- durations ---------------------------------------------------------------------- */

/* Parses "90s", "15m", "2h", "1d", "1h30m" or a plain number of seconds into ms. False on
 * junk, zero or more than 366 days. */
bool notify_duration_parse(const char *s, int64_t *ms);

#endif
