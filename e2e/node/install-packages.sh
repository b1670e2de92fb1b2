#!/usr/bin/env bash
# Install what a real node and the image builds need, from Debian packages, when missing:
# containerd, runc, the CNI plugins, iptables and conntrack (kube-proxy), buildah and debootstrap
# (images without Docker or a registry), gcc (the pause binary), socat (pods reach the API server).
# Idempotent: a machine that has every command installs nothing. Needs root and apt.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [containerd]=containerd [runc]=runc [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables [conntrack]=conntrack [buildah]=buildah [debootstrap]=debootstrap
  [gcc]=gcc [/usr/include/stdio.h]=libc6-dev [socat]=socat [ip]=iproute2
)
missing=()
for cmd in "${!NEED[@]}"; do
  if [[ $cmd == /* ]]; then [[ -e $cmd ]] || missing+=("${NEED[$cmd]}")
  else command -v "$cmd" >/dev/null || missing+=("${NEED[$cmd]}"); fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing packages (${missing[*]}) and no root apt-get to install them" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
