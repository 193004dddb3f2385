#!/bin/sh
# init of the hardware-KVM lane's L1 Linux: load KVM (AMD-V) and tun, run /hwkvm/run.sh
# with vmm on PATH and the L2 guest in the environment, report its status on
# the console as HWKVM-RC=<n>, power off.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# No tmpfs over /tmp: the image holds a symlink at the host path of `vmm`
# (test binaries start it by that path), which may well lie under /tmp.
mkdir -p /tmp
mkdir -p /root
ip link set lo up
echo "HWKVM: L1 up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || echo "HWKVM: insmod $m failed"
done
dmesg | grep -E 'kvm_amd: (Nested|SVM)' | sed 's/^/HWKVM: /'
# Quiet from here on: kernel messages would cut into the tests' output lines.
dmesg -n 1
if [ ! -c /dev/kvm ]; then
    echo "HWKVM: L1 has no /dev/kvm"
    echo "HWKVM-RC=125"
    poweroff -f
    exit 125
fi
. /hwkvm/env
cd /tmp
sh /hwkvm/run.sh
echo "HWKVM-RC=$?"
sync
poweroff -f
