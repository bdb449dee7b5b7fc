# The bash sub-kernel of a session (worker/kernels/bash.py starts it): one long-lived shell,
# each call's code run in it by eval, so variables, functions, cwd and exports persist.
# Reads "<byte length> <language>\n<code>" from the commands pipe, answers one JSON line
# {"type":"done","status":N} on the events pipe (N: the code's last command's status); the
# code's output goes to fds 1 and 2, the worker's own pipes, as it would from a terminal.
IFS=, read -r __tci_commands __tci_events <<< "$TCI_KERNEL_FDS"
unset TCI_KERNEL_FDS

# Before each command of the call (bash's DEBUG trap): wait until the host has read what
# earlier commands wrote to stdout and stderr (the worker answers "sync" once those pipes are
# drained), so output written to the two arrives in the order it was written. A round trip
# each, so only the first time a command (line and text) runs in the call: a loop syncs in
# its first pass and then runs near bash's own speed (its later passes' output may group).
__tci_sync() {
    [[ -z ${__tci_seen["$1:$2"]} ]] || return 0
    __tci_seen["$1:$2"]=1
    printf '{"type":"sync"}\n' >&"$__tci_events"
    read -r -u "$__tci_commands" __tci_ack
}

__tci_run() {
    unset __tci_seen
    declare -gA __tci_seen=()
    trap '__tci_sync "$LINENO" "$BASH_COMMAND"' DEBUG
    eval "$1"
}

# Ctrl-C (the worker forwards the host's SIGINT to this whole process group): the foreground
# program stops, and the call returns 130 (128 + SIGINT) to the loop below.
trap 'return 130 2>/dev/null' INT

printf '{"type":"ready"}\n' >&"$__tci_events"
while :; do
    IFS=' ' read -r -u "$__tci_commands" __tci_length __tci_language
    __tci_status=$?
    # A SIGINT that lands between calls interrupts the wait (status 128 + 2): wait again.
    (( __tci_status > 128 )) && continue
    (( __tci_status == 0 )) || break  # the worker closed the pipe
    __tci_code=
    if (( __tci_length > 0 )); then
        # Bytes, not characters: the length is the UTF-8 encoding's.
        LC_ALL=C IFS= read -r -d '' -N "$__tci_length" -u "$__tci_commands" __tci_code
    fi
    __tci_run "$__tci_code"
    __tci_status=$?
    trap - DEBUG
    printf '{"type":"done","status":%d}\n' "$__tci_status" >&"$__tci_events"
done
