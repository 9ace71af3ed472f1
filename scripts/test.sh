#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then formatting, lints and every
# test (unit, integration, end-to-end) with cargo nextest. Run from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v python3 >/dev/null || need_apt+=(python3)
# PostgreSQL tests: the server binaries (initdb, postgres; the harness takes the newest
# /usr/lib/postgresql/*/bin), psql and pgbench, sqlsmith (the differential classification test),
# and libclang to build the pg_query crate (bindgen).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
{ command -v psql && command -v pgbench; } >/dev/null || need_apt+=(postgresql-client)
command -v sqlsmith >/dev/null || need_apt+=(sqlsmith)
compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || need_apt+=(libclang-dev)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# Chart tests (tests/tests/chart.rs): Lua for the Argo CD health checks, pip for the Helm engine.
command -v lua5.4 >/dev/null || need_apt+=(lua5.4)
python3 -c 'import helm_python' 2>/dev/null || python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if [[ " ${need_apt[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.d/agentgate-tests.conf ]; then
    # The tests start their own servers; the package's default cluster (a service on :5432) is
    # not wanted, so postgresql-common is told not to create it.
    "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/agentgate-tests.conf >/dev/null
  fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! python3 -c 'import helm_python' 2>/dev/null; then
  # The chart tests render and lint with Helm's own Go SDK, which this PyPI package bundles.
  echo "==> installing helm-python-sdk (pip)"
  python3 -m pip install --quiet helm-python-sdk==0.2.2 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages helm-python-sdk==0.2.2
fi
if ! python3 -c 'import moto.server, flask, flask_cors' 2>/dev/null; then
  # The S3-compatible store that recordings are shipped to in tests/tests/recording_s3.rs.
  echo "==> installing moto[server] (pip)"
  python3 -m pip install --quiet 'moto[server]==5.2.1' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]==5.2.1'
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> installing the test OIDC provider (npm ci in tests/oidc)"
npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v cargo-deny >/dev/null; then
  echo "==> cargo deny check"
  cargo deny check
fi
echo "==> building binaries used by the end-to-end tests"
cargo build --workspace --bins --locked
echo "==> cargo nextest run"
# The binaries were just built: test processes need not each ask cargo (0.45 s apiece).
AGENTGATE_E2E_BINARIES_BUILT=1 cargo nextest run --workspace --locked --profile ci
