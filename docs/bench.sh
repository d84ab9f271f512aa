#!/usr/bin/env bash
# banger's benchmark harness: every figure is a ratio against a reference
# run in the same script, on the same machine, at the same time, because
# the machines it runs on are shared and noisy. Each measurement is repeated
# and the median kept.
#
# Usage, from the repository root:
#
#   bash docs/bench.sh [--quick] [--only SECTION,...] > table.md
#
# The markdown table (and the machine it ran on) goes to stdout, progress to
# stderr. --quick uses smaller sizes and fewer repetitions (under ~6 minutes
# on an idle machine; the full run takes under ~25). --only runs some of the
# sections: prune (rows 1a, 1b), lock (2), gobench (1c, 3c, 5b), du (3a,
# 3b), cold (4, 7), flatten (5), warm (6), startup (8), link (9, 10: pulls
# over an emulated 400 Mbit/s and 1 Gbit/s link) and files (11: one layer
# of a million empty files). BENCH_REPS=N overrides the repetitions,
# BENCH_FILES_REPS=N those of rows 11 (default 1), BENCH_TMPDIR the
# directory the work dir is made in (default $TMPDIR or /tmp; it decides
# the filesystem measured). docs/BENCHMARKS.md holds the latest table and
# says what each row measures.
#
# Needs Go; installs docker-registry, skopeo and time with apt-get when they
# are missing and it can, and crane with `go install` into the work dir.
# Without docker-registry it serves images from the in-process registry of
# testdata/benchtool; without skopeo its row says n/a. Only 127.0.0.1 is
# ever contacted.
set -euo pipefail

quick=0
only=""
sections=" prune lock gobench du cold flatten warm startup link files "
usage="usage: bash docs/bench.sh [--quick] [--only SECTION,...]; sections:$sections"
while (($#)); do
	case $1 in
	--quick) quick=1 ;;
	--only)
		(($# >= 2)) || {
			echo "bench.sh: --only needs a list of sections; $usage" >&2
			exit 2
		}
		only=" ${2//,/ } "
		shift
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "bench.sh: unknown argument $1; $usage" >&2
		exit 2
		;;
	esac
	shift
done
for s in $only; do
	[[ $sections == *" $s "* ]] || {
		echo "bench.sh: --only: unknown section $s; $usage" >&2
		exit 2
	}
done
# want SECTION: whether the section runs (all of them without --only).
want() { [[ -z $only || $only == *" $1 "* ]]; }

if ((quick)); then
	reps=${BENCH_REPS:-3}
	prune_sizes=(2000 20000)
	du_blobs=20000
	bench_count=1
	main_size=100m main_label="100 MiB"
	big_size=300m big_label="300 MiB"
	files_sizes=(100000 200000)
else
	reps=${BENCH_REPS:-5}
	prune_sizes=(20000 100000)
	du_blobs=100000
	bench_count=3
	main_size=300m main_label="300 MiB"
	big_size=1g big_label="1 GiB"
	files_sizes=(1000000 2000000)
fi
# One pull of 2,000,000 files takes minutes on 2 cores, and peak RSS (its
# only figure) barely moves between runs: one round unless told otherwise.
files_reps=${BENCH_FILES_REPS:-1}
# Link rows: one proxy per rate, each in front of the same registry.
link_rates=(400Mbit 1Gbit) link_bits=(400e6 1e9) link_rtt=5ms
# Building and deleting 100,000-file trees dominates the run: fewer rounds.
prune_reps=$((reps < 3 ? reps : 3))
startup_loops=200

# load: the load averages (1, 5, 15 minutes) now.
load() { cut -d' ' -f1-3 /proc/loadavg; }
log() { printf '[bench %s, load %s] %s\n' "$(date +%T)" "$(load)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ -f go.mod && -f docs/bench.sh ]] && grep -q '^module github.com/banger/banger$' go.mod ||
	die "run from the root of the banger repository: bash docs/bench.sh"
command -v go >/dev/null || die "go is not on PATH; banger needs Go 1.26 to build"

start_all=${EPOCHREALTIME/./}
load_start=$(load)
work=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/banger-bench.XXXXXX")
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
runlog=$work/commands.log

# timed CMD...: runs CMD with its output to the log, sets $elapsed (µs).
timed() {
	local s=${EPOCHREALTIME/./}
	if ! "$@" >>"$runlog" 2>&1; then
		tail -n 20 "$runlog" >&2
		die "command failed: $*"
	fi
	elapsed=$((${EPOCHREALTIME/./} - s))
}
# quiet CMD...: runs CMD untimed, output to the log.
quiet() {
	if ! "$@" >>"$runlog" 2>&1; then
		tail -n 20 "$runlog" >&2
		die "command failed: $*"
	fi
}
# cpu_us: the user+sys time /usr/bin/time -f "%U %S" wrote to $work/cpu, in µs.
cpu_us() { awk '{ printf "%d", ($1 + $2) * 1e6 }' "$work/cpu"; }
median() {
	(($#)) || die "no measurements to take the median of (a bug in bench.sh)"
	printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"
}
# bench_ns FILE NAME: the median ns/op of go test benchmark NAME in FILE.
bench_ns() { median $(awk -v name="Benchmark$2" '$1 ~ "^" name "(-[0-9]+)?$" { print int($3) }' "$1"); }
# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { print $1 }"; }
# dur µs: a human duration.
dur() { awk -v u="$1" 'BEGIN { if (u >= 1e6) printf "%.2f s", u/1e6; else if (u >= 1e3) printf "%.1f ms", u/1e3; else printf "%d µs", u }'; }
kib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k/1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a/b; else print "n/a" }'; }
# le A B: whether A <= B.
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
yesno() { if "$@"; then echo yes; else echo no; fi; }
# turn I A B...: the words A B... rotated by I, so that no contender always
# runs first (or right after the same other one).
turn() {
	local i=$1
	shift
	local n=$# k
	for ((k = 0; k < n; k++)); do
		local j=$(((i + k) % n + 1))
		printf '%s ' "${!j}"
	done
}

# row ID WHAT BANGER REFERENCE RATIO GOAL MET: one table row; the table is
# printed in ID order (1a, 1b, 2, ...), whatever order the rows ran in.
rows=()
row() { rows+=("$1	| $1. $2 | $3 | $4 | $5 | $6 | $7 |"); }

# ---------------------------------------------------------------- tools

need_apt=()
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
[[ -x /usr/bin/time ]] || need_apt+=(time)
if ((${#need_apt[@]})); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		log "installing ${need_apt[*]} with apt-get"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >>"$runlog" 2>&1 ||
			{ apt-get update -qq >>"$runlog" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >>"$runlog" 2>&1; } ||
			log "could not install ${need_apt[*]}; carrying on without"
	else
		log "missing ${need_apt[*]} (not root or no apt-get); carrying on without"
	fi
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time (Debian package time) is needed for peak RSS"

log "building banger, the benchtool and crane into $work"
mkdir -p "$work/bin"
quiet env CGO_ENABLED=0 go build -o "$work/banger" .
quiet go build -o "$work/benchtool" ./testdata/benchtool
quiet env GOBIN="$work/bin" go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
banger=$work/banger bt=$work/benchtool crane=$work/bin/crane
have_skopeo=0
command -v skopeo >/dev/null && have_skopeo=1

# ----------------------------------------------------------- registries

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_file FILE: waits up to 10 s for FILE to be written (an -addr-file).
wait_file() {
	local i
	for i in $(seq 100); do
		[[ -s $1 ]] && return 0
		sleep 0.1
	done
	return 1
}
wait_port() {
	local i
	for i in $(seq 100); do
		port_open "$1" && return 0
		sleep 0.1
	done
	return 1
}

# The counting registry is always the benchtool's: it tells how many layer
# bytes a warm pull fetched.
mkdir -p "$work/reg-count"
"$bt" serve -dir "$work/reg-count" -addr-file "$work/count.addr" >>"$runlog" 2>&1 &
pids+=($!)
wait_file "$work/count.addr" || die "benchtool serve did not start"
count_host=$(<"$work/count.addr")

registry_kind="in-process go-containerregistry registry (testdata/benchtool serve)"
host=$count_host
if command -v docker-registry >/dev/null; then
	for _ in $(seq 20); do
		port=$((20000 + RANDOM % 40000))
		port_open "$port" || break
	done
	mkdir -p "$work/reg-dist"
	cat >"$work/reg-dist/config.yml" <<-EOF
		version: 0.1
		log:
		  level: error
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: $work/reg-dist/data
		http:
		  addr: 127.0.0.1:$port
	EOF
	docker-registry serve "$work/reg-dist/config.yml" >>"$runlog" 2>&1 &
	pids+=($!)
	if wait_port "$port"; then
		host=127.0.0.1:$port
		registry_kind="CNCF Distribution $(docker-registry --version 2>/dev/null | awk '{print $3}') (docker-registry)"
	else
		log "docker-registry did not start; using the in-process registry"
	fi
fi
log "registry: $registry_kind at $host; counting registry at $count_host"

# --------------------------------------------------------------- images

log "generating the $main_label image (seeded) and pushing it"
quiet "$bt" mkimage -size "$main_size" -seed 1 -tag main "$work/img-main"
quiet "$bt" push -tag main "$work/img-main" "$host/bench:main"
[[ $host == "$count_host" ]] || quiet "$bt" push -tag main "$work/img-main" "$count_host/bench:main"
mapfile -t main_layers < <("$bt" layers -tag main "$work/img-main")
main_ref=$host/bench:main

# ------------------------------------------- 1. full prune vs rm -rf

if want prune; then
	id=(1a 1b)
	for k in "${!prune_sizes[@]}"; do
		n=${prune_sizes[$k]}
		log "1. full prune of $n blobs vs rm -rf ($prune_reps rounds)"
		b=() r=() bcpu=() rcpu=()
		for i in $(seq "$prune_reps"); do
			t=$work/tree
			rm -rf "$t"
			mkdir -p "$t"
			quiet "$bt" mktree -n "$n" -seed 1 "$t/banger" "$t/rm" "$t/settle"
			sync
			# The first big deletion after building pays for the journal
			# checkpoint of the creation (tens of seconds at 100k on ext4):
			# a third, untimed copy takes that hit for both.
			rm -rf "$t/settle"
			sync
			for who in $(turn "$i" banger rm); do
				if [[ $who == banger ]]; then
					timed /usr/bin/time -f "%U %S" -o "$work/cpu" "$banger" --cache-dir "$t/banger" image cache prune
					b+=("$elapsed") bcpu+=("$(cpu_us)")
				else
					timed /usr/bin/time -f "%U %S" -o "$work/cpu" rm -rf "$t/rm/oci"
					r+=("$elapsed") rcpu+=("$(cpu_us)")
				fi
				sync
			done
		done
		rm -rf "$work/tree"
		mb=$(median "${b[@]}") mr=$(median "${r[@]}")
		row "${id[$k]}" "full prune, $(printf "%'d" "$n") blobs (\`image cache prune\` vs \`rm -rf\`; CPU user+sys $(dur "$(median "${bcpu[@]}")") vs $(dur "$(median "${rcpu[@]}")"))" "$(dur "$mb")" "$(dur "$mr")" "$(ratio "$mb" "$mr")" "≤ 1.0×" "$(yesno le "$(calc "$mb/$mr")" 1.0)"
	done
fi

# ----------------------------------------- 2. exclusive-lock hold time

if want lock; then
	log "2. exclusive-lock hold time of a full prune (go test -bench RenameAside)"
	sync
	# Each count builds (and deletes) a 100k tree: about 10 s.
	if go test -run '^$' -bench 'RenameAside' -benchtime 20x -count "$bench_count" ./cache/ >"$work/bench2.txt" 2>&1; then
		small=$(bench_ns "$work/bench2.txt" RenameAside/1k) large=$(bench_ns "$work/bench2.txt" RenameAside/100k)
		row 2 "exclusive lock held by a full prune, 100k vs 1k blobs (\`BenchmarkRenameAside\`)" "$(dur $((large / 1000))) at 100k" "$(dur $((small / 1000))) at 1k" "$(ratio "$large" "$small")" "flat (≤ 1.5×), ≤ 5 ms at 100k" "$(yesno le "$(calc "($large/$small <= 1.5) && ($large <= 5e6) ? 0 : 1")" 0)"
	else
		cat "$work/bench2.txt" >>"$runlog"
		tail -n 20 "$work/bench2.txt" >&2
		log "go test -bench RenameAside failed; row 2 is n/a"
		row 2 "exclusive lock held by a full prune, 100k vs 1k blobs" "n/a" "n/a" "n/a" "flat, ≤ 5 ms at 100k" "n/a (benchmark failed to run)"
	fi
fi

# ------------------------------- the same comparisons, in-process (go test)

if want gobench; then
	log "1c and 5b. go test -bench PruneWalk and Flatten (in-process, no start-up or fsync)"
	if go test -run '^$' -bench 'PruneWalk' -benchtime 5x -count "$bench_count" ./cache/ >"$work/bench1c.txt" 2>&1 &&
		go test -run '^$' -bench 'Flatten$' -benchtime 20x -count "$bench_count" ./image/ >"$work/bench5b.txt" 2>&1; then
		p=$(bench_ns "$work/bench1c.txt" PruneWalk/prune/10k) r=$(bench_ns "$work/bench1c.txt" PruneWalk/reference-removeall/10k)
		row 1c "full prune's tally-and-delete of 10,000 blobs vs \`os.RemoveAll\` (\`BenchmarkPruneWalk\`, in-process)" "$(dur $((p / 1000)))" "$(dur $((r / 1000)))" "$(ratio "$p" "$r")" "≤ 1.0×" "$(yesno le "$(calc "$p/$r")" 1.0)"
		p=$(bench_ns "$work/bench1c.txt" PruneWalk/dry-run/10k) r=$(bench_ns "$work/bench1c.txt" PruneWalk/reference-lstat-all/10k)
		row 3c "dry run's tally of 10,000 blobs vs \`filepath.WalkDir\` + \`Lstat\` (\`BenchmarkPruneWalk\`, in-process)" "$(dur $((p / 1000)))" "$(dur $((r / 1000)))" "$(ratio "$p" "$r")" "≤ 1.0×" "$(yesno le "$(calc "$p/$r")" 1.0)"
		p=$(bench_ns "$work/bench5b.txt" Flatten/flatten) r=$(bench_ns "$work/bench5b.txt" Flatten/reference-tar-read)
		row 5b "flattener alone on 4 uncompressed layers in memory vs reading their tar streams (\`BenchmarkFlatten\`)" "$(dur $((p / 1000)))" "$(dur $((r / 1000)))" "$(ratio "$p" "$r")" "— (for scale)" "—"
	else
		cat "$work/bench1c.txt" "$work/bench5b.txt" >>"$runlog" 2>/dev/null || true
		log "go test -bench PruneWalk or Flatten failed; rows 1c, 3c and 5b are n/a"
		row 1c "\`BenchmarkPruneWalk\`" "n/a" "n/a" "n/a" "≤ 1.0×" "n/a (benchmark failed to run)"
	fi
fi

# ------------------------------------------------- 3. measuring vs du -sb

if want du; then
	log "3. prune --dry-run and cache du vs du -sb on $du_blobs blobs ($reps rounds)"
	t=$work/dutree
	mkdir -p "$t"
	quiet "$bt" mktree -n "$du_blobs" -seed 2 "$t"
	sync
	# Warm the dentry and inode caches once for all three.
	quiet du -sb "$t/oci"
	quiet "$banger" --cache-dir "$t" image cache du
	d=() u=() r=()
	for i in $(seq "$reps"); do
		for who in $(turn "$i" dry du ref); do
			case $who in
			dry)
				timed "$banger" --cache-dir "$t" image cache prune --dry-run
				d+=("$elapsed")
				;;
			du)
				timed "$banger" --cache-dir "$t" image cache du
				u+=("$elapsed")
				;;
			ref)
				timed du -sb "$t/oci"
				r+=("$elapsed")
				;;
			esac
		done
	done
	rm -rf "$t"
	md=$(median "${d[@]}") mu=$(median "${u[@]}") mr=$(median "${r[@]}")
	nice_n=$(printf "%'d" "$du_blobs")
	row 3a "\`image cache prune --dry-run\` vs \`du -sb\`, $nice_n blobs" "$(dur "$md")" "$(dur "$mr")" "$(ratio "$md" "$mr")" "≤ 1.0×" "$(yesno le "$(calc "$md/$mr")" 1.0)"
	row 3b "\`image cache du\` vs \`du -sb\`, $nice_n blobs" "$(dur "$mu")" "$(dur "$mr")" "$(ratio "$mu" "$mr")" "≤ 1.0×" "$(yesno le "$(calc "$mu/$mr")" 1.0)"
fi

# ------------------------------------ 4 and 7. cold pull + flatten, RSS

if want cold; then
	# cold_round REF I: one round of banger, crane export and skopeo copy of
	# REF, each from nothing, in an order that turns with I; appends times to
	# cb/cc/cs and peak RSS (KiB) to rb/rc.
	cold_round() {
		local ref=$1 i=$2 who
		for who in $(turn "$i" banger crane skopeo); do
			rm -rf "$work/cold"
			mkdir -p "$work/cold"
			sync
			case $who in
			banger)
				timed /usr/bin/time -f %M -o "$work/rss" "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image pull -q "$ref"
				cb+=("$elapsed") rb+=("$(tail -n 1 "$work/rss")")
				;;
			crane)
				timed /usr/bin/time -f %M -o "$work/rss" "$crane" export --insecure "$ref" "$work/cold/rootfs.tar"
				cc+=("$elapsed") rc+=("$(tail -n 1 "$work/rss")")
				;;
			skopeo)
				if ((have_skopeo)); then
					timed skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/cold/layout:x"
					cs+=("$elapsed")
				fi
				;;
			esac
		done
		rm -rf "$work/cold"
	}

	log "4. cold pull + flatten of the $main_label image vs crane export and skopeo copy ($reps rounds)"
	cb=() cc=() cs=() rb=() rc=()
	for i in $(seq "$reps"); do cold_round "$main_ref" "$i"; done
	mb=$(median "${cb[@]}") mc=$(median "${cc[@]}")
	row 4a "cold pull + flatten, $main_label / 5 layers (\`image pull\` vs \`crane export\`)" "$(dur "$mb")" "$(dur "$mc")" "$(ratio "$mb" "$mc")" "≤ 0.8×" "$(yesno le "$(calc "$mb/$mc")" 0.8)"
	if ((have_skopeo)); then
		ms=$(median "${cs[@]}")
		row 4b "cold pull + flatten vs \`skopeo copy docker:// oci:\` (download only, no flatten)" "$(dur "$mb")" "$(dur "$ms")" "$(ratio "$mb" "$ms")" "— (for scale)" "—"
	else
		row 4b "cold pull + flatten vs \`skopeo copy\`" "$(dur "$mb")" "n/a" "n/a" "— (for scale)" "n/a (skopeo not installed)"
	fi
	rss_main=$(median "${rb[@]}") rss_crane=$(median "${rc[@]}")
	row 7a "peak RSS of pull + flatten, $main_label (\`image pull\` vs \`crane export\`)" "$(kib "$rss_main")" "$(kib "$rss_crane")" "$(ratio "$rss_main" "$rss_crane")" "≤ 48 MiB" "$(yesno le "$rss_main" 49152)"

	if [[ -n $big_size ]]; then
		big_reps=$((reps < 3 ? reps : 3))
		log "4/7. the $big_label image: cold pull time and peak RSS ($big_reps rounds)"
		quiet "$bt" mkimage -size "$big_size" -seed 3 -tag big "$work/img-big"
		quiet "$bt" push -tag big "$work/img-big" "$host/bench:big"
		rm -rf "$work/img-big"
		save_skopeo=$have_skopeo have_skopeo=0
		cb=() cc=() cs=() rb=() rc=()
		for i in $(seq "$big_reps"); do cold_round "$host/bench:big" "$i"; done
		have_skopeo=$save_skopeo
		mb=$(median "${cb[@]}") mc=$(median "${cc[@]}")
		row 4c "cold pull + flatten, $big_label / 5 layers (\`image pull\` vs \`crane export\`)" "$(dur "$mb")" "$(dur "$mc")" "$(ratio "$mb" "$mc")" "≤ 0.8×" "$(yesno le "$(calc "$mb/$mc")" 0.8)"
		rss_big=$(median "${rb[@]}")
		row 7b "peak RSS of pull + flatten, $big_label vs $main_label (\`image pull\`; crane: $(kib "$(median "${rc[@]}")"))" "$(kib "$rss_big")" "$(kib "$rss_main")" "$(ratio "$rss_big" "$rss_main")" "≤ 48 MiB, flat (≤ 1.25×)" "$(yesno le "$(calc "($rss_big <= 49152 && $rss_big <= 1.25*$rss_main) ? 0 : 1")" 0)"
	fi
fi

# ------------------------------------- 5. flatten alone vs gzip -dc

if want flatten; then
	log "5. flatten alone (warm pull from an oci: layout) vs gzip -dc of the layers ($reps rounds)"
	c5=$work/c5
	quiet "$banger" --cache-dir "$c5" --data-dir "$work/d5" image pull -q "oci:$work/img-main:main"
	gunzip_all() {
		local f
		for f in "${main_layers[@]}"; do gzip -dc "$f" >/dev/null; done
	}
	f=() g=()
	for i in $(seq "$reps"); do
		rm -rf "$work/d5"
		sync
		for who in $(turn "$i" banger gzip); do
			if [[ $who == banger ]]; then
				timed "$banger" --cache-dir "$c5" --data-dir "$work/d5" image pull -q "oci:$work/img-main:main"
				f+=("$elapsed")
			else
				timed gunzip_all
				g+=("$elapsed")
			fi
		done
	done
	rm -rf "$c5" "$work/d5"
	mf=$(median "${f[@]}") mg=$(median "${g[@]}")
	row 5 "flatten alone: warm \`image pull oci:\`, $main_label, vs \`gzip -dc\` of each layer" "$(dur "$mf")" "$(dur "$mg")" "$(ratio "$mf" "$mg")" "≤ 1.3×" "$(yesno le "$(calc "$mf/$mg")" 1.3)"
fi

# -------------------------------------------- 6. warm vs cold pull

if want warm; then
	log "6. warm vs cold pull from the counting registry ($reps rounds)"
	count_url=http://$count_host
	c6=$work/c6
	quiet "$banger" --cache-dir "$c6" --data-dir "$work/d6" image pull -q "$count_host/bench:main"
	w=() c=()
	warm_gets=0 warm_bytes=0
	for i in $(seq "$reps"); do
		for who in $(turn "$i" warm cold); do
			rm -rf "$work/d6" "$work/cold6"
			sync
			"$bt" stats -reset "$count_url" >/dev/null
			if [[ $who == warm ]]; then
				timed "$banger" --cache-dir "$c6" --data-dir "$work/d6" image pull -q "$count_host/bench:main"
				w+=("$elapsed")
				read -r lg lb _ < <("$bt" stats -tag main "$count_url" "$work/img-main")
				warm_gets=$((warm_gets + ${lg#layer_gets=})) warm_bytes=$((warm_bytes + ${lb#layer_bytes=}))
			else
				timed "$banger" --cache-dir "$work/cold6/c" --data-dir "$work/cold6/d" image pull -q "$count_host/bench:main"
				c+=("$elapsed")
			fi
		done
	done
	mw=$(median "${w[@]}") mc=$(median "${c[@]}")
	row 6 "warm pull (all blobs cached) vs cold pull, $main_label; layer blob GETs during $reps warm pulls: $warm_gets ($warm_bytes bytes)" "$(dur "$mw")" "$(dur "$mc")" "$(ratio "$mw" "$mc")" "≤ 0.15×, 0 layer bytes" "$(yesno le "$(calc "($mw/$mc <= 0.15 && $warm_bytes == 0) ? 0 : 1")" 0)"

	# 6b. The image is in the store under the name pulled: the re-pull is
	# one manifest request, no blob (not even the config), nothing flattened.
	log "6b. up-to-date re-pull vs the cold pull of row 6 ($reps rounds)"
	quiet "$banger" --cache-dir "$c6" --data-dir "$work/d6u" image pull -q "$count_host/bench:main"
	u=()
	up_gets=0 up_bytes=0 up_requests=0
	for i in $(seq "$reps"); do
		"$bt" stats -reset "$count_url" >/dev/null
		timed "$banger" --cache-dir "$c6" --data-dir "$work/d6u" image pull -q "$count_host/bench:main"
		u+=("$elapsed")
		read -r lg lb rq < <("$bt" stats -tag main "$count_url" "$work/img-main")
		up_gets=$((up_gets + ${lg#layer_gets=})) up_bytes=$((up_bytes + ${lb#layer_bytes=})) up_requests=$((up_requests + ${rq#requests=}))
	done
	mu6=$(median "${u[@]}")
	row 6b "up-to-date re-pull vs cold pull, $main_label; during $reps re-pulls: $up_gets layer blob GETs ($up_bytes bytes), $up_requests requests in all" "$(dur "$mu6")" "$(dur "$mc")" "$(ratio "$mu6" "$mc")" "≤ 0.02×, 0 layer bytes" "$(yesno le "$(calc "($mu6/$mc <= 0.02 && $up_bytes == 0) ? 0 : 1")" 0)"
	rm -rf "$c6" "$work/d6" "$work/d6u" "$work/cold6"
fi

# ----------------------------------------------- 8. start-up time

if want startup; then
	log "8. banger --version vs /bin/true, $startup_loops runs each ($reps rounds)"
	loop() {
		local k
		for ((k = 0; k < startup_loops; k++)); do "$@" >/dev/null; done
	}
	s=() t=()
	for i in $(seq "$reps"); do
		timed loop "$banger" --version
		s+=("$elapsed")
		timed loop /bin/true
		t+=("$elapsed")
	done
	ms=$(median "${s[@]}") mt=$(median "${t[@]}")
	over=$(((ms - mt) / startup_loops))
	row 8 "start-up: \`banger --version\` vs \`/bin/true\`, per run (ms over: $(dur "$over"))" "$(dur $((ms / startup_loops)))" "$(dur $((mt / startup_loops)))" "$(ratio "$ms" "$mt")" "≤ 10 ms over" "$(yesno le "$over" 10000)"
fi

# ------------------------------- 9 and 10. pulls over an emulated link

if want link; then
	link_reps=$((reps < 3 ? reps : 3))
	link_goal=(1.03 1.10) id=(9 10)
	# What a pull downloads: the manifest, the config and the layers.
	link_bytes=$("$bt" blobbytes -tag main "$work/img-main")
	link_bytes=${link_bytes#blob_bytes=}
	# link_round REF I: one round of banger (a cold pull, then, once the
	# image is removed, a pull whose blobs are all cached, then once more,
	# up to date), crane export and skopeo copy of REF, each from nothing,
	# in an order that turns with I;
	# appends times to lb/lw/lu/lc/ls, banger's CPU time (user+sys) to
	# lbcpu/lwcpu and the cold pull's peak RSS (KiB) to lr.
	link_round() {
		local ref=$1 i=$2 who
		for who in $(turn "$i" banger crane skopeo); do
			rm -rf "$work/cold"
			mkdir -p "$work/cold"
			sync
			case $who in
			banger)
				timed /usr/bin/time -f "%U %S %M" -o "$work/cpu" "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image pull -q --name link "$ref"
				lb+=("$elapsed") lbcpu+=("$(cpu_us)") lr+=("$(awk '{ print $3 }' "$work/cpu")")
				quiet "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image rm link
				sync
				timed /usr/bin/time -f "%U %S" -o "$work/cpu" "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image pull -q --name link "$ref"
				lw+=("$elapsed") lwcpu+=("$(cpu_us)")
				# The name now holds this manifest: a pull is up to date.
				timed "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image pull -q --name link "$ref"
				lu+=("$elapsed")
				;;
			crane)
				timed "$crane" export --insecure "$ref" "$work/cold/rootfs.tar"
				lc+=("$elapsed")
				;;
			skopeo)
				if ((have_skopeo)); then
					timed skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/cold/layout:x"
					ls+=("$elapsed")
				fi
				;;
			esac
		done
		rm -rf "$work/cold"
	}
	for k in "${!link_rates[@]}"; do
		rate=${link_rates[$k]} n=${id[$k]}
		rm -f "$work/link.addr"
		"$bt" link -rate "$rate" -rtt "$link_rtt" -upstream "$host" -addr-file "$work/link.addr" >>"$runlog" 2>&1 &
		link_pid=$!
		pids+=("$link_pid")
		wait_file "$work/link.addr" || die "benchtool link did not start"
		ref=$(<"$work/link.addr")/bench:main
		# The link's transfer time of the blob bytes, in µs.
		xfer=$(awk -v b="$link_bytes" -v r="${link_bits[$k]}" 'BEGIN { printf "%d", b * 8 / r * 1e6 }')
		log "$n. the $main_label image over a $rate link (rtt $link_rtt per connection): banger cold and after image rm, crane export, skopeo copy ($link_reps rounds)"
		lb=() lw=() lu=() lc=() ls=() lr=() lbcpu=() lwcpu=()
		for i in $(seq "$link_reps"); do link_round "$ref" "$i"; done
		kill "$link_pid" 2>/dev/null || true
		wait "$link_pid" 2>/dev/null || true
		mb=$(median "${lb[@]}") mw=$(median "${lw[@]}") mc=$(median "${lc[@]}")
		what="over a $rate link (rtt $link_rtt), $main_label / 5 layers"
		row "${n}a" "cold pull + flatten $what, vs the link's transfer time of its $(kib $((link_bytes / 1024))) of blobs (CPU user+sys $(dur "$(median "${lbcpu[@]}")"); peak RSS $(kib "$(median "${lr[@]}")"))" "$(dur "$mb")" "$(dur "$xfer")" "$(ratio "$mb" "$xfer")" "≤ ${link_goal[$k]}×" "$(yesno le "$(calc "$mb/$xfer")" "${link_goal[$k]}")"
		row "${n}b" "cold pull + flatten $what, vs \`crane export\` through the same link" "$(dur "$mb")" "$(dur "$mc")" "$(ratio "$mb" "$mc")" "≤ 0.75×" "$(yesno le "$(calc "$mb/$mc")" 0.75)"
		if ((have_skopeo)); then
			ms=$(median "${ls[@]}")
			row "${n}c" "cold pull + flatten $what, vs \`skopeo copy docker:// oci:\` through the same link (download only; skopeo ÷ transfer time: $(ratio "$ms" "$xfer"))" "$(dur "$mb")" "$(dur "$ms")" "$(ratio "$mb" "$ms")" "— (for scale)" "—"
		else
			row "${n}c" "cold pull + flatten $what, vs \`skopeo copy\`" "$(dur "$mb")" "n/a" "n/a" "— (for scale)" "n/a (skopeo not installed)"
		fi
		row "${n}d" "pull after \`image rm\` (blobs cached) vs cold pull, $what (CPU user+sys $(dur "$(median "${lwcpu[@]}")"))" "$(dur "$mw")" "$(dur "$mb")" "$(ratio "$mw" "$mb")" "≤ 0.07×" "$(yesno le "$(calc "$mw/$mb")" 0.07)"
		mu=$(median "${lu[@]}")
		row "${n}e" "pull of a name already up to date (no blob fetched, nothing flattened) vs cold pull, $what" "$(dur "$mu")" "$(dur "$mb")" "$(ratio "$mu" "$mb")" "— (for scale)" "—"
	done
fi

# ------------------------------- 11. peak RSS on a million empty files

if want files; then
	files_b=() files_c=() files_t=()
	for k in "${!files_sizes[@]}"; do
		n=${files_sizes[$k]}
		log "11. one layer of $n empty files: peak RSS of image pull vs crane export ($files_reps rounds)"
		quiet "$bt" mkfiles -n "$n" -tag "f$n" "$work/img-files"
		quiet "$bt" push -tag "f$n" "$work/img-files" "$host/bench:f$n"
		rm -rf "$work/img-files"
		fb=() fc=() ft=()
		for i in $(seq "$files_reps"); do
			for who in $(turn "$i" banger crane); do
				rm -rf "$work/cold"
				mkdir -p "$work/cold"
				sync
				if [[ $who == banger ]]; then
					timed /usr/bin/time -f %M -o "$work/rss" "$banger" --cache-dir "$work/cold/c" --data-dir "$work/cold/d" image pull -q "$host/bench:f$n"
					fb+=("$(tail -n 1 "$work/rss")") ft+=("$elapsed")
				else
					timed /usr/bin/time -f %M -o "$work/rss" "$crane" export --insecure "$host/bench:f$n" "$work/cold/rootfs.tar"
					fc+=("$(tail -n 1 "$work/rss")")
				fi
			done
		done
		rm -rf "$work/cold"
		files_b+=("$(median "${fb[@]}")") files_c+=("$(median "${fc[@]}")") files_t+=("$(median "${ft[@]}")")
	done
	n1=$(printf "%'d" "${files_sizes[0]}") n2=$(printf "%'d" "${files_sizes[1]}")
	row 11a "peak RSS flattening one layer of $n1 empty files (\`image pull\` vs \`crane export\`; the pull took $(dur "${files_t[0]}"))" "$(kib "${files_b[0]}")" "$(kib "${files_c[0]}")" "$(ratio "${files_b[0]}" "${files_c[0]}")" "≤ 128 MiB" "$(yesno le "${files_b[0]}" 131072)"
	row 11b "peak RSS flattening one layer of $n2 vs $n1 empty files (\`image pull\`; crane: $(kib "${files_c[1]}"); the pull took $(dur "${files_t[1]}"))" "$(kib "${files_b[1]}")" "$(kib "${files_b[0]}")" "$(ratio "${files_b[1]}" "${files_b[0]}")" "≤ 128 MiB, flat (≤ 1.25×)" "$(yesno le "$(calc "(${files_b[1]} <= 131072 && ${files_b[1]} <= 1.25*${files_b[0]}) ? 0 : 1")" 0)"
fi

# ------------------------------------------------------------- report

total=$(((${EPOCHREALTIME/./} - start_all) / 1000000))
mode=full
((quick)) && mode=quick
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
fs=$( (findmnt -n -o FSTYPE,OPTIONS --target "$work" 2>/dev/null || df -T "$work" | awk 'NR == 2 { print $2 }') | tr -s " ")
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev (with uncommitted changes)"

cat <<EOF
Run: \`bash docs/bench.sh$( ((quick)) && echo " --quick")$([[ -n $only ]] && echo " --only $(echo $only | tr ' ' ,)")\` ($mode mode, median of $reps rounds, $prune_reps for row 1, at most 3 for rows 4c, 7b, 9 and 10, $files_reps for row 11; ${total}s in all), $(date -u '+%Y-%m-%d %H:%M UTC'), banger $rev.

| what | banger | reference | ratio | goal | met? |
|---|---|---|---|---|---|
EOF
printf '%s\n' "${rows[@]}" | sort -V -k1,1 | cut -f2-
cat <<EOF

Machine: $(nproc) cores ($cpu), $mem memory, Linux $(uname -r), $(go version | awk '{print $3, $4}'), work dir filesystem: $fs.
Registry: $registry_kind; row 6 uses the counting in-process registry (\`testdata/benchtool serve\`); rows 9 and 10 go through \`testdata/benchtool link\` in front of the registry (one bandwidth budget shared by all connections, $link_rtt per new connection). Images generated by \`testdata/benchtool mkimage\` and \`mkfiles\` (seeded).
Load average (1, 5, 15 min; $(nproc) cores): $load_start at the start, $(load) at the end.
EOF
log "done in ${total}s"
