#!/usr/bin/env bash
# Regenerate monitoring/grafana/schema/*.schema.json: JSON Schemas derived mechanically from
# Grafana's published TypeScript schema (the npm package @grafana/schema, pinned below) with
# ts-json-schema-generator. tests/test_dashboard_schema.py validates every generated
# dashboard against them with Python's jsonschema, so neither CI nor a test needs node.
#
#   scripts/grafana_schema.sh            # needs node + npm (and the npm registry)
set -euo pipefail
GRAFANA_SCHEMA=13.2.3
GENERATOR=2.4.0
out="$(cd "$(dirname "$0")/.." && pwd)/monitoring/grafana/schema"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent "@grafana/schema@$GRAFANA_SCHEMA" \
  "ts-json-schema-generator@$GENERATOR"
types=node_modules/@grafana/schema/dist/types/raw
generate() {  # generate NAME FILE TYPE
  npx --no-install ts-json-schema-generator --no-type-check --path "$types/$2" --type "$3" \
    -o "$work/$1.json"
  # provenance first, then the schema as generated
  node -e '
    const [file, name, type, version] = process.argv.slice(1);
    const schema = require(file);
    const out = {$comment: `${name}: type ${type} of @grafana/schema@${version} ` +
                 `(dist/types/raw/${process.argv[5]}), by ts-json-schema-generator@${process.argv[6]}` +
                 "; regenerate with scripts/grafana_schema.sh", ...schema};
    process.stdout.write(JSON.stringify(out, null, 2) + "\n");
  ' "$work/$1.json" "$1" "$3" "$GRAFANA_SCHEMA" "$2" "$GENERATOR" > "$out/$1.schema.json"
}
generate dashboard dashboard/x/types.gen.d.ts Dashboard
generate panel-timeseries-options composable/timeseries/panelcfg/x/types.gen.d.ts Options
generate panel-timeseries-fieldconfig composable/timeseries/panelcfg/x/types.gen.d.ts FieldConfig
generate panel-stat-options composable/stat/panelcfg/x/types.gen.d.ts Options
generate panel-bargauge-options composable/bargauge/panelcfg/x/types.gen.d.ts Options
ls -l "$out"
