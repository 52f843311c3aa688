# bench/http/lib.sh: helpers shared by bench/run and bench/reload/run (bash, sourced).
# Servers started with `start` are recorded and stopped by `stop_all` (the EXIT trap set by
# `bench_init`), masters and their workers alike, even when the run fails half-way.
# Needs: bash, awk, wrk, /proc. No python.

bench_init() { # bench_init: temp dir, pid list, trap; sets $tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/lcbench.XXXXXX")
  started=()
  trap 'stop_all; kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
  trap 'exit 130' INT TERM HUP
}

# Children of pid (from /proc; the master's workers), then their children.
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

# running pid: alive and not a zombie (orphaned workers may sit unreaped under pid 1).
running() {
  local s
  s=$(awk '{ sub(/^[0-9]+ \(.*\) /, ""); print $1 }' /proc/"$1"/stat 2>/dev/null) || return 1
  [ -n "$s" ] && [ "$s" != Z ]
}

# stop_tree pid: SIGTERM the master, SIGKILL it and its descendants if still there after 3 s.
stop_tree() {
  local pid=$1 kids k i
  kids=$(descendants "$pid")
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 30); do
    running "$pid" || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  for k in $kids $(descendants "$pid"); do
    if running "$k"; then
      for i in $(seq 10); do running "$k" || break; sleep 0.1; done
      kill -KILL "$k" 2>/dev/null
    fi
  done
  wait "$pid" 2>/dev/null
  return 0
}

stop_all() {
  local p
  for p in "${started[@]}"; do stop_tree "$p"; done
  started=()
}

# start name cmd...: runs cmd in the background (stdout $tmp/name.out, stderr $tmp/name.err);
# sets $srv_pid.
start() {
  local name=$1
  shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  srv_pid=$!
  started+=("$srv_pid")
}

# stop pid: stops one server started with `start` and forgets it.
stop() {
  local p keep=()
  stop_tree "$1"
  for p in "${started[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  started=("${keep[@]}")
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# wait_ready name pid port [pattern count]: until `count` lines of $tmp/name.out match
# pattern (default: the port accepts), at most 15 s. Fails if the server exited.
wait_ready() {
  local name=$1 pid=$2 port=$3 pat=${4:-} count=${5:-1} i
  for i in $(seq 300); do
    if ! running "$pid"; then
      echo "bench: $name exited before it was ready:" >&2
      tail -5 "$tmp/$name.out" "$tmp/$name.err" >&2
      return 1
    fi
    if [ -n "$pat" ]; then
      [ "$(grep -c -- "$pat" "$tmp/$name.out")" -ge "$count" ] && port_open "$port" && return 0
    else
      port_open "$port" && return 0
    fi
    sleep 0.05
  done
  echo "bench: $name not ready after 15 s" >&2
  return 1
}

# wrk_parse file -> "rps p50ms p99ms requests non2xx socket_errors connect/read/write/timeout"
wrk_parse() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v * 0.001
      if (v ~ /ms$/) return v + 0
      if (v ~ /s$/) return v * 1000
      if (v ~ /m$/) return v * 60000
      return v + 0
    }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { req = $1 }
    /Non-2xx/ { n2 = $NF }
    /Socket errors/ { gsub(",", ""); err = $4 + $6 + $8 + $10; kinds = $4 "/" $6 "/" $8 "/" $10 }
    END { if (kinds == "") kinds = "0/0/0/0"
      printf "%.0f %.2f %.2f %d %d %d %s\n", rps, p50, p99, req, n2, err, kinds }' "$1"
}

# rss_workers pid -> "avg_MB n" over the master's children (VmRSS from /proc).
rss_workers() {
  local k sum=0 n=0 kb
  for k in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    kb=$(awk '/^VmRSS:/ { print $2 }' /proc/"$k"/status 2>/dev/null)
    [ -n "$kb" ] || continue
    sum=$((sum + kb))
    n=$((n + 1))
  done
  awk -v s="$sum" -v n="$n" 'BEGIN { printf "%.1f %d\n", n ? s / n / 1024 : 0, n }'
}

# Results: one row per figure, '|'-separated, appended to $rows:
#   workload|server|value|unit|p50|p99|errors|ratio|target|holds
row() {
  local IFS='|'
  echo "$*" >>"$rows"
}

# ratio a b -> a/b with 2 decimals ("-" if b is 0 or empty)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'; }

# holds r op limit -> yes/NO (op: ge or le)
holds() {
  awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (r == "-") { print "-"; exit }
    ok = (op == "ge") ? (r + 0 >= l + 0) : (r + 0 <= l + 0); print ok ? "yes" : "NO" }'
}

print_table() {
  awk -F'|' '
    BEGIN {
      fmt = "%-24s %-28s %11s %-8s %7s %7s %6s  %-44s %-26s %s\n"
      printf fmt, "workload", "server", "value", "unit", "p50ms", "p99ms", "errors", "ratio", "target", "holds"
    }
    { printf fmt, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$1"
}

# A base port below the ephemeral range (32768+ here), where client sockets of concurrent
# benchmarks cannot hold it; callers add an offset per server.
base_port() { echo $((20000 + RANDOM % 11000)); }

print_md() {
  awk -F'|' '
    BEGIN {
      print "| workload | server | value | unit | p50 ms | p99 ms | errors | ratio | target | holds |"
      print "|---|---|--:|---|--:|--:|--:|---|---|---|"
    }
    { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$1"
}
