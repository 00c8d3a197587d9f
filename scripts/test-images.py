#!/usr/bin/env python3
"""Runs the images as docker-compose.yml does, with podman, and checks them
from the host (run by scripts/test-images.sh once the images are built).

The services `postgres` and `proxy` are started from docker-compose.yml
itself: its images, environment (with `${VAR:-default}` as compose reads
it), ports, named volumes, healthcheck and `depends_on` conditions, on a
network of their own where each is found by its service name. Host ports
are free ones picked here instead of 5432 and 8080.

Then, end to end:
- the host's CA certificates of its own (given to the builds as a secret)
  are in neither image;
- the extension is installed and wal_level is logical;
- the proxy runs as its own user and its image's healthcheck passes;
- /healthz, the demo page and the JS client module are served;
- a websocket client with the query syntax receives an insert, and only
  the rows its filter matches;
- a durable stream: init, a snapshot page, the stream, an ACK;
- PostgreSQL's container removed and run again on the same volume, the
  proxy stopped and started: the data is kept, the initialisation does not
  run again, the durable stream resumes from its slot after the last ACK
  (given with `acked=`, as the clients do), and live clients get changes
  again.

Everything it started is removed at the end, whatever happened.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml
from websockets.sync.client import connect

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROJECT = "walcast-images-test"
TIMEOUT = 120


def log(message):
    print(f"[test-images] {message}", file=sys.stderr, flush=True)


def podman(*args, check=True):
    done = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(
            f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interpolate(value, env):
    """Compose's variable syntax: $$, ${VAR}, ${VAR:-default}, ${VAR-default}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        if op == ":-" and not got:
            return default
        if op == "-" and got is None:
            return default
        return got or ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-)([^}]*))?\}", one, value)


def until(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # the thing waited for is not up yet
            last = e
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout} s waiting for {what} (last error: {last})")


class Service:
    def __init__(self, name, spec, project):
        self.name = name
        self.spec = spec
        self.project = project
        self.container = f"{project.name}-{name}"
        self.ports = {}

    def run(self):
        spec = self.spec
        args = ["run", "-d", "--pull=never", "--name", self.container,
                "--network", self.project.name, "--network-alias", self.name]
        for key, value in (spec.get("environment") or {}).items():
            args += ["-e", f"{key}={value}"]
        for port in spec.get("ports") or []:
            parts = str(port).split(":")
            container_port = parts[-1]
            host_port = self.project.host_ports.setdefault(
                (self.name, container_port), free_port())
            self.ports[int(container_port)] = host_port
            args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
        for volume in spec.get("volumes") or []:
            source, target = volume.split(":", 2)[:2]
            mode = volume.split(":")[2] if volume.count(":") == 2 else "rw"
            if source.startswith("."):
                source = os.path.abspath(os.path.join(ROOT, source))
            else:
                source = f"{self.project.name}_{source}"
            args += ["-v", f"{source}:{target}:{mode}"]
        check = spec.get("healthcheck")
        if check:
            test = check["test"]
            if test[0] == "CMD-SHELL":
                args += ["--health-cmd", test[1]]
            else:
                args += ["--health-cmd", json.dumps(test[1:])]
            for key in ("interval", "timeout", "retries", "start_period"):
                if key in check:
                    flag = {"start_period": "start-period"}.get(key, key)
                    args += [f"--health-{flag}", str(check[key])]
        if spec.get("restart"):
            args += ["--restart", spec["restart"]]
        if spec.get("user"):
            args += ["--user", spec["user"]]
        if spec.get("entrypoint"):
            args += ["--entrypoint", json.dumps(spec["entrypoint"])]
        args.append(spec["image"])
        command = spec.get("command")
        if command:
            args += command if isinstance(command, list) else command.split()
        podman(*args)

    def healthy(self):
        return podman("healthcheck", "run", self.container, check=False).returncode == 0

    def wait_healthy(self):
        until(f"{self.name} to be healthy", self.healthy)

    def exec(self, *command):
        return podman("exec", self.container, *command).stdout

    def logs(self):
        done = podman("logs", self.container, check=False)
        return done.stdout + done.stderr


class Project:
    def __init__(self, compose_file, services):
        self.name = PROJECT
        env = dict(os.environ)
        self.compose = interpolate(yaml.safe_load(open(compose_file)), env)
        self.host_ports = {}
        self.services = {n: Service(n, self.compose["services"][n], self) for n in services}

    def remove(self):
        for service in self.services.values():
            podman("rm", "-f", "-t", "5", service.container, check=False)
        for volume in self.compose.get("volumes") or {}:
            podman("volume", "rm", "-f", f"{self.name}_{volume}", check=False)
        podman("network", "rm", "-f", self.name, check=False)

    def up(self, name):
        """Starts a service once what it depends on is in the state compose waits for."""
        service = self.services[name]
        for dep, cond in (service.spec.get("depends_on") or {}).items():
            if cond.get("condition") == "service_healthy":
                self.services[dep].wait_healthy()
        service.run()
        return service


def http(port, path, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    if body is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def expect(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def frames(ws, n):
    got = []
    for _ in range(n):
        got.append(json.loads(ws.recv(timeout=30)))
    return got


def transaction(ws):
    """The frames of the next whole transaction, B to C."""
    got = [json.loads(ws.recv(timeout=30))]
    expect(got[0].get("action") == "B", f"a transaction starts with B: {got[0]}")
    while got[-1].get("action") != "C":
        got.append(json.loads(ws.recv(timeout=30)))
    return got


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-major", default="15")
    opts = parser.parse_args()
    os.environ["PG_MAJOR"] = opts.pg_major
    os.environ.setdefault("POSTGRES_PASSWORD", "walcast")
    os.environ["WALCAST_PG_PORT"] = str(free_port())
    project = Project(os.path.join(ROOT, "docker-compose.yml"), ["postgres", "proxy"])
    project.remove()
    podman("network", "create", project.name)
    try:
        check(project)
    finally:
        project.remove()
    log("all checks passed")


PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def certificates(text):
    return {"".join(b.split()) for b in PEM.findall(text)}


def host_only_certificates():
    """The host's CA certificates that Debian's ca-certificates does not
    carry (a proxy's that re-signs HTTPS): the builds get them as a secret."""
    try:
        host = certificates(open("/etc/ssl/certs/ca-certificates.crt").read())
    except OSError:
        return set()
    debian = set()
    for root, _, files in os.walk("/usr/share/ca-certificates"):
        for f in files:
            debian |= certificates(open(os.path.join(root, f)).read())
    return host - debian


def check_no_host_ca(images):
    extra = host_only_certificates()
    for image in images:
        done = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                      "cat /etc/ssl/certs/*.crt /etc/ssl/certs/*.pem 2>/dev/null || true")
        leaked = extra & certificates(done.stdout)
        expect(not leaked, f"{image} holds {len(leaked)} of the host's own CA certificates")
    log(f"the host's {len(extra)} CA certificate(s) of its own are in no image "
        f"({', '.join(images)})")


def check(project):
    check_no_host_ca([project.services[n].spec["image"] for n in ("postgres", "proxy")])
    pg = project.up("postgres")
    pg.wait_healthy()
    psql = ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "app", "-c"]
    version = pg.exec(*psql, "SELECT extversion FROM pg_extension WHERE extname = 'walcast'").strip()
    expect(version, "CREATE EXTENSION walcast ran in POSTGRES_DB")
    expect(pg.exec(*psql, "SHOW wal_level").strip() == "logical", "wal_level = logical")
    log(f"postgres: extension walcast {version}, wal_level = logical")
    pg.exec(*psql, "CREATE TABLE users (id int PRIMARY KEY, name text, age int)")

    proxy = project.up("proxy")
    port = proxy.ports[8080]
    user = proxy.exec("id", "-u").strip()
    expect(user == "10001", f"the proxy runs as uid 10001, not {user}")
    until("the proxy image's healthcheck to pass", proxy.healthy)
    status, body = http(port, "/healthz")
    expect(status == 200, f"/healthz answers 200: {status} {body}")
    status, body = http(port, "/")
    expect(status == 200 and "<html" in body.lower(), f"the demo page is served: {status}")
    status, body = http(port, "/client/index.js")
    expect(status == 200 and "export" in body, f"the JS client module is served: {status}")
    log(f"proxy: uid {user}, healthy, /healthz, / and /client/index.js served on {port}")

    ws_base = f"ws://127.0.0.1:{port}"
    with connect(f"{ws_base}/ws?query=insert:users:age.gt.30", open_timeout=10) as live:
        time.sleep(0.5)
        pg.exec(*psql, "INSERT INTO users VALUES (1, 'ann', 20), (2, 'bob', 40)")
        got = frames(live, 1)[0]
        expect(got.get("action") == "I" and got["columns"]["id"] == 2,
               f"the live client gets the matching insert only: {got}")
    log("live: insert:users:age.gt.30 received the one matching insert")

    status, body = http(port, "/v1/init?name=images")
    expect(status == 200, f"/v1/init answers 200: {status} {body}")
    slot = json.loads(body)["slotName"]
    pg.exec(*psql, "INSERT INTO users VALUES (3, 'cy', 33)")
    status, body = http(port, "/v1/snapshot/data",
                        json.dumps({"slotName": slot, "table": "users"}).encode())
    ids = sorted(r["id"] for r in json.loads(body)) if status == 200 else body
    expect(ids == [1, 2], f"the snapshot page holds the rows before init: {status} {ids}")
    stream_url = f"{ws_base}/v1/lr/stream?slotName={slot}"
    with connect(stream_url, open_timeout=10) as durable:
        tx = transaction(durable)
        expect([f["columns"]["id"] for f in tx if f["action"] == "I"] == [3],
               f"the stream starts after the snapshot: {tx}")
        durable.send(json.dumps({"lsn": tx[-1]["end_lsn"], "reply": True}))
        answer = json.loads(durable.recv(timeout=30))
        expect(answer == {"ack": tx[-1]["end_lsn"]}, f"the ACK is confirmed: {answer}")
        acked = tx[-1]["end_lsn"]
        pg.exec(*psql, "INSERT INTO users VALUES (4, 'dee', 44)")
        tx = transaction(durable)
        expect([f["columns"]["id"] for f in tx if f["action"] == "I"] == [4],
               f"the stream goes on: {tx}")
    log(f"durable: {slot}: snapshot page, stream, ACK")

    # The database's container removed and made again on its volume; the
    # proxy stopped and started.
    podman("stop", "-t", "10", proxy.container)
    podman("rm", "-f", "-t", "10", pg.container)
    pg = project.up("postgres")
    pg.wait_healthy()
    podman("start", proxy.container)
    until("the proxy to be healthy again", lambda: http(port, "/healthz")[0] == 200)
    logs = pg.logs()
    expect("docker-entrypoint-initdb.d" not in logs,
           f"the initialisation does not run again on a used volume: {logs}")
    count = pg.exec(*psql, "SELECT count(*) FROM users").strip()
    expect(count == "4", f"the rows are kept on the volume: {count}")
    pg.exec(*psql, "INSERT INTO users VALUES (5, 'eve', 55)")
    # With the last ACK, as the clients in clients/ reconnect: PostgreSQL 15
    # and 16 may not have written the slot's confirmed position before the
    # shutdown (docs/streams.md).
    with connect(f"{stream_url}&acked={acked}", open_timeout=10) as durable:
        first, second = transaction(durable), transaction(durable)
        ids = [f["columns"]["id"] for f in first + second if f["action"] == "I"]
        expect(ids == [4, 5], f"the stream resumes after the last ACK: {ids}")
    with connect(f"{ws_base}/ws?query=insert:users", open_timeout=10) as live:
        time.sleep(0.5)
        pg.exec(*psql, "INSERT INTO users VALUES (6, 'fay', 66)")
        got = frames(live, 1)[0]
        expect(got["columns"]["id"] == 6, f"live clients get changes after the restart: {got}")
    log("restart: data kept, no second initialisation, the stream resumed after its ACK")


if __name__ == "__main__":
    main()
