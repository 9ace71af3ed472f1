#!/usr/bin/env bash
# bench/http.sh — HTTP data-path benchmark: agentgate against a plain nginx reverse proxy and
# against the upstream directly, in one run, on 127.0.0.1 only. A benchmark, not a CI gate.
#
# What runs (every process is started here and stopped on exit, by PID):
#   upstream   nginx, 1 worker, answering GET /api/v1/users/<id> with a fixed 1,050-byte Okta-like
#              user (bench/okta-user.json: email, login, secondEmail, mobilePhone). It answers 401
#              unless it receives `Authorization: SSWS <upstream token>`, so both proxies are seen
#              to inject the credential.
#   nginx      plain reverse proxy, 1 worker, /okta/ -> upstream (keepalive pool of 64), sets the
#              SSWS credential, access log off.
#   agentgate  `agentgate run` on generated manifests, 1 tokio worker (TOKIO_WORKER_THREADS), with:
#              an AgentIdentity whose ES256 keys are a static JWKS (spec.keys.secretRef); a
#              Connection to the upstream with an injected SSWS credential and pathPrefix /okta;
#              an AccessPolicy (Allow GET on users/groups, RequireApproval on writes, Deny on
#              api-tokens); masking (jsonFields profile.email/mobilePhone + detectors Email,
#              CreditCard, OktaApiToken, JWT, all Redact); recording mode Required to a temp dir.
#              The agent's token is minted here: `openssl` makes a P-256 key, bench/es256_token.py
#              (python3 standard library + `openssl dgst`) signs the JWT and writes the JWKS. The
#              same token is sent on every request, so after the first request verification is a
#              hit in the gateway's verification cache (as for an agent reusing its token).
#
# Before measuring, it checks the real path: direct and nginx return the document; the gateway
# refuses a request without a token (401), denies api-tokens (403), answers 200 with the emails
# redacted, and writes a session recording that `agentgate sessions verify` accepts.
#
# Measured, with the same connection count for all three targets (default 32):
#   closed loop  wrk -t1 -c32 -d15s (wrk is C and cheap per request, so the load generator takes
#                the least CPU from the shared core)
#   fixed rate   oha -q 5000 -c32 -z15s --latency-correction (wrk cannot pace requests, wrk2 is not
#                packaged in Debian; oha can, and --latency-correction measures each request from
#                when it was due, so a stall is not hidden by coordinated omission)
# then prints a markdown table (also written to bench/results/http-<date>.md): req/s, p50/p99 in
# both modes, added p50 against the direct run, the proxy's CPU per request, and the ratios
# gateway/nginx that the targets are about (req/s >= nginx; added p50 at 5,000 req/s <= nginx's).
#
# CPU pinning (2+ cores, BENCH_PIN=auto): the proxy under test (nginx or agentgate) runs alone on
# CPU 1; the load generator and the upstream share CPU 0. Each proxy thus gets one whole core, and
# the harness costs every target the same. On a 2-core machine the direct run's ceiling is that
# shared core, so read the direct req/s as the harness's ceiling, not the upstream's.
#
# Installs what is missing: nginx-light (or nginx) and wrk with apt-get; oha with
# `cargo install oha --locked` into bench/.tools (gitignored); builds the release agentgate
# (a no-op when fresh; BENCH_SKIP_BUILD=1 skips it).
#
# Usage:  bash bench/http.sh
# Environment (all optional):
#   CARGO_TARGET_DIR        where the release binary is built/found (default: <repo>/target)
#   AGENTGATE_BIN           use this agentgate binary instead
#   BENCH_DURATION=15       seconds per measured run      BENCH_WARMUP=3   seconds of warm-up per target
#   BENCH_ROUNDS=1          measure the three targets this many times, interleaved (direct, nginx,
#                           agentgate, direct, ...); the tables show each figure's median over the
#                           rounds and the ratios are the medians of each round's ratio, so noise
#                           that hits one round of three does not decide a figure (3 on shared machines)
#   BENCH_CONNECTIONS=32    connections, all targets      BENCH_WRK_THREADS=1
#   BENCH_RATE=5000         fixed rate, requests/s        BENCH_GATEWAY_WORKERS=1  tokio workers
#   BENCH_NO_IDLE=1         hold /dev/cpu_dma_latency at 0 while running (0: leave cpuidle alone)
#   BENCH_PIN=auto|1|0      CPU pinning as above          BENCH_HARNESS_CPUS=0  BENCH_SUT_CPUS=1
#   BENCH_PORT_BASE=18180   four ports from here: upstream, nginx, gateway, gateway admin
#   BENCH_SESSIONS_DIR=DIR  put the recordings under DIR (default: the temp dir, i.e. $TMPDIR or /tmp)
#   BENCH_QUIET_WAIT=120    before each run, wait up to this many seconds for other processes to
#                           use < 10% of a core (shared machines); the report shows each run's noise
#   BENCH_KEEP=1            keep the temp dir (configs, logs, raw outputs, recordings)
#   BENCH_HOLD=1            set up and check as usual, then measure nothing: write the targets'
#                           URLs, the agent's Authorization header and the PIDs to $WORK/targets.env
#                           and wait until interrupted (for profiling with perf, strace, wrk by hand)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
DURATION=${BENCH_DURATION:-15}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
RATE=${BENCH_RATE:-5000}
PIN=${BENCH_PIN:-auto}
GATEWAY_WORKERS=${BENCH_GATEWAY_WORKERS:-1}
PORT_BASE=${BENCH_PORT_BASE:-18180}
UPSTREAM_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))
GATEWAY_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
AGENTGATE=${AGENTGATE_BIN:-$TARGET_DIR/release/agentgate}
OHA_VERSION=1.16.0
TOOLS="$BENCH/.tools"
OHA="$TOOLS/bin/oha"
RESULTS="$BENCH/results"
USER_ID=00ub0oNGTSWTBKOLGLNR
USER_PATH=/api/v1/users/$USER_ID

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# 1. Tools
# ---------------------------------------------------------------------------------------------
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it (no apt-get on this machine)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing $* with apt-get"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
missing=()
if [ ! -x "$NGINX" ]; then
    # nginx-light is the smallest build with the proxy module; newer Debian releases only have nginx.
    if apt-cache show nginx-light >/dev/null 2>&1; then missing+=(nginx-light); else missing+=(nginx); fi
fi
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v taskset >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx is not installed"

if [ ! -x "$OHA" ] && [ "${BENCH_HOLD:-0}" != 1 ]; then
    log "installing oha $OHA_VERSION into $TOOLS (cargo install, a few minutes)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS" >&2
fi

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${AGENTGATE_BIN:-}" ]; then
    log "building the release agentgate (no-op when up to date)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p agentgate --bin agentgate)
fi
[ -x "$AGENTGATE" ] || die "no agentgate binary at $AGENTGATE"

# ---------------------------------------------------------------------------------------------
# 2. Scratch space, cleanup, pinning
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/agentgate-bench.XXXXXX")
chmod 755 "$WORK" # nginx workers may run as another user
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK ${SESSIONS:-}"
    else
        rm -rf "$WORK"
        [ -z "${BENCH_SESSIONS_DIR:-}" ] || [ -z "${SESSIONS:-}" ] || rm -rf "$SESSIONS"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NCPU=$(nproc)
if [ "$PIN" = auto ]; then
    if [ "$NCPU" -ge 2 ]; then PIN=1; else PIN=0; fi
fi
HARNESS=()
SUT=()
if [ "$PIN" = 1 ]; then
    HARNESS=(taskset -c "${BENCH_HARNESS_CPUS:-0}")
    SUT=(taskset -c "${BENCH_SUT_CPUS:-1}")
    PINNING="proxy on CPU ${BENCH_SUT_CPUS:-1}; load generator and upstream on CPU ${BENCH_HARNESS_CPUS:-0}"
else
    PINNING="none"
fi

# Idle CPUs poll rather than halt while measuring (see poll_when_idle in common.sh).
# shellcheck source=bench/common.sh
source "$BENCH/common.sh"
poll_when_idle

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$UPSTREAM_PORT" "$PROXY_PORT" "$GATEWAY_PORT" "$ADMIN_PORT"; do
    if port_busy "$p"; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
done

# Waits until URL answers any HTTP status, or fails after ~10 s.
wait_http() {
    local url=$1 pid=$2 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before $url answered (logs in $WORK)"
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" != 000 ] && return 0
        sleep 0.1
    done
    die "$url did not answer"
}

# ---------------------------------------------------------------------------------------------
# 3. Upstream and nginx proxy
# ---------------------------------------------------------------------------------------------
UPSTREAM_TOKEN=$(openssl rand -hex 24)
BODY=$(tr -d '\n' <"$BENCH/okta-user.json")
# shellcheck disable=SC1003 # the last pattern is a literal backslash
case "$BODY" in *"'"* | *'$'* | *'\'*) die "okta-user.json must not contain ' \$ or \\ (it is inlined in nginx.conf)" ;; esac

nginx_common() { # $1 = directory
    cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = directory
    cat <<EOF
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

mkdir -p "$WORK/upstream/tmp" "$WORK/nginx/tmp"
{
    nginx_common "$WORK/upstream"
    echo "http {"
    nginx_http_common "$WORK/upstream"
    cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location = $USER_PATH {
            if (\$http_authorization != "SSWS $UPSTREAM_TOKEN") { return 401; }
            default_type application/json;
            return 200 '$BODY';
        }
        location / { return 404; }
    }
}
EOF
} >"$WORK/upstream/nginx.conf"

{
    nginx_common "$WORK/nginx"
    echo "http {"
    nginx_http_common "$WORK/nginx"
    cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        location /okta/ {
            proxy_pass http://bench_upstream/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "SSWS $UPSTREAM_TOKEN";
        }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

STARTED_PID=
start_nginx() { # directory name under $WORK, then the pinning command (may be empty)
    local dir="$WORK/$1"
    shift
    "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" 2>"$dir/test.log" || die "$dir/nginx.conf: $(cat "$dir/test.log")"
    "$@" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}
start_nginx upstream "${HARNESS[@]}"
UPSTREAM_PID=$STARTED_PID
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UPSTREAM_PID"
start_nginx nginx "${SUT[@]}"
PROXY_PID=$STARTED_PID
wait_http "http://127.0.0.1:$PROXY_PORT/" "$PROXY_PID"
log "upstream nginx (pid $UPSTREAM_PID) on :$UPSTREAM_PORT, nginx proxy (pid $PROXY_PID) on :$PROXY_PORT"

# ---------------------------------------------------------------------------------------------
# 4. The gateway: issuer key, token, manifests
# ---------------------------------------------------------------------------------------------
ISSUER=https://issuer.bench.agentgate.invalid/oauth2/bench
AUDIENCE=api://agentgate-bench
SESSIONS="$WORK/sessions"
if [ -n "${BENCH_SESSIONS_DIR:-}" ]; then
    SESSIONS=$(mktemp -d "$BENCH_SESSIONS_DIR/agentgate-bench-sessions.XXXXXX")
fi
mkdir -p "$WORK/manifests" "$SESSIONS"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/issuer-key.pem"
AGENT_TOKEN=$(python3 "$BENCH/es256_token.py" "$WORK/issuer-key.pem" bench-1 "$ISSUER" "$AUDIENCE" \
    bench-agent 7200 "$WORK/jwks.json")
JWKS=$(cat "$WORK/jwks.json")

cat >"$WORK/manifests/bench.yaml" <<EOF
# Generated by bench/http.sh.
apiVersion: v1
kind: Namespace
metadata:
  name: bench
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata:
  name: bench
  namespace: bench
spec:
  replicas: 1
  listeners:
    - name: http
      protocol: HTTP
      port: $GATEWAY_PORT
      address: 127.0.0.1
  recording:
    mode: Required
    storage:
      local:
        path: $SESSIONS
    retention: 1d
  approvals:
    defaultTimeout: 15m
    maxGrant: 8h
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata:
  name: bench-agent
  namespace: bench
spec:
  provider: OIDC
  issuer: $ISSUER
  audiences: ["$AUDIENCE"]
  tokenType: JWT
  accessTokenType: at+jwt
  match:
    claims:
      client_id: bench-agent
  groups:
    static: [ai-agents]
  requireDPoP: false
  maxTokenLifetime: 2h
  algorithms: [ES256]
  keys:
    secretRef: {name: bench-issuer-jwks, key: jwks}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata:
  name: okta
  namespace: bench
spec:
  gatewayRef: {name: bench}
  type: HTTP
  endpoint: http://127.0.0.1:$UPSTREAM_PORT
  credentials:
    scheme: SSWS
    secretRef: {name: okta-token, key: token}
  route:
    pathPrefix: /okta
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: bench-agent-okta
  namespace: bench
spec:
  subjects:
    identities: [bench-agent]
  connections: [okta]
  rules:
    - name: read-directory
      action: Allow
      http:
        methods: [GET]
        paths: ["/api/v1/users/**", "/api/v1/groups/**", "/api/v1/users", "/api/v1/groups"]
    - name: okta-user-admin
      action: RequireApproval
      http:
        methods: [POST, PUT, DELETE]
        paths: ["/api/v1/users/**", "/api/v1/groups/**", "/api/v1/users", "/api/v1/groups"]
      approval:
        approvers: {groups: [identity-team]}
        mode: Defer
        grant: {type: Window, duration: 30m}
    - name: no-api-tokens
      action: Deny
      http:
        paths: ["/api/v1/api-tokens", "/api/v1/api-tokens/**", "/api/v1/authorizationServers", "/api/v1/authorizationServers/**"]
  masking:
    - jsonFields: ["\$..profile.email", "\$..profile.mobilePhone"]
      strategy: Redact
    - detectors: [Email, CreditCard, OktaApiToken, JWT]
      strategy: Redact
---
apiVersion: v1
kind: Secret
metadata:
  name: bench-issuer-jwks
  namespace: bench
type: Opaque
stringData:
  jwks: '$JWKS'
---
apiVersion: v1
kind: Secret
metadata:
  name: okta-token
  namespace: bench
type: Opaque
stringData:
  token: $UPSTREAM_TOKEN
EOF

"$AGENTGATE" validate --manifests "$WORK/manifests" >"$WORK/validate.log" 2>&1 ||
    die "generated manifests do not validate: $(cat "$WORK/validate.log")"
TOKIO_WORKER_THREADS=$GATEWAY_WORKERS AGENTGATE_LOG=${AGENTGATE_LOG:-info} "${SUT[@]}" "$AGENTGATE" run \
    --manifests "$WORK/manifests" --admin-addr "127.0.0.1:$ADMIN_PORT" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
for i in $(seq 100); do
    kill -0 "$GATEWAY_PID" 2>/dev/null || die "agentgate exited: $(tail -5 "$WORK/gateway.log")"
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null | grep -q '^ready' && break
    [ "$i" -lt 100 ] || die "agentgate not ready: $(tail -5 "$WORK/gateway.log")"
    sleep 0.1
done
wait_http "http://127.0.0.1:$GATEWAY_PORT/" "$GATEWAY_PID"
GATEWAY_THREADS=$(find /proc/"$GATEWAY_PID"/task -mindepth 1 -maxdepth 1 | wc -l)
log "agentgate (pid $GATEWAY_PID) on :$GATEWAY_PORT, TOKIO_WORKER_THREADS=$GATEWAY_WORKERS, $GATEWAY_THREADS threads"

# ---------------------------------------------------------------------------------------------
# 5. Check the real path before measuring
# ---------------------------------------------------------------------------------------------
DIRECT_URL="http://127.0.0.1:$UPSTREAM_PORT$USER_PATH"
PROXY_URL="http://127.0.0.1:$PROXY_PORT/okta$USER_PATH"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT/okta$USER_PATH"
DIRECT_AUTH="Authorization: SSWS $UPSTREAM_TOKEN"
AGENT_AUTH="Authorization: Bearer $AGENT_TOKEN"

status_of() { curl -s -o "$WORK/check.body" -w '%{http_code}' "$@"; }
expect() { # expected-status description curl-args...
    local want=$1 what=$2 got
    shift 2
    got=$(status_of "$@")
    [ "$got" = "$want" ] || die "$what: HTTP $got, expected $want: $(head -c 300 "$WORK/check.body")"
}
expect 401 "upstream without its credential" "$DIRECT_URL"
expect 200 "upstream direct" -H "$DIRECT_AUTH" "$DIRECT_URL"
cmp -s "$WORK/check.body" <(printf '%s' "$BODY") || die "upstream did not return okta-user.json"
expect 200 "nginx proxy" -H "$AGENT_AUTH" "$PROXY_URL"
cmp -s "$WORK/check.body" <(printf '%s' "$BODY") || die "nginx proxy changed the body"
expect 401 "agentgate without a token" "$GATEWAY_URL"
expect 403 "agentgate on a denied path" -H "$AGENT_AUTH" "http://127.0.0.1:$GATEWAY_PORT/okta/api/v1/api-tokens"
expect 200 "agentgate" -H "$AGENT_AUTH" "$GATEWAY_URL"
grep -q '\[REDACTED\]' "$WORK/check.body" || die "agentgate's response is not masked: $(cat "$WORK/check.body")"
if grep -q -e 'isaac.brock@example.com' -e 'ib@brock.example.org' -e '555-415-1337' "$WORK/check.body"; then
    die "agentgate's response still carries an email or phone number: $(cat "$WORK/check.body")"
fi
cp "$WORK/check.body" "$WORK/gateway-masked-body.json"
# The session of that last connection: its response event is written before the response is
# sent, and its signed end when the connection closes.
session=""
for i in $(seq 50); do
    session=$(grep -l '"http.response"' "$SESSIONS"/*.jsonl 2>/dev/null | xargs -r grep -l '"session.end"' | head -1 || true)
    [ -n "$session" ] && break
    sleep 0.1
done
[ -n "$session" ] || die "no closed session recording with a response in $SESSIONS"
grep -q 'isaac.brock@example.com' "$session" && die "the recording carries the unmasked email"
"$AGENTGATE" sessions verify "$session" >"$WORK/verify.log" 2>&1 ||
    die "the recording does not verify: $(cat "$WORK/verify.log")"
log "checked: upstream and nginx return the document; agentgate authenticates (401), denies (403),"
log "         masks (200, emails and phone [REDACTED]) and records ($(basename "$session") verifies)"

if [ "${BENCH_HOLD:-0}" = 1 ]; then
    {
        printf 'DIRECT_URL=%q\nPROXY_URL=%q\nGATEWAY_URL=%q\n' "$DIRECT_URL" "$PROXY_URL" "$GATEWAY_URL"
        printf 'DIRECT_AUTH=%q\nAGENT_AUTH=%q\n' "$DIRECT_AUTH" "$AGENT_AUTH"
        printf 'UPSTREAM_PID=%s\nPROXY_PID=%s\nGATEWAY_PID=%s\nSESSIONS=%q\n' "$UPSTREAM_PID" "$PROXY_PID" "$GATEWAY_PID" "$SESSIONS"
    } >"$WORK/targets.env"
    log "holding (BENCH_HOLD=1): targets in $WORK/targets.env; interrupt to stop"
    while kill -0 "$GATEWAY_PID" 2>/dev/null; do sleep 1; done
    die "agentgate exited while holding: $(tail -5 "$WORK/gateway.log")"
fi

# ---------------------------------------------------------------------------------------------
# 6. Measure
# ---------------------------------------------------------------------------------------------
cpu_ticks() { # summed utime+stime of the given PIDs and their children (nginx workers)
    local total=0 pid f children=()
    [ $# -eq 0 ] || mapfile -t children < <(pgrep -P "$(echo "$@" | tr ' ' ',')" || true)
    for pid in "$@" "${children[@]}"; do
        read -r -a f <"/proc/$pid/stat" || continue
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
# /proc/stat: the busy ticks of one CPU (everything but idle and iowait), and the ticks that
# processes were charged for on all CPUs (user, nice, system, steal; irq and softirq time, e.g.
# loopback packet delivery, is charged to no process).
cpu_busy() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
procs_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $9}' /proc/stat; }
# CPU ticks of this shell's finished children (the load generators).
children_ticks() {
    local f
    read -r -a f <"/proc/$$/stat"
    echo $((f[15] + f[16]))
}
SERVER_PIDS=("$UPSTREAM_PID" "$PROXY_PID" "$GATEWAY_PID")
SUT_CPU=${BENCH_SUT_CPUS:-1}
HARNESS_CPU=${BENCH_HARNESS_CPUS:-0}
# run_measured NAME.MODE SUT-PIDS-COMMA-LIST -- command...: runs the command and writes
# NAME.MODE.cpu: proxy ticks, SUT core busy ticks, harness core busy ticks, other processes'
# ticks, wall seconds.
run_measured() {
    local tag=$1 sut=$2
    shift 3
    local -a sutpids=()
    [ -z "$sut" ] || IFS=, read -r -a sutpids <<<"$sut"
    local p0 s0 h0 a0 o0 c0 t0 p1 s1 h1 a1 o1 c1 t1
    p0=$(cpu_ticks "${sutpids[@]}") s0=$(cpu_busy "$SUT_CPU") h0=$(cpu_busy "$HARNESS_CPU")
    a0=$(procs_busy) o0=$(cpu_ticks "${SERVER_PIDS[@]}") c0=$(children_ticks) t0=$(date +%s.%N)
    "$@"
    p1=$(cpu_ticks "${sutpids[@]}") s1=$(cpu_busy "$SUT_CPU") h1=$(cpu_busy "$HARNESS_CPU")
    a1=$(procs_busy) o1=$(cpu_ticks "${SERVER_PIDS[@]}") c1=$(children_ticks) t1=$(date +%s.%N)
    echo "$((p1 - p0)) $((s1 - s0)) $((h1 - h0)) $(((a1 - a0) - (o1 - o0) - (c1 - c0))) $t0 $t1" >"$WORK/$tag.cpu"
}

# On a shared machine, waits (up to BENCH_QUIET_WAIT seconds) until processes this script did not
# start use less than 10% of a core over one second; then measures anyway, and the report shows the
# noise of each run.
wait_quiet() {
    local deadline=$((SECONDS + ${BENCH_QUIET_WAIT:-120})) a0 o0 a1 o1 other
    while :; do
        a0=$(procs_busy) o0=$(cpu_ticks "${SERVER_PIDS[@]}")
        sleep 1
        a1=$(procs_busy) o1=$(cpu_ticks "${SERVER_PIDS[@]}")
        other=$(((a1 - a0) - (o1 - o0)))
        [ "$other" -le $((CLK_TCK / 10)) ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "warning: other processes still use $((100 * other / CLK_TCK))% of a core; measuring anyway"
            return 0
        fi
    done
}

# measure NAME URL HEADER [SUT PIDs, comma-separated]; ROUND (global) names the output files.
measure() {
    local name=$1.$ROUND url=$2 header=$3 sut=${4:-}
    log "$name: warm-up ${WARMUP}s"
    "${HARNESS[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -H "$header" "$url" >/dev/null
    wait_quiet
    log "$name: closed loop, wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s"
    run_measured "$name.wrk" "$sut" -- "${HARNESS[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
        --latency -s "$BENCH/wrk-report.lua" -H "$header" "$url" >"$WORK/$name.wrk.txt"
    wait_quiet
    log "$name: fixed rate, oha -q $RATE -c$CONNECTIONS -z ${DURATION}s --latency-correction"
    run_measured "$name.oha" "$sut" -- "${HARNESS[@]}" "$OHA" --no-tui --output-format json -q "$RATE" \
        -c "$CONNECTIONS" -z "${DURATION}s" --latency-correction -H "$header" "$url" >"$WORK/$name.oha.json"
    sleep 2
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG%% *}" 'BEGIN {exit !(l > 0.5)}'; then
    log "warning: load average $LOADAVG: other work on this machine will skew the figures"
fi
for ROUND in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -eq 1 ] || log "round $ROUND of $ROUNDS"
    measure direct "$DIRECT_URL" "$DIRECT_AUTH"
    measure nginx "$PROXY_URL" "$AGENT_AUTH" "$PROXY_PID"
    measure agentgate "$GATEWAY_URL" "$AGENT_AUTH" "$GATEWAY_PID"
done
SESSION_BYTES=$(du -sb "$SESSIONS" | cut -f1)
SESSION_FILES=$(find "$SESSIONS" -name '*.jsonl' | wc -l)
SESSIONS_FS=$(df -T "$SESSIONS" | awk 'NR==2 {print $2}')
grep -q ' ERROR ' "$WORK/gateway.log" && log "warning: agentgate logged errors (see $WORK/gateway.log with BENCH_KEEP=1)"

# ---------------------------------------------------------------------------------------------
# 7. Report
# ---------------------------------------------------------------------------------------------
mkdir -p "$RESULTS"
OUT="$RESULTS/http-$(date -u +%Y-%m-%d).md"
[ -e "$OUT" ] && OUT="$RESULTS/http-$(date -u +%Y-%m-%d-%H%M%S).md"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- gateway crds 2>/dev/null || COMMIT="$COMMIT+changes"
export IDLE WORK DURATION ROUNDS CONNECTIONS SESSIONS_FS LOADAVG WRK_THREADS RATE PINNING CLK_TCK COMMIT NCPU GATEWAY_WORKERS \
    SESSION_BYTES SESSION_FILES GATEWAY_THREADS
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
KERNEL=$(uname -r)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
WRK_VERSION=$(wrk -v 2>&1 | head -1 | awk '{print $2}' || true)
OHA_VER=$("$OHA" --version | awk '{print $2}')
export CPU_MODEL KERNEL NGINX_VERSION WRK_VERSION OHA_VER
python3 - "$OUT" <<'PY'
import json, os, re, sys, datetime

env = os.environ
work = env["WORK"]
tck = int(env["CLK_TCK"])
dur = float(env["DURATION"])
rounds = int(env["ROUNDS"])
problems = []

def measured(name, r):
    """One round's figures for one target, from its wrk, oha and CPU files."""
    tag = f"{name}.{r}"
    text = open(f"{work}/{tag}.wrk.txt").read()
    m = re.search(r"^WRK_RESULT (\{.*\})$", text, re.M)
    if not m:
        sys.exit(f"no wrk result for {tag}:\n{text}")
    w = json.loads(m.group(1))
    o = json.load(open(f"{work}/{tag}.oha.json"))
    codes = o.get("statusCodeDistribution", {})
    oha_ok = int(codes.get("200", 0))
    # oha -z aborts the requests still in flight at the deadline: not failures.
    oha_bad = sum(int(v) for k, v in codes.items() if k != "200") + sum(
        int(v) for k, v in o.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    if w["socket_errors"] or w["non2xx"]:
        problems.append(f"{tag} closed loop: {w['socket_errors']} socket errors, {w['non2xx']} non-2xx")
    if oha_bad:
        problems.append(f"{tag} fixed rate: {oha_bad} failed or non-200 responses {codes} {o.get('errorDistribution')}")
    def cpu(mode):
        proxy, sut, harness, other, t0, t1 = open(f"{work}/{tag}.{mode}.cpu").read().split()
        wall = float(t1) - float(t0)
        return {"proxy": int(proxy) / tck, "sut_pct": 100 * int(sut) / tck / wall,
                "harness_pct": 100 * int(harness) / tck / wall, "other_pct": 100 * int(other) / tck / wall}
    cpu_w, cpu_o = cpu("wrk"), cpu("oha")
    pct = o["latencyPercentiles"]
    return {
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50": w["p50_us"],
        "p99": w["p99_us"],
        "rate_rps": o["summary"]["requestsPerSec"],
        "rate_p50": pct["p50"] * 1e6,
        "rate_p99": pct["p99"] * 1e6,
        "cpu_closed_us": cpu_w["proxy"] * 1e6 / max(w["requests"], 1),
        "cpu_closed_pct": 100 * cpu_w["proxy"] / (w["duration_us"] / 1e6),
        "cpu_fixed_pct": 100 * cpu_o["proxy"] / dur,
        "oha_ok": oha_ok,
        "cpu": (cpu_w, cpu_o),
    }

def median(values):
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2

by_round = {name: [measured(name, r) for r in range(1, rounds + 1)] for name in ("direct", "nginx", "agentgate")}
# Each figure of a target is its median over the rounds (with one round, that round's figure).
rows = {name: {k: median([x[k] for x in runs]) for k in runs[0] if k != "cpu"} for name, runs in by_round.items()}

d, n, g = rows["direct"], rows["nginx"], rows["agentgate"]
labels = {"direct": "upstream direct", "nginx": "nginx proxy", "agentgate": "agentgate"}

def us(v):
    return f"{v:,.0f}"

lines = []
lines.append(f"| target | req/s closed loop | p50 / p99 closed loop (µs) | added p50 closed loop (µs) "
             f"| proxy CPU closed loop | achieved req/s at {int(env['RATE']):,}/s | p50 / p99 at {int(env['RATE']):,}/s (µs) "
             f"| added p50 at {int(env['RATE']):,}/s (µs) | proxy CPU at {int(env['RATE']):,}/s |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in ("direct", "nginx", "agentgate"):
    r = rows[name]
    if name == "direct":
        added_closed = added_rate = cpu_closed = cpu_fixed = "—"
    else:
        added_closed = us(r["p50"] - d["p50"])
        added_rate = us(r["rate_p50"] - d["rate_p50"])
        cpu_closed = f"{r['cpu_closed_pct']:.0f}% ({r['cpu_closed_us']:.1f} µs/req)"
        cpu_fixed = f"{r['cpu_fixed_pct']:.0f}%"
    lines.append(
        f"| {labels[name]} | {r['rps']:,.0f} | {us(r['p50'])} / {us(r['p99'])} | {added_closed} | {cpu_closed} "
        f"| {r['rate_rps']:,.0f} | {us(r['rate_p50'])} / {us(r['rate_p99'])} | {added_rate} | {cpu_fixed} |")
table = "\n".join(lines)

pinned = env["PINNING"] != "none"
cpu_lines = [
    "| target, run | proxy core busy | harness core busy | other processes (all cores) |",
    "|---|---:|---:|---:|",
]
for r in range(rounds):
    for name in ("direct", "nginx", "agentgate"):
        for mode, c in zip(("closed loop", f"{int(env['RATE']):,} req/s"), by_round[name][r]["cpu"]):
            sut = f"{c['sut_pct']:.0f}%" if pinned else "—"
            harness = f"{c['harness_pct']:.0f}%" if pinned else "—"
            label = f"{labels[name]}, {mode}" + (f", round {r + 1}" if rounds > 1 else "")
            cpu_lines.append(f"| {label} | {sut} | {harness} | {max(c['other_pct'], 0):.0f}% |")
cpu_table = "\n".join(cpu_lines)

def ratios(g, n, d):
    """The gateway/nginx ratios the targets are about, for one set of figures."""
    g_added = g["rate_p50"] - d["rate_p50"]
    n_added = n["rate_p50"] - d["rate_p50"]
    return {
        "rps": g["rps"] / n["rps"],
        "added": g_added / n_added if n_added > 0 else float("inf"),
        "closed_added": (g["p50"] - d["p50"]) / (n["p50"] - d["p50"]) if n["p50"] > d["p50"] else float("inf"),
        "cpu": g["cpu_closed_us"] / n["cpu_closed_us"],
    }

# Ratios within a round compare measurements minutes apart; their median is the run's ratio.
per_round = [ratios(by_round["agentgate"][r], by_round["nginx"][r], by_round["direct"][r]) for r in range(rounds)]
ratio = {k: median([x[k] for x in per_round]) for k in per_round[0]}
rps_ratio, added_ratio, closed_added_ratio = ratio["rps"], ratio["added"], ratio["closed_added"]
g_added = g["rate_p50"] - d["rate_p50"]
n_added = n["rate_p50"] - d["rate_p50"]
rate = int(env["RATE"])
summary = [
    f"- gateway/nginx req/s (closed loop): **{rps_ratio:.2f}** (target ≥ 1.00: {'met' if rps_ratio >= 1 else 'NOT met'})",
    f"- gateway/nginx added p50 at {rate:,} req/s: **{added_ratio:.2f}** ({us(g_added)} µs vs {us(n_added)} µs; "
    f"target ≤ 1.00: {'met' if added_ratio <= 1 else 'NOT met'})",
    f"- gateway/nginx added p50 (closed loop): {closed_added_ratio:.2f}",
    f"- gateway/nginx CPU per request (closed loop): {ratio['cpu']:.2f} "
    f"({g['cpu_closed_us']:.1f} vs {n['cpu_closed_us']:.1f} µs)",
]
if rounds > 1:
    summary.insert(0, f"- {rounds} interleaved rounds: each figure in the table is its median over the rounds, each ratio "
                   "the median of the rounds' ratios")
    summary.append("- ratios per round (req/s, added p50 at the fixed rate, CPU per request): " + "; ".join(
        f"{x['rps']:.2f} / {x['added']:.2f} / {x['cpu']:.2f}" for x in per_round))
if problems:
    summary.append("- **errors during the run:** " + "; ".join(problems))

setup = [
    f"- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, agentgate {env['COMMIT']}, "
    f"{env['NCPU']} CPUs ({env['CPU_MODEL']}), Linux {env['KERNEL']}, {rounds} round(s)",
    f"- nginx {env['NGINX_VERSION']} (upstream and proxy, 1 worker each), wrk {env['WRK_VERSION']}, oha {env['OHA_VER']}; "
    f"agentgate with TOKIO_WORKER_THREADS={env['GATEWAY_WORKERS']} ({env['GATEWAY_THREADS']} threads in all)",
    f"- {env['CONNECTIONS']} connections for every target; closed loop `wrk -t{env['WRK_THREADS']} -c{env['CONNECTIONS']} "
    f"-d{env['DURATION']}s`; fixed rate `oha -q {rate} -c {env['CONNECTIONS']} -z {env['DURATION']}s --latency-correction`",
    f"- pinning: {env['PINNING']}; {env['IDLE']}",
    "- request: GET of a 1,050-byte JSON user; agentgate verifies an ES256 token (static JWKS, cached after the "
    "first request), decides the AccessPolicy, injects SSWS, masks (jsonFields + Email/CreditCard/OktaApiToken/JWT "
    "detectors) and records (mode Required)",
    f"- recordings written: {int(env['SESSION_FILES'])} session files, {int(env['SESSION_BYTES']) / 1e6:,.0f} MB, "
    f"on {env['SESSIONS_FS']}",
    f"- load average when the run started: {env['LOADAVG']}",
]
cpu_note = ("CPU during each measured run, from /proc/stat: core busy includes softirq time (loopback packet "
            "delivery), which no process is charged for; \"other processes\" is CPU used by anything this "
            "script did not start (100% = one core), i.e. noise.")
doc = ("# HTTP benchmark: agentgate vs nginx vs direct\n\n" + "\n".join(setup) + "\n\n" + table + "\n\n"
       + "\n".join(summary) + "\n\n" + cpu_note + "\n\n" + cpu_table + "\n")
print()
print(table)
print()
print("\n".join(summary))
print()
print(cpu_table)
with open(sys.argv[1], "w") as f:
    f.write(doc)
print(f"\nwritten to {os.path.relpath(sys.argv[1])}")
if problems:
    sys.exit(1)
PY
