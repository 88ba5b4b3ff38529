#!/usr/bin/env bash
# check-determinism.sh — STYLE.md rule 8: the deterministic layers (crdt/, sim/ and the node core)
# reach the outside world only through the injected environment (fm_env), so the simulator can drive
# the real code from one seed. This fails, printing file:line for each offence, if one of them calls
# a clock, a random source, a socket function or libevent directly.
#
# Comments, string literals and character literals are blanked out before matching, and only a bare
# identifier followed by "(" counts: fm_hlc_time(, env->now_ms(, env->connect( and s.bind( do not.
set -euo pipefail

# Node files that are NOT core: they own the process's I/O (storage, the executable, the command
# line, the replica driver that wires fm_env to the OS) and may call the functions listed below.
# Paths relative to the repo root; shell globs allowed. Keep this list short and say why in review.
NODE_EXEMPT=(
    'node/store.c'
    'node/main.c'
    'node/cli*.c'
    'node/replica.c'
)

# Directories whose every .c/.h is checked (recursively).
CHECKED_DIRS=(crdt sim)

# Forbidden callees: extended regex matched against the whole identifier.
FORBIDDEN='time|clock_gettime|gettimeofday|rand|random|srand|randombytes_buf|randombytes_random'
FORBIDDEN+='|socket|connect|bind|listen|accept|sendto|recvfrom|event_base_[A-Za-z0-9_]*'
# Same rule, other spellings of the same outside world.
FORBIDDEN+='|clock|getrandom|arc4random|sleep|usleep|nanosleep|send|recv|sendmsg|recvmsg|getaddrinfo'

cd "$(dirname "$0")/.."

is_exempt() {
    local pat
    for pat in "${NODE_EXEMPT[@]}"; do
        # shellcheck disable=SC2053 # $pat is a glob on purpose
        [[ $1 == $pat ]] && return 0
    done
    return 1
}

FILES=()
for d in "${CHECKED_DIRS[@]}"; do
    [ -d "$d" ] || continue
    while IFS= read -r f; do FILES+=("$f"); done < <(find "$d" -type f -name '*.[ch]' | LC_ALL=C sort)
done
if [ -d node ]; then
    while IFS= read -r f; do
        is_exempt "$f" || FILES+=("$f")
    done < <(find node -type f -name '*.[ch]' | LC_ALL=C sort)
fi

if [ "${#FILES[@]}" -eq 0 ]; then
    echo "check-determinism.sh: no files to check"
    exit 0
fi

# Pass 1 (strip): blank comments and string/char literals, keeping line structure, so line numbers
# still match the source. Pass 2 (scan): report each forbidden identifier followed by "(" that is not
# a member access (preceded by "." or "->").
# shellcheck disable=SC2016 # awk programs, not shell expansions
STRIP='
BEGIN { state = "code" }
FNR == 1 { state = "code" }
{
    out = ""; n = length($0); i = 1
    if (state == "line") state = "code"
    while (i <= n) {
        c = substr($0, i, 1); c2 = substr($0, i, 2)
        if (state == "code") {
            if (c2 == "/*") { state = "block"; out = out "  "; i += 2; continue }
            if (c2 == "//") { state = "line"; break }
            if (c == "\"") { state = "str"; out = out " "; i++; continue }
            if (c == "'"'"'") { state = "chr"; out = out " "; i++; continue }
            out = out c; i++
        } else if (state == "block") {
            if (c2 == "*/") { state = "code"; out = out "  "; i += 2; continue }
            out = out " "; i++
        } else if (state == "str" || state == "chr") {
            if (c == "\\") { out = out "  "; i += 2; continue }
            if ((state == "str" && c == "\"") || (state == "chr" && c == "'"'"'")) state = "code"
            out = out " "; i++
        }
    }
    # A string or char literal ends at the end of its line unless continued with a backslash.
    if ((state == "str" || state == "chr") && substr($0, n, 1) != "\\") state = "code"
    print FILENAME "\t" FNR "\t" out
}'

# shellcheck disable=SC2016
SCAN='
BEGIN { FS = "\t"; bad = 0; re = "^(" forbidden ")$" }
{
    rest = $3
    while (match(rest, /[A-Za-z_][A-Za-z0-9_]*[ \t]*\(/)) {
        call = substr(rest, RSTART, RLENGTH)
        name = call; sub(/[ \t]*\($/, "", name)
        before = substr(rest, 1, RSTART - 1); sub(/[ \t]+$/, "", before)
        member = (before ~ /\.$/ || before ~ /->$/)
        if (name ~ re && !member) {
            printf "%s:%d: direct call to %s() (use the injected fm_env instead)\n", $1, $2, name
            bad++
        }
        rest = substr(rest, RSTART + RLENGTH)
    }
}
END { exit bad > 0 }'

if awk "$STRIP" "${FILES[@]}" | awk -v forbidden="$FORBIDDEN" "$SCAN"; then
    echo "check-determinism.sh: ${#FILES[@]} files OK"
    exit 0
fi
echo "check-determinism.sh: FAILED: STYLE.md rule 8 — crdt/, sim/ and node core get time, randomness," \
    "timers and network only through fm_env. Exempt node files: ${NODE_EXEMPT[*]}" >&2
exit 1
