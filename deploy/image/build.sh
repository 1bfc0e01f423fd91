#!/bin/sh
# Build the mmfusion container image: `make image` (PROFILE=full), `make image-edge` (PROFILE=edge),
# `make image-cuda` (PROFILE=cuda). No container registry is needed: the base image is an argument
# (BASE_IMAGE), by default localhost/debian-base:bookworm, made here from a Debian root file system
# (mmdebstrap) imported with podman when it is missing. buildah builds with chroot isolation.
#
# The build sees no pip configuration of its own: this passes the host's (pip config list, the PIP_*
# variables) in as a pip.conf in the build context, and binds the local wheel folders and file:// indexes it
# names read-only into the RUN steps. The image is tagged IMAGE:TAG and labelled with a sha256 of its
# inputs (sources, models, samples, Containerfiles, requirements): an image with the same label is kept
# (FORCE=1 rebuilds). Prints the image's name on its last line.
set -eu

PROFILE=${PROFILE:-full}
PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-mmfusion}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' mmfusion/__init__.py)
case "$PROFILE" in
  full) TAG=${TAG:-$VERSION}; FILE=Containerfile ;;
  edge) TAG=${TAG:-$VERSION-edge}; FILE=Containerfile ;;
  cuda) TAG=${TAG:-$VERSION-cuda}; FILE=Containerfile.cuda ;;
  *) echo "build.sh: PROFILE must be full, edge or cuda, not $PROFILE" >&2; exit 2 ;;
esac
CONTEXT=build/image/$PROFILE
say() { echo "image: $*" >&2; }

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool is missing (make system-deps installs it)"; exit 1; }
done

# The inputs' hash: every file that goes into the image, by content (tracked or new, not ignored).
HASH=$(git ls-files -z -co --exclude-standard -- mmfusion models samples setup.py pyproject.toml MANIFEST.in \
    LICENSE NOTICE Containerfile Containerfile.cuda deploy/image \
  | sort -z | xargs -0 sha256sum | { cat; echo "profile $PROFILE base $BASE_IMAGE"; } | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && buildah inspect --type image "localhost/$IMAGE:$TAG" >/dev/null 2>&1; then
  built=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.mmfusion.inputs"}}' "localhost/$IMAGE:$TAG" 2>/dev/null || true)
  case "$built" in *"$HASH"*) say "localhost/$IMAGE:$TAG is up to date (inputs $HASH)"; echo "localhost/$IMAGE:$TAG"; exit 0 ;; esac
fi

# The base image: a Debian root file system, when BASE_IMAGE is the local default and is missing.
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  case "$BASE_IMAGE" in
    localhost/debian-base:*) ;;
    *) say "base image $BASE_IMAGE is missing (pull or import it first)"; exit 1 ;;
  esac
  say "making $BASE_IMAGE with mmdebstrap ($DEBIAN_SUITE, minbase)"
  mkdir -p build/image
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,nginx-light \
    "$DEBIAN_SUITE" build/image/rootfs.tar
  podman import --quiet build/image/rootfs.tar "$BASE_IMAGE" >/dev/null
  rm -f build/image/rootfs.tar
fi

# The build context: the mmfusion wheel, the requirements, the health probe and the pip configuration.
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation . -w "$CONTEXT" >&2
cp deploy/image/requirements-edge.txt deploy/image/requirements-edge-nodeps.txt deploy/image/healthcheck.py "$CONTEXT"/
VOLUMES=$("$PYTHON" - "$CONTEXT/pip.conf" <<'EOF'
"""Write the host's pip settings as a pip.conf; print a -v option for each local folder they name."""
import os, shutil, subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    key = key.split(".", 1)[-1]
    if key:
        settings[key] = value.strip().strip("'\"")
context = os.path.dirname(sys.argv[1])
for key in ("cert", "client-cert"):  # the host's CA bundle (a proxy's CA may be in it): for the build only
    if settings.get(key):
        shutil.copyfile(settings[key], os.path.join(context, f"pip-{key}.pem"))
        settings[key] = f"/ctx/pip-{key}.pem"
for key in ("constraint", "requirement"):  # files: copied into the context, which the build binds at /ctx
    copies = []
    for number, path in enumerate(settings.get(key, "").split()):
        name = f"pip-{key}-{number}.txt"
        shutil.copyfile(path, os.path.join(context, name))
        copies.append(f"/ctx/{name}")
    if copies:
        settings[key] = " ".join(copies)
with open(sys.argv[1], "w") as conf:
    conf.write("[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(settings.items())))
mounts = []
for key in ("find-links", "index-url", "extra-index-url"):
    for item in settings.get(key, "").split():
        path = item[len("file://"):] if item.startswith("file://") else item
        if not path.startswith("/") or not os.path.isdir(path):
            continue
        path = os.path.dirname(path.rstrip("/")) if path.rstrip("/").endswith("/simple") else path.rstrip("/")
        if path not in mounts:
            mounts.append(path)
print(" ".join(f"-v {path}:{path}:ro" for path in mounts))
EOF
)

previous=$(buildah inspect --type image --format '{{.FromImageID}}' "localhost/$IMAGE:$TAG" 2>/dev/null || true)
say "building localhost/$IMAGE:$TAG from $FILE (profile $PROFILE, base $BASE_IMAGE, inputs $HASH)"
# shellcheck disable=SC2086  # VOLUMES is a list of options
buildah bud --isolation chroot --format docker --layers=false $VOLUMES \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PROFILE="$PROFILE" --build-arg VERSION="$VERSION" \
  --label org.mmfusion.inputs="$HASH" -f "$FILE" -t "localhost/$IMAGE:$TAG" "$CONTEXT" >&2
# the image this one replaces, now untagged: gigabytes that nothing uses
[ -z "$previous" ] || buildah rmi "$previous" >/dev/null 2>&1 || true
echo "localhost/$IMAGE:$TAG"
