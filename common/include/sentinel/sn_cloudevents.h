/* Envelope -> CloudEvents 1.0 structured-mode JSON (contracts/cdevents.md §2, §5.3), with
 * a CDEvents 0.5.1 event as `data` where one exists for the Sentinel event type:
 *
 *   run.queued                          dev.cdevents.pipelinerun.queued.0.3.0
 *   run.started                         dev.cdevents.pipelinerun.started.0.3.0
 *   run.succeeded / failed / cancelled / superseded / rejected / rolled_back
 *                                       dev.cdevents.pipelinerun.finished.0.3.0 (outcome)
 *   build.succeeded / failed / warning  dev.cdevents.build.finished.0.3.0
 *   deploy.promoted                     dev.cdevents.service.deployed.0.3.0
 *   deploy.rolled_back                  dev.cdevents.service.rolledback.0.3.0
 *   alert.raised / alert.resolved       dev.cdevents.incident.detected/resolved.0.3.0
 *   source.pushed / change.merged       dev.cdevents.change.merged.0.3.0
 *
 * Every other event (and a mapped one whose body lacks what the CDEvents schema
 * requires) becomes a plain CloudEvent of type "dev.sentinel.<type>" whose data is the
 * envelope's body in the proto3 JSON mapping ({"run": {...}}, plus "labels"). For a
 * CDEvent the same object travels as `customData`. CloudEvent attributes: id = envelope
 * id (= CDEvent context.id), source = "/" + envelope source, subject, time (RFC 3339,
 * ms), datacontenttype application/json, and the extensions `sequence` (see opts),
 * `sentineltype` (the envelope type) and `correlationid` when set (also the CDEvent
 * context.chainId). Used by the gateway (SSE) and the notifier (webhook bodies).
 * Pure functions: any thread. */
#ifndef SN_CLOUDEVENTS_H
#define SN_CLOUDEVENTS_H

#include <jansson.h>

#include "sentinel/sn_common.h"
#include "sentinel/sn_envelope.h"

#define SN_CLOUDEVENTS_SPECVERSION "1.0"
#define SN_CDEVENTS_SPECVERSION "0.5.1"
#define SN_CLOUDEVENTS_TYPE_MAX 160 /* longest CloudEvent type, with its NUL */

typedef struct {
    /* Value of the `sequence` extension (e.g. the journal stream id, as the gateway uses
     * it for the SSE id); NULL: the envelope seq as 20 zero-padded digits. Borrowed. */
    const char *sequence;
    /* Absolute base URL of the API ("http://127.0.0.1:8700") for CDEvents `uri` fields
     * (<base>/api/v1/runs/<id>); NULL: "urn:sentinel:run:<id>". Borrowed. */
    const char *api_base;
} sn_cloudevents_opts_t;

/* The CDEvents type for Sentinel event @type, or NULL if none is defined (static). */
const char *sn_cloudevents_cdevent_type(const char *type);

/* Writes into @out the CloudEvent type of @env: its CDEvents type when the body allows
 * one, else "dev.sentinel.<type>". Truncates to @out_len. */
void sn_cloudevents_type(const sn_envelope_t *env, char *out, size_t out_len);

/* The CDEvent (context, subject, customData) for @env (borrowed), or NULL when @env has
 * no CDEvents mapping or lacks a field its schema requires. New reference. @opts may be
 * NULL. */
json_t *sn_cloudevents_cdevent(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts);

/* The whole structured-mode CloudEvent for @env as a JSON object (new reference; never
 * NULL for an envelope with id and type). @opts may be NULL. */
json_t *sn_cloudevents_from_envelope(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts);

/* The same serialised on ONE line (compact, no raw CR/LF: safe as an SSE data line and
 * as an application/cloudevents+json body). Caller frees with free(). */
char *sn_cloudevents_dumps(const sn_envelope_t *env, const sn_cloudevents_opts_t *opts);

/* RFC 3339 UTC time with milliseconds ("2026-05-04T09:12:44.123Z") of @unix_ms into @out
 * (at least 32 bytes). */
void sn_cloudevents_time(int64_t unix_ms, char *out, size_t out_len);

#endif
