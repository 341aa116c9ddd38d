#!/usr/bin/env python3
"""test/fuzz/api_fuzz.py — an OpenAPI-driven fuzzer of the /v1 API, against
a running envoisms-gateway and the database behind it.

From each operation of docs/openapi.yaml it derives requests with Hypothesis:
valid ones (path ids of objects it created, query parameters and JSON bodies
per schema) and invalid ones (wrong types, missing fields, huge strings,
unicode and NULs, deep nesting, numbers out of range, bodies that are no
JSON, wrong content types, bad or missing keys, unknown routes and methods).
After each response it checks the contract:

  * no 5xx, and an HTTP answer to every request;
  * every non-2xx answer is the envelope {"error": {"code", "message",
    "docs"}} with a code of envoisms.error_codes and the status that table
    gives it (or, for the three requests the gateway refuses before SQL sees
    them, the gateway's own code, which docs/openapi.yaml must list);
  * a refused (4xx) request changes nothing: no row added to or removed
    from any table of the schema, every account's balance as before, and
    envoisms.balance_check() still ok everywhere.

It stops after --seconds or --max-requests, prints one JSON line of figures
and every violation with the exact request, and exits 1 when there is one.
Known cases (KNOWN below) are reported as such and do not fail the run;
each says why, and one that no longer reproduces is reported too.
"""
import argparse
import hashlib
import hmac
import http.client
import json
import re
import sys
import time
import urllib.parse

import psycopg2
import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st

# The codes the gateway answers itself, before envoisms.api: a request line
# or header block it cannot take (http.c). docs/openapi.yaml lists them in
# the Error schema; envoisms.error_codes does not (it maps SQL errors).
GATEWAY_CODES = {"INVALID_REQUEST": 400, "URI_TOO_LONG": 414, "HEADERS_TOO_LARGE": 431}

# Violations whose cause is known and reported, not suppressed: each says
# why, matches its requests narrowly, and is sent once per run as written
# (the probe); when the probe no longer violates, the run fails until the
# entry is removed. name -> (why, match(request, status, body), probe(args)).
MHD_MEMORY = 8192 + 32768 + 16384  # the gateway's MHD_OPTION_CONNECTION_MEMORY_LIMIT by default


def header_bytes(target, headers):
    return len(target) + sum(len(k) + len(v) + 4 for k, v in headers.items())


def shown(target, headers, body):
    """A request as reported: long parts cut, their length said."""
    def cut(text, n):
        return text if len(text) <= n else text[:n] + f"...({len(text)} in all)"
    return {"target": cut(target, 2000), "headers": {k: cut(v, 200) for k, v in headers.items()},
            "body": None if body is None else cut(body.decode("utf-8", "backslashreplace"), 2000),
            "head_bytes": header_bytes(target, headers)}


KNOWN = {
    "later-head-beyond-connection-memory": (
        "on a kept-alive connection, a request head larger than the gateway's libmicrohttpd connection memory "
        "(max_url + max_headers + 16 KiB, src/gateway/main.c) is refused by libmicrohttpd itself with an HTML "
        "414 or 431 page (a long target or long headers): the acceptor (src/gateway/acceptor.c, head.c) "
        "inspects only the first head of a connection",
        lambda r, status, body: status in (414, 431) and body.lstrip().startswith(b"<") and r["head_bytes"] > MHD_MEMORY - 8192,
        lambda a: ("GET", "/v1/billing/balance", {"Authorization": f"Bearer {a.live_key}", "X-Filler": "f" * 70000},
                   None)),
}

ID_PREFIX = {  # path template -> the prefix of the ids it takes
    "/v1/messages/{id}": ["msg"], "/v1/verify/{id}": ["vrf"], "/v1/contacts/{id}": ["ctc", "lst"],
    "/v1/campaigns/{id}": ["cmp"], "/v1/campaigns/{id}/send": ["cmp"], "/v1/webhooks/{id}": ["whk"],
    "/v1/webhooks/{id}/test": ["whk"], "/v1/api-keys/{id}": ["key"], "/v1/optouts/{id}": ["opt"],
}
BATCH = 100  # requests per Hypothesis run
ID_RE = re.compile(r"^[a-z]{2,5}_[0-9a-f]{12,40}$")

TORTURE = [
    "", " ", "\u0000", "a\u0000b", "\ufeff", "\u202e\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "e\u0301" * 40,
    "\U0001F600" * 30, "\u200b\u200d", "\\", '"', "'; DROP TABLE envoisms.accounts; --", "%00%ff%zz",
    "+212612345678", "+2126123456789012345", "0612345678", "+4964000079640000", "\r\n\tX-Injected: 1",
    "null", "true", "1e400", "-0", "\u00e9\u20ac\u00a0", "ENVOISMS", "https://127.0.0.1/", "javascript:alert(1)",
]
NUMBERS = ["0", "-0", "1e400", "-1e400", "1e-400", "0e99999999999", "0e-100000", "123456789012345678901234567890",
           "1.5", "-1", "2147483648", "9223372036854775808", "1E+2", "0.0000001"]


def resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node:
        path = node["$ref"].lstrip("#/").split("/")
        node = spec
        for part in path:
            node = node[part]
    return node


def text_strategy(schema):
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    if schema.get("format") == "date-time":
        return st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if schema.get("format") == "uri":
        return st.sampled_from(["https://example.ma/hook", "https://hooks.example.com/envoisms", "http://127.0.0.1/x"])
    return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 60))


def value_strategy(spec, schema, depth=0):
    """Values valid under a schema of docs/openapi.yaml (the subset it uses)."""
    schema = resolve(spec, schema)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if "enum" in schema or "const" in schema or kind == "string":
        return text_strategy(schema)
    if kind == "integer":
        return st.integers(schema.get("minimum", -10), schema.get("maximum", 1000))
    if kind == "number":
        return st.floats(schema.get("minimum", 0), schema.get("maximum", 1000), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return st.lists(value_strategy(spec, items, depth + 1), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = [p for p in schema.get("required", []) if p in props]
        optional = [p for p in props if p not in required]
        if depth > 3 or not props:
            return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
        return st.fixed_dictionaries(
            {p: value_strategy(spec, props[p], depth + 1) for p in required},
            optional={p: value_strategy(spec, props[p], depth + 1) for p in optional})
    return json_values()


def json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20) | st.sampled_from(TORTURE),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10)


class Fuzzer:
    def __init__(self, args, spec, db):
        self.args = args
        self.spec = spec
        self.db = db
        self.cur = db.cursor()
        self.started = time.monotonic()
        self.sent = 0
        self.statuses = {}
        self.violations = []
        self.known_seen = {}
        self.ids = {}
        self.protected = set(args.protect_id or [])
        self.conn = None
        self.probe_hit = False
        self.cur.execute("SELECT code, http_status FROM envoisms.error_codes")
        self.codes = dict(self.cur.fetchall())
        enum = set(resolve(spec, {"$ref": "#/components/schemas/Error"})["properties"]["error"]
                   ["properties"]["code"]["enum"])
        missing = (set(self.codes) | set(GATEWAY_CODES)) - enum
        if missing:
            self.violation("docs/openapi.yaml's Error enum lacks codes the API answers", {"codes": sorted(missing)})
        self.cur.execute("""SELECT 'SELECT ' || string_agg(format('(SELECT count(*) FROM envoisms.%I)', relname),
                                                     ', ' ORDER BY relname),
                                   array_agg(relname::text ORDER BY relname)
                              FROM pg_class WHERE relnamespace = 'envoisms'::regnamespace AND relkind IN ('r', 'p')
                               -- a refused console sign-in counts its failure there, by design (backoff)
                               AND relname <> 'console_signin_throttle'""")
        self.count_sql, self.tables = self.cur.fetchone()
        self.state = self.snapshot()
        self.ops = []
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if isinstance(op, dict) and path != "/metrics":
                    self.ops.append((method.upper(), path, op, item.get("parameters", [])))

    # ---- the database side
    def snapshot(self):
        self.cur.execute(self.count_sql)
        counts = dict(zip(self.tables, self.cur.fetchone()))
        self.cur.execute("""SELECT coalesce(jsonb_object_agg(account_id, s), '{}') FROM
                              (SELECT account_id, sum(balance_mad) AS s FROM envoisms.balance_buckets GROUP BY 1) b""")
        return counts, self.cur.fetchone()[0]

    def balance_ok(self):
        self.cur.execute("SELECT coalesce(bool_and(ok), true), string_agg(account_id, ', ') FILTER (WHERE NOT ok) "
                         "FROM envoisms.balance_check()")
        return self.cur.fetchone()

    # ---- sending
    def send(self, method, target, headers, body):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.args.host, self.args.port, timeout=60)
                self.conn.request(method, target, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, data
            except (http.client.HTTPException, OSError) as e:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 1:
                    return None, str(e).encode()
        return None, b""

    # ---- building a request
    def pick_id(self, data, template):
        """An id for the path: mostly one created earlier, else junk. The
        draws never depend on what was created (Hypothesis replays them)."""
        choice = data.draw(st.integers(0, 9))
        index = data.draw(st.integers(0, 10**6))
        junk = data.draw(st.one_of(st.text(max_size=40), st.sampled_from(TORTURE),
                                   st.integers(200, 5000).map(lambda n: "x" * n)))
        keep_percent = data.draw(st.booleans())
        kinds = ID_PREFIX.get(template, [])
        if template.startswith("/v1/carriers/"):
            pool = list(self.args.carrier_ids)
        else:
            pool = [i for k in kinds for i in self.ids.get(k, []) if i not in self.protected]
        anything = sorted({i for v in self.ids.values() for i in v} - self.protected)
        if pool and choice < 7:
            return urllib.parse.quote(pool[index % len(pool)], safe="")
        if anything and choice < 8:
            return anything[index % len(anything)]
        # a '%' left as it is makes escapes such as %zz or %ff (not UTF-8)
        return urllib.parse.quote(junk, safe="%" if keep_percent else "")

    def query(self, data, op, common, valid):
        params = [resolve(self.spec, p) for p in op.get("parameters", []) + common]
        pairs = []
        for p in params:
            if p.get("in") != "query" or not data.draw(st.booleans()):
                continue
            if valid:
                v = data.draw(value_strategy(self.spec, p.get("schema", {"type": "string"})))
                v = json.dumps(v) if isinstance(v, bool) else str(v)
            else:
                v = data.draw(st.one_of(st.sampled_from(TORTURE + NUMBERS), st.text(max_size=30),
                                        st.integers(1000, 20000).map(lambda n: "9" * n)))
            pairs.append((p["name"], v))
        if not valid and data.draw(st.integers(0, 3)) == 0:
            pairs.append((data.draw(st.text(max_size=10)), data.draw(st.text(max_size=10))))
        qs = urllib.parse.urlencode(pairs)
        if not valid and data.draw(st.integers(0, 4)) == 0:
            qs += data.draw(st.sampled_from(["&%zz=1", "&a=%ff%fe", "&=&&=", "&limit=1&limit=2", "&%00=x"]))
        return qs

    def auth(self, data, op):
        public = op.get("security") == [] or "carrierToken" in json.dumps(op.get("security", ""))
        choice = data.draw(st.integers(0, 19))
        key = self.args.live_key if choice < 8 else self.args.test_key
        if choice < 16 or public:
            return {"Authorization": f"Bearer {key}"} if not public or choice < 4 else {}
        return data.draw(st.sampled_from([
            {}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {key}"},
            {"Authorization": f"bearer   {key}  "}, {"Authorization": f"Bearer {key[:-1]}0"},
            {"Authorization": "Bearer env_live_" + "0" * 48}, {"Authorization": f"Bearer {key}x"},
            {"Authorization": f"Bearer {key}, Bearer {key}"}]))

    def json_body(self, data, schema, valid):
        if schema is None:
            schema = {"type": "object"}
        value = data.draw(value_strategy(self.spec, schema))
        if not valid and isinstance(value, dict):
            mutation = data.draw(st.integers(0, 6))
            keys = sorted(value) or ["to"]
            field = data.draw(st.sampled_from(keys))
            if mutation == 0 and value:
                del value[field]
            elif mutation == 1:
                value[field] = data.draw(json_values())
            elif mutation == 2:
                value[field] = data.draw(st.sampled_from(TORTURE))
            elif mutation == 3:
                value[field] = "x" * data.draw(st.integers(1000, 300000))
            elif mutation == 4:
                value[data.draw(st.text(max_size=12))] = data.draw(json_values())
        text = json.dumps(value, ensure_ascii=data.draw(st.booleans()))
        if not valid:
            text = self.mutate_text(data, text)
        return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text

    def mutate_text(self, data, text):
        m = data.draw(st.integers(0, 11))
        if m == 0:
            depth = data.draw(st.integers(50, 20000))
            return '{"to": ' + "[" * depth + "]" * depth + ', "metadata": ' + '{"a":' * depth + "{}" + "}" * (depth + 1)
        if m == 1:
            return text[: data.draw(st.integers(0, max(len(text) - 1, 0)))]
        if m == 2:
            return data.draw(st.sampled_from(["", " ", "null", "[]", '"x"', "1", "{", "}", "{}{}", "\ufeff{}",
                                              '{"a":1,"a":2}', '{"to":"\\u0000"}', '{"to":"\\ud800"}',
                                              '{"message":"\\udfff\\ud800"}', "{'to': 1}", "{\"to\": 1,}"]))
        if m == 3:
            return text.encode() + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"]))
        if m == 4:
            return re.sub(r'(:\s*)("[^"]*"|-?\d[\d.eE+-]*|true|false|null)', lambda x: x.group(1) + data.draw(
                st.sampled_from(NUMBERS)), text, count=1)
        if m == 5:
            return text + data.draw(st.sampled_from(["garbage", "\x00", "}", ",", "\n\n{}"]))
        if m == 6:
            return data.draw(st.binary(max_size=64))
        return text

    def callback_body(self, data, path, valid):
        """The shapes carriers send to the public callback routes."""
        status = st.sampled_from(["sent", "delivered", "failed", "expired", "read", "DELIVERED", "bogus"])
        if path.endswith("/dlr"):
            report = st.fixed_dictionaries({"id": st.text(max_size=20), "status": status},
                                           optional={"error_code": st.text(max_size=8),
                                                     "error_message": st.text(max_size=30)})
            value = data.draw(st.one_of(report, st.fixed_dictionaries({"reports": st.lists(report, max_size=4)})))
        else:
            st_entry = st.fixed_dictionaries({"id": st.text(max_size=20), "status": status},
                                             optional={"errors": st.lists(st.fixed_dictionaries(
                                                 {"code": st.integers(), "title": st.text(max_size=20)}), max_size=2)})
            value = data.draw(st.fixed_dictionaries({"entry": st.lists(st.fixed_dictionaries({"changes": st.lists(
                st.fixed_dictionaries({"value": st.fixed_dictionaries({"statuses": st.lists(st_entry, max_size=3)})}),
                max_size=2)}), max_size=2)}))
        if not valid:
            # replace one container anywhere with another JSON kind
            def walk(node):
                if isinstance(node, dict) and node:
                    k = data.draw(st.sampled_from(sorted(node)))
                    if data.draw(st.booleans()):
                        node[k] = data.draw(json_values())
                    else:
                        walk(node[k])
                elif isinstance(node, list) and node:
                    i = data.draw(st.integers(0, len(node) - 1))
                    if data.draw(st.booleans()):
                        node[i] = data.draw(json_values())
                    else:
                        walk(node[i])
            walk(value)
        return json.dumps(value).encode()

    def request(self, data):
        method, template, op, common = data.draw(st.sampled_from(self.ops))
        valid = data.draw(st.booleans())
        path = template
        if "{id}" in template:
            path = template.replace("{id}", self.pick_id(data, template))
        if not valid:
            tweak = data.draw(st.integers(0, 15))
            if tweak == 0:
                method = data.draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]))
            elif tweak == 1:
                path = data.draw(st.sampled_from(["/v1/", "/v2/messages", "/v1/messages/", "/v1//messages",
                                                  "/v1/messages/%2e%2e", "/v1/unknown/x/y/z", "/",
                                                  path + "/extra", path.upper()]))
            elif tweak == 2:
                path += "/" + "a" * data.draw(st.integers(1000, 20000))
        headers = self.auth(data, op)
        query = self.query(data, op, common, valid)
        body = None
        if method in ("POST", "PATCH", "PUT") or (not valid and data.draw(st.integers(0, 9)) == 0):
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if template.startswith("/v1/carriers/") and data.draw(st.booleans()):
                body = self.callback_body(data, template, valid)
            else:
                body = self.json_body(data, schema, valid)
            headers["Content-Type"] = "application/json"
            if not valid and data.draw(st.integers(0, 4)) == 0:
                ctype = data.draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded",
                                                   "multipart/form-data; boundary=x", "", "application/json; charset=latin1"]))
                headers["Content-Type"] = ctype
        if template.startswith("/v1/carriers/"):
            headers.update(self.carrier_auth(data, template, method, body, valid))
            if template.endswith("/whatsapp") and method == "GET" and valid:
                query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.verify_token": self.args.verify_token,
                                                "hub.challenge": data.draw(st.one_of(st.text(max_size=20),
                                                                                     st.integers(0, 10**20).map(str)))})
        if method == "POST" and data.draw(st.integers(0, 5)) == 0:
            headers["Idempotency-Key"] = data.draw(st.one_of(
                st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
                st.integers(256, 4000).map(lambda n: "k" * n)))
        if not valid and data.draw(st.integers(0, 9)) == 0:
            headers["X-Forwarded-For"] = data.draw(st.sampled_from(["203.0.113.9", "garbage", "1.2.3.4, ::1", "::ffff:1"]))
        if not valid and data.draw(st.integers(0, 29)) == 0:
            headers["X-Filler"] = "f" * data.draw(st.integers(1000, 100000))
        target = path + ("?" + query if query else "")
        return method, template, target, headers, body

    def carrier_auth(self, data, template, method, body, valid):
        good = valid or data.draw(st.booleans())
        if template.endswith("/dlr"):
            return {"X-Carrier-Token": self.args.dlr_token if good else data.draw(st.sampled_from(
                ["", "wrong", self.args.dlr_token + "x"]))}
        if method == "POST" and body is not None:
            sig = "sha256=" + hmac.new(self.args.app_secret.encode(), body, hashlib.sha256).hexdigest()
            return {"X-Hub-Signature-256": sig if good else sig[:-1] + "0"}
        return {}

    # ---- checking an answer
    def violation(self, what, request, status=None, body=None):
        for name, (why, match, probe) in KNOWN.items():
            if status is not None and "template" in request and match(request, status, body or b""):
                self.known_seen[name] = self.known_seen.get(name, 0) + 1
                self.probe_hit = True
                return
        self.violations.append({"what": what, "request": request, "status": status,
                                "response": (body or b"")[:600].decode("utf-8", "replace")})

    def check(self, request, status, body):
        method = request["method"]
        if status is None:
            self.violation("no HTTP answer", request, status, body)
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.violation(f"{status} answer", request, status, body)
        if status >= 400 and method != "HEAD":
            try:
                err = json.loads(body)["error"]
                code = err["code"]
                assert isinstance(err["message"], str) and isinstance(err["docs"], str)
            except Exception:
                self.violation("a refusal that is no {\"error\": {code, message, docs}} envelope", request, status, body)
                return
            want = self.codes.get(code, GATEWAY_CODES.get(code))
            if want is None:
                self.violation(f"code {code} is not in envoisms.error_codes", request, status, body)
            elif want != status:
                self.violation(f"code {code} answered with {status}, its status is {want}", request, status, body)
        if 400 <= status < 500:
            now = self.snapshot()
            if now != self.state:
                changed = {t: (self.state[0][t], now[0][t]) for t in self.tables if now[0][t] != self.state[0][t]}
                if now[1] != self.state[1]:
                    changed["balances"] = (self.state[1], now[1])
                self.violation(f"a refused request ({status}) changed the data: {changed}", request, status, body)
                self.state = now
            ok, bad = self.balance_ok()
            if not ok:
                self.violation(f"balance_check() fails after a refused request: {bad}", request, status, body)
        elif 200 <= status < 300:
            self.state = self.snapshot()
            if body:
                try:
                    self.harvest(json.loads(body))
                except ValueError:
                    # Meta's handshake wants hub.challenge echoed as it came, not as JSON
                    # and the console's CSV export is CSV
                    if not (request["template"] in ("/v1/carriers/{id}/whatsapp", "/v1/console/messages/export")
                            and method == "GET"):
                        self.violation("a 2xx answer that is no JSON", request, status, body)

    def harvest(self, doc):
        if isinstance(doc, dict):
            for v in doc.values():
                self.harvest(v)
        elif isinstance(doc, list):
            for v in doc[:50]:
                self.harvest(v)
        elif isinstance(doc, str) and ID_RE.match(doc):
            pool = self.ids.setdefault(doc.split("_")[0], [])
            if doc not in pool:
                pool.append(doc)
                del pool[:-200]

    def one(self, data):
        method, template, target, headers, body = self.request(data)
        self.sent += 1
        status, rbody = self.send(method, target, headers, body)
        self.check({"method": method, "template": template, **shown(target, headers, body)}, status, rbody)

    # ---- the known cases, sent as written, once per run
    def probe_known(self):
        for name, (why, match, probe) in KNOWN.items():
            method, target, headers, body = probe(self.args)
            self.send("GET", "/healthz", {}, None)  # each probe goes on a kept-alive connection, as the fuzzer's do
            status, rbody = self.send(method, target, headers, body)
            request = {"method": method, "template": "(known case probe)", **shown(target, headers, body)}
            self.sent += 1
            self.probe_hit = False
            self.check(request, status, rbody)
            if not self.probe_hit:
                self.violations.append({"what": f"known case {name} no longer reproduces ({status}): "
                                                "remove it from KNOWN in test/fuzz/api_fuzz.py",
                                        "request": request, "status": status, "response": ""})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--live-key", required=True)
    parser.add_argument("--test-key", required=True)
    parser.add_argument("--protect-id", action="append", help="an api key id the fuzzer must not revoke or edit")
    parser.add_argument("--carrier-ids", nargs="*", default=[])
    parser.add_argument("--dlr-token", default="")
    parser.add_argument("--app-secret", default="")
    parser.add_argument("--verify-token", default="")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    args.host, args.port = url.hostname, url.port

    spec = yaml.safe_load(open(args.spec, encoding="utf-8"))
    db = psycopg2.connect(args.dsn)
    db.autocommit = True
    fuzzer = Fuzzer(args, spec, db)
    fuzzer.probe_known()
    seed_value = args.seed if args.seed is not None else int(time.time())

    # Batches of examples, each a Hypothesis run of its own (seeded from
    # seed_value): the budget is checked between batches, so that no
    # example ever stops early (Hypothesis replays the draws of an example
    # and calls it flaky when they change).
    batch = 0
    while time.monotonic() - fuzzer.started < args.seconds and fuzzer.sent < args.max_requests:
        @seed(seed_value + batch)
        @settings(max_examples=min(BATCH, args.max_requests - fuzzer.sent), deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
        @given(st.data())
        def run(data):
            fuzzer.one(data)

        run()
        batch += 1
    elapsed = time.monotonic() - fuzzer.started
    fivexx = sum(n for s, n in fuzzer.statuses.items() if s >= 500)
    print(json.dumps({"requests": fuzzer.sent, "seconds": round(elapsed, 1),
                      "requests_per_second": round(fuzzer.sent / max(elapsed, 0.001), 1),
                      "5xx": fivexx, "known": fuzzer.known_seen, "statuses": dict(sorted(fuzzer.statuses.items())),
                      "violations": len(fuzzer.violations), "seed": seed_value}))
    for name, (why, _, _) in KNOWN.items():
        if name in fuzzer.known_seen:
            print(f"known: {name} ({fuzzer.known_seen[name]} times): {why}")
    seen = set()
    for v in fuzzer.violations:
        key = (v["what"], v["request"].get("template"), v["request"].get("method"))
        if key in seen:
            continue
        seen.add(key)
        print("VIOLATION: " + json.dumps(v, ensure_ascii=False))
    return 1 if fuzzer.violations else 0


if __name__ == "__main__":
    sys.exit(main())
