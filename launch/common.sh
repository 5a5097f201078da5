# Shared helpers of the launch scripts (sourced, not run): usage text, shell quoting.

# Prints the calling script's header comment (line 2 up to `set -euo pipefail`).
usage() { sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; }

# Shell-quotes like Python's shlex.quote, so a printed line pastes back into a shell as is.
quote() {
  local s=$1
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\"\'\"\'}"
  fi
}

join_quoted() {
  local out='' a
  for a in "$@"; do out+="${out:+ }$(quote "$a")"; done
  printf '%s\n' "$out"
}

die() { echo "error: $*" >&2; exit 2; }
