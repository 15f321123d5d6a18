#!/bin/sh
# /init of the vmnet test guest: mount the pseudo file systems, load the
# virtio-net driver stack, configure interfaces from the kernel command line,
# then serve the command protocol on the console (see console.go):
#
#   host:  __VMNET_CMD__ <id> <timeout-seconds|0> <base64 of a shell script>
#   guest: __VMNET_START__ <id>
#          __VMNET_BEGIN__ <id>
#          <base64 of the script's stdout and stderr, wrapped lines>
#          __VMNET_DONE__ <id> <exit status> <output length in bytes>
#
# Anything that goes wrong before the prompt is reported as a line
# "__VMNET_INIT_ERROR__ <what>" so the host can fail the boot with a reason.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

fail() { echo "__VMNET_INIT_ERROR__ $*"; }

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/pts /dev/shm /tmp /run /root /tmp/vmnet
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname vmnet-guest

# Dependencies first; the list is written by the image builder.
while read -r mod; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/vmnet/$mod.ko" || fail "insmod $mod"
done </etc/vmnet/modules

ip link set lo up || fail "ip link set lo up"

# waitdev DEV: virtio-net probes during insmod, but give a slow TCG guest a
# few seconds before giving up on an interface the command line names.
waitdev() {
	n=0
	while [ ! -e "/sys/class/net/$1" ]; do
		n=$((n + 1))
		[ "$n" -le 50 ] || return 1
		usleep 100000
	done
}

# vmnet.ip=ADDR/LEN[,DEV]  vmnet.mtu=N[,DEV]  vmnet.gw=ADDR  (DEV defaults to eth0)
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vmnet.mtu=*)
		v=${arg#vmnet.mtu=}
		mtu=${v%%,*} dev=eth0
		[ "$v" = "$mtu" ] || dev=${v#*,}
		waitdev "$dev" || { fail "no interface $dev for $arg"; continue; }
		ip link set "$dev" mtu "$mtu" || fail "set mtu: $arg"
		;;
	vmnet.ip=*)
		v=${arg#vmnet.ip=}
		addr=${v%%,*} dev=eth0
		[ "$v" = "$addr" ] || dev=${v#*,}
		waitdev "$dev" || { fail "no interface $dev for $arg"; continue; }
		nodad=
		case "$addr" in *:*) nodad=nodad ;; esac
		ip addr add "$addr" dev "$dev" $nodad || fail "add address: $arg"
		ip link set "$dev" up || fail "set $dev up"
		;;
	esac
done
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vmnet.gw=*) ip route add default via "${arg#vmnet.gw=}" || fail "add route: $arg" ;;
	esac
done

# Kernel messages would interleave with the protocol; dmesg still has them.
dmesg -n 1
# Raw, no echo: the host's command lines must not come back as output, and
# output must reach the host byte for byte.
stty raw -echo || fail "stty raw -echo"

read -r uptime _ </proc/uptime
echo "__VMNET_READY__ $uptime"

while :; do
	if ! IFS= read -r line; then
		sleep 1
		continue
	fi
	set -- $line
	[ "$1" = __VMNET_CMD__ ] && [ $# -eq 4 ] || continue
	id=$2 tmo=$3
	# The host tells a command that hangs from one that never arrived.
	echo "__VMNET_START__ $id"
	if printf '%s\n' "$4" | base64 -d >/tmp/vmnet/cmd; then
		cd /
		if [ "$tmo" -gt 0 ]; then
			timeout -s KILL "$tmo" sh /tmp/vmnet/cmd
		else
			sh /tmp/vmnet/cmd
		fi </dev/null >/tmp/vmnet/out 2>&1
		rc=$?
	else
		echo "vmnet guest: cannot decode command $id" >/tmp/vmnet/out
		rc=254
	fi
	size=$(wc -c </tmp/vmnet/out)
	echo "__VMNET_BEGIN__ $id"
	base64 /tmp/vmnet/out
	echo "__VMNET_DONE__ $id $rc $size"
done
