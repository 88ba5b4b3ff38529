#!/usr/bin/env bash
# check-format.sh — STYLE.md rule 15: every project .c/.h file is formatted with the repo's
# .clang-format.
#
#   tools/check-format.sh          check; exit 1 listing the files that need formatting
#   tools/check-format.sh --fix    reformat those files in place (what `make format` runs)
#
# Files: every .c/.h under the project's source folders that git tracks or that is new and not
# ignored (so files not yet committed are checked too); outside a git checkout, every one present.
# Exit 77 (a ctest SKIP) when clang-format is not installed; CLANG_FORMAT overrides the binary.
set -euo pipefail

SOURCE_DIRS=(crdt crypto node transport sim tests bench tools include)

cd "$(dirname "$0")/.."

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if ! command -v "$CLANG_FORMAT" >/dev/null 2>&1; then
    echo "check-format.sh: SKIPPED: $CLANG_FORMAT not found (install it: tools/deps.sh)" >&2
    exit 77
fi

list_files() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files --cached --others --exclude-standard -- \
            "${SOURCE_DIRS[@]/%//*.c}" "${SOURCE_DIRS[@]/%//*.h}"
    else
        local d
        for d in "${SOURCE_DIRS[@]}"; do
            [ -d "$d" ] && find "$d" -type f \( -name '*.c' -o -name '*.h' \)
        done
    fi | LC_ALL=C sort -u
}

FILES=()
while IFS= read -r f; do
    [ -f "$f" ] && FILES+=("$f") # tracked but deleted in the work tree: nothing to check
done < <(list_files)

if [ "${#FILES[@]}" -eq 0 ]; then
    echo "check-format.sh: no .c/.h files found"
    exit 0
fi

if [ "${1:-}" = "--fix" ]; then
    "$CLANG_FORMAT" -i --style=file "${FILES[@]}"
    echo "check-format.sh: formatted ${#FILES[@]} files with $("$CLANG_FORMAT" --version)"
    exit 0
fi

BAD=()
for f in "${FILES[@]}"; do
    if ! "$CLANG_FORMAT" --dry-run --Werror --style=file "$f" >/dev/null 2>&1; then
        BAD+=("$f")
    fi
done

if [ "${#BAD[@]}" -eq 0 ]; then
    echo "check-format.sh: ${#FILES[@]} files OK"
    exit 0
fi

echo "check-format.sh: ${#BAD[@]} of ${#FILES[@]} files need formatting (run: make format):"
printf '    %s\n' "${BAD[@]}"
# Show the first differences so a CI log says what is wrong without a rerun.
echo "first differences:"
for f in "${BAD[@]:0:3}"; do
    "$CLANG_FORMAT" --style=file "$f" | diff -u --label "$f" --label "$f (formatted)" "$f" - |
        head -n 20 || true
done
exit 1
