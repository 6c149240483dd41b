# Sourced by scripts/*: make sure ./.venv exists with drtool (and extras) installed.
# usage: ensure_venv [extras]   e.g. ensure_venv test
ensure_venv() {
  local extras="${1:-}"
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  if [ ! -x .venv/bin/python ]; then
    echo "setting up a virtualenv in .venv" >&2
    python3 -m venv .venv
  fi
  local stamp=".venv/.drtool-installed${extras:+-$extras}"
  # the stamp names the checkout the editable install points at: a venv shared with another
  # checkout (a git worktree's .venv symlink) is re-pointed here rather than silently run there
  # setup.py builds the compiled helpers (drtool/sources/_fsbatch.c, drtool/databases/_fingerprint.c,
  # drtool/repository/_idprobe.c)
  # in place: a changed source, or a checkout without a built module, is installed (and built) again
  local built=(drtool/sources/_fsbatch*.so) fingerprint=(drtool/databases/_fingerprint*.so)
  local probe=(drtool/repository/_idprobe*.so)
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ setup.py -nt "$stamp" ] ||
     [ drtool/sources/_fsbatch.c -nt "$stamp" ] || [ drtool/databases/_fingerprint.c -nt "$stamp" ] ||
     [ drtool/repository/_idprobe.c -nt "$stamp" ] || [ ! -e "${probe[0]}" ] ||
     [ ! -e "${built[0]}" ] || { [ -f /usr/include/xxhash.h ] && [ ! -e "${fingerprint[0]}" ]; } ||
     [ "$(cat "$stamp")" != "$PWD" ]; then
    # pip writes its console scripts' #! line from the interpreter's path as invoked: through a
    # worktree's .venv symlink that would name the worktree, and break when it is removed
    local python; python="$(cd .venv && pwd -P)/bin/python"
    if ! { "$python" -m pip install -q --upgrade pip &&
           "$python" -m pip install -q -e "$spec"; } >.venv/pip.log 2>&1; then
      cat .venv/pip.log >&2
      echo "pip install failed (log above)" >&2
      return 1
    fi
    echo "$PWD" >"$stamp"
  fi
  export PATH="$PWD/.venv/bin:$PATH"
}
