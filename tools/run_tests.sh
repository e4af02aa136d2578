#!/usr/bin/env bash
# Run mmsoft's test suite (the README's test command). Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv: run 'bash tools/install.sh' first" >&2; exit 1; }
"$PY" -m ruff check mmsoft tools tests configs
exec "$PY" -m pytest tests "$@"
