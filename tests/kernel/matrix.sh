#!/usr/bin/env bash
# make test-kernels: run the kernel tests (this package) on the host kernel
# and, under qemu with software emulation, on Debian's 6.1 and 6.12 kernels.
# Kernels are fetched once with apt and cached by package name; the guest is
# an initramfs with busybox (to mount /proc, /sys, bpffs, cgroup2) and the
# static test binary. Test output comes back on the guest's second serial
# port; the kernel log on the first. Nothing leaves the machine: the guest has
# no network device.
set -euo pipefail

KERNELS=(
  linux-image-6.1.0-56-amd64-unsigned
  linux-image-6.12.117+deb12-amd64-unsigned
)
CACHE=${SOCKMESH_KERNEL_CACHE:-/var/cache/sockmesh/kernels}
TIMEOUT=${SOCKMESH_KERNEL_TIMEOUT:-300}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf '== %s\n' "$*"; }
now() { date +%s%N; }
secs() { local ns=$(( $(now) - $1 )); printf '%d.%01d' $((ns / 1000000000)) $(((ns / 100000000) % 10)); }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# fetch PACKAGE: the kernel image of a Debian package, cached. If the
# archive no longer carries the pinned build, the newest of its series is
# used (and said).
fetch() {
  local pkg=$1 dir="$CACHE/$1"
  if [ ! -f "$dir/vmlinuz" ]; then
    mkdir -p "$work/dl" "$dir"
    if ! (cd "$work/dl" && apt-get download "$pkg" >/dev/null 2>&1); then
      local alt
      alt=$(apt-cache search --names-only "^${pkg%%.[0-9]*}.*-amd64-unsigned$" | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sort -V | tail -1)
      [ -n "$alt" ] || { echo "cannot download $pkg" >&2; return 1; }
      echo "note: $pkg is not in the archive, using $alt" >&2
      (cd "$work/dl" && apt-get download "$alt" >/dev/null 2>&1)
    fi
    dpkg-deb --fsys-tarfile "$work"/dl/*.deb | tar -x -C "$work/dl" --wildcards './boot/vmlinuz-*'
    mv "$work"/dl/boot/vmlinuz-* "$dir/vmlinuz"
    rm -rf "$work/dl"
  fi
  echo "$dir/vmlinuz"
}

say "building the guest test binary"
mkdir -p "$work/root/bin"
(cd "$root" && CGO_ENABLED=0 go test -c -o "$work/root/kerneltest" ./tests/kernel)
cp /bin/busybox "$work/root/bin/busybox"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo "kernel $(uname -r)" > /dev/ttyS1
SOCKMESH_TEST_PRIVILEGED=1 TMPDIR=/tmp HOME=/tmp /kerneltest -test.v -test.count=1 > /dev/ttyS1 2>&1
echo "SOCKMESH-EXIT $?" > /dev/ttyS1
sync
poweroff -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet) > "$work/initrd"

failed=()
say "host kernel $(uname -r)"
start=$(now)
if (cd "$root" && SOCKMESH_TEST_PRIVILEGED=1 go test -count=1 -v ./tests/kernel > "$work/host.out" 2>&1); then
  echo "   host: PASS in $(secs "$start")s"
else
  cat "$work/host.out"
  failed+=("host $(uname -r)")
fi

for pkg in "${KERNELS[@]}"; do
  kernel=$(fetch "$pkg")
  say "$pkg (qemu, TCG)"
  start=$(now)
  set +e
  timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 1 \
    -display none -monitor none -no-reboot -nic none \
    -kernel "$kernel" -initrd "$work/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -serial "file:$work/$pkg.console" -serial "file:$work/$pkg.out"
  rc=$?
  set -e
  took=$(secs "$start")
  status=$(tr -d '\r' < "$work/$pkg.out" | grep -a '^SOCKMESH-EXIT' | tail -1 | awk '{print $2}')
  if [ "$status" = "0" ]; then
    echo "   $pkg: PASS in ${took}s (boot, tests, power-off)"
    tr -d '\r' < "$work/$pkg.out" | grep -a -E '^(kernel|--- )' | sed 's/^/   /'
  else
    echo "FAIL on $pkg (qemu exit $rc, test exit ${status:-none} after ${took}s). Test output:"
    cat "$work/$pkg.out" 2>/dev/null || true
    echo "--- kernel log (last 40 lines):"
    tail -40 "$work/$pkg.console" 2>/dev/null || true
    failed+=("$pkg")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "kernel tests failed on: ${failed[*]}"
  exit 1
fi
say "kernel tests passed on the host and ${#KERNELS[@]} guest kernels"
