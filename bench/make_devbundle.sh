#!/usr/bin/env bash
# Prepare a device run of bench/gpu_check.sh, here, in the project root's two ignored folders:
#   .devbundle/  what the GPU machine lacks, for its Python 3.12: Ray, MLflow, SQLAlchemy, Alembic (the shared
#                make-bundle) plus zarr and ome-zarr (at the versions installed here), without the S3 clients
#                (botocore, aiobotocore, s3fs, jmespath) that ome-zarr's fsspec[s3] pulls in: 15 MB that the
#                64 MiB a run may carry cannot spare, and nothing the check reads from S3;
#   .devdata/    the ISBI 2012 training slices (train-volume.tif, train-labels.tif).
# Both are in .gitignore. Then: the device tool's run, carry [".devbundle", ".devdata"], command bench/gpu_check.sh.
#
#   bench/make_devbundle.sh [SHARED]     # SHARED: the folder holding device/make-bundle and datasets/
#                                        # (default: ../shared or ../../shared)
# About 2 minutes on an idle machine (downloads, then xz). It builds in a temporary folder with a .git/info of
# its own: make-bundle writes to .git/info/exclude, which a git worktree (.git is a file there) does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
shared="${1:-}"
for candidate in "$shared" ../shared ../../shared; do
  if [ -n "$candidate" ] && [ -x "$candidate/device/make-bundle" ]; then shared="$(cd "$candidate" && pwd)"; break; fi
done
[ -x "$shared/device/make-bundle" ] || { echo "make_devbundle.sh: error: no device/make-bundle under ${1:-../shared}" >&2; exit 2; }
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
build="$(mktemp -d "${TMPDIR:-/tmp}/dcn-devbundle.XXXXXX")"
trap 'rm -rf "$build"' EXIT
mkdir -p "$build/.git/info"
(cd "$build" && "$shared/device/make-bundle" "zarr==$(version zarr)" "ome-zarr==$(version ome-zarr)")
mkdir "$build/site"
tar -C "$build/site" -xJf "$build/.devbundle/site.tar.xz"
rm -rf "$build"/site/botocore* "$build"/site/aiobotocore* "$build"/site/s3fs* "$build"/site/jmespath*
tar -C "$build/site" -cf - . | xz -T0 > "$build/.devbundle/site.tar.xz"
rm -rf .devbundle && mv "$build/.devbundle" .devbundle
mkdir -p .devdata
cp "$shared/datasets/isbi2012/train-volume.tif" "$shared/datasets/isbi2012/train-labels.tif" .devdata/
du -sh .devbundle .devdata
carried=$(du -sk --exclude=.git "$root" | cut -f1)
echo "the checkout with both: $((carried / 1024)) MiB (a device run carries at most 64 MiB)"
