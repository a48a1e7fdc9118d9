#!/usr/bin/env python3
"""Validates CloudEvents / CDEvents 0.5.1 JSON against the official JSON schemas
(../shared/fixtures/cdevents/schemas), with the standard library only: the subset of
JSON Schema 2020-12 those schemas use (type, properties, required, additionalProperties,
enum, const, minLength, items, oneOf/anyOf/allOf, $ref by $id, formats uri,
uri-reference and date-time).

usage: validate_cdevents.py --schemas DIR [--self-test CONFORMANCE_DIR] [FILE...]

Each FILE holds one JSON object, a JSON array of them, or JSON lines. An object with
"specversion": "1.0" is a structured CloudEvent: its required attributes are checked, and
when its type starts with dev.cdevents. its `data` is validated as a CDEvent whose
context.type and id must equal the CloudEvent's. Any other object is a CDEvent. Exit 0
when everything is valid, 1 otherwise (each problem printed), 2 on usage errors.

--self-test proves the validator can fail: every conformance example must pass and
mutated copies (an unknown content field, a missing context.id, a wrong type, a bad
timestamp, a relative uri) must each fail."""
import copy
import json
import os
import re
import sys

URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s]*$")
URI_REF_RE = re.compile(r"^[^\s]*$")
DATE_TIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
CE_ATTR_RE = re.compile(r"^[a-z0-9]{1,20}$")


class Schemas:
    def __init__(self, directory):
        self.by_id = {}
        self.by_type = {}
        for root, _, files in os.walk(directory):
            for name in files:
                if not name.endswith(".json"):
                    continue
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    schema = json.load(f)
                sid = schema.get("$id")
                if sid:
                    self.by_id[sid] = schema
                ctx = schema.get("properties", {}).get("context", {})
                for t in ctx.get("properties", {}).get("type", {}).get("enum", []):
                    self.by_type[t] = schema

    def resolve(self, ref, base):
        if ref in self.by_id:
            return self.by_id[ref], ref
        target = base.rsplit("/", 1)[0] + "/" + ref
        if target in self.by_id:
            return self.by_id[target], target
        raise KeyError("unresolvable $ref %s from %s" % (ref, base))


TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(schemas, schema, value, base, path, errors):
    if "$id" in schema:
        base = schema["$id"]
    if "$ref" in schema:
        target, tbase = schemas.resolve(schema["$ref"], base)
        validate(schemas, target, value, tbase, path, errors)
    t = schema.get("type")
    if t is not None:
        names = t if isinstance(t, list) else [t]
        if not any(TYPES[n](value) for n in names):
            errors.append("%s: expected %s" % (path, "/".join(names)))
            return
    if "const" in schema and value != schema["const"]:
        errors.append("%s: expected %r" % (path, schema["const"]))
    if "enum" in schema and value not in schema["enum"]:
        errors.append("%s: %r not in %r" % (path, value, schema["enum"]))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append("%s: shorter than %d" % (path, schema["minLength"]))
        fmt = schema.get("format")
        if fmt == "uri" and not URI_RE.match(value):
            errors.append("%s: not an absolute URI: %r" % (path, value))
        elif fmt == "uri-reference" and not URI_REF_RE.match(value):
            errors.append("%s: not a URI reference: %r" % (path, value))
        elif fmt == "date-time" and not DATE_TIME_RE.match(value):
            errors.append("%s: not an RFC 3339 date-time: %r" % (path, value))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append("%s: missing required %r" % (path, key))
        extra = schema.get("additionalProperties", True)
        for key, v in value.items():
            if key in props:
                validate(schemas, props[key], v, base, path + "." + key, errors)
            elif extra is False:
                errors.append("%s: unexpected field %r" % (path, key))
            elif isinstance(extra, dict):
                validate(schemas, extra, v, base, path + "." + key, errors)
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            validate(schemas, schema["items"], v, base, "%s[%d]" % (path, i), errors)
    for key in ("allOf", "anyOf", "oneOf"):
        if key not in schema:
            continue
        results = []
        for sub in schema[key]:
            sub_errors = []
            validate(schemas, sub, value, base, path, sub_errors)
            results.append(sub_errors)
        ok = [r for r in results if not r]
        if key == "allOf":
            for r in results:
                errors.extend(r)
        elif key == "anyOf" and not ok:
            errors.append("%s: matches none of anyOf (%s)" % (path, results[0][0]))
        elif key == "oneOf" and len(ok) != 1:
            errors.append("%s: matches %d of oneOf" % (path, len(ok)))


def check_cdevent(schemas, ev, where):
    errors = []
    if not isinstance(ev, dict):
        return ["%s: not an object" % where]
    t = ev.get("context", {}).get("type") if isinstance(ev.get("context"), dict) else None
    schema = schemas.by_type.get(t)
    if schema is None:
        return ["%s: no CDEvents 0.5.1 schema for type %r" % (where, t)]
    validate(schemas, schema, ev, schema.get("$id", ""), where, errors)
    return errors


def check_cloudevent(schemas, ce, where):
    errors = []
    for attr in ("id", "source", "specversion", "type"):
        if not isinstance(ce.get(attr), str) or not ce.get(attr):
            errors.append("%s: CloudEvent attribute %r missing or empty" % (where, attr))
    if ce.get("specversion") != "1.0":
        errors.append("%s: specversion must be \"1.0\"" % where)
    for key, value in ce.items():
        if key in ("data", "data_base64"):
            continue
        if not CE_ATTR_RE.match(key):
            errors.append("%s: bad CloudEvent attribute name %r" % (where, key))
        if isinstance(value, (dict, list)):
            errors.append("%s: attribute %r is not a scalar" % (where, key))
    if "time" in ce and not DATE_TIME_RE.match(str(ce["time"])):
        errors.append("%s: time is not RFC 3339" % where)
    t = ce.get("type", "")
    if isinstance(t, str) and t.startswith("dev.cdevents."):
        data = ce.get("data")
        errors += check_cdevent(schemas, data, where + ".data")
        if isinstance(data, dict) and isinstance(data.get("context"), dict):
            ctx = data["context"]
            if ctx.get("type") != t:
                errors.append("%s: data.context.type differs from type" % where)
            if ctx.get("id") != ce.get("id"):
                errors.append("%s: data.context.id differs from id" % where)
            if ctx.get("timestamp") != ce.get("time"):
                errors.append("%s: data.context.timestamp differs from time" % where)
            subj = data.get("subject", {})
            if isinstance(subj, dict) and subj.get("id") != ce.get("subject"):
                errors.append("%s: subject differs from data.subject.id" % where)
    return errors


def load_objects(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, list) else [doc]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_file(schemas, path):
    errors = []
    for i, obj in enumerate(load_objects(path)):
        where = "%s[%d]" % (os.path.basename(path), i)
        if isinstance(obj, dict) and obj.get("specversion") == "1.0":
            errors += check_cloudevent(schemas, obj, where)
        else:
            errors += check_cdevent(schemas, obj, where)
    return errors


def self_test(schemas, conformance):
    problems = []
    files = sorted(f for f in os.listdir(conformance) if f.endswith(".json"))
    if not files:
        return ["no conformance examples in %s" % conformance]
    for name in files:
        with open(os.path.join(conformance, name), encoding="utf-8") as f:
            ev = json.load(f)
        errs = check_cdevent(schemas, ev, name)
        if errs:
            problems.append("conformance example rejected: %s" % errs)
            continue

        def mutate(fn):
            m = copy.deepcopy(ev)
            fn(m)
            return m

        mutants = {
            "unknown content field": mutate(
                lambda m: m["subject"]["content"].__setitem__("bogusField", 1)),
            "missing context.id": mutate(lambda m: m["context"].pop("id")),
            "wrong type": mutate(
                lambda m: m["context"].__setitem__("type", "dev.cdevents.nope.0.1.0")),
            "bad timestamp": mutate(
                lambda m: m["context"].__setitem__("timestamp", "yesterday")),
            "unknown top-level field": mutate(lambda m: m.__setitem__("extra", {})),
        }
        for what, m in mutants.items():
            if not check_cdevent(schemas, m, name):
                problems.append("%s: a mutant with %s passed" % (name, what))
    # A relative uri where an absolute one is required.
    bad = {"context": {"specversion": "0.5.1", "id": "x", "source": "/s",
                       "type": "dev.cdevents.pipelinerun.started.0.3.0",
                       "timestamp": "2026-01-01T00:00:00Z"},
           "subject": {"id": "r", "content": {"pipelineName": "p", "uri": "runs/1"}}}
    if not check_cdevent(schemas, bad, "relative-uri"):
        problems.append("a relative uri passed")
    print("self-test: %d conformance examples, %d problems" % (len(files), len(problems)))
    return problems


def main(argv):
    args = argv[1:]
    schemas_dir = conformance = None
    files = []
    while args:
        a = args.pop(0)
        if a == "--schemas" and args:
            schemas_dir = args.pop(0)
        elif a == "--self-test" and args:
            conformance = args.pop(0)
        else:
            files.append(a)
    if not schemas_dir:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = Schemas(schemas_dir)
    problems = []
    if conformance:
        problems += self_test(schemas, conformance)
    for path in files:
        problems += check_file(schemas, path)
    for p in problems:
        print("INVALID " + p)
    if not problems:
        print("valid: %d file(s)" % len(files))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
