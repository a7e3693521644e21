# shellcheck shell=sh
# dp_manifest FILE: prints `digest D`, the mark, and the manifest FILE unless its digest
# is one of the client's (`known`, digests separated by spaces; `mark`, the line before a
# manifest: both set before this file). Used by prepare.sh and plan.sh.
# shellcheck disable=SC2154 # known and mark come before.

# The digest is stored beside the manifest when the release is built (older releases:
# computed here).
dp_manifest() {
  d=
  IFS= read -r d 2>/dev/null < "$1.sha256" || true
  case $d in
    ????????????????????????????????????????????????????????????????) ;;
    *) d=$(sha256sum < "$1"); d=${d%% *} ;;
  esac
  echo "digest $d"
  printf '%s\n' "$mark"
  case " $known " in *" $d "*) ;; *) cat -- "$1" ;; esac
}
