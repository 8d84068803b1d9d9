#!/usr/bin/env bash
# Parse "--foo-bar value" / "--foo-bar=value" command-line options (icefall/Kaldi
# convention).  Source this file AFTER defining the defaults:
#
#   stage=0
#   train_hours=3.0
#   . local/parse_options.sh || exit 1
#
# "--train-hours 5" then sets the shell variable train_hours=5.  Only variables
# that are already defined may be set, so typos fail loudly.  Positional
# arguments after the options are left in "$@".  "--help" / "-h" prints
# $help_message (if the caller set it) and exits 0.

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then
        printf '%s\n' "$help_message"
      else
        echo "Usage: $0 [options]; options are --name value for each variable the script defines."
      fi
      exit 0
      ;;
    --*=*)
      _po_name="${1%%=*}"; _po_name="${_po_name#--}"; _po_name="${_po_name//-/_}"
      _po_value="${1#*=}"
      shift
      ;;
    --*)
      _po_name="${1#--}"; _po_name="${_po_name//-/_}"
      if [ $# -lt 2 ]; then
        echo "$0: option '$1' needs a value (e.g. $1 VALUE)" >&2
        exit 1
      fi
      _po_value="$2"
      shift 2
      ;;
    *)
      break
      ;;
  esac
  if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "$0: invalid option name '--${_po_name//_/-}'" >&2
    exit 1
  fi
  if [ -z "${!_po_name+set}" ]; then
    echo "$0: unknown option '--${_po_name//_/-}' (no variable '$_po_name' is defined; see --help)" >&2
    exit 1
  fi
  # Booleans are validated so that '--speed-perturb yes' is not silently ignored.
  case "${!_po_name}" in
    true|false)
      if [ "$_po_value" != true ] && [ "$_po_value" != false ]; then
        echo "$0: option '--${_po_name//_/-}' expects true or false, got '$_po_value'" >&2
        exit 1
      fi
      ;;
  esac
  printf -v "$_po_name" '%s' "$_po_value"
done
unset _po_name _po_value
true
