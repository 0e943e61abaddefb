#!/usr/bin/env bash
# Installs the real services the tests run against: Slurm + munge (launch tests) and the
# reference OCI distribution registry (export tests). The tests start and stop their own
# daemons under temp dirs; this only puts the binaries on the machine. Without root or apt
# it says so and the tests that need them skip with that reason.
set -uo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-services: not root or no apt-get; tests needing ${need[*]} will skip" >&2
    exit 0
fi
echo "install-services: apt-get install ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine; refresh only if the install fails.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
  || echo "install-services: could not install ${need[*]}; tests needing them will skip" >&2
# Debian's packages try to start their daemons through init scripts; the tests run their own.
exit 0
