#!/usr/bin/env bash
# Build the pod VM's initramfs: the static guest agent (peapod-agent) as /init.
#
#   rootfs/build-agent-initramfs.sh [--agent PATH] [--output FILE]
#
#   --agent PATH   use this static peapod-agent instead of building one with
#                  scripts/build-guest-bins
#   --output FILE  write the image there; default: the place where
#                  `peapod vm run-container` looks when PEAPOD_AGENT_INITRAMFS
#                  is unset, $CACHE/agent/initramfs.cpio.gz with
#                  CACHE=${PEAPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/peapod}
#
# Deterministic (rootfs/build.sh). Progress goes to stderr; the last stdout line is
# the absolute path of the initramfs.
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd -P)
repo=$(dirname -- "$script_dir")

agent=
output=
while (($#)); do
    case $1 in
    --agent) (($# >= 2)) || { echo "peapod-rootfs: --agent needs a PATH" >&2; exit 2; }; agent=$2; shift 2 ;;
    --output | -o) (($# >= 2)) || { echo "peapod-rootfs: --output needs a FILE" >&2; exit 2; }; output=$2; shift 2 ;;
    -h | --help) sed -n '4,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) echo "peapod-rootfs: unknown argument: $1" >&2; exit 2 ;;
    esac
done

if [[ -z $agent ]]; then
    agent=$("$repo/scripts/build-guest-bins" peapod-agent | tail -n 1)
fi
[[ -x $agent ]] || { echo "peapod-rootfs: error: $agent is not an executable" >&2; exit 1; }

if [[ -z $output ]]; then
    if [[ -n ${PEAPOD_CACHE_DIR:-} ]]; then
        cache=$PEAPOD_CACHE_DIR
    elif [[ -n ${XDG_CACHE_HOME:-} ]]; then
        cache=$XDG_CACHE_HOME/peapod
    else
        cache=$HOME/.cache/peapod
    fi
    output=$cache/agent/initramfs.cpio.gz
fi

exec "$script_dir/build.sh" --init "$agent" --output "$output"
