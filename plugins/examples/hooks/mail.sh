#!/bin/sh
# vigil alert hook: mails failovers and node changes to an operator.
#
#   [[hook]]          # copy this file to hooks/ in the config dir
#   name = "ops-mail"
#   command = ["hooks/mail.sh", "ops@example.com"]
#   events = ["node", "failover"]
#   timeout_seconds = 30
#   retries = 2          # a mail relay that is briefly down gets two more tries
#
# Needs sendmail(8) (any MTA provides it: postfix, exim, msmtp-mta, ...).
# Exits non-zero when it cannot hand the mail over, so vigil logs the
# failure, counts it and retries it.
set -eu
to="${1:?usage: mail.sh ADDRESS}"
sendmail=$(command -v sendmail || echo /usr/sbin/sendmail)
if [ ! -x "$sendmail" ]; then
    echo "mail.sh: no sendmail found; install an MTA" >&2
    exit 1
fi
json=$(cat)
{
    printf 'To: %s\n' "$to"
    printf 'Subject: [vigil] %s: %s\n' "$VIGIL_EVENT_KIND" "$VIGIL_EVENT_TEXT"
    printf 'Content-Type: text/plain; charset=utf-8\n\n'
    printf 'Seen by node %s at %s.\n\n' "$VIGIL_EVENT_OBSERVED_BY" "$VIGIL_EVENT_AT"
    printf '%s\n\nThe event as JSON:\n%s\n' "$VIGIL_EVENT_TEXT" "$json"
} | "$sendmail" -t -i
