#!/bin/sh
# Control script: start. Gets VIGIL_PACKAGE, VIGIL_NODE, VIGIL_REASON and
# VIGIL_FENCE_TOKEN; runs in the config directory.
mkdir -p run
echo "$(date -u +%FT%TZ) run $VIGIL_PACKAGE on $VIGIL_NODE ($VIGIL_REASON, token $VIGIL_FENCE_TOKEN)" >> run/demo.log
