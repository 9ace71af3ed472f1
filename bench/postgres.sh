#!/usr/bin/env bash
# bench/postgres.sh — PostgreSQL data-path benchmark: agentgate against pgbouncer (session mode)
# and against the server directly, in one run, on 127.0.0.1 only. A benchmark, not a CI gate.
#
# What runs (every process is started here and stopped on exit, by PID):
#   postgres   a throwaway cluster (initdb into the temp dir; as `nobody` through setpriv when run
#              as root, since PostgreSQL refuses root), TLS on with a certificate for 127.0.0.1
#              from a throwaway CA made with openssl, fsync off, a role `bench` that logs in
#              with SCRAM-SHA-256, and the pgbench tables (`pgbench -i -s $BENCH_SCALE`).
#   pgbouncer  pool_mode session, 1 process (as nobody too: it refuses root), clients
#              authenticate with SCRAM-SHA-256, server connections use TLS (verify-full).
#   agentgate  `agentgate run` on generated manifests, 1 tokio worker (TOKIO_WORKER_THREADS):
#              a Postgres listener; an AgentIdentity whose ES256 key is a static JWKS
#              (spec.keys.secretRef; token minted by bench/es256_token.py as in http.sh); a
#              Connection of type Postgres to the server with PostgresPassword credentials for
#              `bench` and TLS verified against the throwaway CA; an AccessPolicy allowing
#              Select/Update/Insert on the pgbench tables and Transaction statements, denying
#              Delete/Truncate/DDL; masking (columns + Email/CreditCard detectors, Redact); recording
#              mode Required. Clients pass the token as the password.
#
# Before measuring it checks the real path: the data is there directly and through pgbouncer;
# the gateway refuses a wrong token, denies a DELETE, masks an email and writes a session
# recording that `agentgate sessions verify` accepts.
#
# Measured, for each target (direct, pgbouncer, gateway), with the same clients:
#   memory      RSS of the proxy with no client, then with $BENCH_IDLE_CLIENTS idle clients open
#               (pgbench: each client runs one SELECT 1 and sleeps), i.e. memory per idle client.
#               Measured before any load, so no allocator high-water mark hides it.
#   closed loop pgbench -n -S          -c16 -j2 -T20   (simple protocol)
#               pgbench -n -S -M prepared -c16 -j2 -T20 (extended protocol, prepared statements)
#   fixed rate  pgbench -n -S -R 5000 -c16 -j2 -T20, and the same with -M prepared (whose lighter
#               harness reaches 5,000/s on machines where the simple protocol's cannot): latency
#               counted from each transaction's
#               scheduled start, so a stall is not hidden by coordinated omission.
# Latency percentiles come from pgbench's per-transaction log (-l, column `time`, which under -R
# includes the schedule lag). Prints a markdown table (also written to
# bench/results/postgres-<date>.md): TPS, p50/p99 per mode, the p50 each proxy adds to direct,
# the proxy's CPU per transaction, RSS per idle client, and the gateway/pgbouncer ratios.
#
# CPU pinning (2+ cores, BENCH_PIN=auto): the proxy under test alone on CPU 1; pgbench and
# postgres share CPU 0, so each proxy gets one core and the harness costs every target the same.
# The direct run's TPS is then the ceiling of that shared core, not of the server.
#
# Installs what is missing with apt-get: postgresql, postgresql-client (pgbench, psql),
# pgbouncer, openssl, python3, util-linux (setpriv, taskset). Builds the release agentgate with
# CARGO_TARGET_DIR=target-bench (a no-op when fresh; BENCH_SKIP_BUILD=1 skips it).
#
# Usage:  bash bench/postgres.sh
# Environment (all optional):
#   BENCH_TARGETS="direct pgbouncer gateway"   which targets to run (e.g. without gateway)
#   CARGO_TARGET_DIR        where the release binary is built/found (default: <repo>/target-bench)
#   AGENTGATE_BIN           use this agentgate binary instead
#   BENCH_DURATION=20       seconds per measured run   BENCH_WARMUP=3   seconds of warm-up per target
#   BENCH_ROUNDS=1          measure the targets this many times, interleaved (direct, pgbouncer,
#                           gateway, direct, ...); the table shows each figure's median over the
#                           rounds and the TPS ratios are the medians of each round's ratio (3 on
#                           shared machines, where one noisy minute otherwise decides a ratio)
#   BENCH_CLIENTS=16        pgbench clients            BENCH_THREADS=2  pgbench threads
#   BENCH_RATE=5000         fixed rate, transactions/s BENCH_SCALE=10   pgbench scale (100,000 rows each)
#   BENCH_IDLE_CLIENTS=200  idle clients for the memory figure
#   BENCH_GATEWAY_WORKERS=1 tokio workers              BENCH_TLS=1      TLS from proxies (and direct
#                                                      clients) to postgres; 0 for plaintext
#   BENCH_NO_IDLE=1         hold /dev/cpu_dma_latency at 0 while running (0: leave cpuidle alone)
#   BENCH_PIN=auto|1|0      CPU pinning as above       BENCH_HARNESS_CPUS=0  BENCH_SUT_CPUS=1
#   BENCH_PORT_BASE=18280   four ports from here: postgres, pgbouncer, gateway, gateway admin
#   BENCH_KEEP=1            keep the temp dir (configs, logs, pgbench logs, recordings)
#   BENCH_HOLD=1            set up and check as usual, then measure nothing: write each target's
#                           client environment and the PIDs to $WORK/targets.env and wait until
#                           interrupted (for profiling with perf or valgrind and pgbench by hand)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
TARGETS=${BENCH_TARGETS:-direct pgbouncer gateway}
DURATION=${BENCH_DURATION:-20}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-3}
CLIENTS=${BENCH_CLIENTS:-16}
THREADS=${BENCH_THREADS:-2}
RATE=${BENCH_RATE:-5000}
SCALE=${BENCH_SCALE:-10}
IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-200}
GATEWAY_WORKERS=${BENCH_GATEWAY_WORKERS:-1}
TLS=${BENCH_TLS:-1}
PIN=${BENCH_PIN:-auto}
PORT_BASE=${BENCH_PORT_BASE:-18280}
PG_PORT=$PORT_BASE
BOUNCER_PORT=$((PORT_BASE + 1))
GATEWAY_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench}
AGENTGATE=${AGENTGATE_BIN:-$TARGET_DIR/release/agentgate}
RESULTS="$BENCH/results"
DB=bench
BENCH_USER=bench

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
for t in $TARGETS; do
    case "$t" in direct | pgbouncer | gateway) ;; *) die "unknown target $t in BENCH_TARGETS" ;; esac
done
has_target direct || die "BENCH_TARGETS must include direct (the baseline)"

# ---------------------------------------------------------------------------------------------
# 1. Tools
# ---------------------------------------------------------------------------------------------
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it (no apt-get on this machine)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing $* with apt-get"
    if [[ " $* " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.d/agentgate-tests.conf ]; then
        # This script starts its own server; the package's default cluster is not wanted.
        "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' |
            "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/agentgate-tests.conf >/dev/null
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bin() { # the newest /usr/lib/postgresql/<version>/bin with initdb
    local d
    d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] && dirname "$d"
}
missing=()
pg_bin >/dev/null || missing+=(postgresql)
command -v pgbench >/dev/null || missing+=(postgresql-client)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
{ command -v taskset && command -v setpriv; } >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
PG_BIN=$(pg_bin) || die "no PostgreSQL server under /usr/lib/postgresql/*/bin"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGBENCH="$PG_BIN/pgbench"
PSQL="$PG_BIN/psql"
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench)
[ -x "$PSQL" ] || PSQL=$(command -v psql)

if has_target gateway; then
    if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${AGENTGATE_BIN:-}" ]; then
        log "building the release agentgate into $TARGET_DIR (no-op when up to date)"
        (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p agentgate --bin agentgate)
    fi
    [ -x "$AGENTGATE" ] || die "no agentgate binary at $AGENTGATE"
fi

# ---------------------------------------------------------------------------------------------
# 2. Scratch space, cleanup, users, pinning
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/agentgate-bench-pg.XXXXXX")
PIDS=()   # stopped with SIGTERM, in reverse order
PG_PID=   # stopped last, with SIGINT (PostgreSQL's fast shutdown)
cleanup() {
    local status=$? i pid
    trap - EXIT
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        for i in $(seq 100); do
            kill -0 "$PG_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$PG_PID" 2>/dev/null || true
        wait "$PG_PID" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL and pgbouncer refuse to run as root: as root, they run as nobody, in directories
# nobody owns under the temp dir (which stays root's, searchable).
AS_USER=()
if [ "$(id -u)" -eq 0 ]; then
    AS_USER=(setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups --)
    chmod 711 "$WORK"
fi
own_dir() { # mkdir DIR owned by the user the servers run as
    mkdir -p "$1"
    [ "$(id -u)" -ne 0 ] || chown nobody:"$(id -gn nobody)" "$1"
}

NCPU=$(nproc)
if [ "$PIN" = auto ]; then
    if [ "$NCPU" -ge 2 ]; then PIN=1; else PIN=0; fi
fi
HARNESS=()
SUT=()
if [ "$PIN" = 1 ]; then
    HARNESS=(taskset -c "${BENCH_HARNESS_CPUS:-0}")
    SUT=(taskset -c "${BENCH_SUT_CPUS:-1}")
    PINNING="proxy on CPU ${BENCH_SUT_CPUS:-1}; pgbench and postgres on CPU ${BENCH_HARNESS_CPUS:-0}"
else
    PINNING="none"
fi

# Idle CPUs poll rather than halt while measuring (see poll_when_idle in common.sh).
# shellcheck source=bench/common.sh
source "$BENCH/common.sh"
poll_when_idle

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PG_PORT" "$BOUNCER_PORT" "$GATEWAY_PORT" "$ADMIN_PORT"; do
    if port_busy "$p"; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
done

# ---------------------------------------------------------------------------------------------
# 3. PostgreSQL
# ---------------------------------------------------------------------------------------------
PG_DIR="$WORK/pg"
own_dir "$PG_DIR"
own_dir "$PG_DIR/socket"
BENCH_PASSWORD=$(openssl rand -hex 16)

# TLS: a throwaway CA and a certificate for 127.0.0.1 and localhost.
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=agentgate-bench-ca -keyout "$WORK/tls/ca.key" -out "$WORK/tls/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -keyout "$WORK/tls/server.key" -out "$WORK/tls/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$WORK/tls/ext.cnf"
openssl x509 -req -in "$WORK/tls/server.csr" -CA "$WORK/tls/ca.crt" -CAkey "$WORK/tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/tls/ext.cnf" -out "$WORK/tls/server.crt" 2>/dev/null
chmod 755 "$WORK/tls"
chmod 644 "$WORK/tls/ca.crt"
CA="$WORK/tls/ca.crt"

(cd "$PG_DIR" && "${AS_USER[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 \
    --locale=C --no-sync >"$WORK/initdb.log" 2>&1) || die "initdb failed: $(cat "$WORK/initdb.log")"
install -m 644 "$WORK/tls/server.crt" "$PG_DIR/data/server.crt"
install -m 600 "$WORK/tls/server.key" "$PG_DIR/data/server.key"
[ "$(id -u)" -ne 0 ] || chown nobody "$PG_DIR/data/server.crt" "$PG_DIR/data/server.key"
cat >>"$PG_DIR/data/postgresql.conf" <<EOF
# bench/postgres.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/socket'
# pgbouncer keeps its server connections after its idle clients leave, so the gateway's idle
# clients need room of their own.
max_connections = $((2 * IDLE_CLIENTS + 3 * CLIENTS + 20))
shared_buffers = '256MB'
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = 'scram-sha-256'
log_min_messages = warning
EOF
cat >"$PG_DIR/data/pg_hba.conf" <<EOF
local all postgres trust
hostssl all $BENCH_USER 127.0.0.1/32 scram-sha-256
host all $BENCH_USER 127.0.0.1/32 scram-sha-256
EOF
(cd "$PG_DIR" && exec "${HARNESS[@]}" "${AS_USER[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data") >"$WORK/postgres.log" 2>&1 &
PG_PID=$!
su_psql() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -h "$PG_DIR/socket" -p "$PG_PORT" -U postgres "$@"; }
for i in $(seq 100); do
    kill -0 "$PG_PID" 2>/dev/null || die "postgres exited: $(tail -5 "$WORK/postgres.log")"
    su_psql -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
    [ "$i" -lt 100 ] || die "postgres did not start: $(tail -5 "$WORK/postgres.log")"
    sleep 0.1
done
su_psql -d postgres >/dev/null <<EOF
CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD';
CREATE DATABASE $DB OWNER $BENCH_USER;
EOF
if [ "$TLS" = 1 ]; then DIRECT_SSL=(PGSSLMODE=verify-full PGSSLROOTCERT="$CA"); else DIRECT_SSL=(PGSSLMODE=disable); fi
log "postgres (pid $PG_PID) on :$PG_PORT; pgbench -i -s $SCALE"
env PGPASSWORD="$BENCH_PASSWORD" "${DIRECT_SSL[@]}" "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" \
    -U "$BENCH_USER" "$DB" >"$WORK/pgbench-init.log" 2>&1 || die "pgbench -i failed: $(tail -5 "$WORK/pgbench-init.log")"
# A table with an email for the gateway's masking check.
su_psql -d "$DB" >/dev/null <<EOF
CREATE TABLE bench_contacts (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO bench_contacts VALUES (1, 'isaac.brock@example.com');
ALTER TABLE bench_contacts OWNER TO $BENCH_USER;
VACUUM ANALYZE;
EOF

# ---------------------------------------------------------------------------------------------
# 4. pgbouncer
# ---------------------------------------------------------------------------------------------
BOUNCER_PID=
if has_target pgbouncer; then
    own_dir "$WORK/pgbouncer"
    if [ "$TLS" = 1 ]; then BOUNCER_TLS="server_tls_sslmode = verify-full
server_tls_ca_file = $CA"; else BOUNCER_TLS="server_tls_sslmode = disable"; fi
    cat >"$WORK/pgbouncer/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = $((IDLE_CLIENTS + 2 * CLIENTS + 20))
default_pool_size = $((IDLE_CLIENTS + 2 * CLIENTS))
max_db_connections = 0
$BOUNCER_TLS
logfile = $WORK/pgbouncer/pgbouncer.log
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 600
EOF
    printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$WORK/pgbouncer/userlist.txt"
    chmod 644 "$WORK/pgbouncer/pgbouncer.ini" "$WORK/pgbouncer/userlist.txt"
    "${SUT[@]}" "${AS_USER[@]}" "$PGBOUNCER" "$WORK/pgbouncer/pgbouncer.ini" >"$WORK/pgbouncer/stdout.log" 2>&1 &
    BOUNCER_PID=$!
    PIDS+=("$BOUNCER_PID")
    for i in $(seq 100); do
        kill -0 "$BOUNCER_PID" 2>/dev/null || die "pgbouncer exited: $(tail -5 "$WORK/pgbouncer/"*.log)"
        port_busy "$BOUNCER_PORT" && break
        [ "$i" -lt 100 ] || die "pgbouncer did not start"
        sleep 0.1
    done
    log "pgbouncer (pid $BOUNCER_PID) on :$BOUNCER_PORT, session mode"
fi

# ---------------------------------------------------------------------------------------------
# 5. The gateway: issuer key, token, manifests
# ---------------------------------------------------------------------------------------------
GATEWAY_PID=
GATEWAY_THREADS=-
SESSIONS="$WORK/sessions"
if has_target gateway; then
    ISSUER=https://issuer.bench.agentgate.invalid/oauth2/bench
    AUDIENCE=api://agentgate-bench
    mkdir -p "$WORK/manifests" "$SESSIONS"
    openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/issuer-key.pem"
    AGENT_TOKEN=$(python3 "$BENCH/es256_token.py" "$WORK/issuer-key.pem" bench-1 "$ISSUER" "$AUDIENCE" \
        bench-agent 7200 "$WORK/jwks.json")
    JWKS=$(cat "$WORK/jwks.json")
    UPSTREAM_TLS=""
    if [ "$TLS" = 1 ]; then
        UPSTREAM_TLS="  tls:
    caSecretRef: {name: bench-postgres-ca, key: ca.crt}"
    fi
    cat >"$WORK/manifests/bench.yaml" <<EOF
# Generated by bench/postgres.sh.
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
    - name: postgres
      protocol: Postgres
      port: $GATEWAY_PORT
      address: 127.0.0.1
  recording:
    mode: Required
    storage:
      local:
        path: $SESSIONS
    retention: 1d
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
  name: $DB
  namespace: bench
spec:
  gatewayRef: {name: bench}
  type: Postgres
  endpoint: postgres://127.0.0.1:$PG_PORT/$DB
  credentials:
    scheme: PostgresPassword
    username: $BENCH_USER
    secretRef: {name: bench-postgres-password, key: password}
$UPSTREAM_TLS
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: bench-agent-pgbench
  namespace: bench
spec:
  subjects:
    identities: [bench-agent]
  connections: [$DB]
  rules:
    - name: pgbench
      action: Allow
      sql:
        statements: [Select, Update, Insert]
        tables: ["public.pgbench_*", "public.bench_contacts"]
    - name: transactions
      action: Allow
      sql:
        statements: [Transaction]
    - name: no-deletes-or-ddl
      action: Deny
      description: The benchmark agent never deletes or changes the schema.
      sql:
        statements: [Delete, Truncate, Ddl]
  masking:
    - columns: ["public.bench_contacts.email", "public.pgbench_accounts.filler"]
      strategy: Redact
    - detectors: [Email, CreditCard]
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
  name: bench-postgres-password
  namespace: bench
type: Opaque
stringData:
  password: $BENCH_PASSWORD
---
apiVersion: v1
kind: Secret
metadata:
  name: bench-postgres-ca
  namespace: bench
type: Opaque
stringData:
  ca.crt: |
$(sed 's/^/    /' "$CA")
EOF
    "$AGENTGATE" validate --manifests "$WORK/manifests" >"$WORK/validate.log" 2>&1 ||
        die "generated manifests do not validate: $(cat "$WORK/validate.log")"
    TOKIO_WORKER_THREADS=$GATEWAY_WORKERS AGENTGATE_LOG=${AGENTGATE_LOG:-info} "${SUT[@]}" "$AGENTGATE" run \
        --manifests "$WORK/manifests" --admin-addr "127.0.0.1:$ADMIN_PORT" >"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    for i in $(seq 100); do
        kill -0 "$GATEWAY_PID" 2>/dev/null || die "agentgate exited: $(tail -5 "$WORK/gateway.log")"
        if curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null | grep -q '^ready' && port_busy "$GATEWAY_PORT"; then
            break
        fi
        [ "$i" -lt 100 ] || die "agentgate not ready: $(tail -5 "$WORK/gateway.log")"
        sleep 0.1
    done
    GATEWAY_THREADS=$(find /proc/"$GATEWAY_PID"/task -mindepth 1 -maxdepth 1 | wc -l)
    log "agentgate (pid $GATEWAY_PID) on :$GATEWAY_PORT, TOKIO_WORKER_THREADS=$GATEWAY_WORKERS, $GATEWAY_THREADS threads"
fi

# ---------------------------------------------------------------------------------------------
# 6. Check the real path before measuring
# ---------------------------------------------------------------------------------------------
# target_env NAME: the environment and connection arguments of a client of target NAME.
target_env() {
    case "$1" in
        direct) echo "PGPASSWORD=$BENCH_PASSWORD ${DIRECT_SSL[*]} PGUSER=$BENCH_USER PGHOST=127.0.0.1 PGPORT=$PG_PORT" ;;
        pgbouncer) echo "PGPASSWORD=$BENCH_PASSWORD PGSSLMODE=disable PGUSER=$BENCH_USER PGHOST=127.0.0.1 PGPORT=$BOUNCER_PORT" ;;
        gateway) echo "PGPASSWORD=$AGENT_TOKEN PGSSLMODE=disable PGUSER=bench-agent PGHOST=127.0.0.1 PGPORT=$GATEWAY_PORT" ;;
    esac
}
# as_client NAME command...: runs the command with target NAME's connection settings.
as_client() {
    local name=$1
    shift
    local -a vars
    read -r -a vars <<<"$(target_env "$name")"
    env "${vars[@]}" "$@"
}
client_psql() { # target sql -> output (stderr too)
    as_client "$1" "$PSQL" -X -q -A -t -d "$DB" -c "$2" 2>&1
}
ACCOUNTS=$((SCALE * 100000))
for t in $TARGETS; do
    got=$(client_psql "$t" "SELECT count(*) FROM pgbench_accounts") || die "$t: $got"
    [ "$got" = "$ACCOUNTS" ] || die "$t: expected $ACCOUNTS accounts, got: $got"
done
if has_target gateway; then
    out=$(env PGPASSWORD="${AGENT_TOKEN}x" PGSSLMODE=disable "$PSQL" -X -q -A -t -h 127.0.0.1 -p "$GATEWAY_PORT" \
        -U bench-agent -d "$DB" -c 'SELECT 1' 2>&1) && die "agentgate accepted a wrong token: $out"
    out=$(client_psql gateway "DELETE FROM pgbench_history") && die "agentgate let a DELETE through: $out"
    grep -q 'no-deletes-or-ddl' <<<"$out" || log "warning: the DELETE's error does not name the rule: $out"
    out=$(client_psql gateway "SELECT email FROM bench_contacts") || die "agentgate: $out"
    grep -q 'isaac.brock@example.com' <<<"$out" && die "agentgate did not mask the email: $out"
    session=""
    for i in $(seq 50); do
        session=$(grep -l 'bench_contacts' "$SESSIONS"/*.jsonl 2>/dev/null | xargs -r grep -l '"session.end"' | head -1 || true)
        [ -n "$session" ] && break
        sleep 0.1
    done
    [ -n "$session" ] || die "no closed session recording of the masking check in $SESSIONS"
    grep -q 'isaac.brock@example.com' "$session" && die "the recording carries the unmasked email"
    "$AGENTGATE" sessions verify "$session" >"$WORK/verify.log" 2>&1 ||
        die "the recording does not verify: $(cat "$WORK/verify.log")"
    log "checked: agentgate refuses a wrong token, denies DELETE, masks ($out), records ($(basename "$session") verifies)"
fi
log "checked: $ACCOUNTS accounts through: $TARGETS"

if [ "${BENCH_HOLD:-0}" = 1 ]; then
    {
        for t in $TARGETS; do printf '%s_ENV=%q\n' "${t^^}" "$(target_env "$t")"; done
        printf 'DB=%q\nPGBENCH=%q\nBOUNCER_PID=%s\nGATEWAY_PID=%s\n' "$DB" "$PGBENCH" "${BOUNCER_PID:-}" "$GATEWAY_PID"
    } >"$WORK/targets.env"
    log "holding (BENCH_HOLD=1): targets in $WORK/targets.env; interrupt to stop"
    while sleep 1; do :; done
fi

# ---------------------------------------------------------------------------------------------
# 7. Measure
# ---------------------------------------------------------------------------------------------
cpu_ticks() { # utime+stime of a PID
    local f
    [ -n "$1" ] || {
        echo 0
        return
    }
    read -r -a f <"/proc/$1/stat" || {
        echo 0
        return
    }
    echo $((f[13] + f[14]))
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
sut_pid() {
    case "$1" in
        direct) echo "" ;;
        pgbouncer) echo "$BOUNCER_PID" ;;
        gateway) echo "$GATEWAY_PID" ;;
    esac
}
upstream_sessions() { # $1 application_name: the server's sessions with it, and how many use TLS
    su_psql -d postgres -c "SELECT count(*) || ' ' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a
        JOIN pg_stat_ssl s USING (pid) WHERE a.usename = '$BENCH_USER' AND a.application_name = '$1'"
}
printf 'SELECT 1;\n\\sleep %s s\n' 15 >"$WORK/idle.sql"

# memory NAME: RSS of the proxy alone, then with IDLE_CLIENTS idle clients, once the server has a
# session for each. The idle clients carry their own application_name, which both proxies pass
# on, so the count is theirs alone (pgbouncer keeps other clients' server connections pooled).
memory() {
    local name=$1 pid before after sessions i app=agentgate-bench-idle-$1
    pid=$(sut_pid "$name")
    [ -n "$pid" ] || return 0
    before=$(rss_kb "$pid")
    log "$name: $IDLE_CLIENTS idle clients"
    PGAPPNAME=$app as_client "$name" "${HARNESS[@]}" "$PGBENCH" -n -c "$IDLE_CLIENTS" -j 1 -t 1 -f "$WORK/idle.sql" \
        "$DB" >"$WORK/$name.idle.log" 2>&1 &
    local bench=$!
    sessions="0 0"
    for i in $(seq 100); do
        sessions=$(upstream_sessions "$app")
        [ "${sessions%% *}" -ge "$IDLE_CLIENTS" ] && break
        sleep 0.1
    done
    sleep 1
    after=$(rss_kb "$pid")
    sessions=$(upstream_sessions "$app")
    wait "$bench" || die "$name: idle clients failed: $(tail -5 "$WORK/$name.idle.log")"
    echo "$before $after $sessions" >"$WORK/$name.memory"
}

# run NAME MODE args...: one pgbench run with per-transaction logging, plus the proxy's CPU. ROUND
# (global) names the output files.
run() {
    local name=$1 mode=$2.$ROUND pid c0 c1 t0 t1
    shift 2
    pid=$(sut_pid "$name")
    rm -rf "$WORK/$name.$mode.d"
    mkdir -p "$WORK/$name.$mode.d"
    log "$name: $mode: pgbench $*"
    c0=$(cpu_ticks "$pid") t0=$(date +%s.%N)
    as_client "$name" "${HARNESS[@]}" "$PGBENCH" -n "$@" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
        -l --log-prefix="$WORK/$name.$mode.d/tx" "$DB" >"$WORK/$name.$mode.txt" 2>&1 ||
        die "$name $mode: pgbench failed: $(tail -5 "$WORK/$name.$mode.txt")"
    c1=$(cpu_ticks "$pid") t1=$(date +%s.%N)
    echo "$((c1 - c0)) $t0 $t1" >"$WORK/$name.$mode.cpu"
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG%% *}" 'BEGIN {exit !(l > 0.5)}'; then
    log "warning: load average $LOADAVG: other work on this machine will skew the figures"
fi
for t in $TARGETS; do memory "$t"; done
for ROUND in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -eq 1 ] || log "round $ROUND of $ROUNDS"
    for t in $TARGETS; do
        log "$t: warm-up ${WARMUP}s"
        as_client "$t" "${HARNESS[@]}" "$PGBENCH" -n -S -c "$CLIENTS" -j "$THREADS" -T "$WARMUP" "$DB" >/dev/null 2>&1 ||
            die "$t: warm-up failed"
        run "$t" simple -S
        run "$t" prepared -S -M prepared
        run "$t" rate -S -R "$RATE"
        run "$t" rate_prepared -S -M prepared -R "$RATE"
    done
done
if has_target gateway && grep -q ' ERROR ' "$WORK/gateway.log"; then
    log "warning: agentgate logged errors (see $WORK/gateway.log with BENCH_KEEP=1)"
fi

# ---------------------------------------------------------------------------------------------
# 8. Report
# ---------------------------------------------------------------------------------------------
mkdir -p "$RESULTS"
OUT="$RESULTS/postgres-$(date -u +%Y-%m-%d).md"
[ -e "$OUT" ] && OUT="$RESULTS/postgres-$(date -u +%Y-%m-%d-%H%M%S).md"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- gateway crds 2>/dev/null || COMMIT="$COMMIT+changes"
CLK_TCK=$(getconf CLK_TCK)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
KERNEL=$(uname -r)
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
BOUNCER_VERSION=$("$PGBOUNCER" --version | awk 'NR==1 {print $2}')
export IDLE WORK TARGETS DURATION ROUNDS CLIENTS THREADS RATE SCALE IDLE_CLIENTS PINNING CLK_TCK COMMIT NCPU \
    GATEWAY_WORKERS GATEWAY_THREADS TLS CPU_MODEL KERNEL PG_VERSION BOUNCER_VERSION LOADAVG
python3 - "$OUT" <<'PY'
import datetime, glob, os, re, sys

env = os.environ
work = env["WORK"]
targets = env["TARGETS"].split()
tck = int(env["CLK_TCK"])
rate = int(env["RATE"])
labels = {"direct": "postgres direct", "pgbouncer": "pgbouncer (session)", "gateway": "agentgate"}
problems = []


def percentiles(name, mode):
    lat = []
    for path in glob.glob(f"{work}/{name}.{mode}.d/tx*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[2] != "skipped":
                    lat.append(int(parts[2]))
    if not lat:
        sys.exit(f"no per-transaction log for {name} {mode}")
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    return pick(0.50), pick(0.99), len(lat)


def summary(name, mode):
    text = open(f"{work}/{name}.{mode}.txt").read()
    m = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M)
    if not m:
        sys.exit(f"no tps in pgbench output for {name} {mode}:\n{text}")
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    if failed and int(failed.group(1)):
        problems.append(f"{name} {mode}: {failed.group(1)} failed transactions")
    done = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    ticks, t0, t1 = open(f"{work}/{name}.{mode}.cpu").read().split()
    n = int(done.group(1)) if done else 0
    p50, p99, logged = percentiles(name, mode)
    return {"tps": float(m.group(1)), "p50": p50, "p99": p99, "n": n,
            "cpu_us": int(ticks) / tck * 1e6 / max(n, 1),
            "cpu_pct": 100 * int(ticks) / tck / (float(t1) - float(t0))}


rounds = int(env["ROUNDS"])
MODES = ("simple", "prepared", "rate", "rate_prepared")


def median(values):
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


by_round = {t: [{mode: summary(t, f"{mode}.{r}") for mode in MODES} for r in range(1, rounds + 1)] for t in targets}
# Each figure is its median over the rounds (with one round, that round's figure).
rows = {t: {mode: {k: median([run[mode][k] for run in runs]) for k in runs[0][mode]} for mode in MODES}
        for t, runs in by_round.items()}
memory = {}
for t in targets:
    path = f"{work}/{t}.memory"
    if os.path.exists(path):
        before, after, sessions, tls_sessions = open(path).read().split()
        memory[t] = (int(before), int(after), int(sessions), int(tls_sessions))
        if int(sessions) < int(env["IDLE_CLIENTS"]):
            problems.append(f"{t}: only {sessions} of {env['IDLE_CLIENTS']} idle clients had a server session when "
                            "its memory was read")

d = rows["direct"]
us = lambda v: f"{v:,.0f}"
lines = [
    f"| target | TPS -S | p50 / p99 (µs) | TPS -S -M prepared | p50 / p99 (µs) | TPS at -R {rate:,} "
    f"| p50 / p99 at {rate:,}/s (µs) | added p50 at {rate:,}/s (µs) | TPS at -R {rate:,} -M prepared "
    f"| p50 / p99 (µs) | added p50 (µs) | proxy CPU per txn (-S) | RSS idle → +{env['IDLE_CLIENTS']} idle clients |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for t in targets:
    r = rows[t]
    added = "—" if t == "direct" else us(r["rate"]["p50"] - d["rate"]["p50"])
    added_prepared = "—" if t == "direct" else us(r["rate_prepared"]["p50"] - d["rate_prepared"]["p50"])
    cpu = "—" if t == "direct" else f"{r['simple']['cpu_us']:.1f} µs ({r['simple']['cpu_pct']:.0f}%)"
    if t in memory:
        before, after, sessions, _ = memory[t]
        per = (after - before) / int(env["IDLE_CLIENTS"])
        mem = f"{before / 1024:,.1f} → {after / 1024:,.1f} MiB ({per:,.1f} KiB/client)"
    else:
        mem = "—"
    lines.append(
        f"| {labels[t]} | {r['simple']['tps']:,.0f} | {us(r['simple']['p50'])} / {us(r['simple']['p99'])} "
        f"| {r['prepared']['tps']:,.0f} | {us(r['prepared']['p50'])} / {us(r['prepared']['p99'])} "
        f"| {r['rate']['tps']:,.0f} | {us(r['rate']['p50'])} / {us(r['rate']['p99'])} | {added} "
        f"| {r['rate_prepared']['tps']:,.0f} | {us(r['rate_prepared']['p50'])} / {us(r['rate_prepared']['p99'])} "
        f"| {added_prepared} | {cpu} | {mem} |")
table = "\n".join(lines)

notes = []
for t, (before, after, sessions, tls_sessions) in memory.items():
    notes.append(f"- {labels[t]}: {sessions} upstream sessions of the idle clients (their application_name) when read, "
                 f"{tls_sessions} of them over TLS")
if "pgbouncer" in rows and "gateway" in rows:
    g, b = rows["gateway"], rows["pgbouncer"]
    for mode, what in (("simple", "-S"), ("prepared", "-S -M prepared")):
        # Ratios within a round compare runs minutes apart; their median is the run's ratio.
        each = [gr[mode]["tps"] / br[mode]["tps"] for gr, br in zip(by_round["gateway"], by_round["pgbouncer"])]
        rounds_note = f" (rounds: {', '.join(f'{x:.2f}' for x in each)})" if rounds > 1 else ""
        notes.append(f"- gateway/pgbouncer TPS ({what}, closed loop): **{median(each):.2f}**{rounds_note}")
    for mode, what in (("rate", ""), ("rate_prepared", ", -M prepared")):
        g_added = g[mode]["p50"] - d[mode]["p50"]
        b_added = b[mode]["p50"] - d[mode]["p50"]
        ratio = g_added / b_added if b_added > 0 else float("inf")
        notes.append(f"- gateway/pgbouncer added p50 at {rate:,}/s{what}: **{ratio:.2f}** ({us(g_added)} µs vs "
                     f"{us(b_added)} µs); gateway p99 {us(g[mode]['p99'])} µs (target ≤ 1,500)")
    notes.append(f"- gateway/pgbouncer CPU per transaction (-S): {g['simple']['cpu_us'] / b['simple']['cpu_us']:.2f}")
    if "gateway" in memory and "pgbouncer" in memory:
        per = lambda m: (m[1] - m[0]) / int(env["IDLE_CLIENTS"])
        pg_, gw = per(memory["pgbouncer"]), per(memory["gateway"])
        notes.append(f"- memory per idle client: agentgate {gw:,.1f} KiB, pgbouncer {pg_:,.1f} KiB")
for t in targets:
    for mode, what in (("rate", ""), ("rate_prepared", " (-M prepared)")):
        if abs(rows[t][mode]["tps"] - rate) > 0.05 * rate:
            problems.append(f"{t} fixed rate{what} achieved {rows[t][mode]['tps']:,.0f} TPS of {rate:,}")
if problems:
    notes.append("- **problems during the run:** " + "; ".join(problems))

tls = "TLS (verify-full) from proxies and direct clients to postgres" if env["TLS"] == "1" else "plaintext everywhere"
setup = [
    f"- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, agentgate {env['COMMIT']}, "
    f"{env['NCPU']} CPUs ({env['CPU_MODEL']}), Linux {env['KERNEL']}, {rounds} round(s)"
    + (" interleaved, each figure its median over the rounds" if rounds > 1 else ""),
    f"- PostgreSQL {env['PG_VERSION']} (fsync off, shared_buffers 256MB), pgbench scale {env['SCALE']}"
    + (f"; pgbouncer {env['BOUNCER_VERSION']} (pool_mode session, 1 process)" if "pgbouncer" in targets else "")
    + (f"; agentgate with TOKIO_WORKER_THREADS={env['GATEWAY_WORKERS']} ({env['GATEWAY_THREADS']} threads in all)"
       if "gateway" in targets else ""),
    f"- pgbench -c {env['CLIENTS']} -j {env['THREADS']} -T {env['DURATION']} for every target; clients to proxies "
    f"in plaintext on loopback; {tls}",
    *(["- agentgate: token as the password (ES256, static JWKS), AccessPolicy decision per statement, "
       "PostgresPassword (SCRAM) to the server, masking (columns + Email/CreditCard detectors), recording mode Required"]
      if "gateway" in targets else []),
    f"- pinning: {env['PINNING']}; {env['IDLE']}",
    f"- load average when the run started: {env['LOADAVG']}",
]
doc = ("# PostgreSQL benchmark: agentgate vs pgbouncer vs direct\n\n" + "\n".join(setup) + "\n\n" + table
       + "\n\n" + "\n".join(notes) + "\n\nLatency percentiles are from pgbench's per-transaction log; at a fixed "
       "rate they are counted from each transaction's scheduled start.\n")
print()
print(table)
print()
print("\n".join(notes))
with open(sys.argv[1], "w") as f:
    f.write(doc)
print(f"\nwritten to {os.path.relpath(sys.argv[1])}")
if problems:
    sys.exit(1)
PY
