#!/usr/bin/env bash
# Fails when the layering of ARCHITECTURE.md is broken:
#  - the root package imports only the standard library;
#  - an adapter package never imports another adapter (only the root and
#    its own dependencies). The Go client may share httpapi's wire types.
# cmd/ and examples/ wire packages together and are exempt. Test files are
# not checked (a store's tests may run store/storetest).
set -euo pipefail
mod=$(go list -m)
fail=0
while read -r pkg imports; do
  rel=${pkg#"$mod"}; rel=${rel#/}
  case "$rel" in
    cmd/*|examples/*) continue ;;
  esac
  for imp in $imports; do
    case "$imp" in
      "$mod"|"$mod"/*) ;;
      *)
        if [ -z "$rel" ] && [[ "$imp" == *.* ]]; then
          echo "layering: root package imports non-stdlib $imp"; fail=1
        fi
        continue ;;
    esac
    [ -z "$rel" ] && { echo "layering: root package imports $imp"; fail=1; continue; }
    irel=${imp#"$mod"}; irel=${irel#/}
    [ -z "$irel" ] && continue                      # importing the root is the point
    [ "${irel%%/*}" = "${rel%%/*}" ] && [ "$irel" != "$rel" ] && [[ "$rel" == "$irel"/* || "$irel" == "$rel"/* ]] && continue
    [ "$rel" = "clients/otpclient" ] && [ "$irel" = "httpapi" ] && continue
    echo "layering: $rel imports adapter $irel"; fail=1
  done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $fail
