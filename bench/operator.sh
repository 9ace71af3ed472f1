#!/usr/bin/env bash
# Operator benchmarks (not a CI gate):
#  1. compile scale: criterion bench of one gateway's compile at 500/100 and 5,000 policies /
#     1,000 identities (target: under 1 s);
#  2. propagation: CR change -> enforced by a running gateway in Kubernetes mode, through the
#     operator and the API emulator, over many changes (target: p99 <= 2 s). Debug binaries, as the
#     end-to-end tests build them; the time includes kubectl's own start-up and request.
# Usage: bash bench/operator.sh [rounds]   (default 50 rounds = 100 changes)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-50}"
out="bench/results/operator-$(date -u +%Y-%m-%d).md"
echo "==> compile scale (criterion, release)"
CARGO_TARGET_DIR=target-bench cargo bench -p agentgate-operator --bench compile 2>&1 | tee /tmp/agentgate-operator-compile.txt | grep -E "^operator_compile|time:"
echo "==> propagation ($rounds rounds, $((rounds * 2)) changes)"
AGENTGATE_PROPAGATION_ROUNDS="$rounds" cargo nextest run -p agentgate-e2e --test operator \
  --run-ignored only --no-capture propagation_latency 2>&1 | tee /tmp/agentgate-operator-propagation.txt | grep -E "^propagation:"
{
  echo "# Operator benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores; command: bash bench/operator.sh $rounds"
  echo
  echo '## Compile one gateway (criterion, release)'
  echo '```'
  grep -E "^operator_compile|time:" /tmp/agentgate-operator-compile.txt
  echo '```'
  echo
  echo '## Propagation: kubectl apply/delete of an AccessPolicy -> enforced by the running gateway'
  echo '```'
  grep -E "^propagation:" /tmp/agentgate-operator-propagation.txt
  echo '```'
} > "$out"
echo "wrote $out"
