#!/usr/bin/env bash
# sheepdog's warm path for the anchor harness (as drivers/pm2-warm.sh): `prepare` starts the
# supervisor, `start` adds the fleet to it. Link it as drivers/sheepdog-warm.sh.
SHEEPDOG_WARM=1 exec "$(dirname "$(readlink -f "$0")")/anchors-driver.sh" "$@"
