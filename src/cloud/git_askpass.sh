#!/bin/sh
# GIT_ASKPASS helper for pushing over HTTPS from a cloud machine (sky-training.yaml sets it).
# git, and DVC's git library, run it with the prompt as its argument, which names the URL asked
# about. It answers only for the origin's host (and port): the username prompt gets
# $GIT_USERNAME (default x-access-token, which GitHub and GitLab accept with a token), the
# password prompt gets $GIT_TOKEN. Any other host gets nothing. The token stays in the
# environment and is never written.
host_of() {  # scheme://[user@]host[:port]/... -> host[:port]
  printf '%s\n' "$1" | sed -n 's#^[A-Za-z][A-Za-z0-9+.-]*://\([^@/]*@\)\{0,1\}\([^/]*\).*#\2#p'
}
asked=$(host_of "$(printf '%s\n' "$1" | sed -n "s#^[^']*'\([^']*\)'.*#\1#p")")
origin=$(host_of "$(git config --get remote.origin.url 2>/dev/null)")
if [ -z "$asked" ] || [ "$asked" != "$origin" ]; then
  echo "git_askpass: no credentials for '${asked:-an unnamed host}' (only for the origin, '${origin:-none}')" >&2
  exit 1
fi
case "$1" in
  Username*) printf '%s\n' "${GIT_USERNAME:-x-access-token}" ;;
  *) printf '%s\n' "${GIT_TOKEN:?GIT_TOKEN is not set: pass it with --secret GIT_TOKEN}" ;;
esac
