#!/bin/sh
# The demo's supervised service: proves it is alive every 2 seconds.
while :; do
  date -u +%FT%TZ > run/demo-heartbeat
  sleep 2
done
