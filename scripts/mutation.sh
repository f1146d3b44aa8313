#!/usr/bin/env bash
# Mutation testing of the privacy- and crypto-critical modules (docs/testing.md), with
# mutmut 3.8.1: each mutant is a small change to one function (an operator, a constant, a
# string); the fast tests that exercise that function run against it, and a mutant they do
# not fail "survives". Not part of CI: on 2 cores the whole set (4,620 mutants) takes about
# an hour. Configuration: [tool.mutmut] in pyproject.toml.
#
#   scripts/mutation.sh                              # every configured module
#   scripts/mutation.sh "privacy.secagg.shamir*"     # mutants whose names match
#   scripts/mutation.sh "strategies.central_dp*" "privacy.secagg.field*"
#
# It prints the survivors with their diffs and a score per module: killed / (killed +
# survived); timeouts count as killed, "no tests" (a mutant no selected test reaches) as
# survived. mutmut keeps its results in mutants/: a second call without a pattern runs only
# the mutants with no result yet; a pattern re-runs every mutant it matches (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MUTMUT_VERSION=3.8.1
if ! "$PY" -c "import mutmut, importlib.metadata as m; assert m.version('mutmut') == '$MUTMUT_VERSION'" 2>/dev/null; then
  "$PY" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi
export OMP_NUM_THREADS=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Every mutant runs its tests in a new process: the independent reference figures (dp-accounting's
# own accountants, which no mutant can change) are kept here between them (tests/reference_memo.py).
export FEDMSR_REFERENCE_CACHE="$PWD/mutants/.reference-cache"
.venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$@" || true
.venv/bin/mutmut results --all true > mutants/results.txt
"$PY" - "$@" <<'PY'
import fnmatch, re, subprocess, sys
from collections import Counter
patterns = sys.argv[1:] or ["*"]
rows = []
for line in open("mutants/results.txt"):
    name, _, status = line.strip().rpartition(": ")
    if name and any(fnmatch.fnmatch(name, p) for p in patterns):
        rows.append((re.sub(r"\.x[_ǁ].*", "", name), name, status))
by_module: dict[str, Counter] = {}
for module, _, status in rows:
    by_module.setdefault(module, Counter())[status] += 1
print(f"{'module':40} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'unrun':>6}  score")
for module, c in sorted(by_module.items()):
    killed = c["killed"] + c["timeout"]
    survived = c["survived"] + c["no tests"]
    score = f"{killed / (killed + survived):.1%}" if killed + survived else "-"
    print(f"{module:40} {sum(c.values()):8} {killed:7} {c['survived']:9} {c['no tests']:9} "
          f"{c['not checked']:6}  {score}")
for _, name, status in rows:
    if status in ("survived", "no tests"):
        print(f"\n--- {status}: {name}")
        print(subprocess.run([".venv/bin/mutmut", "show", name], capture_output=True,
                             text=True).stdout)
PY
