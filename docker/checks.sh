# Shared by docker/test-image.sh and docker/slurm/test-slurm.sh (source it):
# check NAME COMMAND...: run COMMAND, print one PASS/FAIL line, count the failures.
failures=0
check() {
  local name=$1
  shift
  if "$@"; then
    echo "PASS: $name"
  else
    echo "FAIL: $name"
    failures=$((failures + 1))
  fi
}
