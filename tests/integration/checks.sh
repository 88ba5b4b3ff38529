# checks.sh — the assertions the shell integration tests share (sourced, after the test has set
# T to its scratch directory): CHECKS and FAILS count, a failure names the test's own line.
#   run CMD...          stdout in $OUT, stderr in $ERR, exit status in $RC
#   ok CMD...           run, which must exit 0
#   eq WHAT GOT WANT    contains WHAT HAYSTACK NEEDLE

CHECKS=0
FAILS=0
fail() {
    FAILS=$((FAILS + 1))
    printf 'FAIL (line %s): %s\n' "${BASH_LINENO[1]:-?}" "$*" >&2
}

run() {
    "$@" >"$T/.out" 2>"$T/.err"
    RC=$?
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
    LAST="$*"
}

eq() {
    CHECKS=$((CHECKS + 1))
    if [ "$2" != "$3" ]; then
        fail "$1"$'\n'"  command: ${LAST:-}"$'\n'"  got:  $2"$'\n'"  want: $3"$'\n'"  stderr: ${ERR:-}"
    fi
}

contains() {
    CHECKS=$((CHECKS + 1))
    case "$2" in
    *"$3"*) ;;
    *) fail "$1"$'\n'"  command: ${LAST:-}"$'\n'"  output: $2"$'\n'"  should contain: $3" ;;
    esac
}

ok() {
    run "$@"
    eq "exit status" "$RC" 0
}
