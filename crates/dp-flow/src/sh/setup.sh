# shellcheck shell=sh
# `dp setup` on a host (see admin.rs), before the host check: creates the layout, checks
# the tools dp's scripts start and that the root is writable. Prints `exists D` or
# `created D` per directory. Set before this file: tools (what the dependency kind and
# the artifact store need, shell words, quoted: evaluated; `a|b` for either).
# shellcheck disable=SC2154 # root and tools come before.

for d in "$root" "$root/releases" "$root/shared" "$root/.dp" "$root/.dp/deps"; do
  if [ -d "$d" ]; then echo "exists $d"; else mkdir -p -- "$d" && echo "created $d"; fi
done
missing=
eval "set -- $tools"
for tool in sh tar cp mv ln sha256sum sort grep sed awk xargs timeout find "$@"; do
  case $tool in
    *'|'*)
      # Alternatives (curl|wget): one of them is enough.
      dp_any=''; dp_ifs=$IFS; IFS='|'
      for t in $tool; do if command -v "$t" >/dev/null 2>&1; then dp_any=1; fi; done
      IFS=$dp_ifs
      [ -n "$dp_any" ] || missing="$missing $(echo "$tool" | sed 's/|/ or /g')"
      ;;
    *) command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool" ;;
  esac
done
if [ -n "$missing" ]; then echo "missing on this host:$missing" >&2; exit 1; fi
probe="$root/.dp/.write-test.$$"
{ : > "$probe" && rm -f -- "$probe"; } || { echo "$root is not writable" >&2; exit 1; }
