#!/usr/bin/env bash
# Install what berth's build, tests and benchmarks need from Debian's packages, and the cargo
# tools the test suite uses. Idempotent: installs only what is missing. Needs root for apt.
set -euo pipefail

packages=(
  e2fsprogs       # mkfs.ext4 -d: ext4 images without mounting
  openssh-client  # ssh-keygen: the reference for the key tests
  cloud-init      # cloud-init schema: the reference for berth seed validate
  xorriso         # reads seed ISOs back
  mtools          # reads VFAT seeds back (mcopy)
  dosfstools
  tzdata          # time zone names for cloud-config checks
  qemu-system-x86 # the VMs themselves, and the accelerator probe
  qemu-system-data
  passt           # the VMs' network (QEMU's user-mode NAT let guests reach the host's loopback)
  seabios
  ipxe-qemu
  debootstrap     # builds the Debian guest images
  pkg-config
  libseccomp-dev  # the containers' seccomp filter (libcontainer links libseccomp)
  util-linux      # mount -o loop: extracting an image's tree for containers; nsenter
  iproute2        # the containers' bridge, veth pairs and tc shaping
  nftables        # berth's own NAT and forward table
  iptables        # the firewall fallback, exercised by the e2e tests
  time            # /usr/bin/time for the benchmarks' peak memory
  bc
  python3-venv    # a venv for schemathesis (PyPI), run against the daemon's OpenAPI document
  curl            # the daemon tests' plain HTTP client
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# qemu-img and qemu-io, the reference the disk tests compare against. Installed after
# qemu-system-x86: a machine may come with a newer qemu-utils built outside Debian's archive,
# schemathesis (PyPI) checks the live daemon against its OpenAPI document, from a venv of its own.
venv=/var/cache/berth-tools/venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "setup: installing schemathesis" >&2
  mkdir -p /var/cache/berth-tools
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi

# promtool (from Debian's prometheus package) checks the daemon's /1.0/metrics. Only the tool is
# taken from the package: installing it would also start a Prometheus server here.
if ! command -v promtool >/dev/null; then
  echo "setup: installing promtool" >&2
  tools=/var/cache/berth-tools
  mkdir -p "$tools"
  (cd "$tools" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb "$tools/prometheus")
  ln -sf "$tools/prometheus/usr/bin/promtool" /usr/local/bin/promtool
fi

# which apt removes when it installs Debian's qemu-system packages; Debian's own qemu-utils
# then matches the QEMU the VMs run on.
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
  echo "setup: installing qemu-utils" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi

# cargo-fuzz for the fuzz targets (built and run briefly by the test suite).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
