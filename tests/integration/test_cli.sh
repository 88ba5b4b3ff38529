#!/usr/bin/env bash
# test_cli.sh — the fieldmesh command line end to end, against the built binary:
#   init (fingerprint, key file mode), put/get/list/del/conflicts/status --json with exact JSON,
#   --dir before or after the command, FIELDMESH_DIR and the HOME default, usage errors (exit 2,
#   usage on stderr, nothing written), a key file readable by others, a store.db that is someone
#   else's sqlite file or garbage (clear error, file untouched), missing records (exit 1).
#
# usage: test_cli.sh PATH-TO-fieldmesh PATH-TO-cli_sync
# Every failure prints the command, what was expected and what came out; temp files go at exit.
set -u

FM=${1:?usage: test_cli.sh PATH-TO-fieldmesh PATH-TO-cli_sync}
SYNC=${2:?usage: test_cli.sh PATH-TO-fieldmesh PATH-TO-cli_sync}
T=$(mktemp -d "${TMPDIR:-/tmp}/fm-test-cli-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
export HOME="$T/home" # the default store location must never be the real one
unset FIELDMESH_DIR
mkdir -p "$HOME"

. "$(dirname "$0")/checks.sh"

# A field of `status --json` for dir $1 (numbers and strings; a flat object).
status_field() {
    "$FM" --dir "$1" status --json 2>/dev/null |
        sed -n 's/.*"'"$2"'":\("[^"]*"\|[^,}]*\).*/\1/p' | tr -d '"'
}

# usage_err DIR CMD...: exit 2, a message and the usage text on stderr, nothing written.
usage_err() {
    local dir=$1
    shift
    local before
    before=$(status_field "$dir" ops)
    run "$FM" "$@"
    eq "exit status of a usage error" "$RC" 2
    contains "usage text on stderr" "$ERR" "usage: fieldmesh"
    eq "nothing on stdout" "$OUT" ""
    eq "ops unchanged after a usage error" "$(status_field "$dir" ops)" "$before"
}

# bad_assign DIR ASSIGNMENT: put with one bad FIELD=VALUE: exit 2, explained, nothing written.
bad_assign() {
    local dir=$1 before
    before=$(status_field "$dir" ops)
    run "$FM" --dir "$dir" put people p1 good=1 "$2"
    eq "exit status of put with '$2'" "$RC" 2
    contains "the bad assignment is named" "$ERR" "$2"
    eq "ops unchanged after put with '$2'" "$(status_field "$dir" ops)" "$before"
}

D="$T/a"

# ---- init ----------------------------------------------------------------------------------------
run "$FM" --dir "$D" init --name laptop
eq "init exit status" "$RC" 0
FPR=$OUT
CHECKS=$((CHECKS + 1))
[[ $FPR =~ ^[a-z2-7]{16}$ ]] || fail "init prints a 16-character base32 fingerprint, got '$FPR'"
eq "device.key mode" "$(stat -c %a "$D/device.key")" 600
eq "store dir mode" "$(stat -c %a "$D")" 700
eq "store.db mode" "$(stat -c %a "$D/store.db")" 600
run "$FM" --dir "$D" init --name again
eq "init twice: exit status" "$RC" 1
contains "init twice: says why" "$ERR" "already holds a device"
eq "init twice: key unchanged" "$(status_field "$D" device_id)" "$FPR"

run "$FM" --dir "$D" status --json
eq "status exit status" "$RC" 0
KEY=$(status_field "$D" device_key)
HASH0=$(status_field "$D" state_hash)
CHECKS=$((CHECKS + 1))
[[ $KEY =~ ^[a-z2-7]{52}$ ]] || fail "device_key is 52 base32 characters, got '$KEY'"
CHECKS=$((CHECKS + 1))
[[ $HASH0 =~ ^[0-9a-f]{64}$ ]] || fail "state_hash is 64 hex digits, got '$HASH0'"
eq "status --json of a new store" "$OUT" \
    "{\"device_id\":\"$FPR\",\"device_key\":\"$KEY\",\"mesh_id\":null,\"ops\":0,\"batches\":0,\"records\":0,\"conflicts\":0,\"pending\":0,\"state_hash\":\"$HASH0\",\"clock_skew\":false,\"forked_authors\":0,\"running\":false}"

# ---- put / get / list / del -------------------------------------------------------------------------
ok "$FM" --dir "$D" put people p1 name='"Ann"' age=42
eq "put prints nothing" "$OUT" ""
ok "$FM" --dir "$D" get people p1
eq "get after put" "$OUT" '{"age":42,"name":"Ann"}'

ok "$FM" --dir "$D" put people p1 visits+=5
ok "$FM" --dir "$D" put people p1 visits-=2 'tags[]+="x"' 'tags[]+="y"' 'tags[]+=3'
ok "$FM" --dir "$D" put people p1 'tags[]-="x"' 'note:mv="hi"'
ok "$FM" --dir "$D" put people p1 pi=1.5 big=-9223372036854775808 ok=true nothing=null \
    'esc="a\"b\\c\u00e9\n"' sci=1e2
ok "$FM" --dir "$D" get people p1
eq "get of every kind" "$OUT" \
    '{"age":42,"big":-9223372036854775808,"esc":"a\"b\\cé\n","name":"Ann","note":"hi","nothing":null,"ok":true,"pi":1.5,"sci":100.0,"tags":[3,"y"],"visits":3}'
# A plain FIELD=V on an mv field keeps it mv.
ok "$FM" --dir "$D" put people p1 note='"there"'
ok "$FM" --dir "$D" get people p1
contains "mv field rewritten" "$OUT" '"note":"there"'

ok "$FM" --dir "$D" put people p10 name='"Cy"'
ok "$FM" --dir "$D" put people p2 name='"Bo"'
ok "$FM" --dir "$D" put tasks t1 title='"write tests"' done=false
ok "$FM" --dir "$D" list people
eq "list people (id order)" "$OUT" "$(printf '%s\n' \
    '{"_id":"p1","age":42,"big":-9223372036854775808,"esc":"a\"b\\cé\n","name":"Ann","note":"there","nothing":null,"ok":true,"pi":1.5,"sci":100.0,"tags":[3,"y"],"visits":3}' \
    '{"_id":"p10","name":"Cy"}' \
    '{"_id":"p2","name":"Bo"}')"
ok "$FM" --dir "$D" list tasks
eq "list tasks" "$OUT" '{"_id":"t1","done":false,"title":"write tests"}'
ok "$FM" --dir "$D" list nothing
eq "list of an unknown collection" "$OUT" ""

ok "$FM" --dir "$D" del people p2
ok "$FM" --dir "$D" list people
eq "list skips the deleted record" "$(printf '%s\n' "$OUT" | cut -c1-13)" "$(printf '%s\n' '{"_id":"p1","' '{"_id":"p10",')"
run "$FM" --dir "$D" get people p2
eq "get of a deleted record: exit status" "$RC" 1
contains "get of a deleted record: says so" "$ERR" "deleted"
run "$FM" --dir "$D" put people p2 name='"again"'
eq "put to a deleted record: exit status" "$RC" 1
contains "put to a deleted record: says so" "$ERR" "deleted"
run "$FM" --dir "$D" get people nobody
eq "get of a missing record: exit status" "$RC" 1
contains "get of a missing record: says so" "$ERR" "no such record"
eq "get of a missing record: no output" "$OUT" ""
run "$FM" --dir "$D" get nocoll p1
eq "get in a missing collection: exit status" "$RC" 1

run "$FM" --dir "$D" status --json
eq "status exit status" "$RC" 0
OPS=$(status_field "$D" ops)
eq "ops after the writes" "$OPS" 21
eq "records after the writes" "$(status_field "$D" records)" 3
eq "batches after the writes" "$(status_field "$D" batches)" 10
ok "$FM" --dir "$D" conflicts
eq "no conflicts yet" "$OUT" ""

# ---- --dir placement, --dir=, FIELDMESH_DIR, HOME default ---------------------------------------------
ok "$FM" get people p10 --dir "$D"
eq "--dir after the command" "$OUT" '{"name":"Cy"}'
ok "$FM" get --dir "$D" people p10
eq "--dir between arguments" "$OUT" '{"name":"Cy"}'
ok "$FM" get people p10 --dir="$D"
eq "--dir=DIR" "$OUT" '{"name":"Cy"}'
FIELDMESH_DIR="$D" run "$FM" get people p10
eq "FIELDMESH_DIR: exit status" "$RC" 0
eq "FIELDMESH_DIR" "$OUT" '{"name":"Cy"}'
FIELDMESH_DIR="$T/elsewhere" run "$FM" --dir "$D" get people p10
eq "--dir wins over FIELDMESH_DIR" "$OUT" '{"name":"Cy"}'
run "$FM" --dir "$T/nothing-here" get people p10
eq "a dir without a device: exit status" "$RC" 1
contains "a dir without a device: says what to do" "$ERR" "fieldmesh init"
CHECKS=$((CHECKS + 1))
[ ! -e "$T/nothing-here" ] || fail "a dir without a device was created by get"
ok "$FM" init --name home-device
CHECKS=$((CHECKS + 1))
[ -f "$HOME/.local/share/fieldmesh/device.key" ] || fail "init without --dir uses ~/.local/share/fieldmesh"
ok "$FM" put notes n1 text='"at home"'
ok "$FM" get notes n1
eq "HOME default store" "$OUT" '{"text":"at home"}'
run "$FM" --dir "$D" get notes n1
eq "the HOME store is not the --dir store" "$RC" 1

# ---- usage errors: exit 2, usage on stderr, nothing written ------------------------------------------
usage_err "$D" --dir "$D" frobnicate
usage_err "$D" --dir "$D"
usage_err "$D" --dir "$D" put people p1
usage_err "$D" --dir "$D" put people
usage_err "$D" --dir "$D" put
usage_err "$D" --dir "$D" get people
usage_err "$D" --dir "$D" get people p1 extra
usage_err "$D" --dir "$D" list
usage_err "$D" --dir "$D" del people
usage_err "$D" --dir "$D" conflicts extra
usage_err "$D" --dir "$D" status extra
usage_err "$D" --dir "$D" --bogus status
usage_err "$D" --dir "$D" put --frob people p1 a=1
usage_err "$D" --dir "$D" get people p1 --dir
usage_err "$D" --dir "$D" put '' p1 a=1
usage_err "$D" --dir "$D" put "$(printf 'c%.0s' {1..65})" p1 a=1
usage_err "$D" --dir "$D" del people ''
run "$FM" --dir "$T/new" init
eq "init without --name: exit status" "$RC" 2
contains "init without --name: usage" "$ERR" "usage: fieldmesh"
CHECKS=$((CHECKS + 1))
[ ! -e "$T/new" ] || fail "init without --name created $T/new"
run "$FM" --dir "$T/new" init --name "$(printf 'n%.0s' {1..65})"
eq "init with a 65-byte name: exit status" "$RC" 2
CHECKS=$((CHECKS + 1))
[ ! -e "$T/new" ] || fail "init with a bad name created $T/new"

# Bad assignment syntax, values that are not JSON scalars, counters by non-integers; a good
# assignment next to a bad one is not written either.
for a in name '=5' 'name:mv' '[]+=1' '[]-=1' 'name=' 'name=Ann' 'name="unterminated' \
    'name={}' 'name=[1]' 'name=01' 'name=1.' 'name=.5' 'name= 1' 'name="\x"' 'name=tru' \
    'name="a"b' "name=\"$(printf '\x01')\"" 'name="\ud800"' 'n+=1.5' 'n+="x"' 'n+=true' \
    'n+=null' 'n-=1e3' 'n+=9223372036854775808' "$(printf 'f%.0s' {1..65})=1" \
    'tags[]+=' 'tags[]+=nope' '+=1' '-=1' ':mv=1'; do
    bad_assign "$D" "$a"
done
ok "$FM" --dir "$D" get people p1
contains "p1 untouched by the bad puts" "$OUT" '"visits":3'
eq "no 'good' field written by a rejected put" "$(printf '%s' "$OUT" | grep -c '"good"')" 0
# Limits checked when applying also count as usage errors and write nothing.
before=$(status_field "$D" ops)
run "$FM" --dir "$D" put people "$(printf 'i%.0s' {1..129})" a=1
eq "put with a 129-byte record id: exit status" "$RC" 2
eq "put with a 129-byte record id: nothing written" "$(status_field "$D" ops)" "$before"
ok "$FM" --dir "$D" put people "$(printf 'i%.0s' {1..128})" a=1
eq "put with a 128-byte record id: written" "$(status_field "$D" ops)" "$((before + 1))"

# ---- conflicts (concurrent mv writes of two devices, synced with the test helper) -------------------
B="$T/b"
ok "$FM" --dir "$B" init --name phone
ok "$SYNC" "$B" "$D"
eq "B got A's state" "$(status_field "$B" state_hash)" "$(status_field "$D" state_hash)"
ok "$FM" --dir "$D" put people p10 'mood:mv="calm"'
ok "$FM" --dir "$B" put people p10 'mood:mv="busy"'
ok "$SYNC" "$D" "$B"
ok "$SYNC" "$B" "$D"
eq "synced devices agree" "$(status_field "$B" state_hash)" "$(status_field "$D" state_hash)"
eq "one conflict" "$(status_field "$D" conflicts)" 1
ok "$FM" --dir "$D" conflicts
C1='{"collection":"people","id":"p10","field":"mood","values":["busy","calm"]}'
C2='{"collection":"people","id":"p10","field":"mood","values":["calm","busy"]}'
CHECKS=$((CHECKS + 1))
[ "$OUT" = "$C1" ] || [ "$OUT" = "$C2" ] || fail "conflicts output"$'\n'"  got:  $OUT"$'\n'"  want: $C1 (or the values the other way round)"
CONF=$OUT
ok "$FM" --dir "$B" conflicts
eq "both devices list the same conflict" "$OUT" "$CONF"
ok "$FM" --dir "$D" get people p10
VALS=${CONF#*\"values\":}
eq "get shows the conflict" "$OUT" "{\"mood\":{\"conflict\":${VALS%\}}},\"name\":\"Cy\"}"
# Writing the field again (mv is kept) resolves it.
ok "$FM" --dir "$D" put people p10 mood='"both"'
ok "$FM" --dir "$D" conflicts
eq "conflict resolved" "$OUT" ""
ok "$FM" --dir "$D" get people p10
eq "resolved value" "$OUT" '{"mood":"both","name":"Cy"}'

# ---- a key file readable by others -----------------------------------------------------------------
before=$(status_field "$D" ops)
for mode in 644 640 604; do
    chmod "$mode" "$D/device.key"
    run "$FM" --dir "$D" put people p1 name='"Eve"'
    eq "key mode $mode: exit status" "$RC" 1
    contains "key mode $mode: names the key file" "$ERR" "device.key"
    contains "key mode $mode: says why" "$ERR" "0600"
    run "$FM" --dir "$D" get people p1
    eq "key mode $mode: get refused too" "$RC" 1
done
chmod 600 "$D/device.key"
eq "nothing written with a bad key file" "$(status_field "$D" ops)" "$before"
ok "$FM" --dir "$D" get people p1
contains "the store is fine after chmod 600" "$OUT" '"name":"Ann"'

# ---- store.db that is not ours ---------------------------------------------------------------------
# check_refused DIR WHAT: every command fails with a clear error and leaves the files as they were.
check_refused() {
    local dir=$1 what=$2 sum_before list_before cmd
    sum_before=$(sha256sum "$dir/store.db" | cut -d' ' -f1)
    list_before=$(ls -A "$dir")
    for cmd in "status --json" "get people p1" "list people" "put people p1 a=1" "conflicts"; do
        # shellcheck disable=SC2086 # word splitting of $cmd on purpose
        run "$FM" --dir "$dir" $cmd
        eq "$what, $cmd: exit status" "$RC" 1
        contains "$what, $cmd: names the store" "$ERR" "store.db"
        contains "$what, $cmd: says why" "$ERR" "store schema is newer than this program or foreign"
        eq "$what, $cmd: file unchanged" "$(sha256sum "$dir/store.db" | cut -d' ' -f1)" "$sum_before"
        eq "$what, $cmd: no files added or removed" "$(ls -A "$dir")" "$list_before"
    done
}
E="$T/e"
ok "$FM" --dir "$E" init --name foreign-test
rm -f "$E/store.db" "$E/store.db-wal" "$E/store.db-shm"
if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$E/store.db" "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes(body) VALUES ('mine');" ||
        fail "sqlite3 could not make the foreign file"
else
    python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)'); c.execute(\"INSERT INTO notes(body) VALUES ('mine')\"); c.commit()" "$E/store.db" ||
        fail "python3 could not make the foreign file"
fi
check_refused "$E" "a foreign sqlite file"
# Seeded garbage.
perl -e 'srand(42); print map { chr(int(rand(256))) } 1 .. 8192' >"$E/store.db"
check_refused "$E" "garbage"
printf 'not a database\n' >"$E/store.db"
check_refused "$E" "a text file"
# A store of a newer schema version.
rm -f "$E/store.db"
ok "$FM" --dir "$E" put people p1 a=1
if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$E/store.db" "PRAGMA user_version = 1000;" >/dev/null
    check_refused "$E" "a newer store"
fi

printf 'test_cli.sh: %d checks, %d failed\n' "$CHECKS" "$FAILS" >&2
[ "$FAILS" -eq 0 ]
