#!/usr/bin/env bash
# The main job, as far as vmnet goes today: create a multi-queue TAP in a
# scratch network namespace with vmnet-helper, show it, and delete
# it. The guest-booting demo replaces this
# once the vhost-user server lands.
set -euo pipefail
helper=${1:-bin/vmnet-helper}
ns=vmnet-demo-$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
echo "== vmnet-helper tap create --netns $ns --queues 4 --persist --mtu 9000"
name=$("$helper" tap create --netns "$ns" --queues 4 --persist --mtu 9000)
echo "$name"
echo "== vmnet-helper tap show --netns $ns $name"
"$helper" tap show --netns "$ns" "$name"
echo "== ip -d link show $name (inside $ns)"
ip netns exec "$ns" ip -d link show "$name"
echo "== vmnet-helper tap delete --netns $ns $name"
"$helper" tap delete --netns "$ns" "$name"
if ip netns exec "$ns" ip link show "$name" >/dev/null 2>&1; then
	echo "demo: $name still exists after delete" >&2
	exit 1
fi
echo "demo: ok"
