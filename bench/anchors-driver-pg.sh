#!/usr/bin/env bash
# sheepdog with process-group containment (no cgroup per run), for the anchor harness: link it
# as drivers/sheepdog-pg.sh beside drivers/sheepdog.sh to compare the two in one run.
SHEEPDOG_CONTAINMENT=process-group exec "$(dirname "$(readlink -f "$0")")/anchors-driver.sh" "$@"
