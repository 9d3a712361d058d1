#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, one after the other, and
# prints per target the executions and the crashes found (artifact paths).
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Corpora grow in
# fuzz/corpus/TARGET (kept between runs, not committed); crashing inputs land in
# fuzz/artifacts/TARGET; each target's libFuzzer output is in fuzz/logs/TARGET.log.
# A target stops at its first crash (libFuzzer's default): fix it, add the regression test
# (see fuzz/README.md), run again.
#
# Environment: FUZZ_TARGET_DIR (cargo's target dir, default fuzz/target), FUZZ_NICE (niceness,
# default 10: the fuzzers share the machine). Two run.sh with disjoint targets may run at once.
set -euo pipefail

secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")"
target_dir=${FUZZ_TARGET_DIR:-target}
niceness=${FUZZ_NICE:-10}

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build of every target first, so that the time limits below are spent fuzzing.
nice -n "$niceness" cargo +nightly fuzz build --target-dir "$target_dir"

# Seeds for the archive targets, whose inputs libFuzzer would take long to find from nothing:
# one small layer tar (a directory, a file, a symlink, a hard link, a whiteout).
seed_tar() {
    local d
    d=$(mktemp -d)
    mkdir -p "$d/etc" "$d/usr/bin"
    echo root:x:0:0 >"$d/etc/passwd"
    ln -s ../etc/passwd "$d/usr/bin/link"
    ln "$d/etc/passwd" "$d/etc/hard"
    touch "$d/etc/.wh.gone"
    tar -C "$d" --owner=0 --group=0 -cf - etc usr
    rm -rf "$d"
}
for t in "${targets[@]}"; do
    case $t in
    image_unpack)
        mkdir -p corpus/$t
        [[ -e corpus/$t/seed ]] || { printf '\377'; seed_tar; } >corpus/$t/seed ;;
    image_import)
        mkdir -p corpus/$t
        [[ -e corpus/$t/seed ]] || seed_tar >corpus/$t/seed ;;
    esac
done

mkdir -p logs
results=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | sort)
    # Archives need more than libFuzzer's default 4 KiB to hold a few tar entries.
    max_len=4096
    case $t in image_*) max_len=16384 ;; esac
    status=0
    # -timeout: one input running this long is a hang (a device thread spinning), reported
    # as a crash with a timeout-* artifact.
    nice -n "$niceness" cargo +nightly fuzz run --target-dir "$target_dir" "$t" \
        "corpus/$t" -- -max_total_time="$secs" -timeout=10 -max_len="$max_len" \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" |
        awk '{n += $2} END {print n + 0}')
    if [[ $execs == 0 ]]; then
        # Stopped by a crash: no final stats, take the last status line.
        execs=$(grep -o '^#[0-9]*' "logs/$t.log" | tail -1 | tr -d '#')
        execs=${execs:-0}
    fi
    new=$(comm -13 <(echo "$before") <(find "artifacts/$t" -type f | sort) | grep . || true)
    crashes=$(echo -n "$new" | grep -c . || true)
    results+=("$(printf '%-16s %12s execs  %s crash(es)  exit %s' "$t" "$execs" "$crashes" "$status")")
    for a in $new; do results+=("    $PWD/$a"); done
done

echo
echo "fuzzed ${secs}s per target:"
printf '%s\n' "${results[@]}"
