#!/bin/sh
# GIT_ASKPASS helper for pushing over HTTPS from a cloud machine (sky-training.yaml sets it).
# git, and DVC's git library, run it with the prompt as its argument: the username prompt gets
# $GIT_USERNAME (default x-access-token, which GitHub and GitLab accept with a token), the
# password prompt gets $GIT_TOKEN. The token stays in the environment and is never written.
case "$1" in
  Username*) printf '%s\n' "${GIT_USERNAME:-x-access-token}" ;;
  *) printf '%s\n' "${GIT_TOKEN:?GIT_TOKEN is not set: pass it with --secret GIT_TOKEN}" ;;
esac
