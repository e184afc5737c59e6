
use builtin;
use str;

set edit:completion:arg-completer[opendify] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'opendify'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'opendify'= {
            cand --env-file 'Read settings from this file instead of ./.env'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Run the OpenAI-compatible server'
            cand doctor 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opendify;serve'= {
            cand --host 'Address to listen on [env: SERVER_HOST] [default: 127.0.0.1]'
            cand --port 'Port to listen on [env: SERVER_PORT] [default: 5000]'
            cand --log-level 'Log level: error, warn, info, debug, trace [env: LOG_LEVEL]'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor'= {
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --only 'Run only these checks (comma-separated)'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --list 'Name the checks and exit'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand check-config 'Which .env was loaded, every setting with its source, every problem with its fix'
            cand check-port 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
            cand inspect-mappings 'The conversation store and the chat-to-conversation mappings in it'
            cand ping-dify 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
            cand test-key 'Each model''s app key against Dify''s /info and /parameters'
            cand test-stream 'One streaming request, timed, to Dify or through a running opendify'
            cand report 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opendify;doctor;check-config'= {
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;check-port'= {
            cand --port 'Port to check instead of SERVER_PORT'
            cand --host 'Address to check instead of SERVER_HOST'
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;inspect-mappings'= {
            cand --user 'Only the mappings of this user'
            cand --chat 'Only the mapping of this chat id'
            cand --limit 'Show at most this many mappings'
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --prune 'Remove expired mappings (the only option that changes anything)'
            cand --verify 'Ask Dify whether each listed conversation still exists'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;ping-dify'= {
            cand --dns 'Also resolve with this DNS server (IP or IP:PORT) and compare'
            cand -c 'Repeat the TCP and HTTP steps N times and show min/avg/max and loss'
            cand --count 'Repeat the TCP and HTTP steps N times and show min/avg/max and loss'
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;test-key'= {
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --live 'Also send one tiny message per model (as user opendify-doctor; it costs tokens)'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;test-stream'= {
            cand --via 'Go through a running opendify at this URL (e.g. http://127.0.0.1:5000) instead of to Dify'
            cand --message 'The message to send'
            cand --user 'The user to send as (X-OpenWebUI-User-Id with --via, Dify''s `user` without)'
            cand --api 'The client API to test through opendify; other than chat it goes through the opendify at --via, or at SERVER_HOST:SERVER_PORT without it'
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;report'= {
            cand -o 'Write the report to this file instead of stdout'
            cand --output 'Write the report to this file instead of stdout'
            cand --log-lines 'How many lines of the log file to include'
            cand --timeout 'Longest wait, in seconds, for each network step [default: 10]'
            cand --network-errors 'Report network failures as failures or, for flaky CI, as warnings'
            cand --env-file 'Read settings from this file instead of ./.env'
            cand --json 'Print one JSON document with a stable schema instead of text'
            cand --strict 'Count warnings as failures (exit code 1)'
            cand --no-color 'Never colour the output (NO_COLOR is honoured too)'
            cand -v 'Show every check''s details, not only its problems'
            cand --verbose 'Show every check''s details, not only its problems'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;doctor;help'= {
            cand check-config 'Which .env was loaded, every setting with its source, every problem with its fix'
            cand check-port 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
            cand inspect-mappings 'The conversation store and the chat-to-conversation mappings in it'
            cand ping-dify 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
            cand test-key 'Each model''s app key against Dify''s /info and /parameters'
            cand test-stream 'One streaming request, timed, to Dify or through a running opendify'
            cand report 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opendify;doctor;help;check-config'= {
        }
        &'opendify;doctor;help;check-port'= {
        }
        &'opendify;doctor;help;inspect-mappings'= {
        }
        &'opendify;doctor;help;ping-dify'= {
        }
        &'opendify;doctor;help;test-key'= {
        }
        &'opendify;doctor;help;test-stream'= {
        }
        &'opendify;doctor;help;report'= {
        }
        &'opendify;doctor;help;help'= {
        }
        &'opendify;completions'= {
            cand --env-file 'Read settings from this file instead of ./.env'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opendify;help'= {
            cand serve 'Run the OpenAI-compatible server'
            cand doctor 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opendify;help;serve'= {
        }
        &'opendify;help;doctor'= {
            cand check-config 'Which .env was loaded, every setting with its source, every problem with its fix'
            cand check-port 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not'
            cand inspect-mappings 'The conversation store and the chat-to-conversation mappings in it'
            cand ping-dify 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer'
            cand test-key 'Each model''s app key against Dify''s /info and /parameters'
            cand test-stream 'One streaming request, timed, to Dify or through a running opendify'
            cand report 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail'
        }
        &'opendify;help;doctor;check-config'= {
        }
        &'opendify;help;doctor;check-port'= {
        }
        &'opendify;help;doctor;inspect-mappings'= {
        }
        &'opendify;help;doctor;ping-dify'= {
        }
        &'opendify;help;doctor;test-key'= {
        }
        &'opendify;help;doctor;test-stream'= {
        }
        &'opendify;help;doctor;report'= {
        }
        &'opendify;help;completions'= {
        }
        &'opendify;help;help'= {
        }
    ]
    $completions[$command]
}
