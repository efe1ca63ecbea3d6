#!/usr/bin/env bash
# By-hand measurement: a 300 MB episode into a receiver on S3 (moto) +
# SQLite, by PUT, by one tus PATCH, and by tus PATCHes of 4 MiB; wall time
# and the receiver's peak RSS (VmHWM), a fresh receiver per side.
set -euo pipefail
BIN=${BIN:-/work/rel-main/release}
W=$(mktemp -d /tmp/s3tus.XXXX)
MOTO_PORT=5${RANDOM:0:4}
moto_server -p $MOTO_PORT >$W/moto.log 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; kill $RX 2>/dev/null || true' EXIT
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$MOTO_PORT/ && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
head -c ${BYTES:-300000000} /dev/urandom | zstd -q -1 -T2 -o $W/ep.tar.zst
SIZE=$(stat -c %s $W/ep.tar.zst); SHA=$(sha256sum $W/ep.tar.zst | cut -d' ' -f1)
COMMIT=$(printf 'a%.0s' $(seq 40))
b64() { printf %s "$1" | base64 -w0; }
start_rx() { # $1 = bucket
  curl -s -X PUT http://127.0.0.1:$MOTO_PORT/$1 >/dev/null
  D=$W/rx-$1; mkdir -p $D
  export FERRY_RECEIVER_DATA_DIR=$D FERRY_RECEIVER_STORAGE_URL=s3://$1/episodes \
    FERRY_RECEIVER_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT FERRY_RECEIVER_S3_REGION=us-east-1 \
    FERRY_RECEIVER_LISTEN=127.0.0.1:$((18400 + RANDOM % 500)) FERRY_RECEIVER_MAX_EPISODE_SIZE=1GiB
  $BIN/ferry-receiver commits allow $COMMIT --head >/dev/null
  TOKEN=$($BIN/ferry-receiver devices add dev-1 2>/dev/null | head -1)
  $BIN/ferry-receiver serve >$D/log 2>&1 &
  RX=$!
  for i in $(seq 100); do PORT=$(grep -o 'addr=127.0.0.1:[0-9]*' $D/log | head -1 | cut -d: -f2) && [ -n "$PORT" ] && break; sleep 0.1; done
  URL=http://127.0.0.1:$PORT
}
stop_rx() { grep VmHWM /proc/$RX/status | awk '{printf "%.0f MB", $2/1024}'; kill $RX; wait $RX 2>/dev/null || true; }
now() { date +%s.%N; }
for rep in $(seq ${REPS:-2}); do
  if [ -z "${ONLY:-}" ]; then
  start_rx put$rep
  t0=$(now)
  code=$(curl -s -o $W/put.out -w '%{http_code}' -X PUT -H "Authorization: Bearer $TOKEN" -H "X-Ferry-Commit: $COMMIT" -H "X-Ferry-Sha256: $SHA" --data-binary @$W/ep.tar.zst $URL/v1/episodes/ep-put)
  t1=$(now); echo "rep $rep PUT: $code $(echo "$t1 - $t0" | bc) s, receiver peak RSS $(stop_rx)"
  fi
  start_rx tus$rep
  META="episode_id $(b64 ep-tus),commit $(b64 $COMMIT),sha256 $(b64 $SHA)"
  t0=$(now)
  LOC=$(curl -s -D - -o /dev/null -X POST -H "Tus-Resumable: 1.0.0" -H "Authorization: Bearer $TOKEN" -H "Upload-Length: $SIZE" -H "Upload-Metadata: $META" $URL/v1/uploads | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
  code=$(curl -s -o $W/tus.out -w '%{http_code}' -X PATCH -H "Tus-Resumable: 1.0.0" -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/offset+octet-stream" -H "Upload-Offset: 0" --data-binary @$W/ep.tar.zst $URL$LOC)
  t1=$(now); echo "rep $rep tus, one PATCH: $code $(echo "$t1 - $t0" | bc) s, receiver peak RSS $(stop_rx)"
  [ -n "${ONLY:-}" ] && continue
  start_rx tuschunk$rep
  t0=$(now)
  LOC=$(curl -s -D - -o /dev/null -X POST -H "Tus-Resumable: 1.0.0" -H "Authorization: Bearer $TOKEN" -H "Upload-Length: $SIZE" -H "Upload-Metadata: $META" $URL/v1/uploads | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
  CH=$((3<<20)); off=0
  while [ $off -lt $SIZE ]; do
    n=$(( SIZE - off < CH ? SIZE - off : CH ))
    code=$(dd if=$W/ep.tar.zst bs=1M iflag=skip_bytes,count_bytes skip=$off count=$n status=none | curl -s -o $W/tusc.out -w '%{http_code}' -X PATCH -H "Tus-Resumable: 1.0.0" -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/offset+octet-stream" -H "Upload-Offset: $off" --data-binary @- $URL$LOC)
    off=$((off+n))
  done
  t1=$(now); echo "rep $rep tus, 3 MiB PATCHes: $code $(echo "$t1 - $t0" | bc) s, receiver peak RSS $(stop_rx)"
done
echo "episode $SIZE bytes"
