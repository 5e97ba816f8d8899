# The `local-audit` agent profile: a deterministic audit of the workspace with git and
# grep, for trying nightshift without an LLM tool. It reads the prompt's first line,
# changes nothing, reports what it found as generic JSON lines, and writes its counts to
# $NIGHTSHIFT_MEMORY_OUT. Text from files is stripped of quotes and backslashes so every
# line stays valid JSON.
set -u
clean() { tr -d '"\\' | tr '\n\t' '  ' | cut -c1-200; }
# Spelled in pieces, so this script does not count itself when it audits nightshift.
pattern="TO""DO|FIX""ME|X""XX"
names="TO""DO/FIX""ME/X""XX"
task=$(head -n 1 "$1" | clean)
echo "{\"type\":\"plan\",\"text\":\"audit the repository for: $task\"}"
files=$(git ls-files | wc -l | tr -d ' ')
markers=$(git grep -I -n -E "$pattern" -- . 2>/dev/null | wc -l | tr -d ' ')
top=$(git grep -I -c -E "$pattern" -- . 2>/dev/null | sort -t: -k2 -nr | head -n 3 | clean)
echo "{\"type\":\"action\",\"text\":\"git grep: $markers $names markers in $files tracked files\"}"
packages=0
if [ -f Cargo.lock ]; then
  packages=$(grep -c '^name = ' Cargo.lock)
  echo "{\"type\":\"action\",\"text\":\"Cargo.lock pins $packages packages\"}"
fi
printf '{"tracked_files":%s,"markers":%s,"locked_packages":%s}\n' "$files" "$markers" "$packages" > "$NIGHTSHIFT_MEMORY_OUT"
echo "{\"type\":\"summary\",\"text\":\"local audit of $files tracked files: $markers $names markers (most in: ${top:-none}); $packages packages in Cargo.lock. Nothing was changed.\"}"
