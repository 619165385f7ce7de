# SPDX-License-Identifier: MIT
# tap.sh: TAP helpers for shell tests, sourced by tests/*.sh.
#   ok CONDITION-COMMAND... -- "name";   is "$got" "$want" "name";   like "$got" REGEX "name"
tap_n=0
tap_failed=0
tap_report() { # pass(0/1) name diag
    tap_n=$((tap_n + 1))
    if [ "$1" = 0 ]; then echo "ok $tap_n - $2"
    else
        echo "not ok $tap_n - $2"; tap_failed=$((tap_failed + 1))
        [ -n "$3" ] && printf '%s\n' "$3" | sed 's/^/#   /'
    fi
}
is() { if [ "$1" = "$2" ]; then tap_report 0 "$3"; else tap_report 1 "$3" "got:  $1
want: $2"; fi; }
like() { if printf '%s' "$1" | grep -Eq -- "$2"; then tap_report 0 "$3"; else tap_report 1 "$3" "got:     $1
pattern: $2"; fi; }
unlike() { if printf '%s' "$1" | grep -Eq -- "$2"; then tap_report 1 "$3" "got:     $1
must not match: $2"; else tap_report 0 "$3"; fi; }
skip() { tap_n=$((tap_n + 1)); echo "ok $tap_n - $1 # SKIP $2"; }
done_testing() { echo "1..$tap_n"; [ "$tap_failed" = 0 ]; exit $?; }
