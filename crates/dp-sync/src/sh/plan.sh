# shellcheck shell=sh
# `dp deploy --plan` on a host (see plan.rs): reads, changes nothing (no lock, no
# directory, no probe file). Set before this file: known and mark (for dp_manifest, which
# comes with it). Prints `current R`, `base B` (the newest complete release, which the
# new one would be built on), `deps_key K` (its dependency environment), then its
# manifest as dp_manifest does.
# shellcheck disable=SC2154 # releases comes before.

dp_current
echo "current $dp_cur_rel"
dp_newest
echo "base $dp_new"
if [ -n "$dp_new" ]; then
  dp_k=
  IFS= read -r dp_k 2>/dev/null < "$releases/$dp_new/.dp/deps-key" || true
  echo "deps_key $dp_k"
  if [ -f "$releases/$dp_new/.dp/manifest" ]; then dp_manifest "$releases/$dp_new/.dp/manifest"; fi
fi
