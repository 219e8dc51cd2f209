#!/usr/bin/env bash
# The warm path (anchors-driver-warm.sh) with process-group containment. Link it as
# drivers/sheepdog-pg-warm.sh.
SHEEPDOG_CONTAINMENT=process-group SHEEPDOG_WARM=1 \
    exec "$(dirname "$(readlink -f "$0")")/anchors-driver.sh" "$@"
