#!/usr/bin/env bash
# Builds the xmppgw container image (Containerfile) with podman, as root:
#   1. the base image, if podman does not have it yet: Debian bookworm from
#      `debootstrap --variant=minbase` (the mirror apt uses on this machine), trimmed as
#      Debian's slim images are, then `podman import` (no registry needs to serve one);
#   2. the wheelhouse, on the host: xmppgw's wheel (`python -m build`) and every wheel
#      `xmppgw[probes,fast]` needs, plus pip's own, in build/wheelhouse;
#   3. `podman build --build-arg BASE=...`: pip inside the build reads only that wheelhouse.
#
# Usage: bash scripts/container.sh [build] [--rebuild-base]
#        bash scripts/container.sh base [--rebuild-base]  # only step 1
#        bash scripts/container.sh podman ARGS...         # podman with this machine's options
# Environment: IMAGE (default localhost/xmppgw:latest), BASE_IMAGE (default
# localhost/xmppgw-base:bookworm; give e.g. docker.io/library/debian:bookworm-slim to use a
# registry's), MIRROR (default: apt's bookworm mirror), PYTHON (a Python 3.11 with `build`
# and pip; default .venv/bin/python), PODMAN_OPTS (default: see podman_opts below).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/xmppgw:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/xmppgw-base:bookworm}
SUITE=bookworm  # the image's Python (3.11) is this suite's: the wheelhouse must match it
WHEELHOUSE=build/wheelhouse  # the Containerfile copies it from here (.containerignore)

say() { echo "container: $*" >&2; }
die() { say "$*"; exit 1; }

# With cgroup v1 or hybrid cgroups (Debian 12 without systemd's unified hierarchy), Debian's
# podman runs containers with runc and the cgroupfs manager; crun and the systemd manager
# need cgroup v2. PODMAN_OPTS, if set, replaces this choice.
podman_opts() {
    if [ -n "${PODMAN_OPTS+set}" ]; then
        echo "$PODMAN_OPTS"
    elif [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
        echo "--runtime runc --cgroup-manager cgroupfs"
    fi
}

# `run` and `create` get the limits this shell has (open files: each relayed stream holds
# two), unless the caller gives --ulimit: podman's own defaults for a rootful container
# (1048576 open files, 4194304 processes) are more than a process may set on some hosts, and
# the runtime then refuses to start the container.
podman_() {
    local opts limits=()
    read -r -a opts <<<"$(podman_opts)"
    if [[ "${1:-}" =~ ^(run|create)$ && " $* " != *" --ulimit"* ]]; then
        local files
        files=$(ulimit -Hn)
        [ "$files" = unlimited ] || limits=(--ulimit "nofile=$files:$files")
        limits+=(--ulimit nproc=4096:4096)  # the gateway runs a few processes, not thousands
        podman "${opts[@]}" "$1" "${limits[@]}" "${@:2}"
    else
        podman "${opts[@]}" "$@"
    fi
}

# The first `deb` source apt uses for the bookworm suite itself (not -security/-updates):
# one-line .list files and deb822 .sources files both.
apt_mirror() {
    python3 - "$SUITE" <<'EOF'
import glob, sys
suite = sys.argv[1]
def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            yield words[1]
def deb822(path):
    for stanza in open(path, encoding="utf-8", errors="replace").read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                and fields.get("enabled", ["yes"]) != ["no"]):
            yield from fields.get("uris", [])
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        for uri in one_line(path):
            print(uri); sys.exit(0)
    except OSError:
        pass
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for uri in deb822(path):
        print(uri); sys.exit(0)
print("http://deb.debian.org/debian")
EOF
}

build_base() {
    local rebuild=$1
    if [ "$rebuild" = no ] && podman_ image exists "$BASE_IMAGE"; then
        say "base image $BASE_IMAGE: cached"
        return
    fi
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (or give BASE_IMAGE=an existing bookworm image)"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/setup.sh installs it)"
    local mirror rootfs started=$SECONDS
    mirror=${MIRROR:-$(apt_mirror)}
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/xmppgw-base.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this directory
    trap "rm -rf '$rootfs'" EXIT
    say "base image $BASE_IMAGE: debootstrap --variant=minbase $SUITE from $mirror"
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        rm -f "$rootfs.log"
        die "debootstrap failed"
    fi
    rm -f "$rootfs.log"
    # As Debian's slim images: no documentation or translations, now or for what the build
    # installs later; no package lists (the build's apt-get update fetches its own).
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/xmppgw-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$rootfs"/usr/share/{man,groff,info,locale,lintian}/* \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -c . \
        | podman_ import --quiet --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    say "base image $BASE_IMAGE: imported in $((SECONDS - started)) s"
}

build_wheelhouse() {
    local python=${PYTHON:-}
    if [ -z "$python" ]; then
        if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
    fi
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$python is not Python 3.11, the image's ($SUITE): its compiled wheels would not fit (set PYTHON)"
    "$python" -c 'import build' 2>/dev/null \
        || die "$python has no \`build\` module: pip install build (scripts/setup.sh does)"
    local dist=build/container-dist log=build/container-wheelhouse.log started=$SECONDS
    rm -rf "$WHEELHOUSE" "$dist"
    mkdir -p build
    # The sdist, then the wheel from it, as `python -m build` does: nothing stale under
    # build/lib gets in. A fixed SOURCE_DATE_EPOCH (1980-01-01, zip's first date: not the
    # last commit's, which any commit moves) stamps every file of the wheel alike, so the
    # same sources give the same wheel, byte for byte, and podman's layer cache holds.
    export SOURCE_DATE_EPOCH=315532800
    if ! { "$python" -m build --outdir "$dist" . &&
           "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$WHEELHOUSE" \
               "$(ls "$dist"/xmppgw-*.whl)[probes,fast]" pip; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "wheelhouse failed (whole log: $log)"
    fi
    rm -rf "$dist"
    local wheels=("$WHEELHOUSE"/*.whl)
    say "wheelhouse: ${#wheels[@]} wheels in $WHEELHOUSE ($((SECONDS - started)) s)"
}

build_image() {
    local started=$SECONDS log=build/container-build.log
    # docker format: the OCI image format has no HEALTHCHECK. Host network: the build's
    # apt-get reaches the mirror as the host does, with no bridge or NAT to set up. The
    # install stage is tagged too (IMAGE-install) so that pruning what older builds left
    # keeps the current build's cache: an unchanged wheelhouse then builds in seconds.
    local build=(build --format docker --network host --build-arg "BASE=$BASE_IMAGE"
                 --file Containerfile)
    if ! { podman_ "${build[@]}" --target install --tag "$IMAGE-install" . &&
           podman_ "${build[@]}" --tag "$IMAGE" .; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "podman build failed (whole log: $log)"
    fi
    podman_ image prune --force --filter label=org.opencontainers.image.title=xmppgw >/dev/null
    say "image $IMAGE: built in $((SECONDS - started)) s ($(podman_ image inspect \
        --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

command=build
case "${1:-}" in
    build|base) command=$1; shift ;;
    podman) shift; podman_ "$@"; exit ;;
esac
rebuild_base=no
for arg in "$@"; do
    case "$arg" in
        --rebuild-base) rebuild_base=yes ;;
        *) die "unknown argument: $arg (usage: container.sh [build|base] [--rebuild-base] | podman ARGS...)" ;;
    esac
done
command -v podman >/dev/null || die "podman is not installed (scripts/setup.sh installs it)"
# One build at a time on a machine: two would share build/wheelhouse, and one's prune could
# take an image the other is still building on.
exec 9>"${TMPDIR:-/tmp}/xmppgw-container-build.lock"
flock 9
build_base "$rebuild_base"
[ "$command" = base ] && exit 0
build_wheelhouse
build_image
