# Sourced by scripts/test, scripts/demo and the benchmarks: puts Swift on PATH and installs, from
# Debian's packages, whatever is missing of what the project builds with and tests against.
# Idempotent and quick when everything is there.

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi
command -v swift >/dev/null 2>&1 || { echo "error: Swift 6 is needed (https://www.swift.org/install/linux/); put it on PATH" >&2; exit 1; }

# Build headers and libraries, then the real tools the tests check our images and caches with.
apt_packages=(
  pkg-config libarchive-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev
  umoci runc skopeo docker-registry oci-image-tool apache2-utils openssl curl zstd python3 python3-pip
  g++
)
needed_packages() {
  local p
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
missing=$(needed_packages)
if [ -n "$missing" ]; then
  echo "setup: installing $(echo $missing | tr '\n' ' ')" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# skopeo refuses to copy without a trust policy; give it the permissive default if none exists.
if [ ! -f /etc/containers/policy.json ] && [ ! -f "$HOME/.config/containers/policy.json" ]; then
  mkdir -p "$HOME/.config/containers"
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$HOME/.config/containers/policy.json"
fi
