#!/usr/bin/env python3
"""Held-out evaluation of flowguard in front of a third-party API: VAmPI.

One command:

    python3 eval/vampi.py --wasm target/flowguard.wasm

starts VAmPI (https://github.com/erev0s/VAmPI, fetched, never committed) on 127.0.0.1, a
real Envoy 1.40 (`.venv/bin/envoy`) with the given flowguard build in front of it in
`enforce` with the README's defaults, plays a learning sample of normal customers, then
customers it never learned from, then attacks, and writes
`eval/results/<date>-<git short sha>.md` and `.json`. Python 3.11 standard library only;
VAmPI's own requirements go into a throwaway venv outside the repository.

See eval/README.md for what is measured and why.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

VAMPI_URL = "https://github.com/erev0s/VAmPI"
# The commit this evaluation was written against (2024-11-25, "custom generic error").
VAMPI_COMMIT = "1713b54b601ad29582581eeda4b31fceb1319874"

# Envoy takes the client address from this header (custom-header original IP detection),
# as the integration harness does (integration/src/envoy.rs, `client_ip_header`).
CLIENT_IP = "x-client-ip"
EVAL_ID = "x-eval-id"

# flowguard's configuration: its defaults (README "Configuration"), mode enforce, no
# policy: learn first, then enforce. Session sources default to
# [{"cookie":"session"}, "bearer", "address"].
DEFAULT_CONFIG = {"mode": "enforce"}
# What an operator who read the README would add for this API (the lending library's
# settings, integration/src/library_traffic.rs): how VAmPI says "failed" in a 200, and
# where its login answer hands out the token. Run with --profile tuned.
TUNED_CONFIG = {
    "mode": "enforce",
    "session": {"handover": {"json_field": "auth_token", "templates": ["POST /users/v1/login"]}},
    "endpoints": {"failure": {"json": {"status": ["fail"]}, "auth": ["POST /users/v1/login"]}},
}

NAT_ADDRESSES = ["100.64.7.10", "100.64.7.11", "100.64.7.12"]

FIRST = ["amelia", "bruno", "chiara", "dmitri", "elena", "farid", "greta", "hugo", "ines",
         "jonas", "kaito", "lena", "mateo", "nora", "oskar", "priya", "quentin", "rosa",
         "samir", "tove", "ugo", "vera", "wen", "yusuf", "zofia"]
LAST = ["brook", "castell", "dunmore", "everly", "fairweather", "garrow", "holm", "iverson",
        "jansen", "kowal", "lindqvist", "moreau", "novak", "okafor", "pereira", "quill",
        "rahman", "silva", "tanaka", "urquhart", "varga", "weiss"]
TITLES = ["Dune", "Middlemarch", "The Left Hand of Darkness", "Beloved", "Solaris",
          "Pedro Paramo", "The Master and Margarita", "Kindred", "Stoner", "Ficciones",
          "The Remains of the Day", "Things Fall Apart", "Invisible Cities", "Austerlitz",
          "The Dispossessed", "Persuasion", "Hyperion", "Blindness", "Lolly Willowes",
          "The Glass Bead Game"]
DOMAINS = ["mail.example", "post.example", "inbox.example", "example.org"]


# ------------------------------------------------------------------------------ helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def template(method: str, path: str) -> str:
    """The VAmPI route a request hits (its OpenAPI paths), for reporting only."""
    p = urllib.parse.urlsplit(path).path.rstrip("/") or "/"
    s = p.strip("/").split("/")
    if len(s) >= 2 and s[:2] == ["users", "v1"]:
        if len(s) == 2:
            return f"{method} /users/v1"
        if len(s) == 3:
            if s[2] in ("_debug", "register", "login"):
                return f"{method} {p}"
            return f"{method} /users/v1/{{username}}"
        if len(s) == 4 and s[3] in ("email", "password"):
            return f"{method} /users/v1/{{username}}/{s[3]}"
    if len(s) >= 2 and s[:2] == ["books", "v1"]:
        if len(s) == 2:
            return f"{method} /books/v1"
        if len(s) == 3:
            return f"{method} /books/v1/{{book_title}}"
    return f"{method} {p}"


# ------------------------------------------------------------------------------ VAmPI

def prepare_vampi(src: str | None, dest: str) -> str:
    """A fresh copy of VAmPI's tree in `dest` (its SQLite file lives there); its commit."""
    cache = os.path.join(HERE, ".vampi")
    if not src:
        src = os.environ.get("VAMPI_SRC") or cache
    if not os.path.exists(src):
        log(f"cloning {VAMPI_URL} into {src} (git-ignored)")
        subprocess.run(["git", "clone", "--quiet", VAMPI_URL, src], check=True)
    os.makedirs(dest, exist_ok=True)
    if os.path.exists(os.path.join(src, "app.py")):  # a checked-out tree
        shutil.copytree(src, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "database.db"))
        commit = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown (not a git checkout)"
        return commit
    # A git directory without a work tree (`fetch`, a bare clone): the pinned commit if
    # present, else its HEAD.
    gd = ["git", "--git-dir", src]
    rev = VAMPI_COMMIT
    if subprocess.run(gd + ["cat-file", "-e", rev + "^{commit}"], capture_output=True).returncode:
        rev = "HEAD"
    commit = subprocess.run(gd + ["rev-parse", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(gd + ["archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return commit


def ensure_venv(venv: str, vampi_dir: str) -> str:
    py = os.path.join(venv, "bin", "python")
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", "import connexion, flask_sqlalchemy, jwt, jsonschema"],
        capture_output=True).returncode == 0
    if not ok:
        log(f"creating VAmPI's venv in {venv} (pip install -r requirements.txt)")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "-r",
                        os.path.join(vampi_dir, "requirements.txt")], check=True)
    return py


# VAmPI's app.py runs itself on 0.0.0.0:5000 with debug on; this runs the same module as
# __main__ (its imports are circular otherwise) on a loopback port, debug off.
LAUNCHER = """
import os, runpy, connexion
run = connexion.App.run
connexion.App.run = lambda self, *a, **k: run(self, host="127.0.0.1",
    port=int(os.environ["EVAL_PORT"]), debug=False, threaded=True)
runpy.run_path("app.py", run_name="__main__")
"""


class Proc:
    """A child process this harness started, in its own process group."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict, logfile: str):
        self.name = name
        self.logf = open(logfile, "wb")
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=self.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.logf.close()


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_until(what: str, fn, timeout: float = 30.0, procs: list[Proc] = ()):
    end = time.time() + timeout
    while time.time() < end:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited while waiting for {what}")
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start_vampi(py: str, vampi_dir: str, run_dir: str) -> tuple[Proc, int]:
    port = free_port()
    env = dict(os.environ, EVAL_PORT=str(port), vulnerable="1",
               # VAmPI's default token life is 60 s; 600 s keeps a slow machine's attack
               # phases from turning into expired-token 401s.
               tokentimetolive="600")
    p = Proc("VAmPI", [py, "-c", LAUNCHER], vampi_dir, env, os.path.join(run_dir, "vampi.log"))
    try:
        wait_until("VAmPI", lambda: http_get(port, "/")[0] == 200, 30, [p])
        create_db(port)
    except BaseException:
        p.stop()
        raise
    return p, port


def create_db(port: int) -> None:
    # /createdb gives its three users a book "bookTitle<random 0-99>" each; a repeated
    # number breaks the titles' unique constraint (500, about 3 % of runs): ask again.
    for _ in range(5):
        status, body = http_get(port, "/createdb", 10)
        if status == 200:
            break
    if status != 200:
        raise RuntimeError(f"VAmPI /createdb answered {status}: {body!r}")


# ------------------------------------------------------------------------------ Envoy

def envoy_yaml(wasm: str, upstream_port: int, config: dict, access_log: str) -> str:
    # As integration/src/envoy.rs `bootstrap_yaml`: loopback listener and admin, path
    # normalisation, custom-header client address, retry on upstream reset, flowguard
    # then the router; plus a JSON access log with the verdict flowguard forwards.
    cfg = json.dumps(json.dumps(config))
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {json.dumps(access_log)}
              log_format:
                json_format:
                  eid: "%REQ({EVAL_ID.upper()})%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  status: "%RESPONSE_CODE%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  verdict: "%REQ(X-FLOWGUARD-VERDICT)%"
                  session: "%REQ(X-FLOWGUARD-SESSION)%"
                  client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
          normalize_path: true
          merge_slashes: true
          original_ip_detection_extensions:
          - name: envoy.http.original_ip_detection.custom_header
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig
              header_name: {CLIENT_IP}
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, retry_policy: {{ retry_on: reset, num_retries: 2 }} }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: flowguard
                root_id: flowguard
                failure_policy: FAIL_CLOSED
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {cfg}
                vm_config:
                  vm_id: flowguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {json.dumps(wasm)} }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"""


class Envoy:
    def __init__(self, binary: str, wasm: str, upstream_port: int, config: dict, run_dir: str,
                 concurrency: int):
        self.dir = run_dir
        self.access_log = os.path.join(run_dir, "access.log")
        self.log_path = os.path.join(run_dir, "envoy.log")
        yaml = os.path.join(run_dir, "envoy.yaml")
        with open(yaml, "w") as f:
            f.write(envoy_yaml(wasm, upstream_port, config, self.access_log))
        admin_file = os.path.join(run_dir, "admin.address")
        self.proc = Proc("Envoy", [binary, "-c", yaml, "--concurrency", str(concurrency),
                                   "--disable-hot-restart", "--admin-address-path", admin_file,
                                   "--log-path", self.log_path, "-l", "info",
                                   "--file-flush-interval-msec", "100"],
                         run_dir, dict(os.environ), os.path.join(run_dir, "envoy.stdout"))

        def admin():
            a = open(admin_file).read().strip() if os.path.exists(admin_file) else ""
            return a or None
        try:
            self.admin_port = int(wait_until("Envoy admin", admin, 30, [self.proc]).rsplit(":", 1)[1])
            wait_until("Envoy /ready", lambda: self.admin("/ready")[0] == 200, 30, [self.proc])
        except BaseException as e:
            self.proc.stop()
            raise RuntimeError(f"{e}\n--- Envoy log ---\n{self.log()[-4000:]}") from None
        listeners = json.loads(self.admin("/listeners?format=json")[1])
        self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]

    def admin(self, path: str) -> tuple[int, bytes]:
        return http_get(self.admin_port, path, 5)

    def stats(self) -> dict[str, int]:
        body = self.admin("/stats?filter=^wasmcustom\\.flowguard\\.")[1].decode()
        out = {}
        for line in body.splitlines():
            name, _, v = line.partition(": ")
            try:
                out[name.removeprefix("wasmcustom.")] = int(v)
            except ValueError:
                pass
        return out

    def settled_stats(self) -> dict[str, int]:
        """Counters once every worker has reported on its tick (`learning.tick_ms`, 1 s)."""
        time.sleep(2.5)
        return self.stats()

    def log(self) -> str:
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""

    def policies(self) -> list[dict]:
        """Every policy the filter logged as learned, oldest first."""
        out = []
        for line in self.log().splitlines():
            if "flowguard: learned policy version" in line and "requests: " in line:
                try:
                    out.append(json.loads(line[line.index("requests: ") + len("requests: "):]))
                except ValueError:
                    pass
        return out


# ------------------------------------------------------------------------------ clients

class Reply:
    __slots__ = ("status", "body", "blocked")

    def __init__(self, status: int, body: bytes):
        self.status = status
        self.body = body
        # flowguard's own refusal: a local reply with its JSON body (README).
        self.blocked = status in (403, 429) and b"request blocked" in body

    def json(self) -> dict:
        try:
            v = json.loads(self.body)
            return v if isinstance(v, dict) else {}
        except ValueError:
            return {}


_local = threading.local()


def connection(port: int) -> http.client.HTTPConnection:
    c = getattr(_local, "conn", None)
    if c is None or getattr(_local, "port", None) != port:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        _local.conn, _local.port = c, port
    return c


def send(port: int, method: str, path: str, headers: dict, body: dict | None) -> Reply:
    data = None
    headers = dict(headers)
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    for attempt in range(3):
        c = connection(port)
        try:
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            return Reply(r.status, r.read())
        except (http.client.HTTPException, OSError):
            c.close()
            _local.conn = None
            if attempt == 2:
                return Reply(0, b"")
            time.sleep(0.05)
    return Reply(0, b"")


class Client:
    """One customer or attacker: a client address, a token once logged in, every call."""

    def __init__(self, port: int, phase: str, idx: int, addr: str, rng: random.Random,
                 think_ms: float):
        self.port, self.phase, self.idx, self.addr = port, phase, idx, addr
        self.rng, self.think_ms = rng, think_ms
        self.token: str | None = None
        self.calls: list[dict] = []

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Reply:
        if self.think_ms and self.calls:
            time.sleep(self.rng.uniform(0, self.think_ms) / 1000)
        eid = f"{self.phase}/{self.idx}/{len(self.calls)}"
        headers = {CLIENT_IP: self.addr, EVAL_ID: eid}
        if auth and self.token:
            headers["authorization"] = f"Bearer {self.token}"
        r = send(self.port, method, path, headers, body)
        self.calls.append({"eid": eid, "method": method, "path": path,
                           "endpoint": template(method, path), "status": r.status,
                           "blocked": r.blocked, "token": bool(auth and self.token)})
        return r

    def register(self, name: str, password: str, email: str) -> Reply:
        return self.call("POST", "/users/v1/register",
                         {"username": name, "password": password, "email": email})

    def login(self, name: str, password: str) -> Reply:
        r = self.call("POST", "/users/v1/login", {"username": name, "password": password},
                      auth=False)
        t = r.json().get("auth_token")
        if isinstance(t, str) and t:
            self.token = t
        return r


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class Account:
    def __init__(self, name: str, password: str, email: str, books: list[str]):
        self.name, self.password, self.email, self.books = name, password, email, books


def typo(password: str, rng: random.Random) -> str:
    i = rng.randrange(len(password))
    return password[:i] + rng.choice("qwertyuiop") + password[i + 1:]


def normal_visit(c: Client, rng: random.Random, name: str, pool: list[Account]) -> None:
    """One customer's visit, as VAmPI's front end would drive it.

    A returning customer (40 %, an existing account) logs in; a new one registers first.
    30 % look at the public catalogue before logging in; 12 % mistype the password once.
    Then, in a random order, each optional: the catalogue (60 %), their own user record
    (45 %), /me (30 %), add a book (50 %; 70 % of those then read its secret back, some
    after another look at the catalogue), a returning customer reads the secret of a book
    they added on an earlier visit (40 %), a new e-mail (20 %; one in ten first types an
    invalid address and corrects it), a new password (new customers, 7 %).
    """
    if rng.random() < 0.3:
        c.call("GET", "/books/v1")
    returning = rng.random() < 0.4
    if returning:
        acct = pool[rng.randrange(len(pool))]
    else:
        first, last = name.split("_")[:2]
        acct = Account(name, f"{first.capitalize()}-{rng.randrange(1000, 9999)}!",
                       f"{first}.{last}{rng.randrange(100)}@{rng.choice(DOMAINS)}", [])
        c.register(acct.name, acct.password, acct.email)
    if rng.random() < 0.12:
        c.login(acct.name, typo(acct.password, rng))
        c.token = None
    c.login(acct.name, acct.password)
    if not c.token:
        return
    actions = []
    if rng.random() < 0.6:
        actions.append("catalogue")
    if rng.random() < 0.45:
        actions.append("profile")
    if rng.random() < 0.3:
        actions.append("me")
    if rng.random() < 0.5:
        actions.append("add_book")
    if returning and acct.books and rng.random() < 0.4:
        actions.append("read_old_book")
    if rng.random() < 0.2:
        actions.append("email")
    if not returning and rng.random() < 0.07:
        actions.append("password")
    rng.shuffle(actions)
    me = quote(acct.name)
    for a in actions:
        if a == "catalogue":
            c.call("GET", "/books/v1")
        elif a == "profile":
            c.call("GET", f"/users/v1/{me}")
        elif a == "me":
            c.call("GET", "/me")
        elif a == "add_book":
            title = f"{rng.choice(TITLES)} ({acct.name} {rng.randrange(1, 10**6)})"
            r = c.call("POST", "/books/v1", {"book_title": title,
                                              "secret": f"notes on {title.split(' (')[0]}"})
            if r.status == 200 and rng.random() < 0.7:
                if rng.random() < 0.3:
                    c.call("GET", "/books/v1")
                c.call("GET", f"/books/v1/{quote(title)}")
        elif a == "read_old_book":
            c.call("GET", f"/books/v1/{quote(rng.choice(acct.books))}")
        elif a == "email":
            first = acct.name.split("_")[0]
            if rng.random() < 0.1:
                c.call("PUT", f"/users/v1/{me}/email", {"email": f"{first}@{rng.choice(DOMAINS)}".split(".")[0]})
            c.call("PUT", f"/users/v1/{me}/email",
                   {"email": f"{first}.{rng.randrange(1000)}@{rng.choice(DOMAINS)}"})
        elif a == "password":
            c.call("PUT", f"/users/v1/{me}/password",
                   {"password": f"{acct.password}{rng.randrange(10)}"})


def unique_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        name = (f"{rng.choice(FIRST)}_{rng.choice(LAST)}_"
                + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)))
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def seed_accounts(vampi_port: int, names: list[str], rng: random.Random) -> list[Account]:
    """Existing customers, created directly on VAmPI (not through Envoy): each has an
    account and one book from an earlier visit."""
    accounts = []
    for name in names:
        first, last = name.split("_")[:2]
        acct = Account(name, f"{first.capitalize()}-{rng.randrange(1000, 9999)}!",
                       f"{first}.{last}@{rng.choice(DOMAINS)}", [])
        hdr = {}
        send(vampi_port, "POST", "/users/v1/register", hdr,
             {"username": acct.name, "password": acct.password, "email": acct.email})
        tok = send(vampi_port, "POST", "/users/v1/login", hdr,
                   {"username": acct.name, "password": acct.password}).json().get("auth_token")
        title = f"{rng.choice(TITLES)} ({name} {rng.randrange(1, 10**6)})"
        r = send(vampi_port, "POST", "/books/v1", {"authorization": f"Bearer {tok}"},
                 {"book_title": title, "secret": f"notes on {title.split(' (')[0]}"})
        if r.status == 200:
            acct.books.append(title)
        accounts.append(acct)
    _local.conn = None
    return accounts


def play_customers(port: int, phase: str, n: int, seed: int, pool: list[Account],
                   names: list[str], workers: int, think_ms: float, addr_base: int,
                   offset: int = 0, progress=None) -> list[dict]:
    """Customers `offset`..`offset + n` of a phase, a fifth of them (every fifth) behind
    the three NAT addresses."""
    results: list[dict | None] = [None] * n
    done = [0]
    lock = threading.Lock()

    def one(k: int) -> None:
        i = offset + k
        rng = random.Random(f"{seed}:{phase}:{i}")
        nat = i % 5 == 0
        j = addr_base + i
        addr = NAT_ADDRESSES[(i // 5) % 3] if nat else f"10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"
        c = Client(port, phase, i, addr, rng, think_ms)
        normal_visit(c, rng, names[k], pool)
        results[k] = {"phase": phase, "idx": i, "nat": nat, "addr": addr, "calls": c.calls}
        with lock:
            done[0] += 1
            if progress and done[0] % 100 == 0:
                progress(done[0])

    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(one, range(n)))
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------ attacks

def attacks(port: int, envoy: Envoy, seed: int, pools: list[Account], known_names: list[str],
            run_attack) -> None:
    rng = random.Random(f"{seed}:attacks")
    n = [0]

    def attacker() -> Client:
        n[0] += 1
        return Client(port, "A", n[0], f"198.51.100.{n[0]}", rng, 0)

    def own_account(c: Client) -> Account:
        name = unique_names(rng, 1, set(known_names))[0]
        acct = Account(name, "Passw0rd!", f"{name}@mail.example", [])
        c.register(acct.name, acct.password, acct.email)
        c.login(acct.name, acct.password)
        return acct

    victim = pools[0]

    def brute_force():
        c = attacker()
        guesses = [f"{w}{k}" for w in ("password", "letmein", "qwerty", "dragon", "monkey",
                                       "sunshine", "iloveyou", "princess")
                   for k in range(50)]
        guesses[349] = victim.password  # the right one is 350th: does the attacker get in?
        decisive = []
        cracked = False
        for g in guesses[:400]:
            r = c.login(victim.name, g)
            decisive.append(c.calls[-1])
            cracked = cracked or (r.status == 200 and "auth_token" in r.json())
        return c, decisive, {"victim": victim.name, "token obtained": cracked}

    def brute_force_warmed():
        # The same brute force from an address that first carries identified sessions:
        # the attacker registers throwaway accounts and logs each in (one token call
        # each), in rounds of one 10 s window that double while nothing is blocked. A
        # per-address anonymous limit scaled by the sessions an address carries (a NAT's
        # allowance) would grow with them.
        c = attacker()
        warm, per_round, rounds_blocked = 0, 8, 0
        for rnd in range(5):
            t_end = time.time() + 10.5
            blocked_before = sum(x["blocked"] for x in c.calls)
            for _ in range(per_round):
                nm = f"{rng.choice(FIRST)}_{rng.choice(LAST)}_w{rnd}{warm}"
                c.register(nm, "Passw0rd!", f"{nm}@mail.example")
                c.login(nm, "Passw0rd!")
                if c.token:
                    c.call("GET", "/books/v1")
                    warm += 1
                c.token = None
            if sum(x["blocked"] for x in c.calls) > blocked_before:
                rounds_blocked += 1
                per_round = max(4, per_round // 2)
            else:
                per_round *= 2
            time.sleep(max(0.0, t_end - time.time()))
        k = len(c.calls)
        guesses = [f"{w}{i}" for w in ("password", "letmein", "qwerty", "dragon", "monkey",
                                       "sunshine", "iloveyou", "princess") for i in range(50)]
        guesses[349] = victim.password
        cracked = False
        for g in guesses[:400]:
            r = c.login(victim.name, g)
            cracked = cracked or (r.status == 200 and "auth_token" in r.json())
        return c, c.calls[k:], {"victim": victim.name, "token obtained": cracked,
                                "sessions carried first": warm,
                                "warm-up requests blocked": sum(x["blocked"] for x in c.calls[:k])}

    def registration_flood():
        c = attacker()
        names = [f"bot{k:04d}x{rng.randrange(10**6)}" for k in range(300)]
        for nm in names:
            c.register(nm, "x", f"{nm}@bots.example")
        return c, list(c.calls), {}

    walk = known_names[:200] + [f"{rng.choice(FIRST)}{k}" for k in range(100)]

    def enum_anonymous():
        c = attacker()
        for nm in walk:
            c.call("GET", f"/users/v1/{quote(nm)}")
        return c, list(c.calls), {"names": len(walk)}

    def enum_token():
        c = attacker()
        own_account(c)
        k = len(c.calls)
        for nm in walk:
            c.call("GET", f"/users/v1/{quote(nm)}")
        return c, c.calls[k:], {"names": len(walk)}

    def scrape_books():
        c = attacker()
        own_account(c)
        r = c.call("GET", "/books/v1")
        titles = [b.get("book_title") for b in r.json().get("Books", []) if isinstance(b, dict)]
        rng.shuffle(titles)
        k = len(c.calls)
        for t in titles[:300]:
            c.call("GET", f"/books/v1/{quote(t)}")
        return c, c.calls[k:], {"titles in catalogue": len(titles)}

    def flood():
        c = attacker()
        own_account(c)
        k = len(c.calls)
        for _ in range(300):
            c.call("GET", "/books/v1")
        return c, c.calls[k:], {}

    def shadow():
        c = attacker()
        c.call("GET", "/users/v1/_debug")          # anonymous
        own_account(c)
        k = len(c.calls)
        c.call("GET", "/users/v1/_debug")          # VAmPI's real debug dump (passwords)
        c.call("GET", "/users/v1")                 # VAmPI's real list of every user
        c.call("GET", "/admin/export")             # not served by VAmPI at all (404)
        c.call("DELETE", f"/users/v1/{quote(victim.name)}")  # admin-only, never used
        return c, [c.calls[0]] + c.calls[k:], {}

    def step_skip():
        # VAmPI's BOLA: GET /books/v1/{title} returns any book's secret to any token.
        # In normal use a customer reads a secret back after adding a book in the same
        # visit, or a book of their own from an earlier visit. The skip: fresh sessions
        # whose first token call reads another customer's secret; five from one address
        # (the mid-flow allowance is 3 per address), then one that looks at the catalogue
        # first (not a mid-flow join).
        target = [a for a in pools if a.books][1]
        decisive = []
        addr = None
        for k in range(6):
            c = attacker() if addr is None else Client(port, "A", n[0] * 100 + k, addr, rng, 0)
            addr = c.addr
            own_account(c)
            if k == 5:
                c.call("GET", "/books/v1")
            c.call("GET", f"/books/v1/{quote(target.books[0])}")
            decisive.append(c.calls[-1])
            if k < 5:
                all_calls.extend(c.calls)
        return c, decisive, {"victim book owner": target.name}

    def takeover():
        # VAmPI's other BOLA: any token may set any user's password.
        c = attacker()
        own_account(c)
        c.call("PUT", f"/users/v1/{quote(pools[2].name)}/password", {"password": "pwned"})
        return c, [c.calls[-1]], {"victim": pools[2].name}

    all_calls: list[dict] = []
    for name, fn in [
        ("shadow endpoints (_debug, /users/v1, /admin/export, DELETE user)", shadow),
        ("step skip: read another customer's book secret, fresh session", step_skip),
        ("account takeover: PUT another user's password", takeover),
        ("user enumeration, anonymous (300 names)", enum_anonymous),
        ("user enumeration, with a token (300 names)", enum_token),
        ("book scraping with a token (every title)", scrape_books),
        ("token holder floods GET /books/v1 (300)", flood),
        ("login brute force (400 passwords, one user, one address)", brute_force),
        ("registration flood (300 from one address)", registration_flood),
        ("login brute force from a warmed address (own logins first, then 400 passwords)",
         brute_force_warmed),
    ]:
        run_attack(name, fn, all_calls)


# ------------------------------------------------------------------------------ analysis

def read_access_log(path: str) -> dict[str, dict]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("eid") and e["eid"] != "-":
                    out[e["eid"]] = e
    except OSError:
        pass
    return out


def compact(c: dict) -> list:
    """A call as [eval id, endpoint, status, blocked, verdict] for the JSON."""
    return [c["eid"], c["endpoint"] + (" (token)" if c["token"] else ""), c["status"],
            c["blocked"], c.get("verdict")]


def flag_rules(verdict: str | None) -> list[str]:
    if not verdict or not verdict.startswith("flag"):
        return []
    _, _, rules = verdict.partition("rules=")
    return [r.strip() for r in rules.split(",") if r.strip()]


def annotate(calls: list[dict], access: dict[str, dict]) -> None:
    for c in calls:
        e = access.get(c["eid"], {})
        v = e.get("verdict")
        c["verdict"] = None if v in (None, "-") else v
        c["flags"] = flag_rules(c["verdict"])


def summarize_customers(customers: list[dict]) -> dict:
    def part(cs):
        calls = [c for cu in cs for c in cu["calls"]]
        anon = [c for c in calls if not c["token"]]
        return {
            "requests_anonymous": len(anon),
            "requests_anonymous_flagged": sum(bool(c["flags"]) for c in anon),
            "requests_token": len(calls) - len(anon),
            "requests_token_flagged": sum(bool(c["flags"]) for c in calls if c["token"]),
            "customers_flagged_on_token_requests": sum(
                any(c["flags"] and c["token"] for c in cu["calls"]) for cu in cs),
            "customers": len(cs),
            "customers_blocked": sum(any(c["blocked"] for c in cu["calls"]) for cu in cs),
            "customers_flagged": sum(any(c["flags"] for c in cu["calls"]) for cu in cs),
            "requests": len(calls),
            "requests_blocked": sum(c["blocked"] for c in calls),
            "requests_flagged": sum(bool(c["flags"]) for c in calls),
            "requests_without_verdict": sum(c["verdict"] is None and not c["blocked"] for c in calls),
            "upstream_errors": sum(c["status"] == 0 or c["status"] >= 500 for c in calls),
            "blocked_calls": [dict(c, addr=cu["addr"]) for cu in cs for c in cu["calls"] if c["blocked"]],
        }
    nat = [c for c in customers if c["nat"]]
    own = [c for c in customers if not c["nat"]]
    return {"all": part(customers), "nat": part(nat), "own_address": part(own)}


def flag_breakdown(customers: list[dict]) -> dict:
    """Flags by (rule, endpoint), split NAT / own address; and per endpoint totals."""
    table = collections.defaultdict(lambda: {"nat": 0, "own_address": 0})
    per_endpoint = collections.defaultdict(lambda: {"requests": 0, "flagged": 0, "blocked": 0})
    for cu in customers:
        for c in cu["calls"]:
            pe = per_endpoint[c["endpoint"] + (" (token)" if c["token"] else " (no token)")]
            pe["requests"] += 1
            pe["flagged"] += bool(c["flags"])
            pe["blocked"] += c["blocked"]
            for r in c["flags"]:
                table[(r, c["endpoint"])]["nat" if cu["nat"] else "own_address"] += 1
    return {"by_rule_endpoint": [{"rule": r, "endpoint": e, **v} for (r, e), v in
                                 sorted(table.items(), key=lambda kv: -sum(kv[1].values()))],
            "by_endpoint": dict(sorted(per_endpoint.items()))}


def delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)
            if after.get(k, 0) != before.get(k, 0) and (k.startswith("flowguard.rule.")
                                                       or k.startswith("flowguard.verdict.")
                                                       or k in ("flowguard.local_replies",
                                                                "flowguard.sessions.midflow",
                                                                "flowguard.sessions.handovers"))}


def policy_summary(policy: dict | None) -> list[dict]:
    if not policy:
        return []
    out = []
    for e in policy.get("endpoints", []):
        lim = lambda k: (e.get(k) or {}).get("limit")
        ev = e.get("evidence") or {}
        out.append({
            "template": e.get("template"),
            "sessions": e.get("sessions"),
            "prerequisites": e.get("prerequisites", []),
            "bound_prerequisites": e.get("bound_prerequisites", []),
            "flag_prerequisites": e.get("flag_prerequisites", []),
            "rate_limit": lim("rate"),
            "distinct_ids_limit": lim("distinct_ids"),
            "address_rate_limit": lim("address_rate"),
            "auth_failures": e.get("auth_failures"),
            "sensitive": bool(e.get("sensitive")),
            "evidence": ev.get("note") or (
                f"order evidence: {ev.get('sessions')} sessions (needs {ev.get('sessions_needed')}), "
                f"{ev.get('routes')} routes (needs {ev.get('routes_needed')})" if ev else ""),
        })
    return out


# ------------------------------------------------------------------------------ report

def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def pct(a: int, b: int) -> str:
    return f"{a} of {b} ({100.0 * a / b:.1f} %)" if b else "0 of 0"


def render(res: dict) -> tuple[str, str]:
    """(the summary table printed to stdout, the whole markdown report)."""
    h = res["held_out"]
    rows = []
    for key, label in (("all", "held-out customers, all"), ("own_address", "  own address"),
                       ("nat", "  behind 3 NAT addresses")):
        s = h[key]
        rows.append([label, s["customers"], pct(s["customers_blocked"], s["customers"]),
                     pct(s["customers_flagged"], s["customers"]),
                     pct(s["customers_flagged_on_token_requests"], s["customers"]),
                     s["requests"], s["requests_blocked"], pct(s["requests_flagged"], s["requests"]),
                     f'{s["requests_anonymous_flagged"]} of {s["requests_anonymous"]}',
                     f'{s["requests_token_flagged"]} of {s["requests_token"]}'])
    normal = md_table(["normal traffic (never learned from)", "customers", "with a block",
                       "with a flag", "with a flag after login (token)", "requests",
                       "requests blocked", "requests flagged", "of them anonymous (address-keyed)",
                       "of them with a token"], rows)
    arows = []
    for a in res["attacks"]:
        arows.append([a["name"], a["decisive_requests"], a["blocked"],
                      "**caught**" if a["caught"] else "passed",
                      a["first_blocked_at"] or "-", a["flagged"],
                      ", ".join(f"{k} x{v}" for k, v in a["rules"].items()) or "none",
                      "; ".join(f"{k}: {v}" for k, v in a["extra"].items())])
    attack = md_table(["attack", "decisive requests", "blocked", "verdict", "first block at #",
                       "flagged", "flowguard.rule.* during the attack", "notes"], arows)
    summary = normal + "\n\n" + attack

    info = res["run"]
    lines = [f"# flowguard in front of VAmPI: held-out evaluation, {info['date']}", "",
             "Generated by `eval/vampi.py` (see eval/README.md). Raw numbers: the JSON beside this file.", "",
             md_table(["", ""], [
                 ["build under test", f"`{info['label']}` (repository HEAD at the run: `{info['git_head']}`"
                  + (", with uncommitted changes in the working tree" if info["git_dirty"] else "")
                  + "; the wasm hash identifies the build)"],
                 ["wasm", f"`{info['wasm']}` sha256 `{info['wasm_sha256'][:16]}…`"],
                 ["Envoy", info["envoy_version"]],
                 ["VAmPI", f"{VAMPI_URL} @ `{info['vampi_commit'][:12]}` (vulnerable=1, tokentimetolive=600)"],
                 ["flowguard config", f"`{json.dumps(info['config'])}` (profile {info['profile']})"],
                 ["seed / workers / think time", f"{info['seed']} / {info['workers']} / 0-{info['think_ms']} ms"],
                 ["learning sample", f"{info['learn_customers']} customers ({info['learn_customers'] // 5} behind 3 NAT addresses), {res['learning_requests']} requests"],
                 ["held out", f"{info['held_out_customers']} customers ({info['held_out_customers'] // 5} behind the same 3 NAT addresses)"],
                 ["model", f"first published after {res['model']['published_after_customers']} learning customers; version {res['model']['version_at_held_out']} at held-out start, {res['model']['version_at_end']} at the end"],
                 ["wall time", f"{info['wall_s']:.0f} s"],
             ]), "", "## Summary", "", summary, "",
             "A customer is one visit: flowguard sees it as two sessions, the client address it registers and logs in "
             "from (a weak, address-keyed session under the default sources) and then its bearer token. "
             "*Blocked*: a 403/429 local reply with flowguard's body. *Flagged*: the request reached VAmPI with "
             "`x-flowguard-verdict: flag; rules=…` (read from Envoy's access log, `%REQ(X-FLOWGUARD-VERDICT)%`). "
             "*Decisive requests*: the attack's own calls (its register/login set-up excluded). *Caught*: at least one blocked.",
             "", "## Held-out flags by rule and endpoint", ""]
    fb = res["held_out_flags"]
    lines.append(md_table(["rule", "endpoint", "own-address customers", "NAT customers"],
                          [[r["rule"], f"`{r['endpoint']}`", r["own_address"], r["nat"]] for r in fb["by_rule_endpoint"]])
                 if fb["by_rule_endpoint"] else "No held-out request was flagged.")
    lines += ["", "## Held-out requests per endpoint", "",
              md_table(["endpoint", "requests", "flagged", "blocked"],
                       [[f"`{k}`", v["requests"], v["flagged"], v["blocked"]] for k, v in fb["by_endpoint"].items()])]
    blocked = h["all"]["blocked_calls"]
    if blocked:
        lines += ["", "## Held-out requests blocked", "",
                  md_table(["request", "endpoint", "status", "address"],
                           [[c["eid"], f"`{c['endpoint']}`", c["status"], c["addr"]] for c in blocked[:50]])]
    lrn = res["learning"]
    lines += ["", "## The learning sample, judged once a model existed", "",
              f"The model is published after {res['model']['published_after_customers']} customers; the rest of the "
              "learning sample is already judged (and keeps being learned from).", "",
              md_table(["", "sessions", "with a block", "with a flag", "requests flagged"],
                       [[k, lrn[k]["customers"], lrn[k]["customers_blocked"], lrn[k]["customers_flagged"],
                         lrn[k]["requests_flagged"]] for k in ("own_address", "nat")]),
              "", "Learning-phase flags by rule and endpoint:", "",
              md_table(["rule", "endpoint", "own address", "NAT"],
                       [[r["rule"], f"`{r['endpoint']}`", r["own_address"], r["nat"]] for r in res["learning_flags"]["by_rule_endpoint"]])
              if res["learning_flags"]["by_rule_endpoint"] else "none"]
    lines += ["", "## flowguard counters per phase (`wasmcustom.flowguard.*` deltas)", "",
              md_table(["phase", "counters"], [[p, ", ".join(f"{k.removeprefix('flowguard.')} {v}" for k, v in d.items()) or "-"]
                                              for p, d in res["counters_per_phase"].items()])]
    pj = res.get("policy_json") or {}
    lim = lambda k: (pj.get(k) or {})
    lines += ["", f"## The last learned policy (version {res['model']['version_at_end']})", "",
              f"Learned from {pj.get('learned_from')}; session-wide budget {lim('session_rate').get('limit')} "
              f"requests per {pj.get('window_s')} s; auth failures per session {lim('auth_failures').get('limit')}, "
              f"per address {lim('address_auth_failures').get('limit')}; {len(pj.get('transitions', []))} known transitions; "
              f"variable prefixes {pj.get('variable_prefixes')}.", "",
              md_table(["endpoint", "sessions", "order rules", "rate limit", "distinct-id limit", "evidence"],
                       [[f"`{e['template']}`", e["sessions"],
                         ", ".join(e["prerequisites"] + [f"same object: {p}" for p in e["bound_prerequisites"]] + [f"flag: {p}" for p in e["flag_prerequisites"]]) or "-",
                         e["rate_limit"] or "-", e["distinct_ids_limit"] or "-", e["evidence"] or "-"]
                        for e in res["policy"]])]
    lines += ["", "## Attack details", ""]
    for a in res["attacks"]:
        lines.append(f"- **{a['name']}**: {a['decisive_requests']} decisive requests, {a['blocked']} blocked "
                     f"(statuses {a['statuses']}), {a['flagged']} flagged ({', '.join(f'{k} x{v}' for k, v in a['flag_rules'].items()) or 'no flags'}); "
                     f"verdicts per call: {a['verdict_sample']}")
    return summary, "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default=os.path.join(REPO, "target", "flowguard.wasm"),
                    help="the flowguard build to evaluate (copied into the run directory first)")
    ap.add_argument("--envoy", default=os.path.join(REPO, ".venv", "bin", "envoy"))
    ap.add_argument("--vampi-src", default=None,
                    help="VAmPI: a checked-out tree, or a git directory without work tree "
                         "(default: $VAMPI_SRC, else eval/.vampi, cloned from GitHub if missing)")
    ap.add_argument("--vampi-venv", default=os.path.join(tempfile.gettempdir(), "vampi-venv"),
                    help="venv for VAmPI's requirements (created if missing)")
    ap.add_argument("--profile", choices=["defaults", "tuned"], default="defaults",
                    help="defaults: flowguard's defaults, enforce (the evaluation); tuned: plus "
                         "endpoints.failure and the login's token hand-over")
    ap.add_argument("--config", default=None, help="flowguard JSON config (overrides --profile)")
    ap.add_argument("--learn", type=int, default=600, help="learning customers")
    ap.add_argument("--held-out", type=int, default=300, help="held-out customers")
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--workers", type=int, default=8, help="customers played at once")
    ap.add_argument("--think-ms", type=float, default=30, help="max think time between calls")
    ap.add_argument("--concurrency", type=int, default=2, help="Envoy workers")
    ap.add_argument("--label", default=None, help="results file label (default: git short sha)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()

    t0 = time.time()
    head = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    if not os.path.exists(args.wasm):
        sys.exit(f"no wasm at {args.wasm}: run `make build`")
    if not os.path.exists(args.envoy):
        sys.exit(f"no Envoy at {args.envoy}: run `make venv`")
    config = json.loads(args.config) if args.config else (TUNED_CONFIG if args.profile == "tuned" else DEFAULT_CONFIG)
    profile = "custom" if args.config else args.profile
    # The build under test names the results: a copy named flowguard-<sha>.wasm (as
    # /tmp/eval-wasm/ holds them) gives its sha, else the repository's HEAD.
    m = re.fullmatch(r"flowguard-([0-9a-f]{7,40})\.wasm", os.path.basename(args.wasm))
    label = args.label or (m.group(1) if m else head)

    run_dir = tempfile.mkdtemp(prefix="flowguard-vampi-")
    wasm = os.path.join(run_dir, "flowguard.wasm")
    shutil.copy(args.wasm, wasm)  # a rebuild during the run changes nothing
    log(f"run directory {run_dir}")
    vampi_dir = os.path.join(run_dir, "vampi")
    vampi_commit = prepare_vampi(args.vampi_src, vampi_dir)
    py = ensure_venv(args.vampi_venv, vampi_dir)
    envoy_version = subprocess.run([args.envoy, "--version"], capture_output=True,
                                   text=True).stdout.strip().splitlines()[-1:] or ["?"]
    procs: list[Proc] = []
    try:
        vampi, vampi_port = start_vampi(py, vampi_dir, run_dir)
        procs.append(vampi)
        log(f"VAmPI {vampi_commit[:12]} on 127.0.0.1:{vampi_port}")

        rng = random.Random(args.seed)
        taken: set[str] = set()
        learn_pool = seed_accounts(vampi_port, unique_names(rng, 150, taken), rng)
        held_pool = seed_accounts(vampi_port, unique_names(rng, 80, taken), rng)
        learn_names = unique_names(rng, args.learn, taken)
        held_names = unique_names(rng, args.held_out, taken)
        log(f"seeded {len(learn_pool) + len(held_pool)} existing accounts directly on VAmPI")

        envoy = Envoy(args.envoy, wasm, vampi_port, config, run_dir, args.concurrency)
        procs.append(envoy.proc)
        log(f"Envoy on 127.0.0.1:{envoy.port}, admin {envoy.admin_port}")
        counters: dict[str, dict] = {}
        snap = envoy.stats()

        # Learning sample, in batches so as to see when the first model appears.
        published_after = None
        learning: list[dict] = []
        batch = 50
        for start in range(0, args.learn, batch):
            k = min(batch, args.learn - start)
            part = play_customers(envoy.port, "L", k, args.seed, learn_pool,
                                  learn_names[start:start + k], args.workers, args.think_ms,
                                  addr_base=1, offset=start)
            learning += part
            if published_after is None and envoy.stats().get("flowguard.policy.version", 0) > 0:
                published_after = start + k
            log(f"learning: {start + k} customers, policy version "
                f"{envoy.stats().get('flowguard.policy.version', 0)}")
        s = envoy.settled_stats()
        if s.get("flowguard.policy.version", 0) == 0:
            wait_until("a learned model", lambda: envoy.stats().get("flowguard.policy.version", 0) > 0, 30)
            s = envoy.stats()
            published_after = published_after or args.learn
        counters["learning"] = delta(s, snap)
        snap = s
        version_held = s.get("flowguard.policy.version", 0)
        log(f"model version {version_held}; learning gauges: sessions "
            f"{s.get('flowguard.learning.sessions')}, weak {s.get('flowguard.learning.weak_sessions')}")

        held = play_customers(envoy.port, "H", args.held_out, args.seed, held_pool, held_names,
                              args.workers, args.think_ms, addr_base=200_000,
                              progress=lambda d: log(f"held out: {d} customers"))
        s = envoy.settled_stats()
        counters["held-out"] = delta(s, snap)
        snap = s

        attack_results = []

        def run_attack(name, fn, extra_calls):
            nonlocal snap
            log(f"attack: {name}")
            client, decisive, extra = fn()
            after = envoy.settled_stats()
            d = delta(after, snap)
            snap = after
            counters[f"attack: {name}"] = d
            attack_results.append({"name": name, "client": client, "decisive": decisive,
                                   "extra": extra, "counters": d,
                                   "extra_calls": list(extra_calls)})
            extra_calls.clear()

        attacks(envoy.port, envoy, args.seed, learn_pool + held_pool,
                [a.name for a in learn_pool + held_pool] + learn_names[:50], run_attack)
        time.sleep(1.0)
        final = envoy.stats()
        policies = envoy.policies()
        access = read_access_log(envoy.access_log)
        envoy_log_tail = envoy.log()[-3000:]
    finally:
        for p in reversed(procs):
            p.stop()

    for cu in learning + held:
        annotate(cu["calls"], access)
    attacks_out = []
    for a in attack_results:
        annotate(a["client"].calls, access)
        annotate(a["extra_calls"], access)
        annotate(a["decisive"], access)
        dec = a["decisive"]
        blocked_idx = [i + 1 for i, c in enumerate(dec) if c["blocked"]]
        fr = collections.Counter(r for c in dec for r in c["flags"])
        rules = {k.removeprefix("flowguard.rule."): v for k, v in a["counters"].items()
                 if k.startswith("flowguard.rule.")}
        sample = [f"{c['endpoint']}={'BLOCK ' + str(c['status']) if c['blocked'] else (c['verdict'] or '-')}"
                  for c in dec[:6]]
        attacks_out.append({
            "name": a["name"], "decisive_requests": len(dec), "blocked": len(blocked_idx),
            "caught": bool(blocked_idx), "first_blocked_at": blocked_idx[0] if blocked_idx else None,
            "flagged": sum(bool(c["flags"]) for c in dec), "flag_rules": dict(fr),
            "statuses": dict(collections.Counter(c["status"] for c in dec)),
            "rules": rules, "counters": a["counters"], "extra": a["extra"],
            "verdict_sample": ", ".join(sample) + (" …" if len(dec) > 6 else ""),
            "decisive_calls": [compact(c) for c in dec],
        })

    date = datetime.datetime.now(datetime.timezone.utc)
    res = {
        "run": {
            "date": date.strftime("%Y-%m-%d %H:%M UTC"), "git_head": head,
            "git_dirty": dirty, "label": label,
            "wasm": args.wasm, "wasm_sha256": sha256(wasm),
            "envoy_version": envoy_version[0].split("version: ")[-1],
            "vampi_commit": vampi_commit, "config": config, "profile": profile, "seed": args.seed,
            "workers": args.workers, "think_ms": args.think_ms, "envoy_concurrency": args.concurrency,
            "learn_customers": args.learn, "held_out_customers": args.held_out,
            "wall_s": time.time() - t0, "run_dir": run_dir if args.keep else None,
        },
        "learning_requests": sum(len(cu["calls"]) for cu in learning),
        "model": {"published_after_customers": published_after, "version_at_held_out": version_held,
                  "version_at_end": final.get("flowguard.policy.version", 0),
                  "versions_logged": [p.get("version") for p in policies]},
        "learning": summarize_customers([c for c in learning if published_after is None or c["idx"] >= published_after]),
        "learning_flags": flag_breakdown(learning),
        "held_out": summarize_customers(held),
        "held_out_flags": flag_breakdown(held),
        "attacks": attacks_out,
        "counters_per_phase": counters,
        "counters_final": final,
        "policy": policy_summary(policies[-1] if policies else None),
        "policy_json": policies[-1] if policies else None,
        "held_out_customers": [dict(cu, calls=[compact(c) for c in cu["calls"]]) for cu in held],
        "envoy_log_tail": envoy_log_tail,
    }
    summary, report = render(res)
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if profile == "defaults" else f"-{profile}"
    base = os.path.join(args.out, f"{date.strftime('%Y-%m-%d')}-{label}{suffix}")
    with open(base + ".md", "w") as f:
        f.write(report)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(summary)
    print(f"\nwritten: {os.path.relpath(base, REPO)}.md and .json ({time.time() - t0:.0f} s)")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run directory kept: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
