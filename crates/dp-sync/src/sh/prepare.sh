# shellcheck shell=sh
# dp-sync's first script on a host (see remote.rs, prepare), after the host check and
# the lock. Set before this file: rel (the new release), known (digests of manifests
# the client has cached, separated by spaces) and mark (the line before a manifest).
# Prints the leftovers it removed, the decompressors the host has, `current R`, then
# either `self complete` (a re-run; then `digest D`, the mark and the manifest unless
# known) or `base B` (the newest complete release, empty if none), and defines
# dp_base_manifest, which prints B's digest, the mark and its manifest unless known.
# dp_manifest comes with it (manifest.sh).
# shellcheck disable=SC2154 # root, releases and the values above come before.

for d in "$releases"/.tmp-* "$releases"/.incoming-*; do
  [ -e "$d" ] || continue
  rm -rf -- "$d" && echo "cleaned ${d##*/}"
done
for z in gzip bzip2; do
  if command -v "$z" >/dev/null 2>&1; then echo "has $z"; fi
done
dp_current
echo "current $dp_cur_rel"
if [ -f "$releases/$rel/.dp/complete" ]; then
  echo "self complete"
  dp_manifest "$releases/$rel/.dp/manifest"
  exit 0
fi
if [ -e "$releases/$rel" ]; then
  echo "release directory $releases/$rel exists but is not complete; remove it" >&2
  exit 3
fi
dp_newest
echo "base $dp_new"
# Its digest, the mark and its manifest: next in the script (see remote.rs).
dp_base_manifest() {
  if [ -n "$dp_new" ] && [ -f "$releases/$dp_new/.dp/manifest" ]; then dp_manifest "$releases/$dp_new/.dp/manifest"; fi
}
