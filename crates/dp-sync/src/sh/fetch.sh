# shellcheck shell=sh
# Part of dp-sync's build script (see remote.rs, build) when the payload went through the
# artifact store (store.rs): dp_fetch fetches it into "$inc.payload" and checks its
# SHA-256. The presigned URL is the first line on stdin, never in an argv: curl reads it
# from its config on stdin, wget from its list on stdin, whichever the host has. Set
# before this file: inc (the unpack directory), fetch (the payload's SHA-256),
# fetch_from (the store's host, for messages) and fallback (non-empty: a payload that
# cannot be had prints `payload unfetched`, and the client sends it over SSH instead).
# shellcheck disable=SC2154 # the values above come before.

dp_unfetched() {
  rm -f -- "$inc.payload" "$inc.payload.err"
  echo "$1" >&2
  [ -z "$fallback" ] || echo "payload unfetched"
  exit 1
}

dp_fetch() {
  IFS= read -r dp_url || dp_unfetched "no URL for the payload on stdin"
  dp_rc=0
  if command -v curl >/dev/null 2>&1; then
    printf 'url = "%s"\n' "$dp_url" |
      curl -K - -fsS --connect-timeout 10 --speed-limit 1024 --speed-time 30 \
        -o "$inc.payload" 2> "$inc.payload.err" || dp_rc=$?
  elif command -v wget >/dev/null 2>&1; then
    printf '%s\n' "$dp_url" |
      wget -nv -T 30 -t 1 -O "$inc.payload" -i - 2> "$inc.payload.err" || dp_rc=$?
  else
    dp_unfetched "fetching the payload from $fetch_from: the host has neither curl nor wget"
  fi
  if [ "$dp_rc" -ne 0 ]; then
    # What the fetcher said, without the URL's query (its signature).
    dp_said=$(sed -e 's/[?][^ ]*//g' -e '/^[[:space:]]*$/d' "$inc.payload.err" | tail -n 2 | tr '\n' ' ')
    dp_unfetched "fetching the payload from $fetch_from failed: ${dp_said% }"
  fi
  rm -f -- "$inc.payload.err"
  dp_sum=$(sha256sum < "$inc.payload")
  dp_sum=${dp_sum%% *}
  [ "$dp_sum" = "$fetch" ] ||
    dp_unfetched "the payload fetched from $fetch_from has SHA-256 $dp_sum, not $fetch: rejected"
}
