# shellcheck shell=sh
# After prepare.sh, when the client guessed the base (remote.rs, prepare_guess): guess_base
# and guess_digest, the release it built here last and its manifest's digest, and
# guess_needs, the decompressor the upload needs (empty: none). When the newest complete
# release is that one and the decompressor is here, prints `guess ok` and the build
# follows in this script, from the tar stream on stdin; otherwise `guess missed`, the
# base's digest, the mark and its manifest (dp_base_manifest), and it ends without
# reading its input: the client sends the build in an exchange of its own.
# shellcheck disable=SC2154 # releases, dp_new and the values above come before.

dp_g=
[ -z "$dp_new" ] || IFS= read -r dp_g 2>/dev/null < "$releases/$dp_new/.dp/manifest.sha256" || true
if [ -z "$dp_new" ] || [ "$dp_new" != "$guess_base" ] || [ "$dp_g" != "$guess_digest" ] ||
   { [ -n "$guess_needs" ] && ! command -v "$guess_needs" >/dev/null 2>&1; }; then
  echo "guess missed"
  dp_base_manifest
  exit 0
fi
echo "guess ok"
