#!/usr/bin/env bash
# bench/approvals.sh — decision -> held operation released: standalone mode (target p99 <= 50 ms)
# and Kubernetes mode (target p99 <= 250 ms).
#
# Standalone:
# Starts, on 127.0.0.1 only, a trivial upstream (python3 http.server) and `agentgate run` with a
# RequireApproval rule in Hold mode on PUT; then, BENCH_ITERATIONS times, sends a held request,
# finds its ApprovalRequest through the admin API, approves it there, and measures from the
# approve call to the held request's response (bench/approvals.py). Tokens are ES256 JWTs minted
# by bench/es256_token.py against a static JWKS: one for the agent, one for the approver (its own
# AgentIdentity). Writes bench/results/approvals-<date>.md. Builds the release binary into
# CARGO_TARGET_DIR (default target-bench) unless BENCH_SKIP_BUILD=1.
#
# Kubernetes mode (BENCH_KUBERNETES_ROUNDS, default 100; 0 skips it): the ignored end-to-end test
# `approvals_kubernetes::kubernetes_decision_to_release_latency` runs the operator and the gateway
# in Kubernetes mode against the API emulator (debug binaries, as the end-to-end tests build them),
# holds a DELETE, writes the decision with `kubectl patch`, and times from the start of kubectl to
# the held response: kubectl's own start-up, the operator's evaluation and the gateway's watch.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
ITERATIONS=${BENCH_ITERATIONS:-200}
PORT_BASE=${BENCH_PORT_BASE:-18380}
UPSTREAM_PORT=$PORT_BASE
GATEWAY_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench}
AGENTGATE=${AGENTGATE_BIN:-$CARGO_TARGET_DIR/release/agentgate}
log() { echo "[bench] $*" >&2; }

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${AGENTGATE_BIN:-}" ]; then
    log "building agentgate (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -p agentgate --bin agentgate >&2)
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

ISSUER=https://bench-issuer.example
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/key.pem"
AGENT_TOKEN=$(python3 "$BENCH/es256_token.py" "$WORK/key.pem" k1 "$ISSUER" agentgate bench-agent 7200 "$WORK/jwks.json")
APPROVER_TOKEN=$(python3 "$BENCH/es256_token.py" "$WORK/key.pem" k1 "$ISSUER" agentgate bench-approver 7200 "$WORK/jwks.json")
JWKS=$(cat "$WORK/jwks.json")

mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/all.yaml" <<YAML
apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {name: bench, namespace: bench}
spec:
  listeners:
    - {name: http, protocol: HTTP, port: $GATEWAY_PORT, address: 127.0.0.1}
  recording: {mode: Required, storage: {local: {path: "$WORK/sessions"}}}
---
apiVersion: v1
kind: Secret
metadata: {name: jwks, namespace: bench}
stringData: {jwks: '$JWKS'}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {name: bench-agent, namespace: bench}
spec:
  issuer: $ISSUER
  audiences: [agentgate]
  match: {claims: {client_id: bench-agent}}
  keys: {secretRef: {name: jwks, key: jwks}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {name: approvers, namespace: bench}
spec:
  issuer: $ISSUER
  audiences: [agentgate]
  match: {claims: {client_id: bench-approver}}
  groups: {static: [approvers]}
  keys: {secretRef: {name: jwks, key: jwks}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {name: api, namespace: bench}
spec:
  gatewayRef: {name: bench}
  type: HTTP
  endpoint: http://127.0.0.1:$UPSTREAM_PORT
  route: {pathPrefix: /api}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: held, namespace: bench}
spec:
  subjects: {identities: [bench-agent]}
  connections: [api]
  rules:
    - name: held
      action: RequireApproval
      http: {methods: [PUT]}
      approval: {approvers: {groups: [approvers]}, mode: Hold, timeout: 60s}
YAML

python3 - "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)
AGENTGATE_LOG=warn "$AGENTGATE" run --manifests "$WORK/manifests" --admin-addr "127.0.0.1:$ADMIN_PORT" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }

log "measuring $ITERATIONS approvals"
RESULT=$(python3 "$BENCH/approvals.py" "http://127.0.0.1:$GATEWAY_PORT/api" "http://127.0.0.1:$ADMIN_PORT" \
    "$AGENT_TOKEN" "$APPROVER_TOKEN" "$ITERATIONS")
echo "$RESULT"
OUT="$BENCH/results/approvals-$(date -u +%Y-%m-%d).md"
{
    echo "# Approval decision -> held request released (standalone)"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), agentgate $(cd "$ROOT" && git rev-parse --short HEAD), $(nproc) CPUs"
    echo "- $ITERATIONS held PUT requests through the gateway, each approved through the admin API; time from the approve call to the held response"
    echo "- store on local disk (fsync per change), recording Required"
    echo
    echo "Result: \`$RESULT\` (target p99 <= 50 ms)"
} >"$OUT"
K8S_ROUNDS=${BENCH_KUBERNETES_ROUNDS:-100}
if [ "$K8S_ROUNDS" != 0 ]; then
    log "measuring $K8S_ROUNDS approvals in Kubernetes mode"
    K8S_RESULT=$(cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target" AGENTGATE_APPROVAL_ROUNDS="$K8S_ROUNDS" \
        cargo nextest run -p agentgate-e2e --test approvals_kubernetes --run-ignored only --no-capture \
        kubernetes_decision_to_release_latency 2>&1 | grep -E "^kubernetes approvals:")
    echo "$K8S_RESULT"
    {
        echo
        echo "# Approval decision -> held request released (Kubernetes mode)"
        echo
        echo "- operator and gateway (debug builds) against the API emulator; decision by \`kubectl patch\`"
        echo
        echo "Result: \`$K8S_RESULT\` (target p99 <= 250 ms)"
    } >>"$OUT"
fi
log "written to ${OUT#"$ROOT"/}"
