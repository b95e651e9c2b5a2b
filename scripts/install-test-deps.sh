#!/usr/bin/env bash
# Installs what the test suite runs for real: redis-server, dovecot
# (dovecot-imapd, dovecot-pop3d), fetchmail (a real POP3 client), pebble (an ACME test CA), curl, python3, openssl, systemd
# (systemd-analyze verifies the unit file; nothing is started), promtool
# (from prometheus, to check /metrics), slapd and ldap-utils (an LDAP
# directory for auth.ldap), nginx-light and libnginx-mod-mail (nginx's mail
# proxy, run next to Portico in front of the same auth_http service), and a
# C toolchain for `go test -race`.
# Idempotent: it does nothing when everything is present. Debian/Ubuntu only;
# elsewhere it names what is missing and fails.
set -euo pipefail

# binary -> Debian package
declare -A pkg=(
	[redis-server]=redis-server
	[dovecot]=dovecot-imapd
	[dovecot_pop3]=dovecot-pop3d
	[fetchmail]=fetchmail
	[curl]=curl
	[python3]=python3
	[openssl]=openssl
	[make]=make
	[gcc]=gcc
	[pebble]=pebble
	[pebble-challtestsrv]=pebble
	[systemd-analyze]=systemd
	[systemd-sysusers]=systemd
	[promtool]=prometheus
	[slapd]=slapd
	[slapadd]=slapd
	[ldapwhoami]=ldap-utils
	[nginx]=nginx-light
	[ngx_mail_module]=libnginx-mod-mail
)

have() {
	if [ "$1" = ngx_mail_module ]; then
		[ -e /usr/lib/nginx/modules/ngx_mail_module.so ]
		return
	fi
	if [ "$1" = dovecot_pop3 ]; then
		[ -x /usr/lib/dovecot/pop3 ]
		return
	fi
	# dovecot and nginx live in /usr/sbin, which a non-root PATH may lack.
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

missing=()
for bin in "${!pkg[@]}"; do
	have "$bin" || missing+=("$bin")
done

if [ "${#missing[@]}" -gt 0 ]; then
	echo "install-test-deps: missing: ${missing[*]}" >&2
	if [ "$(id -u)" -eq 0 ]; then
		sudo=()
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo=(sudo -n)
	else
		echo "install-test-deps: not root and no password-less sudo; install them with:" >&2
		echo "  apt-get install redis-server dovecot-imapd dovecot-pop3d fetchmail pebble prometheus slapd ldap-utils nginx-light libnginx-mod-mail curl python3 openssl ca-certificates make gcc libc6-dev systemd" >&2
		exit 1
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "install-test-deps: no apt-get; install the packages providing: ${missing[*]}" >&2
		exit 1
	fi

	# Keep apt from starting dovecot and redis-server as system services
	# (ports 143/993/6379) where a policy-rc.d is honoured (invoke-rc.d);
	# the tests start their own on random ports.
	policy=/usr/sbin/policy-rc.d
	added_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		added_policy=1
	fi
	cleanup() { if [ -n "$added_policy" ]; then "${sudo[@]}" rm -f "$policy"; fi; }
	trap cleanup EXIT

	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		redis-server dovecot-imapd dovecot-pop3d fetchmail pebble prometheus slapd ldap-utils nginx-light libnginx-mod-mail curl python3 openssl ca-certificates make gcc libc6-dev systemd

	# systemd ignores policy-rc.d: stop whatever apt started anyway.
	"${sudo[@]}" service dovecot stop >/dev/null 2>&1 || true
	"${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
	"${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
	"${sudo[@]}" service nginx stop >/dev/null 2>&1 || true
	"${sudo[@]}" service slapd stop >/dev/null 2>&1 || true
	cleanup
	trap - EXIT

	still=()
	for bin in "${!pkg[@]}"; do
		have "$bin" || still+=("$bin")
	done
	if [ "${#still[@]}" -gt 0 ]; then
		echo "install-test-deps: still missing after apt-get install: ${still[*]}" >&2
		exit 1
	fi
fi

if ! command -v go >/dev/null 2>&1; then
	echo "install-test-deps: Go is not installed or not on PATH: install the version in go.mod from https://go.dev/dl/ (e.g. into /usr/local/go) and add its bin directory to PATH" >&2
	exit 1
fi
go version >/dev/null
