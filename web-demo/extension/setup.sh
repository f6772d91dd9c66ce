#!/usr/bin/env bash
# Fills extension/vendor/ (gitignored) with what the extension shares with the demo page:
# supabase-js's UMD build (from web-demo/node_modules, so run `npm ci` in web-demo/ first),
# the live feed (web-demo/feed.js) and the job list (web-demo/jobs.js, jobs.css). Extension
# files cannot reach outside the extension's folder, hence copies. Run it again after
# editing those files.
set -euo pipefail

extension="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
demo="$(dirname "$extension")"
umd="$demo/node_modules/@supabase/supabase-js/dist/umd/supabase.js"

if [[ ! -f "$umd" ]]; then
  echo "setup.sh: $umd is missing; run 'npm ci' in $demo first" >&2
  exit 1
fi
mkdir -p "$extension/vendor"
cp "$umd" "$demo/feed.js" "$demo/jobs.js" "$demo/jobs.css" "$extension/vendor/"
