#!/usr/bin/env python3
"""Static checks of the deployment files, used by scripts/check-deploy.sh.

Each subcommand prints nothing and exits 0 when the check holds, or prints what is wrong and
exits 1, so the shell script can turn it into one "ok"/"FAIL" line. Needs python3-yaml.

Subcommands (paths are relative to the repository root, the working directory):
  dashboard-rules OUT        write the dashboard's PromQL as recording rules for promtool
  dashboard-lint             panel ids unique, every target has an expr, ranges use $__rate_interval
  dashboard-coverage         the dashboard uses every core metric of DESIGN.md
  metric-names               print every metric name the alerts, PrometheusRule, KEDA and dashboard use
  compare-metrics SCRAPE     every used metric name is exported by SCRAPE (Prometheus text format)
  rules-in-sync              deploy/k8s/prometheusrule.yaml carries exactly deploy/prometheus/alerts.yml
  sync-rules                 regenerate deploy/k8s/prometheusrule.yaml from alerts.yml
  compose                    docker-compose.yml: services, Redis AOF, worker env, mounted files exist
  k8s-kinds                  every deploy/k8s file parses; the expected kinds exist
  k8s-deployment             Deployment invariants: probes, ports, POD_NAME, secrets, grace period
"""

import json
import re
import sys
from pathlib import Path

import yaml

DASHBOARD = Path("deploy/grafana/dashboards/kyc-worker.json")
ALERTS = Path("deploy/prometheus/alerts.yml")
K8S = Path("deploy/k8s")
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
COMPOSE = Path("deploy/docker-compose.yml")

# The core metrics DESIGN.md names ("External interface" -> Metrics) plus the process ones the
# dashboard's "Processes" row shows. The dashboard must use each of them.
CORE_METRICS = [
    "kyc_jobs_total", "kyc_job_duration_seconds", "kyc_queue_depth", "kyc_queue_lag_seconds",
    "kyc_didit_requests_total", "kyc_didit_request_duration_seconds",
    "kyc_didit_rate_limited_total", "kyc_rate_limit_deferred_total", "kyc_didit_paused",
    "kyc_didit_balance", "kyc_webhooks_total", "kyc_intake_rejected_total",
    "kyc_sessions_created_total", "kyc_decisions_total", "kyc_rule_matches_total",
    "kyc_time_to_decision_seconds", "kyc_decision_fetches_per_session",
    "kyc_events_published_total", "kyc_events_consumer_lag", "kyc_worker_up",
    "kyc_webhook_last_received_timestamp_seconds",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
]

# Series Prometheus itself attaches to every target; not expected in a /metrics scrape.
SYNTHETIC = {"up"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end",
}


def fail(lines):
    """Print what is wrong and exit 1 (the shell script shows it under the FAIL line)."""
    for line in lines:
        print(line)
    sys.exit(1)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ----------------------------------------------------------------------------- PromQL


def grafana_to_promql(expr):
    """Substitutes Grafana's variables the way a dashboard render would, so promtool can
    parse the result: interval macros become durations, template variables a match-all regex
    (they only appear inside =~ matchers in our dashboard)."""
    for macro, value in (
        ("__rate_interval", "5m"), ("__interval_ms", "60000"), ("__interval", "1m"),
        ("__range_s", "3600"), ("__range_ms", "3600000"), ("__range", "1h"),
    ):
        expr = expr.replace("${%s}" % macro, value).replace("$" + macro, value)
    expr = re.sub(r"\$\{[A-Za-z0-9_:]+\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]", ".*", expr)
    return expr


def _strip_parenthesised(text, start):
    """Index just past the parenthesis group opening at text[start] == '('."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def metric_names(expr):
    """The metric names a PromQL expression selects. Not a full parser: it removes strings,
    label matchers, ranges and grouping label lists, then keeps the identifiers that are not
    functions, keywords or numbers. Good enough for the expressions we write, and strict in
    the useful direction (a misspelt metric shows up as a name that is not exported)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    # Grouping/matching label lists: by (...), without (...), on (...), ignoring (...),
    # group_left (...), group_right (...).
    out, i = [], 0
    pattern = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(")
    while True:
        m = pattern.search(expr, i)
        if not m:
            out.append(expr[i:])
            break
        out.append(expr[i:m.start()] + " ")
        i = _strip_parenthesised(expr, m.end() - 1)
    expr = " ".join(out)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)", expr):
        name = m.group(1)
        rest = expr[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function call
        if name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def template_query_names(query):
    """Metric names of a Grafana template query such as label_values(metric{...}, label)."""
    m = re.match(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", query, re.S)
    if m:
        return metric_names(grafana_to_promql(m.group(1)))
    m = re.match(r"\s*label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", query)
    if m:
        return set()
    m = re.match(r"\s*query_result\((.*)\)\s*$", query, re.S)
    if m:
        return metric_names(grafana_to_promql(m.group(1)))
    return set()


# ----------------------------------------------------------------------------- dashboard


def dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(d):
    """Every panel, including those nested in collapsed rows."""
    for p in d.get("panels", []):
        yield p
        for inner in p.get("panels", []) or []:
            yield inner


def dashboard_exprs(d):
    for p in all_panels(d):
        for t in p.get("targets", []) or []:
            if "expr" in t:
                yield p, t["expr"]


def template_queries(d):
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        yield v["name"], q or ""


def cmd_dashboard_rules(out):
    d = dashboard()
    rules = [
        {"record": "dashboard:expr_%d" % n, "expr": grafana_to_promql(expr)}
        for n, (_, expr) in enumerate(dashboard_exprs(d), start=1)
    ]
    if not rules:
        fail(["no targets[].expr in %s" % DASHBOARD])
    with open(out, "w", encoding="utf-8") as f:
        f.write("# Generated by scripts/check_deploy.py from %s; do not edit.\n" % DASHBOARD)
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False, width=1000)
    print(len(rules))


def cmd_dashboard_lint():
    d = dashboard()
    problems = []
    ids = {}
    for p in all_panels(d):
        pid = p.get("id")
        if pid in ids:
            problems.append("panel id %s used by %r and %r" % (pid, ids[pid], p.get("title")))
        ids[pid] = p.get("title")
        if "gridPos" not in p:
            problems.append("panel %r has no gridPos" % p.get("title"))
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problems.append("panel %r has no targets" % p.get("title"))
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append("panel %r target %s has no expr" % (p.get("title"), t.get("refId")))
            for rng in re.findall(r"\[([^\]]*)\]", expr):
                if rng != "$__rate_interval":
                    problems.append("panel %r uses range [%s]; use [$__rate_interval]" % (p.get("title"), rng))
    if d.get("uid") != "kyc-worker":
        problems.append("dashboard uid must be kyc-worker (provisioned links rely on it)")
    if problems:
        fail(problems)


def used_by_dashboard():
    d = dashboard()
    names = set()
    for _, expr in dashboard_exprs(d):
        names |= metric_names(grafana_to_promql(expr))
    for _, q in template_queries(d):
        names |= template_query_names(q)
    return names


def cmd_dashboard_coverage():
    names = {base_name(n, None) for n in used_by_dashboard()}
    missing = [m for m in CORE_METRICS if m not in names]
    if missing:
        fail(["not on the dashboard: " + ", ".join(missing)])


# ----------------------------------------------------------------------------- rules


def alert_groups():
    return load_yaml_docs(ALERTS)[0]["groups"]


def prometheus_rule():
    docs = [d for d in load_yaml_docs(PROMETHEUS_RULE) if d.get("kind") == "PrometheusRule"]
    if len(docs) != 1:
        fail(["%s must hold exactly one PrometheusRule" % PROMETHEUS_RULE])
    return docs[0]


PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `scripts/check-deploy.sh sync-rules`; do
# not edit by hand. `make check-deploy` fails when the two differ. See alerts.yml for the
# comments on each rule.
"""


def cmd_sync_rules():
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kyc-worker",
            "labels": {
                "app.kubernetes.io/name": "kyc-worker",
                # kube-prometheus-stack selects rules by its release label; adjust.
                "release": "prometheus",
            },
        },
        "spec": {"groups": alert_groups()},
    }
    with open(PROMETHEUS_RULE, "w", encoding="utf-8") as f:
        f.write(PROMETHEUS_RULE_HEADER)
        yaml.safe_dump(doc, f, sort_keys=False, width=100, allow_unicode=True)


def cmd_rules_in_sync():
    if prometheus_rule().get("spec", {}).get("groups") != alert_groups():
        fail(["%s differs from %s; run: scripts/check-deploy.sh sync-rules" % (PROMETHEUS_RULE, ALERTS)])


def rule_exprs(groups):
    for g in groups:
        for r in g.get("rules", []):
            yield r.get("alert") or r.get("record"), r["expr"]


def keda_queries():
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in load_yaml_docs(path):
            if doc.get("kind") != "ScaledObject":
                continue
            for t in doc.get("spec", {}).get("triggers", []):
                if t.get("type") == "prometheus":
                    yield t["metadata"]["query"]


def used_metric_names():
    """{name: [where it is used]} over alerts, PrometheusRule, KEDA and the dashboard."""
    used = {}

    def add(names, where):
        for n in names:
            used.setdefault(n, []).append(where)

    for name, expr in rule_exprs(alert_groups()):
        add(metric_names(expr), "alerts.yml:" + name)
    for name, expr in rule_exprs(prometheus_rule()["spec"]["groups"]):
        add(metric_names(expr), "prometheusrule.yaml:" + name)
    for q in keda_queries():
        add(metric_names(q), "keda-scaledobject.yaml")
    add(used_by_dashboard(), "dashboard")
    return used


def cmd_metric_names():
    for name, where in sorted(used_metric_names().items()):
        print("%s\t%s" % (name, ", ".join(sorted(set(where)))))


def parse_scrape(path):
    """(sample names, {family: type}) of a Prometheus text-format scrape."""
    samples, types = set(), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    types[parts[2]] = parts[3]
                continue
            if line.startswith("#"):
                continue
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                samples.add(m.group(0))
    return samples, types


def base_name(name, types):
    """Histogram/summary series name -> family name (kyc_x_bucket -> kyc_x). With types None,
    strips the suffix whenever one is present (used for the coverage check)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if types is None or types.get(base) in ("histogram", "summary"):
                return base
    return name


def cmd_compare_metrics(scrape):
    samples, types = parse_scrape(scrape)
    if not samples:
        fail(["%s holds no samples" % scrape])
    # Families with samples only: a TYPE line without samples is not a series to query.
    exported = {base_name(s, types) for s in samples}
    used = used_metric_names()
    missing = sorted(n for n in used if n not in SYNTHETIC and base_name(n, types) not in exported)
    if missing:
        fail(["%s is used by %s but not exported" % (n, ", ".join(sorted(set(used[n])))) for n in missing])
    unused = sorted(n for n in exported if n.startswith("kyc_") and n not in {base_name(u, types) for u in used})
    if unused:
        # Informational only: exported but on no dashboard panel, alert or scaler.
        print("note: exported but not used by dashboard/alerts: " + ", ".join(unused), file=sys.stderr)


# ----------------------------------------------------------------------------- compose, k8s


def cmd_compose():
    doc = load_yaml_docs(COMPOSE)[0]
    services = doc.get("services", {})
    problems = []
    expected = ["redis", "worker-1", "worker-2", "worker-3", "sandbox", "prometheus", "grafana"]
    missing = [s for s in expected if s not in services]
    if missing:
        problems.append("missing services: " + ", ".join(missing))
    redis_cmd = " ".join(map(str, services.get("redis", {}).get("command", [])))
    for flag in ("--appendonly yes", "--appendfsync everysec"):
        if flag not in redis_cmd:
            problems.append("redis command lacks %r" % flag)
    for w in ("worker-1", "worker-2", "worker-3"):
        env = services.get(w, {}).get("environment", {}) or {}
        for key in ("KYC__REDIS__URL", "KYC__DIDIT__BASE_URL", "KYC__HTTP__INTERNAL_PORT"):
            if key not in env:
                problems.append("%s has no %s" % (w, key))
    sandbox_cmd = [str(a) for a in services.get("sandbox", {}).get("command", [])]
    if "--webhook-url" not in sandbox_cmd or "--host" not in sandbox_cmd:
        problems.append("sandbox must run with --host 0.0.0.0 and --webhook-url to a worker")
    for name, svc in services.items():
        for vol in svc.get("volumes", []) or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (COMPOSE.parent / src).exists():
                    problems.append("%s mounts %s, which does not exist" % (name, src))
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = COMPOSE.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                problems.append("%s builds from %s, which does not exist" % (name, dockerfile))
    if problems:
        fail(problems)


def k8s_docs():
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in load_yaml_docs(path):
            docs.append((path, doc))
    return docs


def cmd_k8s_kinds():
    docs = k8s_docs()
    problems = []
    kinds = {}
    for path, doc in docs:
        if "kind" not in doc:
            problems.append("%s: a document without kind" % path)
            continue
        kinds.setdefault(doc["kind"], []).append(path.name)
    for kind in ("Deployment", "PodDisruptionBudget", "Service", "Ingress", "ServiceMonitor",
                 "PrometheusRule", "ScaledObject", "ConfigMap"):
        if kind not in kinds:
            problems.append("no %s in %s" % (kind, K8S))
    # Only the example may hold a Secret, and it is not applied by kustomize.
    for path, doc in docs:
        if doc.get("kind") == "Secret" and path.name != "secret.example.yaml":
            problems.append("%s holds a Secret; keep secrets out of the repository" % path)
        if doc.get("kind") == "Kustomization":
            for res in doc.get("resources", []):
                if not (K8S / res).exists():
                    problems.append("kustomization lists %s, which does not exist" % res)
                if res == "secret.example.yaml":
                    problems.append("kustomization must not apply secret.example.yaml")
    if problems:
        fail(problems)


def parse_duration_s(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError("cannot read duration %r" % text)
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]


def cmd_k8s_deployment():
    docs = k8s_docs()
    problems = []
    deployments = [d for _, d in docs if d.get("kind") == "Deployment"]
    config = {}
    for _, d in docs:
        if d.get("kind") == "ConfigMap":
            config.update(d.get("data", {}) or {})
    if len(deployments) != 1:
        fail(["expected one Deployment, found %d" % len(deployments)])
    pod = deployments[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}

    pod_name = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if pod_name != "metadata.name":
        problems.append("POD_NAME must come from the downward API (fieldRef metadata.name)")
    for key in ("KYC__DIDIT__API_KEY", "KYC__DIDIT__WEBHOOK_SECRET", "KYC__REDIS__URL", "KYC__HTTP__API_TOKEN"):
        if "secretKeyRef" not in env.get(key, {}).get("valueFrom", {}):
            problems.append("%s must come from a secretKeyRef" % key)
        if key in config:
            problems.append("%s must not be in a ConfigMap" % key)
    if not any("configMapRef" in e for e in c.get("envFrom", [])):
        problems.append("the container should take KYC__... settings from the ConfigMap (envFrom)")

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != 8080 or ports.get("metrics") != 9090:
        problems.append("container ports must be http=8080 and metrics=9090, got %s" % ports)
    if str(config.get("KYC__HTTP__INTERNAL_PORT")) != "9090" or str(config.get("KYC__HTTP__PORT")) != "8080":
        problems.append("ConfigMap must set KYC__HTTP__PORT=8080 and KYC__HTTP__INTERNAL_PORT=9090")

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", 8080):
            problems.append("%s must be GET %s on the public port" % (probe, path))

    drain = parse_duration_s(config.get("KYC__WORKER__SHUTDOWN_TIMEOUT", "30s"))
    pre_stop = 0
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        pre_stop = parse_duration_s(cmd[1])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain + pre_stop:
        problems.append(
            "terminationGracePeriodSeconds %s must exceed preStop %ss + KYC__WORKER__SHUTDOWN_TIMEOUT %ss"
            % (grace, pre_stop, drain))

    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits", {}).get("memory"):
        problems.append("resources need requests and a memory limit")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("pod must run as non-root")

    # Ingress: HTTPS for the webhook route and /v1/.
    ingresses = [d for _, d in docs if d.get("kind") == "Ingress"]
    paths = set()
    for ing in ingresses:
        if not ing["spec"].get("tls"):
            problems.append("Ingress %s has no tls" % ing["metadata"]["name"])
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                paths.add(p["path"])
    for p in ("/webhooks/didit", "/v1/"):
        if p not in paths:
            problems.append("Ingress does not route %s" % p)
    if "/metrics" in paths or "/" in paths:
        problems.append("Ingress must not expose /metrics or everything (/)")
    if problems:
        fail(problems)


def main(argv):
    if len(argv) < 2:
        fail([__doc__])
    cmd, args = argv[1], argv[2:]
    commands = {
        "dashboard-rules": cmd_dashboard_rules,
        "dashboard-lint": cmd_dashboard_lint,
        "dashboard-coverage": cmd_dashboard_coverage,
        "metric-names": cmd_metric_names,
        "compare-metrics": cmd_compare_metrics,
        "rules-in-sync": cmd_rules_in_sync,
        "sync-rules": cmd_sync_rules,
        "compose": cmd_compose,
        "k8s-kinds": cmd_k8s_kinds,
        "k8s-deployment": cmd_k8s_deployment,
    }
    if cmd not in commands:
        fail(["unknown subcommand %r" % cmd, __doc__])
    commands[cmd](*args)


if __name__ == "__main__":
    main(sys.argv)
