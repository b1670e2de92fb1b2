#!/usr/bin/env bash
# Builds the project's images with buildah (no Docker engine, no registry needed):
#   operator, server, converter  from docker/*.Dockerfile
#   pause                        a static pod-sandbox image for nodes that cannot pull registry.k8s.io
# The base is python:3.11-slim when a registry answers, otherwise Debian's python3 from debootstrap.
# An image whose inputs did not change is not rebuilt (its input hash is a label on the image).
#
#   docker/build-images.sh [--registry R] [--tag T] [--base IMAGE] [--only NAMES] [--push]
#                          [--containerd SOCKET]
#     --registry R          image names R/NAME:TAG (default localhost/modelkiln, env REGISTRY)
#     --tag T               default: the version in pyproject.toml (env TAG)
#     --base IMAGE          the base of the Dockerfiles; skips the registry probe (env BASE)
#     --only NAMES          comma-separated subset of operator,server,converter,pause
#     --push                buildah push operator, server and converter to the registry
#     --containerd SOCKET   import the images into that containerd (namespace k8s.io)
# Everything goes under ${MODELKILN_CACHE:-$HOME/.cache/modelkiln}/images/.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-images: $*" >&2; exit 1; }
usage() { echo usage: >&2; sed -n '8,16s/^# \{0,1\}//p' "$0" >&2; exit 2; }

REGISTRY=${REGISTRY:-localhost/modelkiln}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
BASE=${BASE:-}
ONLY=operator,server,converter,pause
PUSH=0
CONTAINERD=${CONTAINERD:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --registry) REGISTRY=${2:?}; shift 2 ;;
        --tag) TAG=${2:?}; shift 2 ;;
        --base) BASE=${2:?}; shift 2 ;;
        --only) ONLY=${2:?}; shift 2 ;;
        --push) PUSH=1; shift ;;
        --containerd) CONTAINERD=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-images: unknown argument $1" >&2; usage ;;
    esac
done
REGISTRY=${REGISTRY%/}
for name in ${ONLY//,/ }; do
    case "$name" in operator|server|converter|pause) ;; *) die "--only: unknown image $name" ;; esac
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

INSTALL_HINT="e2e/node/install-packages.sh installs it (or: apt-get install"
command -v buildah >/dev/null || die "buildah not found; $INSTALL_HINT buildah)"
[ -z "$CONTAINERD" ] || command -v ctr >/dev/null || die "ctr not found; $INSTALL_HINT containerd)"
if [ -n "$CONTAINERD" ] && [ ! -S "$CONTAINERD" ]; then die "--containerd $CONTAINERD: no such socket"; fi

CACHE=${MODELKILN_CACHE:-$HOME/.cache/modelkiln}/images
mkdir -p "$CACHE/archives"
exec 9> "$CACHE/lock"
flock 9  # one build at a time per cache
# buildah's own storage (vfs: works in any container or VM, needs no overlay or fuse).
cat > "$CACHE/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
LABEL=io.modelkiln.inputs

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { echo "build-images: $*" >&2; }
hash() { sha256sum | cut -c1-16; }
# the input hash an image was built from ("" when there is no such image)
built_from() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

# --- base ---------------------------------------------------------------------------------------

DEBIAN_SUITE=bookworm
DEBIAN_PACKAGES=python3,python3-venv,ca-certificates
DEBIAN_BASE=localhost/modelkiln/base:$DEBIAN_SUITE
SLIM=docker.io/library/python:3.11-slim

debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
          | tr ' ' '\n' | grep -v security | head -1 || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
                           /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Debian's python3 (3.11 in bookworm), the stand-in for python:3.11-slim.
debian_base() {
    local mirror key rootfs c m t0
    mirror=$(debian_mirror)
    key=$( { echo "$DEBIAN_SUITE $DEBIAN_PACKAGES $mirror"; declare -f debian_base; } | hash)
    if [ "$(built_from "$DEBIAN_BASE")" = "$key" ]; then return; fi
    rootfs=$CACHE/base-rootfs
    if [ "$(cat "$rootfs.key" 2>/dev/null)" != "$key" ]; then
        command -v debootstrap >/dev/null || die "debootstrap not found; $INSTALL_HINT debootstrap)"
        step "debootstrap $DEBIAN_SUITE from $mirror"; t0=$(now)
        rm -rf "$rootfs" "$rootfs.key"
        debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$mirror" \
            > "$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
        # what an image never needs: package lists and caches, docs, man pages, translations
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
               "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
               "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian "$rootfs"/dev/*
        find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        ln -sf python3 "$rootfs/usr/bin/python"  # python:3.11-slim has `python`; the Dockerfiles use it
        echo "$key" > "$rootfs.key"
        step "  debootstrap: $(since "$t0")"
    fi
    step "commit $DEBIAN_BASE"; t0=$(now)
    c=$(buildah from scratch)
    m=$(buildah mount "$c")
    # a tar pipe keeps owners and modes (buildah copy would make every file root's)
    tar -C "$rootfs" -cf - . | tar -C "$m" -xpf - --numeric-owner
    buildah umount "$c" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd '["python3"]' --label "$LABEL=$key" "$c"
    buildah commit --quiet --rm "$c" "$DEBIAN_BASE" >/dev/null
    step "  base: $(since "$t0")"
}

pick_base() {
    if [ -n "$BASE" ]; then
        buildah inspect --type image "$BASE" >/dev/null 2>&1 || buildah pull --quiet "$BASE" >/dev/null \
            || die "--base $BASE: cannot pull it"
        return
    fi
    if timeout 60 buildah pull --quiet --policy always "$SLIM" >/dev/null 2>&1 \
        || buildah inspect --type image "$SLIM" >/dev/null 2>&1; then  # pulled once, offline now
        BASE=$SLIM
    else
        step "$SLIM cannot be pulled: the base is Debian's python3 ($DEBIAN_BASE)"
        debian_base
        BASE=$DEBIAN_BASE
    fi
}

# --- images -------------------------------------------------------------------------------------

# everything a Dockerfile copies, as it is in the work tree (tracked or not, but not ignored)
source_key() {
    local dockerfile=$1
    {
        echo "$dockerfile $(image_id "$BASE") ${PIP_INDEX_URL:-} ${PIP_EXTRA_INDEX_URL:-}"
        git ls-files -z --cached --others --exclude-standard -- "$dockerfile" pyproject.toml README.md crds operator runtime \
            | sort -zu | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
            | xargs -0 sha256sum
    } | hash
}

build_project_image() {
    local name=$1 ref=$REGISTRY/$1:$TAG dockerfile=docker/$1.Dockerfile key t0 args=()
    key=$(source_key "$dockerfile")
    if [ "$(built_from "$ref")" = "$key" ]; then return; fi
    args=(--build-arg "BASE=$BASE")
    # pip in the build trusts what pip here trusts (a TLS-intercepting proxy's CA, say); the
    # bundle is mounted for the build only and stays out of the image
    local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    if [ -f "$ca" ]; then
        args+=(-v "$(realpath "$ca"):/etc/ssl/certs/ca-certificates.crt:ro"
               --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    fi
    [ -z "${PIP_INDEX_URL:-}" ] || args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
    [ -z "${PIP_EXTRA_INDEX_URL:-}" ] || args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
    step "build $ref from $dockerfile (log: $CACHE/$name.log)"; t0=$(now)
    buildah bud --isolation chroot --network host --layers=false --pull=false "${args[@]}" \
        --label "$LABEL=$key" -f "$dockerfile" -t "$ref" . > "$CACHE/$name.log" 2>&1 \
        || { tail -n 20 "$CACHE/$name.log" >&2; die "building $ref failed; see $CACHE/$name.log"; }
    step "  $name: $(since "$t0")"
}

build_pause() {
    local ref=localhost/modelkiln/pause:3.10 key t0 c
    key=$( { cat docker/pause.c; declare -f build_pause; } | hash)
    if [ "$(built_from "$ref")" = "$key" ]; then return; fi
    command -v gcc >/dev/null || die "gcc not found; $INSTALL_HINT gcc libc6-dev)"
    step "build $ref from docker/pause.c"; t0=$(now)
    mkdir -p "$CACHE/pause"
    gcc -Os -static -Wall -o "$CACHE/pause/pause" docker/pause.c
    strip "$CACHE/pause/pause"
    c=$(buildah from scratch)
    buildah copy --quiet "$c" "$CACHE/pause/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 --label "$LABEL=$key" "$c"
    buildah commit --quiet --rm "$c" "$ref" >/dev/null
    step "  pause: $(since "$t0")"
}

# --- export -------------------------------------------------------------------------------------

# An OCI archive with gzip-compressed layers (the form a registry stores), remade only when the
# image changed. Prints the archive's path.
archive() {
    local ref=$1 file id
    file=$CACHE/archives/$(echo "$ref" | tr '/:' '__').tar
    id=$(image_id "$ref")
    if [ "$(cat "$file.id" 2>/dev/null)" != "$id" ] || [ ! -f "$file" ]; then
        rm -f "$file" "$file.id"
        buildah push --quiet "$ref" "oci-archive:$file:$ref" >/dev/null
        echo "$id" > "$file.id"
    fi
    echo "$file"
}

# manifest digest, compressed bytes (config + layers) of an OCI archive made by archive()
archive_facts() {
    python3 - "$1" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    digest = json.load(archive.extractfile("index.json"))["manifests"][0]["digest"]
    manifest = json.load(archive.extractfile("blobs/" + digest.replace(":", "/")))
print(digest, manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"]))
PY
}

import_into_containerd() {
    local ref=$1 file=$2 digest=$3 present
    present=$(ctr --address "$CONTAINERD" -n k8s.io images ls 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')
    if [ "$present" = "$digest" ]; then return; fi
    ctr --address "$CONTAINERD" -n k8s.io images import "$file" >/dev/null \
        || die "ctr images import $file failed"
    step "  imported $ref into $CONTAINERD"
}

# --- main ---------------------------------------------------------------------------------------

start=$(now)
refs=()
if wanted operator || wanted server || wanted converter; then
    t0=$(now); pick_base; step "base $BASE: $(since "$t0")"
    for name in operator server converter; do
        if wanted "$name"; then
            build_project_image "$name"
            refs+=("$REGISTRY/$name:$TAG")
        fi
    done
fi
if wanted pause; then build_pause; refs+=(localhost/modelkiln/pause:3.10); fi
# the images a rebuild replaced (vfs keeps a full copy of every layer)
buildah rmi --prune >/dev/null 2>&1 || true

t0=$(now)
report=()
for ref in "${refs[@]}"; do
    file=$(archive "$ref")
    read -r digest bytes < <(archive_facts "$file")
    [ -z "$CONTAINERD" ] || import_into_containerd "$ref" "$file" "$digest"
    if [ "$PUSH" = 1 ] && [[ $ref == "$REGISTRY"/* ]] && [[ $ref != */pause:* ]]; then
        step "push $ref"
        buildah push --quiet "$ref" "docker://$ref" >/dev/null || die "buildah push $ref failed"
    fi
    size=$(buildah images --format '{{.Size}}' "$ref" | head -1)
    report+=("$(printf '%-45s %9s compressed  %9s uncompressed' "$ref" \
                "$(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')" "$size")")
done
step "export$([ -z "$CONTAINERD" ] || echo "/import")$([ "$PUSH" = 0 ] || echo "/push"): $(since "$t0")"
step "total: $(since "$start")"
printf '%s\n' "${report[@]}"
