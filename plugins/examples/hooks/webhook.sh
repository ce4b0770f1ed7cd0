#!/bin/sh
# vigil alert hook: POSTs each event's JSON document to a URL (a chat
# webhook, an incident tool, an event bridge).
#
#   [[hook]]          # copy this file to hooks/ in the config dir
#   name = "webhook"
#   command = ["hooks/webhook.sh", "https://events.example.com/vigil"]
#   events = ["package", "failover"]
#   timeout_seconds = 10
#   retries = 3
#
# The body is exactly what vigil wrote on stdin (one JSON object, see
# docs/reference/hooks.md); the headers name the event so a receiver can
# route without parsing. A non-2xx answer fails the run (curl --fail), so
# vigil retries it. Needs curl(1).
set -eu
url="${1:?usage: webhook.sh URL}"
exec curl --silent --show-error --fail --max-time 8 \
    -H 'Content-Type: application/json' \
    -H "X-Vigil-Event: $VIGIL_EVENT_KIND" \
    -H "X-Vigil-Seq: $VIGIL_EVENT_SEQ" \
    --data-binary @- "$url"
