#!/bin/sh
# vigil alert hook: each cluster event as one syslog message (tag "vigil").
#
#   [[hook]]          # copy this file to hooks/ in the config dir
#   name = "syslog"
#   command = ["hooks/syslog.sh"]
#   events = ["node", "package", "resource", "failover"]
#   timeout_seconds = 5
#
# Optional argument: the syslog socket to write to (default: logger's own,
# /dev/log). The message is the event's text; the JSON document vigil wrote
# on stdin goes along as structured data for anyone who reads it.
# Needs logger(1) (util-linux / bsdutils).
set -eu
socket="${1:-}"
json=$(cat)
priority=daemon.notice
case "$VIGIL_EVENT_KIND" in
    failover) priority=daemon.warning ;;
    node) [ "$VIGIL_EVENT_NEW_STATE" = up ] || priority=daemon.warning ;;
esac
message="vigil[$VIGIL_EVENT_OBSERVED_BY] #$VIGIL_EVENT_SEQ $VIGIL_EVENT_KIND: $VIGIL_EVENT_TEXT $json"
if [ -n "$socket" ]; then
    exec logger --socket-errors=on -u "$socket" -t vigil -p "$priority" -- "$message"
else
    exec logger -t vigil -p "$priority" -- "$message"
fi
