#!/bin/sh
# Example exec monitor in plain POSIX sh: is a process with this name running?
#
#   command = ["plugins/examples/exec/proc_running.sh", "sshd"]
#
# Publishes /example/process/<name>/running ("yes"/"no") and
# /example/process/<name>/count. The host writes one hello line to stdin
# (with the [params] as JSON); this script does not need it, so it ignores it.
# Protocol: docs/sdk.md, "exec monitors".
set -u
name=${1:?usage: proc_running.sh PROCESS_NAME}

# Names must be valid resource segments: refuse anything else with an error
# message the host shows as the reason.
case $name in
  *[!A-Za-z0-9._-]*|'')
    printf '{"type":"error","message":"process name %s is not [A-Za-z0-9._-]"}\n' "$name"
    exit 0 ;;
esac

printf '{"type":"hello","protocol":1,"publishes":["/example/process/%s/running","/example/process/%s/count"]}\n' "$name" "$name"

count=0
for comm in /proc/[0-9]*/comm; do
  read -r c < "$comm" 2>/dev/null || continue
  [ "$c" = "$name" ] && count=$((count + 1))
done
if [ "$count" -gt 0 ]; then running=yes; else running=no; fi

printf '{"type":"sample","name":"/example/process/%s/running","value":"%s"}\n' "$name" "$running"
printf '{"type":"sample","name":"/example/process/%s/count","value":%d}\n' "$name" "$count"
