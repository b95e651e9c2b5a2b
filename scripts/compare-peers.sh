#!/usr/bin/env bash
# Compares Portico with its peers, measured the way an operator would
# (`portico bench`, CPU and memory read from /proc), on this machine, in
# one run, on 127.0.0.1 only:
#
#   Portico         portico serve, routes in Redis
#   Portico, spares the same with backends[].spare_connections: 4 (login
#                   rows only): connections to the backends kept greeted
#   nginx           nginx mail proxy with an auth_http service (scripts/nginx-auth.py)
#   Dovecot proxy   a Dovecot with proxy=y host=... in a passwd-file passdb
#   Dovecot direct  the first backend itself, over TLS
#   Go TLS relay    scripts/tlsrelay in front of the first backend: TLS and
#                   io.Copy, nothing else; the floor of a Go front end
#
# The front ends terminate TLS with the same ECDSA P-256 certificate and
# reach the same two Dovecot backends over plain IMAP and POP3; every user
# has a small message (1 in INBOX, what the login sessions read) and a
# 1 MiB one (the last, what the FETCH test reads). Each front end also
# takes POP3 with TLS (pop3s): POP3 login sessions (AUTH PLAIN, STAT,
# RETR 1, QUIT) are measured next to IMAP's (AUTHENTICATE PLAIN, SELECT,
# FETCH of a header, LOGOUT). Then it runs, for each test, each front end
# in turn (so that the machine's drift hits every column alike), and
# prints one table. Usage, as root (Dovecot drops privileges itself):
#
#   bash scripts/compare-peers.sh          # or: make compare
#   SUITE=login bash scripts/compare-peers.sh   # or: make compare-pop3
#   SUITE=profile bash scripts/compare-peers.sh # or: make compare-profile
#
# Knobs (environment): USERS (300), LOGINS (1000), IDLE (2000), HOLD (20s),
# SUITE=login runs only the IMAP and POP3 login tests (no idle, FETCH,
# NOOP or post-quantum rows), SUITE=profile only the IMAP login test at 64
# clients under `perf record` and prints where each server's CPU goes (the
# kernel's socket system calls, cryptography, the rest), KEEP=1 keeps the
# scratch directory (configs, logs, JSON reports, perf data), BEFORE=REV
# adds a column for Portico built from git revision REV (a commit before
# a change, for before/after figures from one run; IMAP rows only when
# REV has no POP3; it gets its own Redis key prefix and the same routes).
# Needs dovecot, redis-server, python3, openssl and go; installs nginx-light
# and libnginx-mod-mail when nginx or its mail module is missing.
#
# Configuration choices, the same for every front end where they apply:
# TLS 1.3 with X25519 (the bench client offers X25519,P256; one row repeats
# the login run with Go's default, X25519MLKEM768 first, which only Portico
# accepts), no TLS session resumption (a full handshake per session), two
# worker processes for nginx (one per core), Dovecot's login processes in
# their high-performance mode (service_count = 0, one per core) as its
# documentation advises for many connections, and every server at its
# default log level, logging to a file. nginx's pop3 server has its own
# auth_http service (the same script, with the backends' POP3 ports).
set -euo pipefail

USERS=${USERS:-300}
LOGINS=${LOGINS:-1000}
IDLE=${IDLE:-2000}
HOLD=${HOLD:-20s}
SUITE=${SUITE:-all}
BEFORE=${BEFORE:-}
case $SUITE in all | login | profile) ;; *) echo "compare-peers: SUITE is all, login or profile" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "compare-peers: $*" >&2; exit 1; }
log() { echo "compare-peers: $*" >&2; }

[ "$(id -u)" = 0 ] || die "run as root: dovecot and nginx drop privileges themselves"
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
for b in dovecot redis-server redis-cli python3 openssl go; do
	command -v "$b" >/dev/null || die "$b is missing (bash scripts/install-test-deps.sh installs the servers)"
done
if [ "$SUITE" = profile ] && ! perf version >/dev/null 2>&1; then
	log "installing linux-perf"
	(apt-get install -y linux-perf >/dev/null || { apt-get update >/dev/null && apt-get install -y linux-perf >/dev/null; }) ||
		die "cannot install linux-perf"
fi
if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_mail_module.so ]; then
	log "installing nginx-light and libnginx-mod-mail"
	# Debian starts a packaged nginx on :80 after install; policy-rc.d
	# 101 forbids that for this install only.
	had_policy=0
	[ -e /usr/sbin/policy-rc.d ] && had_policy=1
	[ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	(apt-get install -y nginx-light libnginx-mod-mail >/dev/null ||
		{ apt-get update >/dev/null && apt-get install -y nginx-light libnginx-mod-mail >/dev/null; }) ||
		{ [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d; die "cannot install nginx"; }
	[ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
fi

# An idle session through a proxy holds two sockets there, one in the
# bench and one on the backend: take all the open files allowed (20,000
# on this machine).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then hard=65536; fi
ulimit -n "$hard"
[ "$hard" -ge $((IDLE * 2 + 100)) ] || die "open files limit $hard is too low for IDLE=$IDLE"

T=$(mktemp -d /tmp/portico-compare-XXXXXX)
chmod 755 "$T" # dovecot's unprivileged processes read configs and mail here
GROUPS_STARTED=()

cleanup() {
	local g
	for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
	sleep 1
	for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
}
BENCH=
trap cleanup EXIT
# bench runs in the background (where SIGINT is ignored, hence TERM), so
# that a signal is handled at once, not after the running measurement.
trap '[ -z "$BENCH" ] || kill -TERM "$BENCH" 2>/dev/null; exit 130' INT TERM

# start NAME CMD...: runs CMD in its own process group (so that cleanup
# ends its children too, such as Dovecot's imap processes), output in
# $T/NAME.out; sets PID.
start() {
	local name=$1
	shift
	setsid "$@" >"$T/$name.out" 2>&1 &
	PID=$!
	GROUPS_STARTED+=("$PID")
}

# wait_greeting PORT [tls]: until a real IMAP or POP3 greeting (Dovecot
# first says "Waiting for authentication process" while its auth starts).
wait_greeting() {
	local i line
	for i in $(seq 100); do
		if [ "${2:-}" = tls ]; then
			line=$(timeout 3 openssl s_client -quiet -connect "127.0.0.1:$1" </dev/null 2>/dev/null | head -1 || true)
		else
			line=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -1 <&3" 2>/dev/null || true)
		fi
		case $line in
		"* OK"*Waiting* | "+OK"*Waiting*) ;;
		"* OK"* | "+OK"*) return 0 ;;
		esac
		sleep 0.2
	done
	die "no IMAP or POP3 greeting on port $1"
}

wait_port() {
	local i
	for i in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on port $1"
}

# Ports below the ephemeral range, which outgoing connections take from.
read -r P_DOVA P_DOVA_TLS P_DOVB P_DPROXY P_REDIS P_AUTH P_NGINX P_PORTICO \
	P_DOVA_POP3 P_DOVA_POP3S P_DOVB_POP3 P_DPROXY_POP3 P_AUTH_POP3 P_NGINX_POP3 P_PORTICO_POP3 \
	P_RELAY P_RELAY_POP3 P_SPARES P_SPARES_POP3 P_BEFORE P_BEFORE_POP3 < <(python3 - <<'EOF'
import random, socket
lo = 20000
hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 21:
    p = random.randrange(lo, hi)
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*ports)
EOF
)

log "building portico into $T"
(cd "$ROOT" && go build -o "$T/portico" ./cmd/portico && go build -o "$T/tlsrelay" ./scripts/tlsrelay)
BEFORE_POP3=0
if [ -n "$BEFORE" ]; then
	BEFORE=$(git -C "$ROOT" rev-parse --short "$BEFORE^{commit}") || die "BEFORE: no such revision"
	log "building portico $BEFORE into $T"
	mkdir "$T/before-src"
	git -C "$ROOT" archive "$BEFORE" | tar -x -C "$T/before-src"
	(cd "$T/before-src" && go build -o "$T/portico-before" ./cmd/portico)
	[ ! -e "$T/before-src/proxy/pop3.go" ] || BEFORE_POP3=1
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
	-keyout "$T/key.pem" -out "$T/cert.pem" -subj /CN=localhost \
	-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 644 "$T/key.pem" # nginx and dovecot read it as root; a throw-away key

# A small message and a 1 MiB one, hard-linked into every mailbox; the
# small one's earlier timestamp in its file name makes it message 1.
python3 - "$T/msg" "$T/small" <<'EOF'
import sys
head = b"From: <load@example.test>\r\nTo: <user@example.test>\r\nSubject: 1 MiB\r\n" \
       b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <big@example.test>\r\n\r\n"
line = b"x" * 76 + b"\r\n"
body = (line * (((1 << 20) - len(head)) // len(line) + 1))[: (1 << 20) - len(head)]
open(sys.argv[1], "wb").write(head + body)
small = head.replace(b"1 MiB", b"small").replace(b"<big@", b"<small@") + b"Hello,\r\n\r\na small message.\r\n"
open(sys.argv[2], "wb").write(small)
EOF
chown 65534:65534 "$T/msg" "$T/small"
chmod 600 "$T/msg" "$T/small"

half=$((USERS / 2))
: >"$T/routes.redis"
: >"$T/routes.nginx"
: >"$T/routes.nginx.pop3"
for d in dova dovb; do mkdir -p "$T/$d/run" "$T/$d/state" "$T/$d/home"; : >"$T/$d/users"; done
# The proxy's passdb is one file per service (users-imap, users-pop3):
# proxy=y's port differs.
mkdir -p "$T/dproxy/run" "$T/dproxy/state" "$T/dproxy/home"
: >"$T/dproxy/users-imap"
: >"$T/dproxy/users-pop3"
for i in $(seq "$USERS"); do
	u="user$i@example.test"
	if [ "$i" -le "$half" ]; then
		d=dova be=dovA port=$P_DOVA pop3=$P_DOVA_POP3
	else
		d=dovb be=dovB port=$P_DOVB pop3=$P_DOVB_POP3
	fi
	echo "$u:{PLAIN}pw$i" >>"$T/$d/users"
	echo "$u:{PLAIN}pw$i::::::proxy=y host=127.0.0.1 port=$port" >>"$T/dproxy/users-imap"
	echo "$u:{PLAIN}pw$i::::::proxy=y host=127.0.0.1 port=$pop3" >>"$T/dproxy/users-pop3"
	echo "HSET portico:route:$u backend $be" >>"$T/routes.redis"
	echo "HSET before:route:$u backend $be" >>"$T/routes.redis"
	echo "$u 127.0.0.1:$port" >>"$T/routes.nginx"
	echo "$u 127.0.0.1:$pop3" >>"$T/routes.nginx.pop3"
	md="$T/$d/home/$u/Maildir"
	mkdir -p "$md/cur" "$md/new" "$md/tmp"
	ln "$T/small" "$md/new/1600000000.small.compare:2,"
	ln "$T/msg" "$md/new/1700000000.big.compare:2,"
done
chown -R 65534:65534 "$T/dova/home" "$T/dovb/home"

# dovecot_conf DIR [PASSWD]: the settings every instance shares; PASSWD
# is the passdb file (default DIR/users).
dovecot_conf() {
	cat <<EOF
base_dir = $1/run
state_dir = $1/state
log_path = $1/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.1/32
mail_max_userip_connections = 100000
default_process_limit = 6000
default_client_limit = 20000
default_vsz_limit = 1G
passdb {
  driver = passwd-file
  args = scheme=PLAIN ${2:-$1/users}
}
# imap's own default of 1024 would cap the direct idle test. A new mail
# process forked for every session is Dovecot's default, and most of a
# login session's CPU on the backend (about 20 ms here), which caps every
# front end at the same rate on this machine; reused processes (still
# one session at a time each, and every user has the same uid here)
# leave the front ends' own cost visible in the 64-client rate.
service imap {
  process_limit = 6000
  service_count = 0
}
service pop3 {
  process_limit = 6000
  service_count = 0
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=$1/home/%u
}
mail_location = maildir:~/Maildir
ssl_cert = <$T/cert.pem
ssl_key = <$T/key.pem
service anvil {
  chroot =
}
EOF
}

# login_service PROTO PLAIN_PORT TLS_PORT: imap-login or pop3-login.
login_service() {
	cat <<EOF
service $1-login {
  chroot =
  service_count = 0
  process_min_avail = 2
  client_limit = 10000
  inet_listener $1 {
    port = $2
  }
  inet_listener $1s {
    port = $3
  }
}
EOF
}

backend_conf() { # DIR IMAP_PORT IMAPS_PORT POP3_PORT POP3S_PORT
	dovecot_conf "$1"
	echo "ssl = yes"
	echo "disable_plaintext_auth = no"
	login_service imap "$2" "$3"
	login_service pop3 "$4" "$5"
}

backend_conf "$T/dova" "$P_DOVA" "$P_DOVA_TLS" "$P_DOVA_POP3" "$P_DOVA_POP3S" >"$T/dova/dovecot.conf"
backend_conf "$T/dovb" "$P_DOVB" 0 "$P_DOVB_POP3" 0 >"$T/dovb/dovecot.conf"
{
	dovecot_conf "$T/dproxy" "$T/dproxy/users-%s"
	echo "ssl = required"
	login_service imap 0 "$P_DPROXY"
	login_service pop3 0 "$P_DPROXY_POP3"
} >"$T/dproxy/dovecot.conf"

log "starting dovecot (2 backends, 1 proxy), redis, auth_http, nginx, portico"
start dova dovecot -F -c "$T/dova/dovecot.conf"
PID_DOVA=$PID
start dovb dovecot -F -c "$T/dovb/dovecot.conf"
start dproxy dovecot -F -c "$T/dproxy/dovecot.conf"
PID_DPROXY=$PID
mkdir -p "$T/redis"
start redis redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$T/redis"
PID_REDIS=$PID
start auth python3 "$ROOT/scripts/nginx-auth.py" "$P_AUTH" "$T/routes.nginx"
PID_AUTH=$PID
start auth-pop3 python3 "$ROOT/scripts/nginx-auth.py" "$P_AUTH_POP3" "$T/routes.nginx.pop3"
PID_AUTH_POP3=$PID

mkdir -p "$T/nginx"
cat >"$T/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log;
events {
  worker_connections 10000;
}
mail {
  server_name localhost;
  auth_http 127.0.0.1:$P_AUTH/auth;
  proxy_pass_error_message on;
  imap_capabilities IMAP4rev1 SASL-IR LITERAL+ IDLE;
  imap_auth plain login;
  ssl_certificate $T/cert.pem;
  ssl_certificate_key $T/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  pop3_auth plain;
  pop3_capabilities TOP USER UIDL;
  server {
    listen 127.0.0.1:$P_NGINX ssl;
    protocol imap;
  }
  server {
    listen 127.0.0.1:$P_NGINX_POP3 ssl;
    protocol pop3;
    auth_http 127.0.0.1:$P_AUTH_POP3/auth;
  }
}
EOF
start nginx nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" -g "daemon off;"
PID_NGINX=$PID

cat >"$T/portico.yaml" <<EOF
listeners:
  - {name: imaps, mode: imaps, address: "127.0.0.1:$P_PORTICO"}
  - {name: pop3s, mode: pop3s, address: "127.0.0.1:$P_PORTICO_POP3"}
tls:
  certificates:
    - {cert_file: $T/cert.pem, key_file: $T/key.pem}
routing:
  redis: {addrs: ["127.0.0.1:$P_REDIS"]}
backends:
  - {name: dovA, address: "127.0.0.1:$P_DOVA", security: plain, forward_id: true, pop3_port: $P_DOVA_POP3}
  - {name: dovB, address: "127.0.0.1:$P_DOVB", security: plain, forward_id: true, pop3_port: $P_DOVB_POP3}
backend_defaults: {security: starttls} # no route names a host:port
EOF
wait_port "$P_REDIS"
redis-cli -p "$P_REDIS" <"$T/routes.redis" >/dev/null
start portico "$T/portico" serve -config "$T/portico.yaml"
PID_PORTICO=$PID
# The same with spare connections to the backends, a second proxy of the
# same fleet (its own proxy id, the same Redis).
sed -e "s/127.0.0.1:$P_PORTICO\"/127.0.0.1:$P_SPARES\"/" -e "s/127.0.0.1:$P_PORTICO_POP3\"/127.0.0.1:$P_SPARES_POP3\"/" \
	-e "s/forward_id: true,/forward_id: true, spare_connections: 4,/" "$T/portico.yaml" >"$T/portico-spares.yaml"
grep -q "spare_connections: 4" "$T/portico-spares.yaml" || die "no spares in $T/portico-spares.yaml"
start spares "$T/portico" serve -config "$T/portico-spares.yaml"
PID_SPARES=$PID
if [ -n "$BEFORE" ]; then
	# Its own key prefix: an older registry or limiter format must not
	# meet today's in the same keys.
	python3 - "$T/portico.yaml" "$P_PORTICO" "$P_BEFORE" "$P_PORTICO_POP3" "$P_BEFORE_POP3" "$BEFORE_POP3" >"$T/portico-before.yaml" <<'EOF'
import re, sys
conf, port, before, pop3, before_pop3, keep_pop3 = open(sys.argv[1]).read(), *sys.argv[2:6], sys.argv[6] == "1"
conf = conf.replace(f'127.0.0.1:{port}"', f'127.0.0.1:{before}"')
if keep_pop3:
    conf = conf.replace(f'127.0.0.1:{pop3}"', f'127.0.0.1:{before_pop3}"')
else:
    conf = "".join(l for l in conf.splitlines(True) if "mode: pop3s" not in l)
    conf = re.sub(r", pop3_port: [0-9]+", "", conf)
conf = conf.replace('redis: {addrs: [', 'redis: {key_prefix: "before:", addrs: [')
print(conf, end="")
EOF
	grep -q 'key_prefix: "before:"' "$T/portico-before.yaml" || die "no key prefix in $T/portico-before.yaml"
	start before "$T/portico-before" serve -config "$T/portico-before.yaml"
	PID_BEFORE=$PID
fi
start relay "$T/tlsrelay" -listen "127.0.0.1:$P_RELAY" -backend "127.0.0.1:$P_DOVA" -cert "$T/cert.pem" -key "$T/key.pem"
PID_RELAY=$PID
start relaypop3 "$T/tlsrelay" -listen "127.0.0.1:$P_RELAY_POP3" -backend "127.0.0.1:$P_DOVA_POP3" -cert "$T/cert.pem" -key "$T/key.pem" -alpn pop3
PID_RELAY_POP3=$PID

for p in "$P_DOVA" "$P_DOVB" "$P_DOVA_POP3" "$P_DOVB_POP3"; do wait_greeting "$p"; done
[ -z "$BEFORE" ] || wait_greeting "$P_BEFORE" tls
for p in "$P_DOVA_TLS" "$P_DPROXY" "$P_NGINX" "$P_PORTICO" "$P_SPARES" \
	"$P_DOVA_POP3S" "$P_DPROXY_POP3" "$P_NGINX_POP3" "$P_PORTICO_POP3" "$P_SPARES_POP3" "$P_RELAY" "$P_RELAY_POP3"; do wait_greeting "$p" tls; done
wait_port "$P_AUTH"
wait_port "$P_AUTH_POP3"

FRONTS=(portico nginx dproxy direct relay)
# The login tests also run against Portico with spares.
LOGIN_FRONTS=(portico spares nginx dproxy direct relay)
if [ -n "$BEFORE" ]; then
	FRONTS=(portico before nginx dproxy direct relay)
	LOGIN_FRONTS=(portico before spares nginx dproxy direct relay)
fi
# By front end, and by front end and protocol for POP3 (PROTO=pop3).
declare -A ADDR=([portico]=$P_PORTICO [spares]=$P_SPARES [nginx]=$P_NGINX [dproxy]=$P_DPROXY [direct]=$P_DOVA_TLS [relay]=$P_RELAY
	[portico.pop3]=$P_PORTICO_POP3 [spares.pop3]=$P_SPARES_POP3 [nginx.pop3]=$P_NGINX_POP3 [dproxy.pop3]=$P_DPROXY_POP3
	[direct.pop3]=$P_DOVA_POP3S [relay.pop3]=$P_RELAY_POP3)
# The front end's processes; the second pid, where there is one, is its
# lookup service, reported on its own row.
declare -A PIDS=([portico]="$PID_PORTICO,$PID_REDIS" [spares]="$PID_SPARES,$PID_REDIS" [nginx]="$PID_NGINX,$PID_AUTH"
	[dproxy]=$PID_DPROXY [direct]=$PID_DOVA [relay]=$PID_RELAY
	[portico.pop3]="$PID_PORTICO,$PID_REDIS" [spares.pop3]="$PID_SPARES,$PID_REDIS" [nginx.pop3]="$PID_NGINX,$PID_AUTH_POP3" [dproxy.pop3]=$PID_DPROXY [direct.pop3]=$PID_DOVA
	[relay.pop3]=$PID_RELAY_POP3)
if [ -n "$BEFORE" ]; then
	ADDR[before]=$P_BEFORE
	PIDS[before]="$PID_BEFORE,$PID_REDIS"
	if [ "$BEFORE_POP3" = 1 ]; then
		ADDR[before.pop3]=$P_BEFORE_POP3
		PIDS[before.pop3]="$PID_BEFORE,$PID_REDIS"
	fi
fi
# The relay and Dovecot direct reach the first backend only.
declare -A NUSERS=([portico]=$USERS [before]=$USERS [spares]=$USERS [nginx]=$USERS [dproxy]=$USERS [direct]=$half [relay]=$half)
mkdir -p "$T/results"

# pop3_fronts: the login front ends that take POP3.
pop3_fronts() {
	local f
	for f in "${LOGIN_FRONTS[@]}"; do [ -z "${ADDR[$f.pop3]:-}" ] || echo "$f"; done
}

# bench FRONT TEST ARGS...: one `portico bench` run, its JSON kept; with
# PROTO=pop3, a POP3 one (pop3s).
PROTO=imap
bench() {
	local f=$1 test=$2 k=$1
	shift 2
	[ "$PROTO" = imap ] || k=$f.$PROTO
	"$T/portico" bench "$@" -protocol "$PROTO" -addr "127.0.0.1:${ADDR[$k]}" -ca "$T/cert.pem" \
		-user 'user%d@example.test' -pass 'pw%d' -nusers "${NUSERS[$f]}" \
		-pid "${PIDS[$k]}" -json >"$T/results/$f-$test.json" &
	BENCH=$!
	wait "$BENCH" || true
	BENCH=
	python3 - "$T/results/$f-$test.json" "$f" "$test" <<'EOF' >&2
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    print(f"  {sys.argv[2]:8} {sys.argv[3]:11} no report"); sys.exit()
print(f"  {sys.argv[2]:8} {sys.argv[3]:11} sessions {r['sessions']:5}  ops {r.get('ops', 0):5}  "
      f"errors {r['errors']:4}  {r['elapsed_s']:6.1f} s  {r.get('tls', '')}  {r.get('error_kinds') or ''}")
EOF
}

# descendants PID...: the pids and all their descendants, comma-separated.
descendants() {
	local p kids out=""
	for p in "$@"; do
		out+="$p,"
		kids=$(pgrep -P "$p" | tr '\n' ' ')
		[ -z "$kids" ] || out+="$(descendants $kids),"
	done
	echo "${out%,}"
}

# profile: each front end's IMAP login run at 64 clients under `perf
# record` (its processes only, not its lookup service), Portico's twice
# (X25519, then Go's default curves), then the share of its samples spent
# in the kernel's socket system calls (the TCP work of its connections; on
# loopback the receiving side's too) and in cryptography (Go's crypto
# packages, OpenSSL's libcrypto). Those two are the part of a login that
# no front end that terminates TLS and dials its backend can avoid; the
# rest is its runtime and its own code.
profile() {
	local k f perfpid try
	log "login, 64 clients, under perf record"
	for k in "${FRONTS[@]}" portico.pq; do
		f=${k%.pq}
		# A process that ends between the listing and the attach (one of
		# Dovecot's) makes perf give up: list them again and retry.
		for try in 1 2 3 4 5; do
			perf record -F 999 -g -o "$T/results/$k.perf" -p "$(descendants "${PIDS[$f]%%,*}")" -- sleep 3600 >/dev/null 2>&1 &
			perfpid=$!
			sleep 1
			kill -0 "$perfpid" 2>/dev/null && break
			[ "$try" -lt 5 ] || die "perf record cannot attach to $f's processes"
		done
		if [ "$k" = "$f" ]; then
			bench "$f" profile login -w 64 -n "$LOGINS" -curves $CURVES
		else
			bench "$f" profilepq login -w 64 -n "$LOGINS"
		fi
		pkill -TERM -P "$perfpid" sleep || true
		wait "$perfpid" || true
		perf report -i "$T/results/$k.perf" --children --sort sym -g none >"$T/results/$k.children" 2>/dev/null || true
		perf report -i "$T/results/$k.perf" --no-children --sort dso,sym -g none >"$T/results/$k.self" 2>/dev/null || true
	done
	python3 - "$T/results" "${FRONTS[@]}" <<'EOF'
import json, os, re, sys
dir, fronts = sys.argv[1], sys.argv[2:]
names = {"portico": "Portico", "before": "Portico before", "nginx": "nginx", "dproxy": "Dovecot proxy", "direct": "Dovecot direct", "relay": "Go TLS relay"}
cols = [(f, f, names[f]) for f in fronts]
cols.insert(1, ("portico", "portico.pq", "Portico, X25519MLKEM768"))
# The kernel's entry points of system calls that work a socket, each
# counted with what it calls. sock_write_iter and sock_read_iter are
# write(2), writev(2) and read(2) on sockets only, not on log files.
sockets = re.compile(r"\] (sock_write_iter|sock_read_iter|__x64_sys_(sendto|recvfrom|sendmsg|recvmsg|sendmmsg|recvmmsg|connect|accept4?|shutdown|socket|setsockopt|getsockopt|getsockname|getpeername|epoll_ctl|close))\s*$")
crypto = re.compile(r"(libcrypto|\] crypto/|\] vendor/golang\.org/x/crypto/|\] golang\.org/x/crypto/)")

def share(path, pattern):
    total, samples = 0.0, False
    try:
        for line in open(path):
            m = re.match(r"\s+([0-9.]+)%", line)
            samples = samples or bool(m)
            if m and pattern.search(line):
                total += float(m.group(1))
    except OSError:
        return None
    return total if samples else None

rows = [("CPU per login session, ms (under perf)", []), ("socket system calls, % of its CPU", []),
        ("cryptography, % of its CPU", []), ("the two, ms per login session", []),
        ("the rest (runtime, own code, other kernel work), ms", [])]
for f, k, _ in cols:
    test = "profile" if k == f else "profilepq"
    try:
        r = json.load(open(os.path.join(dir, f"{f}-{test}.json")))
        ms = r["cpu"]["processes"][0]["cpu_s"] * 1000 / r["sessions"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, IndexError):
        ms = None
    s = share(os.path.join(dir, k + ".children"), sockets)
    c = share(os.path.join(dir, k + ".self"), crypto)
    rows[0][1].append("–" if ms is None else f"{ms:.2f}")
    rows[1][1].append("–" if s is None else f"{s:.0f}")
    rows[2][1].append("–" if c is None else f"{c:.0f}")
    rows[3][1].append("–" if None in (ms, s, c) else f"{ms * (s + c) / 100:.2f}")
    rows[4][1].append("–" if None in (ms, s, c) else f"{ms * (1 - (s + c) / 100):.2f}")
print("| | " + " | ".join(c[2] for c in cols) + " |")
print("|---|" + "---:|" * len(cols))
for label, vals in rows:
    print(f"| {label} | " + " | ".join(vals) + " |")
EOF
}

CURVES=X25519,P256
# warmup: every user logs in once through every front end (mailbox
# indexes, route caches, the backends' mail processes), IMAP and POP3.
warmup() {
	log "warm-up: every user logs in once through every front end, IMAP and POP3"
	for f in "${LOGIN_FRONTS[@]}"; do bench "$f" warmup login -w 8 -n "${NUSERS[$f]}" -curves $CURVES; done
	PROTO=pop3
	for f in $(pop3_fronts); do bench "$f" pop3warmup login -w 8 -n "${NUSERS[$f]}" -curves $CURVES; done
	PROTO=imap
}
warmup
# prime [W N]: N unmeasured sessions through Portico with W clients
# (default 64 and 2 * LOGINS) before a test at that concurrency: 64
# clients' worth of mail processes on the backends, which have only a
# few after the lighter tests, and lose idle ones after a minute
# (idle_kill). Without it, the first front end measured at 64 clients
# (Portico) paid for Dovecot forking most of them and meeting users anew
# in each: about 10 % of its logins/s in alternated runs, and less for
# each front end after it. One at a time, it put Portico's session 0.5 to
# 1 ms behind Dovecot direct's, where alternated runs put it level.
prime() {
	local w=${1:-64} n=${2:-$((LOGINS * 2))}
	log "priming the backends: $n unmeasured $PROTO sessions, $w at a time"
	bench portico prime login -w "$w" -n "$n" -curves $CURVES
}
if [ "$SUITE" = profile ]; then
	prime
	profile
	exit 0
fi
if [ "$SUITE" = all ]; then
	# Idle first, so that the memory the front ends hold from the bulk
	# tests (FETCH buffers the GC has not returned yet) does not hide the
	# growth.
	log "$IDLE idle sessions held $HOLD"
	for f in "${FRONTS[@]}"; do bench "$f" idle idle -w 64 -n "$IDLE" -duration "$HOLD" -curves $CURVES; done
	# The idle sessions left the backends with one imap process each
	# (client_limit 1), and a login handed to one of those that has not
	# served that user yet takes Dovecot about 34 ms: until they end
	# (idle_kill, a minute), the one-at-a-time rows would measure that.
	log "waiting for the backends' idle imap processes to end"
	for i in $(seq 120); do
		[ "$(pgrep -c -f '^dovecot/imap$' || true)" -lt 50 ] && break
		sleep 1
	done
	log "$(pgrep -c -f '^dovecot/imap$' || true) imap processes left after ${i}s"
	# They took the warm-up's processes with them: without a second one,
	# the first front end measured (Portico) would pay every user's first
	# login in a new mail process, and those after it less and less.
	warmup
fi
log "login, one client at a time, IMAP then POP3"
prime 1 "$USERS"
for f in "${LOGIN_FRONTS[@]}"; do bench "$f" login1 login -w 1 -n 200 -curves $CURVES; done
PROTO=pop3
prime 1 "$USERS"
for f in $(pop3_fronts); do bench "$f" pop3login1 login -w 1 -n 200 -curves $CURVES; done
PROTO=imap
log "login, 64 clients, IMAP then POP3"
prime
for f in "${LOGIN_FRONTS[@]}"; do bench "$f" login64 login -w 64 -n "$LOGINS" -curves $CURVES; done
PROTO=pop3
prime
for f in $(pop3_fronts); do bench "$f" pop3login64 login -w 64 -n "$LOGINS" -curves $CURVES; done
PROTO=imap
if [ "$SUITE" = all ]; then
	log "login, 64 clients offering Go's default key exchanges (X25519MLKEM768 first)"
	prime
	for f in "${FRONTS[@]}"; do bench "$f" loginpq login -w 64 -n "$LOGINS"; done
	# 400 (about a second each): 50 took a tenth of a second, and the rate
	# moved from 364 to 699 MiB/s between runs.
	log "FETCH of the 1 MiB message 400 times, one session"
	for f in "${FRONTS[@]}"; do bench "$f" fetch fetch -w 1 -n 400 -curves $CURVES; done
	# 10,000: the p99 of 2,000 is the 20th slowest, which the machine's
	# scheduling moves by 0.1 ms from run to run.
	log "NOOP round trips, one session"
	for f in "${FRONTS[@]}"; do bench "$f" latency latency -w 1 -n 10000 -curves $CURVES; done
fi

python3 - "$T/results" "$IDLE" "$BEFORE" <<'EOF'
import json, os, sys
dir, idle, before = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fronts = [("portico", "Portico"), ("spares", "Portico, 4 spares"), ("nginx", "nginx"), ("dproxy", "Dovecot proxy"), ("direct", "Dovecot direct"),
          ("relay", "Go TLS relay (floor)")]
if before:
    fronts.insert(1, ("before", f"Portico at {before}"))

def rep(f, test):
    try:
        return json.load(open(os.path.join(dir, f"{f}-{test}.json")))
    except (OSError, ValueError):
        return None

def cpu(f, test, which):
    r = rep(f, test)
    if not r or not r.get("cpu") or not r["sessions"]:
        return "–"
    procs = r["cpu"]["processes"]
    if which >= len(procs):
        return "(in the above)" if f == "dproxy" else "–"
    return f"{procs[which]['cpu_s'] * 1000 / r['sessions']:.2f}"

def get(f, test, fn):
    r = rep(f, test)
    try:
        return fn(r)
    except (TypeError, KeyError, ZeroDivisionError):
        return "–"

rows = [
    ("CPU per login session, ms (X25519)", lambda f: cpu(f, "login64", 0)),
    ("+ its lookup service, ms (Redis / auth_http)", lambda f: cpu(f, "login64", 1) if f not in ("direct", "relay") else "–"),
    ("CPU per login session, ms (X25519MLKEM768 offered)", lambda f: cpu(f, "loginpq", 0)),
    ("key exchange negotiated by default", lambda f: get(f, "loginpq", lambda r: r["tls"].split()[-1])),
    ("logins/s, 64 clients", lambda f: get(f, "login64", lambda r: f"{r['rate_per_s']:.0f}")),
    ("one at a time: session p50, ms", lambda f: get(f, "login1", lambda r: f"{r['session']['p50_ms']:.1f}")),
    ("one at a time: login p50, ms", lambda f: get(f, "login1", lambda r: f"{r['login']['p50_ms']:.2f}")),
    ("POP3: CPU per login session, ms (X25519)", lambda f: cpu(f, "pop3login64", 0)),
    ("POP3: + its lookup service, ms (Redis / auth_http)", lambda f: cpu(f, "pop3login64", 1) if f not in ("direct", "relay") else "–"),
    ("POP3: logins/s, 64 clients", lambda f: get(f, "pop3login64", lambda r: f"{r['rate_per_s']:.0f}")),
    ("POP3 one at a time: session p50, ms", lambda f: get(f, "pop3login1", lambda r: f"{r['session']['p50_ms']:.1f}")),
    ("POP3 one at a time: login p50, ms", lambda f: get(f, "pop3login1", lambda r: f"{r['login']['p50_ms']:.2f}")),
    ("FETCH 1 MiB, MiB/s (one session)", lambda f: get(f, "fetch", lambda r: f"{r['mib_per_s']:.0f}")),
    ("CPU per MiB fetched, ms", lambda f: get(f, "fetch", lambda r: f"{r['cpu']['processes'][0]['cpu_s'] * 1000 * 1048576 / r['bytes']:.2f}")),
    ("NOOP p50 / p99, ms", lambda f: get(f, "latency", lambda r: f"{r['op']['p50_ms']:.3f} / {r['op']['p99_ms']:.3f}")),
    (f"idle sessions held / survived (of {idle})", lambda f: get(f, "idle", lambda r: f"{r['sessions']} / {r.get('survived', 0)}")),
    ("RSS per idle session, KiB (sum of VmRSS)", lambda f: get(f, "idle", lambda r: f"{r['memory']['rss_per_session_bytes'] / 1024:.1f}")),
    ("PSS per idle session, KiB", lambda f: get(f, "idle", lambda r: f"{r['memory']['pss_per_session_bytes'] / 1024:.1f}")),
    ("errors, all runs", lambda f: str(sum((rep(f, t) or {}).get("errors", 0)
                                          for t in ("login1", "login64", "loginpq", "fetch", "latency", "idle", "pop3login1", "pop3login64")))),
]
print("| | " + " | ".join(name for _, name in fronts) + " |")
print("|---|" + "---:|" * len(fronts))
for label, fn in rows:
    print(f"| {label} | " + " | ".join(fn(f) for f, _ in fronts) + " |")
EOF
