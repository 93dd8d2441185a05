#!/usr/bin/env bash
# systemd/verify.sh: check the unit files in this directory, exactly as shipped.
#
# 1. `systemd-analyze verify` on each unit. It also checks that ExecStart= and friends
#    name executables that exist, which they do not on a CI machine (pm2-runtime lives in
#    /opt/deployq, dragonfly in /usr/local/bin). So the units are verified inside a
#    scratch root (--root): systemd's own units copied in (for the targets the units
#    order against), an empty executable stub at each path an Exec*= line names, and the
#    unit files themselves, unchanged, in <root>/etc/systemd/system. Anything it prints
#    about these units (unknown keys, unparsable values, relative paths, missing
#    dependencies) is a failure, as is a non-zero exit.
# 2. deployq.service keeps sudo working: no NoNewPrivileges=yes and none of the options
#    that imply it for a service with User= (systemd.exec(5)), no PrivateUsers= or
#    CapabilityBoundingSet= (they take root's rights away from sudo's children), and it
#    does run as the deployq user under ProtectSystem=strict with KillMode=mixed. And it
#    names the secrets file in DEPLOYQ_ENV_FILE, never with EnvironmentFile=.
#
# Exit 0 when all is well, 1 when a check failed, 2 when it cannot run here.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=(deployq.service dragonfly.service)

if ! command -v systemd-analyze >/dev/null; then
  echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2
  exit 2
fi
unit_dir=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
  if [ -d "$d" ]; then unit_dir=$d && break; fi
done
if [ -z "$unit_dir" ]; then
  echo "verify.sh: systemd's unit directory not found (apt-get install systemd)" >&2
  exit 2
fi

failed=0
fail() {
  echo "FAIL $*" >&2
  failed=1
}

# --- 1. systemd-analyze verify in a scratch root ---
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a "$unit_dir" "$root/usr/lib/systemd/system"
ln -s usr/lib "$root/lib"
stub_count=0
for unit in "${units[@]}"; do
  cp "$here/$unit" "$root/etc/systemd/system/$unit"
  # Exec*=[@-:+!]/path args...: stub the path.
  while IFS= read -r exe; do
    case $exe in
      /*) ;;
      *)
        fail "$unit: Exec line does not start with an absolute path: $exe"
        continue
        ;;
    esac
    mkdir -p "$root$(dirname "$exe")"
    printf '#!/bin/sh\nexit 0\n' >"$root$exe"
    chmod 0755 "$root$exe"
    stub_count=$((stub_count + 1))
  done < <(sed -n -E 's/^Exec[A-Za-z]+=[-@:+!]*([^[:space:]]+).*/\1/p' "$here/$unit")
done
if [ "$stub_count" -eq 0 ]; then fail "no Exec*= lines found"; fi

set +e
out=$(systemd-analyze verify --man=no --generators=no --recursive-errors=one --root="$root" "${units[@]}" 2>&1)
rc=$?
set -e
if [ $rc -ne 0 ]; then fail "systemd-analyze verify exited $rc"; fi
if [ -n "$out" ]; then
  while IFS= read -r line; do
    about_ours=0
    for unit in "${units[@]}"; do
      case $line in *"$unit"*) about_ours=1 ;; esac
    done
    if [ $about_ours -eq 1 ]; then fail "systemd-analyze: ${line//$root/}"; else echo "note (not about these units): ${line//$root/}" >&2; fi
  done <<<"$out"
fi

# --- 2. deployq.service keeps sudo working ---
svc="$here/deployq.service"
# The value of the last assignment of a key in [Service] (systemd: the last one wins for
# these boolean/enum options), or nothing.
setting() {
  awk -v key="$1" '
    /^\[/ { section = $0; next }
    section == "[Service]" && index($0, key "=") == 1 { value = substr($0, length(key) + 2); found = 1 }
    END { if (found) print value }
  ' "$svc"
}
is_off() {
  case ${1,,} in "" | no | false | off | 0) return 0 ;; *) return 1 ;; esac
}
nnp_value=$(setting NoNewPrivileges)
if ! is_off "$nnp_value"; then fail "deployq.service: NoNewPrivileges=$nnp_value breaks sudo"; fi
# Each of these implies NoNewPrivileges=yes for a service with User= (systemd.exec(5)).
for key in DynamicUser LockPersonality MemoryDenyWriteExecute PrivateDevices ProtectClock \
  ProtectHostname ProtectKernelLogs ProtectKernelModules ProtectKernelTunables \
  RestrictAddressFamilies RestrictNamespaces RestrictRealtime RestrictSUIDSGID \
  SystemCallArchitectures SystemCallFilter SystemCallLog PrivateUsers CapabilityBoundingSet SecureBits; do
  if grep -q -E "^${key}=" "$svc"; then fail "deployq.service: $key= must not be set (it implies NoNewPrivileges= or takes root's rights from sudo)"; fi
done
expect() {
  local key=$1 want=$2 got
  got=$(setting "$key")
  if [ "$got" != "$want" ]; then fail "deployq.service: expected $key=$want, found '${got}'"; fi
}
expect User deployq
expect ProtectSystem strict
expect KillMode mixed
expect Restart on-failure
expect RestartPreventExitStatus 78
expect WorkingDirectory /opt/deployq
expect StateDirectory deployq
if ! grep -q -E '^ExecStart=/opt/deployq/node_modules/\.bin/pm2-runtime ' "$svc"; then fail "deployq.service: ExecStart= must run /opt/deployq/node_modules/.bin/pm2-runtime"; fi
# systemctl reload must be pm2's reload of the ecosystem file: the rolling one for the cluster-mode receiver.
if ! grep -q -x -F 'ExecReload=/opt/deployq/node_modules/.bin/pm2 reload ecosystem.config.cjs --env production' "$svc"; then fail "deployq.service: ExecReload= must be /opt/deployq/node_modules/.bin/pm2 reload ecosystem.config.cjs --env production (a rolling reload of the receiver)"; fi
for line in Environment=NODE_ENV=production Environment=PM2_HOME= Environment=DEPLOYQ_CONFIG=/etc/deployq/deployq.toml Environment=DEPLOYQ_ENV_FILE=/etc/deployq/env; do
  if ! grep -q -F -x -e "$line" "$svc" && ! grep -q "^${line}" "$svc"; then fail "deployq.service: no $line"; fi
done
# The secrets must not be in pm2-runtime's own environment: pm2 hands the daemon's environment
# to every cluster-mode app, the apps deployq deploys under the same pm2 included.
# The nginx step reads root's nginx master and its workers in /proc.
if grep -q -E '^ProtectProc=invisible' "$svc"; then fail "deployq.service: ProtectProc=invisible hides nginx's processes from the nginx step's reload check"; fi
if grep -q -E '^EnvironmentFile=' "$svc"; then fail "deployq.service: EnvironmentFile= puts deployq's secrets into pm2's daemon; use DEPLOYQ_ENV_FILE"; fi
for path in /var/www /etc/letsencrypt /var/lib/letsencrypt /var/log/letsencrypt /etc/nginx/conf.d; do
  if ! grep -E '^ReadWritePaths=' "$svc" | grep -q -E "(=|[[:space:]])-?${path}([[:space:]]|$)"; then fail "deployq.service: ReadWritePaths= lacks $path"; fi
done

if [ $failed -ne 0 ]; then exit 1; fi
echo "ok: ${units[*]} pass systemd-analyze verify; deployq.service keeps sudo usable"
