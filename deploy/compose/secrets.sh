#!/bin/sh
# Creates the compose secrets once: secrets/webhook_secrets (a whsec_ secret:
# the simulator's business rules sign with it, the bridges verify) and
# secrets/sn_client_secret (the simulator's OAuth client secret). Existing
# files are kept. The containers run as uid 65532, so the files are made
# readable by others (a demo on one host; in production use your
# orchestrator's secret store, see ../kubernetes/).
set -eu
cd "$(dirname "$0")/secrets"
umask 022
if [ ! -s webhook_secrets ]; then
  printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64 | tr -d '\n')" >webhook_secrets
  echo "created $(pwd)/webhook_secrets"
fi
if [ ! -s sn_client_secret ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >sn_client_secret
  echo >>sn_client_secret
  echo "created $(pwd)/sn_client_secret"
fi
chmod 0644 webhook_secrets sn_client_secret
