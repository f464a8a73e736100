#!/bin/bash
# make test's pytest run, as two processes side by side so that two QEMU guests run at a time, one per
# core (QEMU/TCG uses one core each): the node scenarios (marker node, one guest at a time) and the
# tests that share their cache (.cache/node: marker guest) in one; everything else in the other, its
# systemd-boot VM sequences one guest at a time while the node runs (BOOTKEEPER_VM_PARALLEL=1). The
# node process's output is printed when both are done; the exit code is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pytest=(.venv/bin/pytest -v -p no:cacheprovider --durations=12)
start=$(date +%s)
"${pytest[@]}" -m "node or guest" --basetemp="$logs/node-tmp" >"$logs/node.log" 2>&1 &
node=$!
BOOTKEEPER_VM_PARALLEL=1 "${pytest[@]}" -m "not node and not guest" --basetemp="$logs/rest-tmp"
rest=$?
echo "test.sh: the tests but the node's ended with $rest after $(( $(date +%s) - start )) s; waiting for the node's"
wait "$node"
node_rc=$?
echo "test.sh: the node's tests ended with $node_rc after $(( $(date +%s) - start )) s; their output:"
cat "$logs/node.log"
echo "test.sh: node tests exit $node_rc, the others exit $rest, $(( $(date +%s) - start )) s in all"
[ "$rest" -ne 0 ] && exit "$rest"
exit "$node_rc"
