#!/bin/sh
echo "$(date -u +%FT%TZ) halt $VIGIL_PACKAGE on $VIGIL_NODE ($VIGIL_REASON, token $VIGIL_FENCE_TOKEN)" >> run/demo.log
