# shellcheck shell=sh
# dp-sync's second script on a host (see remote.rs, build): builds the release from the
# tar stream on stdin. Set before this file: rel (the new release), digest (SHA-256 of
# its manifest), base (the release to hard-link from; empty for none), codec (tar's
# decompression flag, -z or -j; empty for none), shared (paths under $root/shared linked
# into the release, one per line, a directory with a trailing /) and verify (non-empty:
# check every file with sha256sum before marking the release complete). With `fetch`
# set (the payload's SHA-256), the payload comes from the artifact store instead of
# stdin (sh/fetch.sh, which comes before); with `inline` set, from this script itself
# (a small payload, as a format for printf); with `unchanged` set, there is none (the
# release is the base's tree).
# shellcheck disable=SC2154 # root, releases and the values above come before.

inc="$releases/.incoming-$rel"
tmp="$releases/.tmp-$rel"
dp_rm "$inc" "$tmp" "$inc.payload"
if [ -n "$unchanged" ]; then
  # Nothing sent (remote.rs, BuildPlan::unchanged): the base's tree and manifest, with
  # this release's REVISION and digest; the base's other bookkeeping is not this
  # release's. Both files are unlinked before they are written: they are hard links
  # into the base, which must never change.
  cp -al -- "$releases/$base" "$tmp"
  set -- "$tmp/REVISION"
  for dp_f in "$tmp"/.dp/* "$tmp"/.dp/.[!.]* "$tmp"/.dp/..?*; do
    if { [ -e "$dp_f" ] || [ -L "$dp_f" ]; } && [ "$dp_f" != "$tmp/.dp/manifest" ]; then
      set -- "$@" "$dp_f"
    fi
  done
  rm -rf -- "$@"
  dp_write_file "$tmp/REVISION" '%s\n' "$rel"
  dp_write_file "$tmp/.dp/manifest.sha256" '%s\n' "$digest"
else
  mkdir -- "$inc"
  # The hard links are made first, while the client is still compressing and sending.
  [ -z "$base" ] || cp -al -- "$releases/$base" "$tmp"
  if [ -n "$inline" ]; then
    # A file, not a pipe: printf is the shell's own, so no process is started for it.
    # The format is the payload (quote::printf_format).
    dp_write_file "$inc.payload" "$inline"
    tar -x ${codec:+"$codec"} -p --no-same-owner -f "$inc.payload" -C "$inc"
  elif [ -z "$fetch" ]; then
    tar -x ${codec:+"$codec"} -p --no-same-owner -f - -C "$inc"
  else
    dp_fetch
    tar -x ${codec:+"$codec"} -p --no-same-owner -f "$inc.payload" -C "$inc"
  fi
  # `.dp/end` is the stream's last entry: without it the upload was cut short (tar exits
  # 0 when its input ends between two entries).
  [ -f "$inc/.dp/end" ] || { echo "the upload was cut short" >&2; exit 1; }
  dp_unchanged=
  if [ -z "$base" ]; then
    LC_ALL=C sort -- "$inc/.dp/manifest.add" > "$inc/.dp/manifest"
  else
    if [ -s "$inc/.dp/remove" ]; then (cd "$tmp" && xargs -0 rm -rf -- < "$inc/.dp/remove"); fi
    if [ -s "$inc/.dp/manifest.drop" ] || [ -s "$inc/.dp/manifest.add" ]; then
      # Both sides are in canonical (byte) order, so a merge is enough.
      { grep -v -x -F -f "$inc/.dp/manifest.drop" -- "$releases/$base/.dp/manifest" || [ $? -eq 1 ]; } |
        LC_ALL=C sort -m -- - "$inc/.dp/manifest.add" > "$inc/.dp/manifest"
    else
      # Nothing changed: the manifest is the base's, digest and all.
      cp -- "$releases/$base/.dp/manifest" "$inc/.dp/manifest"
      dp_unchanged=1
    fi
  fi
  # The base's own .dp (its manifest, completion mark, deps key) is not the new release's.
  rm -rf -- ${base:+"$tmp/.dp"} "$inc.payload" "$inc/.dp/remove" "$inc/.dp/manifest.drop" "$inc/.dp/manifest.add" "$inc/.dp/end"
  if [ -z "$dp_unchanged" ]; then
    dp_digest=$(sha256sum < "$inc/.dp/manifest")
    dp_digest=${dp_digest%% *}
    if [ "$dp_digest" != "$digest" ]; then
      echo "the manifest rebuilt on the host does not match (got $dp_digest)" >&2
      exit 1
    fi
  fi
  dp_write_file "$inc/.dp/manifest.sha256" '%s\n' "$digest"
  if [ -z "$base" ]; then
    mv -- "$inc" "$tmp"
  else
    # Sent entries replace the base's hard links; they never write through them.
    cp -al --remove-destination -- "$inc/." "$tmp/"
    rm -rf -- "$inc"
  fi
fi
# Shared paths: a link each, ../ as deep as the path, to $root/shared.
if [ -n "$shared" ]; then
  dp_ifs=$IFS; IFS='
'
  set -f
  for p in $shared; do
    IFS=$dp_ifs
    dir=; case $p in */) dir=1; p=${p%/} ;; esac
    up=../../ r=$p
    while :; do case $r in */*) r=${r#*/}; up="../$up" ;; *) break ;; esac; done
    if [ -n "$dir" ]; then
      dp_mkdir "$root/shared/$p"
    elif ! [ -e "$root/shared/$p" ]; then
      echo "shared file $root/shared/$p is missing: create it on the host" >&2; exit 1
    fi
    dp_rm "$tmp/$p"
    case $p in */*) dp_mkdir "$tmp/${p%/*}" ;; esac
    ln -s -- "${up}shared/$p" "$tmp/$p"
  done
  set +f; IFS=$dp_ifs
fi
if [ -n "$verify" ] && ! (cd "$tmp" && sha256sum --quiet --strict -c .dp/sha256sums >&2); then
  echo "verify: the release on the host differs from the source" >&2
  exit 1
fi
: > "$tmp/.dp/complete"
mv -- "$tmp" "$releases/$rel"
echo "built"
