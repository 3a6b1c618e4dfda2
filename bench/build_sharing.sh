#!/usr/bin/env bash
# Builds that share cores (issue 16, item 2; docs/PERFORMANCE.md "Builds that share cores").
#
# Times `service build-index` on a small sample catalog: one build alone, two equal builds side by
# side, the same two with OMP_WAIT_POLICY=PASSIVE exported (what builds do by themselves since the
# CPU budget; the row to compare older code with), and one build under `taskset -c 0`;
# prints a table of wall seconds (and the training seconds from each build's report) with each
# case's ratio to the build alone. Fair sharing of the cores costs 2-2.5x for two builds; much more
# means oversubscribed thread pools.
#
#   bench/build_sharing.sh [--items 300] [--epochs 1] [--venv PATH] [--work DIR]
#                          [--cases alone,pair,pair-passive,taskset] [-- more build-index options]
#
#   --venv PATH   the virtualenv whose `service` runs the builds (default: this checkout's .venv);
#                 point it at another checkout's venv (installed with `pip install -e`) to time
#                 its code, e.g. the commit before the CPU budget, on the same machine
#   --work DIR    scratch folder: sample catalog, artifacts, logs (default: a fresh temporary one,
#                 removed at the end unless --keep)
#   after --       passed to every build-index, e.g. `-- --threads 1` (this checkout's code only)
#
# Run it on a quiet machine (it reports the load average before and after): each build of the
# 300-item sample takes a minute or two alone on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
items=300
epochs=1
venv="$here/.venv"
work=""
keep=0
cases="alone,pair,pair-passive,taskset"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --items) items="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --cases) cases="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build_sharing.sh: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done

service="$venv/bin/service"
[ -x "$service" ] || { echo "build_sharing.sh: no $service (give --venv)" >&2; exit 2; }
python="$venv/bin/python"
if [ -z "$work" ]; then
  work="$(mktemp -d -t build-sharing-XXXXXX)"
  [ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/logs"
logs="$work/logs"
cd "$work"  # never the checkout: `service` must import the venv's code, not the current folder's

checkout="$("$python" -c 'import pathlib, service; print(pathlib.Path(service.__file__).resolve().parents[1])')"
commit="$(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$checkout" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+changes" || true)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

echo "sample catalog: $items items -> $work/sample" >&2
"$service" sample-catalog --out "$work/sample" --items "$items" > "$logs/sample.json"

# build NAME [prefix command...]: one build-index into its own artifact folder (its own image and
# text caches: every build does the same work); writes NAME.json (report), NAME.err, NAME.time
build() {
  local name="$1"; shift
  local t0 t1 rc=0
  t0="$(date +%s.%N)"
  "$@" "$service" build-index --catalog "$work/sample/catalog.jsonl" --artifacts "$work/art-$name" \
    --interactions "$work/sample/interactions.jsonl" --judgments "$work/sample/judgments.jsonl" \
    --epochs "$epochs" --device cpu --no-progress ${extra[@]+"${extra[@]}"} > "$logs/$name.json" 2> "$logs/$name.err" || rc=$?
  t1="$(date +%s.%N)"
  echo "$rc $t0 $t1" > "$logs/$name.time"
  [ "$rc" = 0 ] || echo "build $name failed (rc $rc): see $logs/$name.err" >&2
}

run_case() {
  case "$1" in
    alone) echo "case alone: one build" >&2; build alone ;;
    pair) echo "case pair: two builds side by side" >&2
      build pair-a & build pair-b & wait ;;
    pair-passive) echo "case pair-passive: two builds side by side, OMP_WAIT_POLICY=PASSIVE" >&2
      build pair-passive-a env OMP_WAIT_POLICY=PASSIVE & build pair-passive-b env OMP_WAIT_POLICY=PASSIVE & wait ;;
    taskset)
      if command -v taskset > /dev/null; then echo "case taskset: one build on CPU 0" >&2; build taskset taskset -c 0
      else echo "case taskset: no taskset on this machine, skipped" >&2; fi ;;
    *) echo "build_sharing.sh: unknown case $1" >&2; exit 2 ;;
  esac
}
IFS=',' read -r -a wanted <<< "$cases"
for c in "${wanted[@]}"; do run_case "$c"; done

"$python" - "$logs" "$commit$dirty" "$load_before" "$items" "$epochs" "${extra[*]:-}" <<'EOF'
import json, os, sys
from pathlib import Path

logs, commit, load_before, items, epochs, extra = Path(sys.argv[1]), *sys.argv[2:]
try:
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
except OSError:
    load_after = "n/a"


def report(name):
    """-> (wall s, train s, budget line) of one build, or None when it did not run / failed."""
    t = logs / f"{name}.time"
    if not t.exists():
        return None
    rc, t0, t1 = t.read_text().split()
    if rc != "0":
        return "failed"
    text = (logs / f"{name}.json").read_text()
    timings = json.loads(text[text.index("{"):]).get("timings", {})
    budget = next((line.split("cpu budget: ", 1)[1] for line in (logs / f"{name}.err").read_text().splitlines()
                   if "cpu budget: " in line), "(no cpu budget line: code before it)")
    return float(t1) - float(t0), timings.get("train_s"), budget


cases = [("alone", ["alone"]), ("2 side by side", ["pair-a", "pair-b"]),
         ("2 side by side, OMP_WAIT_POLICY=PASSIVE", ["pair-passive-a", "pair-passive-b"]),
         ("alone, taskset -c 0", ["taskset"])]
alone = report("alone")
base = alone[0] if isinstance(alone, tuple) else None
print(f"\nbuild-index, {items}-item sample, {epochs} epoch(s), cpu; code {commit}; {os.cpu_count()} CPUs, "
      f"affinity {len(os.sched_getaffinity(0))}; load {load_before} -> {load_after}"
      + (f"; extra options: {extra}" if extra else ""))
print("\n| case | wall s (each build) | train s (each) | slowest / alone | cpu budget (each build's log) |")
print("|---|---|---|---|---|")
for label, names in cases:
    got = [report(n) for n in names]
    if all(g is None for g in got):
        continue
    if any(not isinstance(g, tuple) for g in got):
        print(f"| {label} | failed | | | |")
        continue
    walls = " / ".join(f"{g[0]:.1f}" for g in got)
    trains = " / ".join("n/a" if g[1] is None else f"{g[1]:.1f}" for g in got)
    ratio = f"{max(g[0] for g in got) / base:.2f}x" if base else "n/a"
    budgets = "; ".join(sorted({g[2] for g in got}))
    print(f"| {label} | {walls} | {trains} | {ratio} | {budgets} |")
EOF
