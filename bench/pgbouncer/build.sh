#!/usr/bin/env bash
# Builds a current PgBouncer (>= 1.21, for max_prepared_statements) from Debian's trixie source
# package, cached outside the repository. Debian 12 ships 1.18, which cannot serve prepared
# statements in transaction mode, and trixie's binary package needs a newer glibc.
#
#   bench/pgbouncer/build.sh            # prints the path of the built binary
#
# Cache: $WARMPOOL_BENCH_CACHE (default ~/.cache/warmpool-bench)/pgbouncer. The system's apt
# lists and sources are never touched: a private sources list and lists directory are used.
# Needs root for `apt-get install` of the build dependencies when they are missing.
set -euo pipefail

cache="${WARMPOOL_BENCH_CACHE:-$HOME/.cache/warmpool-bench}/pgbouncer"
bin="$cache/bin/pgbouncer"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
# One build at a time: the benchmark and the tests of other checkouts share this cache, and two
# builds in one source directory delete each other's files. The one that waited finds the binary.
exec 9>"$cache/.lock"
flock 9
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
exec 3>&1 1>"$cache/build.log" 2>&1
trap 'echo "PgBouncer build failed; log: $cache/build.log" >&3' ERR

need=()
for pkg in libevent-dev libssl-dev libc-ares-dev pkg-config build-essential; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat >"$apt_dir/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
EOF
apt_opts=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::lists=$apt_dir/lists"
  -o "Dir::Cache::archives=$apt_dir/archives"
  -o "APT::Get::List-Cleanup=0"
)
apt-get "${apt_opts[@]}" update -q

src="$cache/src"
rm -rf "$src"
mkdir -p "$src"
(cd "$src" && apt-get "${apt_opts[@]}" source --download-only pgbouncer)
orig=$(ls "$src"/pgbouncer_*.orig.tar.* | head -n1)
tar -xf "$orig" -C "$src"
dir=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'pgbouncer-*' | head -n1)
cd "$dir"
./configure --prefix="$cache" --without-systemd --without-pam
make -j"$(nproc)"
make install
"$bin" --version
echo "$bin" >&3
