#!/usr/bin/env bash
# bench/instructions.sh — user-space instructions per HTTP request through the gateway, counted by
# valgrind's callgrind: repeatable where timings on a shared virtual machine are not. A benchmark,
# not a CI gate.
#
# The set-up is bench/http.sh's (same upstream, manifests, token, masking and recording in mode
# Required), held with BENCH_HOLD=1 while the gateway runs under callgrind. Two held runs send
# BENCH_FEW and then BENCH_MANY requests (oha -n N -c 32); the difference of the two totals divided
# by BENCH_MANY - BENCH_FEW is the cost of one request, start-up and shut-down cancelled out. It
# prints that total, the part spent in SHA-256 (valgrind does not run SHA-NI, so that part is
# several times what the hardware spends), and the functions that cost most per request.
#
# Needs valgrind (installed with apt-get when missing) and what http.sh needs (oha from its run).
# Usage:  bash bench/instructions.sh
# Environment (all optional): BENCH_FEW=1000 BENCH_MANY=3000 BENCH_TOP=25, AGENTGATE_BIN (default:
# target/release/agentgate, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FEW=${BENCH_FEW:-1000}
MANY=${BENCH_MANY:-3000}
TOP=${BENCH_TOP:-25}
AGENTGATE=${AGENTGATE_BIN:-$ROOT/target/release/agentgate}
OHA="$ROOT/bench/.tools/bin/oha"

log() { printf '[instructions] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[ "$MANY" -gt "$FEW" ] || die "BENCH_MANY must exceed BENCH_FEW"
if ! command -v valgrind >/dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
if [ ! -x "$AGENTGATE" ]; then
    (cd "$ROOT" && cargo build --release -q -p agentgate --bin agentgate)
fi
[ -x "$OHA" ] || die "oha is missing: run bash bench/http.sh once (it installs oha into bench/.tools)"

OUT=$(mktemp -d "${TMPDIR:-/tmp}/agentgate-instructions.XXXXXX")
HOLD_PID=
cleanup() {
    [ -z "$HOLD_PID" ] || kill -TERM "$HOLD_PID" 2>/dev/null || true
    rm -rf "$OUT"
}
trap cleanup EXIT

# The gateway under callgrind for `run`; everything else (validate, sessions verify) as it is.
cat >"$OUT/agentgate" <<WRAP
#!/usr/bin/env bash
if [ "\$1" = run ]; then
    exec valgrind --tool=callgrind --callgrind-out-file="\$CALLGRIND_OUT" "$AGENTGATE" "\$@"
fi
exec "$AGENTGATE" "\$@"
WRAP
chmod +x "$OUT/agentgate"

# held N: one held set-up, N requests, then the gateway stopped and its profile written.
held() {
    local n=$1 work i
    export CALLGRIND_OUT="$OUT/callgrind.$n"
    TMPDIR="$OUT" BENCH_HOLD=1 BENCH_SKIP_BUILD=1 AGENTGATE_BIN="$OUT/agentgate" \
        bash "$ROOT/bench/http.sh" >"$OUT/hold.$n.log" 2>&1 &
    HOLD_PID=$!
    for i in $(seq 240); do
        work=$(find "$OUT" -maxdepth 2 -name targets.env -path '*agentgate-bench.*' 2>/dev/null | head -1)
        [ -n "$work" ] && break
        kill -0 "$HOLD_PID" 2>/dev/null || die "set-up failed: $(tail -3 "$OUT/hold.$n.log")"
        sleep 0.5
    done
    [ -n "$work" ] || die "set-up did not finish: $(tail -3 "$OUT/hold.$n.log")"
    # shellcheck disable=SC1090 # written by http.sh
    source "$work"
    log "$n requests"
    "$OHA" --no-tui -n "$n" -c 32 -H "$AGENT_AUTH" "$GATEWAY_URL" >"$OUT/oha.$n.txt"
    grep -q "\[200\] $n responses" "$OUT/oha.$n.txt" || die "not every request answered 200: $(cat "$OUT/oha.$n.txt")"
    kill -TERM "$HOLD_PID"
    wait "$HOLD_PID" 2>/dev/null || true
    HOLD_PID=
    rm -f "$work"
    for i in $(seq 120); do
        [ -s "$CALLGRIND_OUT" ] && ! pgrep -f "callgrind-out-file=$CALLGRIND_OUT" >/dev/null && break
        sleep 0.5
    done
    [ -s "$CALLGRIND_OUT" ] || die "no callgrind profile for $n requests"
}
held "$FEW"
held "$MANY"

python3 - "$OUT/callgrind.$FEW" "$OUT/callgrind.$MANY" "$((MANY - FEW))" "$TOP" <<'PY'
import re, subprocess, sys

def load(path):
    out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if m:
            costs[m.group(2).split(" [")[0].strip()] = int(m.group(1).replace(",", ""))
    return costs

few, many, n, top = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per = {k: (v - few.get(k, 0)) / n for k, v in many.items()}
total = per.pop("PROGRAM TOTALS")
sha = sum(v for k, v in per.items() if "sha256" in k or "sha2::" in k)
print(f"instructions per request: {total:,.0f}; SHA-256 (software under valgrind) {sha:,.0f}; without it {total - sha:,.0f}")
for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v:12,.0f}  {k}")
PY
