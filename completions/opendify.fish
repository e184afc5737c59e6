# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_opendify_global_optspecs
    string join \n env-file= h/help V/version
end

function __fish_opendify_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_opendify_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_opendify_using_subcommand
    set -l cmd (__fish_opendify_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c opendify -n "__fish_opendify_needs_command" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_needs_command" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_needs_command" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_needs_command" -f -a "serve" -d 'Run the OpenAI-compatible server'
complete -c opendify -n "__fish_opendify_needs_command" -f -a "doctor" -d 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations'
complete -c opendify -n "__fish_opendify_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c opendify -n "__fish_opendify_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opendify -n "__fish_opendify_using_subcommand serve" -l host -d 'Address to listen on [env: SERVER_HOST] [default: 127.0.0.1]' -r
complete -c opendify -n "__fish_opendify_using_subcommand serve" -l port -d 'Port to listen on [env: SERVER_PORT] [default: 5000]' -r
complete -c opendify -n "__fish_opendify_using_subcommand serve" -l log-level -d 'Log level: error, warn, info, debug, trace [env: LOG_LEVEL]' -r
complete -c opendify -n "__fish_opendify_using_subcommand serve" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand serve" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand serve" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l only -d 'Run only these checks (comma-separated)' -r -f -a "check-config\t''
check-port\t''
inspect-mappings\t''
ping-dify\t''
test-key\t''
test-stream\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l list -d 'Name the checks and exit'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "check-config" -d 'Which .env was loaded, every setting with its source, every problem with its fix'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "check-port" -d 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "inspect-mappings" -d 'The conversation store and the chat-to-conversation mappings in it'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "ping-dify" -d 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "test-key" -d 'Each model\'s app key against Dify\'s /info and /parameters'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "test-stream" -d 'One streaming request, timed, to Dify or through a running opendify'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "report" -d 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and not __fish_seen_subcommand_from check-config check-port inspect-mappings ping-dify test-key test-stream report help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-config" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l port -d 'Port to check instead of SERVER_PORT' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l host -d 'Address to check instead of SERVER_HOST' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from check-port" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l user -d 'Only the mappings of this user' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l chat -d 'Only the mapping of this chat id' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l limit -d 'Show at most this many mappings' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l prune -d 'Remove expired mappings (the only option that changes anything)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l verify -d 'Ask Dify whether each listed conversation still exists'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from inspect-mappings" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l dns -d 'Also resolve with this DNS server (IP or IP:PORT) and compare' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -s c -l count -d 'Repeat the TCP and HTTP steps N times and show min/avg/max and loss' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from ping-dify" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l live -d 'Also send one tiny message per model (as user opendify-doctor; it costs tokens)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-key" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l via -d 'Go through a running opendify at this URL (e.g. http://127.0.0.1:5000) instead of to Dify' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l message -d 'The message to send' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l user -d 'The user to send as (X-OpenWebUI-User-Id with --via, Dify\'s `user` without)' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l api -d 'The client API to test through opendify; other than chat it goes through the opendify at --via, or at SERVER_HOST:SERVER_PORT without it' -r -f -a "chat\t'OpenAI Chat Completions, POST /v1/chat/completions'
responses\t'OpenAI Responses, POST /v1/responses'
messages\t'Anthropic Messages, POST /v1/messages'"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from test-stream" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -s o -l output -d 'Write the report to this file instead of stdout' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l log-lines -d 'How many lines of the log file to include' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l timeout -d 'Longest wait, in seconds, for each network step [default: 10]' -r
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l network-errors -d 'Report network failures as failures or, for flaky CI, as warnings' -r -f -a "fail\t''
warn\t''"
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l json -d 'Print one JSON document with a stable schema instead of text'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l strict -d 'Count warnings as failures (exit code 1)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -l no-color -d 'Never colour the output (NO_COLOR is honoured too)'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -s v -l verbose -d 'Show every check\'s details, not only its problems'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from report" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "check-config" -d 'Which .env was loaded, every setting with its source, every problem with its fix'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "check-port" -d 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "inspect-mappings" -d 'The conversation store and the chat-to-conversation mappings in it'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "ping-dify" -d 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "test-key" -d 'Each model\'s app key against Dify\'s /info and /parameters'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "test-stream" -d 'One streaming request, timed, to Dify or through a running opendify'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "report" -d 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
complete -c opendify -n "__fish_opendify_using_subcommand doctor; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opendify -n "__fish_opendify_using_subcommand completions" -l env-file -d 'Read settings from this file instead of ./.env' -r -F
complete -c opendify -n "__fish_opendify_using_subcommand completions" -s h -l help -d 'Print help'
complete -c opendify -n "__fish_opendify_using_subcommand completions" -s V -l version -d 'Print version'
complete -c opendify -n "__fish_opendify_using_subcommand help; and not __fish_seen_subcommand_from serve doctor completions help" -f -a "serve" -d 'Run the OpenAI-compatible server'
complete -c opendify -n "__fish_opendify_using_subcommand help; and not __fish_seen_subcommand_from serve doctor completions help" -f -a "doctor" -d 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations'
complete -c opendify -n "__fish_opendify_using_subcommand help; and not __fish_seen_subcommand_from serve doctor completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c opendify -n "__fish_opendify_using_subcommand help; and not __fish_seen_subcommand_from serve doctor completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "check-config" -d 'Which .env was loaded, every setting with its source, every problem with its fix'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "check-port" -d 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "inspect-mappings" -d 'The conversation store and the chat-to-conversation mappings in it'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "ping-dify" -d 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "test-key" -d 'Each model\'s app key against Dify\'s /info and /parameters'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "test-stream" -d 'One streaming request, timed, to Dify or through a running opendify'
complete -c opendify -n "__fish_opendify_using_subcommand help; and __fish_seen_subcommand_from doctor" -f -a "report" -d 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
