#!/usr/bin/env bash
# Build the image for real (../shared/tools/container-check: podman, chroot isolation) and run
# the example dataset inside it as uid 1000, with the input read-only and no network, at
# participant and group level; the predictions must equal a native run's within 1e-3 years.
#
#   sudo bash tests/container/run.sh         (root: container-check mounts and chroots)
#
# Environment: NATIVE_PYTHON (the native run's interpreter, with the app's dependencies;
# default .venv/bin/python, else python3), CONTAINER_CHECK (default
# ../shared/tools/container-check), MODEL_DIR (a bids_brainage-train model directory to use
# instead of the bundled models, in both runs), SMOKE_ONLY=1 (stop after the image checks),
# KEEP=1 (keep the scratch folder). Prints the build time, the image size and the seconds per
# participant, container and native. Exits non-zero on any failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
cc=${CONTAINER_CHECK:-$repo/../shared/tools/container-check}
python=${NATIVE_PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi
image=localhost/bids_brainage:check
example=examples/ds-ixi3
tolerance=1e-3

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
[[ $EUID -eq 0 ]] || fail "run as root: container-check needs mount and chroot"
[[ -x $cc ]] || fail "no container-check at $cc"

# container-check binds /dev without its submounts, so /dev/shm inside is devtmpfs's own
# directory (root, 755), not the host's tmpfs; Docker and Singularity give every container a
# writable /dev/shm, and Python's multiprocessing (nipype MultiProc) needs one for its locks.
# Make that hidden directory world-writable (sticky), as theirs is.
devroot=$(mktemp -d)
mount --bind /dev "$devroot" && chmod 1777 "$devroot/shm"
umount "$devroot" && rmdir "$devroot"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/bids_brainage-container.XXXXXX")
chmod 755 "$scratch"
finish() {
  local rc=$?
  if [[ $rc -ne 0 || ${KEEP:-0} == 1 ]]; then echo "scratch folder kept: $scratch" >&2
  else rm -rf "$scratch"; fi
}
trap finish EXIT

step "build"
start=$SECONDS
if ! "$cc" build . >"$scratch/build.log" 2>&1; then
  tail -n 40 "$scratch/build.log" >&2
  fail "image build (log: $scratch/build.log)"
fi
build_s=$((SECONDS - start))
size=$(podman image inspect "$image" --format '{{.Size}}')
echo "build: ${build_s} s; image size: $((size / 1000000)) MB"

step "image metadata"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' bids_brainage/__init__.py)
entry=$(podman image inspect "$image" --format '{{json .Config.Entrypoint}}')
[[ $entry == '["bids_brainage"]' ]] || fail "ENTRYPOINT is $entry"
for label in version=$version licenses=MIT source=https; do
  key=org.opencontainers.image.${label%%=*}
  value=$(podman image inspect "$image" --format "{{index .Config.Labels \"$key\"}}")
  [[ $value == "${label#*=}"* ]] || fail "label $key is '$value'"
done
echo "entrypoint $entry, labels version $version, MIT, source"

step "the image as an arbitrary user"
"$cc" run --uid 4242 -- --version | tee "$scratch/version.txt" || fail "--version"
grep -qx "bids_brainage $version" "$scratch/version.txt" || fail "--version"
"$cc" run --uid 1000 -- --help >/dev/null || fail "--help"
# no compilers in the final image
"$cc" shell --uid 1000 -- sh -c \
  'for c in cc gcc g++ c++ clang make ld; do command -v "$c" && exit 1; done; exit 0' \
  || fail "a compiler or linker is left in the image"
"$cc" shell --uid 1000 -- python -c 'import torch; assert torch.version.cuda is None' \
  || fail "torch in the image is not the CPU build"
echo "no compiler or linker; torch is the CPU build"
# the offline BIDS validator: a deno binary that wants a writable DENO_DIR
"$cc" shell --uid 1000 --ro "$repo/$example:/data" -- bids-validator-deno /data \
  >"$scratch/validator.txt" 2>&1 \
  || { cat "$scratch/validator.txt" >&2; fail "bids-validator-deno"; }
echo "bids-validator-deno ran on the example as uid 1000"

if [[ ${SMOKE_ONLY:-0} == 1 ]]; then
  echo "SMOKE_ONLY=1: the end-to-end part is not run"
  exit 0
fi

mapfile -t participants < <(cd "$example" && ls -d sub-* | sed 's/^sub-//')
n=${#participants[@]}
native_models=() container_models=() model_mount=()
if [[ -n ${MODEL_DIR:-} ]]; then
  native_models=(--model-dir "$MODEL_DIR")
  container_models=(--model-dir /models)
  model_mount=(--ro "$(cd "$MODEL_DIR" && pwd):/models")
fi

step "native run ($n participants)"
# as in an activated environment: the app finds bids-validator-deno on PATH
PATH=$(dirname "$(command -v "$python")"):$PATH
start=$SECONDS
PYTHONPATH=$repo "$python" -m bids_brainage "$example" "$scratch/native" participant \
  -w "$scratch/native-work" "${native_models[@]}" || fail "native participant level (exit $?)"
native_s=$((SECONDS - start))
PYTHONPATH=$repo "$python" -m bids_brainage "$example" "$scratch/native" group \
  -w "$scratch/native-work" "${native_models[@]}" || fail "native group level (exit $?)"

step "container run ($n participants, uid 1000, input read-only, no network)"
mkdir -p "$scratch/out"
chown 1000:1000 "$scratch/out"
# unshare --net: a network namespace with nothing in it, so any download at run time fails
start=$SECONDS
unshare --net "$cc" run --uid 1000 --ro "$repo/$example:/data" --rw "$scratch/out:/out" \
  "${model_mount[@]}" -- /data /out participant "${container_models[@]}" \
  || fail "container participant level (exit $?)"
container_s=$((SECONDS - start))
unshare --net "$cc" run --uid 1000 --ro "$repo/$example:/data" --rw "$scratch/out:/out" \
  "${model_mount[@]}" -- /data /out group "${container_models[@]}" \
  || fail "container group level (exit $?)"

step "outputs"
out=$scratch/out
expected=(dataset_description.json group_brainage.tsv group_brainage.json group_report.html)
for p in "${participants[@]}"; do
  expected+=("sub-$p/anat/sub-${p}_brainage.tsv" "sub-$p/anat/sub-${p}_brainage.json" "sub-$p.html")
done
for f in "${expected[@]}"; do
  [[ -s $out/$f ]] || fail "missing in the container's output: $f"
done
echo "${#expected[@]} expected files present"
# the same files as the native run (logs/ holds per-run names)
list_files() { (cd "$1" && find . -type f ! -path './logs/*' | sort); }
if ! diff <(list_files "$scratch/native") <(list_files "$out") >"$scratch/files.diff"; then
  cat "$scratch/files.diff" >&2
  fail "the container wrote other files than the native run (< native, > container)"
fi
echo "same $(list_files "$out" | wc -l) files as the native run"
"$python" - "$out/dataset_description.json" <<'EOF' \
  || fail "dataset_description.json does not name the container"
import json, sys
generated = json.load(open(sys.argv[1]))["GeneratedBy"][0]
print("GeneratedBy:", generated)
assert generated["Container"]["Tag"].startswith("bidsbrainage/bids_brainage:"), generated
EOF

step "predictions, container vs native (tolerance $tolerance years)"
"$python" - "$scratch/native" "$out" "$tolerance" <<'EOF'
import csv
import sys
from pathlib import Path

native, container, tolerance = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
KEY = ("participant_id", "session_id", "run", "model")


def predictions(root):
    rows = {}
    for table in sorted(root.glob("sub-*/**/*_brainage.tsv")):
        with open(table, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rows[tuple(row.get(k, "") for k in KEY)] = row["predicted_age"]
    return rows


a, b = predictions(native), predictions(container)
assert a, f"no predictions in {native}"
assert a.keys() == b.keys(), f"rows differ: {sorted(a.keys() ^ b.keys())}"
worst = 0.0
for key in sorted(a):
    if a[key] in ("", "n/a") or b[key] in ("", "n/a"):
        assert a[key] == b[key], f"{key}: native {a[key]!r}, container {b[key]!r}"
        continue
    diff = abs(float(a[key]) - float(b[key]))
    worst = max(worst, diff)
    label = " ".join(k for k in key if k not in ("", "n/a"))
    print(f"{label}: native {float(a[key]):.3f}  container {float(b[key]):.3f}")
    # the tables print 3 decimals: one unit in the last place is within the tolerance
    assert diff <= tolerance + 1e-9, f"{key}: differs by {diff:.2e} years"
print(f"{len(a)} predictions agree; largest difference {worst:.2e} years")
EOF

step "summary"
echo "build ${build_s} s; image $((size / 1000000)) MB"
awk -v c="$container_s" -v nat="$native_s" -v n="$n" 'BEGIN {
  printf "participant level, seconds per participant: container %.1f, native %.1f", c / n, nat / n
  printf " (%d participants)\n", n }'
