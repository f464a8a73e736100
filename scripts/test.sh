#!/bin/bash
# make test's pytest run, as two processes side by side so that two QEMU guests run at a time, one per
# core (QEMU/TCG uses one core each): the node scenarios (marker node, one guest at a time) and the
# tests that share their cache (.cache/node: marker guest) in one; everything else in the other, its
# systemd-boot VM sequences one guest at a time while the node runs (BOOTKEEPER_VM_PARALLEL=1). The
# node process's output is printed when both are done; the exit code is the first failure's.
# Balance: the node scenarios took 61 min and the rest 44 (CI of d2ac623), so the TPM scenario (one
# guest, about 8 min) runs at the end of the other process instead: still two guests at a time.
# Its pieces (.cache/node) are built by then; it only reads them.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pytest=(.venv/bin/pytest -v -p no:cacheprovider --durations=12)
start=$(date +%s)
# The update scenarios (tests/node/test_node_update.py, about 15 boots) are split the same way: the
# timer's update and the failed update after it (6 boots) run late in the other process, the repairs
# in the node's.
late=(tests/node/test_node_tpm.py tests/node/test_node_update.py::test_the_timer_updates_the_node_and_gets_past_a_failed_update)
"${pytest[@]}" -m "node or guest" --ignore="${late[0]}" --deselect="${late[1]}" --basetemp="$logs/node-tmp" >"$logs/node.log" 2>&1 &
node=$!
BOOTKEEPER_VM_PARALLEL=1 "${pytest[@]}" -m "not node and not guest" --basetemp="$logs/rest-tmp"
rest=$?
echo "test.sh: the tests but the node's ended with $rest after $(( $(date +%s) - start )) s; now ${late[*]}"
"${pytest[@]}" "${late[@]}" --basetemp="$logs/late-tmp"
late_rc=$?
[ "$rest" -eq 0 ] && rest=$late_rc
echo "test.sh: the tests but the node's (and ${late[*]}) ended with $rest after $(( $(date +%s) - start )) s; waiting for the node's"
wait "$node"
node_rc=$?
echo "test.sh: the node's tests ended with $node_rc after $(( $(date +%s) - start )) s; their output:"
cat "$logs/node.log"
echo "test.sh: node tests exit $node_rc, the others exit $rest, $(( $(date +%s) - start )) s in all"
[ "$rest" -ne 0 ] && exit "$rest"
exit "$node_rc"
